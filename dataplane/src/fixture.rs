//! Packet fixtures: run one frame through an XDP program with `BPF_PROG_TEST_RUN` and check
//! the verdict, the bytes that come out and exactly which counters moved.
//!
//! A [`Fixture`] names a program, an input frame, optional map setup (routes, rules, ... as
//! later features add maps), and its expectations. [`Fixture::run`] reports every mismatch at
//! once as a [`FixtureFailure`] whose `Display` is a readable diff: the action, a per-reason
//! counter table and a side-by-side hex dump. [`packets`] builds well-formed frames with
//! `etherparse`; malformed cases start from those bytes and mutate them.

use std::fmt::{self, Write as _};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use sluice_common::stats::Reason;

use crate::{loader::Dataplane, stats::StatsSnapshot};

/// The XDP verdict a program returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// Not an action the kernel knows: always a program bug.
    Unknown(u32),
}

impl XdpAction {
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            other => XdpAction::Unknown(other),
        }
    }
}

impl fmt::Display for XdpAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpAction::Aborted => f.write_str("XDP_ABORTED"),
            XdpAction::Drop => f.write_str("XDP_DROP"),
            XdpAction::Pass => f.write_str("XDP_PASS"),
            XdpAction::Tx => f.write_str("XDP_TX"),
            XdpAction::Redirect => f.write_str("XDP_REDIRECT"),
            XdpAction::Unknown(v) => write!(f, "unknown XDP action {v}"),
        }
    }
}

/// Puts state into the maps before the frame runs.
pub type MapSetup = Box<dyn Fn(&mut Dataplane) -> Result<()> + Send + Sync>;

/// One frame through one program, and everything that must (and must not) happen.
pub struct Fixture {
    pub description: String,
    /// Program name, one of `sluice_common::programs`.
    pub program: &'static str,
    pub input: Vec<u8>,
    /// `xdp_md.ingress_ifindex`; 0 lets the kernel pick `lo` (1), otherwise it must name a real device.
    pub ingress_ifindex: u32,
    pub setup: Option<MapSetup>,
    pub action: XdpAction,
    /// The frame the program must leave behind; `None`: unchanged.
    pub output: Option<Vec<u8>>,
    /// Packet-counter deltas; every reason not listed must stay unchanged.
    pub counters: Vec<(Reason, u64)>,
    /// Byte-counter deltas, checked only for the reasons listed.
    pub bytes: Vec<(Reason, u64)>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("description", &self.description)
            .field("program", &self.program)
            .field("input_len", &self.input.len())
            .field("has_setup", &self.setup.is_some())
            .field("action", &self.action)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture expecting `XDP_PASS`, the frame unchanged and no counter moving; refine it with
    /// [`Fixture::passes`], [`Fixture::drops`] and the `expect_*` methods.
    pub fn new(description: impl Into<String>, program: &'static str, input: Vec<u8>) -> Self {
        Self {
            description: description.into(),
            program,
            input,
            ingress_ifindex: 0,
            setup: None,
            action: XdpAction::Pass,
            output: None,
            counters: Vec::new(),
            bytes: Vec::new(),
        }
    }

    pub fn setup(
        mut self,
        setup: impl Fn(&mut Dataplane) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }

    /// Runs the frame as if received on `ifindex`.
    pub fn on_ifindex(mut self, ifindex: u32) -> Self {
        self.ingress_ifindex = ifindex;
        self
    }

    /// Expects `XDP_PASS` with the packet counted once under `reason`.
    pub fn passes(self, reason: Reason) -> Self {
        self.expect_action(XdpAction::Pass).expect_count(reason, 1)
    }

    /// Expects `XDP_DROP` with the packet counted once under `reason`.
    pub fn drops(self, reason: Reason) -> Self {
        self.expect_action(XdpAction::Drop).expect_count(reason, 1)
    }

    pub fn expect_action(mut self, action: XdpAction) -> Self {
        self.action = action;
        self
    }

    pub fn expect_output(mut self, output: Vec<u8>) -> Self {
        self.output = Some(output);
        self
    }

