//! `sluice-bench lb`: short TCP connections per second from a VM to a load balancer's
//! VIP in front of three backend VMs, through Sluice's load balancer and through the
//! kernel's nftables DNAT with `numgen` on the same layout, interleaved in one run.
//!
//! ```text
//!   h1    ul0 172.31.0.1/24 (on the lab's fabric bridge; unused by the traffic)
//!         vm-tx     vm-b1     vm-b2     vm-b3      (host ends)
//!           │ veth, MTU 1450 each
//!   tx 10.0.1.10   b1 10.0.1.21   b2 10.0.1.22   b3 10.0.1.23    (VMs, eth0, one /24)
//!   client         servers on :9002 each
//!
//!   VIP 10.0.1.100:80 -> b1..b3:9002
//! ```
//!
//! Sluice: a [`TopologyLab`] of one host, then through the controller's API a load
//! balancer with the VIP and one TCP listener (port 80, `maglev`, default health check)
//! over the three backends (port 9002, weight 100 each); `xdp_vm` on the client's host end
//! picks the backend and rewrites the destination, the backend's host end translates the
//! replies back. Kernel: the same namespaces, addresses, MACs and MTUs; h1 routes between
//! the VM ends (a /32 route and proxy ARP per VM, ip_forward), holds the VIP on its `lo`
//! (so it answers ARP for it) and `table ip lb { chain prerouting { type nat hook
//! prerouting priority dstnat; ip daddr VIP tcp dport 80 counter dnat ip to numgen inc mod
//! 3 map { 0 : b1 . 9002, ... } } }`; conntrack translates the replies.
//!
//! The backends' servers bind their own address: a connection to the VIP completes only
//! translated both ways. They run for the whole run (the health checks see them up) and
//! count what they answered, and from whom: the backends must see the client's address.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_common::vpc::Mac;
use sluice_dataplane::{
    client::Method as HttpMethod,
    lab::{cmd, topology::topology_from_yaml, Lab, TopologyLab},
};

use super::{
    compared,
    labs::{
        api_change, drop_reasons, kernel_vm_end, load_nft, nft_rule_counter, tcp_retransmits,
        tune_for_short_connections, vm, vpc_yaml, Dataplane, Vm, VmSpec, TX, VPC_NAME,
    },
    require_tools, run_in_two_labs, traffic, Compared, CrrMethod, Params, RunInfo, CRR_PORT,
};

const HOST: &str = "h1";
const HOST_IP: &str = "172.31.0.1";
const UNDERLAY_IF: &str = "ul0";
const GATEWAY: &str = "10.0.1.1";
const LB_NAME: &str = "bench";
pub const VIP: &str = "10.0.1.100";
pub const VIP_PORT: u16 = 80;
/// The backends' port (the listener translates 80 to it).
const BACKEND_PORT: u16 = CRR_PORT;
pub const SCHEDULER: &str = "maglev";
/// The backend VMs, all on h1 with the client.
pub const BACKENDS: [VmSpec; 3] = [
    ("b1", HOST, "vm-b1", [10, 0, 1, 21], backend_mac(0x15)),
    ("b2", HOST, "vm-b2", [10, 0, 1, 22], backend_mac(0x16)),
    ("b3", HOST, "vm-b3", [10, 0, 1, 23], backend_mac(0x17)),
];
/// Under this many connections a backend may get none by chance (Maglev hashes the
/// 5-tuple): the every-backend-served check waits for at least this many.
const SPREAD_CHECK_MIN: u64 = 30;

const fn backend_mac(last: u8) -> Mac {
    [0x02, 0xbe, 0, 0, 0, last]
}

/// Counters proving the connections took the path under test.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LbCounters {
    /// Kernel: packets the DNAT rule matched (the first packet of each connection: NAT
    /// chains see no other). Sluice: none (balancing has no counter of its own; the
    /// backends' counts below prove it).
    #[serde(default)]
    pub dnat_matched: Option<u64>,
    /// Sluice: h1's drops by reason (nonzero only).
    #[serde(default)]
    pub drop_reasons: BTreeMap<String, u64>,
    /// The client VM's TCP segments retransmitted.
    #[serde(default)]
    pub client_retransmits: u64,
}

