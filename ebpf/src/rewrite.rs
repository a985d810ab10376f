//! Address and port rewriting with incremental checksums (RFC 1624: HC' = ~(~HC + ~m +
//! m')), shared by NAT (`nat.rs`) and the load balancer (`lb.rs`).

use aya_ebpf::programs::XdpContext;
use sluice_common::{
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::Reason,
    vpc::Ipv4,
};

use crate::{
    conntrack::{self as ct, Flow, TRACK_NONE},
    parse::Packet,
    vpc,
};

pub const ETH_LEN: usize = 14;
pub const IP_LEN: usize = 20;

#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// `~m + m'` for one 16-bit word.
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

#[inline(always)]
pub fn diff32(old: Ipv4, new: Ipv4) -> u32 {
    diff16(
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    ) + diff16(
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

#[inline(always)]
pub fn csum_apply(check: u16, diff: u32) -> u16 {
    !fold((!check) as u32 + fold(diff) as u32)
}

#[inline(always)]
pub fn get16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

#[inline(always)]
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Decrements the TTL of the IPv4 header `h`; the checksum difference it makes.
#[inline(always)]
pub fn ttl_dec(h: &mut [u8; IP_LEN]) -> u32 {
    let old = get16(h, 8);
    h[8] -= 1;
    diff16(old, get16(h, 8))
}

/// Writes `addr` at offset `a` (source 12, destination 16) of the IPv4 header `h`, and
/// decrements its TTL if `ttl` (NAT is a hop; the balancer's rewrite is not: routing
/// counts its hop), updating its checksum; the address's checksum difference (for the
/// L4 pseudo-header).
#[inline(always)]
pub fn rewrite_ip(h: &mut [u8; IP_LEN], a: usize, addr: Ipv4, ttl: bool) -> u32 {
    let old: Ipv4 = [h[a], h[a + 1], h[a + 2], h[a + 3]];
    let d_addr = diff32(old, addr);
    let d_ttl = if ttl { ttl_dec(h) } else { 0 };
    let check = csum_apply(get16(h, 10), d_addr + d_ttl);
    put16(h, 10, check);
    h[a..a + 4].copy_from_slice(&addr);
    d_addr
}

/// Rewrites the source (`src`) or destination address of the frame's IPv4 packet (right
/// after an untagged Ethernet header) and its TCP/UDP port or ICMP echo identifier (L4
/// header at `l4_off`, 0: none) to `addr`/`port`, decrementing the TTL if `ttl`, with
/// every checksum updated. False if a header cannot be read (never: the parser vouched).
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    l4_off: usize,
    proto: u8,
    src: bool,
    addr: Ipv4,
    port: [u8; 2],
    ttl: bool,
) -> bool {
    let Some(d_addr) = rewrite_outer(ctx, src, addr, ttl) else {
        return false;
    };
    if l4_off == 0 {
        return true;
    }
    let new_port = u16::from_be_bytes(port);
    let p = if src { 0 } else { 2 };
    match proto {
        IPPROTO_TCP => {
            let Some(l4) = vpc::ptr_mut::<[u8; 20]>(ctx, l4_off) else {
                return false;
            };
            let t = unsafe { &mut *l4 };
            let d = d_addr + diff16(get16(t, p), new_port);
            let check = csum_apply(get16(t, 16), d);
            put16(t, 16, check);
            put16(t, p, new_port);
        }
        IPPROTO_UDP => {
            let Some(l4) = vpc::ptr_mut::<[u8; 8]>(ctx, l4_off) else {
                return false;
            };
            let u = unsafe { &mut *l4 };
            let d = d_addr + diff16(get16(u, p), new_port);
            let old_check = get16(u, 6);
            if old_check != 0 {
                let check = csum_apply(old_check, d);
                put16(u, 6, if check == 0 { 0xffff } else { check });
            }
            put16(u, p, new_port);
        }
        IPPROTO_ICMP => {
            let Some(l4) = vpc::ptr_mut::<[u8; 8]>(ctx, l4_off) else {
                return false;
            };
            let c = unsafe { &mut *l4 };
            if c[0] == ct::ICMP_ECHO_REQUEST || c[0] == ct::ICMP_ECHO_REPLY {
                // No pseudo-header: only the identifier counts.
                let check = csum_apply(get16(c, 2), diff16(get16(c, 4), new_port));
                put16(c, 2, check);
                put16(c, 4, new_port);
            }
        }
        _ => {}
    }
    true
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;
/// An ICMP error's header, the quoted IPv4 header (no options) and 8 bytes of its L4.
pub const ICMP_ERROR_LEN: usize = 8 + IP_LEN + 8;

/// For an ICMP error, replaces the scratch flow with the tuple of the packet it quotes,
/// reversed: the flow of the reply the error stands for (ingress: remote → EIP; `egress`:
/// the VM → remote); true if it was one. The quoted packet must have come from (ingress)
/// or gone to (egress) the error's own end on this side.
#[inline(always)]
pub fn icmp_error_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    f: &mut Flow,
    egress: bool,
) -> Result<bool, Reason> {
    if pkt.ip_proto != IPPROTO_ICMP || pkt.l4_off == 0 {
        return Ok(false);
    }
    let Some(c) = vpc::ptr_mut::<[u8; 8]>(ctx, pkt.l4_off) else {
        return Err(Reason::DropIcmpTruncated);
    };
    let t = unsafe { (*c)[0] };
    if t != ICMP_DEST_UNREACH && t != ICMP_TIME_EXCEEDED && t != ICMP_PARAM_PROBLEM {
        return Ok(false);
    }
    let Some(m) = vpc::ptr_mut::<[u8; ICMP_ERROR_LEN]>(ctx, pkt.l4_off) else {
        return Err(Reason::DropIcmpTruncated);
    };
    let m = unsafe { &*m };
    let inner = &m[8..8 + IP_LEN];
    let l4 = &m[8 + IP_LEN..];
    let inner_src: Ipv4 = [inner[12], inner[13], inner[14], inner[15]];
    let inner_dst: Ipv4 = [inner[16], inner[17], inner[18], inner[19]];
    if egress {
        if inner[0] != 0x45 || inner_dst != f.src {
            return Err(Reason::DropNatNoState);
        }
        f.dst = inner_src;
    } else if inner[0] != 0x45 || inner_src != f.dst {
        return Err(Reason::DropNatNoRule);
    }
    f.src = inner_dst;
    f.proto = inner[9];
    f.track = TRACK_NONE;
    f.tcp_flags = 0;
    (f.sport, f.dport) = match f.proto {
        IPPROTO_TCP | IPPROTO_UDP => ([l4[2], l4[3]], [l4[0], l4[1]]),
        IPPROTO_ICMP => ([l4[4], l4[5]], [l4[4], l4[5]]),
        _ => ([0; 2], [0; 2]),
    };
    Ok(true)
}

/// The frame's IPv4 source (`src`) or destination address set to `addr` (and the TTL
/// decremented, if `ttl`), its checksum updated: the L4 checksum's share of the change.
#[inline(always)]
fn rewrite_outer(ctx: &XdpContext, src: bool, addr: Ipv4, ttl: bool) -> Option<u32> {
    let ip = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN)?;
    Some(rewrite_ip(
        unsafe { &mut *ip },
        if src { 12 } else { 16 },
        addr,
        ttl,
    ))
}

