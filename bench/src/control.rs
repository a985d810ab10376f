//! Mode `control`: the control plane measured with real parts.
//!
//! A real `sluiced` runs as controller and agent in a lab namespace; the harness talks to
//! its API over the Unix socket with the library's client, and watches the datapath itself:
//! a thread inside the namespace loads the programs against the daemon's pinned maps and
//! runs a frame through `xdp_vm` (BPF_PROG_TEST_RUN, ingress on the VM interface) until its
//! verdict changes. Nothing is read from the agent's own account to decide that a change
//! reached the datapath.
//!
//! - **latency**: `PUT /v1/routes` adds a route (`drop_no_route` → `fwd_local`) or replaces
//!   it with a blackhole (`fwd_local` → `drop_blackhole`); the time from sending the call to
//!   the first test run that sees the new verdict, split at the API's reply. Measured on a
//!   1-VPC intent and again with the scale intent loaded.
//! - **apply**: `POST /v1/topology` of V VPCs with R routes each into a fresh controller;
//!   the time until the agent reports the generation applied, split into the controller's
//!   commit (the reply), the agent's apply (its `sluice_agent_apply_seconds`) and the rest
//!   (long-poll wake-up, compiling and sending the host's tables, decoding them). Every VPC
//!   has a NIC on the host, on a veth created beforehand (VM end in a second namespace;
//!   this kernel has no dummy driver), so the agent also
//!   attaches `xdp_vm` to V interfaces. The pinned maps are read back and counted after.
//! - **in-process**: the same pipeline as library calls in one thread (validate, store
//!   commit, compile, JSON both ways, resolve, map writes, attach), step by step; and one
//!   route change at both scales. Plus the kernel doing the equivalent: the same routes
//!   into V routing tables with `ip -batch`.
//! - **baselines**: an API round trip that changes nothing (`GET /healthz`), and a route
//!   written straight into the pinned trie by the harness, seen by the same watcher (the
//!   floor of the observation method).

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{LpmTrie, Map, MapData};
use serde::{Deserialize, Serialize};
use sluice_common::{
    maps, programs,
    stats::Reason,
    vpc::{NextHop as MapNextHop, NextHopKind, RouteKey},
};
use sluice_dataplane::{
    agent::{present_only, AgentStatus},
    client::{self, ApiAddr, Method},
    controller::api::AgentTables,
    fixture::{self, packets, XdpAction},
    intent::{
        HostSpec, Intent, NextHop, RouteSpec, Store, Topology, TopologyNic, TopologyRoute,
        TopologySecurityGroup, TopologySubnet, TopologyVpc,
    },
    lab::{Daemon, DaemonSpec, Lab},
    loader::{self, Dataplane, Role},
    vpc::{
        apply::{read_tables, resolve_from_system, trie_key, MapSync, PinnedVpcMaps},
        compile::compile_host,
        delta::TablesDelta,
        diff::VpcMap,
        tables::{HostTables, RoutePrefix},
    },
};

use crate::{machine::Machine, stats::Summary};

/// The issue-3 targets.
pub const TARGET_LATENCY_P99_MS: f64 = 50.0;
pub const TARGET_APPLY_S: f64 = 2.0;

/// Names in the generated intent.
const HOST: &str = "h";
const UNDERLAY_IF: &str = "ul";
const APP_IF: &str = "app";
const APP_NIC: &str = "app";
/// The probed VPC (the first) and its NIC, whose frames the watcher sends.
const PROBE_VPC: &str = "t0";
const SRC_IP: [u8; 4] = [10, 0, 1, 4];
const APP_IP: [u8; 4] = [10, 0, 1, 5];
/// Custom routes are /24s in 172.16.0.0/12; latency routes /24s in 10.9.0.0/16, direct
/// (harness-written) routes in 10.8.0.0/16: neither overlaps the other nor the VPC.
const MAX_ROUTES_PER_VPC: u32 = 4096;
const MAX_CHANGES: u32 = 512;
/// Every NIC interface needs an ifindex below `MAX_PORTS` (4096): lo, ul, app, then V.
const MAX_VPCS: u32 = 4000;

/// How long one route change may take to reach the datapath before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the scale apply may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the machine to go quiet before a scale run.
const SETTLE_MAX: Duration = Duration::from_secs(90);
/// Status polling while waiting for an apply (its resolution).
const STATUS_POLL: Duration = Duration::from_millis(2);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub quick: bool,
    /// Route changes in the latency series on the 1-VPC intent.
    pub changes: u32,
    /// VPCs of the scale intent.
    pub vpcs: u32,
    /// Custom routes per VPC of the scale intent.
    pub routes_per_vpc: u32,
    /// Scale applies (each into a fresh lab, controller and agent), and in-process runs.
    pub runs: u32,
    /// Route changes in the latency series with the scale intent loaded.
    pub scale_changes: u32,
    /// Route changes per in-process run.
    pub inproc_changes: u32,
    /// Pause of the datapath watcher between two test runs.
    pub poll_us: u64,
    /// Window in which the idle agent's periodic resync is observed at scale.
    pub idle_secs: f64,
    /// The `sluiced` binary.
    pub sluiced: PathBuf,
}

impl Params {
    pub const DEFAULT_CHANGES: u32 = 200;
    pub const DEFAULT_VPCS: u32 = 1000;
    pub const DEFAULT_ROUTES: u32 = 100;
    pub const DEFAULT_RUNS: u32 = 5;
    pub const DEFAULT_SCALE_CHANGES: u32 = 50;

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        quick: bool,
        changes: Option<u32>,
        vpcs: Option<u32>,
        routes_per_vpc: Option<u32>,
        runs: Option<u32>,
        scale_changes: Option<u32>,
        sluiced: Option<PathBuf>,
    ) -> Result<Self> {
        let pick = |v: Option<u32>, full: u32, quick_v: u32| {
            v.unwrap_or(if quick { quick_v } else { full })
        };
        let p = Params {
            quick,
            changes: pick(changes, Self::DEFAULT_CHANGES, 6),
            vpcs: pick(vpcs, Self::DEFAULT_VPCS, 20),
            routes_per_vpc: pick(routes_per_vpc, Self::DEFAULT_ROUTES, 10),
            runs: pick(runs, Self::DEFAULT_RUNS, 1),
            scale_changes: pick(scale_changes, Self::DEFAULT_SCALE_CHANGES, 4),
            inproc_changes: if quick { 4 } else { 20 },
            poll_us: 50,
            idle_secs: if quick { 2.0 } else { 16.0 },
            sluiced: match sluiced {
                Some(p) => p,
                None => default_sluiced()?,
            },
        };
        for (name, v, max) in [
            ("--changes", p.changes, MAX_CHANGES),
            ("--scale-changes", p.scale_changes, MAX_CHANGES),
            ("--vpcs", p.vpcs, MAX_VPCS),
            ("--routes", p.routes_per_vpc, MAX_ROUTES_PER_VPC),
            ("--runs", p.runs, 1000),
        ] {
            let min = if name.ends_with("changes") { 2 } else { 1 };
            if v < min || v > max {
                bail!("{name} {v}: must be {min} to {max}");
            }
        }
        if !p.sluiced.exists() {
            bail!(
                "--sluiced {}: no such file (build it: cargo build --release -p sluice-dataplane --bin sluiced)",
                p.sluiced.display()
            );
        }
        Ok(p)
    }
}

