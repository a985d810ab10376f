//! The VPC overlay: a VM's packet is checked against its NIC, routed by longest-prefix
//! match within its VPC (every key carries the VNI, so tenants may share addresses), and
//! delivered to a local NIC or VXLAN-encapsulated toward the host of a remote one; the
//! underlay side verifies and decapsulates. ARP for addresses in the VPC is answered here
//! with the router MAC, so nothing floods the overlay.
//!
//! Fast paths (same result as the full lookups, fewer map lookups): the port is an array
//! slot; a destination that is an endpoint of the sender's VNI marked `ENDPOINT_DIRECT`
//! (its longest-prefix match is a `Local` route, per the agent) skips the route lookup;
//! decapsulation to such an endpoint skips the VNI lookup (a local endpoint of a VNI means
//! the VNI is present). Every check happens before the first write to the packet.
//!
//! A packet to a VIP is balanced first (`lb.rs`) and then routed as one to the chosen
//! backend; its destination is rewritten after the routing checks, just before the
//! security groups judge it (and restored if they drop it). A backend's packet to a local
//! client gets the VIP back as its source after them.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    macros::map,
    maps::{Array, HashMap, LpmTrie},
    programs::XdpContext,
};
use sluice_common::{
    proto::{ETH_P_ARP, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, VXLAN_PORT},
    stats::Reason,
    vpc::*,
};

use crate::{
    lb, lpm, nat,
    parse::{Packet, Vxlan},
    sg,
};

#[map(name = "SLUICE_PORT_ARRAY")]
static PORTS: Array<Port> = Array::with_max_entries(MAX_PORTS, 0);
#[map(name = "SLUICE_ENDPOINTS")]
static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map(name = "SLUICE_ROUTES")]
static ROUTES: LpmTrie<RouteKey, NextHop> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
#[map(name = "SLUICE_VNIS")]
static VNIS: HashMap<u32, VniInfo> = HashMap::with_max_entries(MAX_VNIS, 0);
#[map(name = "SLUICE_HOST")]
static HOST: Array<HostConfig> = Array::with_max_entries(1, 0);
/// Not read here (remote endpoints carry their neighbour's MAC); the agent's record.
#[map(name = "SLUICE_UNDERLAY")]
static UNDERLAY_NEIGHBORS: HashMap<Ipv4, UnderlayNeighbor> =
    HashMap::with_max_entries(MAX_UNDERLAY_NEIGHBORS, 0);
#[map(name = "SLUICE_APPLIANCE_VTEPS")]
static APPLIANCE_VTEPS: HashMap<ApplianceVtepKey, ApplianceVtep> =
    HashMap::with_max_entries(MAX_APPLIANCE_VTEPS, 0);

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const ARP_LEN: usize = 28;
/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN, as this host writes them.
const OUTER_LEN: usize = 50;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const OUTER_TTL: u8 = 64;
const IP_DF: u16 = 0x4000;

/// How a packet left: counted under `reason`, returned as `action`.
pub struct Outcome {
    pub reason: Reason,
    pub action: u32,
}

#[inline(always)]
pub(crate) fn drop(reason: Reason) -> Outcome {
    Outcome {
        reason,
        action: xdp_action::XDP_DROP,
    }
}

#[inline(always)]
pub(crate) fn ptr_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub(crate) fn host() -> Option<&'static HostConfig> {
    HOST.get(0).filter(|h| h.configured != 0)
}

#[inline(always)]
fn in_net(ip: Ipv4, net: Ipv4, mask: Ipv4) -> bool {
    u32::from_ne_bytes(ip) & u32::from_ne_bytes(mask) == u32::from_ne_bytes(net)
}

/// A VM's packet, on the host side of its interface. `None`: not a VPC port (or the host is
/// not configured yet), so the caller keeps the plain parse-and-pass behaviour.
#[inline(always)]
pub fn vm_egress(ctx: &XdpContext, pkt: &Packet) -> Option<Outcome> {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let port = PORTS.get(ifindex).filter(|p| p.vni != 0)?;
    let host = host()?;
    Some(vm_egress_port(ctx, pkt, ifindex, port, host))
}