    pub fn expect_count(mut self, reason: Reason, packets: u64) -> Self {
        self.counters.push((reason, packets));
        self
    }

    pub fn expect_bytes(mut self, reason: Reason, bytes: u64) -> Self {
        self.bytes.push((reason, bytes));
        self
    }

    /// The reasons this fixture expects to count (to check every reason is exercised).
    pub fn exercised_reasons(&self) -> impl Iterator<Item = Reason> + '_ {
        self.counters
            .iter()
            .filter(|(_, packets)| *packets > 0)
            .map(|(r, _)| *r)
    }

    /// Runs the setup, then the frame, and compares everything against the expectations.
    pub fn run(&self, dp: &mut Dataplane) -> Result<(), FixtureFailure> {
        let fail = |problem| FixtureFailure {
            description: self.description.clone(),
            program: self.program,
            problems: vec![problem],
        };
        if let Some(setup) = &self.setup {
            setup(dp).map_err(|e| fail(Problem::Setup(format!("{e:#}"))))?;
        }
        let (ran, delta) = self
            .run_counted(dp)
            .map_err(|e| fail(Problem::Run(format!("{e:#}"))))?;

        let mut problems = Vec::new();
        if ran.action != self.action {
            problems.push(Problem::Action {
                expected: self.action,
                actual: ran.action,
            });
        }
        let expected_out = self.output.as_deref().unwrap_or(&self.input);
        if ran.output != expected_out {
            problems.push(Problem::Output {
                expected: expected_out.to_vec(),
                actual: ran.output,
            });
        }
        let mut expected = vec![0u64; Reason::COUNT as usize];
        for (reason, packets) in &self.counters {
            expected[reason.index() as usize] += packets;
        }
        let actual: Vec<u64> = delta.counters.iter().map(|c| c.packets).collect();
        if actual != expected {
            problems.push(Problem::Packets { expected, actual });
        }
        for (reason, bytes) in &self.bytes {
            let actual = delta.get(*reason).bytes;
            if actual != *bytes {
                problems.push(Problem::Bytes {
                    reason: *reason,
                    expected: *bytes,
                    actual,
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(FixtureFailure {
                description: self.description.clone(),
                program: self.program,
                problems,
            })
        }
    }

    fn run_counted(&self, dp: &Dataplane) -> Result<(RunOutput, StatsSnapshot)> {
        let before = dp.stats().context("reading counters before the run")?;
        let ran = run_frame_on(dp.program(self.program)?, &self.input, self.ingress_ifindex)
            .with_context(|| format!("running {}", self.program))?;
        let after = dp.stats().context("reading counters after the run")?;
        Ok((ran, after.since(&before)))
    }
}

/// Runs every fixture against `dp` in order; the report lists each failure.
pub fn run_all(dp: &mut Dataplane, fixtures: &[Fixture]) -> Report {
    let mut report = Report {
        total: fixtures.len(),
        failures: Vec::new(),
    };
    for fixture in fixtures {
        if let Err(failure) = fixture.run(dp) {
            report.failures.push(failure);
        }
    }
    report
}

/// The outcome of [`run_all`].
#[derive(Debug)]
pub struct Report {
    pub total: usize,
    pub failures: Vec<FixtureFailure>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.total - self.failures.len()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failures {
            writeln!(f, "{failure}")?;
        }
        write!(
            f,
            "fixtures: {} run, {} passed, {} failed",
            self.total,
            self.passed(),
            self.failures.len()
        )
    }
}

/// What one fixture got wrong.
#[derive(Debug)]
pub struct FixtureFailure {
    pub description: String,
    pub program: &'static str,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub enum Problem {
    /// The map-setup closure failed.
    Setup(String),
    /// The test run itself (or reading the counters) failed.
    Run(String),
    Action {
        expected: XdpAction,
        actual: XdpAction,
    },
    Output {
        expected: Vec<u8>,
        actual: Vec<u8>,
    },
    /// Packet-counter deltas, indexed by reason.
    Packets {
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    Bytes {
        reason: Reason,
        expected: u64,
        actual: u64,
    },
}

impl std::error::Error for FixtureFailure {}

impl fmt::Display for FixtureFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FIXTURE FAILED [{}] {}", self.program, self.description)?;
        for problem in &self.problems {
            match problem {
                Problem::Setup(e) => writeln!(f, "  map setup failed: {e}")?,
                Problem::Run(e) => writeln!(f, "  test run failed: {e}")?,
                Problem::Action { expected, actual } => {
                    writeln!(f, "  action: expected {expected}, got {actual}")?
                }
                Problem::Output { expected, actual } => {
                    f.write_str(&indent(&hex_diff(expected, actual), "  "))?
                }
                Problem::Packets { expected, actual } => {
                    f.write_str(&indent(&counter_diff(expected, actual), "  "))?
                }
                Problem::Bytes {
                    reason,
                    expected,
                    actual,
                } => writeln!(
                    f,
                    "  bytes counted under {}: expected {expected}, got {actual}",
                    reason.name()
                )?,
            }
        }
        Ok(())
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{prefix}{line}");
        out
    })
}

