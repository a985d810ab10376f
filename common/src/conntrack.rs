//! Connection tracking ABI: the per-host connection table that makes security groups
//! stateful, and that NAT and the load balancer extend (their links live in [`CtEntry`]'s
//! `nat` and `lb`, in room reserved from the start, so they did not resize the pinned map;
//! their own entries use key spaces outside the 24-bit VNIs: `NAT_VNI`, `vni | LB_VNI`).
//!
//! - One entry per flow and VNI: the key is the 5-tuple *normalized* (lower (address,
//!   port) endpoint first, [`CtKey::new`]), so both directions find it with one lookup;
//!   [`CT_ORIG_IS_A`] remembers which endpoint opened it. The VNI is the one of the local
//!   NIC the entry filters for (a flow between two local NICs of different VPCs, over a
//!   peering, has an entry under each VNI). ICMP echo uses the identifier as both ports;
//!   other ICMP messages are not tracked.
//! - Value: state, timestamps, per local side the ifindex and policy id the flow was
//!   admitted under (see [`crate::sg`]: a differing id forces a re-check), flags.
//! - TCP follows SYN → SYN-ACK → ACK → FIN/FIN → time-wait, and RST; each state has its
//!   timeout ([`CtConfig`]); UDP, ICMP and other protocols one each. A TCP packet without
//!   SYN and without an entry that the policy allows is picked up as established
//!   ([`CT_MIDSTREAM`]), so an agent restart or a map rebuild does not cut connections.
//!
//! Capacity. The map is an LRU hash sized [`ct_map_size`]: larger than the admission
//! limit [`CtConfig::max_entries`], because the kernel's LRU keeps per-CPU free lists and
//! evicts in batches before the map is nominally full. The datapath admits a new flow only
//! while the entries counted in [`maps::COUNT`] are below the limit; otherwise the packet
//! is dropped and counted ([`CtEvent::Full`]). Inserts use `BPF_NOEXIST` (a race with
//! another CPU inserting the same flow finds the winner's entry), and existing entries
//! are updated in place through the lookup pointer, never with a map update (which on an
//! LRU map allocates a new node and may evict another flow). So no entry is overwritten by
//! another flow; LRU eviction is only the safety net if the count drifts.
//!
//! Collection. The datapath deletes an entry on RST and when a lookup finds it expired;
//! the agent sweeps expired entries periodically. The datapath counts its inserts and
//! deletes in slot [`CT_COUNT_DATAPATH`] of [`maps::COUNT`] (atomic adds), the sweeper its
//! deletes in [`CT_COUNT_USERSPACE`] (its only writer; `inserted` there counts entries
//! userspace wrote itself, e.g. a benchmark's fill); entries = Σ inserted − Σ deleted over
//! the slots ([`CtCount::entries`]). A sweep that counts fewer entries than that
//! attributes the difference to LRU evictions and adds it to the `deleted` of
//! [`CT_COUNT_EVICTED`], so evictions stay visible apart from collections.
//!
//! Time is `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC). `last_seen_ns` is written only
//! when it is [`CT_TOUCH_NS`] old, so a busy flow dirties its entry once a second, not per
//! packet; timeouts are therefore accurate to a second.
//!
//! Fast path. Most packets of a live flow change nothing: an established TCP segment
//! without SYN/FIN/RST, a datagram whose reply was seen. For those the datapath does one
//! lookup and compares the entry's policy ids and the `touched` jiffies the full path last
//! wrote ([`CT_FRESH_JIFFIES`], at most a second: such an entry cannot have expired, as
//! timeouts are at least [`CT_TOUCH_NS`]); no clock read, no write. Everything else (new
//! flows, state changes, a changed policy id, an entry idle for a while, ICMP) takes the
//! full path.
//!
//! An end that is not a filtered NIC of this host (remote, or its slot lacks
//! `NIC_SG_ENFORCED`) is recorded as ifindex 0 and policy 0: when it becomes a filtered
//! local NIC, the ifindex differs and the flow is re-checked.

use crate::vpc::Ipv4;

