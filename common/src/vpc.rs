//! VPC overlay ABI: where each NIC lives, per-VPC route tables, and this host's underlay.
//!
//! Every lookup is keyed by the VPC's VNI, never by IP alone, so tenants may reuse the same
//! addresses. IPv4 addresses are `[u8; 4]` in network order (as on the wire), so neither side
//! has to think about byte order.

/// An Ethernet address.
pub type Mac = [u8; 6];
/// An IPv4 address, network order.
pub type Ipv4 = [u8; 4];

/// Index into [`crate::maps::PORTS`] (an array of [`MAX_PORTS`] slots): the ifindex of the
/// host side of a VM's interface. An array, not a hash: its lookup is inlined by the
/// verifier, and every VM packet does one. Interfaces with ifindex >= [`MAX_PORTS`] cannot
/// be VM ports (the agent refuses them).
pub type PortKey = u32;

/// A VM NIC attached to this host, seen from the host side of its interface. A slot with
/// `vni == 0` is empty (VNI 0 is never allocated): its interface is not a VM port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port {
    pub vni: u32,
    /// The NIC's own addresses: anything else from this port is spoofed.
    pub ip: Ipv4,
    pub mac: Mac,
    /// `PORT_*` flags.
    pub flags: u16,
    /// The NIC's subnet: traffic leaving it is routed (TTL decremented).
    pub subnet: Ipv4,
    pub subnet_mask: Ipv4,
    /// The VPC's CIDR: ARP for any address in it is answered with the router MAC.
    pub vpc: Ipv4,
    pub vpc_mask: Ipv4,
}

/// The NIC is an appliance (router, firewall): it forwards others' packets, so its source
/// IP is not checked (MAC still is). The cloud's "source/destination check: off".
pub const PORT_NO_SOURCE_CHECK: u16 = 1;
/// The NIC is a load balancer backend ([`ENDPOINT_LB_BACKEND`] for its local port).
pub const PORT_LB_BACKEND: u16 = 2;

/// Key of [`crate::maps::ENDPOINTS`]: a NIC's address inside its VPC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub vni: u32,
    pub ip: Ipv4,
}

/// The endpoint is a NIC on this host (deliver to `ifindex`).
pub const ENDPOINT_LOCAL: u32 = 1;
/// The endpoint belongs to a peered VPC: valid as the source of traffic arriving under this
/// VNI, never as a destination (delivery into a peer always routes through its own VNI).
pub const ENDPOINT_PEER_SOURCE: u32 = 2;
/// The longest-prefix match for this endpoint's own (VNI, address) is a `Local` route, so
/// a packet to it in its VNI is forwarded to it without the route lookup: the result would
/// be the same. Derived by the agent from the routes (never set on peer sources); an
/// endpoint covered by a more specific custom route (a /32 to an appliance, a blackhole)
/// lacks it and takes the route lookup. Absent means "look the route up": always safe.
pub const ENDPOINT_DIRECT: u32 = 4;
/// The NIC is an appliance (source check off, or some route's next hop): it may forward
/// packets with any source address. The agent turns these into
/// [`crate::maps::APPLIANCE_VTEPS`] entries; the datapath does not read the flag.
pub const ENDPOINT_APPLIANCE: u32 = 8;
/// The address is a load balancer's VIP (no NIC has it): a packet to it is balanced
/// (`crate::lb`). Written on every host with a NIC in the VPC.
pub const ENDPOINT_VIP: u32 = 16;
/// The NIC is a load balancer backend: a packet from it may be a reply to a balanced
/// flow, whose source becomes the VIP again at the client's host (`crate::lb`).
pub const ENDPOINT_LB_BACKEND: u32 = 32;

/// Where a NIC lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: Mac,
    /// For a remote endpoint: the underlay next-hop MAC toward `vtep` (copied from the
    /// agent's neighbour table, so encapsulation needs no second lookup); all zero while
    /// unresolved (the packet is then dropped as `drop_no_underlay_neighbor`). Zero for
    /// local endpoints and peer sources.
    pub vtep_mac: Mac,
    /// Underlay address of the host the NIC is on (this host's own for local NICs).
    pub vtep: Ipv4,
    /// Host-side ifindex when `ENDPOINT_LOCAL`, else 0.
    pub ifindex: u32,
    pub flags: u32,
}

/// Data of a route's LPM key: the VNI (big-endian, so the first 32 prefix bits select the
/// VPC) followed by the destination address. The trie prefix length is 32 + the route's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub vni: [u8; 4],
    pub ip: Ipv4,
}

impl RouteKey {
    pub const fn new(vni: u32, ip: Ipv4) -> Self {
        Self {
            vni: vni.to_be_bytes(),
            ip,
        }
    }

    /// Trie prefix length for a route of `prefix_len` bits within one VPC.
    pub const fn trie_prefix_len(prefix_len: u8) -> u32 {
        32 + prefix_len as u32
    }
}

/// What a route does with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NextHopKind {
    /// A subnet's system route: deliver to the NIC that has the destination address.
    Local = 1,
    /// Forward to an appliance NIC (`NextHop::ip`) in the same VPC, wherever it is.
    Nic = 2,
    /// Deliver to the NIC with the destination address in the peer VPC (`NextHop::vni`).
    /// Only the peer's own NICs are reachable: peerings are not transitive.
    Peering = 3,
    /// Drop.
    Blackhole = 4,
    /// Out through the VPC's NAT gateway (`crate::nat`): translated at this host and sent
    /// to the border router.
    NatGateway = 5,
}

