//! Load balancer ABI: private virtual IPs (VIPs) in front of pools of backend NICs.
//!
//! Design (the intent side is `dataplane/src/intent/lb.rs`, the compiler and table builder
//! `dataplane/src/lb/`, the datapath `ebpf/src/lb.rs`):
//!
//! - No balancer node. The client's host balances: a VM's packet to a VIP (an endpoint
//!   flagged [`crate::vpc::ENDPOINT_VIP`]) picks a backend, its destination is rewritten
//!   to the backend's (address, port), and it continues as any packet to that backend
//!   (route, security groups, VXLAN). The backend sees the real client address.
//! - Pinning (as Cilium's service entries): the first packet inserts a *forward* entry
//!   in the connection table, keyed by the client's original 5-tuple under the key space
//!   `vni | LB_VNI`, whose [`LbLink`] names the backend (slot, address, port). Every later
//!   packet follows it, whatever the tables say, while that backend is usable
//!   ([`BACKEND_USABLE`] and the same address and port in its slot); if it is not, the
//!   flow picks again. The translated flow's own entry (client to backend, under the VNI:
//!   the one the security groups keep, or the balancer's when no group filters) carries
//!   the *reverse* link (VIP, port).
//! - Replies find the translating host by themselves: they are addressed to the client,
//!   whose host is the one that translated. A backend's endpoint carries
//!   [`crate::vpc::ENDPOINT_LB_BACKEND`] (its local port [`crate::vpc::PORT_LB_BACKEND`]),
//!   and only packets from such an address look for a reverse link; the source becomes the
//!   VIP again before the client's NIC sees it.
//! - Tables. Each listener has one slot in [`maps::TABLES`], an array of maps: the inner
//!   array holds backend slots. `maglev` and `source_ip`: the Maglev lookup table (a prime
//!   number of entries, [`Listener::size`]), indexed by the flow's (or the client
//!   address's) hash. `least_conn`: the list of candidates (`size` of them, at most
//!   [`LEAST_CONN_MAX`]), scanned for the fewest active connections per weight. Userspace
//!   builds a new inner map and swaps it into the slot with one update, so a packet sees
//!   the old table or the new one, never a half-written one.
//! - Backends live in [`maps::BACKENDS`], an array indexed by a slot the controller assigns
//!   (stable while the backend exists; a reused slot holds a different address or port,
//!   which pinned flows notice). A weight-0 (draining) backend is usable but in no table:
//!   its flows continue, new ones go elsewhere. An unhealthy one is not usable, unless
//!   every backend of its listener is down and the listener fails open.
//! - Active connections per backend slot on this host ([`maps::ACTIVE`]) count forward
//!   entries: +1 when one is inserted, -1 when the translated flow reaches time-wait or
//!   close, or its entry is collected ([`LB_COUNTED`] makes the -1 happen once); the
//!   agent's sweeper recounts them from the table. `least_conn` reads them.

use crate::vpc::Ipv4;

/// The connection table's key space of forward entries: `vni | LB_VNI`, outside the
/// 24-bit VNI space and apart from NAT's [`crate::nat::NAT_VNI`].
pub const LB_VNI: u32 = 1 << 25;

/// Default (and smallest) Maglev table size: a prime.
pub const MAGLEV_SIZE: u32 = 65_537;
/// Backends of one listener at most; its Maglev table has at least 100 entries per
/// backend.
pub const MAX_LISTENER_BACKENDS: u32 = 1_000;
/// The largest Maglev table: the smallest prime >= 100 x [`MAX_LISTENER_BACKENDS`].
pub const MAGLEV_MAX_SIZE: u32 = 100_003;
/// `least_conn` candidates at most (each new flow scans them).
pub const LEAST_CONN_MAX: u32 = 64;
/// A client that is itself a backend is never balanced to itself: entries of the table
/// this far apart (mod its size) are tried instead, this many at most.
pub const SELF_STRIDE: u32 = 40_503;
pub const SELF_TRIES: u32 = 16;
/// Listeners per host (slots of [`maps::TABLES`]).
pub const MAX_LISTENERS: u32 = 4_096;
/// Backend slots (of [`maps::BACKENDS`] and [`maps::ACTIVE`]).
pub const MAX_BACKENDS: u32 = 65_536;

/// The health checkers' source range (100.64.0.0/10, carrier-grade NAT space, as public
/// clouds use): a system security-group rule lets it reach backends.
pub const HEALTH_CHECK_NET: Ipv4 = [100, 64, 0, 0];
pub const HEALTH_CHECK_PREFIX: u8 = 10;

