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
    count(ctx, reason);
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
pub fn count(ctx: &XdpContext, reason: Reason) {
    if let Some(c) = STATS.get_ptr_mut(reason.index()) {
        // Per-CPU slot: no other writer, plain adds are safe.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}
