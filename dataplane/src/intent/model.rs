//! The intent model: what the operator and the cloud's other systems declared.
//!
//! Resources hold canonical, parsed values ([`Cidr`], [`Ipv4Addr`], [`MacAddr`]) and refer
//! to each other by ID. Requests ([`VpcSpec`], [`NicSpec`], ...) hold strings exactly as
//! they arrived, so validation can name the offending field, and refer to other resources
//! by ID or by name.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 prefix whose host bits are zero, e.g. `10.0.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: u32,
    len: u8,
}

impl Cidr {
    /// A prefix; `None` if `len > 32` or host bits are set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        let addr = u32::from(addr);
        (len <= 32 && addr & !mask(len) == 0).then_some(Self { addr, len })
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The netmask, e.g. 255.255.0.0 for a /16.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.len))
    }

    /// The last address (the broadcast address of a subnet).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | !mask(self.len))
    }

    /// Number of addresses in the prefix.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// `other` lies entirely inside `self`.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr())
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// The address `offset` addresses after the network address.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(self.addr + offset as u32))
    }
}

/// The netmask of a prefix length, as a host-order integer.
pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    }
}

impl Ord for Cidr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.addr, self.len).cmp(&(other.addr, other.len))
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR: expected address/prefix-length"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR: {addr:?} is not an IPv4 address"))?;
        let len: u8 =
            len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| {
                format!("{s:?} is not a CIDR: prefix length {len:?} is not 0..=32")
            })?;
        Cidr::new(addr, len).ok_or_else(|| {
            let net = Ipv4Addr::from(u32::from(addr) & mask(len));
            format!("{s:?} has host bits set (did you mean {net}/{len}?)")
        })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ethernet address, written `02:73:6c:00:00:01`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Multicast (group) bit set: not usable as a NIC or router address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Locally administered bit set: ours to allocate, never a vendor's.
    pub fn is_local(&self) -> bool {
        self.0[0] & 2 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a MAC address: expected six hex octets like 02:00:00:00:00:01")
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Resources (what the intent holds, and what GET returns)
// ---------------------------------------------------------------------------------------

/// A hypervisor host, registered by the operator. Its name is its ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// The host's VTEP: outer source of its VXLAN packets.
    pub underlay_ip: Ipv4Addr,
    /// The host's interface facing the fabric.
    pub underlay_ifname: String,
    /// Source MAC of the virtual router toward VMs (given, or derived from the name).
    pub router_mac: MacAddr,
    /// Largest outer IPv4 packet the fabric carries; VMs get `underlay_mtu - 50`.
    pub underlay_mtu: u32,
    /// The fabric's border router (an underlay address): where this host sends the
    /// Internet traffic its NAT translates. Without it, such traffic is dropped
    /// (`drop_nat_no_border`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_gateway: Option<Ipv4Addr>,
    /// Source address of this host's load-balancer health checks, from
    /// [`sluice_common::lb::HEALTH_CHECK_NET`]: allocated at registration (lowest free,
    /// stable); hosts stored before it get one when the store is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_ip: Option<Ipv4Addr>,
}

/// A tenant's virtual network: one VNI, one route table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub cidr: Cidr,
    /// VXLAN network identifier, allocated by the controller; unique and never reused.
    pub vni: u32,
}

/// A subnet (vSwitch) of a VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    /// The VPC's ID.
    pub vpc: String,
    pub name: String,
    pub cidr: Cidr,
    /// The first host address (network + 1): the virtual router's address in the subnet.
    pub gateway: Ipv4Addr,
}

/// Addresses of a subnet no NIC may have, counted from the network address: the network
/// address itself, the gateway (+1), +2 and +3 (kept for DNS and future services); the
/// broadcast (last) address is reserved too.
pub const RESERVED_LOW_ADDRESSES: u64 = 4;

