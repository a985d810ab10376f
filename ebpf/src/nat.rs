//! NAT at the VM's host: SNAT through a VPC's NAT gateway, DNAT port forwarding and 1:1
//! elastic IPs (design and ABI: the top of `common/src/nat.rs`). Egress comes from
//! `vpc::route` (a `NatGateway` route, or no route for a NIC with a bound EIP); ingress is
//! the underlay's plain IPv4 to an EIP. State is the connection table's (`conntrack.rs`):
//! the private entry (the one the security groups keep) links to the public (EIP, port),
//! the public entry under [`NAT_VNI`] links back.
//!
//! Verifier budget: every step with branches (state, allocation, the ingress decision) is
//! a global function with scalar arguments working on the per-CPU scratch slot, so its
//! paths end there instead of multiplying the VPC code's; the SNAT port search is a
//! `bpf_loop` callback, checked once rather than once per probe (a plain loop cost the
//! verifier 150,000 instructions more). The inline parts read the packet into the scratch
//! and write the translation back, after every check.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC},
    cty::c_void,
    helpers::bpf_loop,
    macros::map,
    maps::{Array, HashMap, LpmTrie},
    programs::XdpContext,
};
use sluice_common::{
    conntrack::{CtEntry, CtKey, CT_ORIG_IS_A, TCP_RST},
    nat::*,
    proto::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::Reason,
    vpc::{flow_hash, EndpointKey, HostConfig, Ipv4, Mac, Port, ENDPOINT_LOCAL},
};

use crate::{
    conntrack::{self as ct, Flow},
    lpm,
    parse::Packet,
    rewrite::*,
    sg,
    vpc::{self, drop, Outcome},
};

#[map(name = "SLUICE_NAT_CONFIG")]
static CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);
#[map(name = "SLUICE_NAT_EIPS")]
static EIPS: HashMap<Ipv4, EipEntry> = HashMap::with_max_entries(MAX_EIPS, 0);
#[map(name = "SLUICE_NAT_DNAT")]
static DNAT: HashMap<DnatKey, DnatTarget> = HashMap::with_max_entries(MAX_DNAT, 0);
#[map(name = "SLUICE_NAT_SOURCES")]
static SOURCES: LpmTrie<SourceKey, SnatRule> = LpmTrie::with_max_entries(MAX_SOURCES, 0);
#[map(name = "SLUICE_NAT_BLOCKS")]
static BLOCKS: HashMap<Ipv4, HostBlocks> = HashMap::with_max_entries(MAX_EIPS, 0);
/// Not preallocated: a million slots would pin their memory on every host.
#[map(name = "SLUICE_NAT_OWNERS")]
static OWNERS: HashMap<OwnerKey, BlockOwner> =
    HashMap::with_max_entries(MAX_OWNERS, BPF_F_NO_PREALLOC);
#[map(name = "SLUICE_NAT_BINDINGS")]
static BINDINGS: HashMap<EndpointKey, Binding> = HashMap::with_max_entries(MAX_BINDINGS, 0);

/// What the global functions return besides a drop reason's index.
const PASS: u32 = 0;
/// Ingress: deliver, then link the new DNAT flow's entries (`sluice_nat_settle`).
const COMMIT: u32 = u32::MAX - 1;
/// Ingress: another host owns the flow; send it there unchanged.
const OWNER: u32 = u32::MAX - 2;

