//! `sluice-bench nat`: short TCP connections per second from a VM to a server on the
//! lab's Internet, through Sluice's NAT gateway (SNAT) and through the kernel's nftables
//! masquerade on the same layout, interleaved in one run.
//!
//! ```text
//!   internet   inet0 172.31.0.254/24 (border router), lo 198.51.100.10 (server)
//!                 │ fabric bridge
//!   h1         ul0 172.31.0.1/24
//!              vm-tx (host end)
//!                 │ veth, MTU 1450
//!   tx         eth0 10.0.1.10/24 (client), default route via 10.0.1.1
//! ```
//!
//! Two tests per round: connections all to one server port (one destination: a host's
//! SNAT ports for it bound how many connections may be open or closing at once), and
//! spread over [`SPREAD_PORTS`] server ports in turn (every destination port has its own
//! SNAT port space, so that bound is 64 times further off).
//!
//! Sluice: a [`TopologyLab`] of one host with `public_gateway` (the lab builds the
//! Internet namespace), the VPC given a NAT gateway with one SNAT EIP for the whole VPC
//! and the default route to it, all through the controller's API; translation in
//! `xdp_vm`/`xdp_underlay`. Kernel: the same namespaces, addresses, MACs and MTUs built
//! by the harness; h1 routes (ip_forward, default via the border router) and masquerades
//! (`nft`: table ip nat, postrouting `oifname ul0 counter masquerade`; conntrack). The
//! Internet has no route to 10.0.1.0/24 in either lab: a connection only completes
//! translated.

use std::{collections::BTreeMap, net::SocketAddrV4, path::Path};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_common::stats::Reason;
use sluice_dataplane::{
    client::Method as HttpMethod,
    lab::{
        cmd,
        internet::{INTERNET, PUBLIC_SERVER},
        topology::topology_from_yaml,
        Lab, TopologyLab,
    },
};

use super::{
    compared,
    labs::{
        api_change, drop_reasons, kernel_vm_end, load_nft, nft_rule_counter, snmp_field,
        tcp_retransmits, tune_for_short_connections, vm, vpc_yaml, Dataplane, TX, VPC_NAME,
    },
    require_tools, run_in_two_labs, traffic, Compared, CrrMethod, Params, RunInfo, CRR_PORT,
};

const HOST: &str = "h1";
const HOST_IP: &str = "172.31.0.1";
const BORDER: &str = "172.31.0.254";
const UNDERLAY_IF: &str = "ul0";
const GATEWAY: &str = "10.0.1.1";
const EIP_POOL: &str = "203.0.113.0/24";
/// The spread test's server ports: `SPREAD_PORT..SPREAD_PORT + SPREAD_PORTS`.
const SPREAD_PORT: u16 = 9100;
pub const SPREAD_PORTS: u16 = 64;

/// Counters proving the connections were translated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NatCounters {
    /// Sluice: h1's `fwd_nat_out`; kernel: packets the masquerade rule matched (the first
    /// packet of each connection: NAT chains see no other).
    pub translated_out: u64,
    /// Sluice: h1's `fwd_nat_in`; kernel: 0 (conntrack translates replies without a rule).
    pub translated_in: u64,
    /// Sluice: h1's drops by reason (nonzero only).
    #[serde(default)]
    pub drop_reasons: BTreeMap<String, u64>,
    /// The VM's TCP segments retransmitted (`Tcp RetransSegs`): a connect stalled by a
    /// lost or refused SYN shows here.
    #[serde(default)]
    pub client_retransmits: u64,
    /// The Internet namespace's `TcpExt PAWSEstab`: segments (among them SYNs meeting a
    /// TIME_WAIT socket of the same 4-tuple) refused for an older timestamp. A NAT that
    /// hands a public (address, port) to another flow while the server still holds the
    /// last one's TIME_WAIT shows here.
    #[serde(default)]
    pub server_paws_rejected: u64,
}

