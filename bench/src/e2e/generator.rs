//! The packet generator: `BPF_PROG_TEST_RUN` with live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! the technique xdp-trafficgen uses), run by a thread inside the sending VM's namespace.
//!
//! The program writes the frame and returns XDP_TX. In live-frames mode the kernel turns XDP_TX into a
//! redirect out of the device named by `xdp_md.ingress_ifindex`: the VM's own interface. A
//! veth sends such a frame into its peer's ring, so every repetition is one frame the VM
//! transmits, with no socket or skb on the sender's side. Frames come from a page pool the
//! kernel fills with our 60 bytes once and recycles as they come back; the program writes
//! the 60 bytes again every time (see [`tx_program`]), so every frame is the same. The
//! frames go out in batches of [`BATCH`], and the receive side (the veth
//! peer's NAPI, the whole path after it) runs in softirq on the generator's CPU when each
//! batch ends: a pinned generator pins the path too.
//!
//! Loaded and run through the raw `bpf(2)` syscall, so it needs no object file.

use std::{
    ffi::CString,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use etherparse::PacketBuilder;
use sluice_dataplane::lab::xdp::{bpf, load_xdp_program, put_u32, put_u64};

use super::netns;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_TX: i32 = 3;

/// Frames per batch: the kernel's default (NAPI_POLL_WEIGHT), so each batch is one NAPI
/// budget on the receiving veth.
pub const BATCH: u32 = 64;
/// Repetitions of the first call; later calls are sized to take about [`CALL_TIME`] at the
/// rate seen so far, so a run ends close to its deadline whatever the path's speed.
const FIRST_CALL: u32 = 10_000;
const CALL_TIME: f64 = 0.05;

/// Frames without FCS; with the 4-byte FCS a wire would add, 64-byte frames.
pub const FRAME_LEN: usize = 60;
const HEADERS: usize = 14 + 20 + 8;
/// Starts every generated datagram's payload: the receiver counts only these.
pub const MAGIC: &[u8; 16] = b"sluice-bench-e2e";
pub const SRC_PORT: u16 = 40_000;

/// One 64-byte (60 + FCS) IPv4/UDP frame from the VM, checksums complete (the receiving
/// stack verifies them: frames built from XDP carry no checksum-offload state).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
) -> Vec<u8> {
    let mut payload = [0u8; FRAME_LEN - HEADERS];
    payload[..MAGIC.len()].copy_from_slice(MAGIC);
    let mut out = Vec::with_capacity(FRAME_LEN);
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(SRC_PORT, dst_port)
        .write(&mut out, &payload)
        .expect("etherparse serialises a valid frame");
    out
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// Writes `frame` over the packet, then `XDP_TX`. The rewrite is needed because live
/// frames are recycled through the test run's page pool with whatever the path wrote into
/// them (Sluice's `xdp_vm` rewrites the MACs in place; the next round would be dropped as
/// spoofed): only the data pointers are reset, not the bytes.
///
/// ```text
///   r2 = ctx->data; r3 = ctx->data_end; r4 = r2 + len
///   if r4 > r3 goto tx
///   *(u32 *)(r2 + 4k) = frame[4k..4k+4]   for every k
///   tx: r0 = XDP_TX; exit
/// ```
fn tx_program(frame: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        frame.len().is_multiple_of(4) && frame.len() <= 4 * 64,
        "the generator writes frames of whole 32-bit words, at most 256 bytes (got {})",
        frame.len()
    );
    let words = frame.len() / 4;
    let mut p = Vec::new();
    p.extend(insn(0x61, 2, 1, 0, 0)); // ldxw r2, [r1 + 0]: data
    p.extend(insn(0x61, 3, 1, 4, 0)); // ldxw r3, [r1 + 4]: data_end
    p.extend(insn(0xbf, 4, 2, 0, 0)); // mov64 r4, r2
    p.extend(insn(0x07, 4, 0, 0, frame.len() as i32)); // add64 r4, len
    p.extend(insn(0x2d, 4, 3, words as i16, 0)); // jgt r4, r3, +words
    for (k, w) in frame.chunks_exact(4).enumerate() {
        let imm = i32::from_le_bytes(w.try_into().expect("4 bytes"));
        p.extend(insn(0x62, 2, 0, (4 * k) as i16, imm)); // stw [r2 + 4k], imm
    }
    p.extend(insn(0xb7, 0, 0, 0, XDP_TX)); // mov64 r0, XDP_TX
    p.extend(insn(0x95, 0, 0, 0, 0)); // exit
    Ok(p)
}