/// Per-packet NAT working memory, in the connection table's per-CPU scratch slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Work {
    /// The translation: egress, the new source (address, port); ingress, the new
    /// destination and its VPC.
    pub to: NatLink,
    /// Egress: the private entry's link before the security groups ran (a RST deletes it).
    pub saved: NatLink,
    /// Ingress: the public end (EIP, port) the packet was addressed to.
    pub eip: Ipv4,
    pub eport: [u8; 2],
    /// Ingress: the MAC to send to (the local NIC's, or the owner host's).
    pub mac: Mac,
    /// Ingress: the local NIC's host-side ifindex.
    pub ifindex: u32,
    /// SNAT port search: the EIP, where to start among the host's `probe_total` ports
    /// (blocks starting at `probe_ports`), and the last probe's outcome and port.
    pub probe_eip: Ipv4,
    pub probe_start: u32,
    pub probe_total: u32,
    pub probe_result: u32,
    pub probe_port: [u8; 2],
    pub probe_ports: [u16; MAX_HOST_BLOCKS],
}

/// The reason a global function's code names (codes are reason indexes).
#[inline(always)]
pub(crate) fn reason(code: u32) -> Reason {
    if code < Reason::COUNT {
        // SAFETY: `Reason` is `repr(u32)` with discriminants 0..COUNT.
        unsafe { core::mem::transmute::<u32, Reason>(code) }
    } else {
        Reason::DropCtFull
    }
}

/// Hides `v` from LLVM's range reasoning, so a bounds check it could prove redundant stays
/// for the verifier (which cannot follow the proof through `%`).
#[inline(always)]
fn opaque(v: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&v) }
}

/// A link with every field written (`..Default::default()` becomes a `memset` call).
#[inline(always)]
fn link(addr: Ipv4, port: [u8; 2], kind: u8, vni: u32) -> NatLink {
    NatLink {
        addr,
        port,
        kind,
        flags: 0,
        vni,
        _reserved: 0,
    }
}

// ---- egress ----

/// A VM's IPv4 packet to the Internet, from `vpc::route`: `routed` when its route is a
/// NAT gateway, else it had no route and goes out only through an EIP bound to its NIC.
#[inline(always)]
pub fn egress(
    ctx: &XdpContext,
    pkt: &Packet,
    ifindex: u32,
    port: &Port,
    host: &HostConfig,
    routed: bool,
) -> Outcome {
    let Some(ip) = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return drop(Reason::DropIpv4Truncated);
    };
    let (ttl, src) = unsafe { ((*ip)[8], [(*ip)[12], (*ip)[13], (*ip)[14], (*ip)[15]]) };
    let vni = port.vni;
    if !routed && unsafe { BINDINGS.get(EndpointKey { vni, ip: src }) }.is_none() {
        return drop(Reason::DropNoRoute);
    }
    if ttl <= 1 {
        return drop(Reason::DropTtlExceeded);
    }
    let Some(border) = border_mac() else {
        return drop(Reason::DropNatNoBorder);
    };
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    if !Flow::write(ctx, pkt, &mut sc.flow) {
        return drop(Reason::DropIpv4Truncated);
    }
    if sc.flow.tcp_flags & TCP_RST != 0 {
        sluice_nat_save(vni);
    }
    // As for any destination off this host: the sender's egress policy, its state.
    let ends = sg::Ends {
        sender_ifindex: ifindex,
        sender_vni: vni,
        receiver_ifindex: 0,
        receiver_vni: vni,
    };
    if let Err(reason) = sg::check(ctx, pkt, &ends) {
        return drop(reason);
    }
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    // An ICMP error about a translated flow's packet leaves by that flow's translation.
    let icmp_error = match icmp_error_flow(ctx, pkt, &mut sc.flow, true) {
        Ok(e) => e,
        Err(reason) => return drop(reason),
    };
    let code = sluice_nat_egress(vni, ifindex);
    if code != PASS {
        return drop(reason(code));
    }
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    let to = sc.nat.to;
    let ok = if icmp_error {
        rewrite_icmp_error(ctx, pkt.l4_off, true, to.addr, to.port, true)
    } else {
        rewrite(ctx, pkt.l4_off, pkt.ip_proto, true, to.addr, to.port, true)
    };
    if !ok {
        return drop(Reason::DropIcmpTruncated);
    }
    if !vpc::set_macs(ctx, border, host.underlay_mac) {
        return drop(Reason::DropEthTruncated);
    }
    vpc::redirect(host.underlay_ifindex, Reason::FwdNatOut)
}

