//! Labs driven through the real control plane. A lab is a topology file (`lab/default.yaml`
//! at the repository root: exactly what `sluicectl apply -f` takes) built into namespaces:
//! each host runs its own `sluiced` (the first host's is also the controller), the topology
//! is posted to the controller's REST API, and the builder waits until every agent reports
//! that its maps hold it.
//!
//! ```text
//!   fabric   bridge in its own namespace, one /24 (lab::overlay)
//!   h1       <underlay_ifname> with underlay_ip; sluiced: controller (API <run>/h1.sock,
//!            store <run>/intent.redb) + agent h1
//!   h2       sluiced: agent h2, controller unix:<run>/h1.sock
//!   <nic>    a VM namespace per NIC: eth0 (ip, mac) -- veth -- <ifname> on the NIC's host
//! ```
//!
//! The agents reach the controller over its Unix socket: a socket file in the shared
//! filesystem works across network namespaces, and the tests (in the root namespace) use
//! the same socket. Interface names come from the topology unprefixed: every one lives in a
//! lab namespace, so they cannot collide with the machine's or another lab's.
//!
//! Changes after the build go through the API too ([`TopologyLab::change`]), and are waited
//! for by generation: every mutation answers with `sluice-generation: <n>`, and each agent's
//! `/v1/status` says which generation its maps hold. No fixed sleeps.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_common::proto::VXLAN_OVERHEAD;

use super::{
    names,
    overlay::{format_mac, parse_cidr, parse_mac, OverlayVm, UnderlayPort, FABRIC},
    Daemon, DaemonSpec, Lab, XdpModeSetting,
};
use crate::{
    client::{self, ApiAddr, Method, Response},
    intent::{HostSpec, NicSpec, Subnet, Topology, TopologyNic},
    stats::StatsSnapshot,
    vpc::{
        apply::{read_tables, PinnedVpcMaps},
        diff::ResolvedTables,
    },
};

/// How long the agents may take to apply a change (a first apply attaches XDP to every
/// interface; the machine is small and shared).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's default lab.
pub fn default_lab_path() -> PathBuf {
    let dataplane = Path::new(env!("CARGO_MANIFEST_DIR"));
    dataplane
        .parent()
        .unwrap_or(dataplane)
        .join("lab/default.yaml")
}

// ---- the definition ----

/// The interface of every lab VM, inside its own namespace.
pub const VM_IFNAME: &str = "eth0";

/// Prefix length of the fabric: every host's underlay address is in one /24.
pub const FABRIC_PREFIX_LEN: u8 = 24;

/// Reads a lab topology (see [`check_lab_topology`]).
pub fn load_topology(path: &Path) -> Result<Topology> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    topology_from_yaml(&text).with_context(|| format!("lab topology {}", path.display()))
}

/// Parses and checks a lab topology; a mistake names its field.
pub fn topology_from_yaml(text: &str) -> Result<Topology> {
    let t: Topology = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    check_lab_topology(&t)?;
    Ok(t)
}

