//! Safe header parsing. Every read is bounds-checked against `data_end` (the verifier
//! insists, and a malformed frame must never be read past its end), and every way a
//! frame can be malformed has its own drop [`Reason`] so operators can tell them apart.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use sluice_common::{proto::*, stats::Reason};

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ARP_LEN: usize = 28;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_LEN: usize = 8;
const ICMPV6_LEN: usize = 4;
const VXLAN_LEN: usize = 8;
/// 802.1Q and 802.1ad (QinQ): at most two tags.
const MAX_VLAN_TAGS: usize = 2;
/// VXLAN flags byte: the I bit says the VNI is valid (RFC 7348).
const VXLAN_FLAG_VNI: u8 = 0x08;
/// IPv4 flags/fragment-offset field: more-fragments bit and the offset.
const IPV4_MF: u16 = 0x2000;
const IPV4_FRAG_OFF: u16 = 0x1fff;

/// Where the headers of one (outer or inner) packet are, and the fields later stages key on.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the Ethernet header (non-zero for an inner frame).
    pub l2_off: usize,
    pub ethertype: u16,
    /// Outermost VLAN ID, 0 when untagged.
    pub vlan_id: u16,
    pub l3_off: usize,
    /// IP protocol / IPv6 next header; 0 for non-IP.
    pub ip_proto: u8,
    /// Offset of the L4 header; 0 when there is none (non-IP, non-first fragment).
    pub l4_off: usize,
    /// Where the L4 datagram ends (UDP: by its length; else the IP datagram's end; a first
    /// fragment: the fragment's end); 0 when there is no L4 header.
    pub l4_end: usize,
    /// An IPv4 fragment (first or not): the datagram is incomplete here.
    pub fragment: bool,
    /// Host byte order; 0 when not TCP/UDP.
    pub src_port: u16,
    pub dst_port: u16,
}

impl Packet {
    pub fn is_vxlan(&self) -> bool {
        self.ethertype == ETH_P_IP
            && self.ip_proto == IPPROTO_UDP
            && self.l4_off != 0
            && !self.fragment
            && self.dst_port == VXLAN_PORT
    }
}

/// The parts of a VXLAN packet later stages need.
#[derive(Clone, Copy)]
pub struct Vxlan {
    pub vni: u32,
    pub inner: Packet,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn has(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

/// Hides `v` from LLVM's range reasoning. Given a bound it knows lies within the frame
/// (one derived from an earlier frame check), LLVM merges a frame check with a following
/// check against that bound when both return the same reason, and keeps only the latter;
/// the verifier, which learns packet ranges only from comparisons with `data_end`, then
/// rejects the read. Costs a stack store and load.
#[inline(always)]
fn opaque(v: usize) -> usize {
    unsafe { core::ptr::read_volatile(&v) }
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// No bound but the frame's own end (the outer frame).
const NO_LIMIT: usize = usize::MAX;

/// Parses the outer frame starting at offset 0.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    parse_at(ctx, 0, NO_LIMIT)
}

/// Parses the VXLAN header after `outer`'s UDP header and the inner frame behind it.
/// Both must lie inside the outer UDP datagram, not merely inside the frame.
#[inline(always)]
pub fn parse_vxlan(ctx: &XdpContext, outer: &Packet) -> Result<Vxlan, Reason> {
    let limit = opaque(outer.l4_end);
    let off = outer.l4_off + UDP_LEN;
    let hdr = ptr_at::<[u8; VXLAN_LEN]>(ctx, off).ok_or(Reason::DropVxlanTruncated)?;
    let hdr = unsafe { *hdr };
    if off + VXLAN_LEN > limit {
        return Err(Reason::DropVxlanTruncated);
    }
    if hdr[0] & VXLAN_FLAG_VNI == 0 {
        return Err(Reason::DropVxlanBadFlags);
    }
    let vni = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    let inner = parse_at(ctx, off + VXLAN_LEN, limit).map_err(|r| match r {
        Reason::DropEthTruncated => Reason::DropInnerEthTruncated,
        other => other,
    })?;
    Ok(Vxlan { vni, inner })
}

/// Parses a frame at `l2_off` that must end by `limit` as well as by the frame's end
/// (an inner frame ends with the outer UDP datagram). As in [`parse_l4`], each header is
/// checked against the frame first and against `limit` (constant or [`opaque`]) second.
#[inline(always)]
fn parse_at(ctx: &XdpContext, l2_off: usize, limit: usize) -> Result<Packet, Reason> {
    let eth = ptr_at::<[u8; ETH_LEN]>(ctx, l2_off).ok_or(Reason::DropEthTruncated)?;
    let mut ethertype = u16::from_be_bytes(unsafe { [(*eth)[12], (*eth)[13]] });
    if l2_off + ETH_LEN > limit {
        return Err(Reason::DropEthTruncated);
    }
    let mut l3_off = l2_off + ETH_LEN;
    let mut vlan_id = 0u16;
    for i in 0..=MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if i == MAX_VLAN_TAGS {
            return Err(Reason::DropVlanTooDeep);
        }
        let tci = be16(ctx, l3_off).ok_or(Reason::DropVlanTruncated)?;
        ethertype = be16(ctx, l3_off + 2).ok_or(Reason::DropVlanTruncated)?;
        if l3_off + VLAN_LEN > limit {
            return Err(Reason::DropVlanTruncated);
        }
        if i == 0 {
            vlan_id = tci & 0x0fff;
        }
        l3_off += VLAN_LEN;
    }

    let mut pkt = Packet {
        l2_off,
        ethertype,
        vlan_id,
        l3_off,
        ip_proto: 0,
        l4_off: 0,
        l4_end: 0,
        fragment: false,
        src_port: 0,
        dst_port: 0,
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, &mut pkt, limit)?,
        ETH_P_IPV6 => parse_ipv6(ctx, &mut pkt, limit)?,
        ETH_P_ARP => {
            if !has(ctx, l3_off, ARP_LEN) || l3_off + ARP_LEN > limit {
                return Err(Reason::DropArpTruncated);
            }
        }
        _ => {}
    }
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, pkt: &mut Packet, limit: usize) -> Result<(), Reason> {
    let off = pkt.l3_off;
    let hdr = ptr_at::<[u8; IPV4_MIN_LEN]>(ctx, off).ok_or(Reason::DropIpv4Truncated)?;
    let hdr = unsafe { *hdr };
    if off + IPV4_MIN_LEN > limit {
        return Err(Reason::DropIpv4Truncated);
    }
    if hdr[0] >> 4 != 4 {
        return Err(Reason::DropIpv4BadVersion);
    }
    let hdr_len = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr_len < IPV4_MIN_LEN {
        return Err(Reason::DropIpv4BadIhl);
    }
    // Options: the header must still fit in the frame.
    if !has(ctx, off, hdr_len) || off + hdr_len > limit {
        return Err(Reason::DropIpv4Truncated);
    }
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if total_len < hdr_len || !has(ctx, off, total_len) || off + total_len > limit {
        return Err(Reason::DropIpv4BadTotalLen);
    }
    pkt.ip_proto = hdr[9];
    let flags_frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let more_fragments = flags_frag & IPV4_MF != 0;
    pkt.fragment = more_fragments || flags_frag & IPV4_FRAG_OFF != 0;
    if flags_frag & IPV4_FRAG_OFF != 0 {
        // Not the first fragment: no L4 header here.
        return Ok(());
    }
    parse_l4(ctx, pkt, off + hdr_len, off + total_len, more_fragments)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, pkt: &mut Packet, limit: usize) -> Result<(), Reason> {
    let off = pkt.l3_off;
    let hdr = ptr_at::<[u8; 8]>(ctx, off).ok_or(Reason::DropIpv6Truncated)?;
    let hdr = unsafe { *hdr };
    if !has(ctx, off, IPV6_LEN) || off + IPV6_LEN > limit {
        return Err(Reason::DropIpv6Truncated);
    }
    if hdr[0] >> 4 != 6 {
        return Err(Reason::DropIpv6BadVersion);
    }
    let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
    let end = off + IPV6_LEN + payload_len;
    if !has(ctx, 0, end) || end > limit {
        return Err(Reason::DropIpv6BadPayloadLen);
    }
    pkt.ip_proto = hdr[6];
    parse_l4(ctx, pkt, off + IPV6_LEN, end, false)
}