fn load_tx_program(frame: &[u8]) -> Result<OwnedFd> {
    load_xdp_program(&tx_program(frame)?, "bench_xdp_tx")
        .context("loading the generator's XDP_TX program")
}

/// `struct xdp_md` for a frame of `len` bytes arriving on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    md
}

/// One live-frames test run: `repeat` frames out of `ifindex` (in the calling thread's
/// namespace).
fn live_run(prog: &OwnedFd, frame: &[u8], md: &[u8; 24], repeat: u32) -> Result<()> {
    // union bpf_attr, the `test` member.
    let mut attr = [0u8; 80];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u32(&mut attr, 32, repeat);
    put_u32(&mut attr, 40, md.len() as u32);
    put_u64(&mut attr, 48, md.as_ptr() as u64);
    put_u32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
    put_u32(&mut attr, 72, BATCH);
    bpf(
        BPF_PROG_TEST_RUN,
        &mut attr,
        "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES",
    )?;
    Ok(())
}

/// What one generator run sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
}

/// Sends `frame` out of `ifname` in namespace `netns` as fast as the path takes it, for
/// `secs`, from a thread pinned to `cpu`.
pub fn send(netns: &str, ifname: &str, cpu: usize, frame: Vec<u8>, secs: f64) -> Result<Sent> {
    ensure!(
        frame.len() >= 14,
        "a generated frame needs an Ethernet header"
    );
    let (netns, ifname) = (netns.to_string(), ifname.to_string());
    std::thread::Builder::new()
        .name("e2e-generator".into())
        .spawn(move || -> Result<Sent> {
            netns::enter(&netns)?;
            crate::affinity::pin_current_thread(cpu)?;
            let name = CString::new(ifname.as_str())?;
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname} in namespace {netns}");
            }
            let prog = load_tx_program(&frame)?;
            let md = xdp_md(frame.len(), ifindex);
            let deadline = Duration::from_secs_f64(secs);
            let start = Instant::now();
            let mut frames = 0u64;
            let mut chunk = FIRST_CALL;
            loop {
                live_run(&prog, &frame, &md, chunk)
                    .with_context(|| format!("sending out of {ifname} in {netns}"))?;
                frames += u64::from(chunk);
                let spent = start.elapsed();
                if spent >= deadline {
                    break;
                }
                let rate = frames as f64 / spent.as_secs_f64();
                let left = (deadline - spent).as_secs_f64().min(CALL_TIME);
                chunk = (rate * left).clamp(BATCH as f64, 10_000_000.0) as u32;
            }
            Ok(Sent {
                frames,
                elapsed: start.elapsed(),
            })
        })
        .context("starting the generator thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn the_program_bounds_checks_writes_every_word_and_returns_tx() {
        let frame: Vec<u8> = (0..60).collect();
        let p = tx_program(&frame).unwrap();
        let insns: Vec<&[u8]> = p.chunks_exact(8).collect();
        assert_eq!(insns.len(), 5 + 15 + 2);
        // The bounds check jumps over exactly the stores.
        assert_eq!(insns[4][0], 0x2d);
        assert_eq!(i16::from_le_bytes([insns[4][2], insns[4][3]]), 15);
        for k in 0..15 {
            let st = insns[5 + k];
            assert_eq!((st[0], st[1]), (0x62, 2));
            assert_eq!(i16::from_le_bytes([st[2], st[3]]), 4 * k as i16);
            assert_eq!(&st[4..8], &frame[4 * k..4 * k + 4]);
        }
        assert_eq!(insns[20][0], 0xb7);
        assert_eq!(
            i32::from_le_bytes(insns[20][4..8].try_into().unwrap()),
            XDP_TX
        );
        assert_eq!(insns[21][0], 0x95);
        assert!(tx_program(&[0; 62]).is_err());
    }

    #[test]
    fn frames_are_64_bytes_on_the_wire_and_carry_the_magic() {
        let f = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(10, 0, 1, 10),
            Ipv4Addr::new(10, 0, 1, 11),
            9000,
        );
        assert_eq!(f.len() + 4, 64);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination(), [10, 0, 1, 11]);
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.destination_port(), 9000);
        assert!(udp.payload().starts_with(MAGIC));
        // A correct checksum: the receiving stack verifies it in software.
        let sum = udp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_eq!(sum, udp.checksum());
    }

    #[test]
    fn xdp_md_names_the_ingress_device_and_the_frame_end() {
        let md = xdp_md(60, 7);
        assert_eq!(u32::from_ne_bytes(md[4..8].try_into().unwrap()), 60);
        assert_eq!(u32::from_ne_bytes(md[12..16].try_into().unwrap()), 7);
        assert_eq!(&md[0..4], &[0; 4]);
    }
}
