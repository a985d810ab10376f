//! Security groups: the operator blocklist and each NIC's stateful policy. The design
//! (rule bitsets, LPM tries keyed by policy id, copy-on-write policies, revocation by
//! policy id) is at the top of `common/src/sg.rs`; the connection table it keeps state
//! in is `conntrack.rs`.
//!
//! Cost control: a NIC slot without `NIC_SG_ENFORCED` is one array lookup, and a flow
//! between two such NICs touches neither the policy maps nor the connection table; an
//! empty blocklist is one array lookup per packet.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::{
    conntrack::{
        CtEntry, CtEvent, CtKey, CtState, CT_FRESH_JIFFIES, CT_ORIG_IS_A, CT_REVOKED,
        CT_SEEN_REPLY, TCP_FIN, TCP_RST, TCP_SYN,
    },
    proto::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    sg::*,
    stats::{Counter, Reason},
    vpc::{Ipv4, MAX_PORTS},
};

use crate::{
    conntrack::{self as ct, Flow, TRACK_INSERT, TRACK_NONE},
    lpm,
    parse::Packet,
};

#[map(name = "SLUICE_SG_NICS")]
static NICS: Array<NicSg> = Array::with_max_entries(MAX_PORTS, 0);
#[map(name = "SLUICE_SG_POLICIES")]
static POLICIES: HashMap<u64, PolicyInfo> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "SLUICE_SG_REMOTES")]
static REMOTES: LpmTrie<RemoteKey, RuleSet> = LpmTrie::with_max_entries(MAX_REMOTES, 0);
#[map(name = "SLUICE_SG_SERVICES")]
static SERVICES: LpmTrie<ServiceKey, RuleSet> = LpmTrie::with_max_entries(MAX_SERVICES, 0);
#[map(name = "SLUICE_BLOCKLIST")]
static BLOCKLIST: LpmTrie<BlockKey, BlockEntry> = LpmTrie::with_max_entries(MAX_BLOCKLIST, 0);
#[map(name = "SLUICE_BLOCK_STATS")]
static BLOCK_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BLOCKLIST, 0);
#[map(name = "SLUICE_SG_CONFIG")]
static CONFIG: Array<SgConfig> = Array::with_max_entries(1, 0);

/// Trie prefix lengths of a full lookup key: every bit of the address / service.
const REMOTE_LOOKUP_LEN: u32 = RemoteKey::trie_prefix_len(32);
const SERVICE_LOOKUP_LEN: u32 = ServiceKey::trie_prefix_len(16);
const IP_LEN: usize = 20;

/// What the check returns for a packet that may go on.
const PASS: u32 = 0;

/// The local ends of an overlay packet, as the VPC code found them: host-side ifindexes
/// (0: not a NIC on this host) and the VNI each end lives in.
pub struct Ends {
    pub sender_ifindex: u32,
    pub sender_vni: u32,
    pub receiver_ifindex: u32,
    pub receiver_vni: u32,
}

/// The NIC slot at `ifindex` if it is filtered (ifindex 0 never is).
#[inline(always)]
fn nic(ifindex: u32) -> Option<&'static NicSg> {
    NICS.get(ifindex).filter(|s| s.flags & NIC_SG_ENFORCED != 0)
}

/// Whether the NIC at `ifindex` is filtered: its connection entries are kept here.
#[inline(always)]
pub fn filtered(ifindex: u32) -> bool {
    nic(ifindex).is_some()
}

/// The security groups for the IPv4 packet `pkt` between `ends`: nothing but two array
/// lookups unless an end is filtered.
#[inline(always)]
pub fn check(ctx: &XdpContext, pkt: &Packet, ends: &Ends) -> Result<(), Reason> {
    let s = End::of(ends.sender_ifindex);
    let r = End::of(ends.receiver_ifindex);
    if s.ifindex == 0 && r.ifindex == 0 {
        return Ok(());
    }
    // Ends in two VNIs (a peering) take two entries: always the full check.
    if s.ifindex == 0 || r.ifindex == 0 || ends.sender_vni == ends.receiver_vni {
        let vni = if s.ifindex != 0 {
            ends.sender_vni
        } else {
            ends.receiver_vni
        };
        if steady(ctx, pkt, vni, &s, &r) {
            return Ok(());
        }
    }
    let Some(sc) = ct::scratch() else {
        return Err(Reason::DropCtFull);
    };
    if !Flow::write(ctx, pkt, &mut sc.flow) {
        return Err(Reason::DropIpv4Truncated);
    }
    check_flow(ends)
}