/// The border router's MAC, once the agent configured and resolved it.
#[inline(always)]
fn border_mac() -> Option<Mac> {
    CONFIG
        .get(0)
        .filter(|c| c.configured != 0 && c.border_mac != [0; 6])
        .map(|c| c.border_mac)
}

/// Keeps the private entry's link of the scratch flow under `vni` in `nat.saved` before
/// the security groups see the packet: a RST ends (deletes) the entry, yet must still
/// leave translated.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat_save(vni: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return 0;
    };
    let f = sc.flow;
    sc.key = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport).0;
    sc.nat.saved = match ct::lookup(&sc.key) {
        Some(e) => unsafe { (*e).nat },
        None => link([0; 4], [0; 2], LINK_NONE, 0),
    };
    0
}

/// The source translation of the scratch flow (a VM's packet under `vni` from the NIC
/// `ifindex`) into `nat.to`: the flow's own (SNAT established, DNAT reply), the NIC's
/// bound EIP, or a new SNAT port; `PASS` or a drop reason's index.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat_egress(vni: u32, ifindex: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    let (e, code) = ct::flow_entry(sc, vni, sg::filtered(ifindex), false);
    if code != PASS {
        return code;
    }
    if !e.is_null() {
        let link = unsafe { (*e).nat };
        if link.kind != LINK_NONE {
            sc.nat.to = link;
            return PASS;
        }
    } else if f.tcp_flags & TCP_RST != 0 && sc.nat.saved.kind != LINK_NONE {
        sc.nat.to = sc.nat.saved;
        return PASS;
    }
    if let Some(b) = unsafe { BINDINGS.get(EndpointKey { vni, ip: f.src }) } {
        sc.nat.to = link(b.eip, f.sport, LINK_NONE, 0);
        return PASS;
    }
    let Some(rule) = lpm::get(
        &SOURCES,
        SourceKey::trie_prefix_len(32),
        SourceKey::new(vni, f.src),
    ) else {
        return Reason::DropNatNoSource.index();
    };
    // Only SNAT needs the entry: a bound EIP's flows are stateless.
    let e = if e.is_null() {
        let (e, code) = ct::flow_entry(sc, vni, sg::filtered(ifindex), true);
        if code != PASS {
            return code;
        }
        e
    } else {
        e
    };
    if e.is_null() {
        return Reason::DropNatNoState.index();
    }
    allocate(sc as *mut ct::Scratch, e, rule, vni)
}