#[inline(always)]
fn vm_egress_port(
    ctx: &XdpContext,
    pkt: &Packet,
    ifindex: u32,
    port: &Port,
    host: &HostConfig,
) -> Outcome {
    let Some(eth) = ptr_mut::<[u8; ETH_LEN]>(ctx, 0) else {
        return drop(Reason::DropEthTruncated);
    };
    let src_mac: Mac = unsafe {
        [
            (*eth)[6],
            (*eth)[7],
            (*eth)[8],
            (*eth)[9],
            (*eth)[10],
            (*eth)[11],
        ]
    };
    if src_mac != port.mac {
        return drop(Reason::DropSpoofedMac);
    }
    // The overlay carries untagged IPv4 (and ARP toward the virtual router) only.
    if pkt.l3_off != ETH_LEN {
        return drop(Reason::DropVmNotIpv4);
    }
    match pkt.ethertype {
        ETH_P_ARP => arp_reply(ctx, port, host),
        ETH_P_IP => route(ctx, pkt, ifindex, port, host),
        _ => drop(Reason::DropVmNotIpv4),
    }
}

/// Answers "who has X" for any X in the VPC with the router MAC, in place (XDP_TX).
#[inline(always)]
fn arp_reply(ctx: &XdpContext, port: &Port, host: &HostConfig) -> Outcome {
    let Some(arp) = ptr_mut::<[u8; ARP_LEN]>(ctx, ETH_LEN) else {
        return drop(Reason::DropArpTruncated);
    };
    let a = unsafe { &mut *arp };
    let op = u16::from_be_bytes([a[6], a[7]]);
    let ethernet_ipv4 = a[0..6] == [0, 1, 0x08, 0x00, 6, 4];
    let sha: Mac = [a[8], a[9], a[10], a[11], a[12], a[13]];
    let spa: Ipv4 = [a[14], a[15], a[16], a[17]];
    let tpa: Ipv4 = [a[24], a[25], a[26], a[27]];
    if sha != port.mac {
        return drop(Reason::DropSpoofedMac);
    }
    // 0.0.0.0 is an address probe (RFC 5227), not a spoof.
    if spa != port.ip && spa != [0; 4] {
        return drop(Reason::DropSpoofedIp);
    }
    // Only requests for another address of the VPC are answered; probes for the VM's own
    // address (duplicate detection) and gratuitous ARP get no answer and go nowhere.
    if !ethernet_ipv4
        || op != ARP_REQUEST
        || tpa == port.ip
        || !in_net(tpa, port.vpc, port.vpc_mask)
    {
        return drop(Reason::DropArpNotInVpc);
    }
    a[6..8].copy_from_slice(&ARP_REPLY.to_be_bytes());
    a[8..14].copy_from_slice(&host.router_mac);
    a[14..18].copy_from_slice(&tpa);
    a[18..24].copy_from_slice(&sha);
    a[24..28].copy_from_slice(&spa);
    let Some(eth) = ptr_mut::<[u8; ETH_LEN]>(ctx, 0) else {
        return drop(Reason::DropEthTruncated);
    };
    let e = unsafe { &mut *eth };
    e[0..6].copy_from_slice(&sha);
    e[6..12].copy_from_slice(&host.router_mac);
    Outcome {
        reason: Reason::ArpReply,
        action: xdp_action::XDP_TX,
    }
}

#[inline(always)]
pub(crate) fn endpoint(vni: u32, ip: Ipv4) -> Option<&'static Endpoint> {
    unsafe { ENDPOINTS.get(&EndpointKey { vni, ip }) }
}

#[inline(always)]
fn lookup_route(vni: u32, dst: Ipv4) -> Option<&'static NextHop> {
    lpm::get(
        &ROUTES,
        RouteKey::trie_prefix_len(32),
        RouteKey::new(vni, dst),
    )
}