/// The full check of the flow already in the scratch slot (NAT writes the translated
/// tuple there, so the policy sees the private addresses before the packet changes).
#[inline(always)]
pub fn check_flow(ends: &Ends) -> Result<(), Reason> {
    let code = sluice_sg_check(
        ends.sender_ifindex,
        ends.sender_vni,
        ends.receiver_ifindex,
        ends.receiver_vni,
    );
    const EGRESS: u32 = Reason::DropSgEgress.index();
    const INGRESS: u32 = Reason::DropSgIngress.index();
    const REVOKED: u32 = Reason::DropSgRevoked.index();
    match code {
        PASS => Ok(()),
        EGRESS => Err(Reason::DropSgEgress),
        INGRESS => Err(Reason::DropSgIngress),
        REVOKED => Err(Reason::DropSgRevoked),
        _ => Err(Reason::DropCtFull),
    }
}

/// A local end as connection entries record it ([`recorded`]): ifindex 0 and ids 0 when
/// not a filtered NIC of this host. Scalars, not slot references: LLVM turns a choice
/// between two pointers into masking, which the verifier refuses.
struct End {
    ifindex: u32,
    egress: u64,
    ingress: u64,
}

impl End {
    /// The NIC at `ifindex`, read from its slot once.
    #[inline(always)]
    fn of(ifindex: u32) -> End {
        match NICS.get(ifindex) {
            Some(s) if s.flags & NIC_SG_ENFORCED != 0 => End {
                ifindex,
                egress: s.egress,
                ingress: s.ingress,
            },
            _ => End {
                ifindex: 0,
                egress: 0,
                ingress: 0,
            },
        }
    }
}

/// The fast path, inline: a TCP or UDP packet of a live flow that needs no write (its
/// entry took the full path less than [`CT_FRESH_JIFFIES`] ago, so it cannot have
/// expired; no policy id changed; no TCP state to advance; a reply already seen). The key
/// is built from the headers' words, one lookup, a few comparisons, and jiffies (a load,
/// not a call). Anything else returns false and takes the full check.
#[inline(always)]
fn steady(ctx: &XdpContext, pkt: &Packet, vni: u32, sender: &End, receiver: &End) -> bool {
    let proto = pkt.ip_proto;
    if pkt.l4_off == 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return false;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let (l3, l4) = (start + pkt.l3_off, start + pkt.l4_off);
    if l3 + IP_LEN > end || l4 + 4 > end {
        return false;
    }
    // Raw words in memory order, as the key stores them.
    let (src, dst, sport, dport) = unsafe {
        (
            core::ptr::read_unaligned((l3 + 12) as *const u32),
            core::ptr::read_unaligned((l3 + 16) as *const u32),
            core::ptr::read_unaligned(l4 as *const u16),
            core::ptr::read_unaligned((l4 + 2) as *const u16),
        )
    };
    if proto == IPPROTO_TCP {
        if l4 + 14 > end {
            return false;
        }
        let tcp_flags = unsafe { *((l4 + 13) as *const u8) };
        if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return false;
        }
    }
    let s = ((u32::from_be(src) as u64) << 16) | u16::from_be(sport) as u64;
    let d = ((u32::from_be(dst) as u64) << 16) | u16::from_be(dport) as u64;
    let src_is_a = s <= d;
    let (a, pa, b, pb) = if src_is_a {
        (src, sport, dst, dport)
    } else {
        (dst, dport, src, sport)
    };
    // Word by word (LLVM zeroes a struct's pad bytes with a call to `memset`).
    let [pa0, pa1] = pa.to_ne_bytes();
    let [pb0, pb1] = pb.to_ne_bytes();
    let words: [u32; 5] = [
        vni,
        a,
        b,
        u32::from_ne_bytes([pa0, pa1, pb0, pb1]),
        u32::from_ne_bytes([proto, 0, 0, 0]),
    ];
    // SAFETY: `CtKey` is five aligned words: vni, two addresses, two ports, protocol + pad.
    let key: CtKey = unsafe { core::mem::transmute(words) };
    let Some(e) = ct::lookup(&key) else {
        return false;
    };
    let e = unsafe { &*e };
    let from_orig = e.from_orig(src_is_a);
    let (orig, resp) = if from_orig {
        (sender, receiver)
    } else {
        (receiver, sender)
    };
    e.flags & CT_REVOKED == 0
        && orig.ifindex == e.egress_ifindex
        && orig.egress == e.egress_policy
        && resp.ifindex == e.ingress_ifindex
        && resp.ingress == e.ingress_policy
        && (from_orig || e.flags & CT_SEEN_REPLY != 0)
        && (proto != IPPROTO_TCP || e.state == CtState::Established as u8)
        && ct::jiffies().wrapping_sub(e.touched) < CT_FRESH_JIFFIES
}

