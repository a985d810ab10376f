//! NAT ABI: SNAT through a VPC's NAT gateway, DNAT port forwarding and 1:1 elastic IPs.
//!
//! Design (the intent side is `dataplane/src/intent/nat.rs`, the compiler
//! `dataplane/src/nat/`, the datapath `ebpf/src/nat.rs`):
//!
//! - No gateway node. Translation happens at the host of the VM, so a host failure takes
//!   only its own VMs' flows with it. Public traffic leaves and enters through the host's
//!   underlay interface; the fabric's border router ([`NatConfig::border_mac`]) carries it
//!   to and from the Internet and routes every EIP pool toward the hosts (ECMP: any host
//!   may receive any EIP's packet).
//! - SNAT port space per EIP: ports [`PORT_MIN`]..=65535 in blocks of [`BLOCK_SIZE`]. The
//!   controller assigns blocks to hosts (stable: a host keeps its blocks while it needs
//!   them; sized by demand: an equal split among the hosts needing the EIP, at most
//!   [`MAX_HOST_BLOCKS`]) and every host knows every block's owner ([`maps::OWNERS`]). A host allocates
//!   ports only from its own blocks ([`maps::BLOCKS`]), so two hosts never hand out the
//!   same (EIP, port) and no coordination happens per flow. Within a host the connection
//!   table's `BPF_NOEXIST` insert of the public-side entry makes the 5-tuple unique.
//! - Inbound to an EIP at any host: the public-side connection entry, if this host owns
//!   the flow; else a bound EIP, a DNAT entry or the SNAT block's owner says which host
//!   owns it, and the packet goes there unchanged (Ethernet rewrite, TTL - 1, `XDP_TX`).
//!   An EIP packet nobody claims is dropped (default deny).
//! - State lives in the connection table (`conntrack.rs`). A translated flow has two
//!   entries: the private one (under the VM's VNI, the one the security groups use) whose
//!   [`CtEntry::nat`] holds the public (EIP, port), and the public one (under [`NAT_VNI`],
//!   keyed by the public 5-tuple) whose `nat` holds the private (VNI, address, port). The
//!   public entry lives as long as the private one: the datapath never expires it by its
//!   own clock and the agent's sweeper removes it once the private entry no longer links
//!   to it. An ended SNAT TCP flow's private entry lives through the NAT time-wait
//!   (`CtConfig::nat_time_wait_ns`, 2 x MSL): the server may hold the connection in
//!   TIME_WAIT that long and would answer another flow's SYN on the same public tuple for
//!   the old connection (the client resets and retries a second later), while the same
//!   private flow reopening finds its entry and keeps its public tuple. Bound EIPs are
//!   stateless (every port, both ways) and use no public entry.
//!
//! [`CtEntry::nat`]: crate::conntrack::CtEntry::nat

use crate::vpc::{Ipv4, Mac};

/// The connection table's "VNI" for public-side NAT entries: outside the 24-bit VNI
/// space, so no VPC's flow can collide with them.
pub const NAT_VNI: u32 = 1 << 24;

/// Lowest SNAT port; below are the well-known and registered ports DNAT may publish.
pub const PORT_MIN: u16 = 1024;
/// Ports per SNAT block.
pub const BLOCK_SIZE: u16 = 256;
/// Blocks per EIP: (65536 - 1024) / 256.
pub const BLOCKS_PER_EIP: u16 = 252;
/// Most blocks one host holds of one EIP (8,192 ports).
pub const MAX_HOST_BLOCKS: usize = 32;
/// Most EIPs a SNAT entry spreads its flows over.
pub const MAX_SNAT_EIPS: usize = 4;
/// Ports tried (per EIP) before a new flow counts as exhausted: the cost of a flow's
/// first packet is bounded even when its destination has used up nearly every port.
pub const PORT_PROBES: u32 = 64;

/// The block of an SNAT port, or `None` below [`PORT_MIN`].
#[inline(always)]
pub const fn block_of(port: u16) -> Option<u16> {
    if port < PORT_MIN {
        None
    } else {
        Some((port - PORT_MIN) / BLOCK_SIZE)
    }
}

/// The first port of block `block`.
#[inline(always)]
pub const fn block_first_port(block: u16) -> u16 {
    PORT_MIN + block * BLOCK_SIZE
}