impl NextHopKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Local),
            2 => Some(Self::Nic),
            3 => Some(Self::Peering),
            4 => Some(Self::Blackhole),
            5 => Some(Self::NatGateway),
            _ => None,
        }
    }
}

/// Value of [`crate::maps::ROUTES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// A [`NextHopKind`] discriminant.
    pub kind: u32,
    /// VNI the endpoint lookup happens in: the route's own VPC, or the peer's.
    pub vni: u32,
    /// Appliance address for `Nic`; zero otherwise.
    pub ip: Ipv4,
}

/// Value of [`crate::maps::HOST`] (a one-slot array): this host's place in the underlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Non-zero once the agent has configured the host; until then VM traffic passes.
    pub configured: u32,
    pub underlay_ifindex: u32,
    /// This host's VTEP (outer source) address and its underlay interface's MAC.
    pub vtep: Ipv4,
    pub underlay_mac: Mac,
    /// Source MAC of everything the virtual router sends to VMs, and its ARP answer.
    pub router_mac: Mac,
    /// Largest outer IPv4 packet the underlay carries; larger encapsulations are dropped.
    pub underlay_mtu: u32,
}

/// Value of [`crate::maps::UNDERLAY_NEIGHBORS`] (keyed by a remote VTEP address): the MAC to
/// send encapsulated frames for that VTEP to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayNeighbor {
    pub mac: Mac,
    pub _pad: [u8; 2],
}

/// Key of [`crate::maps::APPLIANCE_VTEPS`]: a host (`vtep`) with an appliance NIC that may
/// forward traffic into VNI `vni` (an appliance of that VPC, or of an accepted peer that
/// routes into the peering).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplianceVtepKey {
    pub vni: u32,
    pub vtep: Ipv4,
}

/// Value of [`crate::maps::APPLIANCE_VTEPS`] (presence is what counts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplianceVtep {
    pub flags: u32,
}

/// Value of [`crate::maps::VNIS`]: a VPC present on this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniInfo {
    pub flags: u32,
}

/// Spreads flows over underlay paths (ECMP, RSS) while keeping each flow on one path: a
/// murmur3-finalised mix of the inner 5-tuple (ports 0 for other protocols).
#[inline(always)]
pub fn flow_hash(src: Ipv4, dst: Ipv4, proto: u8, sport: u16, dport: u16) -> u32 {
    let mut x = u32::from_ne_bytes(src)
        ^ u32::from_ne_bytes(dst).rotate_left(16)
        ^ proto as u32
        ^ (((sport as u32) << 16) | dport as u32);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// The outer UDP source port for a flow hash: within the dynamic range.
#[inline(always)]
pub const fn vxlan_source_port(hash: u32) -> u16 {
    VXLAN_SPORT_MIN | (hash as u16 & 0x3fff)
}

/// Default capacities (entries); the daemon may size maps from its config later.
pub const MAX_PORTS: u32 = 4096;
pub const MAX_ENDPOINTS: u32 = 1 << 20;
pub const MAX_ROUTES: u32 = 1 << 20;
pub const MAX_VNIS: u32 = 1 << 16;
pub const MAX_UNDERLAY_NEIGHBORS: u32 = 1 << 16;
pub const MAX_APPLIANCE_VTEPS: u32 = 1 << 16;
/// VXLAN's UDP source port range (RFC 7348 recommends the dynamic range), spread by flow hash.
pub const VXLAN_SPORT_MIN: u16 = 49152;

const _: () = assert!(core::mem::size_of::<Port>() == 32);
const _: () = assert!(core::mem::align_of::<Port>() == 4);
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 8);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 24);
const _: () = assert!(core::mem::size_of::<RouteKey>() == 8);
const _: () = assert!(core::mem::size_of::<NextHop>() == 12);
const _: () = assert!(core::mem::size_of::<HostConfig>() == 28);
const _: () = assert!(core::mem::size_of::<UnderlayNeighbor>() == 8);
const _: () = assert!(core::mem::size_of::<VniInfo>() == 4);
const _: () = assert!(core::mem::size_of::<ApplianceVtepKey>() == 8);
const _: () = assert!(core::mem::size_of::<ApplianceVtep>() == 4);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Port {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for HostConfig {}
    unsafe impl aya::Pod for UnderlayNeighbor {}
    unsafe impl aya::Pod for VniInfo {}
    unsafe impl aya::Pod for ApplianceVtepKey {}
    unsafe impl aya::Pod for ApplianceVtep {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_key_orders_vni_first_big_endian() {
        let k = RouteKey::new(0x0001_0203, [10, 0, 0, 1]);
        assert_eq!(k.vni, [0, 1, 2, 3]);
        assert_eq!(RouteKey::trie_prefix_len(24), 56);
    }

    #[test]
    fn next_hop_kind_round_trips() {
        for k in [
            NextHopKind::Local,
            NextHopKind::Nic,
            NextHopKind::Peering,
            NextHopKind::Blackhole,
            NextHopKind::NatGateway,
        ] {
            assert_eq!(NextHopKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(NextHopKind::from_u32(0), None);
    }
}