impl NatCounters {
    fn since(&self, earlier: &NatCounters) -> NatCounters {
        NatCounters {
            translated_out: self.translated_out.saturating_sub(earlier.translated_out),
            translated_in: self.translated_in.saturating_sub(earlier.translated_in),
            drop_reasons: super::labs::counts_since(&self.drop_reasons, &earlier.drop_reasons),
            client_retransmits: self
                .client_retransmits
                .saturating_sub(earlier.client_retransmits),
            server_paws_rejected: self
                .server_paws_rejected
                .saturating_sub(earlier.server_paws_rejected),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatCrrRun {
    pub run: u32,
    pub dataplane: Dataplane,
    /// Server ports the connections went to in turn (1: one destination, as a VM
    /// talking to one service; [`SPREAD_PORTS`]: spread, so SNAT ports are not the limit).
    pub server_ports: u16,
    pub connections: u64,
    pub failures: u64,
    pub secs: f64,
    pub per_second: f64,
    pub counters: NatCounters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatReport {
    #[serde(flatten)]
    pub run: RunInfo,
    pub method: CrrMethod,
    /// The SNAT EIP Sluice's VM left from.
    pub eip: String,
    pub comparisons: Vec<Compared>,
    pub crr: Vec<NatCrrRun>,
}

fn method(p: &Params) -> CrrMethod {
    CrrMethod {
        topology: format!("One host namespace h1 on the lab's fabric bridge (ul0 {HOST_IP}/24, MTU 1500) and the lab's Internet namespace on the same bridge (border router {BORDER}, public server {PUBLIC_SERVER} on its lo, no route to the VPC's 10.0.1.0/24); one VM namespace tx (eth0 10.0.1.10/24, MTU 1450, TX checksum offload off, default route via {GATEWAY}) wired to h1 by a veth pair. Sluice: sluiced on h1 (controller and agent), the topology with public_gateway {BORDER} posted to its API, then an EIP pool {EIP_POOL}, one EIP, a NAT gateway whose SNAT entry covers the VPC with that EIP, and the route 0.0.0.0/0 to it; xdp_vm on the VM's host end, xdp_underlay on ul0, native mode. Kernel: the same namespaces, addresses, MACs and MTUs built by the harness; h1 has 10.0.1.1/24 on the VM's host end (GRO on), net.ipv4.ip_forward=1, default route via {BORDER}, and nftables `table ip nat {{ chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"ul0\" counter masquerade }} }}` (conntrack)."),
        crr: format!("Short TCP connections one after another for {} s: a client thread in tx (CPU {}) connects to {PUBLIC_SERVER}:{CRR_PORT} (test 1) or to {PUBLIC_SERVER}:{SPREAD_PORT}..{} in turn (test 2, one server thread per port), sends 1 byte, reads 1 byte, closes (a connect not answered within 2 s counts as failed); the server threads in the Internet namespace (CPU {}) accept, read, answer, close. tx has net.ipv4.tcp_tw_reuse=1 and ports 1024-65000. Each run checks the servers answered every connection the client counted and the translation counters (Sluice: fwd_nat_out, fwd_nat_in; kernel: the masquerade rule's counter) saw at least one packet per connection.", p.crr_secs, p.sender_cpu, SPREAD_PORT + SPREAD_PORTS - 1, p.receiver_cpu),
        cpus: format!("client on CPU {}, server on CPU {}; sluiced and the kernel's own threads are not pinned", p.sender_cpu, p.receiver_cpu),
        rounds: format!("{} rounds, each running both tests for both dataplanes back to back, Sluice first in even rounds and the kernel first in odd ones, after one discarded warm-up run of the spread test each. Medians over rounds; ratios are Sluice / kernel per round.", p.runs),
    }
}

/// One lab of either kind.
struct NatSide<'lab> {
    dataplane: Dataplane,
    lab: &'lab Lab,
    topology: Option<TopologyLab<'lab>>,
    eip: String,
}

impl<'lab> NatSide<'lab> {
    fn sluice(lab: &'lab Lab, sluiced: &Path) -> Result<NatSide<'lab>> {
        let yaml = format!(
            "hosts:\n  - {{ name: {HOST}, underlay_ip: {HOST_IP}, underlay_ifname: {UNDERLAY_IF}, public_gateway: {BORDER} }}\n{}",
            vpc_yaml(&[&vm(lab, TX)])
        );
        let topology = topology_from_yaml(&yaml).context("the NAT lab's topology")?;
        let mut tl = TopologyLab::build(lab, topology, sluiced)?;
        let mut change = |method: HttpMethod, path: &str, body: serde_json::Value| {
            api_change(&mut tl, method, path, body)
        };
        change(
            HttpMethod::POST,
            "/v1/eip-pools",
            json!({"name": "public", "cidrs": [EIP_POOL]}),
        )?;
        let e = change(
            HttpMethod::POST,
            "/v1/eips",
            json!({"name": "snat", "pool": "public"}),
        )?;
        let eip = e["address"]
            .as_str()
            .context("the EIP has no address")?
            .to_string();
        change(
            HttpMethod::POST,
            "/v1/nat-gateways",
            json!({"name": "gw", "vpc": VPC_NAME, "subnet": "web", "eips": ["snat"],
                   "snat": [{"cidr": "10.0.0.0/16", "eips": ["snat"]}]}),
        )?;
        change(
            HttpMethod::POST,
            "/v1/routes",
            json!({"vpc": VPC_NAME, "destination": "0.0.0.0/0",
                   "next_hop": {"type": "nat_gateway", "nat_gateway": "gw"}}),
        )?;
        Ok(NatSide {
            dataplane: Dataplane::Sluice,
            lab,
            topology: Some(tl),
            eip,
        })
    }

    fn kernel(lab: &'lab Lab) -> Result<NatSide<'lab>> {
        let port = lab.underlay_host_named(HOST, UNDERLAY_IF, &format!("{HOST_IP}/24"), 1500)?;
        lab.internet(&format!("{BORDER}/24"), &[port.ip])
            .context("the lab's Internet")?;
        let tx = vm(lab, TX);
        kernel_vm_end(lab, &tx)?;
        lab.addr(HOST, tx.host_if, &format!("{GATEWAY}/24"))?;
        lab.up(HOST, tx.host_if)?;
        lab.enable_gro(HOST, tx.host_if)?;
        lab.exec(HOST, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        cmd::ip_in(
            &lab.netns(HOST),
            &["route", "add", "default", "via", BORDER, "dev", UNDERLAY_IF],
        )?;
        let rules = format!(
            "table ip nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{UNDERLAY_IF}\" counter masquerade\n  }}\n}}\n"
        );
        load_nft(lab, HOST, "nat", &rules).context("the masquerade rule")?;
        Ok(NatSide {
            dataplane: Dataplane::Kernel,
            lab,
            topology: None,
            eip: HOST_IP.into(),
        })
    }

    fn vm_netns(&self) -> String {
        self.lab.netns(TX.0)
    }

    fn counters(&self) -> Result<NatCounters> {
        let mut c = self.translation_counters()?;
        c.client_retransmits = tcp_retransmits(self.lab, TX.0)?;
        let netstat = self
            .lab
            .exec(INTERNET, &["cat", "/proc/net/netstat"])?
            .stdout;
        c.server_paws_rejected = snmp_field(&netstat, "TcpExt", "PAWSEstab")?;
        Ok(c)
    }

    fn translation_counters(&self) -> Result<NatCounters> {
        match &self.topology {
            Some(tl) => {
                let s = tl.host(HOST)?.daemon.pinned_stats()?;
                Ok(NatCounters {
                    translated_out: s.get(Reason::FwdNatOut).packets,
                    translated_in: s.get(Reason::FwdNatIn).packets,
                    drop_reasons: drop_reasons(HOST, &s),
                    ..NatCounters::default()
                })
            }
            None => Ok(NatCounters {
                translated_out: nft_rule_counter(self.lab, HOST, "nat", "postrouting")?,
                ..NatCounters::default()
            }),
        }
    }

    /// The VM reaches the server (ARP, the agent's neighbour resolution, the first
    /// translation) before anything is timed: one connection, tried for a few seconds.
    fn warm_up(&self, p: &Params) -> Result<()> {
        let server = SocketAddrV4::new(PUBLIC_SERVER.parse()?, CRR_PORT);
        let s = traffic::CrrServer::start(&self.lab.netns(INTERNET), p.receiver_cpu, server)?;
        let before = self.counters()?;
        let mut c = traffic::Crr::default();
        for _ in 0..5 {
            c = traffic::crr_client(&self.vm_netns(), p.sender_cpu, server, 0.01)?;
            if c.connections > 0 {
                break;
            }
        }
        s.stop()?;
        ensure!(
            c.connections > 0,
            "{}: the VM cannot open a connection to {server} ({} failed; translation counters {:?})",
            self.dataplane.name(),
            c.failures,
            self.counters()?.since(&before)
        );
        Ok(())
    }
}

/// The servers of a test over `ports` server ports.
fn servers(ports: u16) -> Result<Vec<SocketAddrV4>> {
    let ip = PUBLIC_SERVER.parse()?;
    Ok(if ports == 1 {
        vec![SocketAddrV4::new(ip, CRR_PORT)]
    } else {
        (0..ports)
            .map(|i| SocketAddrV4::new(ip, SPREAD_PORT + i))
            .collect()
    })
}

fn crr_test(s: &NatSide, p: &Params, run: u32, ports: u16) -> Result<NatCrrRun> {
    let addrs = servers(ports)?;
    let srvs = addrs
        .iter()
        .map(|a| traffic::CrrServer::start(&s.lab.netns(INTERNET), p.receiver_cpu, *a))
        .collect::<Result<Vec<_>>>()?;
    let before = s.counters()?;
    let c = traffic::crr_client_to(&s.vm_netns(), p.sender_cpu, addrs, p.crr_secs)?;
    let mut served = 0;
    for srv in srvs {
        served += srv.stop()?;
    }
    let counters = s.counters()?.since(&before);
    let dp = s.dataplane.name();
    ensure!(
        c.connections > 0,
        "{dp}: no connection completed ({} failed)",
        c.failures
    );
    ensure!(
        served >= c.connections,
        "{dp}: the server answered {served} connections, the client counted {}",
        c.connections
    );
    ensure!(
        counters.translated_out >= c.connections,
        "{dp}: {} connections but the translation counted {counters:?}: the traffic did not take the path under test",
        c.connections
    );
    let secs = c.elapsed.as_secs_f64();
    Ok(NatCrrRun {
        run,
        dataplane: s.dataplane,
        server_ports: ports,
        connections: c.connections,
        failures: c.failures,
        secs,
        per_second: c.connections as f64 / secs,
        counters,
    })
}

pub fn run(p: &Params, log: impl Fn(&str)) -> Result<NatReport> {
    require_tools(&["nft", "ethtool"])?;
    let (run, (eip, crr)) = run_in_two_labs("nat", p, &log, |s, k| measure(p, s, k, &log))?;
    Ok(NatReport {
        run,
        method: method(p),
        eip,
        comparisons: comparisons(&crr)?,
        crr,
    })
}

/// One comparison per test: one server port, then spread over [`SPREAD_PORTS`].
fn comparisons(crr: &[NatCrrRun]) -> Result<Vec<Compared>> {
    [
        (
            1,
            "TCP connections through NAT, one server port".to_string(),
        ),
        (
            SPREAD_PORTS,
            format!("TCP connections through NAT, {SPREAD_PORTS} server ports"),
        ),
    ]
    .into_iter()
    .map(|(ports, metric)| {
        let runs: Vec<NatCrrRun> = crr
            .iter()
            .filter(|r| r.server_ports == ports)
            .cloned()
            .collect();
        compared(&metric, "per s", true, &runs, |r| r.per_second)
    })
    .collect()
}

fn measure(
    p: &Params,
    sluice_lab: &Lab,
    kernel_lab: &Lab,
    log: &dyn Fn(&str),
) -> Result<(String, Vec<NatCrrRun>)> {
    log("building the Sluice lab (sluiced, NAT gateway and default route through the API)");
    let sluice = NatSide::sluice(sluice_lab, &p.sluiced)?;
    log("building the kernel lab (routing host with nftables masquerade)");
    let kernel = NatSide::kernel(kernel_lab)?;
    let sides = [&sluice, &kernel];
    for s in sides {
        tune_for_short_connections(s.lab, TX.0)?;
        s.warm_up(p)?;
    }
    // Warm-up spread over the servers (one port alone would spend its SNAT ports).
    for s in sides {
        let c = crr_test(s, p, 0, SPREAD_PORTS)?;
        log(&format!(
            "warm-up {}: {:.0} connections/s",
            s.dataplane.name(),
            c.per_second
        ));
    }
    let mut crr = Vec::new();
    for run in 0..p.runs {
        let order = if run % 2 == 0 {
            [&sluice, &kernel]
        } else {
            [&kernel, &sluice]
        };
        for ports in [1, SPREAD_PORTS] {
            for s in order {
                let c = crr_test(s, p, run, ports)?;
                log(&format!(
                    "round {run} {} ({ports} server ports): {:.0} connections/s ({} failed), translation {:?}",
                    s.dataplane.name(),
                    c.per_second,
                    c.failures,
                    c.counters
                ));
                crr.push(c);
            }
        }
    }
    let eip = sluice.eip.clone();
    drop(sluice.topology);
    drop(kernel);
    Ok((eip, crr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_subtract_and_keep_only_new_drops() {
        let a = NatCounters {
            translated_out: 10,
            translated_in: 8,
            drop_reasons: [("h1:drop_x".to_string(), 3)].into(),
            client_retransmits: 1,
            server_paws_rejected: 0,
        };
        let b = NatCounters {
            translated_out: 25,
            translated_in: 20,
            drop_reasons: [("h1:drop_x".to_string(), 3), ("h1:drop_y".to_string(), 2)].into(),
            client_retransmits: 4,
            server_paws_rejected: 7,
        };
        let d = b.since(&a);
        assert_eq!((d.translated_out, d.translated_in), (15, 12));
        assert_eq!((d.client_retransmits, d.server_paws_rejected), (3, 7));
        assert_eq!(d.drop_reasons, [("h1:drop_y".to_string(), 2)].into());
    }
}