/// Value of [`maps::CONFIG`] (one slot): the host's way to the Internet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Non-zero once the agent wrote it; until then translated traffic is dropped
    /// (`drop_nat_no_border`).
    pub configured: u32,
    /// The border router's MAC on the underlay (resolved by the agent); zero while
    /// unresolved.
    pub border_mac: Mac,
    pub _pad: [u8; 2],
}

/// What an EIP does (`EipEntry::kind`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EipKind {
    /// Attached to a NAT gateway and used by SNAT entries: inbound needs a flow.
    Snat = 1,
    /// Attached to a NAT gateway and published by DNAT entries ([`maps::DNAT`]).
    Dnat = 2,
    /// Bound 1:1 to a NIC: every port, both ways, no state.
    Bound = 3,
}

impl EipKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Snat),
            2 => Some(Self::Dnat),
            3 => Some(Self::Bound),
            _ => None,
        }
    }
}

/// Value of [`maps::EIPS`] (keyed by the EIP): every EIP in use in the cloud, on every
/// host. For [`EipKind::Bound`]: the NIC's VPC, address and host; zero otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EipEntry {
    pub kind: u32,
    pub vni: u32,
    pub ip: Ipv4,
    /// The host of the bound NIC (this host's VTEP when local).
    pub vtep: Ipv4,
    /// Underlay MAC toward `vtep` (zero for this host or while unresolved).
    pub vtep_mac: Mac,
    pub _pad: [u8; 2],
}

/// Key of [`maps::DNAT`]: a published (EIP, protocol, port). `proto` 0 is "any"; the
/// datapath looks up the packet's protocol first, then 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnatKey {
    pub eip: Ipv4,
    /// Network order.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`maps::DNAT`]: the private target and its host. A load balancer's VIP as
/// the target (`ip`, the listener's `port`) has `vtep` 0.0.0.0: no one host has it, and
/// the receiving host picks the backend (`crate::lb`), translating when it is local and
/// else handing the packet unchanged to the backend's host, which translates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnatTarget {
    pub vni: u32,
    pub ip: Ipv4,
    pub vtep: Ipv4,
    pub vtep_mac: Mac,
    /// Network order.
    pub port: [u8; 2],
}

/// Key of [`maps::SOURCES`] (an LPM trie): the route key's layout, VNI (big-endian) then
/// the source address, prefix length 32 + the source prefix length (a NIC is a /32, so the
/// most specific SNAT entry wins).
pub type SourceKey = crate::vpc::RouteKey;

/// Value of [`maps::SOURCES`]: the EIPs an SNAT entry translates to, in order. A flow
/// starts at `eips[hash(source) % count]` (a VM keeps one public address while it has
/// ports there) and moves on to the next when that one has no free port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatRule {
    pub count: u32,
    pub eips: [Ipv4; MAX_SNAT_EIPS],
}

/// Value of [`maps::BLOCKS`] (keyed by EIP): this host's blocks of that EIP, as first
/// ports. Allocation spreads a flow over all `count` blocks' ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBlocks {
    pub count: u32,
    pub first_ports: [u16; MAX_HOST_BLOCKS],
}

impl Default for HostBlocks {
    fn default() -> Self {
        Self {
            count: 0,
            first_ports: [0; MAX_HOST_BLOCKS],
        }
    }
}

/// Key of [`maps::OWNERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    pub eip: Ipv4,
    pub block: u32,
}

/// Value of [`maps::OWNERS`]: the host holding an SNAT block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockOwner {
    pub vtep: Ipv4,
    /// Zero for this host or while unresolved.
    pub vtep_mac: Mac,
    pub _pad: [u8; 2],
}

/// Value of [`maps::BINDINGS`] (keyed by the NIC's [`crate::vpc::EndpointKey`]): the EIP
/// bound to a NIC on this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub eip: Ipv4,
}

/// `NatLink::kind`: none (the entry is not translated).
pub const LINK_NONE: u8 = 0;
/// SNAT: the private end opened the flow; its source is translated.
pub const LINK_SNAT: u8 = 1;
/// DNAT: the Internet opened the flow to a published (EIP, port).
pub const LINK_DNAT: u8 = 2;

