//! Mode `micro`: the per-packet cost of every datapath path, by BPF_PROG_TEST_RUN.
//!
//! Each path is one (program, frame, expected verdict). Every measured run is checked
//! against the stats map: exactly `repeat` packets under the expected reason and the
//! expected XDP action, or the whole benchmark fails: a figure for the wrong path is
//! worse than no figure.

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::TestRun,
    TestRunOptions,
};
use serde::{Deserialize, Serialize};
use sluice_common::{
    bench::BenchConfig,
    maps, programs,
    stats::{Counter, Reason},
};
use sluice_dataplane::{loader::Dataplane, stats::StatsSnapshot};

use crate::{
    affinity, lb,
    machine::Machine,
    nat::{self, NatInfo},
    packets,
    sg::{self, SgInfo, SgScale},
    stats::Summary,
    vpc::{self, Scale},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(action: u32) -> String {
    match action {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("unknown action {other}"),
    }
}

/// Name of the floor path; every other figure is also reported net of it.
pub const FLOOR: &str = "floor";

/// How a path is driven through BPF_PROG_TEST_RUN. The kernel reruns a program `repeat`
/// times on one buffer without resetting it, so a path may only be repeated on its own
/// output when that output is again its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// One call per run with `--repeat` repetitions. For paths that leave the frame as
    /// they found it (parse and pass or drop; forwarding whose rewrite writes the bytes
    /// already there); checked after every run: the frame out equals the frame in.
    Repeat,
    /// As `Repeat`, through a bench-only wrapper program (`xdp_bench_vm`,
    /// `xdp_bench_underlay`) that runs the real entry point and then moves `data` back, so
    /// an encapsulating or decapsulating path sees the same frame every repetition. The
    /// figure includes the wrapper (a length comparison and one `bpf_xdp_adjust_head`).
    RepeatRestored,
    /// Paths that change their frame for good (TTL decrement, ARP request turned reply):
    /// many calls per run, each on a fresh copy of the frame with `repeat` repetitions
    /// (few enough that all take the same path). The run's figure is the mean over the
    /// calls; net of a floor measured the same way.
    Fresh { repeat: u32 },
    /// As `RepeatRestored`, and the wrapper also writes the frame's first
    /// [`sluice_common::bench::RESTORE_LEN`] bytes back after every repetition: for paths that rewrite
    /// addresses, ports and checksums (NAT, the load balancer). The figure includes the
    /// wrapper's save and restore (a map lookup and two 56-byte copies).
    RepeatRestoredFrame,
    /// Paths that must see a flow they never saw (a connection-table insert): through the
    /// wrapper, which restores the frame and counts the big-endian 16-bit field at
    /// `vary_offset` up by one after every repetition, so each of a call's
    /// [`NEW_FLOW_REPEAT`] repetitions is another flow; `PathSpec::vary` makes every
    /// call's first frame one never seen. Net of the floor measured with as many
    /// repetitions per call.
    NewFlows { vary_offset: u32 },
}

/// Offset of the source port in an untagged IPv4 frame without options.
pub const SOURCE_PORT_OFFSET: u32 = 34;

/// Repetitions per call of a [`Method::NewFlows`] path: every flow number block handed to
/// `PathSpec::vary` is this long and aligned to it, so the wrapper's counting up never
/// crosses into another call's flows.
pub const NEW_FLOW_REPEAT: u32 = 4096;

impl Method {
    /// Repetitions per call and calls per run under `params`.
    pub fn plan(self, params: &Params) -> Plan {
        match self {
            Method::Repeat | Method::RepeatRestored | Method::RepeatRestoredFrame => Plan {
                repeat: params.repeat,
                calls: 1,
            },
            Method::Fresh { repeat } => Plan {
                repeat,
                calls: params.fresh_packets.div_ceil(repeat).max(1),
            },
            Method::NewFlows { .. } => Plan {
                repeat: NEW_FLOW_REPEAT,
                calls: params.fresh_packets.div_ceil(NEW_FLOW_REPEAT).max(1),
            },
        }
    }

    /// The floor path measured the same way, whose median the path's net figures subtract.
    pub fn floor_name(self) -> String {
        match self {
            Method::Repeat | Method::RepeatRestored | Method::RepeatRestoredFrame => FLOOR.into(),
            Method::Fresh { repeat } => format!("{FLOOR}_repeat_{repeat}"),
            Method::NewFlows { .. } => format!("{FLOOR}_repeat_{NEW_FLOW_REPEAT}"),
        }
    }

    /// Whether the frame left after a run must equal the frame fed in.
    fn frame_must_survive(self) -> bool {
        !matches!(self, Method::Fresh { .. } | Method::NewFlows { .. })
    }

    /// Short form for tables: `repeat 1000000`, `restored 1000000`, `fresh 200 × 20`.
    pub fn short(self, params: &Params) -> String {
        let plan = self.plan(params);
        match self {
            Method::Repeat => format!("repeat {}", plan.repeat),
            Method::RepeatRestored => format!("restored {}", plan.repeat),
            Method::RepeatRestoredFrame => format!("restored+frame {}", plan.repeat),
            Method::Fresh { .. } => format!("fresh {} × {}", plan.repeat, plan.calls),
            Method::NewFlows { .. } => format!("new flows {} × {}", plan.repeat, plan.calls),
        }
    }
}

/// Repetitions per BPF_PROG_TEST_RUN call and calls per measured run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub repeat: u32,
    pub calls: u32,
}

impl Plan {
    pub fn packets(self) -> u64 {
        u64::from(self.repeat) * u64::from(self.calls)
    }
}

/// One benchmarked path: a program, the frame fed to it and the verdict it must reach.
pub struct PathSpec {
    pub name: String,
    pub program: &'static str,
    pub description: String,
    pub frame: Vec<u8>,
    /// `xdp_md.ingress_ifindex`: a real device (`lo`) for VM ports; 0 passes no context,
    /// and then the kernel uses `lo` as well.
    pub ingress_ifindex: u32,
    pub action: u32,
    /// The reason every repetition must be counted under; `None` for the floors, which
    /// count nothing.
    pub reason: Option<Reason>,
    pub method: Method,
    /// The route tables the path runs against; `None`: an instance with empty VPC maps
    /// (no port, host not configured), where the parse paths and floors run as before
    /// the overlay existed.
    pub scale: Option<Scale>,
    /// The security-group state the path runs against (an instance of its own, with the
    /// 10-route VPC tables); wins over `scale`.
    pub sg: Option<SgScale>,
    /// For [`Method::NewFlows`]: a call's frame, from `frame` and the call's first flow
    /// number (a multiple of [`NEW_FLOW_REPEAT`]). Flow `k + i` must be that frame with
    /// the `vary_offset` field counted up `i` times.
    pub vary: Option<NextFrame>,
}