/// What the lab needs beyond what the controller validates: hosts to build (the first is
/// the controller) sharing one /24 and one MTU, NICs with a fixed IP in a subnet the
/// topology declares, and names that fit the lab's namespaces.
pub fn check_lab_topology(t: &Topology) -> Result<()> {
    if t.hosts.is_empty() {
        bail!("hosts: a lab needs at least one host (the first runs the controller)");
    }
    let mut hosts = BTreeSet::new();
    let mut fabric = None;
    for (i, h) in t.hosts.iter().enumerate() {
        names::check_label(&h.name).with_context(|| format!("hosts[{i}].name"))?;
        if h.name == FABRIC {
            bail!("hosts[{i}].name: {FABRIC:?} is the underlay's namespace");
        }
        if !hosts.insert(h.name.as_str()) {
            bail!("hosts[{i}].name: host {:?} is listed twice", h.name);
        }
        let ip: Ipv4Addr = h.underlay_ip.parse().map_err(|_| {
            anyhow::anyhow!(
                "hosts[{i}].underlay_ip: {:?} is not an IPv4 address",
                h.underlay_ip
            )
        })?;
        names::check_ifname(&h.underlay_ifname)
            .with_context(|| format!("hosts[{i}].underlay_ifname"))?;
        let net = super::overlay::network(ip, FABRIC_PREFIX_LEN);
        let mtu = underlay_mtu(h);
        match fabric {
            None => fabric = Some((net, mtu)),
            Some((n, _)) if n != net => bail!(
                "hosts[{i}].underlay_ip: {ip} is not in the fabric's {n}/{FABRIC_PREFIX_LEN} (the lab has one underlay /24)"
            ),
            Some((_, m)) if m != mtu => bail!(
                "hosts[{i}].underlay_mtu: {mtu} differs from the other hosts' {m} (the lab has one fabric)"
            ),
            Some(_) => {}
        }
        if !(576 + VXLAN_OVERHEAD as u32..=9000).contains(&mtu) {
            bail!("hosts[{i}].underlay_mtu: {mtu} is not in 626..=9000");
        }
        if let Some(g) = &h.public_gateway {
            let gw: Ipv4Addr = g.parse().map_err(|_| {
                anyhow::anyhow!("hosts[{i}].public_gateway: {g:?} is not an IPv4 address")
            })?;
            if super::overlay::network(gw, FABRIC_PREFIX_LEN) != net || gw == ip {
                bail!("hosts[{i}].public_gateway: {gw} is not another address of the fabric's {net}/{FABRIC_PREFIX_LEN} (the lab's border router lives there)");
            }
            let first = t.hosts[0].public_gateway.as_deref();
            if first != Some(g.as_str()) {
                bail!("hosts[{i}].public_gateway: the lab has one border router; every host names the same (or none)");
            }
        } else if t.hosts[0].public_gateway.is_some() {
            bail!("hosts[{i}].public_gateway: the lab has one border router; every host names the same (or none)");
        }
    }
    let mut vms = BTreeSet::new();
    for (i, n) in t.nics.iter().enumerate() {
        names::check_label(&n.name).with_context(|| {
            format!("nics[{i}].name (a lab VM namespace is named after its NIC)")
        })?;
        if hosts.contains(n.name.as_str()) || n.name == FABRIC || !vms.insert(&n.name) {
            bail!(
                "nics[{i}].name: {:?} is already the name of a host or NIC",
                n.name
            );
        }
        if !hosts.contains(n.host.as_str()) {
            bail!("nics[{i}].host: no host {:?} in `hosts`", n.host);
        }
        names::check_ifname(&n.ifname).with_context(|| format!("nics[{i}].ifname"))?;
        let ip =
            n.ip.as_deref()
                .with_context(|| format!("nics[{i}].ip: a lab NIC needs a fixed IP"))?;
        ip.parse::<Ipv4Addr>()
            .map_err(|_| anyhow::anyhow!("nics[{i}].ip: {ip:?} is not an IPv4 address"))?;
        if let Some(mac) = &n.mac {
            parse_mac(mac).with_context(|| format!("nics[{i}].mac"))?;
        }
        subnet_cidr(t, &n.vpc, &n.subnet).with_context(|| format!("nics[{i}].subnet"))?;
    }
    Ok(())
}

fn underlay_mtu(h: &HostSpec) -> u32 {
    h.underlay_mtu.unwrap_or(super::overlay::UNDERLAY_MTU)
}

/// The CIDR of subnet `subnet` of VPC `vpc` as topology `t` declares it.
pub fn subnet_cidr(t: &Topology, vpc: &str, subnet: &str) -> Result<String> {
    let v = t
        .vpcs
        .iter()
        .find(|v| v.name == vpc)
        .with_context(|| format!("no VPC {vpc:?} in `vpcs`"))?;
    let s = v
        .subnets
        .iter()
        .find(|s| s.name == subnet)
        .with_context(|| format!("VPC {vpc:?} has no subnet {subnet:?}"))?;
    Ok(s.cidr.clone())
}

// ---- the built lab ----

/// A host of a built lab.
pub struct LabHost<'lab> {
    pub name: String,
    pub underlay: UnderlayPort,
    pub controller: bool,
    pub daemon: Daemon<'lab>,
}

/// A VM of a built lab.
#[derive(Clone, Debug)]
pub struct LabVm {
    pub name: String,
    pub vpc: String,
    pub subnet: String,
    pub port: OverlayVm,
}

impl LabVm {
    pub fn ip(&self) -> String {
        self.port.ip.to_string()
    }
}

