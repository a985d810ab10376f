//! The load balancer at the client's host (design and ABI: the top of `common/src/lb.rs`).
//! `vpc::route` calls in at three points of a VM's packet to a VIP: [`forward`] (the
//! backend, from the flow's forward entry or the listener's table; routing goes on toward
//! it), [`translate`] (the destination rewritten, after every routing check, so the
//! security groups judge the translated packet), [`settle`] (after them: the forward
//! entry inserted, the translated flow's entry linked back to the VIP, active connections
//! counted). A backend's packet to a local client (from `route` or `decap`) goes through
//! [`before_reply`] and [`reply`]: its source becomes the VIP again.
//!
//! Verifier budget: as in `nat.rs`, every branchy step is a global function with scalar
//! arguments working on the per-CPU scratch slot; the `least_conn` scan is a `bpf_loop`
//! callback, checked once.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    btf_maps::{self, ArrayOfMaps},
    cty::c_void,
    helpers::bpf_loop,
    macros::{btf_map, map},
    maps::{Array, HashMap},
    programs::XdpContext,
};
use sluice_common::{
    conntrack::{CtEntry, CtEvent, CtKey, CtState, TCP_ACK, TCP_RST, TCP_SYN},
    lb::*,
    nat::NAT_VNI,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    stats::Reason,
    vpc::{flow_hash, Ipv4},
};

use crate::{
    conntrack::{self as ct, Flow, TRACK_INSERT, TRACK_NONE},
    nat::reason,
    parse::Packet,
    rewrite,
};

#[map(name = "SLUICE_LB_LISTENERS")]
static LISTENERS: HashMap<ListenerKey, Listener> = HashMap::with_max_entries(MAX_LISTENERS, 0);
/// Per listener slot, its table (an inner array of backend slots). Declared with the
/// largest size; `BPF_F_INNER_MAP` lets inner arrays of any size share the outer map.
#[btf_map(name = "SLUICE_LB_TABLES")]
static TABLES: ArrayOfMaps<
    btf_maps::Array<u32, { MAGLEV_MAX_SIZE as usize }, { INNER_MAP_FLAGS as usize }>,
    { MAX_LISTENERS as usize },
> = ArrayOfMaps::new();
#[map(name = "SLUICE_LB_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map(name = "SLUICE_LB_ACTIVE")]
static ACTIVE: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

const PASS: u32 = 0;
/// [`sluice_lb_reply`]: a reply to rewrite (the VIP end in `lb.vip`/`lb.vport`).
const REWRITE: u32 = u32::MAX - 1;

/// Per-packet balancer working memory, in the connection table's per-CPU scratch slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Work {
    /// The VIP end of the flow (forward: the destination; reply: the source to write).
    pub vip: Ipv4,
    pub vport: [u8; 2],
    /// Forward: a new pick, whose forward entry `settle` inserts.
    pub new: u8,
    /// Forward: the forward entry is steady (`ct::steady`): its full path ran less than
    /// a second ago, and settled the translated entry then, so nothing is left to do.
    pub steady: u8,
    /// Forward: the backend (address, port, slot).
    pub addr: Ipv4,
    pub port: [u8; 2],
    /// Reply: the packet is an ICMP error about a balanced flow's packet (its quoted
    /// header gets the VIP end too).
    pub icmp_error: u8,
    pub _pad2: u8,
    pub backend: u32,
    /// Reply: the translated entry's link before the security groups ran (a RST deletes
    /// the entry, yet the RST must still leave translated).
    pub saved: LbLink,
    /// `least_conn` scan: the table slot, its size, where to start, and the best
    /// candidate so far (`best_weight` 0: none).
    pub scan_table: u32,
    pub scan_size: u32,
    pub scan_start: u32,
    pub best_slot: u32,
    pub best_active: u32,
    pub best_weight: u32,
}