/// Verdict reasons no test run can reach, with why: every other reason must have a path.
pub const UNREACHABLE: [(Reason, &str); 2] = [
    (
        Reason::DropEthTruncated,
        "BPF_PROG_TEST_RUN refuses an XDP frame shorter than an Ethernet header",
    ),
    (
        Reason::DropEncapFailed,
        "a test run's frame always has at least 224 bytes of headroom, and encapsulation needs 50",
    ),
];

/// Makes a call's frame from a path's frame and a flow number.
pub type NextFrame = fn(&[u8], u32) -> Vec<u8>;

/// Flow numbers handed out to new-flow calls (never reused in one process).
static NEXT_FLOW: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Every path: the floors first, then the parse paths, then each VPC path at both scales.
pub fn paths() -> Vec<PathSpec> {
    use programs::{XDP_FLOOR, XDP_UNDERLAY, XDP_VM};
    let path = |name: &str, program, description: &str, frame, action, reason| PathSpec {
        name: name.into(),
        program,
        description: description.into(),
        frame,
        ingress_ifindex: 0,
        action,
        reason,
        method: Method::Repeat,
        scale: None,
        sg: None,
        vary: None,
    };
    let floor = |method: Method, description: &str| PathSpec {
        name: method.floor_name(),
        method,
        ..path(
            "",
            XDP_FLOOR,
            description,
            packets::ipv4_udp(),
            XDP_PASS,
            None,
        )
    };
    let mut all = vec![
        floor(
            Method::Repeat,
            "empty XDP program: the cost of running any program at all",
        ),
        floor(
            Method::Fresh {
                repeat: vpc::ROUTED_REPEAT,
            },
            "empty XDP program, measured like the routed paths",
        ),
        floor(
            Method::Fresh { repeat: 1 },
            "empty XDP program, measured like the ARP reply (one repetition per call)",
        ),
        floor(
            Method::Fresh {
                repeat: NEW_FLOW_REPEAT,
            },
            "empty XDP program, measured like the new-flow paths",
        ),
        path(
            "vm_ipv4_udp_pass",
            XDP_VM,
            "VM egress IPv4 UDP (no VPC port: parsed, passed)",
            packets::ipv4_udp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "vm_ipv4_tcp_pass",
            XDP_VM,
            "VM egress IPv4 TCP (no VPC port: parsed, passed)",
            packets::ipv4_tcp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "vm_arp_pass",
            XDP_VM,
            "VM ARP request (no VPC port: passed)",
            packets::arp_request(),
            XDP_PASS,
            Some(Reason::PassArp),
        ),
        path(
            "vm_ipv6_udp_pass",
            XDP_VM,
            "VM egress IPv6 UDP (no VPC port: parsed, passed)",
            packets::ipv6_udp(),
            XDP_PASS,
            Some(Reason::PassIpv6),
        ),
        path(
            "vm_vlan_ipv4_udp_pass",
            XDP_VM,
            "802.1Q-tagged IPv4 UDP (no VPC port: parsed, passed)",
            packets::vlan_ipv4_udp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "underlay_ipv4_udp_pass",
            XDP_UNDERLAY,
            "underlay non-VXLAN IPv4 UDP",
            packets::underlay_ipv4_udp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "underlay_vxlan_pass",
            XDP_UNDERLAY,
            "VXLAN: outer + inner IPv4 UDP parsed (host not configured: passed)",
            packets::vxlan_ipv4_udp(),
            XDP_PASS,
            Some(Reason::PassVxlan),
        ),
        path(
            "vm_ipv4_truncated_drop",
            XDP_VM,
            "IPv4 header cut short",
            packets::ipv4_truncated(),
            XDP_DROP,
            Some(Reason::DropIpv4Truncated),
        ),
        path(
            "vm_ipv4_bad_ihl_drop",
            XDP_VM,
            "IPv4 IHL below 5",
            packets::ipv4_bad_ihl(),
            XDP_DROP,
            Some(Reason::DropIpv4BadIhl),
        ),
        path(
            "underlay_vxlan_bad_flags_drop",
            XDP_UNDERLAY,
            "VXLAN with the I flag clear",
            packets::vxlan_i_flag_clear(),
            XDP_DROP,
            Some(Reason::DropVxlanBadFlags),
        ),
    ];
    // Every other reason the parser has, each with its frame.
    all.extend(packets::parse_cases().into_iter().map(|c| {
        path(
            c.name,
            if c.underlay { XDP_UNDERLAY } else { XDP_VM },
            c.description,
            c.frame,
            if c.reason.is_drop() {
                XDP_DROP
            } else {
                XDP_PASS
            },
            Some(c.reason),
        )
    }));
    // Each VPC path at 10 routes, then at 100k, side by side.
    let mut large = vpc::paths(Scale::Routes100k);
    for small in vpc::paths(Scale::Routes10) {
        let twin = large
            .iter()
            .position(|l| base_name(&l.name) == base_name(&small.name));
        all.push(small);
        if let Some(i) = twin {
            all.push(large.remove(i));
        }
    }
    all.append(&mut large);
    for scale in SgScale::ALL {
        all.extend(sg::paths(scale));
    }
    all.extend(nat::paths());
    all.extend(lb::paths());
    all
}

/// The floors and the paths whose name contains one of `only` (all when it is empty).
pub fn selected(all: Vec<PathSpec>, only: &[String]) -> Result<Vec<PathSpec>> {
    if only.is_empty() {
        return Ok(all);
    }
    let chosen: Vec<PathSpec> = all
        .into_iter()
        .filter(|p| p.program == programs::XDP_FLOOR || only.iter().any(|o| p.name.contains(o)))
        .collect();
    ensure!(
        chosen.iter().any(|p| p.program != programs::XDP_FLOOR),
        "--only {only:?}: no path name contains that; see bench/README.md for the list"
    );
    Ok(chosen)
}