impl Subnet {
    /// Why `ip` is reserved in this subnet, or `None` if a NIC may have it.
    pub fn reserved_reason(&self, ip: Ipv4Addr) -> Option<&'static str> {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.cidr.addr())) as u64;
        if !self.cidr.contains(ip) {
            None
        } else if offset == 0 {
            Some("the subnet's network address")
        } else if offset == 1 {
            Some("the subnet's gateway")
        } else if offset < RESERVED_LOW_ADDRESSES {
            Some("reserved for DNS and future services (the first four addresses are reserved)")
        } else if ip == self.cidr.last() {
            Some("the subnet's broadcast address")
        } else {
            None
        }
    }
}

/// A VM's network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub id: String,
    pub name: String,
    /// The VPC's ID.
    pub vpc: String,
    /// The subnet's ID.
    pub subnet: String,
    /// The host's name.
    pub host: String,
    /// Host-side interface name (the VM's veth/tap peer on that host).
    pub ifname: String,
    /// Fixed for the NIC's lifetime.
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Drop packets whose source IP is not the NIC's. Off for appliances; the compiler also
    /// turns it off for every NIC that is a route's next hop.
    pub source_check: bool,
    /// IDs of its security groups (1 to 5, of its VPC; the VPC's `default` group when
    /// created without). See `intent/sg.rs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// Where a custom route sends traffic. IDs in resources; ID or name in requests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NextHop {
    /// An appliance NIC in the same VPC.
    Nic { nic: String },
    /// An accepted peering of this VPC (pending: the route is held but not programmed).
    Peering { peering: String },
    /// Drop.
    Blackhole,
    /// A NAT gateway of this VPC (see `intent/nat.rs`).
    NatGateway { nat_gateway: String },
}

/// A custom route of a VPC's route table. A route is identified by (VPC, destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The VPC's ID.
    pub vpc: String,
    pub destination: Cidr,
    pub next_hop: NextHop,
}

impl Route {
    /// How dependents lists name this route: `route/<vpc id>:<destination>`.
    pub fn reference(&self) -> String {
        format!("route/{}:{}", self.vpc, self.destination)
    }
}

/// One line of a VPC's route table as shown to users: system routes (one per subnet,
/// implicit, not deletable) and custom routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTableEntry {
    pub destination: Cidr,
    pub target: RouteTarget,
    /// A subnet's implicit route.
    pub system: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RouteTarget {
    /// Deliver inside the subnet.
    Local {
        subnet: String,
    },
    Nic {
        nic: String,
    },
    Peering {
        peering: String,
    },
    Blackhole,
    NatGateway {
        nat_gateway: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeeringState {
    /// Requested; carries nothing until accepted.
    Pending,
    Active,
}

/// A peering between exactly two VPCs (requester `vpc`, accepter `peer_vpc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peering {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub peer_vpc: String,
    pub state: PeeringState,
}

impl Peering {
    /// The other side, seen from `vpc`; `None` if `vpc` is not a side.
    pub fn other_side(&self, vpc: &str) -> Option<&str> {
        if self.vpc == vpc {
            Some(&self.peer_vpc)
        } else if self.peer_vpc == vpc {
            Some(&self.vpc)
        } else {
            None
        }
    }

    pub fn is_active(&self) -> bool {
        self.state == PeeringState::Active
    }
}

// ---------------------------------------------------------------------------------------
// Requests (strings as received; references by ID or name)
// ---------------------------------------------------------------------------------------

/// Register (or re-register) a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    pub underlay_ip: String,
    pub underlay_ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_gateway: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    /// Defaults to the allocated ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cidr: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    /// VPC ID or name.
    pub vpc: String,
    /// Defaults to the allocated ID; unique within the VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cidr: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Defaults to the allocated ID; unique across all VPCs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VPC ID or name.
    pub vpc: String,
    /// Subnet ID, or its name within the VPC.
    pub subnet: String,
    /// Host name.
    pub host: String,
    pub ifname: String,
    /// Allocated from the subnet (lowest free address) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Allocated (locally administered, unique) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<bool>,
    /// 1 to 5 groups of the NIC's VPC (ID or name); default: the VPC's `default` group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
}

/// What may change on an existing NIC (its addresses, VPC and subnet never do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicUpdate {
    /// Move to another host (VM migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<bool>,
    /// Replace the NIC's groups: 1 to 5 of its VPC (ID or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
}