/// The stateful policy for the flow in the scratch slot between two local NICs (ifindex
/// 0: not on this host), in their VNIs; `PASS` or a drop reason's index. Ends in one VNI
/// share one connection entry; ends in two (a peering) each get an entry under their own
/// VNI, as the reply comes back under each.
///
/// A global function: the verifier checks it once, on its own, instead of once for every
/// path of the VPC code that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_sg_check(
    sender_ifindex: u32,
    sender_vni: u32,
    receiver_ifindex: u32,
    receiver_vni: u32,
) -> u32 {
    let sender = if nic(sender_ifindex).is_some() {
        sender_ifindex
    } else {
        0
    };
    let receiver = if nic(receiver_ifindex).is_some() {
        receiver_ifindex
    } else {
        0
    };
    if sender != 0 && receiver != 0 && sender_vni != receiver_vni {
        // Both verdicts before any insert, so a flow the receiver denies leaves no entry
        // on the sender's side; the sender's pass then runs again to insert.
        let code = filter_vni(sender_vni, sender, 0, false);
        if code != PASS && code != NEEDS_INSERT {
            return code;
        }
        let second = filter_vni(receiver_vni, 0, receiver, true);
        if second != PASS || code == PASS {
            return second;
        }
        return filter_vni(sender_vni, sender, 0, true);
    }
    if sender != 0 {
        return filter_vni(sender_vni, sender, receiver, true);
    }
    if receiver != 0 {
        return filter_vni(receiver_vni, 0, receiver, true);
    }
    PASS
}

/// `filter_vni` without `insert`: the flow is new and allowed, and was not inserted.
const NEEDS_INSERT: u32 = u32::MAX;

/// What a connection entry records for an end: its ifindex and policy id; (0, 0) when the
/// end is not a filtered local NIC (so filtering it later forces a re-check).
#[inline(always)]
fn recorded(ifindex: u32, egress: bool) -> (u32, u64) {
    match nic(ifindex) {
        Some(s) => (ifindex, s.version(egress)),
        None => (0, 0),
    }
}

/// Whether policy `id` of one direction allows a first packet from/to `remote` with
/// `proto` and `port` (see [`sluice_common::sg::decide`]); the direction's default when
/// no rule matches.
#[inline(always)]
fn allows(id: u64, egress: bool, remote: Ipv4, proto: u8, port: u16) -> bool {
    let default = if egress {
        DEFAULT_EGRESS_ALLOW
    } else {
        DEFAULT_INGRESS_ALLOW
    };
    if id == POLICY_NONE {
        return default;
    }
    let r = lpm::get(&REMOTES, REMOTE_LOOKUP_LEN, RemoteKey::new(id, remote));
    let s = lpm::get(
        &SERVICES,
        SERVICE_LOOKUP_LEN,
        ServiceKey::new(id, proto, port),
    );
    let info = unsafe { POLICIES.get(id) };
    decide(r, s, info).unwrap_or(default)
}