/// `sluiced` next to this binary (target/<profile>/), where cargo builds both.
pub fn default_sluiced() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating sluice-bench")?;
    let dir = exe.parent().context("sluice-bench has no directory")?;
    // Test binaries live one level deeper, in target/<profile>/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let candidate = d.join("sluiced");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no sluiced next to {} (build it: cargo build --release -p sluice-dataplane --bin sluiced, or pass --sluiced)",
        exe.display()
    )
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// A latency distribution in milliseconds (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    pub fn of(samples: &[f64]) -> Result<Dist> {
        ensure!(!samples.is_empty(), "no samples");
        ensure!(
            samples.iter().all(|s| s.is_finite()),
            "a sample is not finite"
        );
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Ok(Dist {
            n: s.len(),
            min: s[0],
            p50: percentile(&s, 50.0),
            p90: percentile(&s, 90.0),
            p99: percentile(&s, 99.0),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// Nearest-rank percentile of sorted samples: the smallest value with at least `p` % of
/// the samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new route to the appliance NIC: `drop_no_route` → `fwd_local`.
    Add,
    /// The same route replaced by a blackhole: `fwd_local` → `drop_blackhole`.
    Replace,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeSample {
    pub kind: ChangeKind,
    pub destination: String,
    /// The generation the API gave the change.
    pub generation: u64,
    /// Sending the call to its reply.
    pub reply_ms: f64,
    /// Sending the call to the first test run with the new verdict.
    pub datapath_ms: f64,
    /// Test runs the watcher made while waiting.
    pub polls: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySeries {
    pub label: String,
    pub vpcs: u32,
    pub routes_per_vpc: u32,
    /// API call → first test run with the new verdict.
    pub api_to_datapath_ms: Dist,
    /// API call → its reply (the controller's commit, `sluice-generation`).
    pub api_reply_ms: Dist,
    /// Reply → datapath: what the agent adds after the commit (long-poll wake-up, tables,
    /// resolve, map writes). Negative when the watcher saw the change before the client
    /// had read the reply.
    pub reply_to_datapath_ms: Dist,
    pub add_ms: Dist,
    pub replace_ms: Dist,
    /// Mean interval between two test runs of the watcher (its resolution).
    pub poll_interval_us: f64,
    pub meets_target: bool,
    pub samples: Vec<ChangeSample>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// `GET /healthz` through the same client: the API round trip without a change.
    pub http_roundtrip_ms: Dist,
    /// `PUT /v1/routes` of a route exactly as it is: parsed and validated, but nothing is
    /// written and no generation is made (the API path without the commit and the agent).
    pub noop_put_ms: Dist,
    /// A route written into the pinned trie by the harness itself (or removed), seen by
    /// the same watcher: the floor of the observation method.
    pub direct_map_write_ms: Dist,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MapCounts {
    pub host_configured: bool,
    pub ports: usize,
    pub endpoints: usize,
    pub routes: usize,
    pub vnis: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyRun {
    pub run: u32,
    /// Waiting for the machine to go quiet before the run (the previous lab's namespace
    /// teardown keeps a kernel worker busy for many seconds).
    pub settle_s: f64,
    /// Creating the NIC interfaces (veth pairs, `ip -batch`), before the daemon starts.
    pub interfaces_setup_s: f64,
    /// The topology document's size.
    pub body_bytes: usize,
    /// Requests it took: 1, or more when the API refused the whole document (HTTP 413)
    /// and it went in chunks of whole VPCs, one request after another.
    pub requests: usize,
    /// The largest request body sent.
    pub max_request_bytes: usize,
    pub generation: u64,
    /// Sending `POST /v1/topology` to its (last) reply: parse, validate, store commit.
    pub commit_s: f64,
    /// (Last) reply → the agent's status shows the generation applied.
    pub agent_s: f64,
    /// Sending → applied.
    pub total_s: f64,
    /// The agent's own `sluice_agent_apply_seconds` (resolve, map writes, XDP attachments)
    /// between the (last) reply and applied, and how many applies that covered (an apply
    /// still running at the reply counts whole).
    pub agent_apply_s: f64,
    pub agent_apply_rounds: u64,
    /// The same over the whole request (with chunks: the intermediate generations too).
    pub agent_apply_all_s: f64,
    pub agent_apply_all_rounds: u64,
    /// `agent_s - agent_apply_s`: waking the long poll, compiling and sending the host's
    /// tables, decoding them (and the status poll's resolution).
    pub agent_fetch_s: f64,
    /// What the pinned maps hold afterwards (read back by the harness).
    pub maps: MapCounts,
    pub interfaces_attached: usize,
    pub verify_s: f64,
    /// The daemon (controller + agent in one process): resident memory before and after
    /// the apply, and its peak.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplySummaryStats {
    pub total_s: Summary,
    pub commit_s: Summary,
    pub agent_s: Summary,
    pub agent_apply_s: Summary,
    pub agent_fetch_s: Summary,
    pub rss_after_kib: Summary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleApply {
    pub vpcs: u32,
    pub routes_per_vpc: u32,
    /// Rules of the security group in the intent ([`SCALE_SG_RULES`]; 0 with one VPC).
    #[serde(default)]
    pub sg_rules: usize,
    /// Custom routes plus one system route per VPC (its subnet).
    pub routes_total: usize,
    /// How the NICs' interfaces exist on the agent's host.
    pub interfaces: String,
    pub runs: Vec<ApplyRun>,
    pub summary: ApplySummaryStats,
    pub meets_target: bool,
    /// Set when the topology could not go in one request.
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdleResync {
    pub window_s: f64,
    /// Applies the idle agent ran in the window (its periodic resync).
    pub rounds: u64,
    pub apply_s: f64,
    /// CPU time the daemon used in the window, and as a share of one CPU.
    pub cpu_s: f64,
    pub cpu_share: f64,
}

/// One in-process step over every run (seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub step: String,
    pub what: String,
    pub seconds: Summary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InProcess {
    pub runs: u32,
    pub topology_json_bytes: usize,
    pub tables_json_bytes: usize,
    /// The scale apply, step by step.
    pub apply: Vec<StepResult>,
    /// Sum of the apply steps' medians.
    pub apply_total_s: f64,
    /// One route change with the scale intent, step by step (medians over all changes).
    pub change_at_scale: Vec<StepResult>,
    pub change_at_scale_total_ms: f64,
    /// The same with the 1-VPC intent.
    pub change_small: Vec<StepResult>,
    pub change_small_total_ms: f64,
    /// The kernel programming the same routes (one routing table per VPC) with `ip -batch`.
    pub kernel_fib_batch_s: Summary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlReport {
    pub mode: String,
    pub date_utc: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub params: Params,
    /// The harness and the daemon were built without optimisation: figures are not for
    /// publishing.
    pub bench_debug_build: bool,
    pub sluiced_debug_build: bool,
    pub method: String,
    pub latency_small: LatencySeries,
    pub latency_at_scale: LatencySeries,
    pub baselines: Baselines,
    pub apply: ScaleApply,
    pub idle_resync: IdleResync,
    pub in_process: InProcess,
    /// Building (and loading) a 1,000-backend Maglev table.
    #[serde(default)]
    pub maglev: Option<MaglevBuild>,
}

/// The load balancer's table build for the largest listener: 1,000 backends in the
/// largest table ([`sluice_common::lb::MAGLEV_MAX_SIZE`] entries), in this process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaglevBuild {
    pub backends: u32,
    pub table_size: u32,
    pub runs: u32,
    /// Every backend of weight 100 (one entry per round each).
    pub equal_weights_ms: Summary,
    /// Weights 1..=100 (more, emptier rounds).
    pub mixed_weights_ms: Summary,
    /// A new inner map created and filled with the table (one batch update): what the
    /// agent does before the swap.
    pub load_ms: Summary,
}

/// Builds the 1,000-backend table `runs` times each way (the first, warm-up build of each
/// is not counted).
pub fn maglev_build(runs: u32) -> Result<MaglevBuild> {
    use sluice_dataplane::lb::{
        apply::filled_table,
        maglev::{build, table_size, Candidate},
    };
    let backends = 1000u32;
    let size = table_size(backends as usize);
    let pool = |weight: &dyn Fn(u32) -> u8| -> Vec<Candidate> {
        (0..backends)
            .map(|k| Candidate {
                slot: k,
                ip: [10, 1, (k >> 8) as u8, k as u8],
                port: 8080,
                weight: weight(k),
            })
            .collect()
    };
    let time = |b: &[Candidate]| -> Result<(f64, Vec<u32>)> {
        let t0 = Instant::now();
        let t = build(b, size).ok_or_else(|| anyhow!("no table"))?;
        let elapsed = ms(t0.elapsed());
        ensure!(t.len() == size as usize, "table of {} entries", t.len());
        Ok((elapsed, t))
    };
    let equal = pool(&|_| 100);
    let mixed = pool(&|k| 1 + (k % 100) as u8);
    let (mut e, mut m, mut l) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let (te, table) = time(&equal)?;
        let (tm, _) = time(&mixed)?;
        let t0 = Instant::now();
        let map = filled_table(&table)?;
        let tl = ms(t0.elapsed());
        drop(map);
        if run > 0 {
            e.push(te);
            m.push(tm);
            l.push(tl);
        }
    }
    Ok(MaglevBuild {
        backends,
        table_size: size,
        runs,
        equal_weights_ms: Summary::of(&e)?,
        mixed_weights_ms: Summary::of(&m)?,
        load_ms: Summary::of(&l)?,
    })
}

pub const METHOD: &str = "A real sluiced (controller + agent, one process) in a lab network namespace, driven over its Unix socket with the library's HTTP client. Datapath observation: a thread inside the namespace loads the programs against the daemon's pinned maps and runs one frame from the probed VPC's NIC through xdp_vm (BPF_PROG_TEST_RUN, ingress ifindex of the NIC's interface) every poll interval until the XDP action changes; the stats map then confirms the reason (fwd_local, drop_blackhole, drop_no_route) before and after every change. Latency: PUT /v1/routes alternately adds a /24 toward the appliance NIC and replaces it with a blackhole; timed from sending the call to the first run with the new verdict, split at the reply; the next change starts once the agent's status shows the generation applied, after a 5-10 ms pause. Apply: POST /v1/topology of every VPC (one subnet, one NIC on the host on a veth interface created beforehand with ip -batch (its peer in a second namespace), R custom /24 routes alternating appliance NIC and blackhole) into a fresh lab, store and daemon per run; timed from sending to the agent's status showing the generation applied (polled every 2 ms), each run starting once the CPUs were at most 15 % busy over half a second (at most 90 s of waiting: the previous lab's namespace teardown keeps a kernel worker busy for seconds); agent_apply_s is the daemon's own sluice_agent_apply_seconds over that span; the pinned maps are read back and counted after. In-process: the same steps as library calls in one thread inside a namespace with the same interfaces, into freshly loaded (unpinned) maps.";

// ---------------------------------------------------------------------------------------
// The intent
// ---------------------------------------------------------------------------------------

fn vpc_name(i: u32) -> String {
    format!("t{i}")
}

fn nic_name(i: u32) -> String {
    format!("n{i}")
}

fn nic_ifname(i: u32) -> String {
    format!("v{i}")
}

/// The k-th custom route of a VPC: 172.16.0.0/24, 172.16.1.0/24, ...
fn custom_destination(k: u32) -> String {
    format!("172.{}.{}.0/24", 16 + k / 256, k % 256)
}

/// The route of latency change `j`: two changes (add, replace) per destination.
fn latency_destination(j: u32) -> ([u8; 4], String) {
    let d = (j / 2) as u8;
    ([10, 9, d, 1], format!("10.9.{d}.0/24"))
}

fn fmt_ip(ip: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// One host; `vpcs` VPCs with identical CIDRs (10.0.0.0/16, subnet 10.0.1.0/24), each with
/// one NIC on the host (10.0.1.4, interface `v<i>`) and `routes` custom routes alternating
/// "to that NIC" and blackhole; the probed VPC also has the appliance NIC (10.0.1.5). The
/// second VPC's NIC has a security group of [`SCALE_SG_RULES`] rules.
pub fn topology(vpcs: u32, routes: u32) -> Topology {
    let mut nics: Vec<TopologyNic> = (0..vpcs)
        .map(|i| TopologyNic {
            name: nic_name(i),
            vpc: vpc_name(i),
            subnet: "s1".into(),
            host: HOST.into(),
            ifname: nic_ifname(i),
            ip: Some(fmt_ip(SRC_IP)),
            // The watcher's frames come from the probed NIC: they carry the fixtures' MAC.
            mac: (i == 0).then(|| fmt_mac(packets::SRC_MAC)),
            source_check: None,
            security_groups: (i == SCALE_SG_VPC).then(|| vec![SCALE_SG.to_string()]),
        })
        .collect();
    nics.push(TopologyNic {
        name: APP_NIC.into(),
        vpc: PROBE_VPC.into(),
        subnet: "s1".into(),
        host: HOST.into(),
        ifname: APP_IF.into(),
        ip: Some(fmt_ip(APP_IP)),
        mac: None,
        source_check: None,
        security_groups: None,
    });
    Topology {
        hosts: vec![HostSpec {
            name: HOST.into(),
            underlay_ip: "192.0.2.1".into(),
            underlay_ifname: UNDERLAY_IF.into(),
            ..Default::default()
        }],
        vpcs: (0..vpcs)
            .map(|i| TopologyVpc {
                name: vpc_name(i),
                cidr: "10.0.0.0/16".into(),
                subnets: vec![TopologySubnet {
                    name: "s1".into(),
                    cidr: "10.0.1.0/24".into(),
                }],
                routes: (0..routes)
                    .map(|k| TopologyRoute {
                        destination: custom_destination(k),
                        next_hop: if k % 2 == 0 {
                            NextHop::Nic { nic: nic_name(i) }
                        } else {
                            NextHop::Blackhole
                        },
                    })
                    .collect(),
                security_groups: if i == SCALE_SG_VPC {
                    vec![TopologySecurityGroup {
                        name: SCALE_SG.into(),
                        description: None,
                        rules: Some(
                            crate::sg::rules(SCALE_SG_RULES / 2)
                                .into_iter()
                                .map(|r| {
                                    serde_json::from_value(r).expect("sg.rs writes valid rules")
                                })
                                .collect(),
                        ),
                    }]
                } else {
                    vec![]
                },
            })
            .collect(),
        nics,
        peerings: vec![],
        blocklist: vec![],
        ..Default::default()
    }
}

/// Rules of the security group the scale intent holds (half in each direction; `sg.rs`'s
/// rule sets), on the NIC of the second VPC: the probed VPC stays unfiltered, so the
/// watcher's verdicts are the routes' alone.
pub const SCALE_SG_RULES: usize = 1000;
const SCALE_SG_VPC: u32 = 1;
const SCALE_SG: &str = "scale";

/// What the host's maps hold once `topology(vpcs, routes)` is applied.
pub fn expected_counts(vpcs: u32, routes: u32) -> MapCounts {
    MapCounts {
        host_configured: true,
        ports: vpcs as usize + 1,
        endpoints: vpcs as usize + 1,
        routes: (vpcs * (routes + 1)) as usize,
        vnis: vpcs as usize,
    }
}

/// `ip -batch` lines creating the host's interfaces: veth pairs (this kernel has no dummy
/// driver), host side `<name>` here, VM side `p<name>` in namespace `vm_netns`; and the
/// lines bringing the VM sides up there.
fn interface_batches(vpcs: u32, vm_netns: &str) -> (String, String) {
    let (mut host, mut vms) = (String::new(), String::new());
    let names = [UNDERLAY_IF.to_string(), APP_IF.to_string()]
        .into_iter()
        .chain((0..vpcs).map(nic_ifname));
    for n in names {
        host.push_str(&format!(
            "link add {n} type veth peer name p{n} netns {vm_netns}\nlink set {n} up\n"
        ));
        vms.push_str(&format!("link set p{n} up\n"));
    }
    (host, vms)
}

/// Creates the host namespace with every interface the intent names; returns it and how
/// long creating the interfaces took.
fn host_with_interfaces(lab: &Lab, vpcs: u32) -> Result<(String, Duration)> {
    let netns = lab.add_host(HOST)?;
    let vm_netns = lab.add_host("vms")?;
    let (host, vms) = interface_batches(vpcs, &vm_netns);
    let took = ip_batch(&netns, &host).context("creating the NIC interfaces")?
        + ip_batch(&vm_netns, &vms).context("bringing the VM ends up")?;
    Ok((netns, took))
}

/// `ip -batch` lines putting the scale intent's routes into one kernel routing table per
/// VPC (tables from `first_table`): the subnet route and every custom route.
fn kernel_fib_batch(vpcs: u32, routes: u32, first_table: u32) -> String {
    let mut s = String::new();
    for i in 0..vpcs {
        let (dev, table) = (nic_ifname(i), first_table + i);
        s.push_str(&format!("route add 10.0.1.0/24 dev {dev} table {table}\n"));
        for k in 0..routes {
            let dst = custom_destination(k);
            if k % 2 == 0 {
                s.push_str(&format!("route add {dst} dev {dev} table {table}\n"));
            } else {
                s.push_str(&format!("route add blackhole {dst} table {table}\n"));
            }
        }
    }
    s
}

fn ip_batch(netns: &str, lines: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(lines.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "ip -n {netns} -batch failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// Talking to the daemon
// ---------------------------------------------------------------------------------------

fn api_addr(daemon: &Daemon) -> ApiAddr {
    ApiAddr::Unix(daemon.socket().to_path_buf())
}

/// One API call; a non-2xx answer is an error naming the call.
fn call(
    api: &ApiAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<client::Response> {
    let body = body.map(|b| (client::JSON, b));
    client::blocking_request(api, method.clone(), path, body)?
        .error_for_status()
        .with_context(|| format!("{method} {path}"))
}

#[derive(Deserialize)]
struct StatusBody {
    agent: Option<AgentStatus>,
}

fn agent_status(api: &ApiAddr) -> Result<AgentStatus> {
    let r = call(api, Method::GET, "/v1/status", None)?;
    r.json::<StatusBody>()?
        .agent
        .ok_or_else(|| anyhow!("the daemon reports no agent: {}", r.body))
}

/// Polls the agent's status until it applied `generation`; returns when it saw that.
fn wait_applied(
    api: &ApiAddr,
    generation: u64,
    timeout: Duration,
) -> Result<(Instant, AgentStatus)> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = agent_status(api)?;
        if s.applied_generation.is_some_and(|g| g >= generation) {
            return Ok((Instant::now(), s));
        }
        if Instant::now() > deadline {
            bail!("the agent has not applied generation {generation} within {timeout:?}: {s:?}");
        }
        thread::sleep(STATUS_POLL);
    }
}

/// `sluice_agent_apply_seconds` sum and count from `/metrics`.
fn apply_metrics(api: &ApiAddr) -> Result<(f64, u64)> {
    let text = call(api, Method::GET, "/metrics", None)?.body;
    let sum = metric(&text, "sluice_agent_apply_seconds_sum")
        .context("/metrics has no sluice_agent_apply_seconds_sum")?;
    let count = metric(&text, "sluice_agent_apply_seconds_count")
        .context("/metrics has no sluice_agent_apply_seconds_count")?;
    Ok((sum, count as u64))
}

/// The value of an unlabelled sample in Prometheus text format.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Memory and CPU time of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_kib: u64,
    peak_kib: u64,
    cpu_s: f64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ProcSample {
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
        cpu_s: cpu_seconds(&stat).context("parsing /proc/<pid>/stat")?,
    })
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Busy CPU time (all but idle, iowait and steal) and total, from /proc/stat, in ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some((busy, busy + f.get(3)? + f.get(4)?))
}

/// Waits (at most `max`) until the machine is quiet: the CPUs at most 15 % busy over half
/// a second. Deleting a namespace with a thousand veths keeps a kernel worker busy for
/// seconds after `ip netns del` returns, which would land in the next measurement.
fn settle(max: Duration) -> f64 {
    let start = Instant::now();
    while start.elapsed() < max {
        let Some((b0, t0)) = cpu_ticks() else { break };
        thread::sleep(Duration::from_millis(500));
        let Some((b1, t1)) = cpu_ticks() else { break };
        if t1 > t0 && ((b1 - b0) as f64) / ((t1 - t0) as f64) < 0.15 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// The datapath watcher
// ---------------------------------------------------------------------------------------

enum WatchCmd {
    /// Run `frame`; if its action is not `want` yet, answer `Armed` and keep running it
    /// until it is, then answer `Seen`.
    Arm { frame: Vec<u8>, want: XdpAction },
    /// Run `frame` once and require one more packet counted under `reason`.
    Check { frame: Vec<u8>, reason: Reason },
}

enum WatchReply {
    Armed,
    Seen {
        at: Instant,
        polls: u64,
        spent: Duration,
    },
    Checked,
}

/// A thread in the lab namespace with the programs loaded against the daemon's maps.
struct Watcher {
    tx: Option<mpsc::Sender<WatchCmd>>,
    rx: mpsc::Receiver<Result<WatchReply>>,
    handle: Option<thread::JoinHandle<()>>,
    polls: u64,
    spent: Duration,
}

/// Enters a network namespace: only the calling thread (and what it spawns) moves.
fn enter_netns(netns: &str) -> Result<()> {
    let f = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {netns}"));
    }
    Ok(())
}

impl Watcher {
    fn start(netns: &str, pin_dir: &Path, ifname: &str, poll: Duration) -> Result<Watcher> {
        let (tx, cmd_rx) = mpsc::channel::<WatchCmd>();
        let (reply_tx, rx) = mpsc::channel::<Result<WatchReply>>();
        let (netns, pin_dir, ifname) =
            (netns.to_string(), pin_dir.to_path_buf(), ifname.to_string());
        let handle = thread::Builder::new()
            .name("datapath-watcher".into())
            .spawn(move || {
                let setup = (|| -> Result<(Dataplane, u32)> {
                    enter_netns(&netns)?;
                    let dp = Dataplane::load(Some(&pin_dir)).with_context(|| {
                        format!(
                            "loading the programs against the maps pinned at {}",
                            pin_dir.display()
                        )
                    })?;
                    let ifindex = sluice_dataplane::vpc::apply::system_ifindex(&ifname)
                        .with_context(|| format!("no interface {ifname} in {netns}"))?;
                    Ok((dp, ifindex))
                })();
                let (dp, ifindex) = match setup {
                    Ok(v) => {
                        let _ = reply_tx.send(Ok(WatchReply::Armed));
                        v
                    }
                    Err(e) => {
                        let _ = reply_tx.send(Err(e));
                        return;
                    }
                };
                for cmd in cmd_rx {
                    let r = watch_one(&dp, ifindex, cmd, poll, &reply_tx);
                    if reply_tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .context("starting the datapath watcher")?;
        let w = Watcher {
            tx: Some(tx),
            rx,
            handle: Some(handle),
            polls: 0,
            spent: Duration::ZERO,
        };
        match w.recv()? {
            WatchReply::Armed => Ok(w),
            _ => bail!("the watcher answered out of turn"),
        }
    }

    fn recv(&self) -> Result<WatchReply> {
        self.rx
            .recv_timeout(CHANGE_TIMEOUT + Duration::from_secs(30))
            .map_err(|e| anyhow!("the datapath watcher did not answer: {e}"))?
    }

    fn send(&self, cmd: WatchCmd) -> Result<()> {
        self.tx
            .as_ref()
            .expect("running")
            .send(cmd)
            .map_err(|_| anyhow!("the datapath watcher stopped"))
    }

    /// Starts waiting for `want`; returns once the watcher saw the old verdict.
    fn arm(&self, frame: &[u8], want: XdpAction) -> Result<()> {
        self.send(WatchCmd::Arm {
            frame: frame.to_vec(),
            want,
        })?;
        match self.recv()? {
            WatchReply::Armed => Ok(()),
            _ => bail!("the watcher answered out of turn"),
        }
    }

    fn seen(&mut self) -> Result<(Instant, u64)> {
        match self.recv()? {
            WatchReply::Seen { at, polls, spent } => {
                self.polls += polls;
                self.spent += spent;
                Ok((at, polls))
            }
            _ => bail!("the watcher answered out of turn"),
        }
    }

    fn check(&self, frame: &[u8], reason: Reason) -> Result<()> {
        self.send(WatchCmd::Check {
            frame: frame.to_vec(),
            reason,
        })?;
        match self.recv()? {
            WatchReply::Checked => Ok(()),
            _ => bail!("the watcher answered out of turn"),
        }
    }

    fn stop(mut self) -> Result<()> {
        drop(self.tx.take());
        self.handle
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow!("the datapath watcher panicked"))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // It must leave before the lab deletes the namespace it is in.
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_action(dp: &Dataplane, ifindex: u32, frame: &[u8]) -> Result<XdpAction> {
    let prog = dp.program(programs::XDP_VM)?;
    Ok(fixture::run_frame_on(prog, frame, ifindex)?.action)
}

fn watch_one(
    dp: &Dataplane,
    ifindex: u32,
    cmd: WatchCmd,
    poll: Duration,
    reply: &mpsc::Sender<Result<WatchReply>>,
) -> Result<WatchReply> {
    match cmd {
        WatchCmd::Arm { frame, want } => {
            let first = run_action(dp, ifindex, &frame)?;
            if first == want {
                bail!("the verdict is already {want} before the change");
            }
            reply
                .send(Ok(WatchReply::Armed))
                .map_err(|_| anyhow!("the harness stopped listening"))?;
            let start = Instant::now();
            let mut polls = 0u64;
            loop {
                thread::sleep(poll);
                let action = run_action(dp, ifindex, &frame)?;
                let at = Instant::now();
                polls += 1;
                if action == want {
                    return Ok(WatchReply::Seen {
                        at,
                        polls,
                        spent: at - start,
                    });
                }
                if at - start > CHANGE_TIMEOUT {
                    bail!("the datapath did not reach {want} within {CHANGE_TIMEOUT:?} (still {action})");
                }
            }
        }
        WatchCmd::Check { frame, reason } => {
            let before = dp.stats()?;
            run_action(dp, ifindex, &frame)?;
            let after = dp.stats()?;
            let counted: Vec<&str> = Reason::ALL
                .iter()
                .filter(|r| after.get(**r).packets > before.get(**r).packets)
                .map(|r| r.name())
                .collect();
            if !counted.contains(&reason.name()) {
                bail!(
                    "the probe frame was counted under {counted:?}, not {}",
                    reason.name()
                );
            }
            Ok(WatchReply::Checked)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurements against the daemon
// ---------------------------------------------------------------------------------------

/// A host namespace with its interfaces and a running controller + agent.
struct HostUnderTest<'l> {
    netns: String,
    daemon: Daemon<'l>,
    api: ApiAddr,
    interfaces_setup: Duration,
}

fn start_host<'l>(lab: &'l Lab, vpcs: u32, sluiced: &Path) -> Result<HostUnderTest<'l>> {
    let (netns, interfaces_setup) = host_with_interfaces(lab, vpcs)?;
    let spec = DaemonSpec::default()
        .controller(lab.run_dir().join("intent.redb"))
        .agent(HOST, None);
    let daemon = lab.daemon(HOST, sluiced, &spec)?;
    let api = api_addr(&daemon);
    // The agent has applied the empty intent once: it is in its long poll now.
    wait_applied(&api, 0, Duration::from_secs(60))?;
    Ok(HostUnderTest {
        netns,
        daemon,
        api,
        interfaces_setup,
    })
}

/// The largest chunk sent when the API refuses the whole document: well under axum's
/// default request body limit (2 MiB).
const CHUNK_BYTES: usize = 1_500_000;
const AXUM_BODY_LIMIT: usize = 2 << 20;

/// How a topology went in.
struct Posted {
    generation: u64,
    requests: usize,
    max_request_bytes: usize,
    t0: Instant,
    replied: Instant,
    applied: Instant,
    /// `sluice_agent_apply_seconds` (sum, count) right after the (last) reply.
    metrics_at_reply: (f64, u64),
}

/// `t` split into documents of whole VPCs (with their NICs) of at most about `max` bytes.
pub fn topology_chunks(t: &Topology, max: usize) -> Result<Vec<Vec<u8>>> {
    let nic_size = |n: &TopologyNic| serde_json::to_vec(n).map(|v| v.len() + 1);
    let mut chunks: Vec<Topology> = Vec::new();
    let mut size = usize::MAX;
    for v in &t.vpcs {
        let nics: Vec<&TopologyNic> = t.nics.iter().filter(|n| n.vpc == v.name).collect();
        let add = serde_json::to_vec(v)?.len()
            + 1
            + nics.iter().map(|n| nic_size(n)).sum::<Result<usize, _>>()?;
        if size.saturating_add(add) > max {
            chunks.push(Topology {
                hosts: t.hosts.clone(),
                ..Default::default()
            });
            size = 200;
        }
        let c = chunks.last_mut().expect("a chunk");
        c.vpcs.push(v.clone());
        c.nics.extend(nics.into_iter().cloned());
        size += add;
    }
    chunks
        .iter()
        .map(|c| {
            let body = serde_json::to_vec(c)?;
            ensure!(
                body.len() <= max + max / 10,
                "a single VPC's document is {} bytes, over the chunk size {max}",
                body.len()
            );
            Ok(body)
        })
        .collect()
}

/// Posts `topology` (in one request, or in chunks if the API refuses it as too large) and
/// waits until the agent applied it.
fn post_topology(api: &ApiAddr, topology: &Topology) -> Result<Posted> {
    let body = serde_json::to_vec(topology)?;
    let whole = body.len();
    let mut t0 = Instant::now();
    let r = client::blocking_request(
        api,
        Method::POST,
        "/v1/topology",
        Some((client::JSON, body)),
    );
    // axum answers 413 past its body limit, or closes the connection while the client is
    // still writing (broken pipe).
    let too_large = match &r {
        Ok(r) => r.status == 413,
        Err(_) => whole > AXUM_BODY_LIMIT,
    };
    let (generation, requests, max_request_bytes) = if too_large {
        let chunks = topology_chunks(topology, CHUNK_BYTES)?;
        let max = chunks.iter().map(Vec::len).max().unwrap_or(0);
        let n = chunks.len();
        t0 = Instant::now();
        let mut g = 0;
        for c in chunks {
            g = call(api, Method::POST, "/v1/topology", Some(c))?
                .generation()
                .context("POST /v1/topology: no sluice-generation header")?;
        }
        (g, n, max)
    } else {
        let g = r?
            .error_for_status()
            .context("POST /v1/topology")?
            .generation()
            .context("POST /v1/topology: no sluice-generation header")?;
        (g, 1, whole)
    };
    let replied = Instant::now();
    let metrics_at_reply = apply_metrics(api)?;
    let (applied, status) = wait_applied(api, generation, APPLY_TIMEOUT)?;
    ensure!(
        status.last_error.is_none(),
        "the agent reports an error: {:?}",
        status.last_error
    );
    Ok(Posted {
        metrics_at_reply,
        generation,
        requests,
        max_request_bytes,
        t0,
        replied,
        applied,
    })
}

/// The probe frame toward `dst`, from the probed NIC.
fn probe_frame(dst: [u8; 4]) -> Vec<u8> {
    packets::ipv4_udp(SRC_IP, dst, 40000, 5000, b"sluice-bench control")
}

/// Pseudo-random pauses between changes, so they do not fall into step with anything.
struct Jitter(u64);

impl Jitter {
    fn next_ms(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        5 + (self.0 >> 33) % 6
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

/// `n` route changes in the probed VPC, alternately adding a route and blackholing it.
fn latency_series(
    label: &str,
    host: &HostUnderTest,
    watcher: &mut Watcher,
    n: u32,
    vpcs: u32,
    routes_per_vpc: u32,
    log: &dyn Fn(&str),
) -> Result<LatencySeries> {
    let mut samples = Vec::new();
    let mut jitter = Jitter(0x5eed ^ u64::from(n));
    let (polls0, spent0) = (watcher.polls, watcher.spent);
    for j in 0..n {
        let kind = if j % 2 == 0 {
            ChangeKind::Add
        } else {
            ChangeKind::Replace
        };
        let (dst, destination) = latency_destination(j);
        let frame = probe_frame(dst);
        let (before, after, want, next_hop) = match kind {
            ChangeKind::Add => (
                Reason::DropNoRoute,
                Reason::FwdLocal,
                XdpAction::Redirect,
                NextHop::Nic {
                    nic: APP_NIC.into(),
                },
            ),
            ChangeKind::Replace => (
                Reason::FwdLocal,
                Reason::DropBlackhole,
                XdpAction::Drop,
                NextHop::Blackhole,
            ),
        };
        watcher
            .check(&frame, before)
            .with_context(|| format!("{label} change {j}: before {kind:?} {destination}"))?;
        let body = serde_json::to_vec(&RouteSpec {
            vpc: PROBE_VPC.into(),
            destination: destination.clone(),
            next_hop,
        })?;
        watcher.arm(&frame, want)?;
        let t0 = Instant::now();
        let r = call(&host.api, Method::PUT, "/v1/routes", Some(body))?;
        let replied = Instant::now();
        let generation = r
            .generation()
            .context("PUT /v1/routes: no sluice-generation")?;
        let (seen, polls) = watcher
            .seen()
            .with_context(|| format!("{label} change {j}: {kind:?} {destination}"))?;
        watcher
            .check(&frame, after)
            .with_context(|| format!("{label} change {j}: after {kind:?} {destination}"))?;
        samples.push(ChangeSample {
            kind,
            destination,
            generation,
            reply_ms: ms(replied - t0),
            datapath_ms: signed_ms(seen, t0),
            polls,
        });
        // The next change starts with the agent idle in its long poll again.
        wait_applied(&host.api, generation, CHANGE_TIMEOUT)?;
        thread::sleep(Duration::from_millis(jitter.next_ms()));
        if (j + 1) % 50 == 0 {
            log(&format!("{label}: {} of {n} changes", j + 1));
        }
    }
    let pick = |f: &dyn Fn(&ChangeSample) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(f).collect()
    };
    let polls = watcher.polls - polls0;
    let spent = watcher.spent - spent0;
    let api_to_datapath_ms = Dist::of(&pick(&|s| Some(s.datapath_ms)))?;
    Ok(LatencySeries {
        label: label.into(),
        vpcs,
        routes_per_vpc,
        api_reply_ms: Dist::of(&pick(&|s| Some(s.reply_ms)))?,
        reply_to_datapath_ms: Dist::of(&pick(&|s| Some(s.datapath_ms - s.reply_ms)))?,
        add_ms: Dist::of(&pick(&|s| {
            (s.kind == ChangeKind::Add).then_some(s.datapath_ms)
        }))?,
        replace_ms: Dist::of(&pick(&|s| {
            (s.kind == ChangeKind::Replace).then_some(s.datapath_ms)
        }))?,
        poll_interval_us: if polls == 0 {
            0.0
        } else {
            spent.as_secs_f64() * 1e6 / polls as f64
        },
        meets_target: api_to_datapath_ms.p99 < TARGET_LATENCY_P99_MS,
        api_to_datapath_ms,
        samples,
    })
}

/// The floors: an API round trip that changes nothing, and a route the harness writes
/// straight into the pinned trie (and removes again), seen by the same watcher.
fn baselines(host: &HostUnderTest, watcher: &mut Watcher, n: u32) -> Result<Baselines> {
    let mut http = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        call(&host.api, Method::GET, "/healthz", None)?;
        http.push(ms(t0.elapsed()));
    }

    // The route the latency series left (an even number of changes ends blackholed).
    let (_, destination) = latency_destination(0);
    let same = serde_json::to_vec(&RouteSpec {
        vpc: PROBE_VPC.into(),
        destination,
        next_hop: NextHop::Blackhole,
    })?;
    let before = call(&host.api, Method::PUT, "/v1/routes", Some(same.clone()))?.generation();
    let mut noop = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = call(&host.api, Method::PUT, "/v1/routes", Some(same.clone()))?;
        noop.push(ms(t0.elapsed()));
        ensure!(
            r.generation() == before,
            "an unchanged route made generation {:?} (was {before:?})",
            r.generation()
        );
    }

    let vni = call(
        &host.api,
        Method::GET,
        &format!("/v1/vpcs/{PROBE_VPC}"),
        None,
    )?
    .json::<sluice_dataplane::intent::Vpc>()?
    .vni;
    let data = loader::open_pinned_map(host.daemon.pin_dir(), maps::ROUTES)?;
    let mut map = Map::LpmTrie(data);
    let mut trie: LpmTrie<&mut MapData, RouteKey, MapNextHop> =
        LpmTrie::try_from(&mut map).context("the pinned routes map")?;
    let hop = MapNextHop {
        kind: NextHopKind::Nic as u32,
        vni,
        ip: APP_IP,
    };
    let mut direct = Vec::new();
    for d in 0..n.div_ceil(2).min(256) {
        let key = trie_key(&RoutePrefix {
            vni,
            ip: [10, 8, d as u8, 0],
            len: 24,
        });
        let frame = probe_frame([10, 8, d as u8, 1]);
        watcher.arm(&frame, XdpAction::Redirect)?;
        let t0 = Instant::now();
        trie.insert(&key, hop, 0)
            .context("writing a route into the pinned trie")?;
        let (seen, _) = watcher.seen()?;
        direct.push(signed_ms(seen, t0));
        watcher.check(&frame, Reason::FwdLocal)?;

        watcher.arm(&frame, XdpAction::Drop)?;
        let t0 = Instant::now();
        trie.remove(&key).context("removing the route again")?;
        let (seen, _) = watcher.seen()?;
        direct.push(signed_ms(seen, t0));
        watcher.check(&frame, Reason::DropNoRoute)?;
    }
    Ok(Baselines {
        http_roundtrip_ms: Dist::of(&http)?,
        noop_put_ms: Dist::of(&noop)?,
        direct_map_write_ms: Dist::of(&direct)?,
    })
}

fn count_maps(pin_dir: &Path) -> Result<MapCounts> {
    let maps = PinnedVpcMaps::open(pin_dir)?;
    let t = read_tables(&maps)?;
    Ok(MapCounts {
        host_configured: t.host.is_some(),
        ports: t.entries(VpcMap::Ports),
        endpoints: t.entries(VpcMap::Endpoints),
        routes: t.entries(VpcMap::Routes),
        vnis: t.entries(VpcMap::Vnis),
    })
}

/// One scale apply in a fresh lab; with `latency`, also the latency series and the idle
/// resync at that scale.
fn scale_run(
    params: &Params,
    run: u32,
    latency: bool,
    log: &dyn Fn(&str),
) -> Result<(ApplyRun, Option<LatencySeries>, Option<IdleResync>)> {
    let settle_s = settle(SETTLE_MAX);
    let lab = Lab::new()?;
    log(&format!(
        "lab {} (apply run {run}, after {settle_s:.1} s settling)",
        lab.name()
    ));
    let host = start_host(&lab, params.vpcs, &params.sluiced)?;
    let pid = host.daemon.pid().context("the daemon has no pid")?;
    let topo = topology(params.vpcs, params.routes_per_vpc);
    let body_bytes = serde_json::to_vec(&topo)?.len();
    let (sum0, count0) = apply_metrics(&host.api)?;
    let before = proc_sample(pid)?;
    let posted = post_topology(&host.api, &topo)?;
    let (generation, t0, replied, applied) =
        (posted.generation, posted.t0, posted.replied, posted.applied);
    let (sum1, count1) = apply_metrics(&host.api)?;
    let after = proc_sample(pid)?;
    let status = agent_status(&host.api)?;
    ensure!(
        status.missing_interfaces.is_empty(),
        "the agent misses interfaces: {:?}",
        status.missing_interfaces
    );
    let verify_start = Instant::now();
    let maps = count_maps(host.daemon.pin_dir())?;
    let verify_s = verify_start.elapsed().as_secs_f64();
    let want = expected_counts(params.vpcs, params.routes_per_vpc);
    ensure!(
        maps == want,
        "after the apply the maps hold {maps:?}, expected {want:?}"
    );
    let agent_s = (applied - replied).as_secs_f64();
    let (sum_r, count_r) = posted.metrics_at_reply;
    let agent_apply_s = sum1 - sum_r;
    let result = ApplyRun {
        run,
        settle_s,
        interfaces_setup_s: host.interfaces_setup.as_secs_f64(),
        body_bytes,
        requests: posted.requests,
        max_request_bytes: posted.max_request_bytes,
        generation,
        commit_s: (replied - t0).as_secs_f64(),
        agent_s,
        total_s: (applied - t0).as_secs_f64(),
        agent_apply_s,
        agent_apply_rounds: count1 - count_r,
        agent_apply_all_s: sum1 - sum0,
        agent_apply_all_rounds: count1 - count0,
        agent_fetch_s: agent_s - agent_apply_s,
        maps,
        interfaces_attached: status.attached.len(),
        verify_s,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        rss_peak_kib: after.peak_kib,
    };
    log(&format!(
        "apply run {run}: total {:.3} s (commit {:.3} s, agent {:.3} s of which apply {:.3} s)",
        result.total_s, result.commit_s, result.agent_s, result.agent_apply_s
    ));

    let (series, idle) = if latency {
        let mut watcher = Watcher::start(
            &host.netns,
            host.daemon.pin_dir(),
            &nic_ifname(0),
            Duration::from_micros(params.poll_us),
        )?;
        let series = latency_series(
            "at scale",
            &host,
            &mut watcher,
            params.scale_changes,
            params.vpcs,
            params.routes_per_vpc,
            log,
        )?;
        watcher.stop()?;
        let (s0, c0) = apply_metrics(&host.api)?;
        let p0 = proc_sample(pid)?;
        let w0 = Instant::now();
        thread::sleep(Duration::from_secs_f64(params.idle_secs));
        let (s1, c1) = apply_metrics(&host.api)?;
        let p1 = proc_sample(pid)?;
        let window = w0.elapsed().as_secs_f64();
        let cpu = p1.cpu_s - p0.cpu_s;
        (
            Some(series),
            Some(IdleResync {
                window_s: window,
                rounds: c1 - c0,
                apply_s: s1 - s0,
                cpu_s: cpu,
                cpu_share: cpu / window,
            }),
        )
    } else {
        (None, None)
    };
    drop(host);
    lab.close()?;
    Ok((result, series, idle))
}

// ---------------------------------------------------------------------------------------
// In-process
// ---------------------------------------------------------------------------------------

/// Timings of the named steps, over runs.
#[derive(Default)]
struct Steps(BTreeMap<&'static str, (usize, &'static str, Vec<f64>)>);

impl Steps {
    fn time<T>(
        &mut self,
        name: &'static str,
        what: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let out = f().with_context(|| format!("in-process step {name}"))?;
        let secs = start.elapsed().as_secs_f64();
        let order = self.0.len();
        self.0
            .entry(name)
            .or_insert_with(|| (order, what, Vec::new()))
            .2
            .push(secs);
        Ok(out)
    }

    fn results(&self) -> Result<Vec<StepResult>> {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by_key(|(_, (order, _, _))| *order);
        v.into_iter()
            .map(|(name, (_, what, secs))| {
                Ok(StepResult {
                    step: name.to_string(),
                    what: what.to_string(),
                    seconds: Summary::of(secs)?,
                })
            })
            .collect()
    }
}

fn total_median(steps: &[StepResult]) -> f64 {
    steps.iter().map(|s| s.seconds.median).sum()
}

/// Everything the agent does to bring the maps to `intent`, as [`Steps`]. With `held` (the
/// tables of the previous round) the controller sends the change from them, as the long
/// poll does; `held` becomes this round's tables.
fn agent_steps(
    steps: &mut Steps,
    intent: &Intent,
    generation: u64,
    sync: &mut MapSync,
    dp: &mut Dataplane,
    held: &mut Option<(u64, HostTables)>,
) -> Result<usize> {
    let tables = steps.time(
        "compile",
        "compile_host: the host's tables from the intent",
        || Ok(compile_host(intent, HOST)),
    )?;
    let wire = steps.time(
        "tables_encode",
        "the tables, or their change from the last ones, as JSON (controller side of the long poll)",
        || {
            let reply = match held.as_ref() {
                Some((base, old)) => AgentTables {
                    generation,
                    registered: true,
                    tables: None,
                    base: Some(*base),
                    delta: Some(TablesDelta::between(old, &tables)),
                },
                None => AgentTables {
                    generation,
                    registered: true,
                    tables: Some(tables),
                    base: None,
                    delta: None,
                },
            };
            Ok(serde_json::to_vec(&reply)?)
        },
    )?;
    let got: AgentTables = steps.time("tables_decode", "decoding them (agent side)", || {
        Ok(serde_json::from_slice(&wire)?)
    })?;
    let whole = steps.time(
        "tables_patch",
        "the change applied to the tables held (agent side)",
        || {
            let whole = got.into_tables(held.take())?;
            *held = Some((generation, whole.clone()));
            Ok(whole)
        },
    )?;
    let resolved = steps.time(
        "resolve",
        "present_only + resolve_from_system: interface indexes and MACs in the namespace",
        || {
            let (t, missing) = present_only(whole);
            ensure!(missing.is_empty(), "interfaces missing: {missing:?}");
            Ok(resolve_from_system(&t)?)
        },
    )?;
    steps.time(
        "map_writes",
        "MapSync::apply: diff against the known maps, write the difference",
        || Ok(sync.apply(dp, resolved.tables)?),
    )?;
    Ok(wire.len())
}

/// The whole pipeline in one thread inside `netns` (which has the interfaces).
fn in_process_run(
    params: &Params,
    run: u32,
    store_dir: &Path,
    full: &mut Steps,
    at_scale: &mut Steps,
    small: &mut Steps,
) -> Result<(usize, usize)> {
    // Untimed: loading the programs through the verifier.
    let mut dp = Dataplane::load(None)?;
    let topo = topology(params.vpcs, params.routes_per_vpc);
    let body = full.time(
        "topology_encode",
        "the client encodes POST /v1/topology",
        || Ok(serde_json::to_vec(&topo)?),
    )?;
    let parsed: Topology = full.time("topology_decode", "the controller decodes it", || {
        Ok(serde_json::from_slice(&body)?)
    })?;
    let store_path = store_dir.join(format!("intent-{run}.redb"));
    let (store, empty) = Store::open(&store_path)?;
    let (mut intent, _) = full.time(
        "validate",
        "Intent::apply: validate and build the new intent",
        || Ok(empty.apply(parsed)?),
    )?;
    full.time(
        "store_commit",
        "Store::commit: one redb write transaction (synced)",
        || Ok(store.commit(&empty, &mut intent)?),
    )?;
    let mut sync = MapSync::new();
    let mut held = None;
    let wire = agent_steps(
        full,
        &intent,
        intent.generation(),
        &mut sync,
        &mut dp,
        &mut held,
    )?;
    let tables = compile_host(&intent, HOST);
    full.time(
        "attach",
        "attaching xdp_vm to every NIC interface and xdp_underlay to the underlay",
        || {
            for p in &tables.ports {
                dp.attach(&p.ifname, Role::Vm, Default::default())?;
            }
            dp.attach(UNDERLAY_IF, Role::Underlay, Default::default())?;
            Ok(())
        },
    )?;
    check_counts(&sync, &expected_counts(params.vpcs, params.routes_per_vpc))?;

    route_changes(
        params.inproc_changes,
        &store,
        &mut intent,
        &mut sync,
        &mut dp,
        &mut held,
        at_scale,
    )?;
    drop(store);
    std::fs::remove_file(&store_path).ok();

    // The same changes on the 1-VPC intent, in fresh maps.
    let mut dp_small = Dataplane::load(None)?;
    let small_path = store_dir.join(format!("intent-small-{run}.redb"));
    let (store, empty) = Store::open(&small_path)?;
    let (mut intent, _) = empty.apply(topology(1, 0))?;
    store.commit(&empty, &mut intent)?;
    let mut sync = MapSync::new();
    let compiled = compile_host(&intent, HOST);
    let resolved = resolve_from_system(&present_only(compiled.clone()).0)?;
    sync.apply(&mut dp_small, resolved.tables)?;
    let mut held = Some((intent.generation(), compiled));
    route_changes(
        params.inproc_changes,
        &store,
        &mut intent,
        &mut sync,
        &mut dp_small,
        &mut held,
        small,
    )?;
    drop(store);
    std::fs::remove_file(&small_path).ok();
    Ok((body.len(), wire))
}

fn check_counts(sync: &MapSync, want: &MapCounts) -> Result<()> {
    let t = sync.known().context("nothing applied")?;
    let got = MapCounts {
        host_configured: t.host.is_some(),
        ports: t.entries(VpcMap::Ports),
        endpoints: t.entries(VpcMap::Endpoints),
        routes: t.entries(VpcMap::Routes),
        vnis: t.entries(VpcMap::Vnis),
    };
    ensure!(
        &got == want,
        "in-process apply wrote {got:?}, expected {want:?}"
    );
    Ok(())
}

/// `n` route changes (add, then blackhole) through mutate, commit and the agent's steps.
fn route_changes(
    n: u32,
    store: &Store,
    intent: &mut Intent,
    sync: &mut MapSync,
    dp: &mut Dataplane,
    held: &mut Option<(u64, HostTables)>,
    steps: &mut Steps,
) -> Result<()> {
    for j in 0..n {
        let (_, destination) = latency_destination(j);
        let spec = RouteSpec {
            vpc: PROBE_VPC.into(),
            destination,
            next_hop: if j % 2 == 0 {
                NextHop::Nic {
                    nic: APP_NIC.into(),
                }
            } else {
                NextHop::Blackhole
            },
        };
        let (mut next, _) = steps.time(
            "mutate",
            "Intent::put_route: copy the intent, validate, change",
            || Ok(intent.put_route(spec)?),
        )?;
        steps.time(
            "store_commit",
            "Store::commit of the one route (synced)",
            || Ok(store.commit(intent, &mut next)?),
        )?;
        *intent = next;
        agent_steps(steps, intent, intent.generation(), sync, dp, held)?;
        // The change must be in what the maps now hold.
        let vni = intent.vpc(PROBE_VPC).context("no probed VPC")?.vni;
        let prefix = RoutePrefix {
            vni,
            ip: [10, 9, (j / 2) as u8, 0],
            len: 24,
        };
        let want = if j % 2 == 0 {
            NextHopKind::Nic
        } else {
            NextHopKind::Blackhole
        } as u32;
        let known = sync.known().context("nothing applied")?;
        ensure!(
            known.routes.get(&prefix).map(|h| h.kind) == Some(want),
            "in-process route change {j} is not in the maps"
        );
    }
    Ok(())
}

fn in_process(params: &Params, log: &dyn Fn(&str)) -> Result<InProcess> {
    let settled = settle(SETTLE_MAX);
    let lab = Lab::new()?;
    log(&format!(
        "lab {} (in-process, after {settled:.1} s settling)",
        lab.name()
    ));
    let (netns, _) = host_with_interfaces(&lab, params.vpcs)?;
    let store_dir = lab.run_dir().to_path_buf();
    let (full, at_scale, small, sizes) = thread::scope(|scope| {
        scope
            .spawn(|| -> Result<_> {
                enter_netns(&netns)?;
                let (mut full, mut at_scale, mut small) = Default::default();
                let mut sizes = (0, 0);
                for run in 0..params.runs {
                    sizes = in_process_run(
                        params,
                        run,
                        &store_dir,
                        &mut full,
                        &mut at_scale,
                        &mut small,
                    )?;
                }
                Ok((full, at_scale, small, sizes))
            })
            .join()
            .map_err(|_| anyhow!("the in-process thread panicked"))?
    })?;
    log(&format!("in-process: {} runs done", params.runs));
    let mut kernel = Vec::new();
    for run in 0..params.runs {
        let batch = kernel_fib_batch(params.vpcs, params.routes_per_vpc, 1000 + run * params.vpcs);
        kernel.push(ip_batch(&netns, &batch)?.as_secs_f64());
    }
    lab.close()?;
    let apply = full.results()?;
    let change_at_scale = at_scale.results()?;
    let change_small = small.results()?;
    Ok(InProcess {
        runs: params.runs,
        topology_json_bytes: sizes.0,
        tables_json_bytes: sizes.1,
        apply_total_s: total_median(&apply),
        change_at_scale_total_ms: total_median(&change_at_scale) * 1e3,
        change_small_total_ms: total_median(&change_small) * 1e3,
        apply,
        change_at_scale,
        change_small,
        kernel_fib_batch_s: Summary::of(&kernel)?,
    })
}

// ---------------------------------------------------------------------------------------
// The mode
// ---------------------------------------------------------------------------------------

pub fn is_debug_binary(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "debug")
}

pub fn run(params: &Params, log: impl Fn(&str)) -> Result<ControlReport> {
    let log: &dyn Fn(&str) = &log;
    let machine = Machine::collect();
    let poll = Duration::from_micros(params.poll_us);

    let settled = settle(SETTLE_MAX);
    log(&format!(
        "latency on a 1-VPC intent (after {settled:.1} s settling)"
    ));
    let (latency_small, baselines) = {
        let lab = Lab::new()?;
        log(&format!("lab {} (latency, 1 VPC)", lab.name()));
        let host = start_host(&lab, 1, &params.sluiced)?;
        post_topology(&host.api, &topology(1, 0))?;
        let mut watcher = Watcher::start(&host.netns, host.daemon.pin_dir(), &nic_ifname(0), poll)?;
        let series = latency_series("1 VPC", &host, &mut watcher, params.changes, 1, 0, log)?;
        let base = baselines(&host, &mut watcher, params.changes.min(100))?;
        watcher.stop()?;
        drop(host);
        lab.close()?;
        (series, base)
    };
    log(&format!(
        "1 VPC: p50 {:.2} ms, p99 {:.2} ms",
        latency_small.api_to_datapath_ms.p50, latency_small.api_to_datapath_ms.p99
    ));

    log(&format!(
        "apply {} VPCs x {} routes, {} runs",
        params.vpcs, params.routes_per_vpc, params.runs
    ));
    let mut runs = Vec::new();
    let mut latency_at_scale = None;
    let mut idle = None;
    for run in 0..params.runs {
        let last = run + 1 == params.runs;
        let (r, series, i) = scale_run(params, run, last, log)?;
        runs.push(r);
        if last {
            latency_at_scale = series;
            idle = i;
        }
    }
    let latency_at_scale = latency_at_scale.context("no latency series at scale")?;
    let idle_resync = idle.context("no idle window at scale")?;
    let col = |f: fn(&ApplyRun) -> f64| -> Result<Summary> {
        Summary::of(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let summary = ApplySummaryStats {
        total_s: col(|r| r.total_s)?,
        commit_s: col(|r| r.commit_s)?,
        agent_s: col(|r| r.agent_s)?,
        agent_apply_s: col(|r| r.agent_apply_s)?,
        agent_fetch_s: col(|r| r.agent_fetch_s)?,
        rss_after_kib: col(|r| r.rss_after_kib as f64)?,
    };
    let note = runs.iter().find(|r| r.requests > 1).map(|r| {
        format!(
            "the API refused the {:.1} MB document in one request (HTTP 413, or the connection closed mid-request: the controller keeps axum's default 2 MiB request body limit), so it went in {} requests of whole VPCs (at most {:.1} MB each), one after another; commit_s runs to the last reply, and the agent applied the intermediate generations while later chunks were still arriving",
            r.body_bytes as f64 / 1e6,
            r.requests,
            r.max_request_bytes as f64 / 1e6
        )
    });
    let apply = ScaleApply {
        note,
        vpcs: params.vpcs,
        routes_per_vpc: params.routes_per_vpc,
        sg_rules: if params.vpcs > SCALE_SG_VPC {
            SCALE_SG_RULES
        } else {
            0
        },
        routes_total: expected_counts(params.vpcs, params.routes_per_vpc).routes,
        interfaces: "one veth pair per NIC created with ip -batch before the daemon starts (this kernel has no dummy driver), VM ends in a second namespace; the agent attaches xdp_vm to each host end".into(),
        meets_target: summary.total_s.median < TARGET_APPLY_S,
        summary,
        runs,
    };

    log("in-process breakdown");
    let in_process = in_process(params, log)?;

    let maglev = maglev_build(if params.quick { 3 } else { 20 })?;
    log(&format!(
        "Maglev table, {} backends x {} entries: build median {:.1} ms (mixed weights {:.1} ms), load {:.1} ms",
        maglev.backends,
        maglev.table_size,
        maglev.equal_weights_ms.median,
        maglev.mixed_weights_ms.median,
        maglev.load_ms.median
    ));

    Ok(ControlReport {
        mode: "control".into(),
        date_utc: crate::machine::utc_now(),
        git_commit: crate::machine::git_commit(),
        machine,
        params: params.clone(),
        bench_debug_build: cfg!(debug_assertions),
        sluiced_debug_build: is_debug_binary(&params.sluiced),
        method: METHOD.into(),
        latency_small,
        latency_at_scale,
        baselines,
        apply,
        idle_resync,
        in_process,
        maglev: Some(maglev),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let d = Dist::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((d.min, d.p50, d.p99, d.max), (1.0, 2.0, 10.0, 10.0));
        assert_eq!(d.mean, 4.0);
        assert!(Dist::of(&[]).is_err());
        assert!(Dist::of(&[f64::NAN]).is_err());
    }

    #[test]
    fn the_topology_validates_and_compiles_to_the_expected_counts() {
        let (intent, summary) = Intent::default().apply(topology(3, 5)).unwrap();
        assert!(summary.changes() > 0);
        let t = compile_host(&intent, HOST);
        let want = expected_counts(3, 5);
        assert_eq!(t.ports.len(), want.ports);
        assert_eq!(t.endpoints.len(), want.endpoints);
        assert_eq!(t.routes.len(), want.routes);
        assert_eq!(t.vnis.len(), want.vnis);
        let probe = intent.nic("n0").unwrap();
        assert_eq!(probe.mac.0, packets::SRC_MAC);
        assert_eq!(probe.ip.octets(), SRC_IP);
    }

    #[test]
    fn latency_routes_add_then_replace_the_same_destination() {
        assert_eq!(latency_destination(0), latency_destination(1));
        assert_ne!(latency_destination(1), latency_destination(2));
        assert_eq!(latency_destination(511).1, "10.9.255.0/24");
        assert_eq!(custom_destination(0), "172.16.0.0/24");
        assert_eq!(custom_destination(257), "172.17.1.0/24");
    }

    #[test]
    fn batches_name_every_interface_and_route() {
        let (host, vms) = interface_batches(3, "x-vms");
        assert_eq!(host.lines().count(), 2 * 5);
        assert!(host.contains("link add v2 type veth peer name pv2 netns x-vms"));
        assert!(host.contains("link set ul up"));
        assert_eq!(vms.lines().count(), 5);
        assert!(vms.contains("link set papp up"));
        let k = kernel_fib_batch(2, 3, 100);
        assert_eq!(k.lines().count(), 2 * 4);
        assert!(k.contains("route add blackhole 172.16.1.0/24 table 101"));
        assert!(k.contains("route add 172.16.2.0/24 dev v0 table 100"));
    }

    #[test]
    fn chunks_hold_every_vpc_and_nic_once_and_stay_small() {
        let mut t = topology(50, 20);
        // Without the 1,000-rule group, no single VPC is over a quarter of the whole.
        t.vpcs[SCALE_SG_VPC as usize].security_groups.clear();
        t.nics[SCALE_SG_VPC as usize].security_groups = None;
        let whole = serde_json::to_vec(&t).unwrap().len();
        let chunks = topology_chunks(&t, whole / 4).unwrap();
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        let mut vpcs = 0;
        let mut nics = 0;
        for c in &chunks {
            assert!(c.len() <= whole / 4 + whole / 40);
            let c: Topology = serde_json::from_slice(c).unwrap();
            assert_eq!(c.hosts.len(), 1);
            assert!(c
                .nics
                .iter()
                .all(|n| c.vpcs.iter().any(|v| v.name == n.vpc)));
            vpcs += c.vpcs.len();
            nics += c.nics.len();
        }
        assert_eq!((vpcs, nics), (50, 51));
        // Applied one after another they make the same tables as the whole (allocated
        // MACs aside: NICs are created in another order).
        let mut i = Intent::default();
        for c in &chunks {
            i = i.apply(serde_json::from_slice(c).unwrap()).unwrap().0;
        }
        let (whole_intent, _) = Intent::default().apply(t).unwrap();
        let (a, b) = (compile_host(&i, HOST), compile_host(&whole_intent, HOST));
        assert_eq!(a.routes, b.routes);
        assert_eq!(a.vnis, b.vnis);
        assert_eq!(a.underlay, b.underlay);
        assert_eq!(
            (a.ports.len(), a.endpoints.len()),
            (b.ports.len(), b.endpoints.len())
        );
    }

    #[test]
    fn parses_metrics_and_proc_stat() {
        let text =
            "# HELP x\nsluice_agent_apply_seconds_sum 1.5\nsluice_agent_apply_seconds_count 3\n";
        assert_eq!(metric(text, "sluice_agent_apply_seconds_sum"), Some(1.5));
        assert_eq!(metric(text, "sluice_agent_apply_seconds_count"), Some(3.0));
        assert_eq!(metric(text, "nope"), None);
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 100 50 0 0";
        assert_eq!(cpu_seconds(stat), Some(150.0 / hz));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn params_are_checked() {
        let bin = std::env::current_exe().unwrap();
        let p = Params::new(true, None, None, None, None, None, Some(bin.clone())).unwrap();
        assert!(p.quick && p.vpcs < Params::DEFAULT_VPCS);
        let e = Params::new(false, Some(0), None, None, None, None, Some(bin.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--changes"), "{e}");
        let e = Params::new(false, None, Some(5000), None, None, None, Some(bin))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vpcs"), "{e}");
        let e = Params::new(
            false,
            None,
            None,
            None,
            None,
            None,
            Some("/nonexistent/sluiced".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--sluiced"), "{e}");
    }
}