/// Key of [`maps::CONNTRACK`]. Endpoint `a` is the lower of (address, port) compared as
/// big-endian numbers; ports are in network order (ICMP echo: the identifier, twice).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub vni: u32,
    pub addr_a: Ipv4,
    pub addr_b: Ipv4,
    pub port_a: [u8; 2],
    pub port_b: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key of a packet's flow, and whether the packet's source is endpoint `a`.
    #[inline(always)]
    pub fn new(
        vni: u32,
        proto: u8,
        src: Ipv4,
        sport: [u8; 2],
        dst: Ipv4,
        dport: [u8; 2],
    ) -> (CtKey, bool) {
        let s = ((u32::from_be_bytes(src) as u64) << 16) | u16::from_be_bytes(sport) as u64;
        let d = ((u32::from_be_bytes(dst) as u64) << 16) | u16::from_be_bytes(dport) as u64;
        let src_is_a = s <= d;
        let (addr_a, port_a, addr_b, port_b) = if src_is_a {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        let mut key = CtKey {
            vni,
            addr_a,
            addr_b,
            port_a,
            port_b,
            proto,
            _pad: [0; 3],
        };
        // Protocol and padding as one aligned word: LLVM otherwise zeroes the 3 pad bytes
        // with a call to `memset`, an out-of-line subprogram in BPF.
        // SAFETY: `proto` is at offset 16 of a 4-aligned struct, followed by the pad.
        unsafe {
            (&raw mut key.proto)
                .cast::<u32>()
                .write(u32::from_ne_bytes([proto, 0, 0, 0]))
        };
        (key, src_is_a)
    }

    /// The originator's and the responder's (address, port), for an entry whose
    /// originator is endpoint `a` iff `orig_is_a` ([`CT_ORIG_IS_A`]).
    #[inline(always)]
    pub fn ends(&self, orig_is_a: bool) -> ((Ipv4, [u8; 2]), (Ipv4, [u8; 2])) {
        let a = (self.addr_a, self.port_a);
        let b = (self.addr_b, self.port_b);
        if orig_is_a {
            (a, b)
        } else {
            (b, a)
        }
    }
}

/// Connection states (`CtEntry::state`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    /// TCP: the originator's SYN seen.
    SynSent = 1,
    /// TCP: the responder's SYN-ACK seen.
    SynRecv = 2,
    /// TCP: handshake completed (or picked up mid-stream).
    Established = 3,
    /// TCP: one side sent FIN.
    FinWait = 4,
    /// TCP: both sides sent FIN.
    TimeWait = 5,
    /// TCP: RST seen (the datapath deletes such entries; the state covers a lost race).
    Close = 6,
    /// UDP, ICMP echo and other protocols.
    Datagram = 7,
}

impl CtState {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::SynSent),
            2 => Some(Self::SynRecv),
            3 => Some(Self::Established),
            4 => Some(Self::FinWait),
            5 => Some(Self::TimeWait),
            6 => Some(Self::Close),
            7 => Some(Self::Datagram),
            _ => None,
        }
    }

    /// Stable snake_case name (listings, JSON).
    pub const fn name(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::SynRecv => "syn_recv",
            Self::Established => "established",
            Self::FinWait => "fin_wait",
            Self::TimeWait => "time_wait",
            Self::Close => "close",
            Self::Datagram => "datagram",
        }
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Endpoint `a` of the key opened the flow.
pub const CT_ORIG_IS_A: u8 = 1;
/// A packet from the responder was seen.
pub const CT_SEEN_REPLY: u8 = 2;
/// A policy re-check denied the flow: its packets are dropped and the entry expires with
/// the close timeout unless a later re-check allows it again.
pub const CT_REVOKED: u8 = 4;
/// TCP entry created from a packet without SYN.
pub const CT_MIDSTREAM: u8 = 8;

