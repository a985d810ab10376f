//! What one host's VPC maps should hold: the output of the intent compiler and the input
//! of the agent. Pure data; interface names stand where only the host knows the ifindex.
//! The host's security-group tables and the blocklist travel with them.

use serde::{Deserialize, Serialize};
use sluice_common::vpc::{Endpoint, EndpointKey, HostConfig, Ipv4, Mac, NextHop, Port, RouteKey};

use crate::{
    lb::LbTables,
    nat::NatTables,
    sg::{apply::BlockPrefix, SgTables},
};

/// An IPv4 route within one VPC: the trie key is (VNI, prefix) with prefix length 32 + `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoutePrefix {
    pub vni: u32,
    pub ip: Ipv4,
    pub len: u8,
}

impl RoutePrefix {
    pub fn key(&self) -> RouteKey {
        RouteKey::new(self.vni, self.ip)
    }
}

/// A local NIC: its port entry, keyed by the host-side interface name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPort {
    pub ifname: String,
    #[serde(with = "pod_port")]
    pub port: Port,
}

/// An endpoint; `ifname` is set for local NICs (the agent resolves it into `Endpoint::ifindex`).
/// `flags`: `ENDPOINT_LOCAL`, `ENDPOINT_PEER_SOURCE`, `ENDPOINT_APPLIANCE` as compiled;
/// `ENDPOINT_DIRECT` is derived from the routes when resolving (a given value is ignored).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub vni: u32,
    pub ip: Ipv4,
    pub mac: Mac,
    pub vtep: Ipv4,
    pub flags: u32,
    pub ifname: Option<String>,
}

/// A route of one VPC's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteEntry {
    pub prefix: RoutePrefix,
    pub next_hop: NextHopEntry,
}

/// A route's next hop, in serializable form (`kind` is a [`sluice_common::vpc::NextHopKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NextHopEntry {
    pub kind: u32,
    pub vni: u32,
    pub ip: Ipv4,
}

impl From<NextHopEntry> for NextHop {
    fn from(n: NextHopEntry) -> Self {
        NextHop {
            kind: n.kind,
            vni: n.vni,
            ip: n.ip,
        }
    }
}

/// This host's underlay identity, by interface name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUnderlay {
    pub ifname: String,
    pub vtep: Ipv4,
    pub router_mac: Mac,
    pub underlay_mtu: u32,
}

/// Everything one host's VPC maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTables {
    /// None until the host is registered with an underlay address.
    pub underlay: Option<HostUnderlay>,
    /// Local NICs, by host-side interface name.
    pub ports: Vec<LocalPort>,
    /// Every NIC of every VPC present on this host (local and remote), plus peer sources;
    /// sorted, one per (vni, ip).
    pub endpoints: Vec<EndpointEntry>,
    /// Routes of the VPCs present on this host; sorted, one per prefix.
    pub routes: Vec<RouteEntry>,
    /// VNIs present on this host; sorted.
    pub vnis: Vec<u32>,
    /// Underlay addresses of the remote hosts this host sends to; the agent resolves their
    /// MACs from the kernel's neighbour table on the underlay interface.
    pub remote_vteps: Vec<Ipv4>,
    /// The security-group maps of this host's NICs (`sg::compile`).
    #[serde(default)]
    pub security_groups: SgTables,
    /// The operator blocklist (the same on every host).
    #[serde(default)]
    pub blocklist: Vec<BlockPrefix>,
    /// NAT gateways and elastic IPs (`nat::compile`).
    #[serde(default)]
    pub nat: NatTables,
    /// Load balancers' listeners and backends, and this host's health-check ports
    /// (`lb::compile`).
    #[serde(default)]
    pub lb: LbTables,
}

impl EndpointEntry {
    /// The map value, given the ifindex the agent resolved (0 for remote endpoints) and the
    /// underlay MAC toward its VTEP (zero for local endpoints, peer sources, or unresolved).
    pub fn to_endpoint(&self, ifindex: u32, vtep_mac: Mac) -> Endpoint {
        Endpoint {
            mac: self.mac,
            vtep_mac,
            vtep: self.vtep,
            ifindex,
            flags: self.flags,
        }
    }
}

/// The map key of an endpoint entry.
pub fn endpoint_key(vni: u32, ip: Ipv4) -> EndpointKey {
    EndpointKey { vni, ip }
}

/// The HOST map value, given the underlay interface's ifindex and MAC.
pub fn host_config(u: &HostUnderlay, ifindex: u32, underlay_mac: Mac) -> HostConfig {
    HostConfig {
        configured: 1,
        underlay_ifindex: ifindex,
        vtep: u.vtep,
        underlay_mac,
        router_mac: u.router_mac,
        underlay_mtu: u.underlay_mtu,
    }
}

/// `Port` is a plain ABI struct; serialize it field by field.
mod pod_port {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct PortJson {
        vni: u32,
        ip: Ipv4,
        mac: Mac,
        #[serde(default)]
        flags: u16,
        subnet: Ipv4,
        subnet_mask: Ipv4,
        vpc: Ipv4,
        vpc_mask: Ipv4,
    }

    pub fn serialize<S: Serializer>(p: &Port, s: S) -> Result<S::Ok, S::Error> {
        PortJson {
            vni: p.vni,
            ip: p.ip,
            mac: p.mac,
            flags: p.flags,
            subnet: p.subnet,
            subnet_mask: p.subnet_mask,
            vpc: p.vpc,
            vpc_mask: p.vpc_mask,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        let j = PortJson::deserialize(d)?;
        Ok(Port {
            vni: j.vni,
            ip: j.ip,
            mac: j.mac,
            flags: j.flags,
            subnet: j.subnet,
            subnet_mask: j.subnet_mask,
            vpc: j.vpc,
            vpc_mask: j.vpc_mask,
        })
    }
}
