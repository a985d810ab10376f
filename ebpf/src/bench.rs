//! The benchmark wrappers (ABI and purpose: `common/src/bench.rs`): the real entry point,
//! then `data` moved back and, when the harness asks, the saved header bytes written
//! back and one field counted up. Never attached; their cost is part of every figure
//! measured through them.

use aya_ebpf::{
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::bench::{BenchConfig, BenchFrame, RESTORE_LEN};

use crate::{stats, vpc::ptr_mut};

#[map(name = "SLUICE_BENCH_CONFIG")]
static CONFIG: Array<BenchConfig> = Array::with_max_entries(1, 0);
#[map(name = "SLUICE_BENCH_FRAME")]
static FRAME: PerCpuArray<BenchFrame> = PerCpuArray::with_max_entries(1, 0);

/// Runs `path` on the frame and puts the frame back as the harness configured.
#[inline(always)]
pub fn restoring(ctx: &XdpContext, path: fn(&XdpContext) -> u32) -> u32 {
    // Lengths, not pointers: the verifier forbids arithmetic on a saved packet pointer.
    let before = stats::frame_len(ctx) as i32;
    let saved = CONFIG
        .get(0)
        .filter(|c| c.restore != 0)
        .and_then(|c| save(ctx, c));
    let action = path(ctx);
    let grown = stats::frame_len(ctx) as i32 - before;
    if grown != 0 {
        unsafe { bpf_xdp_adjust_head(ctx.ctx, grown) };
    }
    if let Some((slot, vary_offset)) = saved {
        restore(ctx, slot, vary_offset);
    }
    action
}

/// The per-CPU slot holding the frame as it came (saved on the first repetition of a
/// call), and the offset of the field to count up (0: none).
#[inline(always)]
fn save(ctx: &XdpContext, c: &BenchConfig) -> Option<(*mut BenchFrame, usize)> {
    let slot = FRAME.get_ptr_mut(0)?;
    let head = ptr_mut::<[u8; RESTORE_LEN]>(ctx, 0)?;
    unsafe {
        if (*slot).generation != c.generation {
            copy(head as *const u8, (*slot).bytes.as_mut_ptr());
            (*slot).generation = c.generation;
        }
    }
    let vary = c.vary_offset as usize;
    let vary = if vary != 0 && vary < RESTORE_LEN - 1 {
        vary
    } else {
        0
    };
    Some((slot, vary))
}

#[inline(always)]
fn restore(ctx: &XdpContext, slot: *mut BenchFrame, vary_offset: usize) {
    let Some(head) = ptr_mut::<[u8; RESTORE_LEN]>(ctx, 0) else {
        return;
    };
    unsafe {
        let bytes = &mut (*slot).bytes;
        if vary_offset != 0 && vary_offset < RESTORE_LEN - 1 {
            let next = u16::from_be_bytes([bytes[vary_offset], bytes[vary_offset + 1]]) + 1;
            let next = next.to_be_bytes();
            bytes[vary_offset] = next[0];
            bytes[vary_offset + 1] = next[1];
        }
        copy(bytes.as_ptr(), head as *mut u8);
    }
}

/// Copies [`RESTORE_LEN`] bytes in 8-byte words: a plain copy becomes a call to a
/// byte-by-byte `memcpy` subprogram.
#[inline(always)]
unsafe fn copy(src: *const u8, dst: *mut u8) {
    const _: () = assert!(RESTORE_LEN % 8 == 0);
    let mut i = 0;
    while i < RESTORE_LEN {
        let word = core::ptr::read_unaligned(src.add(i) as *const u64);
        core::ptr::write_unaligned(dst.add(i) as *mut u64, word);
        i += 8;
    }
}