/// Value of [`maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// The originator's egress policy id when admitted ([`crate::sg::NicSg::version`]),
    /// meaningful when `egress_ifindex != 0` (the originator is a NIC on this host).
    pub egress_policy: u64,
    /// The responder's ingress policy id, meaningful when `ingress_ifindex != 0`.
    pub ingress_policy: u64,
    pub egress_ifindex: u32,
    pub ingress_ifindex: u32,
    /// A [`CtState`] discriminant.
    pub state: u8,
    /// `CT_*` flags.
    pub flags: u8,
    /// TCP flags seen from the originator and from the responder (ORed).
    pub tcp_orig: u8,
    pub tcp_reply: u8,
    /// Low 32 bits of the kernel's jiffies when the datapath last took the full path for
    /// this flow: its fast path, which reads no clock but jiffies (inlined, no call),
    /// runs while this is under [`CT_FRESH_JIFFIES`] old. 0 from userspace.
    pub touched: u32,
    /// The NAT translation of a translated flow ([`crate::nat::NatLink`]); zero otherwise.
    pub nat: crate::nat::NatLink,
    /// The load balancer's link of a balanced flow ([`crate::lb::LbLink`]); zero
    /// otherwise.
    pub lb: crate::lb::LbLink,
}

impl CtEntry {
    /// A new entry for a flow whose first packet was sent by endpoint `a` iff `src_is_a`.
    #[inline(always)]
    pub fn new(now_ns: u64, proto: u8, src_is_a: bool, tcp_flags: u8) -> CtEntry {
        let mut e = CtEntry {
            created_ns: now_ns,
            last_seen_ns: now_ns,
            state: CtState::Datagram as u8,
            flags: if src_is_a { CT_ORIG_IS_A } else { 0 },
            ..Default::default()
        };
        if proto == crate::proto::IPPROTO_TCP {
            e.tcp_orig = tcp_flags;
            if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
                e.state = CtState::SynSent as u8;
            } else {
                e.state = CtState::Established as u8;
                e.flags |= CT_MIDSTREAM;
            }
        }
        e
    }

    /// Whether a packet whose source is endpoint `a` iff `src_is_a` comes from the
    /// originator.
    #[inline(always)]
    pub fn from_orig(&self, src_is_a: bool) -> bool {
        (self.flags & CT_ORIG_IS_A != 0) == src_is_a
    }

    /// Advance the TCP state for a packet with `flags` from the originator or not.
    #[inline(always)]
    pub fn track_tcp(&mut self, from_orig: bool, flags: u8) {
        let state = CtState::from_u8(self.state).unwrap_or(CtState::Established);
        let reopen = from_orig && flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
        if reopen && matches!(state, CtState::TimeWait | CtState::Close) {
            // The tuple is reused for a new connection.
            self.tcp_orig = flags;
            self.tcp_reply = 0;
            self.state = CtState::SynSent as u8;
            return;
        }
        if from_orig {
            self.tcp_orig |= flags;
        } else {
            self.tcp_reply |= flags;
            self.flags |= CT_SEEN_REPLY;
        }
        let next = if flags & TCP_RST != 0 {
            CtState::Close
        } else {
            match state {
                CtState::SynSent
                    if !from_orig && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK =>
                {
                    CtState::SynRecv
                }
                CtState::SynRecv if from_orig && flags & (TCP_SYN | TCP_ACK) == TCP_ACK => {
                    if flags & TCP_FIN != 0 {
                        CtState::FinWait
                    } else {
                        CtState::Established
                    }
                }
                CtState::Established if flags & TCP_FIN != 0 => CtState::FinWait,
                CtState::FinWait if self.tcp_orig & self.tcp_reply & TCP_FIN != 0 => {
                    CtState::TimeWait
                }
                s => s,
            }
        };
        self.state = next as u8;
    }

    /// Note a packet from the responder of a non-TCP flow.
    #[inline(always)]
    pub fn track_datagram(&mut self, from_orig: bool) {
        if !from_orig {
            self.flags |= CT_SEEN_REPLY;
        }
    }

    /// How long the entry lives without packets, in its current state.
    #[inline(always)]
    pub fn timeout_ns(&self, proto: u8, cfg: &CtConfig) -> u64 {
        if self.flags & CT_REVOKED != 0 {
            return cfg.tcp_close_ns;
        }
        match proto {
            crate::proto::IPPROTO_TCP => match CtState::from_u8(self.state) {
                Some(CtState::SynSent | CtState::SynRecv) => cfg.tcp_syn_ns,
                Some(CtState::Established) => cfg.tcp_established_ns,
                Some(CtState::FinWait) => cfg.tcp_fin_ns,
                // An SNAT flow's public (EIP, port) is not handed to another flow while
                // the far end may still hold this connection in TIME_WAIT.
                Some(CtState::TimeWait) if self.nat.kind == crate::nat::LINK_SNAT => {
                    cfg.tcp_close_ns.max(cfg.nat_time_wait_ns)
                }
                _ => cfg.tcp_close_ns,
            },
            crate::proto::IPPROTO_UDP => cfg.udp_ns,
            crate::proto::IPPROTO_ICMP => cfg.icmp_ns,
            _ => cfg.other_ns,
        }
    }

    #[inline(always)]
    pub fn is_expired(&self, now_ns: u64, proto: u8, cfg: &CtConfig) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto, cfg)
    }

    /// Record a packet at `now_ns`; writes only once per [`CT_TOUCH_NS`].
    #[inline(always)]
    pub fn touch(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_seen_ns) >= CT_TOUCH_NS {
            self.last_seen_ns = now_ns;
        }
    }
}

