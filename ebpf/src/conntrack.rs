//! The connection table (ABI and design: `common/src/conntrack.rs`): lookups, inserts
//! under the admission limit, in-place updates, deletes on RST or expiry, and the
//! counters the agent's sweeper and metrics read. The policy that decides what enters it
//! is `sg.rs`.
//!
//! Verifier budget: every branchy step (counting, the TCP state machine, expiry, the
//! insert) is its own subprogram returning a scalar, so its paths end there instead of
//! multiplying the paths of everything after it; the flow, key and new entry live in a
//! per-CPU scratch slot, not on the 512-byte stack.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use sluice_common::{
    conntrack::*,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    sg::ServiceKey,
    stats::Reason,
    vpc::Ipv4,
};

use crate::parse::Packet;

/// Sized for the default admission limit; the loader may resize it to the configured one.
#[map(name = "SLUICE_CT")]
static CT: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(ct_map_size(DEFAULT_MAX_ENTRIES, DECLARED_CPUS), 0);
#[map(name = "SLUICE_CT_CONFIG_V2")]
static CONFIG: Array<CtConfig> = Array::with_max_entries(1, 0);
#[map(name = "SLUICE_CT_COUNT")]
static COUNT: Array<CtCount> = Array::with_max_entries(CT_COUNT_SLOTS, 0);
#[map(name = "SLUICE_CT_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CT_STATS_SLOTS, 0);
#[map(name = "SLUICE_CT_SCRATCH_V3")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// CPUs the declared size leaves LRU headroom for.
const DECLARED_CPUS: u32 = 64;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
const EEXIST: i32 = 17;

/// `Flow::track`: looked up; a new flow the policy allows is inserted.
pub const TRACK_INSERT: u8 = 0;
/// Looked up, never inserted: an echo reply or a TCP RST without an entry is judged
/// alone, so it cannot open a flow the other way.
pub const TRACK_LOOKUP: u8 = 1;
/// Not tracked (ICMP other than echo, non-first fragments): every packet is judged by
/// the policy as a first packet.
pub const TRACK_NONE: u8 = 2;

/// A packet as the connection table and the policy see it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: Ipv4,
    pub dst: Ipv4,
    /// Network order; ICMP echo: the identifier, twice; 0 without ports.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// The port a policy matches were this the flow's first packet (ICMP: type and code).
    pub service: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// `TRACK_*`.
    pub track: u8,
}

/// Per-CPU working memory of one packet's security-group check.
#[repr(C)]
pub struct Scratch {
    pub flow: Flow,
    pub key: CtKey,
    pub entry: CtEntry,
    /// The NAT translation of the packet (`nat.rs`).
    pub nat: crate::nat::Work,
    /// The load balancer's choice for the packet (`lb.rs`).
    pub lb: crate::lb::Work,
}

/// The packet's scratch slot. XDP runs a packet to completion on its CPU.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

impl Flow {
    /// Writes the flow of the IPv4 packet `pkt` (offsets into the current frame) into
    /// `f`. False when a header the parser vouched for cannot be read (never, but the
    /// verifier asks).
    #[inline(always)]
    pub fn write(ctx: &XdpContext, pkt: &Packet, f: &mut Flow) -> bool {
        let Some(ip) = bytes::<20>(ctx, pkt.l3_off) else {
            return false;
        };
        f.src = [ip[12], ip[13], ip[14], ip[15]];
        f.dst = [ip[16], ip[17], ip[18], ip[19]];
        f.proto = pkt.ip_proto;
        f.sport = [0; 2];
        f.dport = [0; 2];
        f.service = 0;
        f.tcp_flags = 0;
        f.track = TRACK_INSERT;
        if pkt.l4_off == 0 {
            // A non-first fragment has no ports to match or track by.
            if pkt.fragment {
                f.track = TRACK_NONE;
            }
            return true;
        }
        match pkt.ip_proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                f.sport = pkt.src_port.to_be_bytes();
                f.dport = pkt.dst_port.to_be_bytes();
                f.service = pkt.dst_port;
                if pkt.ip_proto == IPPROTO_TCP {
                    let Some(h) = bytes::<14>(ctx, pkt.l4_off) else {
                        return false;
                    };
                    f.tcp_flags = h[13];
                    if f.tcp_flags & TCP_RST != 0 {
                        f.track = TRACK_LOOKUP;
                    }
                }
            }
            IPPROTO_ICMP => {
                let Some(h) = bytes::<8>(ctx, pkt.l4_off) else {
                    return false;
                };
                f.service = ServiceKey::icmp_port(h[0], h[1]);
                if h[0] == ICMP_ECHO_REQUEST || h[0] == ICMP_ECHO_REPLY {
                    f.sport = [h[4], h[5]];
                    f.dport = [h[4], h[5]];
                    if h[0] == ICMP_ECHO_REPLY {
                        f.track = TRACK_LOOKUP;
                    }
                } else {
                    f.track = TRACK_NONE;
                }
            }
            _ => {}
        }
        true
    }
}

