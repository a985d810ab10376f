//! Mode `micro`: the per-packet cost of every datapath path, by BPF_PROG_TEST_RUN.
//!
//! Each path is one (program, frame, expected verdict). Every measured run is checked
//! against the stats map: exactly `repeat` packets under the expected reason and the
//! expected XDP action, or the whole benchmark fails: a figure for the wrong path is
//! worse than no figure.

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::TestRun,
    TestRunOptions,
};
use serde::{Deserialize, Serialize};
use sluice_common::{
    maps, programs,
    stats::{Counter, Reason},
};
use sluice_dataplane::{loader::Dataplane, stats::StatsSnapshot};

use crate::{affinity, machine::Machine, packets, stats::Summary};

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

/// How a path is driven through BPF_PROG_TEST_RUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One call with `repeat` repetitions; the kernel reports the mean per repetition.
    /// The kernel reruns the program on the buffer the previous repetition left behind,
    /// so this is only valid for paths that leave the frame as they found it (parse,
    /// count, PASS/DROP), which are all the paths today.
    //
    // Paths that rewrite the frame (encap, NAT) or insert state (new flow) need another
    // variant here: either a loop of `repeat = 1` calls (reporting that method's own
    // floor beside it), or a test-only wrapper program that restores the original frame
    // (or bumps the flow key) before each repetition. The verification below (exact
    // per-reason deltas against the repeat count) applies unchanged to both.
    Repeat,
}

/// One benchmarked path: a program, the frame fed to it and the verdict it must reach.
pub struct PathSpec {
    pub name: &'static str,
    pub program: &'static str,
    pub description: &'static str,
    pub frame: Vec<u8>,
    pub action: u32,
    /// The reason every repetition must be counted under; `None` for the floor, which
    /// counts nothing.
    pub reason: Option<Reason>,
    pub method: Method,
}