/// Per-reason packet deltas, showing every reason that was expected or moved.
pub fn counter_diff(expected: &[u64], actual: &[u64]) -> String {
    let mut out = String::from("counter deltas (packets):\n");
    let _ = writeln!(out, "  {:<28} {:>8} {:>8}", "reason", "expected", "actual");
    for (i, reason) in Reason::ALL.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        let a = actual.get(i).copied().unwrap_or(0);
        if e == 0 && a == 0 {
            continue;
        }
        let mark = if e == a { "" } else { "  <-- mismatch" };
        let _ = writeln!(out, "  {:<28} {e:>8} {a:>8}{mark}", reason.name());
    }
    out
}

const HEX_ROW: usize = 16;

/// Side-by-side hex dump of two byte strings; `!` marks rows that differ and `^^` the bytes.
pub fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    let first = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    let mut out = format!(
        "output bytes differ: expected {} bytes, got {}; first difference at offset {first:#06x}\n",
        expected.len(),
        actual.len()
    );
    let width = HEX_ROW * 3;
    let _ = writeln!(out, "  offset  {:<width$}  actual", "expected");
    let rows = expected.len().max(actual.len()).div_ceil(HEX_ROW);
    for row in 0..rows {
        let start = row * HEX_ROW;
        let (mut e_hex, mut a_hex, mut marks) = (String::new(), String::new(), String::new());
        let mut differs = false;
        for i in start..start + HEX_ROW {
            let (e, a) = (expected.get(i), actual.get(i));
            if e.is_none() && a.is_none() {
                break;
            }
            e_hex.push_str(&e.map_or("-- ".into(), |b| format!("{b:02x} ")));
            a_hex.push_str(&a.map_or("-- ".into(), |b| format!("{b:02x} ")));
            let same = e == a;
            differs |= !same;
            marks.push_str(if same { "   " } else { "^^ " });
        }
        let flag = if differs { '!' } else { ' ' };
        let _ = writeln!(out, "{flag} {start:06x}  {e_hex:<width$}  {a_hex}");
        if differs {
            let _ = writeln!(out, "  {:6}  {:<width$}  {}", "", "", marks.trim_end());
        }
    }
    out
}

/// What one test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutput {
    pub action: XdpAction,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// `BPF_PROG_TEST_RUN` refuses input shorter than an Ethernet header (not counting metadata).
const TEST_RUN_MIN_LEN: usize = 14;
/// Room for programs that grow the frame (encapsulation).
const OUTPUT_HEADROOM: usize = 512;