/// `ifindex`: the sending port's (its context field costs three dependent loads).
#[inline(always)]
fn route(ctx: &XdpContext, pkt: &Packet, ifindex: u32, port: &Port, host: &HostConfig) -> Outcome {
    let Some(ip) = ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return drop(Reason::DropIpv4Truncated);
    };
    let h = unsafe { &mut *ip };
    let src: Ipv4 = [h[12], h[13], h[14], h[15]];
    let dst: Ipv4 = [h[16], h[17], h[18], h[19]];
    if src != port.ip && port.flags & PORT_NO_SOURCE_CHECK == 0 {
        return drop(Reason::DropSpoofedIp);
    }
    let mut own = endpoint(port.vni, dst);
    // A VIP: balanced (`lb.rs`). The packet then goes on as one to the chosen backend,
    // through the same routing below (its destination is rewritten after every check).
    let balanced = own.is_some_and(|e| e.flags & ENDPOINT_VIP != 0);
    // What later stages read of the packet (security groups, the VXLAN hash) is the
    // translated packet's.
    let mut moved = *pkt;
    let dst = if balanced {
        match lb::forward(ctx, pkt, port.vni) {
            Ok((backend, backend_port)) => {
                own = endpoint(port.vni, backend);
                moved.dst_port = backend_port;
                backend
            }
            Err(reason) => return drop(reason),
        }
    } else {
        dst
    };
    let pkt = &moved;
    let (vni, ep, same_subnet) = match own {
        // Its route is Local (the agent says so): what the route lookup would give.
        Some(ep) if ep.flags & ENDPOINT_DIRECT != 0 => {
            (port.vni, ep, in_net(dst, port.subnet, port.subnet_mask))
        }
        _ => {
            // The Internet, through the NAT gateway or the NIC's bound EIP (`nat.rs`).
            let nh = match lookup_route(port.vni, dst) {
                Some(nh) if nh.kind != NextHopKind::NatGateway as u32 => nh,
                nh => return nat::egress(ctx, pkt, ifindex, port, host, nh.is_some()),
            };
            let (vni, ep, same_subnet) = match NextHopKind::from_u32(nh.kind) {
                Some(NextHopKind::Local) => {
                    (port.vni, own, in_net(dst, port.subnet, port.subnet_mask))
                }
                Some(NextHopKind::Nic) => (port.vni, endpoint(port.vni, nh.ip), false),
                Some(NextHopKind::Peering) => {
                    let ep = endpoint(nh.vni, dst);
                    // A VIP serves its own VPC (and the Internet through DNAT), not a
                    // peer's clients: nothing here would translate the backends' replies.
                    if ep.is_some_and(|e| e.flags & ENDPOINT_VIP != 0) {
                        return drop(Reason::DropLbNoListener);
                    }
                    (nh.vni, ep, false)
                }
                Some(NextHopKind::Blackhole) => return drop(Reason::DropBlackhole),
                Some(NextHopKind::NatGateway) | None => return drop(Reason::DropNoRoute),
            };
            let Some(ep) = ep else {
                return drop(Reason::DropNoEndpoint);
            };
            (vni, ep, same_subnet)
        }
    };
    if ep.flags & ENDPOINT_PEER_SOURCE != 0 {
        return drop(Reason::DropNoEndpoint);
    }
    // Every check before the first write: a dropped frame leaves untouched.
    let remote = ep.flags & ENDPOINT_LOCAL == 0;
    if remote {
        let inner_len = ctx.data_end() - ctx.data();
        // Never truncate: a frame that does not fit the underlay is dropped and counted.
        if inner_len + OUTER_LEN - ETH_LEN > host.underlay_mtu as usize {
            return drop(Reason::DropMtuExceeded);
        }
        if ep.vtep_mac == [0; 6] {
            return drop(Reason::DropNoUnderlayNeighbor);
        }
    }
    if !same_subnet && h[8] <= 1 {
        return drop(Reason::DropTtlExceeded);
    }
    // A backend's packet to a local client may be a balanced flow's reply.
    let reply = !balanced && !remote && port.flags & PORT_LB_BACKEND != 0;
    if reply {
        if let Err(reason) = lb::before_reply(ctx, pkt, port.vni) {
            return drop(reason);
        }
    }
    if balanced && !lb::translate(ctx, pkt) {
        return drop(Reason::DropIpv4Truncated);
    }
    // Last check, so only a packet that leaves moves the connection table.
    if let Err(reason) = security_groups(ctx, pkt, ifindex, port.vni, vni, ep) {
        // A dropped frame leaves as it came.
        if balanced {
            lb::untranslate(ctx, pkt);
        }
        return drop(reason);
    }
    let filtered = reply || balanced;
    let filtered = filtered && (sg::filtered(ifindex) || !remote && sg::filtered(ep.ifindex));
    if balanced {
        if let Err(reason) = lb::settle(port.vni, filtered) {
            return drop(reason);
        }
    }
    let vip = if reply {
        match lb::reply(ctx, pkt, port.vni, filtered) {
            Ok(vip) => vip,
            Err(reason) => return drop(reason),
        }
    } else {
        None
    };
    if !same_subnet {
        // Routed between subnets: one hop, like any router (RFC 1624 incremental checksum).
        h[8] -= 1;
        let check = u16::from_be_bytes([h[10], h[11]]) as u32 + 0x0100;
        let check = (check + (check >= 0xffff) as u32) as u16;
        h[10..12].copy_from_slice(&check.to_be_bytes());
    }
    if let Some(vip) = vip {
        if !lb::rewrite_reply(ctx, pkt.l4_off, pkt.ip_proto, vip) {
            return drop(Reason::DropIpv4Truncated);
        }
    }
    if !set_macs(ctx, ep.mac, host.router_mac) {
        return drop(Reason::DropEthTruncated);
    }
    if remote {
        return encap(ctx, pkt, host, vni, ep.vtep, ep.vtep_mac);
    }
    redirect(ep.ifindex, Reason::FwdLocal)
}

