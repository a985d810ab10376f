//! Sluice's XDP programs. Read a packet's life top-down from the entry points below:
//! `parse` validates and locates headers, `sg` checks the operator blocklist first, `vpc`
//! routes (calling `sg` for the security groups, which keep state in `conntrack`),
//! `stats` counts the verdict; `nat` translates for the Internet (from `vpc` on the way
//! out, at the underlay on the way in); `lb` balances a VM's flows to a VIP among its
//! backends and turns their replies back into the VIP's (both from `vpc`); `rewrite`
//! holds the checksum-preserving rewrites NAT and the balancer share.
#![no_std]
#![no_main]
// Atomic adds for counters other CPUs share (`conntrack.rs`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod bench;
mod conntrack;
mod lb;
mod lpm;
mod nat;
mod parse;
mod rewrite;
mod sg;
mod stats;
mod vpc;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use sluice_common::stats::Reason;

/// Host side of a VM's interface: traffic the VM sends.
#[xdp]
pub fn xdp_vm(ctx: XdpContext) -> u32 {
    vm(&ctx)
}

#[inline(always)]
fn vm(ctx: &XdpContext) -> u32 {
    let len = stats::frame_len(ctx);
    let pkt = match parse::parse(ctx) {
        Ok(pkt) => pkt,
        Err(reason) => return stats::verdict(ctx, reason),
    };
    if let Some(reason) = sg::blocklist_ip(ctx, &pkt, len) {
        return stats::verdict(ctx, reason);
    }
    match vpc::vm_egress(ctx, &pkt) {
        Some(out) => stats::finish(len, out),
        None => stats::verdict(ctx, pass_reason(&pkt)),
    }
}

/// The host's underlay interface: VXLAN from other hosts, plus the host's own traffic.
#[xdp]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    underlay(&ctx)
}

#[inline(always)]
fn underlay(ctx: &XdpContext) -> u32 {
    let len = stats::frame_len(ctx);
    let reason = match parse::parse(ctx) {
        Ok(pkt) if pkt.is_vxlan() => match parse::parse_vxlan(ctx, &pkt) {
            Ok(vx) => match sg::blocklist_vxlan(ctx, &pkt, &vx.inner, len) {
                Some(reason) => reason,
                None => match vpc::underlay_ingress(ctx, &pkt, &vx) {
                    Some(out) => return stats::finish(len, out),
                    None => Reason::PassVxlan,
                },
            },
            Err(reason) => reason,
        },
        // Plain IPv4 to an elastic IP; anything else is the host's own traffic.
        Ok(pkt) => match nat::underlay(ctx, &pkt, len) {
            Some(out) => return stats::finish(len, out),
            None => pass_reason(&pkt),
        },
        Err(reason) => reason,
    };
    stats::verdict(ctx, reason)
}

/// Benchmark only: `xdp_vm`, then the frame put back (`bench.rs`). `BPF_PROG_TEST_RUN`
/// repeats a program on the same buffer without resetting it, so an encapsulating or
/// translating path would otherwise measure itself once and then another frame.
#[xdp]
pub fn xdp_bench_vm(ctx: XdpContext) -> u32 {
    bench::restoring(&ctx, vm)
}

/// Benchmark only: `xdp_underlay`, then the frame put back (see `xdp_bench_vm`).
#[xdp]
pub fn xdp_bench_underlay(ctx: XdpContext) -> u32 {
    bench::restoring(&ctx, underlay)
}

/// Does nothing: the benchmark floor (the cost of running any XDP program at all).
#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn pass_reason(pkt: &parse::Packet) -> Reason {
    match pkt.ethertype {
        sluice_common::proto::ETH_P_IP => Reason::PassIpv4,
        sluice_common::proto::ETH_P_IPV6 => Reason::PassIpv6,
        sluice_common::proto::ETH_P_ARP => Reason::PassArp,
        _ => Reason::PassNonIp,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