/// What an agent says about itself on `/v1/status` (the fields the lab waits on).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AgentState {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub applied_generation: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Interfaces the agent attached XDP to.
    #[serde(default)]
    pub attached: Vec<String>,
    #[serde(default)]
    pub missing_interfaces: Vec<String>,
    #[serde(default)]
    pub unresolved_neighbors: Vec<String>,
}

#[derive(Deserialize)]
struct StatusAgent {
    agent: Option<AgentState>,
}

/// A lab built from a topology, driven through the controller's API.
pub struct TopologyLab<'lab> {
    lab: &'lab Lab,
    hosts: Vec<LabHost<'lab>>,
    vms: Vec<LabVm>,
    controller: ApiAddr,
    /// The topology as posted (derived MACs filled in).
    topology: Topology,
    /// The generation of the last change made through this lab.
    generation: u64,
    next_mac: u16,
}

impl<'lab> TopologyLab<'lab> {
    /// Builds `topology` in `lab`: fabric, hosts, a VM per NIC, one `sluiced` per host
    /// (`sluiced` is the binary; the first host's is the controller), then posts the
    /// topology and waits until every agent applied it.
    pub fn build(lab: &'lab Lab, topology: Topology, sluiced: &Path) -> Result<Self> {
        check_lab_topology(&topology)?;
        let mut underlays = Vec::new();
        for h in &topology.hosts {
            let cidr = format!("{}/{FABRIC_PREFIX_LEN}", h.underlay_ip);
            let port = lab
                .underlay_host_named(&h.name, &h.underlay_ifname, &cidr, underlay_mtu(h))
                .with_context(|| format!("host {}", h.name))?;
            underlays.push(port);
        }
        if let Some(gw) = topology.hosts[0].public_gateway.as_deref() {
            let hosts: Vec<Ipv4Addr> = underlays.iter().map(|u| u.ip).collect();
            lab.internet(&format!("{gw}/{FABRIC_PREFIX_LEN}"), &hosts)
                .context("the lab's Internet")?;
            // Hosts pass EIP packets to each other with XDP_TX: the fabric-side ends need
            // an XDP program to take them (see lab::overlay).
            for u in &underlays {
                lab.attach_xdp_pass(FABRIC, &u.fabric_if)?;
            }
        }
        Self::build_on(lab, topology, sluiced, underlays)
    }

