//! NAT gateways and elastic IPs on a host: what its NAT maps should hold ([`NatTables`],
//! compiled from the intent by [`compile`]) and the agent's map writes ([`apply`]). The
//! design is at the top of `common/src/nat.rs`; the datapath is `ebpf/src/nat.rs`.

pub mod apply;
pub mod compile;

use serde::{Deserialize, Serialize};
use sluice_common::vpc::Ipv4;

/// One host's NAT tables. Hosts appear by underlay address (VTEP); the agent resolves
/// their MACs as it does for VXLAN peers (the compiler lists them in the host's
/// `remote_vteps`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatTables {
    /// The border router this host sends translated traffic to; `None`: no Internet path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub border: Option<Ipv4>,
    /// Every allocated EIP of the cloud (the same on every host); sorted by address.
    #[serde(default)]
    pub eips: Vec<EipRow>,
    /// Every DNAT entry whose target NIC exists; sorted.
    #[serde(default)]
    pub dnat: Vec<DnatRow>,
    /// SNAT entries of the VPCs with NICs on this host; sorted.
    #[serde(default)]
    pub sources: Vec<SourceRow>,
    /// This host's SNAT blocks, by EIP; sorted.
    #[serde(default)]
    pub blocks: Vec<BlockRow>,
    /// Every SNAT block's host, so inbound packets reach the host owning their flow.
    #[serde(default)]
    pub owners: Vec<OwnerRow>,
    /// EIPs bound to NICs on this host; sorted.
    #[serde(default)]
    pub bindings: Vec<BindingRow>,
}

/// An EIP: `kind` is a [`sluice_common::nat::EipKind`]; for a bound EIP the NIC's VPC,
/// address and host, zero otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EipRow {
    pub eip: Ipv4,
    pub kind: u32,
    pub vni: u32,
    pub ip: Ipv4,
    pub vtep: Ipv4,
}

/// A published (EIP, protocol, port): `proto` 0 is any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DnatRow {
    pub eip: Ipv4,
    pub proto: u8,
    pub port: u16,
    pub vni: u32,
    pub ip: Ipv4,
    pub target_port: u16,
    pub vtep: Ipv4,
}

/// A SNAT source prefix in a VPC and the EIPs it leaves from (at most
/// [`sluice_common::nat::MAX_SNAT_EIPS`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRow {
    pub vni: u32,
    pub ip: Ipv4,
    pub len: u8,
    pub eips: Vec<Ipv4>,
}

/// Block numbers of one EIP this host allocates SNAT ports from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRow {
    pub eip: Ipv4,
    pub blocks: Vec<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerRow {
    pub eip: Ipv4,
    pub block: u16,
    pub vtep: Ipv4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingRow {
    pub vni: u32,
    pub ip: Ipv4,
    pub eip: Ipv4,
}

impl NatTables {
    /// The underlay addresses whose MACs the maps need (border router, owners of blocks,
    /// hosts of bound NICs and DNAT targets), except `own`.
    pub fn vteps(&self, own: Ipv4) -> Vec<Ipv4> {
        let mut v: Vec<Ipv4> = self
            .border
            .into_iter()
            .chain(self.owners.iter().map(|o| o.vtep))
            .chain(
                self.eips
                    .iter()
                    .filter(|e| e.kind == sluice_common::nat::EipKind::Bound as u32)
                    .map(|e| e.vtep),
            )
            .chain(self.dnat.iter().map(|d| d.vtep))
            .filter(|v| *v != own && *v != [0; 4])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