#[inline(always)]
fn lb_link(addr: Ipv4, port: [u8; 2], kind: u8, flags: u8, backend: u32) -> LbLink {
    LbLink {
        addr,
        port,
        kind,
        flags,
        backend,
        _reserved: 0,
    }
}

/// Adds `delta` (wrapping: `u32::MAX` is -1) to the backend slot's active connections.
#[inline(never)]
fn active_add(slot: u32, delta: u32) {
    if let Some(c) = ACTIVE.get_ptr_mut(slot) {
        // Shared by every CPU: a BPF atomic add.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(c, delta) };
    }
}

/// Uncounts the translated entry `e`'s connection if it still counts (once).
#[inline(always)]
fn uncount(e: &mut CtEntry) {
    if e.lb.kind == LB_LINK_REVERSE && e.lb.flags & LB_COUNTED != 0 {
        e.lb.flags &= !LB_COUNTED;
        active_add(e.lb.backend, u32::MAX);
    }
}

/// Whether a TCP entry's connection is over (time-wait or closed).
#[inline(always)]
fn ended(e: &CtEntry, proto: u8) -> bool {
    proto == IPPROTO_TCP && (e.state == CtState::TimeWait as u8 || e.state == CtState::Close as u8)
}

/// Whether a forward link's backend may still carry its flow: usable, and its slot still
/// holds the same address and port.
#[inline(always)]
fn usable(link: &LbLink) -> bool {
    BACKENDS
        .get(link.backend)
        .is_some_and(|b| b.flags & BACKEND_USABLE != 0 && b.ip == link.addr && b.port == link.port)
}

// ---- forward: client -> VIP ----

/// A VM's packet to a VIP (an `ENDPOINT_VIP` destination) under `vni`: the backend's
/// address and port (host order) to route toward (its slot in the scratch), or why it is
/// dropped.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, vni: u32) -> Result<(Ipv4, u16), Reason> {
    let Some(sc) = ct::scratch() else {
        return Err(Reason::DropCtFull);
    };
    if !Flow::write(ctx, pkt, &mut sc.flow) {
        return Err(Reason::DropIpv4Truncated);
    }
    let code = sluice_lb_pick(vni);
    if code != PASS {
        return Err(reason(code));
    }
    let Some(sc) = ct::scratch() else {
        return Err(Reason::DropCtFull);
    };
    Ok((sc.lb.addr, u16::from_be_bytes(sc.lb.port)))
}

/// Rewrites the balanced packet's destination to the backend [`forward`] chose (no hop:
/// routing counts it). Called after every routing check, right before the security
/// groups, so only a packet that goes on (or is dropped) is changed.
#[inline(always)]
pub fn translate(ctx: &XdpContext, pkt: &Packet) -> bool {
    let Some(sc) = ct::scratch() else {
        return false;
    };
    let (addr, port) = (sc.lb.addr, sc.lb.port);
    rewrite::rewrite(ctx, pkt.l4_off, pkt.ip_proto, false, addr, port, false)
}

/// Undoes [`translate`] (the security groups dropped the packet: it leaves untouched).
#[inline(always)]
pub fn untranslate(ctx: &XdpContext, pkt: &Packet) {
    if let Some(sc) = ct::scratch() {
        let (vip, vport) = (sc.lb.vip, sc.lb.vport);
        rewrite::rewrite(ctx, pkt.l4_off, pkt.ip_proto, false, vip, vport, false);
    }
}

/// After the security groups passed the translated packet: see [`sluice_lb_settle`].
/// `filtered`: an end of the flow is a filtered NIC of this host.
#[inline(always)]
pub fn settle(vni: u32, filtered: bool) -> Result<(), Reason> {
    match sluice_lb_settle(vni, filtered as u32) {
        PASS => Ok(()),
        code => Err(reason(code)),
    }
}