/// A new SNAT port for the scratch flow, whose private entry is `e`: the public entry
/// inserted (never over another flow's), the private one linked to it.
#[inline(always)]
fn allocate(sc: *mut ct::Scratch, e: *mut CtEntry, rule: &SnatRule, vni: u32) -> u32 {
    // A raw pointer in, not `&mut`: an argument's `&mut` tells LLVM nothing else touches
    // the slot during the call, but the `bpf_loop` callback reads and writes it.
    let sc = unsafe { &mut *sc };
    let f = sc.flow;
    let count = if rule.count > MAX_SNAT_EIPS as u32 {
        MAX_SNAT_EIPS as u32
    } else {
        rule.count
    };
    if count == 0 {
        return Reason::DropNatNoSource.index();
    }
    // A VM keeps one public address while it has ports there.
    let first = flow_hash(f.src, [0; 4], 0, 0, 0) % count;
    let h = flow_hash(
        f.src,
        f.dst,
        f.proto,
        u16::from_be_bytes(f.sport),
        u16::from_be_bytes(f.dport),
    );
    if !ct::admit() {
        return Reason::DropCtFull.index();
    }
    sc.entry = CtEntry::new(ct::now(), f.proto, true, f.tcp_flags);
    sc.entry.nat = link(f.src, f.sport, LINK_SNAT, vni);
    let mut k = 0;
    while k < MAX_SNAT_EIPS as u32 {
        if k >= count {
            break;
        }
        let Some(&eip) = rule.eips.get(opaque((first + k) % count) as usize) else {
            break;
        };
        k += 1;
        let Some(blocks) = (unsafe { BLOCKS.get(eip) }) else {
            continue;
        };
        let nb = if blocks.count > MAX_HOST_BLOCKS as u32 {
            MAX_HOST_BLOCKS as u32
        } else {
            blocks.count
        };
        let total = nb * BLOCK_SIZE as u32;
        if total == 0 {
            continue;
        }
        sc.nat.probe_eip = eip;
        sc.nat.probe_start = h % total;
        sc.nat.probe_total = total;
        sc.nat.probe_result = ct::TAKEN;
        sc.nat.probe_ports = blocks.first_ports;
        // The probes in a callback: the verifier checks its body once, not per probe.
        unsafe {
            bpf_loop(
                PORT_PROBES,
                probe as *const () as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
        // Volatile: written by the callback, through its own pointer.
        let (result, port) = unsafe {
            (
                core::ptr::read_volatile(&raw const sc.nat.probe_result),
                core::ptr::read_volatile(&raw const sc.nat.probe_port),
            )
        };
        match result {
            ct::INSERTED => {
                let public = link(eip, port, LINK_SNAT, 0);
                unsafe { (*e).nat = public };
                sc.nat.to = public;
                return PASS;
            }
            ct::TAKEN => {}
            _ => return Reason::DropCtFull.index(),
        }
    }
    Reason::DropNatPortsExhausted.index()
}

/// Probe `index` of the port search set up in the scratch: tries the port at `index` past
/// the start, inserting the public entry if no flow holds that tuple. 1 (stop) once
/// inserted or out of room, else 0; the outcome in `nat.probe_result`/`nat.probe_port`.
#[inline(never)]
extern "C" fn probe(index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = ct::scratch() else {
        return 1;
    };
    let total = sc.nat.probe_total;
    if total == 0 {
        return 1;
    }
    let i = (sc.nat.probe_start + index) % total;
    let Some(&first_port) = sc
        .nat
        .probe_ports
        .get(opaque(i / BLOCK_SIZE as u32) as usize)
    else {
        return 1;
    };
    let f = sc.flow;
    let pb = first_port
        .wrapping_add((i % BLOCK_SIZE as u32) as u16)
        .to_be_bytes();
    // ICMP echo: the new identifier on both sides.
    let dport = if f.proto == IPPROTO_ICMP { pb } else { f.dport };
    let (key, src_is_a) = CtKey::new(NAT_VNI, f.proto, sc.nat.probe_eip, pb, f.dst, dport);
    sc.key = key;
    sc.entry.flags = if src_is_a {
        sc.entry.flags | CT_ORIG_IS_A
    } else {
        sc.entry.flags & !CT_ORIG_IS_A
    };
    let r = ct::sluice_ct_insert_unique();
    sc.nat.probe_result = r;
    sc.nat.probe_port = pb;
    (r != ct::TAKEN) as i64
}

// ---- ingress ----

/// Plain IPv4 (`len` bytes) at the underlay. `None`: not for an EIP (or the host is not
/// configured), so it goes to the kernel as before: the host's own traffic. For an EIP the
/// operator blocklist comes first, as at the other entry points.
#[inline(always)]
pub fn underlay(ctx: &XdpContext, pkt: &Packet, len: usize) -> Option<Outcome> {
    if pkt.ethertype != ETH_P_IP || pkt.l3_off != ETH_LEN {
        return None;
    }
    let host = vpc::host()?;
    let ip = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN)?;
    let dst: Ipv4 = unsafe { [(*ip)[16], (*ip)[17], (*ip)[18], (*ip)[19]] };
    unsafe { EIPS.get(dst) }?;
    if let Some(reason) = sg::blocklist_ip(ctx, pkt, len) {
        return Some(drop(reason));
    }
    Some(ingress(ctx, pkt, host))
}

/// A packet to an EIP: translated and delivered to its local NIC, sent on to the host that
/// owns its flow, or dropped (default deny).
#[inline(always)]
fn ingress(ctx: &XdpContext, pkt: &Packet, host: &HostConfig) -> Outcome {
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    if !Flow::write(ctx, pkt, &mut sc.flow) {
        return drop(Reason::DropIpv4Truncated);
    }
    let icmp_error = match icmp_error_flow(ctx, pkt, &mut sc.flow, false) {
        Ok(e) => e,
        Err(reason) => return drop(reason),
    };
    let code = sluice_nat_ingress(
        u32::from_ne_bytes(host.vtep),
        icmp_error as u32,
        from_border(ctx) as u32,
    );
    if code == OWNER {
        return to_owner(ctx, host);
    }
    if code != PASS && code != COMMIT {
        return drop(reason(code));
    }
    let Some(ip) = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return drop(Reason::DropIpv4Truncated);
    };
    if unsafe { (*ip)[8] } <= 1 {
        return drop(Reason::DropTtlExceeded);
    }
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    let (to, ifindex, mac) = (sc.nat.to, sc.nat.ifindex, sc.nat.mac);
    if !icmp_error {
        // The receiving NIC's ingress policy on the private tuple (now in the scratch).
        let ends = sg::Ends {
            sender_ifindex: 0,
            sender_vni: 0,
            receiver_ifindex: ifindex,
            receiver_vni: to.vni,
        };
        if let Err(reason) = sg::check_flow(&ends) {
            return drop(reason);
        }
        let code = sluice_nat_settle(to.vni, ifindex, (code == COMMIT) as u32);
        if code != PASS {
            return drop(reason(code));
        }
    }
    let ok = if icmp_error {
        rewrite_icmp_error(ctx, pkt.l4_off, false, to.addr, to.port, true)
    } else {
        rewrite(ctx, pkt.l4_off, pkt.ip_proto, false, to.addr, to.port, true)
    };
    if !ok {
        return drop(Reason::DropIcmpTruncated);
    }
    if !vpc::set_macs(ctx, mac, host.router_mac) {
        return drop(Reason::DropEthTruncated);
    }
    vpc::redirect(ifindex, Reason::FwdNatIn)
}