/// The sending NIC's egress policy and, when the destination is a NIC on this host, its
/// ingress policy (`sg.rs`).
#[inline(always)]
fn security_groups(
    ctx: &XdpContext,
    pkt: &Packet,
    port_ifindex: u32,
    port_vni: u32,
    dst_vni: u32,
    ep: &Endpoint,
) -> Result<(), Reason> {
    let ends = sg::Ends {
        sender_ifindex: port_ifindex,
        sender_vni: port_vni,
        receiver_ifindex: if ep.flags & ENDPOINT_LOCAL != 0 {
            ep.ifindex
        } else {
            0
        },
        receiver_vni: dst_vni,
    };
    sg::check(ctx, pkt, &ends)
}

#[inline(always)]
pub(crate) fn set_macs(ctx: &XdpContext, dst: Mac, src: Mac) -> bool {
    let Some(eth) = ptr_mut::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    let e = unsafe { &mut *eth };
    e[0..6].copy_from_slice(&dst);
    e[6..12].copy_from_slice(&src);
    true
}

#[inline(always)]
pub(crate) fn redirect(ifindex: u32, reason: Reason) -> Outcome {
    Outcome {
        reason,
        action: unsafe { bpf_redirect(ifindex, 0) } as u32,
    }
}

/// VXLAN-encapsulates the (already rewritten and size-checked) frame toward `vtep`.
#[inline(always)]
fn encap(
    ctx: &XdpContext,
    pkt: &Packet,
    host: &HostConfig,
    vni: u32,
    vtep: Ipv4,
    neigh_mac: Mac,
) -> Outcome {
    let outer_ip_len = ctx.data_end() - ctx.data() + OUTER_LEN - ETH_LEN;
    let sport = vxlan_source_port(flow_hash(ctx, pkt));

    // Ethernet + IPv4 + UDP; the VXLAN header follows.
    let mut hdr = [0u8; OUTER_LEN - 8];
    hdr[0..6].copy_from_slice(&neigh_mac);
    hdr[6..12].copy_from_slice(&host.underlay_mac);
    hdr[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip = &mut hdr[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(outer_ip_len as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&IP_DF.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&host.vtep);
    ip[16..20].copy_from_slice(&vtep);
    let csum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut hdr[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((outer_ip_len - IP_LEN) as u16).to_be_bytes());
    // UDP checksum 0: allowed for VXLAN over IPv4 (RFC 7348), the inner frame has its own.
    let vx = (vni << 8).to_be_bytes();
    let vxlan = [0x08, 0, 0, 0, vx[0], vx[1], vx[2], vx[3]];

    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        return drop(Reason::DropEncapFailed);
    }
    let Some(out) = ptr_mut::<[u8; OUTER_LEN]>(ctx, 0) else {
        return drop(Reason::DropEncapFailed);
    };
    unsafe {
        core::ptr::write_unaligned(out as *mut [u8; OUTER_LEN - 8], hdr);
        // Volatile, byte by byte: LLVM would otherwise fold the zero bytes into a memset,
        // an out-of-line BPF subprogram call (a call and a return on every packet).
        let vx_out = (out as *mut u8).add(OUTER_LEN - 8);
        for (i, b) in vxlan.iter().enumerate() {
            core::ptr::write_volatile(vx_out.add(i), *b);
        }
    }
    redirect(host.underlay_ifindex, Reason::FwdEncap)
}

#[inline(always)]
fn flow_hash(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(ip) = ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return 0;
    };
    let h = unsafe { &*ip };
    let (sport, dport) = match pkt.ip_proto {
        IPPROTO_TCP | IPPROTO_UDP => (pkt.src_port, pkt.dst_port),
        _ => (0, 0),
    };
    sluice_common::vpc::flow_hash(
        [h[12], h[13], h[14], h[15]],
        [h[16], h[17], h[18], h[19]],
        h[9],
        sport,
        dport,
    )
}