/// A path's name without its `@<scale>` suffix.
pub fn base_name(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Measured runs per path (a warm-up run before them is discarded).
    pub runs: u32,
    /// Repetitions per run (BPF_PROG_TEST_RUN `repeat`) of the repeated paths.
    pub repeat: u32,
    /// Packets per run of the fresh-frame paths (calls × their own small repeat).
    pub fresh_packets: u32,
    /// The CPU the measuring thread is pinned to.
    pub cpu: usize,
    pub quick: bool,
    /// When not empty, only the paths whose name contains one of these (and the floors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
}

impl Params {
    pub const DEFAULT_RUNS: u32 = 15;
    pub const DEFAULT_REPEAT: u32 = 1_000_000;
    pub const DEFAULT_FRESH_PACKETS: u32 = 4_000;
    pub const QUICK_RUNS: u32 = 3;
    pub const QUICK_REPEAT: u32 = 10_000;
    pub const QUICK_FRESH_PACKETS: u32 = 400;
    pub const DEFAULT_CPU: usize = 1;

    /// Explicit `runs`/`repeat` win over the `quick` defaults.
    pub fn new(quick: bool, runs: Option<u32>, repeat: Option<u32>, cpu: usize) -> Result<Self> {
        let (default_runs, default_repeat, fresh_packets) = if quick {
            (
                Self::QUICK_RUNS,
                Self::QUICK_REPEAT,
                Self::QUICK_FRESH_PACKETS,
            )
        } else {
            (
                Self::DEFAULT_RUNS,
                Self::DEFAULT_REPEAT,
                Self::DEFAULT_FRESH_PACKETS,
            )
        };
        let params = Params {
            runs: runs.unwrap_or(default_runs),
            repeat: repeat.unwrap_or(default_repeat),
            fresh_packets,
            cpu,
            quick,
            only: Vec::new(),
        };
        ensure!(params.runs >= 1, "--runs must be at least 1");
        ensure!(params.repeat >= 1, "--repeat must be at least 1");
        Ok(params)
    }
}

/// The results file `micro.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MicroReport {
    pub mode: String,
    pub date_utc: String,
    /// Commit of the source tree the programs were built from, `-dirty` if modified.
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub params: Params,
    /// How the figures were taken, in words, so the JSON stands on its own.
    pub method: String,
    /// The floor's raw figures (also present as the path named `floor`); the fresh-frame
    /// methods have their own floors, named in each path's `floor`.
    pub floor_ns: Summary,
    /// The route tables the VPC paths ran against.
    pub scales: Vec<ScaleInfo>,
    pub paths: Vec<PathResult>,
    /// Each VPC path at 100k routes against itself at 10.
    pub scale_ratios: Vec<ScaleRatio>,
    /// The security-group state the SG paths ran against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sg_scales: Vec<SgInfo>,
    /// The issue-4 figures: rule-count growth and the established-flow cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sg_targets: Option<SgTargets>,
    /// The NAT state the NAT paths ran against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatInfo>,
    /// The issue-5/7 figures: each NAT path against its target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_targets: Vec<NatTarget>,
}

/// A NAT path against its target (ns per packet; judged on the net median, the raw one
/// and its ratio to the floor shown beside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatTarget {
    pub path: String,
    pub target_ns: f64,
    pub raw_median: f64,
    pub net_median: f64,
    /// The median of the floor measured the same way.
    pub floor_median: f64,
    /// `raw_median / floor_median`.
    pub raw_over_floor: f64,
    pub net_within_target: bool,
    pub raw_within_target: bool,
    /// `raw_median` minus the raw median of `nat_vpc_local` (plain local forwarding
    /// measured the same way): what NAT adds to a forwarded packet under this method.
    #[serde(
        default,
        alias = "over_vpc_local_fresh",
        skip_serializing_if = "Option::is_none"
    )]
    pub over_vpc_local: Option<f64>,
}

/// Issue targets: a new SNAT flow at most 80 ns, established and DNAT paths at most 50.
pub const NAT_TARGETS: [(&str, f64); 5] = [
    ("snat_new_flow", 80.0),
    ("snat_established", 50.0),
    ("snat_reply", 50.0),
    ("dnat_new_flow", 80.0),
    ("dnat_established", 50.0),
];

/// [`NatTarget`]s of the NAT paths that were measured.
pub fn nat_targets(results: &[PathResult]) -> Vec<NatTarget> {
    let local = results
        .iter()
        .find(|r| r.name == "nat_vpc_local")
        .map(|r| r.raw_ns.median);
    NAT_TARGETS
        .iter()
        .filter_map(|&(name, target_ns)| {
            let r = results.iter().find(|r| r.name == name)?;
            let floor = results.iter().find(|f| f.name == r.floor)?.raw_ns.median;
            Some(NatTarget {
                path: name.into(),
                target_ns,
                raw_median: r.raw_ns.median,
                net_median: r.net_ns.median,
                floor_median: floor,
                raw_over_floor: r.raw_ns.median / floor,
                net_within_target: r.net_ns.median <= target_ns,
                raw_within_target: r.raw_ns.median <= target_ns,
                over_vpc_local: local.map(|l| r.raw_ns.median - l),
            })
        })
        .collect()
}

/// Security-group figures against their targets (net medians, ns per packet): a new
/// flow with 1,000 rules costs at most 2x one with 1 rule; an established flow costs at
/// most 40 ns more than the same path on an unfiltered NIC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgTargets {
    pub new_flow_net_1: f64,
    pub new_flow_net_1000: f64,
    pub new_flow_ratio: Option<f64>,
    pub first_packet_net_1: f64,
    pub first_packet_net_1000: f64,
    pub first_packet_ratio: Option<f64>,
    /// `sg_established@1r` and `vpc_local@10`, and the difference of their raw medians
    /// (the fast path's own cost).
    pub established_net: f64,
    pub vpc_local_net: f64,
    pub established_added: f64,
    /// `sg_established@1m` net, and `sg_new_flow@1m` net.
    pub established_net_1m: Option<f64>,
    pub new_flow_net_1m: Option<f64>,
}