/// Sends the packet on, unchanged but for the hop, to the host that owns its flow (MAC
/// in `nat.mac`).
#[inline(always)]
fn to_owner(ctx: &XdpContext, host: &HostConfig) -> Outcome {
    let Some(sc) = ct::scratch() else {
        return drop(Reason::DropCtFull);
    };
    let mac = sc.nat.mac;
    let Some(ip) = vpc::ptr_mut::<[u8; IP_LEN]>(ctx, ETH_LEN) else {
        return drop(Reason::DropIpv4Truncated);
    };
    let h = unsafe { &mut *ip };
    if h[8] <= 1 {
        return drop(Reason::DropTtlExceeded);
    }
    let d = ttl_dec(h);
    let check = csum_apply(get16(h, 10), d);
    put16(h, 10, check);
    if !vpc::set_macs(ctx, mac, host.underlay_mac) {
        return drop(Reason::DropEthTruncated);
    }
    Outcome {
        reason: Reason::FwdNatOwner,
        action: xdp_action::XDP_TX,
    }
}

/// Where the scratch flow (remote → EIP; for an ICMP error, the quoted flow reversed)
/// goes: `PASS` or `COMMIT` with the private destination in `nat.to` and the local NIC
/// in `nat.ifindex`/`nat.mac` (the scratch flow rewritten to it), `OWNER` with the owner
/// host's MAC in `nat.mac`, or a drop reason's index. `this_vtep`: this host's VTEP.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat_ingress(this_vtep: u32, icmp_error: u32, from_border: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    let (eip, eport) = (f.dst, f.dport);
    sc.nat.eip = eip;
    sc.nat.eport = eport;
    sc.key = CtKey::new(NAT_VNI, f.proto, f.src, f.sport, eip, eport).0;
    if let Some(pe) = ct::lookup(&sc.key) {
        let link = unsafe { (*pe).nat };
        // Only while the private entry still links back: else it is stale (a sweep
        // removes it), and the EIP's rules decide as for a new flow.
        // ICMP echo keys carry the identifier on both sides: the private one here.
        let rport = if f.proto == IPPROTO_ICMP {
            link.port
        } else {
            f.sport
        };
        sc.key = CtKey::new(link.vni, f.proto, f.src, rport, link.addr, link.port).0;
        if let Some(e) = ct::lookup(&sc.key) {
            if unsafe { (*e).nat.addr == eip && (*e).nat.port == eport } {
                return target(sc, link.vni, link.addr, link.port);
            }
        }
    }
    let Some(entry) = (unsafe { EIPS.get(eip) }) else {
        return Reason::DropNatNoRule.index();
    };
    let this_vtep = this_vtep.to_ne_bytes();
    match EipKind::from_u32(entry.kind) {
        Some(EipKind::Bound) => {
            if entry.vtep != this_vtep {
                return owner(sc, entry.vtep_mac, from_border);
            }
            target(sc, entry.vni, entry.ip, eport)
        }
        Some(EipKind::Dnat) if icmp_error == 0 => {
            let key = |proto| DnatKey {
                eip,
                port: eport,
                proto,
                _pad: 0,
            };
            let t = match unsafe { DNAT.get(key(f.proto)) } {
                Some(t) => t,
                None => match unsafe { DNAT.get(key(0)) } {
                    Some(t) => t,
                    None => return Reason::DropNatNoRule.index(),
                },
            };
            if t.vtep == [0; 4] {
                return balance(t.vni, t.ip, t.port, from_border);
            }
            if t.vtep != this_vtep {
                return owner(sc, t.vtep_mac, from_border);
            }
            match target(sc, t.vni, t.ip, t.port) {
                PASS => COMMIT,
                code => code,
            }
        }
        Some(EipKind::Snat) => {
            let Some(block) = block_of(u16::from_be_bytes(eport)) else {
                return Reason::DropNatNoRule.index();
            };
            let key = OwnerKey {
                eip,
                block: block as u32,
            };
            match unsafe { OWNERS.get(key) } {
                Some(o) if o.vtep != this_vtep => owner(sc, o.vtep_mac, from_border),
                // Its block is ours and no flow holds the port: default deny.
                _ => Reason::DropNatNoRule.index(),
            }
        }
        _ => Reason::DropNatNoRule.index(),
    }
}