/// `l3_end` is where the IP datagram ends (the frame may carry Ethernet padding beyond it).
/// `more_fragments`: this is the first fragment of a larger datagram, so the UDP length
/// may reach past `l3_end` (the headers themselves must still be here).
///
/// Each header is first bounds-checked against the frame and read through that checked
/// pointer, and only then against `l3_end`, which is [`opaque`]: otherwise LLVM proves the
/// frame check redundant and drops it, and the verifier (which cannot follow that proof)
/// rejects the read.
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    pkt: &mut Packet,
    off: usize,
    l3_end: usize,
    more_fragments: bool,
) -> Result<(), Reason> {
    let l3_end = opaque(l3_end);
    pkt.l4_end = l3_end;
    match pkt.ip_proto {
        IPPROTO_TCP => {
            let hdr = ptr_at::<[u8; TCP_MIN_LEN]>(ctx, off).ok_or(Reason::DropTcpTruncated)?;
            let hdr = unsafe { *hdr };
            if off + TCP_MIN_LEN > l3_end {
                return Err(Reason::DropTcpTruncated);
            }
            let tcp_len = ((hdr[12] >> 4) as usize) * 4;
            if tcp_len < TCP_MIN_LEN || off + tcp_len > l3_end {
                return Err(Reason::DropTcpBadDataOffset);
            }
            set_ports(pkt, off, &hdr);
            Ok(())
        }
        IPPROTO_UDP => {
            let hdr = ptr_at::<[u8; UDP_LEN]>(ctx, off).ok_or(Reason::DropUdpTruncated)?;
            let hdr = unsafe { *hdr };
            if off + UDP_LEN > l3_end {
                return Err(Reason::DropUdpTruncated);
            }
            let udp_len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
            if udp_len < UDP_LEN || (!more_fragments && off + udp_len > l3_end) {
                return Err(Reason::DropUdpBadLen);
            }
            if !more_fragments {
                pkt.l4_end = off + udp_len;
            }
            set_ports(pkt, off, &hdr);
            Ok(())
        }
        IPPROTO_ICMP => {
            if !has(ctx, off, ICMP_LEN) || off + ICMP_LEN > l3_end {
                return Err(Reason::DropIcmpTruncated);
            }
            pkt.l4_off = off;
            Ok(())
        }
        IPPROTO_ICMPV6 => {
            if !has(ctx, off, ICMPV6_LEN) || off + ICMPV6_LEN > l3_end {
                return Err(Reason::DropIcmpv6Truncated);
            }
            pkt.l4_off = off;
            Ok(())
        }
        _ => Ok(()),
    }
}

#[inline(always)]
fn set_ports(pkt: &mut Packet, off: usize, hdr: &[u8]) {
    pkt.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
    pkt.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
    pkt.l4_off = off;
}