impl LbCounters {
    fn since(&self, earlier: &LbCounters) -> LbCounters {
        LbCounters {
            dnat_matched: self
                .dnat_matched
                .zip(earlier.dnat_matched)
                .map(|(a, b)| a.saturating_sub(b)),
            drop_reasons: super::labs::counts_since(&self.drop_reasons, &earlier.drop_reasons),
            client_retransmits: self
                .client_retransmits
                .saturating_sub(earlier.client_retransmits),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbCrrRun {
    pub run: u32,
    pub dataplane: Dataplane,
    pub connections: u64,
    pub failures: u64,
    pub secs: f64,
    pub per_second: f64,
    /// Connections each backend answered during the test, in [`BACKENDS`] order.
    pub served: Vec<u64>,
    /// Answered connections whose peer was not the client's address (should be 0).
    pub foreign_peers: u64,
    pub counters: LbCounters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbReport {
    #[serde(flatten)]
    pub run: RunInfo,
    pub method: CrrMethod,
    /// `address:port` of the VIP's listener.
    pub vip: String,
    /// Sluice's scheduler (the kernel's is `numgen inc`, round robin).
    pub scheduler: String,
    /// The backends, `address:port`, in the order of each run's `served`.
    pub backends: Vec<String>,
    pub comparisons: Vec<Compared>,
    pub crr: Vec<LbCrrRun>,
}

fn backend_list() -> String {
    BACKENDS
        .iter()
        .map(|b| format!("{} {}", b.0, Ipv4Addr::from(b.3)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nft_rules() -> String {
    let map: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {BACKEND_PORT}", Ipv4Addr::from(b.3)))
        .collect();
    format!(
        "table ip lb {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} tcp dport {VIP_PORT} counter dnat ip to numgen inc mod {} map {{ {} }}\n  }}\n}}\n",
        BACKENDS.len(),
        map.join(", ")
    )
}

fn method(p: &Params) -> CrrMethod {
    CrrMethod {
        topology: format!("One host namespace h1 (ul0 {HOST_IP}/24 on the lab's fabric bridge, unused by the traffic); one client VM namespace tx (eth0 10.0.1.10/24) and three backend VM namespaces ({}), each eth0 in 10.0.1.0/24, MTU 1450, TX checksum offload off, default route via {GATEWAY}, wired to h1 by a veth pair. VIP {VIP}:{VIP_PORT} in front of the backends' port {BACKEND_PORT}. Sluice: sluiced on h1 (controller and agent), the topology posted to its API, then a load balancer (VIP {VIP}, one TCP listener on port {VIP_PORT}, scheduler {SCHEDULER}, default TCP health check every 2 s, the three backends on port {BACKEND_PORT} with weight 100 each) through the API, waited for until every backend reports healthy; xdp_vm on the VM host ends, native mode: the client's host end picks the backend (Maglev table of 65,537 entries, connection table pinning) and rewrites the destination, the backend's host end translates replies back. Kernel: the same namespaces, addresses, MACs and MTUs built by the harness; h1 has {GATEWAY}/32 on every VM host end (GRO on, proxy_arp=1, proxy_delay=0) and a /32 route to each VM through its end, net.ipv4.ip_forward=1, the VIP as a /32 on its lo (so h1 answers ARP for it; DNAT rewrites before routing, so nothing is delivered locally), and nftables `{}` (conntrack translates the replies).", backend_list(), nft_rules().split_whitespace().collect::<Vec<_>>().join(" ")),
        crr: format!("Short TCP connections one after another for {} s: a client thread in tx (CPU {}) connects to {VIP}:{VIP_PORT}, sends 1 byte, reads 1 byte, closes (a connect not answered within 2 s counts as failed); one server thread per backend VM (all on CPU {}) accepts, reads, answers, closes, bound to the backend's own address (so a connection completes only translated both ways), running for the whole run. tx has net.ipv4.tcp_tw_reuse=1 and ports 1024-65000. Each run checks the backends answered every connection the client counted, every answered connection came from the client's own address, every backend answered some (from {SPREAD_CHECK_MIN} connections on), and for the kernel the DNAT rule's counter matched at least one packet per connection.", p.crr_secs, p.sender_cpu, p.receiver_cpu),
        cpus: format!("client on CPU {}, backend servers on CPU {}; sluiced and the kernel's own threads are not pinned", p.sender_cpu, p.receiver_cpu),
        rounds: format!("{} rounds, each running the test for both dataplanes back to back, Sluice first in even rounds and the kernel first in odd ones, after one discarded warm-up run each. Medians over rounds; ratios are Sluice / kernel per round.", p.runs),
    }
}

/// One lab of either kind, its backend servers running.
struct LbSide<'lab> {
    dataplane: Dataplane,
    lab: &'lab Lab,
    /// Sluice's daemon lives as long as this.
    topology: Option<TopologyLab<'lab>>,
    tx: Vm,
    servers: Vec<traffic::CrrServer>,
}

impl<'lab> LbSide<'lab> {
    fn sluice(lab: &'lab Lab, sluiced: &Path, p: &Params) -> Result<LbSide<'lab>> {
        let (tx, backends) = vms(lab);
        let mut all = vec![&tx];
        all.extend(&backends);
        let yaml = format!(
            "hosts:\n  - {{ name: {HOST}, underlay_ip: {HOST_IP}, underlay_ifname: {UNDERLAY_IF} }}\n{}",
            vpc_yaml(&all)
        );
        let topology = topology_from_yaml(&yaml).context("the LB lab's topology")?;
        let mut tl = TopologyLab::build(lab, topology, sluiced)?;
        let servers = start_servers(&backends, &tx, p)?;
        let pool: Vec<serde_json::Value> = backends
            .iter()
            .map(|b| json!({"nic": b.label, "port": BACKEND_PORT, "weight": 100}))
            .collect();
        api_change(
            &mut tl,
            HttpMethod::POST,
            "/v1/load-balancers",
            json!({"name": LB_NAME, "vpc": VPC_NAME, "subnet": "web", "vip": VIP,
                   "listeners": [{"protocol": "tcp", "port": VIP_PORT, "scheduler": SCHEDULER,
                                  "backends": pool}]}),
        )?;
        wait_healthy(&tl, Duration::from_secs(30))?;
        Ok(LbSide {
            dataplane: Dataplane::Sluice,
            lab,
            topology: Some(tl),
            tx,
            servers,
        })
    }

    fn kernel(lab: &'lab Lab, p: &Params) -> Result<LbSide<'lab>> {
        lab.underlay_host_named(HOST, UNDERLAY_IF, &format!("{HOST_IP}/24"), 1500)?;
        let (tx, backends) = vms(lab);
        let ns = lab.netns(HOST);
        for v in std::iter::once(&tx).chain(&backends) {
            kernel_vm_end(lab, v)?;
            lab.addr(HOST, v.host_if, &format!("{GATEWAY}/32"))?;
            lab.up(HOST, v.host_if)?;
            lab.enable_gro(HOST, v.host_if)?;
            // Proxy ARP answers at once (its default delays by up to 0.8 s).
            for key in [
                format!("net.ipv4.conf.{}.proxy_arp=1", v.host_if),
                format!("net.ipv4.neigh.{}.proxy_delay=0", v.host_if),
            ] {
                lab.exec(HOST, &["sysctl", "-q", "-w", &key])?;
            }
            cmd::ip_in(
                &ns,
                &["route", "add", &format!("{}/32", v.ip), "dev", v.host_if],
            )?;
        }
        lab.exec(HOST, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // A local address answers ARP on every interface (arp_ignore 0); DNAT rewrites
        // before routing, so nothing is delivered to it.
        lab.addr(HOST, "lo", &format!("{VIP}/32"))?;
        lab.up(HOST, "lo")?;
        load_nft(lab, HOST, "lb", &nft_rules()).context("the DNAT load-balancing rule")?;
        let servers = start_servers(&backends, &tx, p)?;
        Ok(LbSide {
            dataplane: Dataplane::Kernel,
            lab,
            topology: None,
            tx,
            servers,
        })
    }

    fn counters(&self) -> Result<LbCounters> {
        let mut c = match &self.topology {
            Some(tl) => LbCounters {
                drop_reasons: drop_reasons(HOST, &tl.host(HOST)?.daemon.pinned_stats()?),
                ..LbCounters::default()
            },
            None => LbCounters {
                dnat_matched: Some(nft_rule_counter(self.lab, HOST, "lb", "prerouting")?),
                ..LbCounters::default()
            },
        };
        c.client_retransmits = tcp_retransmits(self.lab, self.tx.label)?;
        Ok(c)
    }

    fn served(&self) -> (Vec<u64>, u64) {
        (
            self.servers.iter().map(|s| s.served()).collect(),
            self.servers.iter().map(|s| s.foreign()).sum(),
        )
    }

    /// The client reaches the VIP (ARP, the first balanced flow) before anything is
    /// timed: one connection, tried a few times.
    fn warm_up(&self, p: &Params) -> Result<()> {
        let mut c = traffic::Crr::default();
        for _ in 0..5 {
            c = traffic::crr_client(&self.tx.netns, p.sender_cpu, vip()?, 0.01)?;
            if c.connections > 0 {
                return Ok(());
            }
        }
        anyhow::bail!(
            "{}: the client cannot open a connection to {VIP}:{VIP_PORT} ({} failed; counters {:?})",
            self.dataplane.name(),
            c.failures,
            self.counters()?
        )
    }

    /// Stops the servers, then Sluice's daemon (before the lab goes).
    fn close(self) -> Result<()> {
        for s in self.servers {
            s.stop()?;
        }
        drop(self.topology);
        Ok(())
    }
}

fn vip() -> Result<SocketAddrV4> {
    Ok(SocketAddrV4::new(VIP.parse()?, VIP_PORT))
}

/// The client and the backends of `lab`.
fn vms(lab: &Lab) -> (Vm, Vec<Vm>) {
    (vm(lab, TX), BACKENDS.iter().map(|b| vm(lab, *b)).collect())
}

/// A short-connection server in each backend on its own address, expecting `client`.
fn start_servers(backends: &[Vm], client: &Vm, p: &Params) -> Result<Vec<traffic::CrrServer>> {
    backends
        .iter()
        .map(|b| {
            traffic::CrrServer::start_expecting(
                &b.netns,
                p.receiver_cpu,
                SocketAddrV4::new(b.ip, BACKEND_PORT),
                Some(client.ip),
            )
            .with_context(|| format!("the server in {}", b.label))
        })
        .collect()
}

/// Waits until the load balancer's status shows every backend healthy: measuring while
/// the health checks still change the tables would measure the changes.
fn wait_healthy(tl: &TopologyLab, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status: serde_json::Value = tl
            .get(&format!("/v1/load-balancers/{LB_NAME}/status"))?
            .json()?;
        let health: Vec<&str> = status["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["backends"].as_array().into_iter().flatten())
            .map(|b| b["health"].as_str().unwrap_or("?"))
            .collect();
        if health.len() == BACKENDS.len() && health.iter().all(|h| *h == "healthy") {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the backends did not all become healthy within {within:?}: {status}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn crr_test(s: &LbSide, p: &Params, run: u32) -> Result<LbCrrRun> {
    let before = s.counters()?;
    let (served0, foreign0) = s.served();
    let c = traffic::crr_client(&s.tx.netns, p.sender_cpu, vip()?, p.crr_secs)?;
    // A server counts a connection just after answering it: let the last ones land.
    let deadline = Instant::now() + Duration::from_secs(1);
    let (served, foreign) = loop {
        let (now, foreign) = s.served();
        let served: Vec<u64> = now.iter().zip(&served0).map(|(a, b)| a - b).collect();
        if served.iter().sum::<u64>() >= c.connections || Instant::now() > deadline {
            break (served, foreign - foreign0);
        }
        thread::sleep(Duration::from_millis(10));
    };
    let counters = s.counters()?.since(&before);
    let secs = c.elapsed.as_secs_f64();
    let r = LbCrrRun {
        run,
        dataplane: s.dataplane,
        connections: c.connections,
        failures: c.failures,
        secs,
        per_second: c.connections as f64 / secs,
        served,
        foreign_peers: foreign,
        counters,
    };
    check(&r)?;
    Ok(r)
}

/// The run must have gone the intended way: connections completed, the backends answered
/// every one, from the client's own address, each backend some, and (kernel) the DNAT
/// rule translated them.
fn check(r: &LbCrrRun) -> Result<()> {
    let dp = r.dataplane.name();
    ensure!(
        r.connections > 0,
        "{dp}: no connection completed ({} failed; counters {:?})",
        r.failures,
        r.counters
    );
    let total: u64 = r.served.iter().sum();
    ensure!(
        total >= r.connections,
        "{dp}: the backends answered {total} connections ({:?}), the client counted {}",
        r.served,
        r.connections
    );
    ensure!(
        r.foreign_peers == 0,
        "{dp}: {} connections reached a backend from another address than the client's",
        r.foreign_peers
    );
    if r.connections >= SPREAD_CHECK_MIN {
        ensure!(
            r.served.iter().all(|n| *n > 0),
            "{dp}: {} connections but some backend answered none ({:?}): not balanced",
            r.connections,
            r.served
        );
    }
    if let Some(n) = r.counters.dnat_matched {
        ensure!(
            n >= r.connections,
            "{dp}: {} connections but the DNAT rule matched {n}: the traffic did not take the path under test",
            r.connections
        );
    }
    Ok(())
}

pub fn run(p: &Params, log: impl Fn(&str)) -> Result<LbReport> {
    require_tools(&["nft", "ethtool"])?;
    let (run, crr) = run_in_two_labs("lb", p, &log, |s, k| measure(p, s, k, &log))?;
    Ok(LbReport {
        run,
        method: method(p),
        vip: format!("{VIP}:{VIP_PORT}"),
        scheduler: SCHEDULER.into(),
        backends: BACKENDS
            .iter()
            .map(|b| format!("{}:{BACKEND_PORT}", Ipv4Addr::from(b.3)))
            .collect(),
        comparisons: vec![compared(
            "TCP connections through a VIP",
            "per s",
            true,
            &crr,
            |r| r.per_second,
        )?],
        crr,
    })
}

fn measure(
    p: &Params,
    sluice_lab: &Lab,
    kernel_lab: &Lab,
    log: &dyn Fn(&str),
) -> Result<Vec<LbCrrRun>> {
    log("building the Sluice lab (sluiced, load balancer through the API, backends healthy)");
    let sluice = LbSide::sluice(sluice_lab, &p.sluiced, p)?;
    log("building the kernel lab (routing host with nftables numgen DNAT)");
    let kernel = LbSide::kernel(kernel_lab, p)?;
    for s in [&sluice, &kernel] {
        tune_for_short_connections(s.lab, s.tx.label)?;
        s.warm_up(p)?;
    }
    for s in [&sluice, &kernel] {
        let c = crr_test(s, p, 0)?;
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
        for s in order {
            let c = crr_test(s, p, run)?;
            log(&format!(
                "round {run} {}: {:.0} connections/s ({} failed), per backend {:?}, counters {:?}",
                s.dataplane.name(),
                c.per_second,
                c.failures,
                c.served,
                c.counters
            ));
            crr.push(c);
        }
    }
    sluice.close()?;
    kernel.close()?;
    Ok(crr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(dataplane: Dataplane, connections: u64, served: Vec<u64>) -> LbCrrRun {
        LbCrrRun {
            run: 0,
            dataplane,
            connections,
            failures: 0,
            secs: 1.0,
            per_second: connections as f64,
            served,
            foreign_peers: 0,
            counters: LbCounters {
                dnat_matched: (dataplane == Dataplane::Kernel).then_some(connections),
                ..LbCounters::default()
            },
        }
    }

    #[test]
    fn runs_that_missed_the_balancer_are_refused() {
        check(&run_of(Dataplane::Sluice, 90, vec![30, 31, 29])).unwrap();
        check(&run_of(Dataplane::Kernel, 90, vec![30, 30, 30])).unwrap();
        // Few connections: a backend may get none by chance.
        check(&run_of(Dataplane::Sluice, 3, vec![2, 1, 0])).unwrap();
        let one = check(&run_of(Dataplane::Sluice, 90, vec![90, 0, 0])).unwrap_err();
        assert!(one.to_string().contains("not balanced"), "{one}");
        assert!(check(&run_of(Dataplane::Sluice, 90, vec![30, 30, 20])).is_err());
        assert!(check(&run_of(Dataplane::Sluice, 0, vec![0, 0, 0])).is_err());
        let mut foreign = run_of(Dataplane::Sluice, 90, vec![30, 30, 30]);
        foreign.foreign_peers = 1;
        assert!(check(&foreign).is_err());
        let mut bypass = run_of(Dataplane::Kernel, 90, vec![30, 30, 30]);
        bypass.counters.dnat_matched = Some(10);
        let e = check(&bypass).unwrap_err();
        assert!(e.to_string().contains("did not take the path"), "{e}");
    }

    #[test]
    fn the_nft_rule_maps_every_backend_round_robin() {
        let r = nft_rules();
        assert!(r.contains("ip daddr 10.0.1.100 tcp dport 80 counter dnat ip to numgen inc mod 3 map { 0 : 10.0.1.21 . 9002, 1 : 10.0.1.22 . 9002, 2 : 10.0.1.23 . 9002 }"), "{r}");
        assert!(r.contains("priority dstnat"), "{r}");
    }

    #[test]
    fn counters_subtract() {
        let a = LbCounters {
            dnat_matched: Some(10),
            drop_reasons: [("h1:drop_x".to_string(), 3)].into(),
            client_retransmits: 1,
        };
        let b = LbCounters {
            dnat_matched: Some(25),
            drop_reasons: [("h1:drop_x".to_string(), 5)].into(),
            client_retransmits: 4,
        };
        let d = b.since(&a);
        assert_eq!(d.dnat_matched, Some(15));
        assert_eq!(d.client_retransmits, 3);
        assert_eq!(d.drop_reasons, [("h1:drop_x".to_string(), 2)].into());
        let sluice = LbCounters::default();
        assert_eq!(sluice.since(&sluice).dnat_matched, None);
    }
}
