//! The benchmark wrappers' ABI (`xdp_bench_vm`, `xdp_bench_underlay`; `ebpf/src/bench.rs`).
//!
//! BPF_PROG_TEST_RUN repeats a program on one buffer without resetting it. The wrappers
//! run the real entry point and then put the frame back, so a path that rewrites its
//! frame (encapsulation, NAT, the load balancer) can be measured by repetition; and they
//! can make every repetition a new flow, so an insert path can be too.

/// Bytes of the frame a wrapper saves and restores: Ethernet, IPv4 and the first 22 bytes
/// of TCP (the checksum included), everything a translation rewrites.
pub const RESTORE_LEN: usize = 56;

/// The harness's instructions for the next test run (one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchConfig {
    /// Nonzero: restore the first [`RESTORE_LEN`] bytes after every repetition (frames
    /// shorter than that are not touched). Zero: only move `data` back.
    pub restore: u32,
    /// Nonzero: the offset of a big-endian 16-bit field (below `RESTORE_LEN - 1`) that
    /// goes up by one after every repetition, so each repetition is another flow.
    pub vary_offset: u32,
    /// Changed by the harness before each call: the first repetition of a call with a new
    /// generation saves the frame.
    pub generation: u32,
    pub _pad: u32,
}

/// The frame a wrapper saved (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    /// The [`BenchConfig::generation`] the bytes were saved under.
    pub generation: u32,
    pub _pad: u32,
    pub bytes: [u8; RESTORE_LEN],
}

const _: () = assert!(core::mem::size_of::<BenchConfig>() == 16);
const _: () = assert!(core::mem::size_of::<BenchFrame>() == 8 + RESTORE_LEN);

pub mod maps {
    /// One-slot array of [`super::BenchConfig`].
    pub const CONFIG: &str = "SLUICE_BENCH_CONFIG";
    /// One-slot per-CPU array of [`super::BenchFrame`].
    pub const FRAME: &str = "SLUICE_BENCH_FRAME";
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchConfig {}