/// The backend of the scratch flow (client -> VIP, under `vni`) into `lb`: its forward
/// entry's while that backend is usable, else a new pick from the listener's table; the
/// scratch flow then becomes the translated one. `PASS` or a drop reason's index.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb_pick(vni: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    // Listeners are TCP or UDP ports: nothing else (nor a fragment without ports) has one.
    if (f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP) || f.track == TRACK_NONE {
        return Reason::DropLbNoListener.index();
    }
    sc.lb.vip = f.dst;
    sc.lb.vport = f.dport;
    sc.lb.new = 0;
    sc.lb.steady = 0;
    let (key, src_is_a) = CtKey::new(vni | LB_VNI, f.proto, f.src, f.sport, f.dst, f.dport);
    sc.key = key;
    // A pinned flow first: it needs nothing of its listener.
    if let Some(e) = ct::lookup(&sc.key) {
        let e = unsafe { &mut *e };
        let link = e.lb;
        if link.kind == LB_LINK_FORWARD && usable(&link) {
            if ct::steady(e, e.from_orig(src_is_a), f.proto, f.tcp_flags) {
                pinned(sc, vni, link);
                sc.lb.steady = 1;
                return PASS;
            }
            let now = ct::now();
            if !ct::expired(e, f.proto, now) {
                if ct::track(e, e.from_orig(src_is_a), f.proto, f.tcp_flags, now) {
                    ct::delete(&sc.key, CtEvent::CollectedRst);
                }
                return pinned(sc, vni, link);
            }
        }
        // Expired, or its backend went away: the flow picks again.
        forget(sc, vni, link);
        ct::delete(&sc.key, CtEvent::CollectedExpired);
    }
    let (slot, ip, port) = match choose(sc, vni) {
        Ok(b) => b,
        Err(code) => return code,
    };
    // The translated tuple must be free, or this VIP's own (a reused tuple). Two listeners
    // with one backend port meet there when the client reuses a source port: a new
    // connection takes over the tuple of one that ended, as the backend's stack lets its
    // SYN reuse a time-wait tuple.
    sc.key = CtKey::new(vni, f.proto, f.src, f.sport, ip, port).0;
    if let Some(t) = ct::lookup(&sc.key) {
        let t = unsafe { &*t };
        let ours = t.lb.kind == LB_LINK_REVERSE && t.lb.addr == f.dst && t.lb.port == f.dport;
        if !ours && !ct::expired(t, f.proto, ct::now()) {
            let syn = f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            if !(syn && ended(t, f.proto)) {
                return Reason::DropLbConflict.index();
            }
            ct::delete(&sc.key, CtEvent::Reused);
        }
    }
    sc.lb.new = 1;
    pinned(sc, vni, lb_link(ip, port, LB_LINK_FORWARD, 0, slot))
}

/// An Internet flow (the scratch flow: client -> EIP) whose DNAT entry targets the VIP
/// `vip` (listener port `vport`, network order, as the low bytes) in `vni`: its backend
/// into `lb.addr`/`port`/`backend`. Pinned by this host's entry under `NAT_VNI | LB_VNI`
/// (the public 5-tuple, its own clock), else chosen as a VM's flow to the VIP would be
/// and pinned: a table change does not move the flow to another host. The pick hashes
/// the flow with the VIP as its destination, so every host the fabric may hand the flow
/// to picks the same backend. `PASS` or a drop reason's index.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb_pick_public(vni: u32, vip: u32, vport: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    if (f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP) || f.track == TRACK_NONE {
        return Reason::DropLbNoListener.index();
    }
    let (key, src_is_a) = CtKey::new(NAT_VNI | LB_VNI, f.proto, f.src, f.sport, f.dst, f.dport);
    sc.key = key;
    let now = ct::now();
    if let Some(e) = ct::lookup(&sc.key) {
        let e = unsafe { &mut *e };
        let link = e.lb;
        if link.kind == LB_LINK_FORWARD && usable(&link) && !ct::expired(e, f.proto, now) {
            if ct::track(e, e.from_orig(src_is_a), f.proto, f.tcp_flags, now) {
                ct::delete(&sc.key, CtEvent::CollectedRst);
            }
            sc.lb.addr = link.addr;
            sc.lb.port = link.port;
            sc.lb.backend = link.backend;
            return PASS;
        }
        ct::delete(&sc.key, CtEvent::CollectedExpired);
    }
    let port = vport.to_ne_bytes();
    sc.flow.dst = vip.to_ne_bytes();
    sc.flow.dport = [port[0], port[1]];
    let picked = choose(sc, vni);
    sc.flow.dst = f.dst;
    sc.flow.dport = f.dport;
    let (slot, ip, port) = match picked {
        Ok(b) => b,
        Err(code) => return code,
    };
    sc.lb.addr = ip;
    sc.lb.port = port;
    sc.lb.backend = slot;
    if f.track == TRACK_INSERT {
        sc.entry = CtEntry::new(now, f.proto, src_is_a, f.tcp_flags);
        sc.entry.lb = lb_link(ip, port, LB_LINK_FORWARD, 0, slot);
        sc.entry.touched = ct::jiffies();
        // A full table leaves the flow unpinned here, not dropped: the backend's host
        // holds its translation either way.
        let _ = ct::insert(sc);
    }
    PASS
}

