//! NAT gateways and elastic IPs in the intent: resources, requests and their validated
//! mutations (pure, all or nothing, like `validate.rs`).
//!
//! EIP pools (operator, `eipp-<n>`) hold public IPv4 ranges (/16 to /32, no loopback,
//! link-local, multicast or reserved space; pools never overlap). An EIP (`eip-<n>`) is
//! allocated from a pool (a given address inside one, or the lowest free) and is free,
//! bound to one NIC (1:1, all ports; a NIC has at most one), or attached to one NAT
//! gateway. A NAT gateway (`natgw-<n>`) lives in a VPC and one of its subnets and holds
//! its attached EIPs, SNAT entries (`snat-<n>`: a source subnet, CIDR inside the VPC or
//! NIC -> a set of the gateway's EIPs) and DNAT entries (`dnat-<n>`: (EIP, tcp|udp|any,
//! public port) -> (private IP in one of the VPC's subnets, port)). An EIP serves SNAT or
//! DNAT, never both. A route with next hop `nat_gateway` sends traffic to the gateway.
//! Names are unique across the cloud; an EIP is referred to by ID, name or address.
//!
//! How this will compile to per-host maps (the datapath is a later change; until then a
//! `nat_gateway` route compiles to a blackhole, so traffic is dropped and counted, never
//! misrouted):
//! - No gateway node. SNAT is distributed: every host translates its own VMs' outbound
//!   flows, so a host failure takes only its own flows with it and no node is a single
//!   point of failure. The controller splits each SNAT EIP's port space (1024-65535) into
//!   fixed blocks and assigns blocks to the hosts with NICs a SNAT entry covers; a host
//!   gets `snat_source (vni, prefix) -> entry` trie entries and `snat_blocks (eip) ->
//!   [port ranges]`. The host picks a free (EIP, port) from its blocks per destination, so
//!   two hosts never hand out the same 5-tuple; exhaustion drops with a counted reason. A
//!   failed host's blocks are reassigned only after its flows expire (no port reuse).
//! - Inbound to an EIP arrives at whichever host the fabric delivers it to and is
//!   forwarded to the host of the flow's owner: DNAT entries and NIC bindings compile to
//!   `eip_ports (eip, proto, port) -> (vni, private ip, port, host vtep)` and `eip_bind
//!   (eip) -> (vni, nic ip, host vtep)` on every host; SNAT replies go to the host owning
//!   the port block (`eip, block -> vtep`). Translation happens at the VM's host.
//! - The translated address and port and the reverse link are recorded in the connection
//!   table's reserved `CtEntry.nat` room (common/src/conntrack.rs), so replies and ICMP
//!   errors are reverse-translated from the same entry the security groups use.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};
use sluice_common::nat::{BLOCKS_PER_EIP, MAX_HOST_BLOCKS};

use super::{
    model::*,
    validate::{
        check_description, check_name, no_duplicates, parse_cidr, parse_ip, Change, ValidationError,
    },
};

type Result<T, E = ValidationError> = std::result::Result<T, E>;

/// Shortest pool prefix: pools are scanned for the lowest free address.
pub const MIN_POOL_PREFIX: u8 = 16;

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

/// Public IPv4 ranges EIPs are allocated from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipPool {
    pub id: String,
    pub name: String,
    /// Sorted, non-overlapping.
    pub cidrs: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What an EIP is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EipState {
    #[default]
    Free,
    /// 1:1 to a NIC (every port, both ways).
    Bound { nic: String },
    /// One of a NAT gateway's addresses.
    Attached { nat_gateway: String },
}

/// An elastic IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip {
    pub id: String,
    pub name: String,
    /// The pool's ID.
    pub pool: String,
    pub address: Ipv4Addr,
    #[serde(flatten)]
    pub state: EipState,
    /// SNAT port blocks by host ([`sluice_common::nat::BLOCK_SIZE`] ports each, numbered
    /// from [`sluice_common::nat::PORT_MIN`]): derived by [`Intent::assign_snat_blocks`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snat_blocks: BTreeMap<String, Vec<u16>>,
}

impl Eip {
    fn holder(&self) -> Option<String> {
        match &self.state {
            EipState::Free => None,
            EipState::Bound { nic } => Some(format!("nic/{nic}")),
            EipState::Attached { nat_gateway } => Some(format!("nat-gateway/{nat_gateway}")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatProtocol {
    Tcp,
    Udp,
    /// Both tcp and udp.
    Any,
}

impl NatProtocol {
    /// Both match some packet.
    pub fn overlaps(self, o: NatProtocol) -> bool {
        self == o || self == NatProtocol::Any || o == NatProtocol::Any
    }
}

impl fmt::Display for NatProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatProtocol::Tcp => "tcp",
            NatProtocol::Udp => "udp",
            NatProtocol::Any => "any",
        })
    }
}

/// What a SNAT entry translates: flattened into the entry as `subnet: <id>`, `cidr: ...`
/// or `nic: <id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnatSource {
    Subnet(String),
    Cidr(Cidr),
    Nic(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatEntry {
    pub id: String,
    #[serde(flatten)]
    pub source: SnatSource,
    /// IDs of the gateway's EIPs the source's flows leave from.
    pub eips: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatEntry {
    pub id: String,
    /// The EIP's ID.
    pub eip: String,
    pub protocol: NatProtocol,
    pub public_port: u16,
    pub private_ip: Ipv4Addr,
    pub private_port: u16,
}

/// A VPC's NAT gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGateway {
    pub id: String,
    pub name: String,
    /// The VPC's ID.
    pub vpc: String,
    /// The subnet's ID.
    pub subnet: String,
    /// IDs of its attached EIPs, in the order attached.
    #[serde(default)]
    pub eips: Vec<String>,
    #[serde(default)]
    pub snat: Vec<SnatEntry>,
    #[serde(default)]
    pub dnat: Vec<DnatEntry>,
}

impl NatGateway {
    pub fn snat_reference(&self, e: &SnatEntry) -> String {
        format!("snat/{}:{}", self.id, e.id)
    }

    pub fn dnat_reference(&self, e: &DnatEntry) -> String {
        format!("dnat/{}:{}", self.id, e.id)
    }

    /// Entries that use EIP `eip` (ID).
    fn users_of(&self, eip: &str) -> Vec<String> {
        let snat = self
            .snat
            .iter()
            .filter(|s| s.eips.iter().any(|e| e == eip))
            .map(|s| self.snat_reference(s));
        let dnat = self
            .dnat
            .iter()
            .filter(|d| d.eip == eip)
            .map(|d| self.dnat_reference(d));
        snat.chain(dnat).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipPoolSpec {
    /// Defaults to the allocated ID (required in a topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipSpec {
    /// Defaults to the allocated ID (required in a topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pool ID or name; default: the pool holding `address`, or the first with room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Default: the pool's lowest free address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Bind to this NIC (ID or name) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
}

/// POST /v1/eips/{eip}/bind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipBind {
    /// NIC ID or name.
    pub nic: String,
}

/// POST /v1/nat-gateways/{id}/eips.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipAttach {
    /// EIP ID, name or address.
    pub eip: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatSpec {
    /// The source: exactly one of subnet (ID or name in the VPC), cidr (inside the VPC)
    /// and nic (ID or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// The gateway's EIPs (ID, name or address), at least one.
    pub eips: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnatSpec {
    /// One of the gateway's EIPs (ID, name or address).
    pub eip: String,
    pub protocol: NatProtocol,
    pub public_port: i64,
    /// Inside one of the VPC's subnets.
    pub private_ip: String,
    /// Default: the public port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_port: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatGatewaySpec {
    /// Defaults to the allocated ID (required in a topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VPC ID or name.
    pub vpc: String,
    /// Subnet ID or name within the VPC.
    pub subnet: String,
    /// Free EIPs to attach (ID, name or address).
    #[serde(default)]
    pub eips: Vec<String>,
    #[serde(default)]
    pub snat: Vec<SnatSpec>,
    #[serde(default)]
    pub dnat: Vec<DnatSpec>,
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

const NAT_ID_PREFIXES: [&str; 5] = ["eipp", "eip", "natgw", "snat", "dnat"];

/// Names follow the other names' rules and must not look like an ID (`<prefix>-<n>`).
pub(super) fn check_name_not_id(field: &str, name: &str, prefixes: &[&str]) -> Result<()> {
    check_name(field, name)?;
    if let Some((prefix, n)) = name.split_once('-') {
        if prefixes.contains(&prefix) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::invalid(
                field,
                format!("{name:?} looks like an ID ({prefix}-<number>); IDs are allocated"),
            ));
        }
    }
    Ok(())
}

/// Names follow the other names' rules, must not look like an ID, nor (EIPs) an address.
fn check_nat_name(field: &str, name: &str) -> Result<()> {
    check_name_not_id(field, name, &NAT_ID_PREFIXES)?;
    if name.parse::<Ipv4Addr>().is_ok() {
        return Err(ValidationError::invalid(
            field,
            format!("{name:?} looks like an address; EIPs are also referred to by address"),
        ));
    }
    Ok(())
}

fn check_pool_cidr(field: &str, c: &Cidr) -> Result<()> {
    if c.prefix_len() < MIN_POOL_PREFIX {
        return Err(ValidationError::invalid(
            field,
            format!("{c} is larger than a /{MIN_POOL_PREFIX}; split it into /{MIN_POOL_PREFIX}s or smaller"),
        ));
    }
    let special: [(&str, &str); 5] = [
        ("0.0.0.0/8", "\"this network\""),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ];
    for (s, what) in special {
        let s: Cidr = s.parse().expect("constant");
        if s.overlaps(c) {
            return Err(ValidationError::invalid(
                field,
                format!("{c} overlaps {what} space {s}"),
            ));
        }
    }
    Ok(())
}

pub(super) fn port(field: &str, p: i64) -> Result<u16> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ValidationError::invalid(field, format!("{p} is not a port (1 to 65535)")))
}