/// Create or change a custom route; the next hop's references are IDs or names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// VPC ID or name.
    pub vpc: String,
    pub destination: String,
    pub next_hop: NextHop,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringSpec {
    /// Defaults to the allocated ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Requester VPC (ID or name).
    pub vpc: String,
    /// Accepter VPC (ID or name).
    pub peer_vpc: String,
}

// ---------------------------------------------------------------------------------------
// Topology: the declarative document of `sluicectl apply -f`
// ---------------------------------------------------------------------------------------

/// A whole declared topology. Everything is matched by name; applying creates what is
/// missing and updates what differs, and never deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub hosts: Vec<HostSpec>,
    #[serde(default)]
    pub vpcs: Vec<TopologyVpc>,
    #[serde(default)]
    pub nics: Vec<TopologyNic>,
    #[serde(default)]
    pub peerings: Vec<TopologyPeering>,
    /// The operator blocklist: prefixes added or updated (never removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklist: Vec<super::blocklist::BlocklistSpec>,
    /// EIP pools, EIPs and NAT gateways, matched by name (see `intent/nat.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eip_pools: Vec<super::nat::EipPoolSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eips: Vec<super::nat::EipSpec>,
    /// A gateway's declared EIPs and SNAT/DNAT entries are its whole sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_gateways: Vec<super::nat::NatGatewaySpec>,
    /// Load balancers, matched by name (see `intent/lb.rs`): declared listeners and
    /// backends are their whole sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<super::lb::LoadBalancerSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyVpc {
    pub name: String,
    pub cidr: String,
    #[serde(default)]
    pub subnets: Vec<TopologySubnet>,
    #[serde(default)]
    pub routes: Vec<TopologyRoute>,
    /// Groups of the VPC, matched by name (`default` is the VPC's own default group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<TopologySecurityGroup>,
}

/// A security group of a topology VPC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySecurityGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The group's whole rule set: declared rules missing from the group are added, the
    /// group's rules not declared are removed (rules are parts of their group). Absent:
    /// the rules are left as they are. Remote groups are named within the VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<super::sg::SgRuleSpec>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySubnet {
    pub name: String,
    pub cidr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyRoute {
    pub destination: String,
    /// References by name (NIC and peering names of the topology, or existing ones).
    pub next_hop: NextHop,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyNic {
    pub name: String,
    pub vpc: String,
    /// Subnet name within the VPC.
    pub subnet: String,
    pub host: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<bool>,
    /// Group names of the NIC's VPC. Absent: a new NIC gets the VPC's `default` group, an
    /// existing one keeps its groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyPeering {
    pub name: String,
    pub vpc: String,
    pub peer_vpc: String,
    /// Accept the peering (a peering is never un-accepted by applying `false`).
    #[serde(default)]
    pub accepted: bool,
}

/// What an apply did; `kind/name` strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplySummary {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
}

impl ApplySummary {
    /// Resources created or updated: 0 when the topology was already in place.
    pub fn changes(&self) -> usize {
        self.created.len() + self.updated.len()
    }
}

// ---------------------------------------------------------------------------------------
// The intent
// ---------------------------------------------------------------------------------------

/// Allocation state: IDs and VNIs are never reused, MACs are allocated in sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_vpc: u64,
    pub next_subnet: u64,
    pub next_nic: u64,
    pub next_peering: u64,
    pub next_vni: u32,
    pub next_mac: u32,
    #[serde(default = "super::sg::first_counter")]
    pub next_sg: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_sg_rule: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_eip_pool: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_eip: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_nat_gateway: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_snat: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_dnat: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_load_balancer: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_lb_listener: u64,
    #[serde(default = "super::sg::first_counter")]
    pub next_lb_backend: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            next_vpc: 1,
            next_subnet: 1,
            next_nic: 1,
            next_peering: 1,
            next_vni: FIRST_VNI,
            next_mac: 1,
            next_sg: 1,
            next_sg_rule: 1,
            next_eip_pool: 1,
            next_eip: 1,
            next_nat_gateway: 1,
            next_snat: 1,
            next_dnat: 1,
            next_load_balancer: 1,
            next_lb_listener: 1,
            next_lb_backend: 1,
        }
    }
}

