//! The two labs: the same two hosts and two VMs, once with Sluice and once with the
//! kernel's bridge and VXLAN device.
//!
//! ```text
//!   h1      ul0 172.31.0.1/24 ───── veth, MTU 1500 ───── ul0 172.31.0.2/24      h2
//!           vm-tx (host end)                              vm-rx (host end)
//!             │ veth, MTU 1450                               │ veth, MTU 1450
//!   tx      eth0 10.0.1.10/24 (generator, clients)  rx  eth0 10.0.1.11/24 (receiver, servers)
//! ```
//!
//! The hosts are wired back to back ([`Lab::underlay_back_to_back`], GRO on both ends, as a
//! NIC has it), not through the labs' usual fabric bridge: a bridge would turn every frame
//! Sluice redirects into the underlay into an skb and back, a cost no NIC adds, and the
//! comparison would measure the bridge.
//!
//! Sluice: a [`TopologyLab`]: `sluiced` on each host (h1's is also the controller), the
//! topology posted to the API; `xdp_vm` on vm-tx/vm-rx, `xdp_underlay` on ul0, native mode.
//!
//! Kernel: the same namespaces, addresses, MACs and MTUs, built by the harness: on each host
//! a bridge `br0` holding the VM's host end and a VXLAN device `vx0` (the VPC's VNI, UDP
//! port 4789, `local` its underlay address, `remote` the other host's: the static
//! equivalent of Sluice's endpoint table), learning left to the bridge, and no netfilter
//! calls from the bridge (`bridge-nf-call-*` = 0).
//!
//! Kernel + nftables ([`Dataplane::KernelNft`]): the kernel lab with stateful filtering
//! switched on for the test ([`Side::set_filtering`]): bridged IPv4 through netfilter
//! (`bridge-nf-call-iptables` = 1, br_netfilter's conntrack) and on each host the nftables
//! equivalent of the VPC's default security group, which Sluice's NICs carry: ingress to a
//! VM only from the group's members, every egress, replies by connection state.
//!
//! The VMs are configured alike: TX checksum offload off (Sluice's VMs need it: frames
//! redirected by XDP lose the offload state). Differences each dataplane needs: Sluice's VM
//! ends carry the lab's pass-everything XDP program (to receive redirected frames and
//! XDP_TX answers); the kernel's host ends have GRO on, which gives them NAPI, without
//! which a veth does not accept the generator's XDP frames (Sluice's host ends have NAPI
//! from `xdp_vm`).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_common::{proto::VXLAN_PORT, stats::Reason, vpc::Mac};
use sluice_dataplane::{
    client::Method as HttpMethod,
    intent::Vpc,
    lab::{
        cmd,
        overlay::{format_mac, parse_mac, UNDERLAY_MTU, VM_MTU},
        topology::{topology_from_yaml, VM_IFNAME},
        Lab, TopologyLab, UnderlayPort,
    },
    stats::StatsSnapshot,
};

use super::netns::{link_counters, LinkCounters};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Sluice,
    Kernel,
    /// The kernel lab with stateful filtering (nftables, conntrack) on.
    #[serde(rename = "kernel_nft")]
    KernelNft,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Sluice => "sluice",
            Dataplane::Kernel => "kernel",
            Dataplane::KernelNft => "kernel+nft",
        }
    }
}

/// The nftables table of the filtered kernel path.
const FILTER_TABLE: &str = "sluice_sg";

pub const HOSTS: [(&str, &str); 2] = [("h1", "172.31.0.1"), ("h2", "172.31.0.2")];
const UNDERLAY_IF: &str = "ul0";
/// The VPC of every lab (see [`vpc_yaml`]).
pub const VPC_NAME: &str = "bench";
const SUBNET: &str = "10.0.1.0/24";
const SUBNET_LEN: u8 = 24;
const GATEWAY: &str = "10.0.1.1";

/// One VM of a lab.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Its lab label (namespace `<lab>-<label>`).
    pub label: &'static str,
    pub host: &'static str,
    pub netns: String,
    /// Its interface inside its namespace.
    pub ifname: &'static str,
    /// The host end, in the host's namespace.
    pub host_if: &'static str,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// Sender and receiver: the same in both labs.
pub const TX: VmSpec = (
    "tx",
    "h1",
    "vm-tx",
    [10, 0, 1, 10],
    [0x02, 0xbe, 0, 0, 0, 0x0a],
);
pub const RX: VmSpec = (
    "rx",
    "h2",
    "vm-rx",
    [10, 0, 1, 11],
    [0x02, 0xbe, 0, 0, 0, 0x0b],
);