/// Granularity of `last_seen_ns` updates.
pub const CT_TOUCH_NS: u64 = 1_000_000_000;
/// How long the datapath's fast path trusts an entry without reading the clock: 100
/// jiffies, at most [`CT_TOUCH_NS`] for any kernel (HZ is at least 100), so an entry
/// within it cannot have expired (timeouts are at least [`CT_TOUCH_NS`]).
pub const CT_FRESH_JIFFIES: u32 = 100;

/// Value of [`maps::CONFIG`] (a one-slot array). A zero `max_entries` means "not
/// configured": the datapath uses [`CtConfig::DEFAULT`]. Timeouts are at least
/// [`CT_TOUCH_NS`]: the datapath's fast path takes an entry touched less than that long
/// ago to be alive without reading its timeout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtConfig {
    /// Admission limit: new flows are dropped while this many entries exist.
    pub max_entries: u32,
    pub flags: u32,
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_fin_ns: u64,
    /// Time-wait, after RST, and revoked entries.
    pub tcp_close_ns: u64,
    pub udp_ns: u64,
    pub icmp_ns: u64,
    pub other_ns: u64,
    /// Time-wait of a TCP flow translated by SNAT (both its entries; at least
    /// `tcp_close_ns`): 2 x MSL, as long as the far end may keep the connection in
    /// TIME_WAIT and answer a new SYN on the same public tuple for the old connection.
    pub nat_time_wait_ns: u64,
}

const S: u64 = 1_000_000_000;

impl CtConfig {
    /// What the datapath applies: `self`, or [`CtConfig::DEFAULT`] when not configured.
    #[inline(always)]
    pub fn effective(&self) -> &CtConfig {
        if self.max_entries == 0 {
            &CtConfig::DEFAULT
        } else {
            self
        }
    }

    pub const DEFAULT: CtConfig = CtConfig {
        max_entries: DEFAULT_MAX_ENTRIES,
        flags: 0,
        tcp_syn_ns: 60 * S,
        tcp_established_ns: 6 * 3600 * S,
        tcp_fin_ns: 30 * S,
        tcp_close_ns: 10 * S,
        udp_ns: 60 * S,
        icmp_ns: 30 * S,
        other_ns: 60 * S,
        nat_time_wait_ns: 60 * S,
    };
}

/// Default admission limit.
pub const DEFAULT_MAX_ENTRIES: u32 = 1 << 20;
/// Extra LRU capacity per possible CPU: a per-CPU local free list holds up to 128 nodes
/// and eviction works in batches, so the map is made larger than the admission limit.
pub const CT_HEADROOM_PER_CPU: u32 = 256;

/// `max_entries` of [`maps::CONNTRACK`] for an admission limit and CPU count.
pub const fn ct_map_size(max_entries: u32, possible_cpus: u32) -> u32 {
    max_entries.saturating_add(possible_cpus.saturating_mul(CT_HEADROOM_PER_CPU))
}