#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    Some(unsafe { *((start + off) as *const [u8; N]) })
}

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The low 32 bits of jiffies: a load the verifier inlines, not a helper call.
#[inline(always)]
pub fn jiffies() -> u32 {
    unsafe { bpf_jiffies64() as u32 }
}

/// The agent's configuration, `None` while it wrote none ([`CtConfig::DEFAULT`] applies).
#[inline(always)]
fn configured() -> Option<&'static CtConfig> {
    CONFIG.get(0).filter(|c| c.max_entries != 0)
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    CT.get_ptr_mut(key)
}

/// Whether `e` (of protocol `proto`) has expired at `now`.
#[inline(never)]
pub fn expired(e: &CtEntry, proto: u8, now: u64) -> bool {
    match configured() {
        Some(c) => e.is_expired(now, proto, c),
        None => e.is_expired(now, proto, &CtConfig::DEFAULT),
    }
}

/// Counts `ev` on this CPU.
#[inline(never)]
pub fn event(ev: CtEvent) {
    if let Some(c) = STATS.get_ptr_mut(ev as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}

/// Adds one to the datapath's shared `inserted` or `deleted` count.
#[inline(never)]
fn count(deleted: bool) {
    if let Some(c) = COUNT.get_ptr_mut(CT_COUNT_DATAPATH) {
        let field = unsafe {
            if deleted {
                &raw mut (*c).deleted
            } else {
                &raw mut (*c).inserted
            }
        };
        // A BPF atomic add: the target has no compare-and-swap, so no `AtomicU64`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, 1) };
    }
}

/// Deletes `key`'s entry; counted only if this call removed it (another CPU may have).
#[inline(never)]
pub fn delete(key: &CtKey, why: CtEvent) {
    if CT.remove(key).is_ok() {
        count(true);
        event(why);
    }
}

/// Whether the table is below its admission limit, by the counts of every slot.
#[inline(never)]
fn has_room() -> bool {
    let (mut ins, mut del) = (0u64, 0u64);
    let mut slot = 0;
    while slot < CT_COUNT_SLOTS {
        if let Some(c) = COUNT.get(slot) {
            ins = ins.wrapping_add(c.inserted);
            del = del.wrapping_add(c.deleted);
        }
        slot += 1;
    }
    let limit = match configured() {
        Some(c) => c.max_entries,
        None => DEFAULT_MAX_ENTRIES,
    };
    ins.saturating_sub(del) < limit as u64
}

/// Why an insert did not happen.
pub enum InsertError {
    /// At the admission limit, or the map refused.
    Full,
}

/// Inserts `sc.entry` under `sc.key` (`sc` is the per-CPU scratch slot) if the table is
/// below its admission limit. Never replaces an entry: another CPU's insert of the same
/// flow wins, and this packet goes on with it.
#[inline(never)]
pub fn insert(sc: &Scratch) -> Result<(), InsertError> {
    if !admit() {
        return Err(InsertError::Full);
    }
    match sluice_ct_insert_unique() {
        INSERTED => {
            if sc.entry.flags & CT_MIDSTREAM != 0 {
                event(CtEvent::Midstream);
            }
            Ok(())
        }
        TAKEN => {
            event(CtEvent::InsertRaced);
            Ok(())
        }
        _ => Err(InsertError::Full),
    }
}

/// Whether a packet (from the originator or not, with `tcp_flags`) of the flow of `e`
/// would change nothing in it (the security groups' fast path, `sg.rs`): the entry took
/// the full path less than [`CT_FRESH_JIFFIES`] ago (so it cannot have expired), no TCP
/// state to advance, a reply already seen.
#[inline(always)]
pub fn steady(e: &CtEntry, from_orig: bool, proto: u8, tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && (proto != IPPROTO_TCP || e.state == CtState::Established as u8)
        && (from_orig || e.flags & CT_SEEN_REPLY != 0)
        && jiffies().wrapping_sub(e.touched) < CT_FRESH_JIFFIES
}

/// Advances a live entry for a packet from the originator or not; true when the packet
/// ended the connection (RST) and the entry should go.
#[inline(never)]
pub fn track(e: &mut CtEntry, from_orig: bool, proto: u8, tcp_flags: u8, now: u64) -> bool {
    if proto == IPPROTO_TCP {
        e.track_tcp(from_orig, tcp_flags);
        if tcp_flags & TCP_RST != 0 {
            return true;
        }
    } else {
        e.track_datagram(from_orig);
    }
    e.touch(now);
    e.touched = jiffies();
    false
}

/// [`sluice_ct_insert_unique`]: inserted.
pub const INSERTED: u32 = 0;
/// [`sluice_ct_insert_unique`]: the key holds another entry.
pub const TAKEN: u32 = 1;
/// [`sluice_ct_insert_unique`]: at the admission limit, or the map refused.
pub const NO_ROOM: u32 = 2;

/// Whether a new entry may be inserted (the table is below its admission limit); a
/// refusal is counted.
#[inline(never)]
pub fn admit() -> bool {
    if has_room() {
        return true;
    }
    event(CtEvent::Full);
    false
}

/// Inserts the scratch slot's entry under its key only if the key is free (the caller
/// checked [`admit`]); a taken key is for the caller to judge (NAT's port search: try
/// another port; [`insert`]: another CPU's insert of the same flow). A global function:
/// the verifier checks it once, not once per caller and path.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sluice_ct_insert_unique() -> u32 {
    let Some(sc) = scratch() else {
        return NO_ROOM;
    };
    // By reference: by value, the key and entry would be copied to the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let res = CT.insert(&sc.key, &sc.entry, BPF_NOEXIST as u64);
    match res {
        Ok(()) => {
            count(false);
            event(CtEvent::Inserted);
            INSERTED
        }
        Err(err) if err == -EEXIST => TAKEN,
        Err(_) => {
            event(CtEvent::InsertFailed);
            NO_ROOM
        }
    }
}