/// A new flow's backend (slot, address, port) from the listener of the scratch flow's
/// destination (`vni`, address, port, protocol), hashed over the scratch flow: its
/// 5-tuple (`maglev`; the same on every host, so an Internet flow's pick does not depend
/// on which host the fabric hands it to), its source (`source_ip`), or the fewest active
/// connections (`least_conn`). Or a drop reason's index.
#[inline(always)]
fn choose(sc: &mut ct::Scratch, vni: u32) -> Result<(u32, Ipv4, [u8; 2]), u32> {
    let f = sc.flow;
    let lkey = ListenerKey {
        vni,
        vip: f.dst,
        port: f.dport,
        proto: f.proto,
        _pad: 0,
    };
    let Some(l) = (unsafe { LISTENERS.get(lkey) }) else {
        return Err(Reason::DropLbNoListener.index());
    };
    let (table, size, scheduler) = (l.table, l.size, l.scheduler);
    if size == 0 {
        return Err(Reason::DropLbNoBackend.index());
    }
    let slot = match Scheduler::from_u8(scheduler) {
        Some(Scheduler::Maglev) => {
            let h = flow_hash(
                f.src,
                f.dst,
                f.proto,
                u16::from_be_bytes(f.sport),
                u16::from_be_bytes(f.dport),
            );
            not_self(table, h % size, size, f.src)
        }
        Some(Scheduler::SourceIp) => not_self(table, client_hash(f.src) % size, size, f.src),
        Some(Scheduler::LeastConn) => least_conn(sc as *mut ct::Scratch, table, size),
        None => Err(Reason::DropLbNoTable.index()),
    }?;
    match BACKENDS.get(slot) {
        Some(b) if b.flags & BACKEND_USABLE != 0 => Ok((slot, b.ip, b.port)),
        _ => Err(Reason::DropLbNoBackend.index()),
    }
}

/// The backend slot at `index` of the table in listener slot `table`.
#[inline(always)]
fn entry(table: u32, index: u32) -> Result<u32, u32> {
    match TABLES.get_value(table, &index) {
        Some(&slot) => Ok(slot),
        None => Err(Reason::DropLbNoTable.index()),
    }
}

/// The backend slot at `index` of the table, or, when that is the client itself, at
/// entries [`SELF_STRIDE`] apart (up to [`SELF_TRIES`] more): a VM's packet to its own
/// address never leaves the VM, so its reply could not be translated back to the VIP. A
/// stride, not the next entry: Maglev's fill leaves runs of one backend, and entries far
/// apart are independent picks, so a client that is one of two backends misses the other
/// with odds of 2^-16 (unless it is the only one).
#[inline(always)]
fn not_self(table: u32, index: u32, size: u32, client: Ipv4) -> Result<u32, u32> {
    let mut i = index;
    let mut slot = entry(table, i)?;
    let stride = SELF_STRIDE % size;
    for _ in 0..SELF_TRIES {
        match BACKENDS.get(slot) {
            Some(b) if b.ip == client => {}
            _ => break,
        }
        i += stride;
        if i >= size {
            i -= size;
        }
        slot = entry(table, i)?;
    }
    Ok(slot)
}