/// Value of [`maps::COUNT`], a [`CT_COUNT_SLOTS`]-slot array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCount {
    pub inserted: u64,
    pub deleted: u64,
}

impl CtCount {
    /// Entries in the table according to the counts of every slot (wrapping: slots are
    /// read one by one while other CPUs add, so a transient negative reads as 0).
    #[inline(always)]
    pub fn entries(slots: &[CtCount]) -> u64 {
        let (mut ins, mut del) = (0u64, 0u64);
        let mut i = 0;
        while i < slots.len() {
            ins = ins.wrapping_add(slots[i].inserted);
            del = del.wrapping_add(slots[i].deleted);
            i += 1;
        }
        ins.saturating_sub(del)
    }
}

/// Slot the datapath adds to (atomically).
pub const CT_COUNT_DATAPATH: u32 = 0;
/// Slot the agent's sweeper owns: entries it deleted (or, for a fill, inserted).
pub const CT_COUNT_USERSPACE: u32 = 1;
/// Slot the sweeper owns for entries the LRU evicted (found missing by a sweep).
pub const CT_COUNT_EVICTED: u32 = 2;
/// Slots in [`maps::COUNT`] (one spare).
pub const CT_COUNT_SLOTS: u32 = 4;

/// Connection-table events, counted per CPU in [`maps::STATS`]; the discriminant is the
/// slot. Appended, never inserted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtEvent {
    /// A new entry was inserted.
    Inserted = 0,
    /// Another CPU inserted the same flow first; its entry was used.
    InsertRaced,
    /// A new flow was refused: the table is at its admission limit.
    Full,
    /// The map refused an insert (other than a race).
    InsertFailed,
    /// Deleted by the datapath on RST.
    CollectedRst,
    /// Found expired by a lookup and deleted.
    CollectedExpired,
    /// A policy id changed and the re-check allowed the flow.
    Rechecked,
    /// A policy id changed and the re-check denied the flow.
    Revoked,
    /// A TCP flow picked up without SYN.
    Midstream,
    /// A balanced connection's SYN took over the translated tuple of one that had ended
    /// (time-wait or closed), as the backend's own stack lets a SYN reuse it.
    Reused,
}

impl CtEvent {
    pub const COUNT: u32 = CtEvent::Reused as u32 + 1;
}

/// Slots in [`maps::STATS`]: room for events added later.
pub const CT_STATS_SLOTS: u32 = 32;