/// Whether the NIC at `ifindex` (if filtered) lets a first packet out to (`egress`) or in
/// from `remote`. A subprogram: its paths end in a bool instead of multiplying the
/// caller's.
#[inline(never)]
fn nic_allows(ifindex: u32, egress: bool, remote: Ipv4, proto: u8, port: u16) -> bool {
    match nic(ifindex) {
        Some(s) if egress => allows(s.egress, true, remote, proto, port),
        Some(s) => allows(s.ingress, false, remote, proto, port),
        None => true,
    }
}

/// The policy verdict for a flow's first packet `orig_addr` → `resp_addr`: the
/// originator's NIC by its egress policy, the responder's by its ingress one.
#[inline(always)]
fn first_packet_verdict(
    orig_ifindex: u32,
    resp_ifindex: u32,
    orig_addr: Ipv4,
    resp_addr: Ipv4,
    proto: u8,
    port: u16,
) -> u32 {
    if !nic_allows(orig_ifindex, true, resp_addr, proto, port) {
        return Reason::DropSgEgress.index();
    }
    if !nic_allows(resp_ifindex, false, orig_addr, proto, port) {
        return Reason::DropSgIngress.index();
    }
    PASS
}

/// One connection-table pass for the scratch flow under `vni`: the fast path for a live
/// entry (with the policy-id re-check), else the first-packet verdict and, if `insert`,
/// an insert.
#[inline(never)]
fn filter_vni(vni: u32, sender: u32, receiver: u32, insert: bool) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    let (key, src_is_a) = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport);
    sc.key = key;
    let now = ct::now();
    if f.track != TRACK_NONE {
        if let Some(e) = ct::lookup(&sc.key) {
            let e = unsafe { &mut *e };
            if !ct::expired(e, f.proto, now) {
                return established(sc, e, src_is_a, sender, receiver, now);
            }
            ct::delete(&sc.key, CtEvent::CollectedExpired);
        }
    }
    let code = first_packet_verdict(sender, receiver, f.src, f.dst, f.proto, f.service);
    if code != PASS || f.track != TRACK_INSERT {
        return code;
    }
    if !insert {
        return NEEDS_INSERT;
    }
    sc.entry = CtEntry::new(now, f.proto, src_is_a, f.tcp_flags);
    sc.entry.touched = ct::jiffies();
    (sc.entry.egress_ifindex, sc.entry.egress_policy) = recorded(sender, true);
    (sc.entry.ingress_ifindex, sc.entry.ingress_policy) = recorded(receiver, false);
    match ct::insert(sc) {
        Ok(()) => PASS,
        Err(ct::InsertError::Full) => Reason::DropCtFull.index(),
    }
}

/// A packet of a live flow: re-checked if a local end's policy id differs from the one
/// the entry holds, then tracked. A revoked flow's packets are dropped and do not keep
/// its entry alive.
#[inline(always)]
fn established(
    sc: &ct::Scratch,
    e: &mut CtEntry,
    src_is_a: bool,
    sender: u32,
    receiver: u32,
    now: u64,
) -> u32 {
    let f = &sc.flow;
    let from_orig = e.from_orig(src_is_a);
    let (orig, resp) = if from_orig {
        (sender, receiver)
    } else {
        (receiver, sender)
    };
    let (egress_ifindex, egress_policy) = recorded(orig, true);
    let (ingress_ifindex, ingress_policy) = recorded(resp, false);
    if egress_ifindex != e.egress_ifindex
        || egress_policy != e.egress_policy
        || ingress_ifindex != e.ingress_ifindex
        || ingress_policy != e.ingress_policy
    {
        // The first packet again, from the key: the responder's port (ICMP: echo request).
        let ((orig_addr, _), (resp_addr, resp_port)) = sc.key.ends(e.flags & CT_ORIG_IS_A != 0);
        let port = match f.proto {
            IPPROTO_TCP | IPPROTO_UDP => u16::from_be_bytes(resp_port),
            IPPROTO_ICMP => ServiceKey::icmp_port(ct::ICMP_ECHO_REQUEST, 0),
            _ => 0,
        };
        let code = first_packet_verdict(orig, resp, orig_addr, resp_addr, f.proto, port);
        e.egress_ifindex = egress_ifindex;
        e.egress_policy = egress_policy;
        e.ingress_ifindex = ingress_ifindex;
        e.ingress_policy = ingress_policy;
        if code == PASS {
            e.flags &= !CT_REVOKED;
            ct::event(CtEvent::Rechecked);
        } else {
            e.flags |= CT_REVOKED;
            ct::event(CtEvent::Revoked);
        }
    }
    if e.flags & CT_REVOKED != 0 {
        return Reason::DropSgRevoked.index();
    }
    if ct::track(e, from_orig, f.proto, f.tcp_flags, now) {
        ct::delete(&sc.key, CtEvent::CollectedRst);
    }
    PASS
}