/// [`crate::conntrack::CtEntry::nat`]. In a private-side entry (key under a VPC's VNI):
/// `addr`/`port` are the public (EIP, port) of the private end, `vni` 0. In a public-side
/// entry (key under [`NAT_VNI`]): `addr`/`port` are the private end and `vni` its VPC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatLink {
    pub addr: Ipv4,
    /// Network order (ICMP echo: the identifier).
    pub port: [u8; 2],
    /// `LINK_*`.
    pub kind: u8,
    pub flags: u8,
    pub vni: u32,
    pub _reserved: u32,
}

/// Map names (pinned like the others).
pub mod maps {
    /// One-slot array of [`super::NatConfig`].
    pub const CONFIG: &str = "SLUICE_NAT_CONFIG";
    /// [`super::EipEntry`] by EIP address.
    pub const EIPS: &str = "SLUICE_NAT_EIPS";
    /// [`super::DnatTarget`] by [`super::DnatKey`].
    pub const DNAT: &str = "SLUICE_NAT_DNAT";
    /// LPM trie of [`super::SnatRule`] by [`super::SourceKey`].
    pub const SOURCES: &str = "SLUICE_NAT_SOURCES";
    /// [`super::HostBlocks`] by EIP address: this host's SNAT ports.
    pub const BLOCKS: &str = "SLUICE_NAT_BLOCKS";
    /// [`super::BlockOwner`] by [`super::OwnerKey`]: every SNAT block's host.
    pub const OWNERS: &str = "SLUICE_NAT_OWNERS";
    /// [`super::Binding`] by [`crate::vpc::EndpointKey`]: local NICs' bound EIPs.
    pub const BINDINGS: &str = "SLUICE_NAT_BINDINGS";
    pub const ALL: [&str; 7] = [CONFIG, EIPS, DNAT, SOURCES, BLOCKS, OWNERS, BINDINGS];
}

pub const MAX_EIPS: u32 = 1 << 16;
pub const MAX_DNAT: u32 = 1 << 16;
pub const MAX_SOURCES: u32 = 1 << 16;
pub const MAX_OWNERS: u32 = 1 << 20;
pub const MAX_BINDINGS: u32 = 1 << 16;

const _: () = assert!(core::mem::size_of::<NatConfig>() == 12);
const _: () = assert!(core::mem::size_of::<EipEntry>() == 24);
const _: () = assert!(core::mem::size_of::<DnatKey>() == 8);
const _: () = assert!(core::mem::size_of::<DnatTarget>() == 20);
const _: () = assert!(core::mem::size_of::<SnatRule>() == 4 + 4 * MAX_SNAT_EIPS);
const _: () = assert!(core::mem::size_of::<HostBlocks>() == 4 + 2 * MAX_HOST_BLOCKS);
const _: () = assert!(core::mem::size_of::<OwnerKey>() == 8);
const _: () = assert!(core::mem::size_of::<BlockOwner>() == 12);
const _: () = assert!(core::mem::size_of::<Binding>() == 4);
const _: () = assert!(core::mem::size_of::<NatLink>() == 16);
const _: () = assert!(core::mem::align_of::<NatLink>() == 4);
const _: () = assert!(BLOCKS_PER_EIP as u32 * BLOCK_SIZE as u32 + PORT_MIN as u32 == 65536);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for EipEntry {}
    unsafe impl aya::Pod for DnatKey {}
    unsafe impl aya::Pod for DnatTarget {}
    unsafe impl aya::Pod for SnatRule {}
    unsafe impl aya::Pod for HostBlocks {}
    unsafe impl aya::Pod for OwnerKey {}
    unsafe impl aya::Pod for BlockOwner {}
    unsafe impl aya::Pod for Binding {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_port_space_above_port_min() {
        assert_eq!(block_of(1023), None);
        assert_eq!(block_of(1024), Some(0));
        assert_eq!(block_of(1279), Some(0));
        assert_eq!(block_of(1280), Some(1));
        assert_eq!(block_of(65535), Some(BLOCKS_PER_EIP - 1));
        assert_eq!(block_first_port(BLOCKS_PER_EIP - 1), 65280);
    }

    #[test]
    fn eip_kind_round_trips() {
        for k in [EipKind::Snat, EipKind::Dnat, EipKind::Bound] {
            assert_eq!(EipKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EipKind::from_u32(0), None);
    }
}