/// The hash `source_ip` indexes its table by: the client address's alone, so every flow
/// of a client lands on the same backend.
#[inline(always)]
pub fn client_hash(ip: Ipv4) -> u32 {
    crate::vpc::flow_hash(ip, [0; 4], 0, 0, 0)
}

/// `Listener::scheduler`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheduler {
    /// Weighted consistent hashing of the 5-tuple.
    Maglev = 1,
    /// Weighted consistent hashing of the client address: affinity.
    SourceIp = 2,
    /// Fewest active connections per weight on this host.
    LeastConn = 3,
}

impl Scheduler {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Maglev),
            2 => Some(Self::SourceIp),
            3 => Some(Self::LeastConn),
            _ => None,
        }
    }
}

/// Key of [`maps::LISTENERS`]: a VIP's (VNI, address, protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub vni: u32,
    pub vip: Ipv4,
    /// Network order.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`maps::LISTENERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    /// This listener's slot in [`maps::TABLES`].
    pub table: u32,
    /// Entries of its table in use: the Maglev table's (prime) size, or the number of
    /// `least_conn` candidates. 0: nothing to pick (every backend drained, or down with
    /// `fail_closed`): new flows are dropped (`drop_lb_no_backend`).
    pub size: u32,
    /// A [`Scheduler`] discriminant.
    pub scheduler: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of [`maps::BACKENDS`] (by backend slot). An all-zero slot is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub ip: Ipv4,
    /// Network order.
    pub port: [u8; 2],
    /// 0 (draining) to 100.
    pub weight: u8,
    /// `BACKEND_*`.
    pub flags: u8,
}

/// Pinned flows may keep using the backend: it exists and is healthy (or its listener
/// fails open with every backend down).
pub const BACKEND_USABLE: u8 = 1;

/// `LbLink::kind`: not a balanced flow.
pub const LB_LINK_NONE: u8 = 0;
/// A forward entry (key under `vni | LB_VNI`, the client's original 5-tuple): `addr`,
/// `port` and `backend` name the chosen backend.
pub const LB_LINK_FORWARD: u8 = 1;
/// The translated flow's entry (client to backend, under the VNI): `addr` and `port` are
/// the VIP's; `backend` the backend slot.
pub const LB_LINK_REVERSE: u8 = 2;

/// `LbLink::flags` of a reverse link: the forward entry's active connection is still
/// counted in [`maps::ACTIVE`] (cleared when it is uncounted, so that happens once).
pub const LB_COUNTED: u8 = 1;

/// [`crate::conntrack::CtEntry::lb`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbLink {
    pub addr: Ipv4,
    /// Network order.
    pub port: [u8; 2],
    /// `LB_LINK_*`.
    pub kind: u8,
    pub flags: u8,
    /// Backend slot.
    pub backend: u32,
    pub _reserved: u32,
}

/// Map names (pinned like the others).
pub mod maps {
    /// [`super::Listener`] by [`super::ListenerKey`].
    pub const LISTENERS: &str = "SLUICE_LB_LISTENERS";
    /// Array of maps: per listener slot, an array of `u32` backend slots (its table).
    pub const TABLES: &str = "SLUICE_LB_TABLES";
    /// Array of [`super::Backend`] by backend slot.
    pub const BACKENDS: &str = "SLUICE_LB_BACKENDS";
    /// Array of `u32`: active connections per backend slot on this host.
    pub const ACTIVE: &str = "SLUICE_LB_ACTIVE";
}

/// Flag of the inner table maps (`BPF_F_INNER_MAP`): inner arrays of different sizes
/// may share the outer map.
pub const INNER_MAP_FLAGS: u32 = 1 << 12;

const _: () = assert!(core::mem::size_of::<ListenerKey>() == 12);
const _: () = assert!(core::mem::size_of::<Listener>() == 12);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<LbLink>() == 16);
const _: () = assert!(core::mem::align_of::<LbLink>() == 4);
const _: () = assert!(MAGLEV_MAX_SIZE >= 100 * MAX_LISTENER_BACKENDS);
const _: () = assert!(LB_VNI & crate::nat::NAT_VNI == 0 && LB_VNI > 0xff_ffff);

#[cfg(feature = "user")]
mod pod {
    use aya::Pod;

    use super::*;

    // SAFETY: plain #[repr(C)] structs without implicit padding.
    unsafe impl Pod for ListenerKey {}
    unsafe impl Pod for Listener {}
    unsafe impl Pod for Backend {}
    unsafe impl Pod for LbLink {}
}