/// Records the backend `link` names for the scratch flow and makes the scratch flow the
/// translated one; a RST uncounts the connection here, as the security groups delete its
/// translated entry.
#[inline(always)]
fn pinned(sc: &mut ct::Scratch, vni: u32, link: LbLink) -> u32 {
    sc.lb.addr = link.addr;
    sc.lb.port = link.port;
    sc.lb.backend = link.backend;
    sc.flow.dst = link.addr;
    sc.flow.dport = link.port;
    sc.flow.service = u16::from_be_bytes(link.port);
    if sc.flow.tcp_flags & TCP_RST != 0 {
        let f = sc.flow;
        sc.key = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport).0;
        if let Some(t) = ct::lookup(&sc.key) {
            uncount(unsafe { &mut *t });
        }
    }
    PASS
}

/// A forward entry about to go (stale): its translated entry's connection uncounted.
#[inline(always)]
fn forget(sc: &mut ct::Scratch, vni: u32, link: LbLink) {
    if link.kind != LB_LINK_FORWARD {
        return;
    }
    let f = sc.flow;
    let key = CtKey::new(vni, f.proto, f.src, f.sport, link.addr, link.port).0;
    if let Some(t) = ct::lookup(&key) {
        uncount(unsafe { &mut *t });
    }
}