pub(super) fn not_found(field: &str, what: &str, key: &str) -> ValidationError {
    ValidationError::not_found(field, format!("no {what} {key:?}"))
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

impl Intent {
    pub fn eip_pools(&self) -> impl Iterator<Item = &EipPool> {
        self.eip_pools.values()
    }

    /// A pool by ID or name.
    pub fn eip_pool(&self, key: &str) -> Option<&EipPool> {
        self.eip_pools.get(key).or_else(|| {
            self.lookup_name(NameKind::EipPool, "", key)
                .and_then(|id| self.eip_pools.get(id))
        })
    }

    pub fn eips(&self) -> impl Iterator<Item = &Eip> {
        self.eips.values()
    }

    /// An EIP by ID, name or address.
    pub fn eip(&self, key: &str) -> Option<&Eip> {
        self.eips
            .get(key)
            .or_else(|| {
                self.lookup_name(NameKind::Eip, "", key)
                    .and_then(|id| self.eips.get(id))
            })
            .or_else(|| {
                let a: Ipv4Addr = key.parse().ok()?;
                self.eips.values().find(|e| e.address == a)
            })
    }

    pub fn nat_gateways(&self) -> impl Iterator<Item = &NatGateway> {
        self.nat_gateways.values()
    }

    /// A gateway by ID or name.
    pub fn nat_gateway(&self, key: &str) -> Option<&NatGateway> {
        self.nat_gateways.get(key).or_else(|| {
            self.lookup_name(NameKind::NatGateway, "", key)
                .and_then(|id| self.nat_gateways.get(id))
        })
    }

    /// What NAT resources keep a VPC, subnet or NIC (by ID) from being deleted.
    pub(super) fn nat_dependents(
        &self,
        vpc: Option<&str>,
        subnet: Option<&str>,
        nic: Option<&str>,
    ) -> Vec<String> {
        let mut deps = vec![];
        for g in self.nat_gateways.values() {
            if Some(g.vpc.as_str()) == vpc || Some(g.subnet.as_str()) == subnet {
                deps.push(format!("nat-gateway/{}", g.id));
                continue;
            }
            for s in &g.snat {
                let hit = match &s.source {
                    SnatSource::Subnet(id) => Some(id.as_str()) == subnet,
                    SnatSource::Nic(id) => Some(id.as_str()) == nic,
                    SnatSource::Cidr(_) => false,
                };
                if hit {
                    deps.push(g.snat_reference(s));
                }
            }
            // DNAT targets inside the subnet would be left pointing nowhere.
            if let Some(sub) = subnet.and_then(|s| self.subnets.get(s)) {
                deps.extend(
                    g.dnat
                        .iter()
                        .filter(|d| sub.cidr.contains(d.private_ip))
                        .map(|d| g.dnat_reference(d)),
                );
            }
        }
        if let Some(nic) = nic {
            deps.extend(
                self.eips
                    .values()
                    .filter(|e| matches!(&e.state, EipState::Bound { nic: n } if n == nic))
                    .map(|e| format!("eip/{}", e.id)),
            );
        }
        deps
    }
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

impl Intent {
    /// Create a pool; 409 if a CIDR overlaps another pool's.
    pub fn create_eip_pool(&self, spec: EipPoolSpec) -> Result<(Intent, EipPool)> {
        self.mutate(|i| i.create_eip_pool_mut(spec))
    }

    /// Delete a pool; 409 naming its EIPs while it has any.
    pub fn delete_eip_pool(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| {
            let p = i.resolve_eip_pool("eip_pool", key)?;
            let deps: Vec<String> = i
                .eips
                .values()
                .filter(|e| e.pool == p.id)
                .map(|e| format!("eip/{}", e.id))
                .collect();
            if !deps.is_empty() {
                return Err(ValidationError::conflict(
                    "eip_pool",
                    format!("EIP pool {} has allocated EIPs; release them first", p.id),
                    deps,
                ));
            }
            i.unindex_name(NameKind::EipPool, "", &p.name);
            i.eip_pools.remove(&p.id);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    /// Allocate an EIP (and bind it when `spec.nic` is given).
    pub fn create_eip(&self, spec: EipSpec) -> Result<(Intent, Eip)> {
        self.mutate(|i| i.create_eip_mut(spec))
    }

    /// Release an EIP; 409 while it is bound or attached.
    pub fn delete_eip(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| {
            let e = i.resolve_eip("eip", key)?;
            if let Some(h) = e.holder() {
                return Err(ValidationError::conflict(
                    "eip",
                    format!(
                        "EIP {} ({}) is in use; unbind or detach it first",
                        e.id, e.address
                    ),
                    vec![h],
                ));
            }
            i.unindex_name(NameKind::Eip, "", &e.name);
            i.eips.remove(&e.id);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    /// Bind a free EIP to a NIC (1:1); binding it again to the same NIC changes nothing.
    pub fn bind_eip(&self, key: &str, bind: EipBind) -> Result<(Intent, Eip)> {
        self.mutate(|i| i.bind_eip_mut(key, &bind.nic).map(|(e, _)| e))
    }

    /// Unbind a bound EIP (it stays allocated, free).
    pub fn unbind_eip(&self, key: &str) -> Result<(Intent, Eip)> {
        self.mutate(|i| {
            let mut e = i.resolve_eip("eip", key)?;
            if !matches!(e.state, EipState::Bound { .. }) {
                return Err(ValidationError::conflict(
                    "eip",
                    format!("EIP {} is not bound to a NIC", e.id),
                    e.holder().into_iter().collect(),
                ));
            }
            e.state = EipState::Free;
            i.eips.insert(e.id.clone(), e.clone());
            Ok(e)
        })
    }

    /// Create a gateway with its EIPs and entries.
    pub fn create_nat_gateway(&self, spec: NatGatewaySpec) -> Result<(Intent, NatGateway)> {
        self.mutate(|i| i.create_nat_gateway_mut(spec))
    }

    /// Delete a gateway (its entries go with it, its EIPs become free); 409 naming the
    /// routes that send traffic to it.
    pub fn delete_nat_gateway(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| {
            let g = i.resolve_nat_gateway("nat_gateway", key)?;
            let routes: Vec<String> = i
                .routes_of(&g.vpc)
                .filter(|r| matches!(&r.next_hop, NextHop::NatGateway { nat_gateway } if *nat_gateway == g.id))
                .map(Route::reference)
                .collect();
            if !routes.is_empty() {
                return Err(ValidationError::conflict(
                    "nat_gateway",
                    format!("NAT gateway {} is the next hop of routes; delete or change them first", g.id),
                    routes,
                ));
            }
            for e in &g.eips {
                if let Some(e) = i.eips.get_mut(e) {
                    e.state = EipState::Free;
                }
            }
            i.unindex_name(NameKind::NatGateway, "", &g.name);
            i.nat_gateways.remove(&g.id);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    /// Attach a free EIP to a gateway.
    pub fn attach_nat_gateway_eip(&self, key: &str, a: EipAttach) -> Result<(Intent, NatGateway)> {
        self.mutate(|i| {
            let g = i.resolve_nat_gateway("nat_gateway", key)?;
            i.attach_eip_mut(&g.id, "eip", &a.eip)?;
            Ok(i.nat_gateways[&g.id].clone())
        })
    }

    /// Detach an EIP; 409 naming the SNAT/DNAT entries that use it.
    pub fn detach_nat_gateway_eip(&self, key: &str, eip: &str) -> Result<(Intent, NatGateway)> {
        self.mutate(|i| {
            let g = i.resolve_nat_gateway("nat_gateway", key)?;
            i.detach_eip_mut(&g.id, eip)?;
            Ok(i.nat_gateways[&g.id].clone())
        })
    }

    pub fn add_snat(&self, key: &str, spec: SnatSpec) -> Result<(Intent, SnatEntry)> {
        self.mutate(|i| {
            let g = i.resolve_nat_gateway("nat_gateway", key)?;
            i.add_snat_mut(&g.id, spec)
        })
    }

    pub fn add_dnat(&self, key: &str, spec: DnatSpec) -> Result<(Intent, DnatEntry)> {
        self.mutate(|i| {
            let g = i.resolve_nat_gateway("nat_gateway", key)?;
            i.add_dnat_mut(&g.id, spec)
        })
    }

    /// Remove a SNAT or DNAT entry (by ID) from a gateway.
    pub fn remove_nat_entry(&self, key: &str, entry: &str) -> Result<Intent> {
        self.mutate(|i| {
            let mut g = i.resolve_nat_gateway("nat_gateway", key)?;
            let before = g.snat.len() + g.dnat.len();
            g.snat.retain(|s| s.id != entry);
            g.dnat.retain(|d| d.id != entry);
            if g.snat.len() + g.dnat.len() == before {
                return Err(ValidationError::not_found(
                    "entry",
                    format!("NAT gateway {} has no entry {entry:?}", g.id),
                ));
            }
            i.nat_gateways.insert(g.id.clone(), g);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    // ---- in-place forms ----

    fn resolve_eip_pool(&self, field: &str, key: &str) -> Result<EipPool> {
        self.eip_pool(key)
            .cloned()
            .ok_or_else(|| not_found(field, "EIP pool", key))
    }

    fn resolve_eip(&self, field: &str, key: &str) -> Result<Eip> {
        self.eip(key)
            .cloned()
            .ok_or_else(|| not_found(field, "EIP", key))
    }

    fn resolve_nat_gateway(&self, field: &str, key: &str) -> Result<NatGateway> {
        self.nat_gateway(key)
            .cloned()
            .ok_or_else(|| not_found(field, "NAT gateway", key))
    }

    /// `what`: how messages name the kind; `word`: how dependents lists do.
    fn check_unique_name(
        &self,
        kind: NameKind,
        (what, word): (&str, &str),
        name: &Option<String>,
    ) -> Result<()> {
        if let Some(name) = name {
            check_nat_name("name", name)?;
            if let Some(id) = self.lookup_name(kind, "", name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("a {what} named {name:?} already exists"),
                    vec![format!("{word}/{id}")],
                ));
            }
        }
        Ok(())
    }

    fn create_eip_pool_mut(&mut self, spec: EipPoolSpec) -> Result<EipPool> {
        self.check_unique_name(NameKind::EipPool, ("EIP pool", "eip-pool"), &spec.name)?;
        if spec.cidrs.is_empty() {
            return Err(ValidationError::invalid(
                "cidrs",
                "a pool needs at least one CIDR",
            ));
        }
        let mut cidrs: Vec<Cidr> = vec![];
        for (k, c) in spec.cidrs.iter().enumerate() {
            let field = format!("cidrs[{k}]");
            let c = parse_cidr(&field, c)?;
            check_pool_cidr(&field, &c)?;
            if let Some(o) = cidrs.iter().find(|o| o.overlaps(&c)) {
                return Err(ValidationError::invalid(
                    field,
                    format!("{c} overlaps {o} of the same pool"),
                ));
            }
            let others: Vec<String> = self
                .eip_pools
                .values()
                .filter(|p| p.cidrs.iter().any(|o| o.overlaps(&c)))
                .map(|p| format!("eip-pool/{}", p.id))
                .collect();
            if !others.is_empty() {
                return Err(ValidationError::conflict(
                    field,
                    format!("{c} overlaps another EIP pool's range"),
                    others,
                ));
            }
            cidrs.push(c);
        }
        cidrs.sort();
        check_description("description", &spec.description)?;
        let id = format!("eipp-{}", self.counters.next_eip_pool);
        self.counters.next_eip_pool += 1;
        let pool = EipPool {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            cidrs,
            description: spec.description,
        };
        self.index_name(NameKind::EipPool, "", &pool.name, &id);
        self.eip_pools.insert(id, pool.clone());
        Ok(pool)
    }

    /// The lowest address of `pool` no EIP has. A range of 4 addresses or more keeps its
    /// network and broadcast addresses out of automatic allocation (routers and hosts on
    /// the public side treat them specially); an operator may still name them.
    fn lowest_free(&self, pool: &EipPool) -> Option<Ipv4Addr> {
        let used: HashSet<Ipv4Addr> = self
            .eips
            .values()
            .filter(|e| e.pool == pool.id)
            .map(|e| e.address)
            .collect();
        pool.cidrs.iter().find_map(|c| {
            let ends = c.prefix_len() <= 30;
            let (first, past) = if ends {
                (1, c.size() - 1)
            } else {
                (0, c.size())
            };
            (first..past)
                .filter_map(|k| c.nth(k))
                .find(|a| !used.contains(a))
        })
    }

    fn create_eip_mut(&mut self, spec: EipSpec) -> Result<Eip> {
        self.check_unique_name(NameKind::Eip, ("EIP", "eip"), &spec.name)?;
        let pool = spec
            .pool
            .as_deref()
            .map(|p| self.resolve_eip_pool("pool", p))
            .transpose()?;
        let (pool, address) = match &spec.address {
            Some(a) => {
                let a = parse_ip("address", a)?;
                let holder = self
                    .eip_pools
                    .values()
                    .find(|p| p.cidrs.iter().any(|c| c.contains(a)));
                let p = match (pool, holder) {
                    (Some(p), _) if p.cidrs.iter().any(|c| c.contains(a)) => p,
                    (Some(p), _) => {
                        return Err(ValidationError::invalid(
                            "address",
                            format!("{a} is not in EIP pool {}", p.id),
                        ))
                    }
                    (None, Some(h)) => h.clone(),
                    (None, None) => {
                        return Err(ValidationError::invalid(
                            "address",
                            format!("{a} is not from any EIP pool"),
                        ))
                    }
                };
                if let Some(e) = self.eips.values().find(|e| e.address == a) {
                    return Err(ValidationError::conflict(
                        "address",
                        format!("{a} is allocated already"),
                        vec![format!("eip/{}", e.id)],
                    ));
                }
                (p, a)
            }
            None => {
                let candidates: Vec<EipPool> = match pool {
                    Some(p) => vec![p],
                    None => self.eip_pools.values().cloned().collect(),
                };
                if candidates.is_empty() {
                    return Err(ValidationError::conflict(
                        "pool",
                        "there is no EIP pool",
                        vec![],
                    ));
                }
                candidates
                    .into_iter()
                    .find_map(|p| self.lowest_free(&p).map(|a| (p, a)))
                    .ok_or_else(|| {
                        ValidationError::conflict(
                            "pool",
                            "every address of the pool is allocated",
                            vec![],
                        )
                    })?
            }
        };
        let id = format!("eip-{}", self.counters.next_eip);
        self.counters.next_eip += 1;
        let eip = Eip {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            pool: pool.id,
            address,
            state: EipState::Free,
            snat_blocks: BTreeMap::new(),
        };
        self.index_name(NameKind::Eip, "", &eip.name, &id);
        self.eips.insert(id.clone(), eip.clone());
        match &spec.nic {
            Some(nic) => Ok(self.bind_eip_mut(&id, nic)?.0),
            None => Ok(eip),
        }
    }

    fn bind_eip_mut(&mut self, key: &str, nic: &str) -> Result<(Eip, Change)> {
        let mut e = self.resolve_eip("eip", key)?;
        let n = self.resolve_nic("nic", nic)?;
        match &e.state {
            EipState::Bound { nic } if *nic == n.id => return Ok((e, Change::Unchanged)),
            EipState::Free => {}
            _ => {
                return Err(ValidationError::conflict(
                    "eip",
                    format!(
                        "EIP {} ({}) is in use: an EIP binds to one NIC, or is a gateway's",
                        e.id, e.address
                    ),
                    e.holder().into_iter().collect(),
                ))
            }
        }
        if let Some(other) = self
            .eips
            .values()
            .find(|o| matches!(&o.state, EipState::Bound { nic } if *nic == n.id))
        {
            return Err(ValidationError::conflict(
                "nic",
                format!("NIC {} has EIP {} bound already", n.id, other.id),
                vec![format!("eip/{}", other.id)],
            ));
        }
        e.state = EipState::Bound { nic: n.id };
        self.eips.insert(e.id.clone(), e.clone());
        Ok((e, Change::Updated))
    }

    fn create_nat_gateway_mut(&mut self, spec: NatGatewaySpec) -> Result<NatGateway> {
        self.check_unique_name(
            NameKind::NatGateway,
            ("NAT gateway", "nat-gateway"),
            &spec.name,
        )?;
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        let subnet = self
            .subnet(Some(&vpc.id), &spec.subnet)
            .cloned()
            .ok_or_else(|| {
                not_found("subnet", &format!("subnet in VPC {}", vpc.id), &spec.subnet)
            })?;
        let id = format!("natgw-{}", self.counters.next_nat_gateway);
        self.counters.next_nat_gateway += 1;
        let g = NatGateway {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: vpc.id,
            subnet: subnet.id,
            eips: vec![],
            snat: vec![],
            dnat: vec![],
        };
        self.index_name(NameKind::NatGateway, "", &g.name, &id);
        self.nat_gateways.insert(id.clone(), g);
        for (k, e) in spec.eips.iter().enumerate() {
            self.attach_eip_mut(&id, &format!("eips[{k}]"), e)?;
        }
        for (k, s) in spec.snat.into_iter().enumerate() {
            self.add_snat_mut(&id, s)
                .map_err(|e| e.at(&format!("snat[{k}]")))?;
        }
        for (k, d) in spec.dnat.into_iter().enumerate() {
            self.add_dnat_mut(&id, d)
                .map_err(|e| e.at(&format!("dnat[{k}]")))?;
        }
        Ok(self.nat_gateways[&id].clone())
    }

    fn attach_eip_mut(&mut self, gw: &str, field: &str, key: &str) -> Result<Change> {
        let mut e = self.resolve_eip(field, key)?;
        match &e.state {
            EipState::Attached { nat_gateway } if nat_gateway == gw => {
                return Ok(Change::Unchanged)
            }
            EipState::Free => {}
            _ => {
                return Err(ValidationError::conflict(
                    field,
                    format!(
                        "EIP {} ({}) is in use: an EIP binds to one NIC, or is a gateway's",
                        e.id, e.address
                    ),
                    e.holder().into_iter().collect(),
                ))
            }
        }
        e.state = EipState::Attached {
            nat_gateway: gw.to_string(),
        };
        if let Some(g) = self.nat_gateways.get_mut(gw) {
            g.eips.push(e.id.clone());
        }
        self.eips.insert(e.id.clone(), e);
        Ok(Change::Updated)
    }

    fn detach_eip_mut(&mut self, gw: &str, key: &str) -> Result<()> {
        let e = self.resolve_eip("eip", key)?;
        let g = &self.nat_gateways[gw];
        if !g.eips.contains(&e.id) {
            return Err(ValidationError::not_found(
                "eip",
                format!("EIP {} is not attached to NAT gateway {gw}", e.id),
            ));
        }
        let users = g.users_of(&e.id);
        if !users.is_empty() {
            return Err(ValidationError::conflict(
                "eip",
                format!(
                    "EIP {} is used by NAT gateway {gw}'s entries; remove them first",
                    e.id
                ),
                users,
            ));
        }
        if let Some(g) = self.nat_gateways.get_mut(gw) {
            g.eips.retain(|x| *x != e.id);
        }
        if let Some(e) = self.eips.get_mut(&e.id) {
            e.state = EipState::Free;
        }
        Ok(())
    }

    /// An EIP reference of a gateway's entry, as its ID; 400 if not attached to it.
    fn gateway_eip(&self, g: &NatGateway, field: &str, key: &str) -> Result<String> {
        let e = self.resolve_eip(field, key)?;
        if !g.eips.contains(&e.id) {
            return Err(ValidationError::invalid(
                field,
                format!(
                    "EIP {} ({}) is not attached to NAT gateway {}",
                    e.id, e.address, g.id
                ),
            ));
        }
        Ok(e.id)
    }

    fn resolve_snat(&self, g: &NatGateway, spec: &SnatSpec) -> Result<SnatEntry> {
        let vpc = &self.vpcs[&g.vpc];
        let source = match (&spec.subnet, &spec.cidr, &spec.nic) {
            (Some(s), None, None) => {
                let sub = self.subnet(Some(&vpc.id), s).cloned().ok_or_else(|| {
                    match self.subnets.get(s.as_str()) {
                        Some(o) => ValidationError::invalid(
                            "subnet",
                            format!(
                                "subnet {} is in VPC {}, outside the gateway's VPC {}",
                                o.id, o.vpc, vpc.id
                            ),
                        ),
                        None => not_found("subnet", &format!("subnet in VPC {}", vpc.id), s),
                    }
                })?;
                SnatSource::Subnet(sub.id)
            }
            (None, Some(c), None) => {
                let c = parse_cidr("cidr", c)?;
                if !vpc.cidr.contains_cidr(&c) {
                    return Err(ValidationError::invalid(
                        "cidr",
                        format!("{c} is outside the gateway's VPC {} ({})", vpc.id, vpc.cidr),
                    ));
                }
                SnatSource::Cidr(c)
            }
            (None, None, Some(n)) => {
                let n = self.resolve_nic("nic", n)?;
                if n.vpc != vpc.id {
                    return Err(ValidationError::invalid(
                        "nic",
                        format!(
                            "NIC {} is in VPC {}, outside the gateway's VPC {}",
                            n.id, n.vpc, vpc.id
                        ),
                    ));
                }
                SnatSource::Nic(n.id)
            }
            _ => {
                return Err(ValidationError::invalid(
                    "subnet",
                    "a SNAT entry has exactly one source: subnet, cidr or nic",
                ))
            }
        };
        if spec.eips.is_empty() {
            return Err(ValidationError::invalid(
                "eips",
                "a SNAT entry needs at least one EIP",
            ));
        }
        let mut eips = vec![];
        for (k, e) in spec.eips.iter().enumerate() {
            let id = self.gateway_eip(g, &format!("eips[{k}]"), e)?;
            if eips.contains(&id) {
                return Err(ValidationError::invalid(
                    format!("eips[{k}]"),
                    format!("EIP {id} is listed twice"),
                ));
            }
            eips.push(id);
        }
        Ok(SnatEntry {
            id: String::new(),
            source,
            eips,
        })
    }

    fn resolve_dnat(&self, g: &NatGateway, spec: &DnatSpec) -> Result<DnatEntry> {
        let eip = self.gateway_eip(g, "eip", &spec.eip)?;
        let public_port = port("public_port", spec.public_port)?;
        let private_port = port(
            "private_port",
            spec.private_port.unwrap_or(spec.public_port),
        )?;
        let private_ip = parse_ip("private_ip", &spec.private_ip)?;
        let subnet = self
            .subnets_of(&g.vpc)
            .find(|s| s.cidr.contains(private_ip));
        match subnet {
            None => {
                return Err(ValidationError::invalid(
                    "private_ip",
                    format!(
                        "{private_ip} is in no subnet of the gateway's VPC {}",
                        g.vpc
                    ),
                ))
            }
            Some(s) if s.reserved_reason(private_ip).is_some() => {
                return Err(ValidationError::invalid(
                    "private_ip",
                    format!(
                        "{private_ip} is {}",
                        s.reserved_reason(private_ip).unwrap_or_default()
                    ),
                ))
            }
            Some(_) => {}
        }
        // A VIP is a valid target on one of its listeners' ports only.
        self.check_dnat_to_vip(&g.vpc, private_ip, private_port, spec.protocol)?;
        Ok(DnatEntry {
            id: String::new(),
            eip,
            protocol: spec.protocol,
            public_port,
            private_ip,
            private_port,
        })
    }

    fn add_snat_mut(&mut self, gw: &str, spec: SnatSpec) -> Result<SnatEntry> {
        let g = &self.nat_gateways[gw];
        let mut entry = self.resolve_snat(g, &spec)?;
        let most = sluice_common::nat::MAX_SNAT_EIPS;
        if entry.eips.len() > most {
            return Err(ValidationError::invalid(
                "eips",
                format!(
                    "{} EIPs; a SNAT entry uses at most {most}",
                    entry.eips.len()
                ),
            ));
        }
        if let Some(dup) = g.snat.iter().find(|s| s.source == entry.source) {
            return Err(ValidationError::conflict(
                "",
                format!(
                    "NAT gateway {gw} already translates this source ({})",
                    dup.id
                ),
                vec![g.snat_reference(dup)],
            ));
        }
        for (k, e) in entry.eips.iter().enumerate() {
            let dnat: Vec<String> = g
                .dnat
                .iter()
                .filter(|d| d.eip == *e)
                .map(|d| g.dnat_reference(d))
                .collect();
            if !dnat.is_empty() {
                return Err(ValidationError::conflict(
                    format!("eips[{k}]"),
                    format!("EIP {e} serves DNAT; an EIP serves SNAT or DNAT, not both"),
                    dnat,
                ));
            }
        }
        entry.id = format!("snat-{}", self.counters.next_snat);
        self.counters.next_snat += 1;
        if let Some(g) = self.nat_gateways.get_mut(gw) {
            g.snat.push(entry.clone());
        }
        Ok(entry)
    }

    fn add_dnat_mut(&mut self, gw: &str, spec: DnatSpec) -> Result<DnatEntry> {
        let g = &self.nat_gateways[gw];
        let mut entry = self.resolve_dnat(g, &spec)?;
        let snat: Vec<String> = g
            .snat
            .iter()
            .filter(|s| s.eips.contains(&entry.eip))
            .map(|s| g.snat_reference(s))
            .collect();
        if !snat.is_empty() {
            return Err(ValidationError::conflict(
                "eip",
                format!(
                    "EIP {} serves SNAT; an EIP serves SNAT or DNAT, not both",
                    entry.eip
                ),
                snat,
            ));
        }
        if let Some(dup) = g.dnat.iter().find(|d| {
            d.eip == entry.eip
                && d.public_port == entry.public_port
                && d.protocol.overlaps(entry.protocol)
        }) {
            return Err(ValidationError::conflict(
                "public_port",
                format!(
                    "EIP {} port {} ({}) is forwarded already by {} ({})",
                    entry.eip, entry.public_port, entry.protocol, dup.id, dup.protocol
                ),
                vec![g.dnat_reference(dup)],
            ));
        }
        entry.id = format!("dnat-{}", self.counters.next_dnat);
        self.counters.next_dnat += 1;
        if let Some(g) = self.nat_gateways.get_mut(gw) {
            g.dnat.push(entry.clone());
        }
        Ok(entry)
    }

    // ---- apply -f ----

    /// Pools, EIPs (and their bindings) and gateways (with their whole EIP and entry
    /// sets), matched by name; `record(kind, name, change)` for each.
    pub(super) fn apply_nat_mut(
        &mut self,
        pools: &[EipPoolSpec],
        eips: &[EipSpec],
        gateways: &[NatGatewaySpec],
        mut record: impl FnMut(&str, &str, Change),
    ) -> Result<()> {
        let named = |field: &str, k: usize, n: &Option<String>| -> Result<String> {
            n.clone().ok_or_else(|| {
                ValidationError::invalid(format!("{field}[{k}].name"), "required in a topology")
            })
        };
        let pool_names = pools
            .iter()
            .enumerate()
            .map(|(k, p)| named("eip_pools", k, &p.name))
            .collect::<Result<Vec<_>>>()?;
        let eip_names = eips
            .iter()
            .enumerate()
            .map(|(k, e)| named("eips", k, &e.name))
            .collect::<Result<Vec<_>>>()?;
        let gw_names = gateways
            .iter()
            .enumerate()
            .map(|(k, g)| named("nat_gateways", k, &g.name))
            .collect::<Result<Vec<_>>>()?;
        no_duplicates("eip_pools", pool_names.iter().map(String::as_str))?;
        no_duplicates("eips", eip_names.iter().map(String::as_str))?;
        no_duplicates("nat_gateways", gw_names.iter().map(String::as_str))?;

        for (k, p) in pools.iter().enumerate() {
            let c = self
                .apply_pool(p)
                .map_err(|e| e.at(&format!("eip_pools[{k}]")))?;
            record("eip-pool", &pool_names[k], c);
        }
        for (k, e) in eips.iter().enumerate() {
            let c = self
                .apply_eip(e)
                .map_err(|err| err.at(&format!("eips[{k}]")))?;
            record("eip", &eip_names[k], c);
        }
        for (k, g) in gateways.iter().enumerate() {
            let c = self
                .apply_gateway(g)
                .map_err(|e| e.at(&format!("nat_gateways[{k}]")))?;
            record("nat-gateway", &gw_names[k], c);
        }
        Ok(())
    }

    fn apply_pool(&mut self, p: &EipPoolSpec) -> Result<Change> {
        let name = p.name.as_deref().unwrap_or_default();
        let Some(existing) = self.eip_pool(name).cloned() else {
            self.create_eip_pool_mut(p.clone())?;
            return Ok(Change::Created);
        };
        let mut cidrs = p
            .cidrs
            .iter()
            .enumerate()
            .map(|(k, c)| parse_cidr(&format!("cidrs[{k}]"), c))
            .collect::<Result<Vec<_>>>()?;
        cidrs.sort();
        if cidrs != existing.cidrs {
            return Err(ValidationError::conflict(
                "cidrs",
                format!(
                    "EIP pool {}'s ranges cannot change: delete and recreate it",
                    existing.id
                ),
                vec![],
            ));
        }
        check_description("description", &p.description)?;
        if p.description != existing.description {
            let id = existing.id.clone();
            self.eip_pools.insert(
                id,
                EipPool {
                    description: p.description.clone(),
                    ..existing
                },
            );
            return Ok(Change::Updated);
        }
        Ok(Change::Unchanged)
    }

    fn apply_eip(&mut self, e: &EipSpec) -> Result<Change> {
        let name = e.name.as_deref().unwrap_or_default();
        let Some(existing) = self.eips.values().find(|x| x.name == name).cloned() else {
            self.create_eip_mut(e.clone())?;
            return Ok(Change::Created);
        };
        if let Some(p) = &e.pool {
            let p = self.resolve_eip_pool("pool", p)?;
            if p.id != existing.pool {
                return Err(ValidationError::conflict(
                    "pool",
                    format!(
                        "EIP {} is from pool {}: delete and recreate it",
                        existing.id, existing.pool
                    ),
                    vec![],
                ));
            }
        }
        if let Some(a) = &e.address {
            let a = parse_ip("address", a)?;
            if a != existing.address {
                return Err(ValidationError::conflict(
                    "address",
                    format!(
                        "EIP {} is {}: delete and recreate it",
                        existing.id, existing.address
                    ),
                    vec![],
                ));
            }
        }
        let Some(nic) = &e.nic else {
            return Ok(Change::Unchanged);
        };
        let n = self.resolve_nic("nic", nic)?;
        if let EipState::Bound { nic } = &existing.state {
            if *nic != n.id {
                // Rebind: the new binding replaces the old one.
                if let Some(x) = self.eips.get_mut(&existing.id) {
                    x.state = EipState::Free;
                }
            }
        }
        Ok(self.bind_eip_mut(&existing.id, &n.id)?.1)
    }

    /// `apply -f`: a declared VPC and subnet (references) are an existing resource's
    /// `(vpc, subnet)` (IDs); they cannot change.
    pub(super) fn check_same_place(
        &self,
        (what, id): (&str, &str),
        (vpc_id, subnet_id): (&str, &str),
        (vpc, subnet): (&str, &str),
    ) -> Result<()> {
        let vpc = self.resolve_vpc("vpc", vpc)?;
        let subnet = self.subnet(Some(&vpc.id), subnet).map(|s| s.id.clone());
        if vpc.id != vpc_id || subnet.as_deref() != Some(subnet_id) {
            return Err(ValidationError::conflict(
                if vpc.id != vpc_id { "vpc" } else { "subnet" },
                format!("{what} {id}'s VPC and subnet cannot change: delete and recreate it"),
                vec![],
            ));
        }
        Ok(())
    }

    fn apply_gateway(&mut self, t: &NatGatewaySpec) -> Result<Change> {
        let name = t.name.as_deref().unwrap_or_default();
        let Some(existing) = self.nat_gateway(name).cloned() else {
            self.create_nat_gateway_mut(t.clone())?;
            return Ok(Change::Created);
        };
        self.check_same_place(
            ("NAT gateway", &existing.id),
            (&existing.vpc, &existing.subnet),
            (&t.vpc, &t.subnet),
        )?;
        let id = existing.id.clone();
        let mut declared = BTreeSet::new();
        for (k, e) in t.eips.iter().enumerate() {
            self.attach_eip_mut(&id, &format!("eips[{k}]"), e)?;
            declared.insert(self.resolve_eip("eips", e)?.id);
        }
        // Entries: undeclared ones go first, so an EIP may move between SNAT and DNAT.
        let g = self.nat_gateways[&id].clone();
        let snat = t
            .snat
            .iter()
            .enumerate()
            .map(|(k, s)| {
                self.resolve_snat(&g, s)
                    .map_err(|e| e.at(&format!("snat[{k}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let dnat = t
            .dnat
            .iter()
            .enumerate()
            .map(|(k, d)| {
                self.resolve_dnat(&g, d)
                    .map_err(|e| e.at(&format!("dnat[{k}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let same_snat = |a: &SnatEntry, b: &SnatEntry| (&a.source, &a.eips) == (&b.source, &b.eips);
        let same_dnat = |a: &DnatEntry, b: &DnatEntry| {
            (
                &a.eip,
                a.protocol,
                a.public_port,
                a.private_ip,
                a.private_port,
            ) == (
                &b.eip,
                b.protocol,
                b.public_port,
                b.private_ip,
                b.private_port,
            )
        };
        if let Some(g) = self.nat_gateways.get_mut(&id) {
            g.snat.retain(|s| snat.iter().any(|x| same_snat(s, x)));
            g.dnat.retain(|d| dnat.iter().any(|x| same_dnat(d, x)));
        }
        for (k, (s, spec)) in snat.iter().zip(&t.snat).enumerate() {
            if !self.nat_gateways[&id].snat.iter().any(|x| same_snat(x, s)) {
                self.add_snat_mut(&id, spec.clone())
                    .map_err(|e| e.at(&format!("snat[{k}]")))?;
            }
        }
        for (k, (d, spec)) in dnat.iter().zip(&t.dnat).enumerate() {
            if !self.nat_gateways[&id].dnat.iter().any(|x| same_dnat(x, d)) {
                self.add_dnat_mut(&id, spec.clone())
                    .map_err(|e| e.at(&format!("dnat[{k}]")))?;
            }
        }
        let undeclared: Vec<String> = self.nat_gateways[&id]
            .eips
            .iter()
            .filter(|e| !declared.contains(*e))
            .cloned()
            .collect();
        for e in undeclared {
            self.detach_eip_mut(&id, &e).map_err(|err| err.at("eips"))?;
        }
        Ok(if self.nat_gateways[&id] == existing {
            Change::Unchanged
        } else {
            Change::Updated
        })
    }
}

/// Puts NAT records (as the store keeps them) into `i`, names indexed: part of
/// [`Intent::from_records`].
pub(super) fn index_nat(i: &mut Intent, pools: Vec<EipPool>, eips: Vec<Eip>, gws: Vec<NatGateway>) {
    for p in pools {
        i.index_name(NameKind::EipPool, "", &p.name, &p.id);
        i.eip_pools.insert(p.id.clone(), p);
    }
    for e in eips {
        i.index_name(NameKind::Eip, "", &e.name, &e.id);
        i.eips.insert(e.id.clone(), e);
    }
    for g in gws {
        i.index_name(NameKind::NatGateway, "", &g.name, &g.id);
        i.nat_gateways.insert(g.id.clone(), g);
    }
}

// ---------------------------------------------------------------------------------------
// SNAT port blocks
// ---------------------------------------------------------------------------------------

/// Blocks every host needing an EIP is given first (2,048 ports), before any host grows
/// past it: fewer if the EIP has fewer free or its equal split is smaller.
pub const HOST_BLOCK_BASE: usize = 8;
/// Free blocks of an EIP that growth past [`HOST_BLOCK_BASE`] leaves alone (half the
/// EIP), so that hosts needing it later still get their base share: blocks are never taken
/// back from a host that still needs them (its flows hold ports in them).
pub const GROWTH_RESERVE: usize = BLOCKS_PER_EIP as usize / 2;

impl SnatSource {
    /// Whether NIC `n` of the gateway's VPC `vpc` is a source this entry translates.
    fn covers(&self, vpc: &str, n: &super::model::Nic) -> bool {
        n.vpc == vpc
            && match self {
                SnatSource::Subnet(id) => &n.subnet == id,
                SnatSource::Cidr(c) => c.contains(n.ip),
                SnatSource::Nic(id) => &n.id == id,
            }
    }
}

impl Intent {
    /// The hosts that need SNAT ports of each EIP: those with a NIC some SNAT entry using
    /// the EIP covers.
    fn snat_block_needs(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for g in self.nat_gateways.values() {
            for entry in &g.snat {
                let hosts: BTreeSet<&String> = self
                    .nics
                    .values()
                    .filter(|n| entry.source.covers(&g.vpc, n))
                    .map(|n| &n.host)
                    .collect();
                for eip in &entry.eips {
                    needs
                        .entry(eip.clone())
                        .or_default()
                        .extend(hosts.iter().map(|h| h.to_string()));
                }
            }
        }
        needs
    }

    /// Brings every EIP's SNAT block assignment up to date, stably ([`assign_eip_blocks`]).
    /// Pure and deterministic, so it runs after every mutation.
    pub(super) fn assign_snat_blocks(&mut self) {
        if self.nat_gateways.is_empty() && self.eips.values().all(|e| e.snat_blocks.is_empty()) {
            return;
        }
        let needs = self.snat_block_needs();
        let none = BTreeSet::new();
        for (id, eip) in self.eips.iter_mut() {
            assign_eip_blocks(&mut eip.snat_blocks, needs.get(id).unwrap_or(&none));
        }
    }
}

/// One EIP's blocks for the hosts in `wanted`, stably: a host keeps the blocks it holds
/// while it still needs the EIP (its flows' ports stay its own) and a host that no longer
/// needs it gives them back. Hosts below their share then take the lowest free blocks one
/// at a time, the one holding fewest first: up to [`HOST_BLOCK_BASE`], then up to an equal
/// split of the EIP among the hosts needing it (at most [`MAX_HOST_BLOCKS`]) while more
/// than [`GROWTH_RESERVE`] blocks are free. A host never takes another's blocks, so one
/// that finds none free gets none and its new flows count as port exhaustion.
fn assign_eip_blocks(blocks: &mut BTreeMap<String, Vec<u16>>, wanted: &BTreeSet<String>) {
    blocks.retain(|host, _| wanted.contains(host));
    if wanted.is_empty() {
        return;
    }
    let used: BTreeSet<u16> = blocks.values().flatten().copied().collect();
    let mut free = (0..BLOCKS_PER_EIP).filter(|b| !used.contains(b));
    let mut left = BLOCKS_PER_EIP as usize - used.len();
    let share = (BLOCKS_PER_EIP as usize / wanted.len()).min(MAX_HOST_BLOCKS);
    for (target, reserve) in [(HOST_BLOCK_BASE.min(share), 0), (share, GROWTH_RESERVE)] {
        while left > reserve {
            let neediest = wanted
                .iter()
                .map(|h| (blocks.get(h).map_or(0, Vec::len), h))
                .filter(|(held, _)| *held < target)
                .min();
            // The host first: a free block is consumed only when someone takes it.
            let Some((_, host)) = neediest else { break };
            let Some(b) = free.next() else { break };
            blocks.entry(host.clone()).or_default().push(b);
            left -= 1;
        }
    }
    for v in blocks.values_mut() {
        v.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{validate::tests::lab, ErrorKind};
    use proptest::prelude::*;

    fn refused<T: fmt::Debug>(r: Result<T>, kind: ErrorKind, field: &str) -> ValidationError {
        let e = r.expect_err("refused");
        assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
        e
    }

    fn pool(name: &str, cidrs: &[&str]) -> EipPoolSpec {
        EipPoolSpec {
            name: Some(name.into()),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            description: None,
        }
    }

    fn eip(name: &str, address: Option<&str>) -> EipSpec {
        EipSpec {
            name: Some(name.into()),
            address: address.map(Into::into),
            ..Default::default()
        }
    }

    fn snat_subnet(subnet: &str, eips: &[&str]) -> SnatSpec {
        SnatSpec {
            subnet: Some(subnet.into()),
            eips: eips.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    fn dnat(eip: &str, protocol: NatProtocol, public_port: i64, private_ip: &str) -> DnatSpec {
        DnatSpec {
            eip: eip.into(),
            protocol,
            public_port,
            private_ip: private_ip.into(),
            private_port: None,
        }
    }

    /// The lab with pool `pub` (203.0.113.0/28), EIPs e1..e4 (.0 to .3) and gateway `gw`
    /// in tenant-a's web subnet with e1, e2 and e3 attached.
    fn nat_lab() -> Intent {
        let (i, _) = lab()
            .create_eip_pool(pool("pub", &["203.0.113.0/28"]))
            .unwrap();
        let mut i = i;
        for n in ["e1", "e2", "e3", "e4"] {
            i = i.create_eip(eip(n, None)).unwrap().0;
        }
        i.create_nat_gateway(NatGatewaySpec {
            name: Some("gw".into()),
            vpc: "tenant-a".into(),
            subnet: "web".into(),
            eips: vec!["e1".into(), "203.0.113.2".into(), "eip-3".into()],
            ..Default::default()
        })
        .unwrap()
        .0
    }

    #[test]
    fn pools_refuse_overlaps_special_space_and_large_ranges() {
        let (i, p) = lab()
            .create_eip_pool(pool("pub", &["203.0.113.0/24", "198.51.100.0/28"]))
            .unwrap();
        assert_eq!(p.id, "eipp-1");
        assert_eq!(p.cidrs[0].to_string(), "198.51.100.0/28", "sorted");
        let e = refused(
            i.create_eip_pool(pool("other", &["192.0.2.0/24", "203.0.113.128/25"])),
            ErrorKind::Conflict,
            "cidrs[1]",
        );
        assert_eq!(e.dependents, ["eip-pool/eipp-1"]);
        for (bad, field, why) in [
            (
                vec!["192.0.2.0/24", "192.0.2.64/26"],
                "cidrs[1]",
                "same pool",
            ),
            (vec!["127.0.0.0/24"], "cidrs[0]", "loopback"),
            (vec!["224.0.0.0/24"], "cidrs[0]", "multicast"),
            (vec!["100.64.0.0/10"], "cidrs[0]", "larger than a /16"),
            (vec!["192.0.2.1/24"], "cidrs[0]", "host bits"),
            (vec![], "cidrs", "at least one"),
        ] {
            let e = refused(
                i.create_eip_pool(pool("x", &bad)),
                ErrorKind::Invalid,
                field,
            );
            assert!(e.reason.contains(why), "{bad:?}: {e}");
        }
        refused(
            i.create_eip_pool(pool("pub", &["192.0.2.0/24"])),
            ErrorKind::Conflict,
            "name",
        );
        refused(
            i.create_eip_pool(pool("eip-7", &["192.0.2.0/24"])),
            ErrorKind::Invalid,
            "name",
        );
    }

    #[test]
    fn eips_come_from_a_pool_lowest_free_first() {
        let (i, _) = lab()
            .create_eip_pool(pool("pub", &["203.0.113.0/30"]))
            .unwrap();
        let (i, a) = i.create_eip(eip("a", Some("203.0.113.2"))).unwrap();
        assert_eq!(
            (a.pool.as_str(), a.state.clone()),
            ("eipp-1", EipState::Free)
        );
        let (i, b) = i.create_eip(eip("b", None)).unwrap();
        assert_eq!(
            b.address.to_string(),
            "203.0.113.1",
            "the network address .0 is not handed out"
        );
        let e = refused(
            i.create_eip(eip("d", Some("203.0.113.2"))),
            ErrorKind::Conflict,
            "address",
        );
        assert_eq!(e.dependents, ["eip/eip-1"]);
        let e = refused(
            i.create_eip(eip("d", Some("192.0.2.9"))),
            ErrorKind::Invalid,
            "address",
        );
        assert!(e.reason.contains("not from any EIP pool"), "{e}");
        refused(
            i.create_eip(eip("d", Some("nope"))),
            ErrorKind::Invalid,
            "address",
        );
        refused(
            i.create_eip(eip("1.2.3.4", None)),
            ErrorKind::Invalid,
            "name",
        );
        // .0 and .3 are left: the network and broadcast addresses, never allocated...
        let e = refused(i.create_eip(eip("e", None)), ErrorKind::Conflict, "pool");
        assert!(e.reason.contains("every address"), "{e}");
        // ...but an operator may name one.
        let (i, _) = i.create_eip(eip("d", Some("203.0.113.3"))).unwrap();
        // A /31 or /32 has no network or broadcast address to keep out.
        let (i, _) = i
            .create_eip_pool(pool("one", &["198.51.100.7/32"]))
            .unwrap();
        let (i, one) = i.create_eip(eip("one", None)).unwrap();
        assert_eq!(one.address.to_string(), "198.51.100.7");
        // Another pool: an address outside the named pool is refused.
        let (i, _) = i.create_eip_pool(pool("more", &["192.0.2.0/24"])).unwrap();
        let spec = EipSpec {
            pool: Some("pub".into()),
            ..eip("e", Some("192.0.2.5"))
        };
        refused(i.create_eip(spec), ErrorKind::Invalid, "address");
        let (i, e) = i.create_eip(eip("e", None)).unwrap();
        assert_eq!(
            (e.pool.as_str(), e.address.to_string().as_str()),
            ("eipp-3", "192.0.2.1")
        );
        // A pool with EIPs is not deleted; by address, name or ID they are found.
        let err = refused(i.delete_eip_pool("pub"), ErrorKind::Conflict, "eip_pool");
        assert_eq!(err.dependents.len(), 3);
        assert_eq!(i.eip("192.0.2.1").unwrap().id, e.id);
        let i = i.delete_eip("192.0.2.1").unwrap();
        let i = i.delete_eip_pool("more").unwrap();
        assert!(i.eip_pool("more").is_none());
        assert_eq!(Intent::from_records(i.to_records()), i);
    }

    #[test]
    fn an_eip_binds_to_one_nic_and_a_nic_has_one_eip() {
        let i = nat_lab();
        let (i, e) = i
            .bind_eip(
                "e4",
                EipBind {
                    nic: "a-vm1".into(),
                },
            )
            .unwrap();
        let vm1 = i.nic("a-vm1").unwrap().id.clone();
        assert_eq!(e.state, EipState::Bound { nic: vm1.clone() });
        // Binding again to the same NIC changes nothing.
        let (again, _) = i
            .bind_eip(
                "e4",
                EipBind {
                    nic: "a-vm1".into(),
                },
            )
            .unwrap();
        assert_eq!(again, i);
        let err = refused(
            i.bind_eip(
                "e4",
                EipBind {
                    nic: "b-vm1".into(),
                },
            ),
            ErrorKind::Conflict,
            "eip",
        );
        assert_eq!(err.dependents, [format!("nic/{vm1}")]);
        // Attached to the gateway: not bindable.
        let err = refused(
            i.bind_eip(
                "e1",
                EipBind {
                    nic: "b-vm1".into(),
                },
            ),
            ErrorKind::Conflict,
            "eip",
        );
        assert_eq!(err.dependents, ["nat-gateway/natgw-1"]);
        refused(
            i.bind_eip("e4", EipBind { nic: "nope".into() }),
            ErrorKind::NotFound,
            "nic",
        );
        // A second EIP for the same NIC.
        let (j, _) = i.create_eip(eip("e5", None)).unwrap();
        let err = refused(
            j.bind_eip(
                "e5",
                EipBind {
                    nic: "a-vm1".into(),
                },
            ),
            ErrorKind::Conflict,
            "nic",
        );
        assert_eq!(err.dependents, ["eip/eip-4"]);
        // Bound: neither released nor its NIC deleted.
        refused(i.delete_eip("e4"), ErrorKind::Conflict, "eip");
        let err = refused(i.delete_nic("a-vm1"), ErrorKind::Conflict, "nic");
        assert_eq!(err.dependents, ["eip/eip-4"]);
        let (i, e) = i.unbind_eip("e4").unwrap();
        assert_eq!(e.state, EipState::Free);
        refused(i.unbind_eip("e4"), ErrorKind::Conflict, "eip");
        refused(i.unbind_eip("e1"), ErrorKind::Conflict, "eip");
        let i = i.delete_eip("e4").unwrap();
        i.delete_nic("a-vm1").unwrap();
        // Created bound in one step.
        let (_, e) = i
            .create_eip(EipSpec {
                nic: Some("b-vm1".into()),
                ..eip("e9", None)
            })
            .unwrap();
        assert!(matches!(e.state, EipState::Bound { .. }));
    }

    #[test]
    fn gateway_eips_must_be_free_and_entries_use_only_attached_ones() {
        let i = nat_lab();
        let g = i.nat_gateway("gw").unwrap();
        assert_eq!(g.eips, ["eip-1", "eip-2", "eip-3"]);
        assert_eq!(
            i.eip("e1").unwrap().state,
            EipState::Attached {
                nat_gateway: "natgw-1".into()
            }
        );
        // e1 is gw's already: a second gateway cannot have it.
        let spec = NatGatewaySpec {
            name: Some("gw2".into()),
            vpc: "tenant-b".into(),
            subnet: "web".into(),
            eips: vec!["e4".into(), "e1".into()],
            ..Default::default()
        };
        let e = refused(i.create_nat_gateway(spec), ErrorKind::Conflict, "eips[1]");
        assert_eq!(e.dependents, ["nat-gateway/natgw-1"]);
        assert!(
            i.eip("e4").unwrap().state == EipState::Free,
            "nothing changed"
        );
        let e = refused(
            i.add_snat("gw", snat_subnet("web", &["e4"])),
            ErrorKind::Invalid,
            "eips[0]",
        );
        assert!(e.reason.contains("not attached"), "{e}");
        refused(
            i.add_snat("gw", snat_subnet("web", &[])),
            ErrorKind::Invalid,
            "eips",
        );
        refused(
            i.add_snat("gw", snat_subnet("web", &["e1", "eip-1"])),
            ErrorKind::Invalid,
            "eips[1]",
        );
        refused(
            i.add_dnat("gw", dnat("e4", NatProtocol::Tcp, 80, "10.0.1.10")),
            ErrorKind::Invalid,
            "eip",
        );
        refused(
            i.add_snat("nope", snat_subnet("web", &["e1"])),
            ErrorKind::NotFound,
            "nat_gateway",
        );
        let (i, _) = i
            .attach_nat_gateway_eip("gw", EipAttach { eip: "e4".into() })
            .unwrap();
        assert_eq!(i.nat_gateway("gw").unwrap().eips.len(), 4);
    }

    #[test]
    fn snat_sources_must_be_inside_the_gateways_vpc() {
        let i = nat_lab();
        let b_web = i.subnet(Some("tenant-b"), "web").unwrap().id.clone();
        let e = refused(
            i.add_snat("gw", snat_subnet(&b_web, &["e1"])),
            ErrorKind::Invalid,
            "subnet",
        );
        assert!(e.reason.contains("outside the gateway's VPC"), "{e}");
        let cidr = |c: &str| SnatSpec {
            cidr: Some(c.into()),
            eips: vec!["e1".into()],
            ..Default::default()
        };
        refused(
            i.add_snat("gw", cidr("10.1.0.0/24")),
            ErrorKind::Invalid,
            "cidr",
        );
        refused(
            i.add_snat("gw", cidr("0.0.0.0/0")),
            ErrorKind::Invalid,
            "cidr",
        );
        let nic = |n: &str| SnatSpec {
            nic: Some(n.into()),
            eips: vec!["e1".into()],
            ..Default::default()
        };
        refused(i.add_snat("gw", nic("b-vm1")), ErrorKind::Invalid, "nic");
        let two = SnatSpec {
            subnet: Some("web".into()),
            ..nic("a-vm1")
        };
        refused(i.add_snat("gw", two), ErrorKind::Invalid, "subnet");

        let (i, s) = i.add_snat("gw", cidr("10.0.2.0/24")).unwrap();
        assert_eq!(
            (s.id.as_str(), s.source.clone()),
            ("snat-1", SnatSource::Cidr("10.0.2.0/24".parse().unwrap()))
        );
        let (i, _) = i.add_snat("gw", nic("a-vm1")).unwrap();
        let (i, _) = i.add_snat("gw", snat_subnet("web", &["e1", "e2"])).unwrap();
        let e = refused(
            i.add_snat("gw", cidr("10.0.2.0/24")),
            ErrorKind::Conflict,
            "",
        );
        assert_eq!(e.dependents, ["snat/natgw-1:snat-1"]);
        // Sources keep their subnet and NIC from being deleted.
        let err = refused(i.delete_nic("a-vm1"), ErrorKind::Conflict, "nic");
        assert_eq!(err.dependents, ["snat/natgw-1:snat-2"]);
        let (j, _) = i
            .attach_nat_gateway_eip("gw", EipAttach { eip: "e4".into() })
            .unwrap();
        let (j, d) = j
            .add_dnat("gw", dnat("e4", NatProtocol::Tcp, 22, "10.0.2.10"))
            .unwrap();
        let err = refused(
            j.delete_subnet(Some("tenant-a"), "db"),
            ErrorKind::Conflict,
            "subnet",
        );
        assert!(
            err.dependents.contains(&format!("dnat/natgw-1:{}", d.id)),
            "{err}"
        );
        let err = refused(i.delete_vpc("tenant-a"), ErrorKind::Conflict, "vpc");
        assert!(
            err.dependents.contains(&"nat-gateway/natgw-1".to_string()),
            "{err}"
        );
    }

    #[test]
    fn an_eip_serves_snat_or_dnat_never_both() {
        let i = nat_lab();
        let (i, _) = i.add_snat("gw", snat_subnet("web", &["e1"])).unwrap();
        let e = refused(
            i.add_dnat("gw", dnat("e1", NatProtocol::Tcp, 80, "10.0.1.10")),
            ErrorKind::Conflict,
            "eip",
        );
        assert_eq!(e.dependents, ["snat/natgw-1:snat-1"]);
        let (i, d) = i
            .add_dnat("gw", dnat("e2", NatProtocol::Tcp, 80, "10.0.1.10"))
            .unwrap();
        assert_eq!((d.id.as_str(), d.private_port), ("dnat-1", 80));
        let e = refused(
            i.add_snat("gw", snat_subnet("db", &["e3", "e2"])),
            ErrorKind::Conflict,
            "eips[1]",
        );
        assert_eq!(e.dependents, ["dnat/natgw-1:dnat-1"]);
    }

    #[test]
    fn dnat_entries_never_share_an_eip_protocol_and_port() {
        let i = nat_lab();
        let (i, _) = i
            .add_dnat("gw", dnat("e2", NatProtocol::Tcp, 80, "10.0.1.10"))
            .unwrap();
        // udp 80 is a different service; tcp 80 again, or any 80, overlaps.
        let (i, _) = i
            .add_dnat("gw", dnat("e2", NatProtocol::Udp, 80, "10.0.1.20"))
            .unwrap();
        for p in [NatProtocol::Tcp, NatProtocol::Any] {
            let e = refused(
                i.add_dnat("gw", dnat("e2", p, 80, "10.0.1.30")),
                ErrorKind::Conflict,
                "public_port",
            );
            assert_eq!(e.dependents, ["dnat/natgw-1:dnat-1"], "{p}");
        }
        let (i, _) = i
            .add_dnat("gw", dnat("e3", NatProtocol::Any, 53, "10.0.1.10"))
            .unwrap();
        let e = refused(
            i.add_dnat("gw", dnat("e3", NatProtocol::Udp, 53, "10.0.1.20")),
            ErrorKind::Conflict,
            "public_port",
        );
        assert_eq!(e.dependents, ["dnat/natgw-1:dnat-3"]);
        for (spec, field) in [
            (dnat("e3", NatProtocol::Tcp, 0, "10.0.1.10"), "public_port"),
            (
                dnat("e3", NatProtocol::Tcp, 70000, "10.0.1.10"),
                "public_port",
            ),
            (dnat("e3", NatProtocol::Tcp, 22, "10.1.1.10"), "private_ip"),
            (dnat("e3", NatProtocol::Tcp, 22, "10.0.1.1"), "private_ip"),
            (dnat("e3", NatProtocol::Tcp, 22, "x"), "private_ip"),
            (
                DnatSpec {
                    private_port: Some(-1),
                    ..dnat("e3", NatProtocol::Tcp, 22, "10.0.1.10")
                },
                "private_port",
            ),
        ] {
            refused(i.add_dnat("gw", spec), ErrorKind::Invalid, field);
        }
        // Removed, its (EIP, tcp, port) is free again; udp 80 still holds any 80.
        let i = i.remove_nat_entry("gw", "dnat-1").unwrap();
        refused(
            i.add_dnat("gw", dnat("e2", NatProtocol::Any, 80, "10.0.1.10")),
            ErrorKind::Conflict,
            "public_port",
        );
        i.add_dnat("gw", dnat("e2", NatProtocol::Tcp, 80, "10.0.1.10"))
            .unwrap();
        refused(
            i.remove_nat_entry("gw", "dnat-1"),
            ErrorKind::NotFound,
            "entry",
        );
    }

    #[test]
    fn detaching_an_eip_in_use_names_the_entries() {
        let i = nat_lab();
        let (i, _) = i.add_snat("gw", snat_subnet("web", &["e1", "e2"])).unwrap();
        let (i, _) = i
            .add_dnat("gw", dnat("e3", NatProtocol::Tcp, 443, "10.0.1.10"))
            .unwrap();
        let e = refused(
            i.detach_nat_gateway_eip("gw", "e2"),
            ErrorKind::Conflict,
            "eip",
        );
        assert_eq!(e.dependents, ["snat/natgw-1:snat-1"]);
        let e = refused(
            i.detach_nat_gateway_eip("gw", "e3"),
            ErrorKind::Conflict,
            "eip",
        );
        assert_eq!(e.dependents, ["dnat/natgw-1:dnat-1"]);
        refused(
            i.detach_nat_gateway_eip("gw", "e4"),
            ErrorKind::NotFound,
            "eip",
        );
        let i = i.remove_nat_entry("gw", "dnat-1").unwrap();
        let (i, g) = i.detach_nat_gateway_eip("gw", "203.0.113.3").unwrap();
        assert_eq!(g.eips, ["eip-1", "eip-2"]);
        assert_eq!(i.eip("e3").unwrap().state, EipState::Free);
    }

    #[test]
    fn routes_reach_a_gateway_of_their_own_vpc_and_keep_it() {
        let i = nat_lab();
        let route = |vpc: &str, gw: &str| RouteSpec {
            vpc: vpc.into(),
            destination: "0.0.0.0/0".into(),
            next_hop: NextHop::NatGateway {
                nat_gateway: gw.into(),
            },
        };
        refused(
            i.put_route(route("tenant-b", "gw")),
            ErrorKind::Invalid,
            "next_hop.nat_gateway",
        );
        refused(
            i.put_route(route("tenant-a", "nope")),
            ErrorKind::NotFound,
            "next_hop.nat_gateway",
        );
        let (i, r) = i.put_route(route("tenant-a", "gw")).unwrap();
        assert_eq!(
            r.next_hop,
            NextHop::NatGateway {
                nat_gateway: "natgw-1".into()
            }
        );
        let e = refused(
            i.delete_nat_gateway("gw"),
            ErrorKind::Conflict,
            "nat_gateway",
        );
        assert_eq!(e.dependents, [r.reference()]);
        let table = i.route_table("tenant-a").unwrap();
        assert!(table.iter().any(|t| t.target
            == RouteTarget::NatGateway {
                nat_gateway: "natgw-1".into()
            }));
        // Without the route it goes, and its EIPs are free again (still allocated).
        let i = i.delete_route("tenant-a", "0.0.0.0/0").unwrap();
        let (i, _) = i.add_snat("gw", snat_subnet("web", &["e1"])).unwrap();
        let i = i.delete_nat_gateway("gw").unwrap();
        assert!(i.eips().all(|e| e.state == EipState::Free));
        assert_eq!(i.eips().count(), 4);
        let a_web = i.subnet(Some("tenant-a"), "web").unwrap().id.clone();
        assert!(i.nat_dependents(None, Some(&a_web), None).is_empty());
    }

    const NAT_TOPOLOGY: &str = r#"
eip_pools:
  - { name: pub, cidrs: [203.0.113.0/28] }
eips:
  - { name: e1 }
  - { name: e2, address: 203.0.113.9 }
  - { name: web-ip, nic: a-vm2 }
nat_gateways:
  - name: gw
    vpc: tenant-a
    subnet: web
    eips: [e1, e2]
    snat:
      - { subnet: web, eips: [e1] }
    dnat:
      - { eip: e2, protocol: tcp, public_port: 8080, private_ip: 10.0.1.10, private_port: 80 }
vpcs:
  - name: tenant-a
    cidr: 10.0.0.0/16
    routes:
      - destination: 0.0.0.0/0
        next_hop: { type: nat_gateway, nat_gateway: gw }
"#;

    #[test]
    fn apply_creates_nat_resources_then_changes_nothing() {
        let t: Topology = serde_yaml::from_str(NAT_TOPOLOGY).unwrap();
        let (i, sum) = lab().apply(t.clone()).unwrap();
        for k in [
            "eip-pool/pub",
            "eip/e1",
            "eip/e2",
            "eip/web-ip",
            "nat-gateway/gw",
        ] {
            assert!(sum.created.contains(&k.to_string()), "{k}: {sum:?}");
        }
        assert_eq!(sum.updated, ["route/tenant-a/0.0.0.0/0"]);
        let g = i.nat_gateway("gw").unwrap();
        assert_eq!((g.snat.len(), g.dnat.len()), (1, 1));
        assert_eq!(i.eip("e2").unwrap().address.to_string(), "203.0.113.9");
        assert!(matches!(
            i.eip("web-ip").unwrap().state,
            EipState::Bound { .. }
        ));
        let (again, sum) = i.apply(t.clone()).unwrap();
        assert_eq!(sum.changes(), 0, "{sum:?}");
        assert_eq!(again, i);
        assert_eq!(Intent::from_records(i.to_records()), i);

        // Moving e2 from DNAT to SNAT in one apply: entries go before they are added.
        let mut t2 = t.clone();
        t2.nat_gateways[0].snat[0].eips.push("e2".into());
        t2.nat_gateways[0].dnat.clear();
        let (j, sum) = i.apply(t2).unwrap();
        assert_eq!(sum.updated, ["nat-gateway/gw"]);
        let g = j.nat_gateway("gw").unwrap();
        assert_eq!((g.snat[0].eips.len(), g.dnat.len()), (2, 0));

        // Errors name the field inside the topology and change nothing.
        let mut bad = t.clone();
        bad.nat_gateways[0].dnat[0].private_ip = "10.9.0.1".into();
        bad.nat_gateways[0].name = Some("gw2".into());
        bad.nat_gateways[0].eips = vec!["e1".into()];
        let e = refused(i.apply(bad), ErrorKind::Conflict, "nat_gateways[0].eips[0]");
        assert_eq!(e.dependents, ["nat-gateway/natgw-1"]);
        let mut bad = t;
        bad.eips[2].name = None;
        refused(i.apply(bad), ErrorKind::Invalid, "eips[2].name");
    }

    fn hosts(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        names.into_iter().collect()
    }

    fn range(r: std::ops::Range<u16>) -> Vec<u16> {
        r.collect()
    }

    #[test]
    fn hosts_get_an_equal_split_of_an_eip_up_to_the_cap() {
        // Alone, a host gets the cap (8,192 ports), the lowest blocks.
        let mut b = BTreeMap::new();
        assign_eip_blocks(&mut b, &hosts(["h1".to_string()]));
        assert_eq!(b["h1"], range(0..MAX_HOST_BLOCKS as u16));
        // A second gets the cap from the free blocks; the first keeps its own.
        assign_eip_blocks(&mut b, &hosts(["h1".into(), "h2".into()]));
        assert_eq!(b["h1"], range(0..32));
        assert_eq!(b["h2"], range(32..64));
        // Its need gone, h1 gives them back and a newcomer takes the lowest free.
        assign_eip_blocks(&mut b, &hosts(["h2".into(), "h3".into()]));
        assert_eq!(b.keys().collect::<Vec<_>>(), ["h2", "h3"]);
        assert_eq!(
            (b["h2"].clone(), b["h3"].clone()),
            (range(32..64), range(0..32))
        );

        // Ten hosts at once: the base share each, then equal growth while more than the
        // reserve is free.
        let mut b = BTreeMap::new();
        assign_eip_blocks(&mut b, &hosts((0..10).map(|k| format!("x{k}"))));
        let sizes: BTreeSet<usize> = b.values().map(Vec::len).collect();
        assert_eq!(sizes, BTreeSet::from([12, 13]), "{b:?}");
        let held: usize = b.values().map(Vec::len).sum();
        assert_eq!(held, BLOCKS_PER_EIP as usize - GROWTH_RESERVE);
    }

    #[test]
    fn hosts_needing_an_eip_one_by_one_keep_their_blocks_and_later_ones_still_get_ports() {
        let mut b: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        let mut wanted = BTreeSet::new();
        // The reserve leaves room for the base share of (252 - 126) / 8 = 15 hosts after the
        // first four grew.
        for k in 0..19 {
            let host = format!("h{k:02}");
            wanted.insert(host.clone());
            let before = b.clone();
            assign_eip_blocks(&mut b, &wanted);
            for (h, blocks) in &before {
                assert_eq!(&b[h], blocks, "{h} kept its blocks when {host} came");
            }
            let want = if k < 3 {
                MAX_HOST_BLOCKS
            } else {
                HOST_BLOCK_BASE
            };
            assert!(b[&host].len() >= want, "{host}: {:?}", b[&host]);
        }
        // The others grow into what a leaver frees, up to the cap.
        wanted.remove("h00");
        assign_eip_blocks(&mut b, &wanted);
        assert!(!b.contains_key("h00"));
        let free = BLOCKS_PER_EIP as usize - b.values().map(Vec::len).sum::<usize>();
        assert!(free > 0 && free <= GROWTH_RESERVE, "{free} free");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever sequence of allocations (given or lowest-free) and releases, no address
        /// is held twice and every one lies inside its pool.
        #[test]
        fn allocation_never_hands_out_an_address_twice_or_outside_a_pool(
            ops in prop::collection::vec((0u8..4, 0u32..40), 1..60),
        ) {
            let (mut i, _) = lab()
                .create_eip_pool(pool("a", &["203.0.113.0/28", "203.0.113.32/30"]))
                .unwrap();
            i = i.create_eip_pool(pool("b", &["198.51.100.0/29"])).unwrap().0;
            let mut n = 0;
            for (op, x) in ops {
                n += 1;
                let name = format!("x{n}");
                let r = match op {
                    0 => i.create_eip(eip(&name, None)).map(|(i, _)| i),
                    1 => i.create_eip(EipSpec { pool: Some("b".into()), ..eip(&name, None) }).map(|(i, _)| i),
                    // Any address around the pools, inside or not.
                    2 => {
                        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(203, 0, 113, 0)) + x);
                        i.create_eip(eip(&name, Some(&a.to_string()))).map(|(i, _)| i)
                    }
                    _ => match i.eips().nth(x as usize % (i.eips().count().max(1))) {
                        Some(e) => i.delete_eip(&e.id.clone()),
                        None => continue,
                    },
                };
                if let Ok(next) = r {
                    i = next;
                }
                let mut seen = HashSet::new();
                for e in i.eips() {
                    prop_assert!(seen.insert(e.address), "{} twice", e.address);
                    let p = i.eip_pool(&e.pool).unwrap();
                    prop_assert!(p.cidrs.iter().any(|c| c.contains(e.address)), "{} outside {}", e.address, p.id);
                }
            }
        }

        /// Whatever hosts come and go, an EIP's blocks are never held twice, a host that
        /// stays keeps every block it had, none holds more than the cap, and a host below
        /// its base share means no block was free.
        #[test]
        fn block_assignment_is_disjoint_stable_and_serves_everyone_it_can(
            steps in prop::collection::vec(prop::collection::btree_set(0u8..40, 0..40), 1..30),
        ) {
            let mut b: BTreeMap<String, Vec<u16>> = BTreeMap::new();
            for step in steps {
                let wanted = hosts(step.iter().map(|k| format!("h{k}")));
                let before = b.clone();
                assign_eip_blocks(&mut b, &wanted);
                let mut seen = HashSet::new();
                for (h, blocks) in &b {
                    prop_assert!(wanted.contains(h), "{h} holds blocks it does not need");
                    prop_assert!(blocks.len() <= MAX_HOST_BLOCKS);
                    for x in blocks {
                        prop_assert!(*x < BLOCKS_PER_EIP && seen.insert(*x), "block {x} twice or out of range");
                    }
                    if let Some(old) = before.get(h) {
                        prop_assert!(old.iter().all(|x| blocks.contains(x)), "{h} lost blocks");
                    }
                }
                let free = BLOCKS_PER_EIP as usize - seen.len();
                let base = HOST_BLOCK_BASE.min(BLOCKS_PER_EIP as usize / wanted.len().max(1));
                for h in &wanted {
                    let held = b.get(h).map_or(0, Vec::len);
                    prop_assert!(held >= base || free == 0, "{h} holds {held} with {free} free");
                }
            }
        }
    }
}