/// The entry of the scratch flow under `vni` (null: none), with 0 or a drop reason's
/// index. When an end is `filtered` the security groups keep the entry; otherwise this
/// does as they would (expired: deleted; live: tracked; missing: inserted if
/// `may_insert` and the packet may open a flow), so a translated flow (NAT's private
/// entry, the balancer's translated one) has its state either way. A pair, not an
/// `Option`: LLVM leaves a `None`'s payload undefined, and the verifier refuses to copy
/// an unwritten register.
#[inline(always)]
pub fn flow_entry(
    sc: &mut Scratch,
    vni: u32,
    filtered: bool,
    may_insert: bool,
) -> (*mut CtEntry, u32) {
    let none = core::ptr::null_mut();
    let f = sc.flow;
    let (key, src_is_a) = CtKey::new(vni, f.proto, f.src, f.sport, f.dst, f.dport);
    sc.key = key;
    // ICMP errors and fragments only read the entry.
    if filtered || f.track == TRACK_NONE {
        return (lookup(&sc.key).unwrap_or(none), 0);
    }
    if let Some(e) = lookup(&sc.key) {
        let e_ref = unsafe { &mut *e };
        let from_orig = e_ref.from_orig(src_is_a);
        if steady(e_ref, from_orig, f.proto, f.tcp_flags) {
            return (e, 0);
        }
        let now = now();
        if !expired(e_ref, f.proto, now) {
            if track(e_ref, from_orig, f.proto, f.tcp_flags, now) {
                delete(&sc.key, CtEvent::CollectedRst);
                return (none, 0);
            }
            return (e, 0);
        }
        delete(&sc.key, CtEvent::CollectedExpired);
    }
    if !may_insert || f.track != TRACK_INSERT {
        return (none, 0);
    }
    sc.entry = CtEntry::new(now(), f.proto, src_is_a, f.tcp_flags);
    sc.entry.touched = jiffies();
    match insert(sc) {
        Ok(()) => (lookup(&sc.key).unwrap_or(none), 0),
        Err(InsertError::Full) => (none, Reason::DropCtFull.index()),
    }
}