/// `least_conn`: the candidate with the fewest active connections per weight, scanning
/// from a flow-hash offset so ties spread. `size` is at most [`LEAST_CONN_MAX`].
#[inline(always)]
fn least_conn(sc: *mut ct::Scratch, table: u32, size: u32) -> Result<u32, u32> {
    // A raw pointer, not `&mut`: the `bpf_loop` callback writes the slot too.
    let sc = unsafe { &mut *sc };
    let f = sc.flow;
    let n = if size > LEAST_CONN_MAX {
        LEAST_CONN_MAX
    } else {
        size
    };
    sc.lb.scan_table = table;
    sc.lb.scan_size = n;
    sc.lb.scan_start = flow_hash(
        f.src,
        f.dst,
        f.proto,
        u16::from_be_bytes(f.sport),
        u16::from_be_bytes(f.dport),
    ) % n;
    sc.lb.best_weight = 0;
    unsafe {
        bpf_loop(
            n,
            scan as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // Volatile: written by the callback, through its own pointer.
    let (weight, slot) = unsafe {
        (
            core::ptr::read_volatile(&raw const sc.lb.best_weight),
            core::ptr::read_volatile(&raw const sc.lb.best_slot),
        )
    };
    if weight == 0 {
        return Err(Reason::DropLbNoBackend.index());
    }
    Ok(slot)
}

/// Candidate `index` of the `least_conn` scan set up in the scratch: kept as the best if
/// it is usable, weighted, and has fewer active connections per weight. 0: go on.
#[inline(never)]
extern "C" fn scan(index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = ct::scratch() else {
        return 1;
    };
    let n = sc.lb.scan_size;
    if n == 0 {
        return 1;
    }
    let i = (sc.lb.scan_start + index) % n;
    let Some(&slot) = TABLES.get_value(sc.lb.scan_table, &i) else {
        return 0;
    };
    let Some(b) = BACKENDS.get(slot) else {
        return 0;
    };
    let w = b.weight as u32;
    // Never the client itself (see `not_self`).
    if w == 0 || b.flags & BACKEND_USABLE == 0 || b.ip == sc.flow.src {
        return 0;
    }
    let active = ACTIVE.get(slot).copied().unwrap_or(0);
    // active / w < best_active / best_weight, without division.
    let fewer =
        (active as u64) * (sc.lb.best_weight as u64) < (sc.lb.best_active as u64) * (w as u64);
    if sc.lb.best_weight == 0 || fewer {
        sc.lb.best_slot = slot;
        sc.lb.best_active = active;
        sc.lb.best_weight = w;
    }
    0
}

/// After the security groups passed a balanced packet (the scratch flow: translated,
/// under `vni`; `filtered`: they keep its entry); nothing for a steady pinned flow.
/// Otherwise the translated entry kept (see
/// [`ct::flow_entry`]) and linked back to the VIP; for a new pick, the forward entry
/// inserted and the connection counted; a finished TCP connection uncounted. `PASS` or a
/// drop reason's index.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb_settle(vni: u32, filtered: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    if sc.lb.steady != 0 {
        return PASS;
    }
    let (e, code) = ct::flow_entry(sc, vni, filtered != 0, true);
    // Without an entry (a packet that cannot open a flow) nothing is linked.
    if code != PASS || e.is_null() {
        return code;
    }
    let e = unsafe { &mut *e };
    let (vip, vport, slot) = (sc.lb.vip, sc.lb.vport, sc.lb.backend);
    match e.lb.kind {
        LB_LINK_NONE => e.lb = lb_link(vip, vport, LB_LINK_REVERSE, 0, slot),
        LB_LINK_REVERSE if e.lb.addr == vip && e.lb.port == vport => {
            if e.lb.backend != slot {
                e.lb.backend = slot;
            }
        }
        _ => return Reason::DropLbConflict.index(),
    }
    let f = sc.flow;
    let mut count = false;
    if sc.lb.new != 0 {
        let (key, src_is_a) = CtKey::new(vni | LB_VNI, f.proto, f.src, f.sport, vip, vport);
        sc.key = key;
        sc.entry = CtEntry::new(ct::now(), f.proto, src_is_a, f.tcp_flags);
        sc.entry.touched = ct::jiffies();
        sc.entry.lb = lb_link(sc.lb.addr, sc.lb.port, LB_LINK_FORWARD, 0, slot);
        if !ct::admit() {
            return Reason::DropCtFull.index();
        }
        match ct::sluice_ct_insert_unique() {
            ct::INSERTED => count = true,
            // Another CPU's insert of the same flow: counted there.
            ct::TAKEN => {}
            _ => return Reason::DropCtFull.index(),
        }
    } else if f.proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A pinned tuple reopened after its connection ended.
        count = true;
    }
    if count && e.lb.flags & LB_COUNTED == 0 && !ended(e, f.proto) {
        e.lb.flags |= LB_COUNTED;
        active_add(slot, 1);
    }
    if ended(e, f.proto) {
        uncount(e);
    }
    PASS
}

// ---- reply: backend -> client ----

/// A backend's packet toward a local NIC (`vni`), before the security groups: the flow
/// read into the scratch and, for a RST (which ends the translated entry), its link
/// saved and its connection uncounted.
#[inline(always)]
pub fn before_reply(ctx: &XdpContext, pkt: &Packet, vni: u32) -> Result<(), Reason> {
    let Some(sc) = ct::scratch() else {
        return Err(Reason::DropCtFull);
    };
    if !Flow::write(ctx, pkt, &mut sc.flow) {
        return Err(Reason::DropIpv4Truncated);
    }
    sc.lb.saved = lb_link([0; 4], [0; 2], LB_LINK_NONE, 0, 0);
    if sc.flow.tcp_flags & TCP_RST != 0 {
        sluice_lb_save(vni);
    }
    Ok(())
}

/// Keeps the translated entry's link of the scratch flow (under `vni`) in `lb.saved`, and
/// uncounts its connection: a RST is about to end it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb_save(vni: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return 0;
    };
    let f = sc.flow;
    sc.key = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport).0;
    if let Some(e) = ct::lookup(&sc.key) {
        let e = unsafe { &mut *e };
        sc.lb.saved = e.lb;
        uncount(e);
    }
    0
}