#[inline(always)]
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < IP_LEN {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// VXLAN from the underlay. `None`: not for this host's VTEP (or the host is unconfigured),
/// so it goes to the kernel as before.
#[inline(always)]
pub fn underlay_ingress(ctx: &XdpContext, outer: &Packet, vx: &Vxlan) -> Option<Outcome> {
    let host = host()?;
    let ip = ptr_mut::<[u8; IP_LEN]>(ctx, outer.l3_off)?;
    let outer_src: Ipv4 = unsafe { [(*ip)[12], (*ip)[13], (*ip)[14], (*ip)[15]] };
    let outer_dst: Ipv4 = unsafe { [(*ip)[16], (*ip)[17], (*ip)[18], (*ip)[19]] };
    // Only the plain outer header this dataplane writes is decapsulated here.
    if outer_dst != host.vtep || vx.inner.l2_off != OUTER_LEN {
        return None;
    }
    Some(decap(ctx, vx, outer_src, host))
}

/// Decapsulation rules (all checked before the first write):
/// - destination: a local NIC of the VNI with the inner destination address; or, when the
///   VNI's route for that address is a `nic` next hop, the appliance NIC it names if that
///   is local (the sending host routed the packet to the appliance, keeping its address);
///   an address covered by any other custom route is not delivered.
/// - source: the inner source is an endpoint of the VNI (its own NIC or an accepted peer's)
///   living on the sending host (outer source = its VTEP); or the sending host holds an
///   appliance NIC that may forward into this VNI (`APPLIANCE_VTEPS`), which may send any
///   source: an appliance forwards others' packets, and its host could send them anyway.
#[inline(always)]
fn decap(ctx: &XdpContext, vx: &Vxlan, outer_src: Ipv4, host: &HostConfig) -> Outcome {
    let vni = vx.vni;
    if vx.inner.ethertype != ETH_P_IP || vx.inner.l3_off != OUTER_LEN + ETH_LEN {
        return drop_in_vni(vni, Reason::DropVxlanInnerNotIpv4);
    }
    let Some(ip) = ptr_mut::<[u8; IP_LEN]>(ctx, OUTER_LEN + ETH_LEN) else {
        return drop_in_vni(vni, Reason::DropIpv4Truncated);
    };
    let src: Ipv4 = unsafe { [(*ip)[12], (*ip)[13], (*ip)[14], (*ip)[15]] };
    let dst: Ipv4 = unsafe { [(*ip)[16], (*ip)[17], (*ip)[18], (*ip)[19]] };
    let own = endpoint(vni, dst);
    let target = match own {
        Some(e) if e.flags & DELIVERABLE_DIRECT == ENDPOINT_LOCAL | ENDPOINT_DIRECT => e,
        _ => {
            if unsafe { VNIS.get(&vni) }.is_none() {
                return drop(Reason::DropUnknownVni);
            }
            match routed_target(vni, dst, own) {
                Some(e) => e,
                None => return drop(Reason::DropVxlanUnknownDest),
            }
        }
    };
    let sender = endpoint(vni, src);
    let from_its_host = sender.is_some_and(|e| e.vtep == outer_src);
    if !from_its_host && !from_appliance_host(vni, outer_src) {
        return drop(Reason::DropVxlanSpoofedSource);
    }
    // A backend's packet may be a reply of a flow balanced here (`lb.rs`).
    let reply = from_its_host && sender.is_some_and(|e| e.flags & ENDPOINT_LB_BACKEND != 0);
    let (mac, ifindex) = (target.mac, target.ifindex);
    if reply {
        if let Err(reason) = lb::before_reply(ctx, &vx.inner, vni) {
            return drop(reason);
        }
    }
    // The receiving NIC's ingress policy; the sender's egress was its own host's business.
    let ends = sg::Ends {
        sender_ifindex: 0,
        sender_vni: 0,
        receiver_ifindex: ifindex,
        receiver_vni: vni,
    };
    if let Err(reason) = sg::check(ctx, &vx.inner, &ends) {
        return drop(reason);
    }
    let vip = if reply {
        match lb::reply(ctx, &vx.inner, vni, sg::filtered(ifindex)) {
            Ok(vip) => vip,
            Err(reason) => return drop(reason),
        }
    } else {
        None
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER_LEN as i32) } != 0 {
        return drop(Reason::DropEncapFailed);
    }
    if let Some(vip) = vip {
        let l4_off = if vx.inner.l4_off == 0 {
            0
        } else {
            vx.inner.l4_off - OUTER_LEN
        };
        if !lb::rewrite_reply(ctx, l4_off, vx.inner.ip_proto, vip) {
            return drop(Reason::DropIpv4Truncated);
        }
    }
    if !set_macs(ctx, mac, host.router_mac) {
        return drop(Reason::DropEthTruncated);
    }
    redirect(ifindex, Reason::FwdDecap)
}