    /// [`TopologyLab::build`] on hosts whose underlay is already wired (e.g. two hosts
    /// back to back, [`Lab::underlay_back_to_back`]): `underlays` holds one port per host,
    /// in the topology's order.
    pub fn build_on(
        lab: &'lab Lab,
        topology: Topology,
        sluiced: &Path,
        underlays: Vec<UnderlayPort>,
    ) -> Result<Self> {
        check_lab_topology(&topology)?;
        let names: Vec<&str> = underlays.iter().map(|u| u.host.as_str()).collect();
        let hosts: Vec<&str> = topology.hosts.iter().map(|h| h.name.as_str()).collect();
        if names != hosts {
            bail!("underlay ports {names:?} do not match the topology's hosts {hosts:?}");
        }
        let mut built = Self {
            lab,
            hosts: Vec::new(),
            vms: Vec::new(),
            controller: ApiAddr::Unix(PathBuf::new()),
            topology: topology.clone(),
            generation: 0,
            next_mac: 1,
        };
        let mut nics = Vec::new();
        for n in &topology.nics {
            let cidr = subnet_cidr(&topology, &n.vpc, &n.subnet)?;
            let vm = built.create_vm(n, &cidr)?;
            nics.push(TopologyNic {
                mac: Some(format_mac(&vm.port.mac)),
                ..n.clone()
            });
        }
        built.topology.nics = nics;
        // The first host is the controller; the other agents connect to its socket.
        for (i, underlay) in underlays.into_iter().enumerate() {
            let name = underlay.host.clone();
            // Native: the redirect path under test is the driver's (see lab::overlay).
            let spec = DaemonSpec::default().xdp_mode(XdpModeSetting::Native);
            let spec = if i == 0 {
                spec.controller(lab.run_dir().join("intent.redb"))
                    .agent(&name, None)
            } else {
                spec.agent(&name, Some(built.controller.to_string()))
            };
            let daemon = lab
                .daemon(&name, sluiced, &spec)
                .with_context(|| format!("sluiced on {name}"))?;
            if i == 0 {
                built.controller = ApiAddr::Unix(daemon.socket().to_path_buf());
            }
            built.hosts.push(LabHost {
                name,
                underlay,
                controller: i == 0,
                daemon,
            });
        }
        let path = lab.run_dir().join("topology.yaml");
        fs::write(&path, serde_yaml::to_string(&built.topology)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let posted = built.topology.clone();
        built.change(Method::POST, "/v1/topology", Some(&posted))?;
        built.wait_neighbors()?;
        Ok(built)
    }

    /// Creates NIC `n`'s VM: namespace, veth, addresses (no API call).
    fn create_vm(&mut self, n: &TopologyNic, subnet_cidr: &str) -> Result<LabVm> {
        let (_, len) = parse_cidr(subnet_cidr)?;
        let ip =
            n.ip.as_deref()
                .with_context(|| format!("NIC {}: a lab NIC needs a fixed IP", n.name))?;
        let mac = match &n.mac {
            Some(m) => parse_mac(m)?,
            None => self.derive_mac(),
        };
        let mtu = self
            .topology
            .hosts
            .first()
            .map(underlay_mtu)
            .unwrap_or(super::overlay::UNDERLAY_MTU)
            - VXLAN_OVERHEAD as u32;
        let port = self
            .lab
            .overlay_vm_named(
                &n.host,
                &n.name,
                &n.ifname,
                VM_IFNAME,
                &format!("{ip}/{len}"),
                mac,
                mtu,
            )
            .with_context(|| format!("VM of NIC {}", n.name))?;
        // An appliance forwards others' packets.
        if n.source_check == Some(false) {
            self.lab
                .exec(&n.name, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        }
        let vm = LabVm {
            name: n.name.clone(),
            vpc: n.vpc.clone(),
            subnet: n.subnet.clone(),
            port,
        };
        self.vms.push(vm.clone());
        Ok(vm)
    }

    /// `02:6c:61:00:xx:xx` ("la"), skipping MACs the topology gives.
    fn derive_mac(&mut self) -> [u8; 6] {
        let given: BTreeSet<String> = self
            .topology
            .nics
            .iter()
            .filter_map(|n| n.mac.as_deref().and_then(|m| parse_mac(m).ok()))
            .map(|m| format_mac(&m))
            .collect();
        loop {
            let n = self.next_mac;
            self.next_mac += 1;
            let mac = [0x02, 0x6c, 0x61, 0, (n >> 8) as u8, n as u8];
            if !given.contains(&format_mac(&mac)) {
                return mac;
            }
        }
    }

    /// Adds a VM after the build: its namespace and veth, then NIC `n` through the API
    /// (`POST /v1/nics`), waiting until every agent applied it. The subnet's CIDR comes
    /// from the controller; a NIC without `mac` gets a derived one.
    pub fn add_vm(&mut self, n: TopologyNic) -> Result<LabVm> {
        names::check_label(&n.name).context("a lab VM is named after its NIC")?;
        let subnet: Subnet = self
            .get(&format!(
                "/v1/subnets/{}?vpc={}",
                client::encode(&n.subnet),
                client::encode(&n.vpc)
            ))?
            .json()?;
        let vm = self.create_vm(&n, &subnet.cidr.to_string())?;
        let spec = NicSpec {
            name: Some(n.name.clone()),
            vpc: n.vpc.clone(),
            subnet: n.subnet.clone(),
            host: n.host.clone(),
            ifname: n.ifname.clone(),
            ip: n.ip.clone(),
            mac: Some(format_mac(&vm.port.mac)),
            source_check: n.source_check,
            security_groups: n.security_groups.clone(),
        };
        self.change(Method::POST, "/v1/nics", Some(&spec))
            .with_context(|| format!("creating NIC {}", n.name))?;
        Ok(vm)
    }

    pub fn lab(&self) -> &'lab Lab {
        self.lab
    }

    /// The topology that was posted at build time.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The controller's API (`--api` for `sluicectl`).
    pub fn controller_api(&self) -> &ApiAddr {
        &self.controller
    }

    pub fn hosts(&self) -> &[LabHost<'lab>] {
        &self.hosts
    }

    /// [`TopologyLab::host`], to stop or restart its daemon.
    pub fn host_mut(&mut self, name: &str) -> Result<&mut LabHost<'lab>> {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} in this lab"))
    }