/// Every path that exists today, floor first.
pub fn paths() -> Vec<PathSpec> {
    use programs::{XDP_FLOOR, XDP_UNDERLAY, XDP_VM};
    let path = |name, program, description, frame, action, reason| PathSpec {
        name,
        program,
        description,
        frame,
        action,
        reason,
        method: Method::Repeat,
    };
    vec![
        path(
            FLOOR,
            XDP_FLOOR,
            "empty XDP program: the cost of running any program at all",
            packets::ipv4_udp(),
            XDP_PASS,
            None,
        ),
        path(
            "vm_ipv4_udp_pass",
            XDP_VM,
            "VM egress IPv4 UDP",
            packets::ipv4_udp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "vm_ipv4_tcp_pass",
            XDP_VM,
            "VM egress IPv4 TCP",
            packets::ipv4_tcp(),
            XDP_PASS,
            Some(Reason::PassIpv4),
        ),
        path(
            "vm_arp_pass",
            XDP_VM,
            "VM ARP request",
            packets::arp_request(),
            XDP_PASS,
            Some(Reason::PassArp),
        ),
        path(
            "vm_ipv6_udp_pass",
            XDP_VM,
            "VM egress IPv6 UDP",
            packets::ipv6_udp(),
            XDP_PASS,
            Some(Reason::PassIpv6),
        ),
        path(
            "vm_vlan_ipv4_udp_pass",
            XDP_VM,
            "802.1Q-tagged IPv4 UDP",
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
            "VXLAN: outer + inner IPv4 UDP parsed",
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
    ]
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Measured runs per path (a warm-up run before them is discarded).
    pub runs: u32,
    /// Repetitions per run (BPF_PROG_TEST_RUN `repeat`).
    pub repeat: u32,
    /// The CPU the measuring thread is pinned to.
    pub cpu: usize,
    pub quick: bool,
}

impl Params {
    pub const DEFAULT_RUNS: u32 = 15;
    pub const DEFAULT_REPEAT: u32 = 1_000_000;
    pub const QUICK_RUNS: u32 = 3;
    pub const QUICK_REPEAT: u32 = 10_000;
    pub const DEFAULT_CPU: usize = 1;

    /// Explicit `runs`/`repeat` win over the `quick` defaults.
    pub fn new(quick: bool, runs: Option<u32>, repeat: Option<u32>, cpu: usize) -> Result<Self> {
        let (default_runs, default_repeat) = if quick {
            (Self::QUICK_RUNS, Self::QUICK_REPEAT)
        } else {
            (Self::DEFAULT_RUNS, Self::DEFAULT_REPEAT)
        };
        let params = Params {
            runs: runs.unwrap_or(default_runs),
            repeat: repeat.unwrap_or(default_repeat),
            cpu,
            quick,
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
    /// The floor's raw figures (also present as the path named `floor`).
    pub floor_ns: Summary,
    pub paths: Vec<PathResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    pub name: String,
    pub program: String,
    pub description: String,
    pub frame_len: usize,
    pub method: Method,
    /// Size of the program after the verifier (eBPF instructions) and after the JIT (bytes;
    /// 0 when the JIT is off).
    pub program_xlated_insns: u32,
    pub program_jited_bytes: u32,
    pub expected_action: String,
    /// `None` for the floor.
    pub expected_reason: Option<String>,
    pub runs: u32,
    pub repeat: u32,
    /// The kernel's mean ns per repetition (whole ns), over the runs.
    pub raw_ns: Summary,
    /// `raw_ns` minus the floor's median.
    pub net_ns: Summary,
    /// The kernel figure of each measured run, in run order.
    pub samples_ns: Vec<f64>,
}

const METHOD_TEXT: &str = "BPF_PROG_TEST_RUN with `repeat` repetitions per run on the same frame; \
the kernel returns the mean ns per repetition (total / repeat, truncated to whole ns). \
One verified warm-up round, then `runs` rounds visiting every path in turn (round-robin, \
so machine noise spreads over all paths). Every run checks the stats map: exactly `repeat` \
packets under the expected reason and nothing else, and the expected XDP action. \
Net figures are the raw ones minus the floor's median; differences of 1 ns are \
within the kernel figure's resolution.";

/// Runs the micro benchmark. Needs root (loads programs).
pub fn run(params: &Params, mut progress: impl FnMut(&str)) -> Result<MicroReport> {
    let machine = Machine::collect();
    let date_utc = crate::machine::utc_now();
    affinity::pin_current_thread(params.cpu)?;
    let dp = Dataplane::load(None)
        .context("loading the dataplane's XDP programs (needs root, BTF and the bpf syscall)")?;
    let paths = paths();

    progress("warm-up round");
    for path in &paths {
        run_once(&dp, path, params.repeat)?;
    }
    let mut samples: Vec<Vec<f64>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 1..=params.runs {
        progress(&format!("round {round}/{}", params.runs));
        for (path, out) in paths.iter().zip(&mut samples) {
            out.push(run_once(&dp, path, params.repeat)?);
        }
    }
    check_all_counted_on(&dp, params.cpu)?;

    let floor_index = paths
        .iter()
        .position(|p| p.name == FLOOR)
        .expect("paths() lists the floor");
    let floor_ns = Summary::of(&samples[floor_index])?;
    let results = paths
        .iter()
        .zip(&samples)
        .map(|(path, s)| {
            let raw_ns = Summary::of(s)?;
            let info = dp.program(path.program)?.info()?;
            Ok(PathResult {
                name: path.name.into(),
                program: path.program.into(),
                description: path.description.into(),
                frame_len: path.frame.len(),
                method: path.method,
                program_xlated_insns: info.size_translated().unwrap_or(0) / 8,
                program_jited_bytes: info.size_jitted(),
                expected_action: action_name(path.action),
                expected_reason: path.reason.map(|r| r.name().to_string()),
                runs: s.len() as u32,
                repeat: params.repeat,
                raw_ns,
                net_ns: raw_ns.minus(floor_ns.median),
                samples_ns: s.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    Ok(MicroReport {
        mode: "micro".into(),
        date_utc,
        git_commit: crate::machine::git_commit(),
        machine,
        params: params.clone(),
        method: METHOD_TEXT.into(),
        floor_ns,
        paths: results,
    })
}

/// One verified run of `path`: ns per packet. Fails when any repetition took another path.
pub fn run_once(dp: &Dataplane, path: &PathSpec, repeat: u32) -> Result<f64> {
    match path.method {
        Method::Repeat => run_repeated(dp, path, repeat),
    }
}

fn run_repeated(dp: &Dataplane, path: &PathSpec, repeat: u32) -> Result<f64> {
    let prog = dp.program(path.program)?;
    let before = dp.stats()?;
    let opts = TestRunOptions {
        data_in: Some(&path.frame),
        repeat,
        ..TestRunOptions::default()
    };
    let result = prog
        .test_run(opts)
        .with_context(|| format!("path {}: BPF_PROG_TEST_RUN on {}", path.name, path.program))?;
    let delta = dp.stats()?.since(&before);
    verify(path, repeat, result.return_value, &delta)?;
    // aya hands over the kernel's `duration` unchanged, and the kernel already divided the
    // total by the repetitions (net/bpf/test_run.c, bpf_test_timer_continue): this is ns per
    // packet, not per run; dividing by `repeat` again would be wrong. Timing the syscall from
    // here instead would add a fixed ~16 ms per call (XDP dispatcher swap, an RCU grace period).
    Ok(result.duration.as_nanos() as f64)
}

/// Checks one run took `path`'s intended path on every repetition.
pub fn verify(
    path: &PathSpec,
    repeat: u32,
    return_value: u32,
    delta: &StatsSnapshot,
) -> Result<()> {
    let expected_packets = match path.reason {
        Some(_) => u64::from(repeat),
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
            Some(r) => format!("{repeat} packets under {}", r.name()),
            None => "no packets counted".into(),
        };
        bail!(
            "path {} ({}) took the wrong path: expected {} returning {}, got {} with counts {:?}",
            path.name,
            path.program,
            expected,
            action_name(path.action),
            action_name(return_value),
            delta.by_name(),
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
mod tests {
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
            // A drop reason must come with XDP_DROP, a pass reason with XDP_PASS.
            if let Some(r) = a.reason {
                let want = if r.is_drop() { XDP_DROP } else { XDP_PASS };
                assert_eq!(a.action, want, "{}", a.name);
            }
        }
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
    fn verify_floor_expects_nothing_counted() {
        let floor = find(FLOOR);
        verify(&floor, 10, XDP_PASS, &delta(&[])).unwrap();
        assert!(verify(&floor, 10, XDP_PASS, &delta(&[(Reason::PassIpv4, 10, 600)])).is_err());
    }

    #[test]
    fn quick_defaults_yield_to_explicit_values() {
        let q = Params::new(true, None, None, 1).unwrap();
        assert_eq!(
            (q.runs, q.repeat),
            (Params::QUICK_RUNS, Params::QUICK_REPEAT)
        );
        let full = Params::new(false, None, Some(5), 0).unwrap();
        assert_eq!((full.runs, full.repeat), (Params::DEFAULT_RUNS, 5));
        assert!(Params::new(false, Some(0), None, 1).is_err());
        assert!(Params::new(false, None, Some(0), 1).is_err());
    }
}