// ---- blocklist ----

/// Whether the blocklist has entries (else nothing is looked up).
#[inline(always)]
fn blocklist_active() -> bool {
    CONFIG.get(0).is_some_and(|c| c.blocklist_entries != 0)
}

/// The blocklist entry covering `addr` for `which` (`BLOCK_SRC` / `BLOCK_DST`), counted.
#[inline(always)]
fn blocked(addr: Ipv4, which: u32, len: usize) -> bool {
    let Some(entry) = lpm::get(&BLOCKLIST, 32, BlockKey { addr }) else {
        return false;
    };
    if entry.flags & which == 0 {
        return false;
    }
    if let Some(c) = BLOCK_STATS.get_ptr_mut(entry.counter) {
        // Per-CPU slot: no other writer.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
    true
}

/// Source and destination of an IPv4 header at `l3_off`.
#[inline(always)]
fn addresses(ctx: &XdpContext, l3_off: usize) -> Option<(Ipv4, Ipv4)> {
    let start = ctx.data();
    if start + l3_off + IP_LEN > ctx.data_end() {
        return None;
    }
    let h = unsafe { &*((start + l3_off) as *const [u8; IP_LEN]) };
    Some(([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]))
}

/// The blocklist verdict for `src`/`dst`, if either is blocked.
#[inline(always)]
fn check_pair(src: Ipv4, dst: Ipv4, len: usize) -> Option<Reason> {
    if blocked(src, BLOCK_SRC, len) {
        return Some(Reason::DropBlocklistSrc);
    }
    if blocked(dst, BLOCK_DST, len) {
        return Some(Reason::DropBlocklistDst);
    }
    None
}

/// A plain IPv4 packet before anything else looks at it: a VM's at `xdp_vm`, or the
/// Internet's to an elastic IP at `xdp_underlay` (a DDoS source, or an attacked EIP).
#[inline(always)]
pub fn blocklist_ip(ctx: &XdpContext, pkt: &Packet, len: usize) -> Option<Reason> {
    if pkt.ethertype != ETH_P_IP || !blocklist_active() {
        return None;
    }
    let (src, dst) = addresses(ctx, pkt.l3_off)?;
    check_pair(src, dst, len)
}

/// A VXLAN packet at `xdp_underlay`: the outer source (the sending host), then the inner
/// source and destination.
#[inline(always)]
pub fn blocklist_vxlan(
    ctx: &XdpContext,
    outer: &Packet,
    inner: &Packet,
    len: usize,
) -> Option<Reason> {
    if !blocklist_active() {
        return None;
    }
    let (outer_src, _) = addresses(ctx, outer.l3_off)?;
    if blocked(outer_src, BLOCK_SRC, len) {
        return Some(Reason::DropBlocklistSrc);
    }
    if inner.ethertype != ETH_P_IP {
        return None;
    }
    let (src, dst) = addresses(ctx, inner.l3_off)?;
    check_pair(src, dst, len)
}