/// A VM's description: label, host, host end, address, MAC.
pub type VmSpec = (&'static str, &'static str, &'static str, [u8; 4], Mac);

/// The VM `spec` in `lab`.
pub fn vm(lab: &Lab, spec: VmSpec) -> Vm {
    let (label, host, host_if, ip, mac) = spec;
    Vm {
        label,
        host,
        netns: lab.netns(label),
        ifname: VM_IFNAME,
        host_if,
        ip: Ipv4Addr::from(ip),
        mac,
    }
}

/// Counters along the path between the two VMs, to prove the traffic took it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathCounters {
    /// Sluice: h1's `fwd_encap`; kernel: packets `vx0` on h1 sent.
    pub sender_host: u64,
    /// Sluice: h2's `fwd_decap`; kernel: packets `vx0` on h2 received.
    pub receiver_host: u64,
    /// Sluice: every drop reason on both hosts; kernel: drops `vx0` counted on both hosts.
    pub drops: u64,
    /// Sluice: the drops by reason (`h1:drop_...`), nonzero ones only.
    #[serde(default)]
    pub drop_reasons: BTreeMap<String, u64>,
}

impl PathCounters {
    pub fn since(&self, earlier: &PathCounters) -> PathCounters {
        PathCounters {
            sender_host: self.sender_host.saturating_sub(earlier.sender_host),
            receiver_host: self.receiver_host.saturating_sub(earlier.receiver_host),
            drops: self.drops.saturating_sub(earlier.drops),
            drop_reasons: counts_since(&self.drop_reasons, &earlier.drop_reasons),
        }
    }
}

/// The counts of `now` that grew since `earlier`, by how much (nonzero ones only).
pub fn counts_since(
    now: &BTreeMap<String, u64>,
    earlier: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v - earlier.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A built lab of either kind.
pub struct Side<'lab> {
    pub dataplane: Dataplane,
    pub lab: &'lab Lab,
    pub tx: Vm,
    pub rx: Vm,
    /// The VPC's VNI (the kernel's VXLAN devices use Sluice's).
    pub vni: u32,
    /// Sluice's daemons live as long as this.
    topology: Option<TopologyLab<'lab>>,
}