/// VNIs the controller allocates (24 bits; 0 is not used).
pub const FIRST_VNI: u32 = 1;
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// One VPC's custom routes by destination.
pub type RouteTable = BTreeMap<Cidr, Route>;

/// Kinds with a name index (hosts are keyed by name already).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum NameKind {
    Vpc,
    /// Scoped by VPC ID.
    Subnet,
    Nic,
    Peering,
    /// Scoped by VPC ID.
    SecurityGroup,
    EipPool,
    Eip,
    NatGateway,
    LoadBalancer,
}

/// The intent as flat lists of records: the store's layout, and a full JSON dump.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub generation: u64,
    pub counters: Counters,
    pub hosts: Vec<Host>,
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub nics: Vec<Nic>,
    pub routes: Vec<Route>,
    pub peerings: Vec<Peering>,
    #[serde(default)]
    pub security_groups: Vec<super::sg::SecurityGroup>,
    #[serde(default)]
    pub blocklist: Vec<super::blocklist::BlocklistEntry>,
    #[serde(default)]
    pub eip_pools: Vec<super::nat::EipPool>,
    #[serde(default)]
    pub eips: Vec<super::nat::Eip>,
    #[serde(default)]
    pub nat_gateways: Vec<super::nat::NatGateway>,
    #[serde(default)]
    pub load_balancers: Vec<super::lb::LoadBalancer>,
}

/// The whole declared state. Immutable from outside: every change goes through a pure,
/// validated mutation (`validate.rs`) that returns a new `Intent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    pub(crate) generation: u64,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) vpcs: BTreeMap<String, Vpc>,
    pub(crate) subnets: BTreeMap<String, Subnet>,
    pub(crate) nics: BTreeMap<String, Nic>,
    /// Each VPC's custom routes, by VPC ID then destination; every VPC has an entry.
    /// Shared between copies until changed, so a mutation copies only the table it edits.
    pub(crate) routes: BTreeMap<String, Arc<RouteTable>>,
    pub(crate) peerings: BTreeMap<String, Peering>,
    pub(crate) security_groups: BTreeMap<String, super::sg::SecurityGroup>,
    /// The operator blocklist, by prefix.
    pub(crate) blocklist: BTreeMap<Cidr, super::blocklist::BlocklistEntry>,
    pub(crate) eip_pools: BTreeMap<String, super::nat::EipPool>,
    pub(crate) eips: BTreeMap<String, super::nat::Eip>,
    pub(crate) nat_gateways: BTreeMap<String, super::nat::NatGateway>,
    pub(crate) load_balancers: BTreeMap<String, super::lb::LoadBalancer>,
    pub(crate) counters: Counters,
    /// Derived: (kind, scope, name) -> ID. Rebuilt on load.
    pub(crate) names: BTreeMap<(NameKind, String, String), String>,
}

impl Intent {
    /// Rebuild an intent from its records (as the store keeps them).
    pub fn from_records(r: Records) -> Self {
        let mut i = Intent {
            generation: r.generation,
            counters: r.counters,
            ..Default::default()
        };
        for h in r.hosts {
            i.hosts.insert(h.name.clone(), h);
        }
        for v in r.vpcs {
            i.routes.entry(v.id.clone()).or_default();
            i.index_name(NameKind::Vpc, "", &v.name, &v.id);
            i.vpcs.insert(v.id.clone(), v);
        }
        for s in r.subnets {
            i.index_name(NameKind::Subnet, &s.vpc, &s.name, &s.id);
            i.subnets.insert(s.id.clone(), s);
        }
        for n in r.nics {
            i.index_name(NameKind::Nic, "", &n.name, &n.id);
            i.nics.insert(n.id.clone(), n);
        }
        for route in r.routes {
            let table = i.routes.entry(route.vpc.clone()).or_default();
            Arc::make_mut(table).insert(route.destination, route);
        }
        for p in r.peerings {
            i.index_name(NameKind::Peering, "", &p.name, &p.id);
            i.peerings.insert(p.id.clone(), p);
        }
        for g in r.security_groups {
            i.index_name(NameKind::SecurityGroup, &g.vpc, &g.name, &g.id);
            i.security_groups.insert(g.id.clone(), g);
        }
        for b in r.blocklist {
            i.blocklist.insert(b.prefix, b);
        }
        super::nat::index_nat(&mut i, r.eip_pools, r.eips, r.nat_gateways);
        super::lb::index_lb(&mut i, r.load_balancers);
        i
    }