/// [`SgTargets`] from the results, when every path it needs was measured.
pub fn sg_targets(results: &[PathResult]) -> Option<SgTargets> {
    let get = |name: &str| results.iter().find(|r| r.name == name);
    let (nf1, nf1000) = (get("sg_new_flow@1r")?, get("sg_new_flow@1000r")?);
    let (fp1, fp1000) = (get("sg_first_packet@1r")?, get("sg_first_packet@1000r")?);
    let (est, local) = (get("sg_established@1r")?, get("vpc_local@10")?);
    let ratio = |a: &PathResult, b: &PathResult| {
        (a.net_ns.median > 0.0).then(|| b.net_ns.median / a.net_ns.median)
    };
    Some(SgTargets {
        new_flow_net_1: nf1.net_ns.median,
        new_flow_net_1000: nf1000.net_ns.median,
        new_flow_ratio: ratio(nf1, nf1000),
        first_packet_net_1: fp1.net_ns.median,
        first_packet_net_1000: fp1000.net_ns.median,
        first_packet_ratio: ratio(fp1, fp1000),
        established_net: est.net_ns.median,
        vpc_local_net: local.net_ns.median,
        established_added: est.raw_ns.median - local.raw_ns.median,
        established_net_1m: get("sg_established@1m").map(|r| r.net_ns.median),
        new_flow_net_1m: get("sg_new_flow@1m").map(|r| r.net_ns.median),
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleInfo {
    pub scale: Scale,
    pub label: String,
    pub vpcs: u32,
    pub routes: usize,
    pub endpoints: usize,
    /// Seconds it took to write the tables into the maps (one syscall per entry).
    pub fill_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleRatio {
    /// The path's name without the scale suffix.
    pub path: String,
    pub raw_median_10: f64,
    pub raw_median_100k: f64,
    pub raw_ratio: f64,
    pub net_median_10: f64,
    pub net_median_100k: f64,
    /// `None` when the 10-route net figure is not above zero.
    pub net_ratio: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    pub name: String,
    pub program: String,
    pub description: String,
    pub frame_len: usize,
    pub method: Method,
    /// The method in short (`repeat 1000000`, `fresh 200 × 20`).
    pub method_short: String,
    /// The floor path whose median `net_ns` subtracts (measured the same way).
    pub floor: String,
    pub scale: Option<Scale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sg: Option<SgScale>,
    pub ingress_ifindex: u32,
    /// Size of the program after the verifier (eBPF instructions) and after the JIT (bytes;
    /// 0 when the JIT is off).
    pub program_xlated_insns: u32,
    pub program_jited_bytes: u32,
    pub expected_action: String,
    /// `None` for the floors.
    pub expected_reason: Option<String>,
    pub runs: u32,
    /// Repetitions per call, and calls per run.
    pub repeat: u32,
    pub calls_per_run: u32,
    /// The kernel's mean ns per repetition (whole ns per call), over the runs.
    pub raw_ns: Summary,
    /// `raw_ns` minus the median of the path's floor.
    pub net_ns: Summary,
    /// The figure of each measured run, in run order.
    pub samples_ns: Vec<f64>,
}

const METHOD_TEXT: &str = "BPF_PROG_TEST_RUN; the kernel returns the mean ns per repetition of one call \
(total / repeat, truncated to whole ns) and that is the figure (syscall overhead excluded). \
Three methods: `repeat`: one call per run with `repeat` repetitions on one buffer, for paths whose \
output frame equals their input (checked after every run); `repeat_restored`: the same through a \
bench-only wrapper program that runs the real entry point and moves `data` back, for the \
encapsulating and decapsulating paths (the figure includes the wrapper); `fresh`: paths that change \
their frame for good (TTL decrement, ARP reply) run many calls per run, each on a fresh copy with a \
small repeat (200 for routed paths from TTL 255, 1 for the ARP reply), and the run's figure is the \
mean over the calls; `new_flows`: security-group paths that must meet a flow they never saw run \
one repetition per call, each call's frame another flow (its ports count up), like the ARP reply. \
NAT paths (issues 5, 7) run in an instance of their own: the measured VM's VPC with a default \
route to a NAT gateway, its NAT maps written by the agent's resolver and map writer; the \
translating paths rewrite their frame (addresses, ports, TTL) and are measured like the ARP reply \
(fresh frames, one repetition per call), new flows with a new tuple each call. \
Every method has its own floor (an empty program measured the same way) and net \
figures subtract the median of that floor. One verified warm-up round, then `runs` rounds visiting \
every path in turn (round-robin, so machine noise spreads over all paths). Every run checks the stats \
map: exactly repeat × calls packets under the expected reason, nothing else, the expected bytes, \
and the expected XDP action on every call. VPC paths run against two table scales (10 routes in one \
VPC; 1,000 VPCs × 100 routes) loaded into two separate instances of the programs and maps; the \
measured flow's lookups are the same at both. Differences of 1 ns are within the kernel figure's \
resolution.";

/// Runs the micro benchmark. Needs root (loads programs).
pub fn run(params: &Params, mut progress: impl FnMut(&str)) -> Result<MicroReport> {
    let machine = Machine::collect();
    let date_utc = crate::machine::utc_now();
    affinity::pin_current_thread(params.cpu)?;
    let paths = selected(paths(), &params.only)?;

    // One instance of the programs and maps per scale (a trie shared by both would make the
    // 10-route lookups walk the 100k-route trie), and one with empty VPC maps: a test run
    // always arrives on `lo` (the kernel's default), which is the VPC port in the others.
    let load = || {
        Dataplane::load(None)
            .context("loading the dataplane's XDP programs (needs root, BTF and the bpf syscall)")
    };
    progress("loading the programs with empty VPC maps");
    let plain = load()?;
    let mut instances: Vec<(Scale, Dataplane)> = Vec::new();
    let mut scales = Vec::new();
    for scale in Scale::ALL {
        progress(&format!(
            "loading the programs and the {} tables",
            scale.label()
        ));
        let mut dp = load()?;
        let tables = vpc::tables(scale);
        let started = Instant::now();
        vpc::install(&mut dp, &tables)?;
        scales.push(ScaleInfo {
            scale,
            label: scale.label().into(),
            vpcs: scale.vpcs(),
            routes: tables.routes.len(),
            endpoints: tables.endpoints.len(),
            fill_secs: started.elapsed().as_secs_f64(),
        });
        instances.push((scale, dp));
    }
    let mut sg_instances: Vec<(SgScale, Dataplane)> = Vec::new();
    let mut sg_scales = Vec::new();
    for scale in SgScale::ALL {
        if !paths.iter().any(|p| p.sg == Some(scale)) {
            continue;
        }
        progress(&format!("loading the programs and {}", scale.label()));
        let mut dp = load()?;
        sg_scales.push(sg::install(&mut dp, scale)?);
        sg_instances.push((scale, dp));
    }
    let mut nat_instance: Option<(Dataplane, NatInfo)> = None;
    if paths.iter().any(|p| nat::is_nat_path(&p.name)) {
        progress("loading the programs and the NAT tables");
        let mut dp = load()?;
        let info = nat::install(&mut dp)?;
        nat_instance = Some((dp, info));
    }
    let mut lb_instance: Option<Dataplane> = None;
    if paths.iter().any(|p| lb::is_lb_path(&p.name)) {
        progress("loading the programs and the load balancer's tables");
        let mut dp = load()?;
        lb::install(&mut dp)?;
        lb_instance = Some(dp);
    }
    let dp_for = |path: &PathSpec| -> &Dataplane {
        if lb::is_lb_path(&path.name) {
            return lb_instance
                .as_ref()
                .expect("a load balancer instance for its paths");
        }
        if nat::is_nat_path(&path.name) {
            return &nat_instance
                .as_ref()
                .expect("a NAT instance for NAT paths")
                .0;
        }
        if let Some(s) = path.sg {
            return &sg_instances
                .iter()
                .find(|(x, _)| *x == s)
                .expect("one instance per security-group scale")
                .1;
        }
        match path.scale {
            None => &plain,
            Some(scale) => {
                &instances
                    .iter()
                    .find(|(s, _)| *s == scale)
                    .expect("one instance per scale")
                    .1
            }
        }
    };

    progress("warm-up round");
    for path in &paths {
        run_once(dp_for(path), path, params)?;
    }
    let mut samples: Vec<Vec<f64>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 1..=params.runs {
        progress(&format!("round {round}/{}", params.runs));
        for (path, out) in paths.iter().zip(&mut samples) {
            out.push(run_once(dp_for(path), path, params)?);
        }
    }
    // Instances no selected path ran on (`--only`) counted nothing, rightly.
    let used = instances
        .iter()
        .filter(|(scale, _)| {
            paths
                .iter()
                .any(|p| p.scale == Some(*scale) && p.sg.is_none())
        })
        .map(|(_, dp)| dp)
        .chain(sg_instances.iter().map(|(_, dp)| dp))
        .chain(nat_instance.iter().map(|(dp, _)| dp))
        .chain(lb_instance.iter());
    // The plain instance too, unless only floors (which count nothing) ran on it.
    let plain_used = paths.iter().any(|p| {
        p.scale.is_none()
            && p.sg.is_none()
            && p.reason.is_some()
            && !nat::is_nat_path(&p.name)
            && !lb::is_lb_path(&p.name)
    });
    for dp in plain_used.then_some(&plain).into_iter().chain(used) {
        check_all_counted_on(dp, params.cpu)?;
    }

    let summaries = samples
        .iter()
        .map(|s| Summary::of(s))
        .collect::<Result<Vec<_>>>()?;
    let floor_of = |path: &PathSpec| -> Result<Summary> {
        let name = path.method.floor_name();
        let i = paths
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("path {}: its floor {name} is not measured", path.name))?;
        Ok(summaries[i])
    };
    let results = paths
        .iter()
        .zip(&samples)
        .zip(&summaries)
        .map(|((path, s), raw_ns)| {
            let floor = floor_of(path)?;
            let plan = path.method.plan(params);
            let info = dp_for(path).program(path.program)?.info()?;
            Ok(PathResult {
                name: path.name.clone(),
                program: path.program.into(),
                description: path.description.clone(),
                frame_len: path.frame.len(),
                method: path.method,
                method_short: path.method.short(params),
                floor: path.method.floor_name(),
                scale: path.scale,
                sg: path.sg,
                ingress_ifindex: path.ingress_ifindex,
                program_xlated_insns: info.size_translated().unwrap_or(0) / 8,
                program_jited_bytes: info.size_jitted(),
                expected_action: action_name(path.action),
                expected_reason: path.reason.map(|r| r.name().to_string()),
                runs: s.len() as u32,
                repeat: plan.repeat,
                calls_per_run: plan.calls,
                raw_ns: *raw_ns,
                net_ns: raw_ns.minus(floor.median),
                samples_ns: s.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let floor_ns = results
        .iter()
        .find(|r| r.name == FLOOR)
        .expect("paths() lists the floor")
        .raw_ns;

    Ok(MicroReport {
        mode: "micro".into(),
        date_utc,
        git_commit: crate::machine::git_commit(),
        machine,
        params: params.clone(),
        method: METHOD_TEXT.into(),
        floor_ns,
        scales,
        scale_ratios: scale_ratios(&results),
        sg_scales,
        sg_targets: sg_targets(&results),
        nat: nat_instance.as_ref().map(|(_, info)| info.clone()),
        nat_targets: nat_targets(&results),
        paths: results,
    })
}

/// Pairs every `<path>@10` with its `<path>@100k`.
pub fn scale_ratios(results: &[PathResult]) -> Vec<ScaleRatio> {
    let at = |base: &str, scale: Scale| {
        results
            .iter()
            .find(|r| r.scale == Some(scale) && base_name(&r.name) == base)
    };
    results
        .iter()
        .filter(|r| r.scale == Some(Scale::Routes10))
        .filter_map(|small| {
            let base = base_name(&small.name);
            let large = at(base, Scale::Routes100k)?;
            let net_10 = small.net_ns.median;
            Some(ScaleRatio {
                path: base.into(),
                raw_median_10: small.raw_ns.median,
                raw_median_100k: large.raw_ns.median,
                raw_ratio: large.raw_ns.median / small.raw_ns.median,
                net_median_10: net_10,
                net_median_100k: large.net_ns.median,
                net_ratio: (net_10 > 0.0).then(|| large.net_ns.median / net_10),
            })
        })
        .collect()
}

/// Room behind the frame in `data_out`: an unrestored encapsulation would need 50 bytes.
const OUTPUT_HEADROOM: usize = 512;

/// One test run of `frame` through `program` (a VM's arriving from `lo`, the VM port;
/// an underlay program's without context): the action and the frame out. For setting
/// up state the way a flow's first packet would.
pub(crate) fn run_one(dp: &Dataplane, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let md = xdp_md(frame.len(), vpc::LO);
    let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
    let vm = program == programs::XDP_VM || program == programs::XDP_BENCH_VM;
    let r = dp
        .program(program)?
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: vm.then_some(&md[..]),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN on {program}"))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// `struct xdp_md` for a frame of `len` bytes arriving on `ingress_ifindex`.
pub(crate) fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

/// Bumped for every call through the frame-restoring wrapper, so its first repetition saves
/// the frame it was given (`BenchConfig::generation`).
static BENCH_GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// One verified run of `path`: ns per packet. Fails when any repetition took another path,
/// or when a path measured by repetition left a different frame behind.
pub fn run_once(dp: &Dataplane, path: &PathSpec, params: &Params) -> Result<f64> {
    run_plan(dp, path, path.method.plan(params))
}

/// [`run_once`] with an explicit number of repetitions and calls.
pub fn run_plan(dp: &Dataplane, path: &PathSpec, plan: Plan) -> Result<f64> {
    let prog = dp.program(path.program)?;
    let ctx_in =
        (path.ingress_ifindex != 0).then(|| xdp_md(path.frame.len(), path.ingress_ifindex));
    let mut data_out = vec![0u8; path.frame.len() + OUTPUT_HEADROOM];
    let mut changed_frame: Option<Vec<u8>> = None;
    let mut odd_action: Option<u32> = None;
    let mut total_ns = 0.0;
    let before = dp.stats()?;
    let restore = match path.method {
        Method::RepeatRestoredFrame => Some(0),
        Method::NewFlows { vary_offset } => Some(vary_offset),
        _ => None,
    };
    for _ in 0..plan.calls {
        let varied = path.vary.map(|next| {
            let k = NEXT_FLOW.fetch_add(plan.repeat, std::sync::atomic::Ordering::Relaxed);
            next(&path.frame, k)
        });
        if let Some(vary_offset) = restore {
            dp.set_bench_config(&BenchConfig {
                restore: 1,
                vary_offset,
                generation: BENCH_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                _pad: 0,
            })?;
        }
        let opts = TestRunOptions {
            data_in: Some(varied.as_deref().unwrap_or(&path.frame)),
            data_out: Some(&mut data_out),
            ctx_in: ctx_in.as_ref().map(|c| &c[..]),
            repeat: plan.repeat,
            ..TestRunOptions::default()
        };
        let result = prog.test_run(opts).with_context(|| {
            format!("path {}: BPF_PROG_TEST_RUN on {}", path.name, path.program)
        })?;
        if result.return_value != path.action && odd_action.is_none() {
            odd_action = Some(result.return_value);
        }
        let out = &data_out[..(result.data_size_out as usize).min(data_out.len())];
        if path.method.frame_must_survive() && out != &path.frame[..] && changed_frame.is_none() {
            changed_frame = Some(out.to_vec());
        }
        // aya hands over the kernel's `duration` unchanged, and the kernel already divided
        // the total by the repetitions (net/bpf/test_run.c, bpf_test_timer_continue): this is
        // ns per packet; dividing by `repeat` again would be wrong. Timing the syscall from
        // here instead would add a fixed ~16 ms per repeated call (XDP dispatcher swap).
        total_ns += result.duration.as_nanos() as f64;
    }
    if restore.is_some() {
        dp.set_bench_config(&BenchConfig::default())?;
    }
    let delta = dp.stats()?.since(&before);
    verify(
        path,
        plan.packets(),
        odd_action.unwrap_or(path.action),
        &delta,
    )?;
    if let Some(out) = changed_frame {
        bail!(
            "path {} ({}) changed its frame, so repetitions after the first measured another frame: \
             {} bytes in, {} bytes out{}",
            path.name,
            path.program,
            path.frame.len(),
            out.len(),
            first_difference(&path.frame, &out)
                .map(|i| format!(", first difference at byte {i}"))
                .unwrap_or_default()
        );
    }
    Ok(total_ns / f64::from(plan.calls))
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// Checks one run took `path`'s intended path on every one of its `packets` repetitions;
/// `return_value` is the action of the first call that differed from the expected one
/// (or the expected one when none did).
pub fn verify(
    path: &PathSpec,
    packets: u64,
    return_value: u32,
    delta: &StatsSnapshot,
) -> Result<()> {
    let expected_packets = match path.reason {
        Some(_) => packets,
        None => 0,
    };
    let counted_expected = path.reason.map_or(0, |r| delta.get(r).packets);
    let counted_bytes = path.reason.map_or(0, |r| delta.get(r).bytes);
    let ok = return_value == path.action
        && counted_expected == expected_packets
        && delta.total_packets() == expected_packets
        && counted_bytes == expected_packets * path.frame.len() as u64;
    if !ok {
        let expected = match path.reason {
            Some(r) => format!("{packets} packets under {}", r.name()),
            None => "no packets counted".into(),
        };
        let counts: Vec<String> = delta
            .by_name()
            .into_iter()
            .filter(|(_, c)| c.packets != 0 || c.bytes != 0)
            .map(|(name, c)| format!("{name}: {} packets, {} bytes", c.packets, c.bytes))
            .collect();
        bail!(
            "path {} ({}) took the wrong path: expected {} returning {}, got {} with counts [{}]",
            path.name,
            path.program,
            expected,
            action_name(path.action),
            action_name(return_value),
            counts.join("; "),
        );
    }
    Ok(())
}

/// Every packet of the benchmark must have been counted on the pinned CPU; anything else
/// means the pinning did not hold and figures mix CPUs.
fn check_all_counted_on(dp: &Dataplane, cpu: usize) -> Result<()> {
    let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(dp.map(maps::STATS)?)?;
    let mut per_cpu: Vec<u64> = Vec::new();
    for reason in Reason::ALL {
        let values = array.get(&reason.index(), 0)?;
        per_cpu.resize(per_cpu.len().max(values.len()), 0);
        for (i, c) in values.iter().enumerate() {
            per_cpu[i] += c.packets;
        }
    }
    let elsewhere: u64 = per_cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cpu)
        .map(|(_, p)| p)
        .sum();
    ensure!(
        elsewhere == 0 && per_cpu.get(cpu).copied().unwrap_or(0) > 0,
        "packets were counted on CPUs other than the pinned CPU {cpu}: per-CPU totals {per_cpu:?}"
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn delta(counts: &[(Reason, u64, u64)]) -> StatsSnapshot {
        let mut counters = vec![Counter::default(); Reason::COUNT as usize];
        for (r, packets, bytes) in counts {
            counters[r.index() as usize] = Counter {
                packets: *packets,
                bytes: *bytes,
            };
        }
        StatsSnapshot { counters }
    }

    fn find(name: &str) -> PathSpec {
        paths().into_iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn paths_have_unique_names_and_the_floor_comes_first() {
        let all = paths();
        assert_eq!(all[0].name, FLOOR);
        assert_eq!(all[0].reason, None);
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.name, b.name);
            }
            // The action follows from the reason.
            if let Some(r) = a.reason {
                let want = match r {
                    Reason::FwdLocal
                    | Reason::FwdEncap
                    | Reason::FwdDecap
                    | Reason::FwdNatOut
                    | Reason::FwdNatIn => XDP_REDIRECT,
                    Reason::ArpReply | Reason::FwdNatOwner => XDP_TX,
                    r if r.is_drop() => XDP_DROP,
                    _ => XDP_PASS,
                };
                assert_eq!(a.action, want, "{}", a.name);
            }
        }
    }

    /// `paths` are exactly `names`, in order, none twice; every drop among them leaves
    /// its frame as it came, so it is repeated on it through the real entry point.
    pub(crate) fn assert_listed_once_and_drops_repeat(paths: Vec<PathSpec>, names: &[&str]) {
        let listed: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(listed, names);
        let mut unique = listed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), listed.len());
        for p in &paths {
            if p.action == XDP_DROP {
                assert!(
                    matches!(p.method, Method::Repeat | Method::Fresh { .. }),
                    "{}",
                    p.name
                );
                assert!(p.reason.is_some_and(|r| r.is_drop()), "{}", p.name);
            }
        }
    }

    #[test]
    fn every_reason_has_a_path_unless_no_test_run_can_reach_it() {
        let all = paths();
        for reason in Reason::ALL {
            let measured = all.iter().any(|p| p.reason == Some(reason));
            let unreachable = UNREACHABLE.iter().any(|(r, _)| *r == reason);
            assert!(
                measured != unreachable,
                "{}: measured by a path {measured}, listed unreachable {unreachable}",
                reason.name()
            );
        }
    }

    #[test]
    fn every_path_has_its_floor_measured_the_same_way() {
        let all = paths();
        for p in &all {
            let floor = all
                .iter()
                .find(|f| f.name == p.method.floor_name())
                .unwrap_or_else(|| panic!("{}: no floor {}", p.name, p.method.floor_name()));
            assert_eq!(floor.program, programs::XDP_FLOOR);
            let params = Params::new(false, None, None, 1).unwrap();
            assert_eq!(
                floor.method.plan(&params),
                p.method.plan(&params),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn frame_changing_paths_go_through_a_wrapper_or_fresh_frames() {
        // Encap and decap move `data`; only the restoring wrappers may repeat them.
        for p in paths() {
            if matches!(p.reason, Some(Reason::FwdEncap | Reason::FwdDecap)) {
                assert!(
                    p.program == programs::XDP_BENCH_VM
                        || p.program == programs::XDP_BENCH_UNDERLAY,
                    "{}",
                    p.name
                );
                assert_ne!(p.method, Method::Repeat, "{}", p.name);
            }
            if p.reason == Some(Reason::ArpReply) {
                assert_eq!(p.method, Method::Fresh { repeat: 1 }, "{}", p.name);
            }
        }
    }

    #[test]
    fn new_flow_paths_count_up_the_field_their_frames_vary_in() {
        let wrappers = [programs::XDP_BENCH_VM, programs::XDP_BENCH_UNDERLAY];
        let mut seen = 0;
        for p in paths() {
            let Method::NewFlows { vary_offset } = p.method else {
                // Only the wrappers restore a translated frame.
                if p.method == Method::RepeatRestoredFrame {
                    assert!(wrappers.contains(&p.program), "{}", p.name);
                }
                continue;
            };
            seen += 1;
            assert!(wrappers.contains(&p.program), "{}", p.name);
            let off = vary_offset as usize;
            assert!(
                off != 0 && off + 2 <= sluice_common::bench::RESTORE_LEN,
                "{}",
                p.name
            );
            let next = p.vary.unwrap_or_else(|| panic!("{}: no vary", p.name));
            let mut firsts = std::collections::HashSet::new();
            for block in [0, 1, 14, 15, 16, 40, 111] {
                let k = block * NEW_FLOW_REPEAT;
                let first = next(&p.frame, k);
                assert_eq!(first.len(), p.frame.len(), "{}", p.name);
                assert!(
                    firsts.insert(first.clone()),
                    "{}: block {block} repeats",
                    p.name
                );
                for i in [1, 2, 255, 256, NEW_FLOW_REPEAT - 1] {
                    // What the wrapper makes of the call's frame after i repetitions.
                    let mut counted = first.clone();
                    let v = u16::from_be_bytes([counted[off], counted[off + 1]]);
                    let v = v
                        .checked_add(i as u16)
                        .unwrap_or_else(|| panic!("{}: field overflows in block {block}", p.name));
                    counted[off..off + 2].copy_from_slice(&v.to_be_bytes());
                    let mut expected = next(&p.frame, k + i);
                    // The IPv4 header checksum is the call's first frame's (unchecked).
                    expected[24..26].copy_from_slice(&counted[24..26]);
                    assert_eq!(counted, expected, "{}: flow {}", p.name, k + i);
                }
            }
        }
        assert!(seen >= 4, "new-flow paths: {seen}");
    }

    #[test]
    fn every_vpc_path_is_measured_at_both_scales() {
        let all = paths();
        let at = |scale| {
            all.iter()
                .filter(|p| p.scale == Some(scale))
                .map(|p| base_name(&p.name).to_string())
                .collect::<Vec<_>>()
        };
        let (small, large) = (at(Scale::Routes10), at(Scale::Routes100k));
        for name in ["vpc_local", "vpc_encap", "vpc_decap"] {
            assert!(small.iter().any(|n| n == name) && large.iter().any(|n| n == name));
        }
        for name in &large {
            assert!(small.contains(name), "{name} lacks its 10-route twin");
        }
    }

    #[test]
    fn fresh_plans_split_the_packets_over_calls() {
        let params = Params::new(false, None, None, 1).unwrap();
        let routed = Method::Fresh { repeat: 200 }.plan(&params);
        assert_eq!(routed.packets(), u64::from(Params::DEFAULT_FRESH_PACKETS));
        assert_eq!(Method::Fresh { repeat: 1 }.plan(&params).calls, 4000);
        assert_eq!(
            Method::RepeatRestored.plan(&params),
            Plan {
                repeat: Params::DEFAULT_REPEAT,
                calls: 1
            }
        );
        assert_eq!(
            Method::Fresh { repeat: 200 }.floor_name(),
            "floor_repeat_200"
        );
        assert_eq!(Method::RepeatRestored.floor_name(), FLOOR);
    }

    #[test]
    fn verify_accepts_exactly_repeat_packets_under_the_reason() {
        let p = find("vm_ipv4_udp_pass");
        let len = p.frame.len() as u64;
        verify(
            &p,
            1000,
            XDP_PASS,
            &delta(&[(Reason::PassIpv4, 1000, 1000 * len)]),
        )
        .unwrap();
    }

    #[test]
    fn verify_rejects_wrong_reason_count_action_or_stray_packets() {
        let p = find("vm_ipv4_udp_pass");
        let len = p.frame.len() as u64;
        let wrong_reason = delta(&[(Reason::PassIpv6, 1000, 1000 * len)]);
        let err = verify(&p, 1000, XDP_PASS, &wrong_reason).unwrap_err();
        assert!(err.to_string().contains("pass_ipv6"), "{err}");
        let short = delta(&[(Reason::PassIpv4, 999, 999 * len)]);
        assert!(verify(&p, 1000, XDP_PASS, &short).is_err());
        let good = delta(&[(Reason::PassIpv4, 1000, 1000 * len)]);
        assert!(verify(&p, 1000, XDP_DROP, &good).is_err());
        let stray = delta(&[
            (Reason::PassIpv4, 1000, 1000 * len),
            (Reason::PassArp, 1, 60),
        ]);
        assert!(verify(&p, 1000, XDP_PASS, &stray).is_err());
        let wrong_frame = delta(&[(Reason::PassIpv4, 1000, 1000 * (len + 1))]);
        assert!(verify(&p, 1000, XDP_PASS, &wrong_frame).is_err());
    }

    #[test]
    fn verify_catches_an_encap_path_that_took_another_path_after_the_first_repetition() {
        let p = find("vpc_encap@10");
        let len = p.frame.len() as u64;
        let once_then_spoofed = delta(&[
            (Reason::FwdEncap, 1, len),
            (Reason::DropSpoofedMac, 999, 999 * (len + 50)),
        ]);
        let err = verify(&p, 1000, XDP_REDIRECT, &once_then_spoofed).unwrap_err();
        assert!(err.to_string().contains("drop_spoofed_mac"), "{err}");
    }

    #[test]
    fn verify_floor_expects_nothing_counted() {
        let floor = find(FLOOR);
        verify(&floor, 10, XDP_PASS, &delta(&[])).unwrap();
        assert!(verify(&floor, 10, XDP_PASS, &delta(&[(Reason::PassIpv4, 10, 600)])).is_err());
    }

    #[test]
    fn quick_defaults_yield_to_explicit_values() {
        let q = Params::new(true, None, None, 1).unwrap();
        assert_eq!(
            (q.runs, q.repeat, q.fresh_packets),
            (
                Params::QUICK_RUNS,
                Params::QUICK_REPEAT,
                Params::QUICK_FRESH_PACKETS
            )
        );
        let full = Params::new(false, None, Some(5), 0).unwrap();
        assert_eq!((full.runs, full.repeat), (Params::DEFAULT_RUNS, 5));
        assert!(Params::new(false, Some(0), None, 1).is_err());
        assert!(Params::new(false, None, Some(0), 1).is_err());
    }

    #[test]
    fn only_keeps_the_floors_and_the_matching_paths() {
        let names = |only: &[&str]| -> Result<Vec<String>> {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            Ok(selected(paths(), &only)?
                .into_iter()
                .map(|p| p.name)
                .collect())
        };
        let encap = names(&["vpc_encap@"]).unwrap();
        assert_eq!(
            encap,
            [
                "floor",
                "floor_repeat_200",
                "floor_repeat_1",
                "floor_repeat_4096",
                "vpc_encap@10",
                "vpc_encap@100k"
            ]
        );
        assert_eq!(names(&[]).unwrap().len(), paths().len());
        let err = names(&["no_such_path"]).unwrap_err().to_string();
        assert!(err.contains("no_such_path"), "{err}");
    }

    fn result(name: &str, scale: Option<Scale>, raw: f64, net: f64) -> PathResult {
        let s = |v| Summary {
            median: v,
            min: v,
            max: v,
        };
        PathResult {
            name: name.into(),
            program: "p".into(),
            description: String::new(),
            frame_len: 60,
            method: Method::Repeat,
            method_short: String::new(),
            floor: FLOOR.into(),
            scale,
            sg: None,
            ingress_ifindex: 0,
            program_xlated_insns: 0,
            program_jited_bytes: 0,
            expected_action: "XDP_PASS".into(),
            expected_reason: None,
            runs: 1,
            repeat: 1,
            calls_per_run: 1,
            raw_ns: s(raw),
            net_ns: s(net),
            samples_ns: vec![raw],
        }
    }

    #[test]
    fn scale_ratios_pair_each_path_with_its_twin() {
        let results = vec![
            result("floor", None, 26.0, 0.0),
            result("vpc_local@10", Some(Scale::Routes10), 40.0, 14.0),
            result("vpc_local@100k", Some(Scale::Routes100k), 47.0, 21.0),
            result("vpc_local_wrapped@10", Some(Scale::Routes10), 41.0, 15.0),
            result("vpc_x@10", Some(Scale::Routes10), 26.0, 0.0),
            result("vpc_x@100k", Some(Scale::Routes100k), 27.0, 1.0),
        ];
        let ratios = scale_ratios(&results);
        assert_eq!(ratios.len(), 2, "the wrapper calibration has no twin");
        assert_eq!(ratios[0].path, "vpc_local");
        assert_eq!(ratios[0].net_ratio, Some(1.5));
        assert!((ratios[0].raw_ratio - 47.0 / 40.0).abs() < 1e-12);
        assert_eq!(ratios[1].net_ratio, None, "no ratio over a zero net figure");
    }
}
