//! Address and port rewriting with incremental checksums (RFC 1624: HC' = ~(~HC + ~m +
//! m')), shared by NAT (`nat.rs`) and the load balancer (`lb.rs`).

use aya_ebpf::programs::XdpContext;
use sluice_common::{
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    vpc::Ipv4,
};

use crate::{conntrack as ct, vpc};

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
    let Some(ip) = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return false;
    };
    let d_addr = rewrite_ip(unsafe { &mut *ip }, if src { 12 } else { 16 }, addr, ttl);
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