/// Writes the VIP end (`reply`'s answer) into a backend's packet to the client: as its
/// source; in an ICMP error, also as the quoted packet's destination. `l4_off`: where the
/// L4 header is in the frame as it is now. The hop, if any, is the caller's.
#[inline(always)]
pub fn rewrite_reply(
    ctx: &XdpContext,
    l4_off: usize,
    proto: u8,
    (addr, port): (Ipv4, [u8; 2]),
) -> bool {
    let icmp_error = ct::scratch().is_some_and(|sc| sc.lb.icmp_error != 0);
    if icmp_error {
        rewrite::rewrite_icmp_error(ctx, l4_off, true, addr, port, false)
    } else {
        rewrite::rewrite(ctx, l4_off, proto, true, addr, port, false)
    }
}

/// After the security groups passed a backend's packet (scratch flow from
/// [`before_reply`], under `vni`; `filtered`: they keep its entry): the VIP end to write
/// as its source, if it is a reply of a balanced flow.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    pkt: &Packet,
    vni: u32,
    filtered: bool,
) -> Result<Option<(Ipv4, [u8; 2])>, Reason> {
    let Some(sc) = ct::scratch() else {
        return Err(Reason::DropCtFull);
    };
    // An ICMP error the backend sent about a packet of the flow (port unreachable,
    // fragmentation needed) is looked up as the flow's reply, by its quoted header; one
    // quoting anything else goes on as it is. The scratch flow is the packet's own here
    // (the security groups wrote it, or `before_reply` did).
    sc.lb.icmp_error = matches!(
        rewrite::icmp_error_flow(ctx, pkt, &mut sc.flow, true),
        Ok(true)
    ) as u8;
    match sluice_lb_reply(vni, filtered as u32) {
        PASS => Ok(None),
        REWRITE => {
            let Some(sc) = ct::scratch() else {
                return Err(Reason::DropCtFull);
            };
            Ok(Some((sc.lb.vip, sc.lb.vport)))
        }
        code => Err(reason(code)),
    }
}

/// The reverse link of the scratch flow (backend -> client under `vni`): `REWRITE` with
/// the VIP end in `lb.vip`/`lb.vport` when the packet is the responder's of a balanced
/// flow, else `PASS`; a drop reason's index if keeping its entry failed. Keeps the
/// forward entry's state in step, and uncounts a finished TCP connection.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_lb_reply(vni: u32, filtered: u32) -> u32 {
    let Some(sc) = ct::scratch() else {
        return Reason::DropCtFull.index();
    };
    let f = sc.flow;
    let (e, code) = ct::flow_entry(sc, vni, filtered != 0, false);
    if code != PASS {
        return code;
    }
    let icmp_error = sc.lb.icmp_error != 0;
    let link = if e.is_null() {
        // Gone with this RST: the link saved before.
        sc.lb.saved
    } else {
        let e = unsafe { &mut *e };
        let src_is_a = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport).1;
        if e.from_orig(src_is_a) {
            return PASS;
        }
        if !icmp_error && ended(e, f.proto) {
            uncount(e);
        }
        e.lb
    };
    if link.kind != LB_LINK_REVERSE {
        return PASS;
    }
    sc.lb.vip = link.addr;
    sc.lb.vport = link.port;
    // An error is no packet of the flow: the forward entry's state stays.
    if icmp_error {
        return REWRITE;
    }
    let (key, vip_is_a) = CtKey::new(vni | LB_VNI, f.proto, link.addr, link.port, f.dst, f.dport);
    sc.key = key;
    if let Some(fe) = ct::lookup(&sc.key) {
        let fe = unsafe { &mut *fe };
        let from_orig = fe.from_orig(vip_is_a);
        if !from_orig
            && !ct::steady(fe, false, f.proto, f.tcp_flags)
            && ct::track(fe, false, f.proto, f.tcp_flags, ct::now())
        {
            ct::delete(&sc.key, CtEvent::CollectedRst);
        }
    }
    REWRITE
}
