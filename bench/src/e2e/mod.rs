//! `sluice-bench e2e`: traffic between two VMs on two hosts, through Sluice and through the
//! kernel's bridge + VXLAN path built for the same layout (see [`labs`]), the latter both
//! unfiltered and with the stateful filtering Sluice's NICs have (their default security
//! group, as nftables rules over conntrack), interleaved in one run. Four tests, each run
//! for the three in every round:
//!
//! - **UDP throughput**: the generator ([`generator`], live-frames test runs) sends 64-byte
//!   UDP frames from the sending VM as fast as the path takes them; a thread in the
//!   receiving VM counts them with `recvmmsg`. Received packets per second and loss.
//! - **Latency**: a UDP ping-pong, one request outstanding: p50, p99, p99.9 of the RTT.
//! - **TCP throughput**: iperf3, one stream.
//! - **TCP connections per second**: connect, one byte each way, close, one after another.
//!
//! Sending ends are pinned to one CPU, receiving ends to the other.

pub mod generator;
pub mod labs;
pub mod lb;
pub mod nat;
pub mod netns;
pub mod traffic;

use std::{
    net::SocketAddrV4,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_dataplane::lab::Lab;

use crate::{control::percentile, machine::Machine, stats::Summary};
use labs::{Dataplane, PathCounters, Side};

pub const UDP_PORT: u16 = 9000;
pub const ECHO_PORT: u16 = 9001;
pub const CRR_PORT: u16 = 9002;
pub const IPERF_PORT: u16 = 5201;
const PING_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub quick: bool,
    /// Rounds; each runs every test for both dataplanes.
    pub runs: u32,
    /// Seconds of UDP generation per test.
    pub udp_secs: f64,
    /// Pings per latency test (after `ping_warmup` discarded ones).
    pub pings: u32,
    pub ping_warmup: u32,
    /// Seconds of iperf3 per test.
    pub tcp_secs: f64,
    /// Seconds of short connections per test.
    pub crr_secs: f64,
    /// CPU of the sending ends: generator, ping client, iperf3 client, TCP client. The
    /// path's softirq work runs here too (see [`generator`]).
    pub sender_cpu: usize,
    /// CPU of the receiving ends: UDP receiver, echo server, iperf3 server, TCP server.
    pub receiver_cpu: usize,
    pub sluiced: PathBuf,
}

impl Params {
    pub const DEFAULT_RUNS: u32 = 5;
    pub const DEFAULT_SENDER_CPU: usize = 1;
    pub const DEFAULT_RECEIVER_CPU: usize = 0;