    pub fn host(&self, name: &str) -> Result<&LabHost<'lab>> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("lab has no host {name:?}"))
    }

    pub fn vms(&self) -> &[LabVm] {
        &self.vms
    }

    fn vm_checked(&self, name: &str) -> Result<&LabVm> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .with_context(|| format!("lab has no VM {name:?}"))
    }

    /// A VM by name; panics if there is none (a test's own typo).
    pub fn vm(&self, name: &str) -> &LabVm {
        self.vm_checked(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The generation of the last change made through this lab.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    // ---- the API ----

    /// `method path` to the controller with an optional JSON body; any status.
    pub fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response> {
        match body {
            Some(b) => client::blocking_send_json(&self.controller, method, path, b),
            None => client::blocking_request(&self.controller, method, path, None),
        }
    }

    /// `GET path` from the controller; a non-2xx answer is an error.
    pub fn get(&self, path: &str) -> Result<Response> {
        self.request::<()>(Method::GET, path, None)?
            .error_for_status()
    }

    /// A mutation that must succeed: sends it, then waits until every agent's maps hold
    /// the generation it answered with.
    pub fn change<B: Serialize + ?Sized>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response> {
        let what = format!("{method} {path}");
        let resp = self.request(method, path, body)?.error_for_status()?;
        let generation = resp.generation().with_context(|| {
            format!(
                "{what} answered {} without a {} header",
                resp.status,
                client::GENERATION_HEADER
            )
        })?;
        self.generation = self.generation.max(generation);
        self.wait_applied(generation)
            .with_context(|| format!("after {what}"))?;
        Ok(resp)
    }

    /// What `host`'s agent says on `/v1/status`.
    pub fn agent_state(&self, host: &str) -> Result<AgentState> {
        let body = self.host(host)?.daemon.get("/v1/status")?;
        let s: StatusAgent =
            serde_json::from_str(&body).with_context(|| format!("/v1/status of {host}: {body}"))?;
        s.agent
            .with_context(|| format!("sluiced on {host} reports no agent: {body}"))
    }

    /// The controller's current intent generation (`controller.generation` on its
    /// `/v1/status`): what to wait for after a change made behind the lab's back (by
    /// `sluicectl`, say).
    pub fn controller_generation(&self) -> Result<u64> {
        let h = self
            .hosts
            .iter()
            .find(|h| h.controller)
            .context("lab has no controller host")?;
        let body = h.daemon.get("/v1/status")?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("/v1/status of {}: {body}", h.name))?;
        v["controller"]["generation"].as_u64().with_context(|| {
            format!(
                "/v1/status of {} has no controller.generation: {body}",
                h.name
            )
        })
    }

    /// Waits until every agent applied the controller's current generation.
    pub fn wait_current(&mut self) -> Result<u64> {
        let g = self.controller_generation()?;
        self.generation = self.generation.max(g);
        self.wait_applied(g)?;
        Ok(g)
    }

    /// Waits until every agent's maps hold generation `generation` or later.
    pub fn wait_applied(&self, generation: u64) -> Result<()> {
        self.wait_agents(&format!("applied generation {generation}"), |s| {
            s.applied_generation.is_some_and(|g| g >= generation)
        })
    }

    /// Waits until every agent knows the underlay MAC of every remote VTEP it sends to (the
    /// agent resolves neighbours when it applies and again every few seconds).
    pub fn wait_neighbors(&self) -> Result<()> {
        self.wait_agents("resolved every underlay neighbour", |s| {
            s.unresolved_neighbors.is_empty()
        })
    }

    fn wait_agents(&self, what: &str, done: impl Fn(&AgentState) -> bool) -> Result<()> {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        let mut pending: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        let mut last: BTreeMap<&str, String> = BTreeMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for host in pending {
                match self.agent_state(host) {
                    Ok(s) if done(&s) => {}
                    Ok(s) => {
                        last.insert(host, format!("{s:?}"));
                        still.push(host);
                    }
                    Err(e) => {
                        last.insert(host, format!("{e:#}"));
                        still.push(host);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let detail: Vec<String> = pending
                    .iter()
                    .map(|h| {
                        let log = self
                            .host(h)
                            .map(|x| tail(&x.daemon.log(), 30))
                            .unwrap_or_default();
                        format!(
                            "{h}: {}\n--- sluiced log (tail) ---\n{log}",
                            last.get(h).map(String::as_str).unwrap_or("?")
                        )
                    })
                    .collect();
                bail!(
                    "agents {pending:?} have not {what} within {APPLY_TIMEOUT:?}\n{}",
                    detail.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    // ---- observing ----

    /// Every host's counters from its daemon's `/v1/stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, StatsSnapshot>> {
        self.hosts
            .iter()
            .map(|h| Ok((h.name.clone(), h.daemon.stats()?)))
            .collect()
    }

    /// What `host`'s VPC maps hold, read from the pinned maps.
    pub fn maps(&self, host: &str) -> Result<ResolvedTables> {
        let maps = PinnedVpcMaps::open(self.host(host)?.daemon.pin_dir())?;
        Ok(read_tables(&maps)?)
    }

    /// The ifindex of `vm`'s host-side interface on its host.
    pub fn host_ifindex(&self, vm: &str) -> Result<u32> {
        let v = self.vm_checked(vm)?;
        self.lab.ifindex(&v.port.host, &v.port.host_if)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lab_has_two_tenants_with_identical_addresses_on_both_hosts() {
        let t = load_topology(&default_lab_path()).expect("lab/default.yaml");
        assert_eq!(t.hosts.len(), 2);
        let cidrs: BTreeSet<&str> = t.vpcs.iter().map(|v| v.cidr.as_str()).collect();
        assert_eq!(t.vpcs.len(), 2);
        assert_eq!(cidrs, BTreeSet::from(["10.0.0.0/16"]));
        let of = |vpc: &str| -> (BTreeSet<&str>, BTreeSet<&str>) {
            let nics = t.nics.iter().filter(|n| n.vpc == vpc);
            (
                nics.clone().filter_map(|n| n.ip.as_deref()).collect(),
                nics.map(|n| n.host.as_str()).collect(),
            )
        };
        let (a_ips, a_hosts) = of("tenant-a");
        let (b_ips, b_hosts) = of("tenant-b");
        assert_eq!(a_ips, b_ips);
        assert_eq!((a_hosts.len(), b_hosts.len()), (2, 2));
    }

    #[test]
    fn mistakes_name_their_field() {
        let base = fs::read_to_string(default_lab_path()).unwrap();
        let cases = [
            (
                base.replace("subnet: db, host: h2", "subnet: dbx, host: h2"),
                "nics[2].subnet",
            ),
            (
                base.replace("host: h2, ifname: vm-a3", "host: h9, ifname: vm-a3"),
                "nics[2].host",
            ),
            (base.replace("name: a4", "name: a1"), "nics[3].name"),
            (
                base.replace("name: a4", "name: toolongname"),
                "nics[3].name",
            ),
            (base.replace("name: a4", "name: a-4"), "nics[3].name"),
            (
                base.replace("ip: 10.0.2.10 }", "ip: 10.0.2 }"),
                "nics[2].ip",
            ),
            (base.replace(", ip: 10.0.1.12 }", " }"), "nics[3].ip"),
            (
                base.replace("172.31.0.2,", "172.31.1.2,"),
                "hosts[1].underlay_ip",
            ),
            (
                base.replace("172.31.0.2,", "172.31.0,"),
                "hosts[1].underlay_ip",
            ),
            (
                base.replace(
                    "public_gateway: 172.31.0.254 }\n  - { name: h2",
                    "public_gateway: 172.31.0.254, underlay_mtu: 9000 }\n  - { name: h2",
                ),
                "hosts[1].underlay_mtu",
            ),
            (base.replace("name: h2,", "name: fabric,"), "hosts[1].name"),
            (
                base.replace(
                    ", public_gateway: 172.31.0.254 }\n  - { name: h2",
                    ", public_gateway: 10.9.9.9 }\n  - { name: h2",
                ),
                "hosts[0].public_gateway",
            ),
            (
                base.replace(
                    "172.31.0.2, underlay_ifname: ul0, public_gateway: 172.31.0.254",
                    "172.31.0.2, underlay_ifname: ul0, public_gateway: 172.31.0.253",
                ),
                "hosts[1].public_gateway",
            ),
            (base.replace("vpcs:", "vpcz:"), "vpcz"),
        ];
        for (text, field) in cases {
            assert_ne!(text, base, "case {field} did not change the file");
            let err = format!("{:#}", topology_from_yaml(&text).unwrap_err());
            assert!(err.contains(field), "expected {field:?} in: {err}");
        }
    }
}