/// `struct xdp_md`: six `u32`s in native byte order.
fn xdp_md(data: u32, data_end: u32, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[0..4].copy_from_slice(&data.to_ne_bytes());
    md[4..8].copy_from_slice(&data_end.to_ne_bytes());
    // data_meta 0; rx_queue_index, egress_ifindex: 0.
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

/// Bytes appended to a frame so the kernel accepts it: frames shorter than an Ethernet
/// header are filled up to one, and the filler goes to a fragment the program does not see.
pub fn filler_len_for(frame_len: usize) -> usize {
    TEST_RUN_MIN_LEN.saturating_sub(frame_len)
}

/// Runs `frame` once through `prog`. A frame shorter than an Ethernet header (which the
/// test run refuses) is filled up to one, with `xdp_md.data_end` at the frame's end: the
/// kernel puts the filler in a fragment, so the program's linear data is exactly `frame`.
pub fn run_frame(prog: &Xdp, frame: &[u8]) -> Result<RunOutput> {
    run_frame_on(prog, frame, 0)
}

/// [`run_frame`] as if the frame arrived on `ingress_ifindex` (a real device, or 0 for `lo`).
pub fn run_frame_on(prog: &Xdp, frame: &[u8], ingress_ifindex: u32) -> Result<RunOutput> {
    let mut data_in = frame.to_vec();
    data_in.resize(frame.len() + filler_len_for(frame.len()), 0);
    let ctx_in = xdp_md(0, frame.len() as u32, ingress_ifindex);
    let mut ctx_out = [0u8; 24];
    let mut data_out = vec![0u8; data_in.len() + OUTPUT_HEADROOM];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(&data_in),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let out_len = result.data_size_out as usize;
    ensure!(
        out_len <= data_out.len(),
        "kernel reports {out_len} output bytes, more than the {}-byte buffer",
        data_out.len()
    );
    let data = u32::from_ne_bytes(ctx_out[0..4].try_into().expect("4 bytes")) as usize;
    let data_end = u32::from_ne_bytes(ctx_out[4..8].try_into().expect("4 bytes")) as usize;
    if data > data_end || data_end > out_len {
        bail!("kernel returned an inconsistent xdp_md: data {data}, data_end {data_end}, {out_len} bytes out");
    }
    // Linear data only; with a filler fragment the output has it behind data_end.
    Ok(RunOutput {
        action: XdpAction::from_u32(result.return_value),
        output: data_out[data..data_end].to_vec(),
    })
}

/// Runs `f` on a thread of its own inside a new network namespace holding the veth pairs
/// `pairs` (both ends), and gives it each interface's ifindex by name. The namespace goes
/// away with the thread. For fixtures whose frames arrive on several VM ports: a test run
/// needs a real device at `ingress_ifindex`, and the root namespace's are off limits.
pub fn in_private_netns<T: Send>(
    pairs: &[(&str, &str)],
    f: impl FnOnce(&std::collections::BTreeMap<String, u32>) -> T + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Only this thread moves; children it spawns (`ip`) inherit its namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
                }
                let mut ifindex = std::collections::BTreeMap::new();
                for (a, b) in pairs {
                    let out = std::process::Command::new("ip")
                        .args(["link", "add", a, "type", "veth", "peer", "name", b])
                        .output()
                        .context("running ip")?;
                    ensure!(
                        out.status.success(),
                        "ip link add {a} type veth peer name {b}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    for name in [a, b] {
                        let c = std::ffi::CString::new(*name)?;
                        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
                        ensure!(i != 0, "no ifindex for {name}");
                        ifindex.insert(name.to_string(), i);
                    }
                }
                Ok(f(&ifindex))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Well-formed frames built with `etherparse`, for fixtures and benchmarks.
pub mod packets {
    use etherparse::{
        ArpHardwareId, ArpOperation, ArpPacket, EtherType, IpNumber, PacketBuilder,
        PacketBuilderStep,
    };

    pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
    pub const SRC_V4: [u8; 4] = [10, 0, 0, 1];
    pub const DST_V4: [u8; 4] = [10, 0, 0, 2];
    pub const SRC_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub const DST_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    pub const TTL: u8 = 64;

    /// Header lengths, for tests that mutate built frames at known offsets.
    pub const ETH_LEN: usize = 14;
    pub const VLAN_LEN: usize = 4;
    pub const IPV4_LEN: usize = 20;
    pub const IPV6_LEN: usize = 40;
    pub const UDP_LEN: usize = 8;
    pub const TCP_LEN: usize = 20;
    pub const VXLAN_LEN: usize = 8;

    fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
    }

    pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv4(src, dst, TTL).udp(sport, dport);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    pub fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv4(src, dst, TTL).tcp(sport, dport, 1, 65535).syn();
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    pub fn ipv4_icmp_echo(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv4(src, dst, TTL).icmpv4_echo_request(1, 1);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    /// IPv4 whose payload is `payload` as is, under protocol number `proto` (no L4 header
    /// is built: for truncated and raw L4 cases).
    pub fn ipv4_raw(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv4(src, dst, TTL);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, IpNumber(proto), payload)
            .expect("write to a Vec");
        out
    }

    pub fn ipv6_udp(
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = eth().ipv6(src, dst, TTL).udp(sport, dport);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    pub fn ipv6_tcp(
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = eth().ipv6(src, dst, TTL).tcp(sport, dport, 1, 65535).syn();
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    pub fn ipv6_icmp_echo(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv6(src, dst, TTL).icmpv6_echo_request(1, 1);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("write to a Vec");
        out
    }

    /// IPv6 carrying `payload` as is under next header `proto`.
    pub fn ipv6_raw(src: [u8; 16], dst: [u8; 16], proto: u8, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv6(src, dst, TTL);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, IpNumber(proto), payload)
            .expect("write to a Vec");
        out
    }

    /// Who-has `target` from `sender`, broadcast.
    pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &SRC_MAC,
            &sender,
            &[0; 6],
            &target,
        )
        .expect("valid ARP lengths");
        let b = PacketBuilder::ethernet2(SRC_MAC, [0xff; 6]).arp(arp);
        let mut out = Vec::with_capacity(b.size());
        b.write(&mut out).expect("write to a Vec");
        out
    }

    /// Inserts an 802.1Q tag (`tpid`, `vid`) right after the MAC addresses of `frame`.
    pub fn push_vlan(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
        assert!(
            frame.len() >= 12,
            "a frame needs its MAC addresses to take a tag"
        );
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        out.extend_from_slice(&frame[12..]);
        out
    }

    /// The 8-byte VXLAN header with the I flag set.
    pub fn vxlan_header(vni: u32) -> [u8; VXLAN_LEN] {
        assert!(vni < 1 << 24, "VNI {vni} does not fit in 24 bits");
        let v = vni.to_be_bytes();
        [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
    }

    /// `inner` (an Ethernet frame) in VXLAN, in outer Ethernet/IPv4/UDP to port 4789.
    pub fn vxlan_encap(outer_src: [u8; 4], outer_dst: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
        vxlan_raw(outer_src, outer_dst, &vxlan_header(vni), inner)
    }

    /// Like [`vxlan_encap`] with the VXLAN header bytes given as is (possibly malformed/short).
    pub fn vxlan_raw(
        outer_src: [u8; 4],
        outer_dst: [u8; 4],
        header: &[u8],
        inner: &[u8],
    ) -> Vec<u8> {
        let mut payload = header.to_vec();
        payload.extend_from_slice(inner);
        ipv4_udp(
            outer_src,
            outer_dst,
            49152,
            sluice_common::proto::VXLAN_PORT,
            &payload,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_brings_short_frames_to_the_test_run_minimum() {
        assert_eq!(filler_len_for(60), 0);
        assert_eq!(filler_len_for(14), 0);
        assert_eq!(filler_len_for(13), 1);
        assert_eq!(filler_len_for(10), 4);
        assert_eq!(filler_len_for(0), 14);
    }

    #[test]
    fn xdp_md_puts_data_and_end_first() {
        let md = xdp_md(4, 14, 7);
        assert_eq!(u32::from_ne_bytes(md[0..4].try_into().unwrap()), 4);
        assert_eq!(u32::from_ne_bytes(md[4..8].try_into().unwrap()), 14);
        assert!(md[8..12].iter().all(|b| *b == 0));
        assert_eq!(u32::from_ne_bytes(md[12..16].try_into().unwrap()), 7);
        assert!(md[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn actions_round_trip_and_print_kernel_names() {
        assert_eq!(XdpAction::from_u32(1), XdpAction::Drop);
        assert_eq!(XdpAction::from_u32(2).to_string(), "XDP_PASS");
        assert_eq!(XdpAction::from_u32(9), XdpAction::Unknown(9));
    }

    #[test]
    fn hex_diff_marks_the_differing_row_and_bytes() {
        let expected: Vec<u8> = (0..20).collect();
        let mut actual = expected.clone();
        actual[17] = 0xee;
        actual.pop();
        let diff = hex_diff(&expected, &actual);
        assert!(diff.contains("first difference at offset 0x0011"), "{diff}");
        assert!(diff.contains("expected 20 bytes, got 19"), "{diff}");
        let lines: Vec<&str> = diff.lines().collect();
        assert!(lines[2].starts_with("  000000"), "first row equal: {diff}");
        assert!(
            lines[3].starts_with("! 000010"),
            "second row differs: {diff}"
        );
        assert!(lines[3].contains("ee") && lines[3].contains("--"), "{diff}");
        assert_eq!(lines[4].matches("^^").count(), 2, "{diff}");
    }

    #[test]
    fn counter_diff_names_reasons_and_flags_mismatches() {
        let mut expected = vec![0; Reason::COUNT as usize];
        let mut actual = expected.clone();
        expected[Reason::PassIpv4.index() as usize] = 1;
        actual[Reason::DropUdpBadLen.index() as usize] = 1;
        let diff = counter_diff(&expected, &actual);
        assert!(diff.contains("pass_ipv4"), "{diff}");
        assert!(diff.contains("drop_udp_bad_len"), "{diff}");
        assert_eq!(diff.matches("mismatch").count(), 2, "{diff}");
        assert!(
            !diff.contains("pass_ipv6"),
            "unmoved reasons are left out: {diff}"
        );
    }

    #[test]
    fn failure_display_lists_every_problem() {
        let failure = FixtureFailure {
            description: "IPv4 UDP".into(),
            program: "xdp_vm",
            problems: vec![
                Problem::Action {
                    expected: XdpAction::Pass,
                    actual: XdpAction::Drop,
                },
                Problem::Bytes {
                    reason: Reason::PassIpv4,
                    expected: 60,
                    actual: 0,
                },
            ],
        };
        let text = failure.to_string();
        assert!(text.contains("[xdp_vm] IPv4 UDP"), "{text}");
        assert!(text.contains("expected XDP_PASS, got XDP_DROP"), "{text}");
        assert!(text.contains("pass_ipv4: expected 60, got 0"), "{text}");
    }

    #[test]
    fn exercised_reasons_ignore_zero_expectations() {
        let f = Fixture::new("x", "xdp_vm", vec![0; 60])
            .passes(Reason::PassIpv4)
            .expect_count(Reason::PassIpv6, 0);
        assert_eq!(
            f.exercised_reasons().collect::<Vec<_>>(),
            [Reason::PassIpv4]
        );
    }

    #[test]
    fn built_frames_have_the_expected_layout() {
        let udp = packets::ipv4_udp(packets::SRC_V4, packets::DST_V4, 1, 2, &[0; 4]);
        assert_eq!(udp.len(), 14 + 20 + 8 + 4);
        assert_eq!(&udp[12..14], &[0x08, 0x00]);
        let tagged = packets::push_vlan(&udp, 0x8100, 7);
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
        let vx = packets::vxlan_encap(packets::SRC_V4, packets::DST_V4, 0x123456, &udp);
        assert_eq!(vx.len(), udp.len() + sluice_common::proto::VXLAN_OVERHEAD);
        assert_eq!(&vx[42..50], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(
            packets::arp_request(packets::SRC_V4, packets::DST_V4).len(),
            42
        );
    }
}