    pub fn new(
        quick: bool,
        runs: Option<u32>,
        secs: Option<f64>,
        sender_cpu: usize,
        receiver_cpu: usize,
        sluiced: Option<PathBuf>,
    ) -> Result<Params> {
        let runs = runs.unwrap_or(if quick { 1 } else { Self::DEFAULT_RUNS });
        let secs = secs.unwrap_or(if quick { 0.3 } else { 3.0 });
        if !(1..=100).contains(&runs) {
            bail!("--runs {runs}: must be 1 to 100");
        }
        if !(0.1..=60.0).contains(&secs) {
            bail!("--secs {secs}: must be 0.1 to 60");
        }
        if sender_cpu == receiver_cpu {
            bail!(
                "--sender-cpu and --receiver-cpu are both {sender_cpu}: the ends need a CPU each"
            );
        }
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
        for (name, cpu) in [
            ("--sender-cpu", sender_cpu),
            ("--receiver-cpu", receiver_cpu),
        ] {
            if cpu >= online {
                bail!(
                    "{name} {cpu}: this machine has {online} online CPUs (0..{})",
                    online - 1
                );
            }
        }
        let sluiced = match sluiced {
            Some(p) => p,
            None => crate::control::default_sluiced()?,
        };
        if !sluiced.exists() {
            bail!(
                "--sluiced {}: no such file (build it: cargo build --release -p sluice-dataplane --bin sluiced)",
                sluiced.display()
            );
        }
        Ok(Params {
            quick,
            runs,
            udp_secs: secs,
            pings: if quick { 300 } else { 20_000 },
            ping_warmup: if quick { 20 } else { 200 },
            // iperf3 takes whole seconds best; at least 1.
            tcp_secs: if quick {
                1.0
            } else {
                (secs * 5.0 / 3.0).round().max(1.0)
            },
            crr_secs: secs,
            sender_cpu,
            receiver_cpu,
            sluiced,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UdpRun {
    pub run: u32,
    pub dataplane: Dataplane,
    /// Frames the generator sent (live-frames repetitions).
    pub sent: u64,
    pub secs: f64,
    pub offered_pps: f64,
    /// Datagrams the receiver read from its socket.
    pub received: u64,
    /// `received / secs`.
    pub received_pps: f64,
    /// `1 - received / sent`.
    pub loss: f64,
    /// Packets the receiving VM's interface counted (`rx_packets`) during the run.
    pub arrived_nic: u64,
    /// `arrived_nic / secs`: what the dataplane delivered to the VM, whether or not the
    /// receiving thread kept up.
    pub arrived_pps: f64,
    /// The rx VM's UDP `RcvbufErrors` over the run: datagrams dropped because the
    /// receiving thread fell behind (its CPU is shared with everything else).
    #[serde(default)]
    pub rcvbuf_errors: u64,
    /// Other datagrams the receiver saw (should be 0).
    pub foreign: u64,
    /// The path's own counters over the run.
    pub path: PathCounters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyRun {
    pub run: u32,
    pub dataplane: Dataplane,
    pub n: usize,
    pub lost: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpRun {
    pub run: u32,
    pub dataplane: Dataplane,
    pub gbit_per_s: f64,
    pub retransmits: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrrRun {
    pub run: u32,
    pub dataplane: Dataplane,
    pub connections: u64,
    pub failures: u64,
    pub secs: f64,
    pub per_second: f64,
}

/// One figure over the runs, for each dataplane, and Sluice over kernel per round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compared {
    pub metric: String,
    pub unit: String,
    /// Whether a larger figure is better (rates) or a smaller one (latency).
    pub higher_is_better: bool,
    pub sluice: Summary,
    pub kernel: Summary,
    /// Sluice ÷ kernel, one ratio per round (the two measured back to back); none when the
    /// kernel's figure was 0 in every round (e.g. no loss).
    pub ratio: Option<Summary>,
    /// The kernel with stateful filtering (`e2e` only), and Sluice ÷ it per round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_nft: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_nft: Option<Summary>,
}

/// What every end-to-end mode's report says about its run (flattened into its JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub mode: String,
    pub date_utc: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    /// /proc/loadavg when the run ended (the machine's is at its start): other work on
    /// the CPUs during the run shows here.
    pub loadavg_at_end: String,
    pub params: Params,
    pub bench_debug_build: bool,
    pub sluiced_debug_build: bool,
    /// The two labs' names: every namespace they made starts with one of them.
    pub labs: Vec<String>,
    /// Namespaces of these labs still present after teardown (always empty: the run fails
    /// otherwise).
    pub leftover_namespaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct E2eReport {
    #[serde(flatten)]
    pub run: RunInfo,
    pub method: Method,
    pub vni: u32,
    pub comparisons: Vec<Compared>,
    pub udp: Vec<UdpRun>,
    pub latency: Vec<LatencyRun>,
    pub tcp: Vec<TcpRun>,
    pub crr: Vec<CrrRun>,
}

/// How a short-connection mode (`nat`, `lb`) measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrrMethod {
    pub topology: String,
    pub crr: String,
    pub cpus: String,
    pub rounds: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Method {
    pub topology: String,
    pub generator: String,
    pub receiver: String,
    pub latency: String,
    pub tcp: String,
    pub crr: String,
    pub cpus: String,
    pub rounds: String,
}

fn method(p: &Params) -> Method {
    Method {
        topology: "Two hosts (namespaces h1, h2) wired back to back by one veth pair (the underlay: 172.31.0.0/24, MTU 1500, GRO on both ends; no bridge between them, which would turn Sluice's XDP frames into skbs); one VM namespace on each (tx 10.0.1.10 on h1, rx 10.0.1.11 on h2, one /24, MTU 1450, TX checksum offload off), wired to its host by a veth pair. Sluice: sluiced on each host (h1's also the controller), the topology posted to its API, xdp_vm on the VM host ends and xdp_underlay on the fabric links in native mode; the VM ends carry a pass-everything XDP program. Kernel: the same namespaces, addresses, MACs and MTUs; on each host a bridge holding the VM's host end (GRO on) and a VXLAN device with the VPC's VNI (dstport 4789, local = own underlay address, remote = the other host's, nolearning); net.bridge.bridge-nf-call-{iptables,ip6tables,arptables} = 0 in the hosts (br_netfilter would otherwise run bridged frames through netfilter). Kernel + nftables: the kernel lab with, for its tests only, bridge-nf-call-iptables = 1 (bridged IPv4 through netfilter and conntrack) and on each host table ip sluice_sg, chain forward (hook forward): `ct state established,related accept`; `ip daddr { this host's VMs } ip saddr { 10.0.1.10, 10.0.1.11 } counter accept`; `ip daddr { this host's VMs } counter drop`: the VPC's default security group, which Sluice's NICs carry (new connections into a VM only from the group's members, egress free, replies by state). Each connection test checks the accept rule counted at least as many new connections as the client made.".into(),
        generator: format!("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (batch {}) of a 22-instruction program that writes the frame over the recycled page (the path may have rewritten it: Sluice rewrites the MACs in place) and returns XDP_TX, from a thread inside the tx VM's namespace pinned to CPU {}, with xdp_md.ingress_ifindex = the VM's eth0: each repetition sends one frame out of eth0 into its veth peer (the host end). 64-byte frames on the wire (60 bytes, no FCS on veths): IPv4/UDP 10.0.1.10:{} -> 10.0.1.11:{}, 18 bytes of payload, checksums complete, destination MAC as the tx VM's neighbour table resolved it after a ping. Sends as fast as the path takes: the path's softirq runs on the same CPU after each batch. {} s per test, in calls sized to take about 50 ms each.", generator::BATCH, p.sender_cpu, generator::SRC_PORT, UDP_PORT, p.udp_secs),
        receiver: format!("A thread inside the rx VM's namespace pinned to CPU {} reads a UDP socket (SO_RCVBUFFORCE 16 MiB) with recvmmsg (64 per call) and counts datagrams carrying the generator's payload; counting ends when the count has not grown for 100 ms after the generator stopped. received_pps = received / generator seconds; loss = 1 - received / sent. Also recorded: the rx VM interface's rx_packets (arrived_nic, arrived_pps: what the dataplane delivered to the VM whether or not the thread kept up), the rx namespace's UDP RcvbufErrors (datagrams dropped because the thread fell behind), and the path's own counters (Sluice: fwd_encap on h1, fwd_decap on h2, drops; kernel: vx0 tx on h1, rx on h2, drops).", p.receiver_cpu),
        latency: format!("UDP ping-pong with 18-byte payloads (64-byte frames): a client thread in tx (CPU {}) sends a sequence number and a CLOCK_MONOTONIC timestamp, an echo thread in rx (CPU {}) sends it back, the client takes the RTT on receipt; one request outstanding, blocking sockets; {} pings after {} discarded; no answer within 1 s counts as lost. Nearest-rank percentiles per round.", p.sender_cpu, p.receiver_cpu, p.pings, p.ping_warmup),
        tcp: format!("iperf3 (one TCP stream, default settings, {} s): server `taskset -c {} iperf3 -s -1` in rx, client `taskset -c {} iperf3 -c` in tx; the receiver's bits per second.", p.tcp_secs, p.receiver_cpu, p.sender_cpu),
        crr: format!("Short TCP connections one after another for {} s: a client thread in tx (CPU {}) connects, sends 1 byte, reads 1 byte, closes; a server thread in rx (CPU {}) accepts, reads, answers, closes. tx has net.ipv4.tcp_tw_reuse=1 and ports 1024-65000.", p.crr_secs, p.sender_cpu, p.receiver_cpu),
        cpus: format!("senders on CPU {}, receivers on CPU {}; each dataplane's daemons and the kernel's own threads are not pinned", p.sender_cpu, p.receiver_cpu),
        rounds: format!("{} rounds; each round runs UDP, latency, TCP and connection tests, each test for the three back to back (Sluice, kernel, kernel + nftables), each of them first, second and last in turn. One warm-up UDP burst per dataplane before round 0 is discarded. Medians over rounds; ratios are Sluice / kernel and Sluice / kernel + nftables per round.", p.runs),
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

struct Ready<'a, 'lab> {
    side: &'a Side<'lab>,
    /// What is measured: the side's own dataplane, or the kernel lab with filtering on.
    dataplane: Dataplane,
    /// The destination MAC the tx VM uses for rx.
    dst_mac: [u8; 6],
}

impl Ready<'_, '_> {
    /// Puts the kernel lab's filtering as this measurement needs it (before every test:
    /// the two kernel measurements share a lab).
    fn prepare(&self) -> Result<()> {
        if self.side.dataplane == Dataplane::Sluice {
            return Ok(());
        }
        self.side
            .set_filtering(self.dataplane == Dataplane::KernelNft)
    }
}

fn udp_test(r: &Ready, p: &Params, run: u32, secs: f64) -> Result<UdpRun> {
    let s = r.side;
    r.prepare()?;
    let sink = traffic::UdpSink::start(
        &s.rx.netns,
        p.receiver_cpu,
        SocketAddrV4::new(s.rx.ip, UDP_PORT),
    )?;
    let (nic0, path0, udp0) = (s.rx_nic()?, s.path_counters()?, s.rx_udp_errors()?);
    let frame = generator::udp_frame(s.tx.mac, r.dst_mac, s.tx.ip, s.rx.ip, UDP_PORT);
    let sent = generator::send(&s.tx.netns, s.tx.ifname, p.sender_cpu, frame, secs)?;
    sink.drain(Duration::from_millis(100), Duration::from_secs(5));
    let counts = sink.stop()?;
    let (nic1, path1, udp1) = (s.rx_nic()?, s.path_counters()?, s.rx_udp_errors()?);
    let secs = sent.elapsed.as_secs_f64();
    let received = counts.datagrams;
    let arrived_nic = nic1.since(&nic0).rx_packets;
    Ok(UdpRun {
        run,
        dataplane: r.dataplane,
        sent: sent.frames,
        secs,
        offered_pps: sent.frames as f64 / secs,
        received,
        received_pps: received as f64 / secs,
        loss: 1.0 - received as f64 / sent.frames as f64,
        arrived_nic,
        arrived_pps: arrived_nic as f64 / secs,
        rcvbuf_errors: udp1.saturating_sub(udp0),
        foreign: counts.foreign,
        path: path1.since(&path0),
    })
}

fn latency_test(r: &Ready, p: &Params, run: u32) -> Result<LatencyRun> {
    let s = r.side;
    r.prepare()?;
    let server = SocketAddrV4::new(s.rx.ip, ECHO_PORT);
    let echo = traffic::Echo::start(&s.rx.netns, p.receiver_cpu, server)?;
    let pp = traffic::ping_pong(
        &s.tx.netns,
        p.sender_cpu,
        server,
        p.ping_warmup,
        p.pings,
        PING_TIMEOUT,
    )?;
    echo.stop()?;
    ensure!(
        !pp.rtt_us.is_empty(),
        "{}: no ping was answered",
        r.dataplane.name()
    );
    let mut sorted = pp.rtt_us;
    sorted.sort_by(f64::total_cmp);
    Ok(LatencyRun {
        run,
        dataplane: r.dataplane,
        n: sorted.len(),
        lost: pp.lost,
        min_us: sorted[0],
        p50_us: percentile(&sorted, 50.0),
        p99_us: percentile(&sorted, 99.0),
        p999_us: percentile(&sorted, 99.9),
        max_us: sorted[sorted.len() - 1],
    })
}

fn tcp_test(r: &Ready, p: &Params, run: u32) -> Result<TcpRun> {
    let s = r.side;
    r.prepare()?;
    let res = traffic::iperf3(
        s.lab,
        s.tx.label,
        p.sender_cpu,
        s.rx.label,
        p.receiver_cpu,
        s.rx.ip,
        IPERF_PORT,
        p.tcp_secs,
    )
    .with_context(|| format!("{}: iperf3", r.dataplane.name()))?;
    Ok(TcpRun {
        run,
        dataplane: r.dataplane,
        gbit_per_s: res.bits_per_second / 1e9,
        retransmits: res.retransmits,
    })
}

fn crr_test(r: &Ready, p: &Params, run: u32) -> Result<CrrRun> {
    let s = r.side;
    r.prepare()?;
    let addr = SocketAddrV4::new(s.rx.ip, CRR_PORT);
    let server = traffic::CrrServer::start(&s.rx.netns, p.receiver_cpu, addr)?;
    let c = traffic::crr_client(&s.tx.netns, p.sender_cpu, addr, p.crr_secs)?;
    let served = server.stop()?;
    ensure!(
        served >= c.connections,
        "{}: the server answered {served} connections, the client counted {}",
        r.dataplane.name(),
        c.connections
    );
    if r.dataplane == Dataplane::KernelNft {
        // Every connection's first packet went through the filter's rule for new ones.
        let accepted = s.filter_accepted()?;
        ensure!(
            accepted >= c.connections,
            "kernel+nft: the filter accepted {accepted} new connections, the client made {}",
            c.connections
        );
    }
    let secs = c.elapsed.as_secs_f64();
    Ok(CrrRun {
        run,
        dataplane: r.dataplane,
        connections: c.connections,
        failures: c.failures,
        secs,
        per_second: c.connections as f64 / secs,
    })
}

/// The UDP run must have gone the intended way: the receiver got datagrams, nothing else,
/// and the path's counters saw at least what arrived.
fn check_udp(u: &UdpRun) -> Result<()> {
    let dp = u.dataplane.name();
    ensure!(
        u.received > 0,
        "{dp}: the receiver got none of {} frames (path counters {:?})",
        u.sent,
        u.path
    );
    ensure!(
        u.foreign == 0,
        "{dp}: {} datagrams without the generator's payload",
        u.foreign
    );
    ensure!(
        u.path.sender_host >= u.received && u.path.receiver_host >= u.received,
        "{dp}: {} received but the path counted {:?}: the traffic did not take the path under test",
        u.received,
        u.path
    );
    ensure!(
        u.received <= u.sent,
        "{dp}: received {} > sent {}",
        u.received,
        u.sent
    );
    Ok(())
}

/// A result of one dataplane in one round.
trait Round {
    fn dataplane(&self) -> Dataplane;
    fn round(&self) -> u32;
}

macro_rules! round {
    ($($t:ty),*) => {$(
        impl Round for $t {
            fn dataplane(&self) -> Dataplane {
                self.dataplane
            }
            fn round(&self) -> u32 {
                self.run
            }
        }
    )*};
}
round!(
    UdpRun,
    LatencyRun,
    TcpRun,
    CrrRun,
    nat::NatCrrRun,
    lb::LbCrrRun
);

fn compared<T: Round>(
    metric: &str,
    unit: &str,
    higher_is_better: bool,
    runs: &[T],
    value: impl Fn(&T) -> f64,
) -> Result<Compared> {
    let of = |d: Dataplane| -> Vec<(u32, f64)> {
        runs.iter()
            .filter(|r| r.dataplane() == d)
            .map(|r| (r.round(), value(r)))
            .collect()
    };
    let s = of(Dataplane::Sluice);
    // Sluice ÷ `base`, per round.
    let ratios = |base: &[(u32, f64)]| -> Vec<f64> {
        s.iter()
            .filter_map(|(r, v)| {
                base.iter()
                    .find(|(rk, _)| rk == r)
                    .map(|(_, kv)| if *kv == 0.0 { f64::NAN } else { v / kv })
            })
            .filter(|x| x.is_finite())
            .collect()
    };
    let vals = |v: &[(u32, f64)]| v.iter().map(|(_, x)| *x).collect::<Vec<_>>();
    let (k, nft) = (of(Dataplane::Kernel), of(Dataplane::KernelNft));
    Ok(Compared {
        metric: metric.into(),
        unit: unit.into(),
        higher_is_better,
        sluice: Summary::of(&vals(&s)).with_context(|| format!("{metric}: Sluice"))?,
        kernel: Summary::of(&vals(&k)).with_context(|| format!("{metric}: kernel"))?,
        ratio: Summary::of(&ratios(&k)).ok(),
        kernel_nft: Summary::of(&vals(&nft)).ok(),
        ratio_nft: Summary::of(&ratios(&nft)).ok(),
    })
}

/// Fails naming the first of `tools` not on the PATH.
fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (scripts/setup.sh installs it)");
        }
    }
    Ok(())
}

/// Runs `measure` on two fresh labs (Sluice's, the kernel's), then tears both down
/// whatever happened and checks none of their namespaces is left; returns what it
/// measured and mode `mode`'s description of the run.
fn run_in_two_labs<T>(
    mode: &str,
    params: &Params,
    log: &dyn Fn(&str),
    measure: impl FnOnce(&Lab, &Lab) -> Result<T>,
) -> Result<(RunInfo, T)> {
    let machine = Machine::collect();
    let date_utc = crate::machine::utc_now();
    let started = Instant::now();
    let sluice_lab = Lab::new()?;
    let kernel_lab = Lab::new()?;
    let labs = vec![sluice_lab.name().to_string(), kernel_lab.name().to_string()];
    log(&format!(
        "labs {} (Sluice) and {} (kernel)",
        labs[0], labs[1]
    ));
    let result = measure(&sluice_lab, &kernel_lab);
    let closed = [sluice_lab.close(), kernel_lab.close()];
    let leftover = labs::leftover_namespaces(&labs)?;
    let measured = result?;
    for c in closed {
        c?;
    }
    ensure!(
        leftover.is_empty(),
        "namespaces left after teardown: {leftover:?}"
    );
    log(&format!(
        "done in {:.0} s, labs removed",
        started.elapsed().as_secs_f64()
    ));
    let run = RunInfo {
        mode: mode.into(),
        date_utc,
        git_commit: crate::machine::git_commit(),
        machine,
        loadavg_at_end: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        params: params.clone(),
        bench_debug_build: cfg!(debug_assertions),
        sluiced_debug_build: crate::control::is_debug_binary(&params.sluiced),
        labs,
        leftover_namespaces: leftover,
    };
    Ok((run, measured))
}

pub fn run(params: &Params, log: impl Fn(&str)) -> Result<E2eReport> {
    require_tools(&["iperf3", "taskset", "ethtool", "ping", "nft"])?;
    let (run, m) = run_in_two_labs("e2e", params, &log, |s, k| measure(params, s, k, &log))?;
    Ok(E2eReport {
        run,
        method: method(params),
        vni: m.vni,
        comparisons: m.comparisons,
        udp: m.udp,
        latency: m.latency,
        tcp: m.tcp,
        crr: m.crr,
    })
}

/// What the rounds measured.
struct Measured {
    vni: u32,
    comparisons: Vec<Compared>,
    udp: Vec<UdpRun>,
    latency: Vec<LatencyRun>,
    tcp: Vec<TcpRun>,
    crr: Vec<CrrRun>,
}

fn measure(p: &Params, sluice_lab: &Lab, kernel_lab: &Lab, log: &dyn Fn(&str)) -> Result<Measured> {
    log("building the Sluice lab (sluiced x2, topology through the API)");
    let sluice = Side::sluice(sluice_lab, &p.sluiced)?;
    log(&format!(
        "building the kernel lab (bridge + VXLAN VNI {})",
        sluice.vni
    ));
    let kernel = Side::kernel(kernel_lab, sluice.vni)?;
    let mut ready = Vec::new();
    for side in [&sluice, &kernel] {
        labs::check_vm_offloads(side)?;
        side.tune_for_short_connections()?;
        let dst_mac = side.warm_up()?;
        ready.push(Ready {
            side,
            dataplane: side.dataplane,
            dst_mac,
        });
    }
    ready.push(Ready {
        side: &kernel,
        dataplane: Dataplane::KernelNft,
        dst_mac: ready[1].dst_mac,
    });
    for r in &ready {
        let u = udp_test(r, p, 0, p.udp_secs.min(0.5))?;
        check_udp(&u)?;
        log(&format!(
            "warm-up {}: {:.3} Mpps received",
            r.dataplane.name(),
            u.received_pps / 1e6
        ));
    }
    let (mut udp, mut latency, mut tcp, mut crr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..p.runs {
        // Each dataplane first, second and last in turn.
        let n = ready.len();
        let order: Vec<&Ready> = (0..n).map(|i| &ready[(i + run as usize) % n]).collect();
        for r in &order {
            let u = udp_test(r, p, run, p.udp_secs)?;
            check_udp(&u)?;
            log(&format!(
                "round {run} UDP {}: sent {:.3} Mpps, arrived {:.3} Mpps, received {:.3} Mpps, loss {:.2} % ({} socket buffer overflows), path {:?}",
                r.dataplane.name(),
                u.offered_pps / 1e6,
                u.arrived_pps / 1e6,
                u.received_pps / 1e6,
                u.loss * 100.0,
                u.rcvbuf_errors,
                u.path
            ));
            udp.push(u);
        }
        for r in &order {
            let l = latency_test(r, p, run)?;
            log(&format!(
                "round {run} latency {}: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, lost {}",
                r.dataplane.name(),
                l.p50_us,
                l.p99_us,
                l.p999_us,
                l.lost
            ));
            latency.push(l);
        }
        for r in &order {
            let t = tcp_test(r, p, run)?;
            log(&format!(
                "round {run} TCP {}: {:.2} Gbit/s, {} retransmits",
                r.dataplane.name(),
                t.gbit_per_s,
                t.retransmits
            ));
            tcp.push(t);
        }
        for r in &order {
            let c = crr_test(r, p, run)?;
            log(&format!(
                "round {run} connections {}: {:.0}/s ({} failed)",
                r.dataplane.name(),
                c.per_second,
                c.failures
            ));
            crr.push(c);
        }
    }
    let comparisons = vec![
        compared("UDP sent", "Mpps", true, &udp, |r| r.offered_pps / 1e6)?,
        compared("UDP arrived at rx NIC", "Mpps", true, &udp, |r| {
            r.arrived_pps / 1e6
        })?,
        compared("UDP received", "Mpps", true, &udp, |r| r.received_pps / 1e6)?,
        compared("UDP loss", "%", false, &udp, |r| r.loss * 100.0)?,
        compared("latency p50", "µs", false, &latency, |r| r.p50_us)?,
        compared("latency p99", "µs", false, &latency, |r| r.p99_us)?,
        compared("latency p99.9", "µs", false, &latency, |r| r.p999_us)?,
        compared("TCP throughput", "Gbit/s", true, &tcp, |r| r.gbit_per_s)?,
        compared("TCP connections", "per s", true, &crr, |r| r.per_second)?,
    ];
    let vni = sluice.vni;
    drop(ready);
    sluice.close();
    kernel.close();
    Ok(Measured {
        vni,
        comparisons,
        udp,
        latency,
        tcp,
        crr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rounds_and_summaries_cover_both() {
        let tcp = |dataplane, run, gbit_per_s| TcpRun {
            run,
            dataplane,
            gbit_per_s,
            retransmits: 0,
        };
        let runs = [
            tcp(Dataplane::Sluice, 0, 4.0),
            tcp(Dataplane::Kernel, 0, 2.0),
            tcp(Dataplane::Kernel, 1, 1.0),
            tcp(Dataplane::Sluice, 1, 3.0),
        ];
        let c = compared("x", "u", true, &runs, |r| r.gbit_per_s).unwrap();
        assert_eq!((c.sluice.min, c.sluice.max), (3.0, 4.0));
        assert_eq!(c.kernel.median, 1.5);
        let ratio = c.ratio.unwrap();
        assert_eq!((ratio.min, ratio.max), (2.0, 3.0));
        let zero = [
            tcp(Dataplane::Sluice, 0, 1.0),
            tcp(Dataplane::Kernel, 0, 0.0),
        ];
        let c = compared("loss", "%", false, &zero, |r| r.gbit_per_s).unwrap();
        assert!(c.ratio.is_none());
        // A dataplane with no runs is an error, not a silent zero.
        assert!(compared("x", "u", true, &runs[..1], |r| r.gbit_per_s).is_err());
    }

    #[test]
    fn udp_runs_that_missed_the_path_are_refused() {
        let good = UdpRun {
            run: 0,
            dataplane: Dataplane::Sluice,
            sent: 100,
            secs: 1.0,
            offered_pps: 100.0,
            received: 90,
            received_pps: 90.0,
            loss: 0.1,
            arrived_nic: 90,
            arrived_pps: 90.0,
            rcvbuf_errors: 0,
            foreign: 0,
            path: PathCounters {
                sender_host: 95,
                receiver_host: 90,
                drops: 0,
                drop_reasons: Default::default(),
            },
        };
        check_udp(&good).unwrap();
        let mut bypass = good.clone();
        bypass.path.sender_host = 0;
        assert!(check_udp(&bypass)
            .unwrap_err()
            .to_string()
            .contains("did not take the path"));
        let mut none = good.clone();
        none.received = 0;
        assert!(check_udp(&none).is_err());
        let mut foreign = good;
        foreign.foreign = 1;
        assert!(check_udp(&foreign).is_err());
    }

    #[test]
    fn params_are_checked() {
        let s = Some(PathBuf::from("/bin/sh"));
        assert!(Params::new(true, Some(0), None, 1, 0, s.clone()).is_err());
        assert!(Params::new(true, None, Some(0.0), 1, 0, s.clone()).is_err());
        let same = Params::new(true, None, None, 0, 0, s.clone()).unwrap_err();
        assert!(same.to_string().contains("both 0"), "{same}");
        let far = Params::new(true, None, None, 1, 4096, s.clone()).unwrap_err();
        assert!(far.to_string().contains("--receiver-cpu 4096"), "{far}");
        assert!(Params::new(true, None, None, 1, 0, Some("/nonexistent".into())).is_err());
    }
}