    /// Every record, in key order (the inverse of [`Intent::from_records`]).
    pub fn to_records(&self) -> Records {
        Records {
            generation: self.generation,
            counters: self.counters.clone(),
            hosts: self.hosts.values().cloned().collect(),
            vpcs: self.vpcs.values().cloned().collect(),
            subnets: self.subnets.values().cloned().collect(),
            nics: self.nics.values().cloned().collect(),
            routes: self.routes().cloned().collect(),
            peerings: self.peerings.values().cloned().collect(),
            security_groups: self.security_groups.values().cloned().collect(),
            blocklist: self.blocklist.values().cloned().collect(),
            eip_pools: self.eip_pools.values().cloned().collect(),
            eips: self.eips.values().cloned().collect(),
            nat_gateways: self.nat_gateways.values().cloned().collect(),
            load_balancers: self.load_balancers.values().cloned().collect(),
        }
    }

    pub(crate) fn index_name(&mut self, kind: NameKind, scope: &str, name: &str, id: &str) {
        self.names
            .insert((kind, scope.to_string(), name.to_string()), id.to_string());
    }

    pub(crate) fn unindex_name(&mut self, kind: NameKind, scope: &str, name: &str) {
        self.names
            .remove(&(kind, scope.to_string(), name.to_string()));
    }

    pub(crate) fn lookup_name(&self, kind: NameKind, scope: &str, name: &str) -> Option<&str> {
        self.names
            .get(&(kind, scope.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// Committed changes so far (set by the store; 0 for an intent never stored).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// The IDs of the VPCs present on `host` (what its tables hold): those with a NIC on
    /// it, and, on a host with a public gateway, those whose load balancers the Internet
    /// reaches through DNAT (any such host may be handed the flow: it picks the backend,
    /// which takes the VPC's endpoints, listeners and health checks).
    pub fn present_vpcs(&self, host: &str) -> std::collections::BTreeSet<&str> {
        let mut present: std::collections::BTreeSet<&str> = self
            .nics()
            .filter(|n| n.host == host)
            .map(|n| n.vpc.as_str())
            .collect();
        if self.host(host).is_some_and(|h| h.public_gateway.is_some()) {
            present.extend(self.dnat_vip_vpcs());
        }
        present
    }

    pub fn vpcs(&self) -> impl Iterator<Item = &Vpc> {
        self.vpcs.values()
    }

    /// A VPC by ID or name.
    pub fn vpc(&self, key: &str) -> Option<&Vpc> {
        self.vpcs.get(key).or_else(|| {
            self.lookup_name(NameKind::Vpc, "", key)
                .and_then(|id| self.vpcs.get(id))
        })
    }

    pub fn subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.subnets.values()
    }

    /// Subnets of one VPC (by its ID), in name order.
    pub fn subnets_of<'a>(&'a self, vpc_id: &'a str) -> impl Iterator<Item = &'a Subnet> + 'a {
        let from = (NameKind::Subnet, vpc_id.to_string(), String::new());
        self.names
            .range(from..)
            .take_while(move |((kind, scope, _), _)| *kind == NameKind::Subnet && scope == vpc_id)
            .filter_map(|(_, id)| self.subnets.get(id))
    }

    /// A subnet by ID, or by name within `vpc` (ID or name). Without `vpc`, a bare name
    /// matches only if exactly one VPC has a subnet of that name.
    pub fn subnet(&self, vpc: Option<&str>, key: &str) -> Option<&Subnet> {
        match vpc {
            Some(v) => {
                let vpc = self.vpc(v)?;
                match self.subnets.get(key) {
                    Some(s) if s.vpc == vpc.id => Some(s),
                    Some(_) => None,
                    None => self
                        .lookup_name(NameKind::Subnet, &vpc.id, key)
                        .and_then(|id| self.subnets.get(id)),
                }
            }
            None => self.subnets.get(key).or_else(|| {
                let mut hits = self.subnets.values().filter(|s| s.name == key);
                match (hits.next(), hits.next()) {
                    (Some(s), None) => Some(s),
                    _ => None,
                }
            }),
        }
    }

    pub fn nics(&self) -> impl Iterator<Item = &Nic> {
        self.nics.values()
    }

    /// A NIC by ID or name.
    pub fn nic(&self, key: &str) -> Option<&Nic> {
        self.nics.get(key).or_else(|| {
            self.lookup_name(NameKind::Nic, "", key)
                .and_then(|id| self.nics.get(id))
        })
    }

    /// Every custom route, by VPC ID then destination.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values().flat_map(|t| t.values())
    }