/// A DNAT entry whose target is a load balancer's VIP (`vip`, listener port `vport`, in
/// `vni`; its `vtep` is zero: no one host has it): the backend the listener picks for
/// the flow (`lb.rs`). Translated here when the backend is on this host, as any DNAT
/// target; else the packet goes unchanged to the backend's host, which picks the same
/// and translates there (so replies leave from there, as for any DNAT flow). A packet a
/// peer host sent here is never sent on: when this host picks a backend elsewhere (its
/// health checks disagree), it is dropped (`drop_nat_not_owner`).
#[inline(always)]
fn balance(vni: u32, vip: Ipv4, vport: [u8; 2], from_border: u32) -> u32 {
    let vport = u32::from_ne_bytes([vport[0], vport[1], 0, 0]);
    let code = crate::lb::sluice_lb_pick_public(vni, u32::from_ne_bytes(vip), vport);
    if code != PASS {
        return code;
    }
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let (ip, port) = (sc.lb.addr, sc.lb.port);
    let Some(ep) = vpc::endpoint(vni, ip) else {
        return Reason::DropLbNoBackend.index();
    };
    if ep.flags & ENDPOINT_LOCAL != 0 {
        return match target(sc, vni, ip, port) {
            PASS => COMMIT,
            code => code,
        };
    }
    owner(sc, ep.vtep_mac, from_border)
}