impl<'lab> Side<'lab> {
    /// The Sluice lab, through the controller's API.
    pub fn sluice(lab: &'lab Lab, sluiced: &Path) -> Result<Side<'lab>> {
        let (tx, rx) = (vm(lab, TX), vm(lab, RX));
        let mut yaml = String::from("hosts:\n");
        for (h, ip) in HOSTS {
            yaml += &format!(
                "  - {{ name: {h}, underlay_ip: {ip}, underlay_ifname: {UNDERLAY_IF} }}\n"
            );
        }
        yaml += &vpc_yaml(&[&tx, &rx]);
        let topology = topology_from_yaml(&yaml).context("the e2e lab's topology")?;
        let (a, b) = underlay(lab)?;
        let tl = TopologyLab::build_on(lab, topology, sluiced, vec![a, b])?;
        let vpc: Vpc = tl.get(&format!("/v1/vpcs/{VPC_NAME}"))?.json()?;
        Ok(Side {
            dataplane: Dataplane::Sluice,
            lab,
            tx,
            rx,
            vni: vpc.vni,
            topology: Some(tl),
        })
    }

    /// The kernel lab: the same layout with a bridge and a VXLAN device of VNI `vni` on
    /// each host.
    pub fn kernel(lab: &'lab Lab, vni: u32) -> Result<Side<'lab>> {
        let (tx, rx) = (vm(lab, TX), vm(lab, RX));
        underlay(lab)?;
        for (i, (h, ip)) in HOSTS.iter().enumerate() {
            let (_, remote) = HOSTS[1 - i];
            // br_netfilter (loaded on this machine) would run bridged frames through the
            // iptables hooks: off, as a tuned kernel dataplane has it (`-e`: absent keys are
            // fine).
            for family in ["iptables", "ip6tables", "arptables"] {
                let key = format!("net.bridge.bridge-nf-call-{family}=0");
                lab.exec(h, &["sysctl", "-e", "-q", "-w", &key])?;
            }
            lab.bridge(h, "br0")?;
            let ns = lab.netns(h);
            let vni = vni.to_string();
            let port = VXLAN_PORT.to_string();
            cmd::ip_in(
                &ns,
                &[
                    "link",
                    "add",
                    "vx0",
                    "type",
                    "vxlan",
                    "id",
                    &vni,
                    "local",
                    ip,
                    "remote",
                    remote,
                    "dstport",
                    &port,
                    "dev",
                    UNDERLAY_IF,
                    "nolearning",
                ],
            )?;
            lab.enslave(h, "vx0", "br0")?;
            lab.up(h, "vx0")?;
        }
        for v in [&tx, &rx] {
            kernel_vm(lab, v)?;
        }
        Ok(Side {
            dataplane: Dataplane::Kernel,
            lab,
            tx,
            rx,
            vni,
            topology: None,
        })
    }

    /// Counters along the path now.
    pub fn path_counters(&self) -> Result<PathCounters> {
        match &self.topology {
            Some(tl) => {
                let stats =
                    |h: &str| -> Result<StatsSnapshot> { tl.host(h)?.daemon.pinned_stats() };
                let (s1, s2) = (stats(HOSTS[0].0)?, stats(HOSTS[1].0)?);
                let mut reasons = drop_reasons(HOSTS[0].0, &s1);
                reasons.extend(drop_reasons(HOSTS[1].0, &s2));
                Ok(PathCounters {
                    sender_host: s1.get(Reason::FwdEncap).packets,
                    receiver_host: s2.get(Reason::FwdDecap).packets,
                    drops: reasons.values().sum(),
                    drop_reasons: reasons,
                })
            }
            None => {
                let c =
                    |h: &str| -> Result<LinkCounters> { link_counters(&self.lab.netns(h), "vx0") };
                let (c1, c2) = (c(HOSTS[0].0)?, c(HOSTS[1].0)?);
                Ok(PathCounters {
                    sender_host: c1.tx_packets,
                    receiver_host: c2.rx_packets,
                    drops: c1.tx_dropped + c1.rx_dropped + c2.tx_dropped + c2.rx_dropped,
                    drop_reasons: BTreeMap::new(),
                })
            }
        }
    }

    /// Kernel lab: stateful filtering on or off on both hosts (see the module comment);
    /// the ruleset mirrors the default security group of Sluice's NICs: a VM accepts new
    /// connections only from the group's members (both VMs), sends anything, and replies
    /// pass by connection state. Sluice's lab filters always (its NICs have the group).
    pub fn set_filtering(&self, on: bool) -> Result<()> {
        if self.dataplane == Dataplane::Sluice {
            bail!("set_filtering: Sluice's NICs filter through their security groups");
        }
        let members = format!("{}, {}", self.tx.ip, self.rx.ip);
        for (h, _) in HOSTS {
            let local: Vec<String> = [&self.tx, &self.rx]
                .iter()
                .filter(|v| v.host == h)
                .map(|v| v.ip.to_string())
                .collect();
            let local = local.join(", ");
            let rules = if on {
                format!(
                    "table ip {FILTER_TABLE} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ip daddr {{ {local} }} ip saddr {{ {members} }} counter accept\n    ip daddr {{ {local} }} counter drop\n  }}\n}}\n"
                )
            } else {
                String::new()
            };
            // Declaring the table first makes the delete succeed whether or not it exists.
            let script =
                format!("table ip {FILTER_TABLE}\ndelete table ip {FILTER_TABLE}\n{rules}");
            load_nft(self.lab, h, FILTER_TABLE, &script)?;
            let key = format!("net.bridge.bridge-nf-call-iptables={}", u8::from(on));
            self.lab.exec(h, &["sysctl", "-q", "-w", &key])?;
        }
        Ok(())
    }

    /// Kernel lab: the packets the filter's accept rule for new connections (ingress from
    /// the group's members) matched on the receiver's host.
    pub fn filter_accepted(&self) -> Result<u64> {
        nft_rule_counter(self.lab, HOSTS[1].0, FILTER_TABLE, "forward")
    }

    /// The receiving VM's interface counters.
    pub fn rx_nic(&self) -> Result<LinkCounters> {
        link_counters(&self.rx.netns, self.rx.ifname)
    }

    /// The receiving VM's UDP `RcvbufErrors` (from its namespace's /proc/net/snmp).
    pub fn rx_udp_errors(&self) -> Result<u64> {
        let snmp = self
            .lab
            .exec(self.rx.label, &["cat", "/proc/net/snmp"])?
            .stdout;
        snmp_field(&snmp, "Udp", "RcvbufErrors")
    }

    /// Pings the receiver from the sender (ARP, the bridges' forwarding tables) and returns
    /// the MAC the sender's stack resolved the receiver's address to: the destination MAC
    /// of the generator's frames.
    pub fn warm_up(&self) -> Result<Mac> {
        let dst = self.rx.ip.to_string();
        self.lab
            .exec(
                self.tx.label,
                &["ping", "-c", "3", "-i", "0.2", "-W", "2", &dst],
            )
            .with_context(|| format!("{}: tx cannot ping rx", self.dataplane.name()))?;
        let out = cmd::ip_in(
            &self.tx.netns,
            &["-j", "neigh", "show", &dst, "dev", self.tx.ifname],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("ip -j neigh: {text}"))?;
        let mac = v[0]["lladdr"]
            .as_str()
            .with_context(|| format!("tx has no neighbour entry for {dst}: {text}"))?;
        parse_mac(mac)
    }

    /// Per-namespace sysctls for many short connections from the sender: a wide ephemeral
    /// port range and TIME_WAIT reuse.
    pub fn tune_for_short_connections(&self) -> Result<()> {
        tune_for_short_connections(self.lab, self.tx.label)
    }

    /// Stops Sluice's daemons (before the lab goes).
    pub fn close(self) {
        drop(self.topology);
    }
}

/// h1 and h2, wired back to back.
fn underlay(lab: &Lab) -> Result<(UnderlayPort, UnderlayPort)> {
    let [(h1, ip1), (h2, ip2)] = HOSTS;
    lab.underlay_back_to_back(
        (h1, &format!("{ip1}/24")),
        (h2, &format!("{ip2}/24")),
        UNDERLAY_IF,
        UNDERLAY_MTU,
    )
}

/// A kernel-lab VM: as [`Lab::overlay_vm_named`] builds Sluice's, without the XDP program on
/// the VM end, its host end on the bridge with GRO on.
fn kernel_vm(lab: &Lab, v: &Vm) -> Result<()> {
    kernel_vm_end(lab, v)?;
    lab.enslave(v.host, v.host_if, "br0")?;
    lab.up(v.host, v.host_if)?;
    lab.enable_gro(v.host, v.host_if)
}

/// A kernel-lab VM's own end, configured as Sluice's lab VMs are (namespace, veth to its
/// host, MTU, MAC, address, TX checksum offload off, a guest NIC's qdisc, default route via
/// the gateway); its host end is left down, to each lab's wiring.
pub fn kernel_vm_end(lab: &Lab, v: &Vm) -> Result<()> {
    lab.add_host(v.label)?;
    lab.disable_ipv6(v.label)?;
    lab.veth(v.host, v.host_if, v.label, v.ifname)?;
    lab.mtu(v.label, v.ifname, VM_MTU)?;
    lab.mtu(v.host, v.host_if, VM_MTU)?;
    lab.set_mac(v.label, v.ifname, &format_mac(&v.mac))?;
    lab.addr(v.label, v.ifname, &format!("{}/{SUBNET_LEN}", v.ip))?;
    lab.up(v.label, v.ifname)?;
    lab.exec(v.label, &["ethtool", "-K", v.ifname, "tx", "off"])?;
    lab.guest_nic(v.label, v.ifname)?;
    cmd::ip_in(
        &v.netns,
        &["route", "add", "default", "via", GATEWAY, "dev", v.ifname],
    )?;
    Ok(())
}

/// The `vpcs:` and `nics:` part of a lab topology: VPC `bench` (10.0.0.0/16, subnet `web`
/// 10.0.1.0/24) with a NIC per VM, at its fixed address and MAC.
pub fn vpc_yaml(vms: &[&Vm]) -> String {
    let mut yaml = format!(
        "vpcs:\n  - name: {VPC_NAME}\n    cidr: 10.0.0.0/16\n    subnets:\n      - {{ name: web, cidr: {SUBNET} }}\nnics:\n"
    );
    for v in vms {
        yaml += &format!(
            "  - {{ name: {}, vpc: {VPC_NAME}, subnet: web, host: {}, ifname: {}, ip: {}, mac: \"{}\" }}\n",
            v.label,
            v.host,
            v.host_if,
            v.ip,
            format_mac(&v.mac)
        );
    }
    yaml
}

/// A change through the controller's API that must succeed (waited for until every agent
/// applied it); its JSON answer (null when empty).
pub fn api_change(
    tl: &mut TopologyLab,
    method: HttpMethod,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let r = tl
        .change(method.clone(), path, Some(&body))
        .with_context(|| format!("{method} {path}"))?;
    if r.body.trim().is_empty() {
        Ok(serde_json::Value::Null)
    } else {
        r.json()
    }
}

/// Host `host`'s nonzero drop counts by reason (`<host>:drop_...`).
pub fn drop_reasons(host: &str, s: &StatsSnapshot) -> BTreeMap<String, u64> {
    Reason::ALL
        .iter()
        .filter(|r| r.is_drop() && s.get(**r).packets > 0)
        .map(|r| (format!("{host}:{}", r.name()), s.get(*r).packets))
        .collect()
}

/// Per-namespace sysctls of VM `label` for many short connections from it: a wide
/// ephemeral port range and TIME_WAIT reuse.
pub fn tune_for_short_connections(lab: &Lab, label: &str) -> Result<()> {
    for kv in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        lab.exec(label, &["sysctl", "-q", "-w", kv])?;
    }
    Ok(())
}

/// The TCP segments namespace `label` retransmitted (`Tcp RetransSegs`): a connect stalled
/// by a lost or refused SYN shows here.
pub fn tcp_retransmits(lab: &Lab, label: &str) -> Result<u64> {
    let snmp = lab.exec(label, &["cat", "/proc/net/snmp"])?.stdout;
    snmp_field(&snmp, "Tcp", "RetransSegs")
}

/// Loads nftables `rules` into `host` (kept as `<name>.nft` in the lab's run directory).
pub fn load_nft(lab: &Lab, host: &str, name: &str, rules: &str) -> Result<()> {
    let file = lab.run_dir().join(format!("{name}.nft"));
    std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    lab.exec(host, &["nft", "-f", &file.to_string_lossy()])
        .with_context(|| format!("loading {} (nft)", file.display()))?;
    Ok(())
}

/// The packets of the first rule counter of chain `table chain` (family ip) in `host`.
pub fn nft_rule_counter(lab: &Lab, host: &str, table: &str, chain: &str) -> Result<u64> {
    let out = lab
        .exec(host, &["nft", "-j", "list", "chain", "ip", table, chain])?
        .stdout;
    nft_counter_packets(&out)
}

/// The packets of the first rule counter in `nft -j list chain` output.
fn nft_counter_packets(json_text: &str) -> Result<u64> {
    let v: serde_json::Value =
        serde_json::from_str(json_text).with_context(|| format!("nft -j: {json_text}"))?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .find_map(|e| e["counter"]["packets"].as_u64())
        .with_context(|| format!("no rule counter in {json_text}"))
}

/// Field `field` of protocol `proto` in /proc/net/snmp (a header line, then a value line).
pub(crate) fn snmp_field(snmp: &str, proto: &str, field: &str) -> Result<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no {proto} lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {proto} {field} in /proc/net/snmp"))
}