/// Flags that decide whether an endpoint is delivered to without the route lookup.
const DELIVERABLE_DIRECT: u32 = ENDPOINT_LOCAL | ENDPOINT_DIRECT | ENDPOINT_PEER_SOURCE;

/// A failure reason, unless the VNI itself is unknown here (that is reported first).
#[inline(always)]
fn drop_in_vni(vni: u32, reason: Reason) -> Outcome {
    if unsafe { VNIS.get(&vni) }.is_none() {
        return drop(Reason::DropUnknownVni);
    }
    drop(reason)
}

/// The local NIC that `dst` in `vni` routes to, when the route is Local or a `nic` hop.
#[inline(always)]
fn routed_target(vni: u32, dst: Ipv4, own: Option<&'static Endpoint>) -> Option<&'static Endpoint> {
    let nh = lookup_route(vni, dst)?;
    let ep = match NextHopKind::from_u32(nh.kind) {
        Some(NextHopKind::Local) => own?,
        Some(NextHopKind::Nic) => endpoint(vni, nh.ip)?,
        _ => return None,
    };
    (ep.flags & (ENDPOINT_LOCAL | ENDPOINT_PEER_SOURCE) == ENDPOINT_LOCAL).then_some(ep)
}

#[inline(always)]
fn from_appliance_host(vni: u32, vtep: Ipv4) -> bool {
    unsafe { APPLIANCE_VTEPS.get(&ApplianceVtepKey { vni, vtep }) }.is_some()
}