/// Whether the frame came from the border router (not forwarded by a peer host).
#[inline(always)]
fn from_border(ctx: &XdpContext) -> bool {
    let (Some(border), Some(eth)) = (border_mac(), vpc::ptr_mut::<[u8; 12]>(ctx, 0)) else {
        return false;
    };
    let e = unsafe { &*eth };
    e[6..12] == border
}

/// `OWNER`, with the owner's MAC in the scratch, unless it is unresolved or the packet
/// is already a peer's hand-over (sent on again, it could bounce between two hosts that
/// disagree on the owner).
#[inline(always)]
fn owner(sc: &mut ct::Scratch, mac: Mac, from_border: u32) -> u32 {
    if from_border == 0 {
        return Reason::DropNatNotOwner.index();
    }
    if mac == [0; 6] {
        return Reason::DropNatUnresolvedOwner.index();
    }
    sc.nat.mac = mac;
    OWNER
}

/// The private destination (`vni`, `ip`, `port`), which must be a local NIC: recorded in
/// the scratch, and the scratch flow rewritten to it (the security groups read it there).
#[inline(always)]
fn target(sc: &mut ct::Scratch, vni: u32, ip: Ipv4, port: [u8; 2]) -> u32 {
    let Some(ep) = vpc::endpoint(vni, ip) else {
        return Reason::DropNatNoRule.index();
    };
    if ep.flags & ENDPOINT_LOCAL == 0 {
        return Reason::DropNatNoRule.index();
    }
    sc.nat.to = link(ip, port, LINK_NONE, vni);
    sc.nat.ifindex = ep.ifindex;
    sc.nat.mac = ep.mac;
    sc.flow.dst = ip;
    sc.flow.dport = port;
    match sc.flow.proto {
        IPPROTO_TCP | IPPROTO_UDP => sc.flow.service = u16::from_be_bytes(port),
        // The echo identifier is both "ports".
        IPPROTO_ICMP => sc.flow.sport = port,
        _ => {}
    }
    PASS
}

/// After the security groups passed an EIP's packet to the NIC `ifindex` in `vni`: its
/// private entry kept (see [`ct::flow_entry`]) and, for a new DNAT flow (`commit`), the public
/// entry inserted and the private one linked to it. `PASS` or a drop reason's index.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_nat_settle(vni: u32, ifindex: u32, commit: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let (e, code) = ct::flow_entry(sc, vni, sg::filtered(ifindex), commit != 0);
    // Without an entry (a packet that cannot open a flow) nothing is linked.
    if code != PASS || e.is_null() || commit == 0 {
        return code;
    }
    let f = sc.flow;
    let (eip, eport) = (sc.nat.eip, sc.nat.eport);
    let (key, src_is_a) = CtKey::new(NAT_VNI, f.proto, f.src, f.sport, eip, eport);
    sc.key = key;
    sc.entry = CtEntry::new(ct::now(), f.proto, src_is_a, f.tcp_flags);
    sc.entry.nat = link(f.dst, f.dport, LINK_DNAT, vni);
    if !ct::admit() {
        return Reason::DropCtFull.index();
    }
    match ct::sluice_ct_insert_unique() {
        ct::INSERTED => {}
        // Another CPU's, or a stale one: made to point here.
        ct::TAKEN => {
            if let Some(pe) = ct::lookup(&sc.key) {
                unsafe { (*pe).nat = sc.entry.nat };
            }
        }
        _ => return Reason::DropCtFull.index(),
    }
    unsafe { (*e).nat = link(eip, eport, LINK_DNAT, 0) };
    PASS
}
