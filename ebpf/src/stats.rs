//! Verdict accounting: one per-CPU counter pair per [`Reason`], so the hot path never
//! contends on a shared cache line.

use aya_ebpf::{bindings::xdp_action, macros::map, maps::PerCpuArray, programs::XdpContext};
use sluice_common::stats::{Counter, Reason, STATS_SLOTS};

/// The daemon pins it, so a restarted daemon (and a reloaded program) keeps counting in place.
#[map(name = "SLUICE_STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Counts the packet under `reason` and turns the reason into the XDP action.
#[inline(always)]
pub fn verdict(ctx: &XdpContext, reason: Reason) -> u32 {
    count(reason, frame_len(ctx));
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Counts a packet whose path decided its own action (forwarded, answered, dropped).
/// `len` is the frame's length as received, before any encapsulation or decapsulation.
#[inline(always)]
pub fn finish(len: usize, out: crate::vpc::Outcome) -> u32 {
    count(out.reason, len);
    out.action
}

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn count(reason: Reason, len: usize) {
    if let Some(c) = STATS.get_ptr_mut(reason.index()) {
        // Per-CPU slot: no other writer, plain adds are safe.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}