/// The namespaces of `labs` still listed by `ip netns` (there should be none after close).
pub fn leftover_namespaces(labs: &[String]) -> Result<Vec<String>> {
    let all = cmd::list_netns()?;
    Ok(all
        .into_iter()
        .filter(|n| labs.iter().any(|l| n.starts_with(&format!("{l}-"))))
        .collect())
}

/// Fails unless `side`'s VM ends look as this module's docs say (a guard against a lab
/// builder change silently making the comparison unfair).
pub fn check_vm_offloads(side: &Side) -> Result<()> {
    for v in [&side.tx, &side.rx] {
        let out = side.lab.exec(v.label, &["ethtool", "-k", v.ifname])?.stdout;
        let tx_csum = out
            .lines()
            .find(|l| l.starts_with("tx-checksumming:"))
            .unwrap_or("");
        if !tx_csum.contains("off") {
            bail!(
                "{}: VM {} has TX checksum offload on ({tx_csum:?})",
                side.dataplane.name(),
                v.label
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masquerade_counter_is_read_from_nft_json() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.9"}}, {"chain": {"family": "ip", "table": "nat", "name": "postrouting"}}, {"rule": {"family": "ip", "table": "nat", "chain": "postrouting", "handle": 2, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "ul0"}}, {"counter": {"packets": 42, "bytes": 2520}}, {"masquerade": null}]}}]}"#;
        assert_eq!(nft_counter_packets(text).unwrap(), 42);
        assert!(nft_counter_packets(r#"{"nftables": []}"#).is_err());
        assert!(nft_counter_packets("not json").is_err());
    }

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 2 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 1 5 3 4 0\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 9\n";
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors").unwrap(), 4);
        assert_eq!(snmp_field(snmp, "UdpLite", "RcvbufErrors").unwrap(), 9);
        assert!(snmp_field(snmp, "Udp", "Nope").is_err());
        assert!(snmp_field(snmp, "Tcp", "RcvbufErrors").is_err());
    }
}