/// Map names, as the eBPF object declares them (all listed in [`crate::maps::ALL`]).
pub mod maps {
    /// LRU hash of [`super::CtEntry`] by [`super::CtKey`], [`super::ct_map_size`] entries.
    pub const CONNTRACK: &str = "SLUICE_CT";
    /// One-slot array of [`super::CtConfig`].
    /// Versioned like [`SCRATCH`]: the value grew with the NAT time-wait (V2).
    pub const CONFIG: &str = "SLUICE_CT_CONFIG_V2";
    /// Array of [`super::CtCount`], [`super::CT_COUNT_SLOTS`] slots.
    pub const COUNT: &str = "SLUICE_CT_COUNT";
    /// Per-CPU array of `u64` by [`super::CtEvent`], [`super::CT_STATS_SLOTS`] slots.
    pub const STATS: &str = "SLUICE_CT_STATS";
    /// Per-CPU one-slot array of [`super::CtEntry`]: where the datapath builds a new entry
    /// (its stack has no room); nothing to read.
    /// Versioned: the slot grew with NAT (V2) and the load balancer (V3), and a pinned map
    /// of an old size must not be reused by a newer program (a daemon upgrade creates the
    /// new one beside it).
    pub const SCRATCH: &str = "SLUICE_CT_SCRATCH_V3";
    pub const ALL: [&str; 5] = [CONNTRACK, CONFIG, COUNT, STATS, SCRATCH];
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 20);
const _: () = assert!(core::mem::offset_of!(CtKey, proto) == 16);
const _: () = assert!(core::mem::align_of::<CtKey>() == 4);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);
const _: () = assert!(core::mem::align_of::<CtEntry>() == 8);
const _: () = assert!(core::mem::size_of::<CtConfig>() == 72);
const _: () = assert!(core::mem::size_of::<CtCount>() == 16);
const _: () = assert!(CtEvent::COUNT <= CT_STATS_SLOTS);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtConfig {}
    unsafe impl aya::Pod for CtCount {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

    const A: Ipv4 = [10, 0, 1, 4];
    const B: Ipv4 = [10, 0, 2, 9];

    #[test]
    fn both_directions_share_one_key() {
        let (k1, a1) = CtKey::new(7, IPPROTO_TCP, B, [0x9c, 0x40], A, [0, 80]);
        let (k2, a2) = CtKey::new(7, IPPROTO_TCP, A, [0, 80], B, [0x9c, 0x40]);
        assert_eq!(k1, k2);
        assert_eq!((a1, a2), (false, true));
        assert_eq!((k1.addr_a, k1.port_a), (A, [0, 80]));
        // Same address: the port orders the endpoints.
        let (k, src_is_a) = CtKey::new(7, IPPROTO_UDP, A, [0, 9], A, [0, 8]);
        assert!(!src_is_a);
        assert_eq!(k.port_a, [0, 8]);
        // The VNI separates tenants.
        assert_ne!(CtKey::new(8, IPPROTO_TCP, A, [0, 80], B, [0, 1]).0, k1);
    }

    /// Entry for a flow opened by B (endpoint b of the key).
    fn syn_from_b() -> (CtEntry, bool) {
        let (_, b_is_a) = CtKey::new(1, IPPROTO_TCP, B, [0x9c, 0x40], A, [0, 80]);
        (CtEntry::new(0, IPPROTO_TCP, b_is_a, TCP_SYN), b_is_a)
    }

    fn state(e: &CtEntry) -> CtState {
        CtState::from_u8(e.state).unwrap()
    }

    #[test]
    fn tcp_handshake_and_close() {
        let (mut e, b_is_a) = syn_from_b();
        assert_eq!(state(&e), CtState::SynSent);
        assert!(e.from_orig(b_is_a) && !e.from_orig(!b_is_a));
        e.track_tcp(true, TCP_SYN); // retransmitted SYN
        assert_eq!(state(&e), CtState::SynSent);
        e.track_tcp(false, TCP_SYN | TCP_ACK);
        assert_eq!(state(&e), CtState::SynRecv);
        assert!(e.flags & CT_SEEN_REPLY != 0);
        e.track_tcp(true, TCP_ACK);
        assert_eq!(state(&e), CtState::Established);
        e.track_tcp(false, TCP_ACK | TCP_FIN);
        assert_eq!(state(&e), CtState::FinWait);
        e.track_tcp(false, TCP_ACK | TCP_FIN); // the same side again
        assert_eq!(state(&e), CtState::FinWait);
        e.track_tcp(true, TCP_ACK | TCP_FIN);
        assert_eq!(state(&e), CtState::TimeWait);
        // A new SYN from the originator reuses the tuple.
        e.track_tcp(true, TCP_SYN);
        assert_eq!(state(&e), CtState::SynSent);
        assert_eq!((e.tcp_orig, e.tcp_reply), (TCP_SYN, 0));
    }

    #[test]
    fn rst_closes_from_any_state_and_the_handshake_needs_the_right_side() {
        let (mut e, _) = syn_from_b();
        e.track_tcp(true, TCP_SYN | TCP_ACK); // SYN-ACK from the originator: no progress
        assert_eq!(state(&e), CtState::SynSent);
        e.track_tcp(false, TCP_RST);
        assert_eq!(state(&e), CtState::Close);
        let (mut e, _) = syn_from_b();
        e.track_tcp(false, TCP_SYN | TCP_ACK);
        e.track_tcp(false, TCP_ACK); // ACK from the responder does not complete it
        assert_eq!(state(&e), CtState::SynRecv);
    }

    #[test]
    fn a_packet_without_syn_is_picked_up_mid_stream() {
        let e = CtEntry::new(0, IPPROTO_TCP, true, TCP_ACK);
        assert_eq!(state(&e), CtState::Established);
        assert!(e.flags & CT_MIDSTREAM != 0);
        let u = CtEntry::new(0, IPPROTO_UDP, true, 0);
        assert_eq!(state(&u), CtState::Datagram);
    }

    #[test]
    fn timeouts_follow_state_protocol_and_revocation() {
        let cfg = CtConfig::DEFAULT;
        let (mut e, _) = syn_from_b();
        assert_eq!(e.timeout_ns(IPPROTO_TCP, &cfg), cfg.tcp_syn_ns);
        e.track_tcp(false, TCP_SYN | TCP_ACK);
        e.track_tcp(true, TCP_ACK);
        assert_eq!(e.timeout_ns(IPPROTO_TCP, &cfg), cfg.tcp_established_ns);
        assert!(!e.is_expired(cfg.tcp_established_ns, IPPROTO_TCP, &cfg));
        assert!(e.is_expired(cfg.tcp_established_ns + 1, IPPROTO_TCP, &cfg));
        e.flags |= CT_REVOKED;
        assert_eq!(e.timeout_ns(IPPROTO_TCP, &cfg), cfg.tcp_close_ns);
        let u = CtEntry::new(0, IPPROTO_UDP, true, 0);
        assert_eq!(u.timeout_ns(IPPROTO_UDP, &cfg), cfg.udp_ns);
        let i = CtEntry::new(0, IPPROTO_ICMP, true, 0);
        assert_eq!(i.timeout_ns(IPPROTO_ICMP, &cfg), cfg.icmp_ns);
        assert_eq!(i.timeout_ns(47, &cfg), cfg.other_ns);
    }

    #[test]
    fn an_snat_flows_time_wait_lasts_the_nat_time_wait() {
        let cfg = CtConfig::DEFAULT;
        let closed = |kind| {
            let (mut e, _) = syn_from_b();
            e.nat.kind = kind;
            e.track_tcp(false, TCP_SYN | TCP_ACK);
            e.track_tcp(true, TCP_ACK);
            e.track_tcp(false, TCP_FIN | TCP_ACK);
            e.track_tcp(true, TCP_FIN | TCP_ACK);
            assert_eq!(state(&e), CtState::TimeWait);
            e
        };
        let plain = closed(crate::nat::LINK_NONE);
        assert_eq!(plain.timeout_ns(IPPROTO_TCP, &cfg), cfg.tcp_close_ns);
        let snat = closed(crate::nat::LINK_SNAT);
        assert_eq!(snat.timeout_ns(IPPROTO_TCP, &cfg), 60 * S);
        assert!(!snat.is_expired(60 * S, IPPROTO_TCP, &cfg));
        assert!(snat.is_expired(60 * S + 1, IPPROTO_TCP, &cfg));
        // Never shorter than a plain flow's.
        let short = CtConfig {
            nat_time_wait_ns: S,
            ..cfg
        };
        assert_eq!(snat.timeout_ns(IPPROTO_TCP, &short), cfg.tcp_close_ns);
        // A DNAT flow's public tuple is the published one: nothing to hold.
        let dnat = closed(crate::nat::LINK_DNAT);
        assert_eq!(dnat.timeout_ns(IPPROTO_TCP, &cfg), cfg.tcp_close_ns);
    }

    #[test]
    fn touch_writes_at_most_once_a_second() {
        let mut e = CtEntry::new(5, IPPROTO_UDP, true, 0);
        e.touch(5 + CT_TOUCH_NS - 1);
        assert_eq!(e.last_seen_ns, 5);
        e.touch(5 + CT_TOUCH_NS);
        assert_eq!(e.last_seen_ns, 5 + CT_TOUCH_NS);
    }

    #[test]
    fn every_security_group_and_connection_map_is_pinned() {
        for name in maps::ALL.iter().chain(crate::sg::maps::ALL.iter()) {
            assert!(
                crate::maps::ALL.contains(name),
                "{name} missing from maps::ALL"
            );
        }
    }

    #[test]
    fn the_map_has_headroom_over_the_admission_limit() {
        assert_eq!(ct_map_size(1 << 20, 4), (1 << 20) + 1024);
        assert_eq!(ct_map_size(u32::MAX, 4), u32::MAX);
    }
}