/// Rewrites an ICMP error about a translated flow's packet: the outer destination (or
/// source, `egress`) and the quoted packet's source (destination) address and port (or
/// echo identifier) to `addr`/`port`, with the outer, quoted IP, quoted UDP/ICMP and
/// ICMP checksums (and the TTL, if `ttl`).
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &XdpContext,
    l4_off: usize,
    egress: bool,
    addr: Ipv4,
    port: [u8; 2],
    ttl: bool,
) -> bool {
    if rewrite_outer(ctx, egress, addr, ttl).is_none() {
        return false;
    }
    let Some(m) = vpc::ptr_mut::<[u8; ICMP_ERROR_LEN]>(ctx, l4_off) else {
        return false;
    };
    let m = unsafe { &mut *m };
    const IN: usize = 8;
    const L4: usize = 8 + IP_LEN;
    let new_port = u16::from_be_bytes(port);
    // The quoted packet went the other way: its destination is this side's end.
    let (qa, qp) = if egress {
        (IN + 16, L4 + 2)
    } else {
        (IN + 12, L4)
    };
    let q_old: Ipv4 = [m[qa], m[qa + 1], m[qa + 2], m[qa + 3]];
    let q_addr = diff32(q_old, addr);
    // The quoted IP header: the address and its checksum.
    let old_ic = get16(m, IN + 10);
    let new_ic = csum_apply(old_ic, q_addr);
    let mut d_icmp = q_addr + diff16(old_ic, new_ic);
    put16(m, IN + 10, new_ic);
    m[qa..qa + 4].copy_from_slice(&addr);
    match m[IN + 9] {
        IPPROTO_TCP | IPPROTO_UDP => {
            let d_port = diff16(get16(m, qp), new_port);
            d_icmp += d_port;
            if m[IN + 9] == IPPROTO_UDP && get16(m, L4 + 6) != 0 {
                let old_uc = get16(m, L4 + 6);
                let uc = csum_apply(old_uc, q_addr + d_port);
                let uc = if uc == 0 { 0xffff } else { uc };
                d_icmp += diff16(old_uc, uc);
                put16(m, L4 + 6, uc);
            }
            put16(m, qp, new_port);
        }
        IPPROTO_ICMP => {
            let d_id = diff16(get16(m, L4 + 4), new_port);
            let old_qc = get16(m, L4 + 2);
            let qc = csum_apply(old_qc, d_id);
            d_icmp += d_id + diff16(old_qc, qc);
            put16(m, L4 + 2, qc);
            put16(m, L4 + 4, new_port);
        }
        _ => {}
    }
    let check = csum_apply(get16(m, 2), d_icmp);
    put16(m, 2, check);
    true
}