    /// Custom routes of one VPC (by its ID), by destination.
    pub fn routes_of(&self, vpc_id: &str) -> impl Iterator<Item = &Route> {
        self.routes.get(vpc_id).into_iter().flat_map(|t| t.values())
    }

    pub fn route(&self, vpc_id: &str, destination: &Cidr) -> Option<&Route> {
        self.routes.get(vpc_id)?.get(destination)
    }

    /// A VPC's whole route table as users see it: system routes and custom routes,
    /// ordered by destination. `None` if there is no such VPC (ID or name).
    pub fn route_table(&self, vpc: &str) -> Option<Vec<RouteTableEntry>> {
        let vpc = self.vpc(vpc)?;
        let mut out: Vec<RouteTableEntry> = self
            .subnets_of(&vpc.id)
            .map(|s| RouteTableEntry {
                destination: s.cidr,
                target: RouteTarget::Local {
                    subnet: s.id.clone(),
                },
                system: true,
            })
            .chain(self.routes_of(&vpc.id).map(|r| RouteTableEntry {
                destination: r.destination,
                target: match &r.next_hop {
                    NextHop::Nic { nic } => RouteTarget::Nic { nic: nic.clone() },
                    NextHop::Peering { peering } => RouteTarget::Peering {
                        peering: peering.clone(),
                    },
                    NextHop::Blackhole => RouteTarget::Blackhole,
                    NextHop::NatGateway { nat_gateway } => RouteTarget::NatGateway {
                        nat_gateway: nat_gateway.clone(),
                    },
                },
                system: false,
            }))
            .collect();
        out.sort_by_key(|e| e.destination);
        Some(out)
    }

    pub fn peerings(&self) -> impl Iterator<Item = &Peering> {
        self.peerings.values()
    }

    /// A peering by ID or name.
    pub fn peering(&self, key: &str) -> Option<&Peering> {
        self.peerings.get(key).or_else(|| {
            self.lookup_name(NameKind::Peering, "", key)
                .and_then(|id| self.peerings.get(id))
        })
    }

    /// Peerings with `vpc_id` on either side.
    pub fn peerings_of<'a>(&'a self, vpc_id: &'a str) -> impl Iterator<Item = &'a Peering> + 'a {
        self.peerings
            .values()
            .filter(move |p| p.other_side(vpc_id).is_some())
    }
}

/// A locally administered router MAC derived from the host name (FNV-1a, stable across
/// builds and platforms), so a host's router MAC survives restarts without being stored.
pub fn derived_router_mac(host: &str) -> MacAddr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x06: locally administered, unicast, and distinct from allocated NIC MACs (0x02).
    MacAddr([0x06, b[0], b[1], b[2], b[3], b[4]])
}

/// First octets of allocated NIC MACs ("sl"), followed by a 24-bit sequence number.
pub const NIC_MAC_PREFIX: [u8; 3] = [0x02, 0x73, 0x6c];
