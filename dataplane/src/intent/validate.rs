//! Validated mutations of the intent. Each is pure and all or nothing: it takes the
//! current intent and returns a new one, or a [`ValidationError`] and nothing changed.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::Ipv4Addr,
    sync::Arc,
};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{model::*, sg::DEFAULT_GROUP_NAME};

/// What kind of mistake a request made; decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or out-of-range value (400).
    Invalid,
    /// The resource, or one the request refers to, does not exist (404).
    NotFound,
    /// Clashes with existing state, or other resources still depend on it (409).
    Conflict,
}

/// Why a request was refused: the offending field (e.g. `cidr`, `vpcs[0].subnets[1].cidr`),
/// the reason, and for conflicts the resources in the way (`kind/id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    pub kind: ErrorKind,
    pub field: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
}

impl ValidationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, field, reason, vec![])
    }

    pub fn not_found(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, field, reason, vec![])
    }

    pub fn conflict(
        field: impl Into<String>,
        reason: impl Into<String>,
        dependents: Vec<String>,
    ) -> Self {
        Self::new(ErrorKind::Conflict, field, reason, dependents)
    }

    fn new(
        kind: ErrorKind,
        field: impl Into<String>,
        reason: impl Into<String>,
        dependents: Vec<String>,
    ) -> Self {
        Self {
            kind,
            field: field.into(),
            reason: reason.into(),
            dependents,
        }
    }

    /// 400, 404 or 409.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
        }
    }

    /// The same error, located inside `prefix` (e.g. `vpcs[2]`).
    pub fn at(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)?;
        if !self.dependents.is_empty() {
            write!(f, " (dependents: {})", self.dependents.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

type Result<T, E = ValidationError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------

const MAX_NAME_LEN: usize = 63;
/// IFNAMSIZ minus the NUL.
const MAX_IFNAME_LEN: usize = 15;
pub const MIN_VPC_PREFIX: u8 = 8;
pub const MAX_VPC_PREFIX: u8 = 28;
/// Smallest subnet: a /28 has 16 addresses, 11 usable after the 5 reserved.
pub const MAX_SUBNET_PREFIX: u8 = 28;
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
pub const MIN_UNDERLAY_MTU: u32 = 576;
pub const MAX_UNDERLAY_MTU: u32 = 65535;
/// Prefixes allocated IDs start with; a name may not look like an ID.
const ID_PREFIXES: [&str; 4] = ["vpc", "subnet", "nic", "pcx"];

const MAX_DESCRIPTION_LEN: usize = 255;

/// Free text (security groups, rules, blocklist entries): short, one line.
pub(super) fn check_description(field: &str, d: &Option<String>) -> Result<()> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN || d.chars().any(char::is_control) => {
            Err(ValidationError::invalid(
                field,
                format!("at most {MAX_DESCRIPTION_LEN} characters, no control characters"),
            ))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_name(field: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Err(ValidationError::invalid(field, format!("{name:?} {why}")));
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("must be 1 to 63 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Names of ID-carrying resources must not look like IDs (`vpc-3`), so a reference is
/// never ambiguous.
fn check_resource_name(field: &str, name: &str) -> Result<()> {
    check_name(field, name)?;
    if let Some((prefix, n)) = name.split_once('-') {
        if ID_PREFIXES.contains(&prefix) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::invalid(
                field,
                format!("{name:?} looks like an ID (<kind>-<number>); IDs are allocated"),
            ));
        }
    }
    Ok(())
}

fn check_ifname(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!(
                "{name:?} is not a valid interface name: 1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or whitespace"
            ),
        ))
    }
}

pub(super) fn parse_cidr(field: &str, s: &str) -> Result<Cidr> {
    s.trim()
        .parse()
        .map_err(|e: String| ValidationError::invalid(field, e))
}

pub(super) fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr> {
    s.trim()
        .parse()
        .map_err(|_| ValidationError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

fn parse_unicast_mac(field: &str, s: &str) -> Result<MacAddr> {
    let mac: MacAddr = s
        .trim()
        .parse()
        .map_err(|e: String| ValidationError::invalid(field, e))?;
    if mac.is_multicast() {
        return Err(ValidationError::invalid(
            field,
            format!("{mac} is a multicast address; a unicast MAC is needed"),
        ));
    }
    if mac.is_zero() {
        return Err(ValidationError::invalid(
            field,
            "00:00:00:00:00:00 is not a usable MAC",
        ));
    }
    Ok(mac)
}

/// Ranges no VPC may use: they mean something else to every host.
const SPECIAL_RANGES: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

fn check_vpc_cidr(field: &str, cidr: &Cidr) -> Result<()> {
    if !(MIN_VPC_PREFIX..=MAX_VPC_PREFIX).contains(&cidr.prefix_len()) {
        return Err(ValidationError::invalid(
            field,
            format!("{cidr}: a VPC's prefix length must be /{MIN_VPC_PREFIX} to /{MAX_VPC_PREFIX}"),
        ));
    }
    for (range, what) in SPECIAL_RANGES {
        let range: Cidr = range.parse().expect("constant CIDR");
        if range.overlaps(cidr) {
            return Err(ValidationError::invalid(
                field,
                format!("{cidr} overlaps {range} ({what})"),
            ));
        }
    }
    Ok(())
}

fn check_underlay_ip(field: &str, ip: Ipv4Addr) -> Result<()> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ValidationError::invalid(
            field,
            format!("{ip} is not a unicast address a VTEP can use"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

impl Intent {
    /// Run `f` on a copy; the copy is returned only if `f` succeeds.
    pub(super) fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Intent) -> Result<T>,
    ) -> Result<(Intent, T)> {
        let mut next = self.clone();
        let out = f(&mut next)?;
        // Derived state that follows every change: which host holds which SNAT ports.
        next.assign_snat_blocks();
        Ok((next, out))
    }

    /// Register a host; 409 if the name is taken.
    pub fn create_host(&self, spec: HostSpec) -> Result<(Intent, Host)> {
        if self.hosts.contains_key(&spec.name) {
            return Err(ValidationError::conflict(
                "name",
                format!("host {:?} already exists", spec.name),
                vec![format!("host/{}", spec.name)],
            ));
        }
        self.put_host(spec)
    }

    /// Register a host, or replace an existing host's underlay settings.
    pub fn put_host(&self, spec: HostSpec) -> Result<(Intent, Host)> {
        self.mutate(|i| i.put_host_mut(spec).map(|(h, _)| h))
    }

    /// Unregister a host; 409 while NICs are on it.
    pub fn delete_host(&self, name: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_host_mut(name)).map(|(i, ())| i)
    }

    /// Create a VPC (with its empty route table and its `default` security group),
    /// allocating its ID and VNI.
    pub fn create_vpc(&self, spec: VpcSpec) -> Result<(Intent, Vpc)> {
        self.mutate(|i| i.create_vpc_mut(spec))
    }

    /// Delete a VPC (ID or name) and its default security group; 409 listing its subnets,
    /// NICs, routes, peerings and other security groups.
    pub fn delete_vpc(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_vpc_mut(key)).map(|(i, ())| i)
    }

    pub fn create_subnet(&self, spec: SubnetSpec) -> Result<(Intent, Subnet)> {
        self.mutate(|i| i.create_subnet_mut(spec))
    }

    /// Delete a subnet (ID, or name within `vpc`); 409 while NICs are in it.
    pub fn delete_subnet(&self, vpc: Option<&str>, key: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_subnet_mut(vpc, key))
            .map(|(i, ())| i)
    }

    /// Create a NIC; its IP and MAC are allocated when not given, and without groups it is
    /// in the VPC's default security group.
    pub fn create_nic(&self, spec: NicSpec) -> Result<(Intent, Nic)> {
        self.mutate(|i| i.create_nic_mut(spec))
    }

    /// Move a NIC to another host or interface, change its source check, or replace its
    /// security groups.
    pub fn update_nic(&self, key: &str, update: NicUpdate) -> Result<(Intent, Nic)> {
        self.mutate(|i| i.update_nic_mut(key, update).map(|(n, _)| n))
    }

    /// Delete a NIC (ID or name); 409 naming the routes that use it as next hop.
    pub fn delete_nic(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_nic_mut(key)).map(|(i, ())| i)
    }

    /// Add a custom route; 409 if the VPC already has a route to that destination.
    pub fn create_route(&self, spec: RouteSpec) -> Result<(Intent, Route)> {
        self.mutate(|i| i.put_route_mut(spec, PutMode::Create).map(|(r, _)| r))
    }

    /// Add a custom route, or change the next hop of the existing one.
    pub fn put_route(&self, spec: RouteSpec) -> Result<(Intent, Route)> {
        self.mutate(|i| i.put_route_mut(spec, PutMode::Upsert).map(|(r, _)| r))
    }

    /// Remove a custom route; system routes go only with their subnet.
    pub fn delete_route(&self, vpc: &str, destination: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_route_mut(vpc, destination))
            .map(|(i, ())| i)
    }

    /// Request a peering (pending until accepted).
    pub fn create_peering(&self, spec: PeeringSpec) -> Result<(Intent, Peering)> {
        self.mutate(|i| i.create_peering_mut(spec))
    }

    /// Accept a peering (accepting an active one changes nothing).
    pub fn accept_peering(&self, key: &str) -> Result<(Intent, Peering)> {
        self.mutate(|i| i.accept_peering_mut(key).map(|(p, _)| p))
    }

    /// Delete a peering; 409 naming the routes that point into it.
    pub fn delete_peering(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| i.delete_peering_mut(key)).map(|(i, ())| i)
    }

    // ---- in-place forms: run on a private copy, so an early error leaves no trace ----

    fn put_host_mut(&mut self, spec: HostSpec) -> Result<(Host, Change)> {
        check_name("name", &spec.name)?;
        let underlay_ip = parse_ip("underlay_ip", &spec.underlay_ip)?;
        check_underlay_ip("underlay_ip", underlay_ip)?;
        check_ifname("underlay_ifname", &spec.underlay_ifname)?;
        let router_mac = match &spec.router_mac {
            Some(m) => parse_unicast_mac("router_mac", m)?,
            None => derived_router_mac(&spec.name),
        };
        let underlay_mtu = spec.underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU);
        if !(MIN_UNDERLAY_MTU..=MAX_UNDERLAY_MTU).contains(&underlay_mtu) {
            return Err(ValidationError::invalid(
                "underlay_mtu",
                format!("{underlay_mtu} is not {MIN_UNDERLAY_MTU}..={MAX_UNDERLAY_MTU}"),
            ));
        }
        if let Some(other) = self
            .hosts
            .values()
            .find(|h| h.underlay_ip == underlay_ip && h.name != spec.name)
        {
            return Err(ValidationError::conflict(
                "underlay_ip",
                format!("{underlay_ip} is already host {:?}'s VTEP", other.name),
                vec![format!("host/{}", other.name)],
            ));
        }
        if let Some(n) = self
            .nics
            .values()
            .find(|n| n.host == spec.name && n.ifname == spec.underlay_ifname)
        {
            return Err(ValidationError::conflict(
                "underlay_ifname",
                format!("{:?} is NIC {}'s interface on this host", n.ifname, n.id),
                vec![format!("nic/{}", n.id)],
            ));
        }
        let public_gateway = match &spec.public_gateway {
            Some(g) => {
                let ip = parse_ip("public_gateway", g)?;
                check_underlay_ip("public_gateway", ip)?;
                if ip == underlay_ip {
                    return Err(ValidationError::invalid(
                        "public_gateway",
                        format!("{ip} is the host's own underlay address"),
                    ));
                }
                Some(ip)
            }
            None => None,
        };
        let health_check_ip = match self.hosts.get(&spec.name).and_then(|h| h.health_check_ip) {
            Some(ip) => ip,
            None => self.free_health_check_ip()?,
        };
        let host = Host {
            name: spec.name.clone(),
            underlay_ip,
            underlay_ifname: spec.underlay_ifname,
            router_mac,
            underlay_mtu,
            public_gateway,
            health_check_ip: Some(health_check_ip),
        };
        let change = match self.hosts.insert(spec.name, host.clone()) {
            None => Change::Created,
            Some(old) if old == host => Change::Unchanged,
            Some(_) => Change::Updated,
        };
        Ok((host, change))
    }

    /// The lowest address of the health-check range no host has (its network address
    /// excluded).
    fn free_health_check_ip(&self) -> Result<Ipv4Addr> {
        let net = super::sg::health_check_net();
        let used: HashSet<Ipv4Addr> = self
            .hosts
            .values()
            .filter_map(|h| h.health_check_ip)
            .collect();
        (1..net.size() - 1)
            .filter_map(|k| net.nth(k))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| {
                ValidationError::conflict(
                    "name",
                    format!("every health-check address of {net} is a host's"),
                    vec![],
                )
            })
    }

    /// The same intent with a health-check address on every host: what stores written
    /// before load balancers are brought to on open (hosts in name order, lowest free).
    pub fn with_health_check_ips(&self) -> Intent {
        let mut i = self.clone();
        let bare: Vec<String> = i
            .hosts
            .values()
            .filter(|h| h.health_check_ip.is_none())
            .map(|h| h.name.clone())
            .collect();
        for name in bare {
            let ip = i.free_health_check_ip().ok();
            if let Some(h) = i.hosts.get_mut(&name) {
                h.health_check_ip = ip;
            }
        }
        i
    }

    fn delete_host_mut(&mut self, name: &str) -> Result<()> {
        if !self.hosts.contains_key(name) {
            return Err(ValidationError::not_found(
                "host",
                format!("no host {name:?}"),
            ));
        }
        let nics: Vec<String> = self
            .nics
            .values()
            .filter(|n| n.host == name)
            .map(|n| format!("nic/{}", n.id))
            .collect();
        if !nics.is_empty() {
            return Err(ValidationError::conflict(
                "host",
                format!("host {name:?} still has NICs"),
                nics,
            ));
        }
        self.hosts.remove(name);
        Ok(())
    }

    pub(super) fn resolve_vpc(&self, field: &str, key: &str) -> Result<Vpc> {
        self.vpc(key)
            .cloned()
            .ok_or_else(|| ValidationError::not_found(field, format!("no VPC {key:?}")))
    }

    fn allocate_vni(&mut self) -> Result<u32> {
        let used: HashSet<u32> = self.vpcs.values().map(|v| v.vni).collect();
        let span = MAX_VNI - FIRST_VNI + 1;
        let start = self.counters.next_vni.clamp(FIRST_VNI, MAX_VNI);
        for k in 0..span {
            let vni = FIRST_VNI + (start - FIRST_VNI + k) % span;
            if !used.contains(&vni) {
                self.counters.next_vni = if vni == MAX_VNI { FIRST_VNI } else { vni + 1 };
                return Ok(vni);
            }
        }
        Err(ValidationError::conflict(
            "vni",
            "every VNI is in use",
            vec![],
        ))
    }

    fn create_vpc_mut(&mut self, spec: VpcSpec) -> Result<Vpc> {
        let cidr = parse_cidr("cidr", &spec.cidr)?;
        check_vpc_cidr("cidr", &cidr)?;
        if let Some(name) = &spec.name {
            check_resource_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::Vpc, "", name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("a VPC named {name:?} already exists"),
                    vec![format!("vpc/{id}")],
                ));
            }
        }
        let vni = self.allocate_vni()?;
        let id = format!("vpc-{}", self.counters.next_vpc);
        self.counters.next_vpc += 1;
        let vpc = Vpc {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            cidr,
            vni,
        };
        self.index_name(NameKind::Vpc, "", &vpc.name, &id);
        self.routes.insert(id.clone(), Default::default());
        self.vpcs.insert(id.clone(), vpc.clone());
        self.create_default_security_group_mut(&id)?;
        Ok(vpc)
    }

    fn delete_vpc_mut(&mut self, key: &str) -> Result<()> {
        let vpc = self.resolve_vpc("vpc", key)?;
        let mut deps: Vec<String> = self
            .subnets_of(&vpc.id)
            .map(|s| format!("subnet/{}", s.id))
            .collect();
        deps.extend(
            self.nics
                .values()
                .filter(|n| n.vpc == vpc.id)
                .map(|n| format!("nic/{}", n.id)),
        );
        deps.extend(self.routes_of(&vpc.id).map(Route::reference));
        deps.extend(
            self.peerings_of(&vpc.id)
                .map(|p| format!("peering/{}", p.id)),
        );
        // The default group goes with its VPC; the others are the tenant's to delete.
        deps.extend(
            self.security_groups_of(&vpc.id)
                .filter(|g| g.name != DEFAULT_GROUP_NAME)
                .map(|g| format!("security-group/{}", g.id)),
        );
        deps.extend(self.nat_dependents(Some(&vpc.id), None, None));
        deps.extend(self.lb_dependents(Some(&vpc.id), None, None));
        if !deps.is_empty() {
            return Err(ValidationError::conflict(
                "vpc",
                format!("VPC {} still has dependents; delete them first", vpc.id),
                deps,
            ));
        }
        if let Some(g) = self.default_security_group(&vpc.id).cloned() {
            self.remove_security_group_mut(g)?;
        }
        self.unindex_name(NameKind::Vpc, "", &vpc.name);
        self.routes.remove(&vpc.id);
        self.vpcs.remove(&vpc.id);
        Ok(())
    }

    fn create_subnet_mut(&mut self, spec: SubnetSpec) -> Result<Subnet> {
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        let cidr = parse_cidr("cidr", &spec.cidr)?;
        if !vpc.cidr.contains_cidr(&cidr) {
            return Err(ValidationError::invalid(
                "cidr",
                format!("{cidr} is not inside VPC {}'s {}", vpc.id, vpc.cidr),
            ));
        }
        if cidr.prefix_len() > MAX_SUBNET_PREFIX {
            return Err(ValidationError::invalid(
                "cidr",
                format!("{cidr}: the smallest subnet is a /{MAX_SUBNET_PREFIX}"),
            ));
        }
        let overlapping: Vec<String> = self
            .subnets_of(&vpc.id)
            .filter(|s| s.cidr.overlaps(&cidr))
            .map(|s| format!("subnet/{}", s.id))
            .collect();
        if !overlapping.is_empty() {
            return Err(ValidationError::conflict(
                "cidr",
                format!("{cidr} overlaps another subnet of VPC {}", vpc.id),
                overlapping,
            ));
        }
        if let Some(r) = self.route(&vpc.id, &cidr) {
            return Err(ValidationError::conflict(
                "cidr",
                format!(
                    "VPC {} has a custom route to {cidr}; a subnet's system route would replace it",
                    vpc.id
                ),
                vec![r.reference()],
            ));
        }
        if let Some(name) = &spec.name {
            check_resource_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::Subnet, &vpc.id, name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("VPC {} already has a subnet named {name:?}", vpc.id),
                    vec![format!("subnet/{id}")],
                ));
            }
        }
        let id = format!("subnet-{}", self.counters.next_subnet);
        self.counters.next_subnet += 1;
        let subnet = Subnet {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: vpc.id.clone(),
            cidr,
            gateway: cidr
                .nth(1)
                .expect("a subnet of at most /28 has a second address"),
        };
        self.index_name(NameKind::Subnet, &vpc.id, &subnet.name, &id);
        self.subnets.insert(id, subnet.clone());
        Ok(subnet)
    }

    fn resolve_subnet(&self, vpc: Option<&str>, key: &str) -> Result<Subnet> {
        self.subnet(vpc, key).cloned().ok_or_else(|| {
            let where_ = vpc.map(|v| format!(" in VPC {v:?}")).unwrap_or_default();
            ValidationError::not_found("subnet", format!("no subnet {key:?}{where_}"))
        })
    }

    fn delete_subnet_mut(&mut self, vpc: Option<&str>, key: &str) -> Result<()> {
        let subnet = self.resolve_subnet(vpc, key)?;
        let nics: Vec<String> = self
            .nics
            .values()
            .filter(|n| n.subnet == subnet.id)
            .map(|n| format!("nic/{}", n.id))
            .chain(self.nat_dependents(None, Some(&subnet.id), None))
            .chain(self.lb_dependents(None, Some(&subnet.id), None))
            .collect();
        if !nics.is_empty() {
            return Err(ValidationError::conflict(
                "subnet",
                format!(
                    "subnet {} still has NICs, NAT or load balancer resources",
                    subnet.id
                ),
                nics,
            ));
        }
        self.unindex_name(NameKind::Subnet, &subnet.vpc, &subnet.name);
        self.subnets.remove(&subnet.id);
        Ok(())
    }

    fn resolve_host(&self, field: &str, name: &str) -> Result<Host> {
        self.hosts
            .get(name)
            .cloned()
            .ok_or_else(|| ValidationError::not_found(field, format!("no host {name:?}")))
    }

    /// `ifname` is free on `host` (for NIC `except`, which may keep its own).
    fn check_ifname_free(&self, host: &Host, ifname: &str, except: Option<&str>) -> Result<()> {
        check_ifname("ifname", ifname)?;
        if host.underlay_ifname == ifname {
            return Err(ValidationError::conflict(
                "ifname",
                format!("{ifname:?} is host {:?}'s underlay interface", host.name),
                vec![format!("host/{}", host.name)],
            ));
        }
        if let Some(n) = self
            .nics
            .values()
            .find(|n| n.host == host.name && n.ifname == ifname && Some(n.id.as_str()) != except)
        {
            return Err(ValidationError::conflict(
                "ifname",
                format!(
                    "{ifname:?} on host {:?} is already NIC {}'s",
                    host.name, n.id
                ),
                vec![format!("nic/{}", n.id)],
            ));
        }
        Ok(())
    }

    fn allocate_mac(&mut self) -> Result<MacAddr> {
        let used: HashSet<MacAddr> = self.nics.values().map(|n| n.mac).collect();
        const SPAN: u32 = 1 << 24;
        for k in 0..SPAN {
            let n = (self.counters.next_mac.wrapping_add(k)) % SPAN;
            let [_, a, b, c] = n.to_be_bytes();
            let p = NIC_MAC_PREFIX;
            let mac = MacAddr([p[0], p[1], p[2], a, b, c]);
            if n != 0 && !used.contains(&mac) {
                self.counters.next_mac = (n + 1) % SPAN;
                return Ok(mac);
            }
        }
        Err(ValidationError::conflict(
            "mac",
            "every allocatable MAC is in use",
            vec![],
        ))
    }

    fn create_nic_mut(&mut self, spec: NicSpec) -> Result<Nic> {
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        let subnet = self.resolve_subnet(Some(&vpc.id), &spec.subnet)?;
        let host = self.resolve_host("host", &spec.host)?;
        if let Some(name) = &spec.name {
            check_resource_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::Nic, "", name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("a NIC named {name:?} already exists"),
                    vec![format!("nic/{id}")],
                ));
            }
        }
        self.check_ifname_free(&host, &spec.ifname, None)?;
        // Addresses of the VPC's NICs and load balancer VIPs, by holder (`nic/<id>`).
        let in_vpc: BTreeMap<Ipv4Addr, String> = self
            .nics
            .values()
            .filter(|n| n.vpc == vpc.id)
            .map(|n| (n.ip, format!("nic/{}", n.id)))
            .chain(
                self.load_balancers
                    .values()
                    .filter(|l| l.vpc == vpc.id)
                    .map(|l| (l.vip, format!("load-balancer/{}", l.id))),
            )
            .collect();
        let ip = match &spec.ip {
            Some(s) => {
                let ip = parse_ip("ip", s)?;
                if !subnet.cidr.contains(ip) {
                    return Err(ValidationError::invalid(
                        "ip",
                        format!("{ip} is not in subnet {} ({})", subnet.id, subnet.cidr),
                    ));
                }
                if let Some(why) = subnet.reserved_reason(ip) {
                    return Err(ValidationError::invalid("ip", format!("{ip} is {why}")));
                }
                if let Some(holder) = in_vpc.get(&ip) {
                    return Err(ValidationError::conflict(
                        "ip",
                        match holder.split_once('/') {
                            Some(("nic", id)) => format!("{ip} is already NIC {id}'s"),
                            _ => format!("{ip} is already {holder}'s VIP"),
                        },
                        vec![holder.clone()],
                    ));
                }
                ip
            }
            None => (RESERVED_LOW_ADDRESSES..subnet.cidr.size() - 1)
                .filter_map(|k| subnet.cidr.nth(k))
                .find(|ip| !in_vpc.contains_key(ip))
                .ok_or_else(|| {
                    ValidationError::conflict(
                        "ip",
                        format!("subnet {} ({}) has no free address", subnet.id, subnet.cidr),
                        vec![],
                    )
                })?,
        };
        let mac = match &spec.mac {
            Some(s) => {
                let mac = parse_unicast_mac("mac", s)?;
                if let Some(n) = self.nics.values().find(|n| n.mac == mac) {
                    return Err(ValidationError::conflict(
                        "mac",
                        format!("{mac} is already NIC {}'s", n.id),
                        vec![format!("nic/{}", n.id)],
                    ));
                }
                mac
            }
            None => self.allocate_mac()?,
        };
        let security_groups = self.new_nic_security_groups(
            "security_groups",
            &vpc.id,
            spec.security_groups.as_deref(),
        )?;
        let id = format!("nic-{}", self.counters.next_nic);
        self.counters.next_nic += 1;
        let nic = Nic {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: vpc.id,
            subnet: subnet.id,
            host: host.name,
            ifname: spec.ifname,
            ip,
            mac,
            source_check: spec.source_check.unwrap_or(true),
            security_groups,
        };
        self.index_name(NameKind::Nic, "", &nic.name, &id);
        self.nics.insert(id, nic.clone());
        Ok(nic)
    }

    pub(super) fn resolve_nic(&self, field: &str, key: &str) -> Result<Nic> {
        self.nic(key)
            .cloned()
            .ok_or_else(|| ValidationError::not_found(field, format!("no NIC {key:?}")))
    }

    fn update_nic_mut(&mut self, key: &str, update: NicUpdate) -> Result<(Nic, Change)> {
        let old = self.resolve_nic("nic", key)?;
        let mut nic = old.clone();
        if let Some(h) = &update.host {
            nic.host = self.resolve_host("host", h)?.name;
        }
        if let Some(i) = update.ifname {
            nic.ifname = i;
        }
        if let Some(c) = update.source_check {
            nic.source_check = c;
        }
        if let Some(groups) = &update.security_groups {
            nic.security_groups =
                self.check_nic_security_groups("security_groups", &nic.vpc, groups)?;
            self.check_system_rule_room("security_groups", &nic)?;
        }
        if nic == old {
            return Ok((nic, Change::Unchanged));
        }
        let host = self.resolve_host("host", &nic.host)?;
        self.check_ifname_free(&host, &nic.ifname, Some(&nic.id))?;
        self.nics.insert(nic.id.clone(), nic.clone());
        Ok((nic, Change::Updated))
    }

    fn delete_nic_mut(&mut self, key: &str) -> Result<()> {
        let nic = self.resolve_nic("nic", key)?;
        let routes: Vec<String> = self
            .routes_of(&nic.vpc)
            .filter(|r| matches!(&r.next_hop, NextHop::Nic { nic: n } if *n == nic.id))
            .map(Route::reference)
            .chain(self.nat_dependents(None, None, Some(&nic.id)))
            .chain(self.lb_dependents(None, None, Some(&nic.id)))
            .collect();
        if !routes.is_empty() {
            return Err(ValidationError::conflict(
                "nic",
                format!(
                    "NIC {} is the next hop of routes, has a bound EIP, is a SNAT source or a load balancer backend; delete or change them first",
                    nic.id
                ),
                routes,
            ));
        }
        self.unindex_name(NameKind::Nic, "", &nic.name);
        self.nics.remove(&nic.id);
        Ok(())
    }

    fn resolve_peering(&self, field: &str, key: &str) -> Result<Peering> {
        self.peering(key)
            .cloned()
            .ok_or_else(|| ValidationError::not_found(field, format!("no peering {key:?}")))
    }

    /// Canonical next hop (IDs), checked against the route's VPC and destination.
    fn resolve_next_hop(&self, vpc: &Vpc, destination: &Cidr, hop: &NextHop) -> Result<NextHop> {
        match hop {
            NextHop::Nic { nic } => {
                let n = self.resolve_nic("next_hop.nic", nic)?;
                if n.vpc != vpc.id {
                    return Err(ValidationError::invalid(
                        "next_hop.nic",
                        format!("NIC {} is in VPC {}, not {}", n.id, n.vpc, vpc.id),
                    ));
                }
                Ok(NextHop::Nic { nic: n.id })
            }
            NextHop::Peering { peering } => {
                let p = self.resolve_peering("next_hop.peering", peering)?;
                let Some(peer) = p.other_side(&vpc.id) else {
                    return Err(ValidationError::invalid(
                        "next_hop.peering",
                        format!("peering {} does not connect VPC {}", p.id, vpc.id),
                    ));
                };
                let peer = &self.vpcs[peer];
                if !peer.cidr.contains_cidr(destination) {
                    return Err(ValidationError::invalid(
                        "destination",
                        format!(
                            "{destination} is not inside peer VPC {}'s {}: a peering reaches only the peer's own addresses",
                            peer.id, peer.cidr
                        ),
                    ));
                }
                Ok(NextHop::Peering { peering: p.id })
            }
            NextHop::Blackhole => Ok(NextHop::Blackhole),
            NextHop::NatGateway { nat_gateway } => {
                let g = self.nat_gateway(nat_gateway).ok_or_else(|| {
                    ValidationError::not_found(
                        "next_hop.nat_gateway",
                        format!("no NAT gateway {nat_gateway:?}"),
                    )
                })?;
                if g.vpc != vpc.id {
                    return Err(ValidationError::invalid(
                        "next_hop.nat_gateway",
                        format!("NAT gateway {} is in VPC {}, not {}", g.id, g.vpc, vpc.id),
                    ));
                }
                Ok(NextHop::NatGateway {
                    nat_gateway: g.id.clone(),
                })
            }
        }
    }

    fn put_route_mut(&mut self, spec: RouteSpec, mode: PutMode) -> Result<(Route, Change)> {
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        let destination = parse_cidr("destination", &spec.destination)?;
        if vpc.cidr.contains_cidr(&destination) {
            if let Some(s) = self.subnets_of(&vpc.id).find(|s| s.cidr == destination) {
                return Err(ValidationError::conflict(
                    "destination",
                    format!("{destination} is subnet {}'s system route", s.id),
                    vec![format!("subnet/{}", s.id)],
                ));
            }
        }
        let next_hop = self.resolve_next_hop(&vpc, &destination, &spec.next_hop)?;
        let route = Route {
            vpc: vpc.id.clone(),
            destination,
            next_hop,
        };
        let table = self.routes.entry(vpc.id.clone()).or_default();
        let change = match table.get(&destination) {
            Some(old) if mode == PutMode::Create => {
                return Err(ValidationError::conflict(
                    "destination",
                    format!("VPC {} already has a route to {destination}", vpc.id),
                    vec![old.reference()],
                ))
            }
            Some(old) if *old == route => Change::Unchanged,
            Some(_) => Change::Updated,
            None => Change::Created,
        };
        if change != Change::Unchanged {
            Arc::make_mut(table).insert(destination, route.clone());
        }
        Ok((route, change))
    }

    fn delete_route_mut(&mut self, vpc: &str, destination: &str) -> Result<()> {
        let vpc = self.resolve_vpc("vpc", vpc)?;
        let destination = parse_cidr("destination", destination)?;
        if let Some(s) = self.subnets_of(&vpc.id).find(|s| s.cidr == destination) {
            return Err(ValidationError::conflict(
                "destination",
                format!(
                    "{destination} is subnet {}'s system route: it goes only with the subnet",
                    s.id
                ),
                vec![format!("subnet/{}", s.id)],
            ));
        }
        let removed = self
            .routes
            .get_mut(&vpc.id)
            .filter(|t| t.contains_key(&destination))
            .and_then(|t| Arc::make_mut(t).remove(&destination));
        if removed.is_none() {
            return Err(ValidationError::not_found(
                "destination",
                format!("VPC {} has no route to {destination}", vpc.id),
            ));
        }
        Ok(())
    }

    fn create_peering_mut(&mut self, spec: PeeringSpec) -> Result<Peering> {
        let a = self.resolve_vpc("vpc", &spec.vpc)?;
        let b = self.resolve_vpc("peer_vpc", &spec.peer_vpc)?;
        if a.id == b.id {
            return Err(ValidationError::invalid(
                "peer_vpc",
                format!("a VPC cannot peer with itself ({})", a.id),
            ));
        }
        if a.cidr.overlaps(&b.cidr) {
            return Err(ValidationError::conflict(
                "peer_vpc",
                format!(
                    "VPC {} ({}) overlaps VPC {} ({}): peered VPCs need disjoint CIDRs",
                    a.id, a.cidr, b.id, b.cidr
                ),
                vec![],
            ));
        }
        if let Some(p) = self
            .peerings_of(&a.id)
            .find(|p| p.other_side(&a.id) == Some(&b.id))
        {
            return Err(ValidationError::conflict(
                "peer_vpc",
                format!("VPCs {} and {} are already peered", a.id, b.id),
                vec![format!("peering/{}", p.id)],
            ));
        }
        // Peers of one VPC must not overlap each other: a VPC's table and its peer
        // sources are keyed by address within its VNI.
        for (side, other) in [(&a, &b), (&b, &a)] {
            let clashes: Vec<String> = self
                .peerings_of(&side.id)
                .filter(|p| {
                    let peer = &self.vpcs[p.other_side(&side.id).expect("side")];
                    peer.cidr.overlaps(&other.cidr)
                })
                .map(|p| format!("peering/{}", p.id))
                .collect();
            if !clashes.is_empty() {
                return Err(ValidationError::conflict(
                    "peer_vpc",
                    format!(
                        "VPC {} is already peered with a VPC overlapping {} ({})",
                        side.id, other.id, other.cidr
                    ),
                    clashes,
                ));
            }
        }
        if let Some(name) = &spec.name {
            check_resource_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::Peering, "", name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("a peering named {name:?} already exists"),
                    vec![format!("peering/{id}")],
                ));
            }
        }
        let id = format!("pcx-{}", self.counters.next_peering);
        self.counters.next_peering += 1;
        let peering = Peering {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: a.id,
            peer_vpc: b.id,
            state: PeeringState::Pending,
        };
        self.index_name(NameKind::Peering, "", &peering.name, &id);
        self.peerings.insert(id, peering.clone());
        Ok(peering)
    }

    fn accept_peering_mut(&mut self, key: &str) -> Result<(Peering, Change)> {
        let mut p = self.resolve_peering("peering", key)?;
        if p.is_active() {
            return Ok((p, Change::Unchanged));
        }
        p.state = PeeringState::Active;
        self.peerings.insert(p.id.clone(), p.clone());
        Ok((p, Change::Updated))
    }

    fn delete_peering_mut(&mut self, key: &str) -> Result<()> {
        let p = self.resolve_peering("peering", key)?;
        let routes: Vec<String> = [&p.vpc, &p.peer_vpc]
            .into_iter()
            .flat_map(|v| self.routes_of(v))
            .filter(|r| matches!(&r.next_hop, NextHop::Peering { peering } if *peering == p.id))
            .map(Route::reference)
            .collect();
        if !routes.is_empty() {
            return Err(ValidationError::conflict(
                "peering",
                format!("routes still point into peering {}", p.id),
                routes,
            ));
        }
        self.unindex_name(NameKind::Peering, "", &p.name);
        self.peerings.remove(&p.id);
        Ok(())
    }

    /// Create or update everything `topology` declares, matched by name, all or nothing.
    /// Nothing is deleted; applying the same topology again reports 0 changes.
    pub fn apply(&self, topology: Topology) -> Result<(Intent, ApplySummary)> {
        self.mutate(|i| i.apply_mut(topology))
    }

    fn apply_mut(&mut self, t: Topology) -> Result<ApplySummary> {
        let mut sum = ApplySummary::default();
        let mut record = |kind: &str, name: &str, c: Change| match c {
            Change::Created => sum.created.push(format!("{kind}/{name}")),
            Change::Updated => sum.updated.push(format!("{kind}/{name}")),
            Change::Unchanged => sum.unchanged += 1,
        };
        no_duplicates("hosts", t.hosts.iter().map(|h| h.name.as_str()))?;
        no_duplicates("vpcs", t.vpcs.iter().map(|v| v.name.as_str()))?;
        no_duplicates("nics", t.nics.iter().map(|n| n.name.as_str()))?;
        no_duplicates("peerings", t.peerings.iter().map(|p| p.name.as_str()))?;
        no_duplicates("blocklist", t.blocklist.iter().map(|b| b.prefix.trim()))?;

        for (k, h) in t.hosts.into_iter().enumerate() {
            let name = h.name.clone();
            let (_, c) = self
                .put_host_mut(h)
                .map_err(|e| e.at(&format!("hosts[{k}]")))?;
            record("host", &name, c);
        }

        let mut group_changes: Vec<Change> = vec![];
        for (k, v) in t.vpcs.iter().enumerate() {
            let at = format!("vpcs[{k}]");
            no_duplicates(
                &format!("{at}.subnets"),
                v.subnets.iter().map(|s| s.name.as_str()),
            )?;
            no_duplicates(
                &format!("{at}.routes"),
                v.routes.iter().map(|r| r.destination.trim()),
            )?;
            no_duplicates(
                &format!("{at}.security_groups"),
                v.security_groups.iter().map(|g| g.name.as_str()),
            )?;
            let c = self.apply_vpc(v).map_err(|e| e.at(&at))?;
            record("vpc", &v.name, c);
            let vpc_id = self.vpc(&v.name).expect("just applied").id.clone();
            for (j, s) in v.subnets.iter().enumerate() {
                let c = self
                    .apply_subnet(&vpc_id, s)
                    .map_err(|e| e.at(&format!("{at}.subnets[{j}]")))?;
                record("subnet", &format!("{}/{}", v.name, s.name), c);
            }
            for (j, g) in v.security_groups.iter().enumerate() {
                let c = self
                    .apply_security_group_mut(&vpc_id, g)
                    .map_err(|e| e.at(&format!("{at}.security_groups[{j}]")))?;
                group_changes.push(c);
            }
        }

        // Rules once every declared group exists, so they may name each other.
        let mut group_changes = group_changes.into_iter();
        for (k, v) in t.vpcs.iter().enumerate() {
            let vpc_id = self.vpc(&v.name).expect("applied above").id.clone();
            for (j, g) in v.security_groups.iter().enumerate() {
                let mut c = group_changes.next().expect("one per declared group");
                if let Some(rules) = &g.rules {
                    let id = self
                        .lookup_name(NameKind::SecurityGroup, &vpc_id, &g.name)
                        .expect("applied above")
                        .to_string();
                    let changed = self
                        .sync_security_group_rules_mut(&id, rules)
                        .map_err(|e| e.at(&format!("vpcs[{k}].security_groups[{j}]")))?;
                    if changed && c == Change::Unchanged {
                        c = Change::Updated;
                    }
                }
                record("security-group", &format!("{}/{}", v.name, g.name), c);
            }
        }

        for (k, n) in t.nics.iter().enumerate() {
            let c = self.apply_nic(n).map_err(|e| e.at(&format!("nics[{k}]")))?;
            record("nic", &n.name, c);
        }

        for (k, p) in t.peerings.iter().enumerate() {
            let c = self
                .apply_peering(p)
                .map_err(|e| e.at(&format!("peerings[{k}]")))?;
            record("peering", &p.name, c);
        }

        // After NICs (backends) and before NAT (DNAT entries may forward to a VIP).
        self.apply_lb_mut(&t.load_balancers, &mut record)?;

        // After NICs (EIP bindings) and before routes (which may name a gateway).
        self.apply_nat_mut(&t.eip_pools, &t.eips, &t.nat_gateways, &mut record)?;

        for (k, v) in t.vpcs.iter().enumerate() {
            for (j, r) in v.routes.iter().enumerate() {
                let spec = RouteSpec {
                    vpc: v.name.clone(),
                    destination: r.destination.clone(),
                    next_hop: r.next_hop.clone(),
                };
                let (route, c) = self
                    .put_route_mut(spec, PutMode::Upsert)
                    .map_err(|e| e.at(&format!("vpcs[{k}].routes[{j}]")))?;
                record("route", &format!("{}/{}", v.name, route.destination), c);
            }
        }

        for (k, b) in t.blocklist.into_iter().enumerate() {
            let (prefix, c) = self
                .apply_blocklist_mut(b)
                .map_err(|e| e.at(&format!("blocklist[{k}]")))?;
            record("block", &prefix.to_string(), c);
        }
        Ok(sum)
    }

    fn apply_vpc(&mut self, v: &TopologyVpc) -> Result<Change> {
        check_resource_name("name", &v.name)?;
        match self.vpc(&v.name) {
            Some(existing) => {
                let cidr = parse_cidr("cidr", &v.cidr)?;
                if existing.cidr != cidr {
                    return Err(immutable(
                        "cidr",
                        "VPC",
                        &existing.id,
                        &existing.cidr,
                        &cidr,
                    ));
                }
                Ok(Change::Unchanged)
            }
            None => {
                self.create_vpc_mut(VpcSpec {
                    name: Some(v.name.clone()),
                    cidr: v.cidr.clone(),
                })?;
                Ok(Change::Created)
            }
        }
    }

    fn apply_subnet(&mut self, vpc_id: &str, s: &TopologySubnet) -> Result<Change> {
        check_resource_name("name", &s.name)?;
        match self.lookup_name(NameKind::Subnet, vpc_id, &s.name) {
            Some(id) => {
                let existing = &self.subnets[id];
                let cidr = parse_cidr("cidr", &s.cidr)?;
                if existing.cidr != cidr {
                    return Err(immutable(
                        "cidr",
                        "subnet",
                        &existing.id,
                        &existing.cidr,
                        &cidr,
                    ));
                }
                Ok(Change::Unchanged)
            }
            None => {
                self.create_subnet_mut(SubnetSpec {
                    vpc: vpc_id.to_string(),
                    name: Some(s.name.clone()),
                    cidr: s.cidr.clone(),
                })?;
                Ok(Change::Created)
            }
        }
    }

    fn apply_nic(&mut self, n: &TopologyNic) -> Result<Change> {
        check_resource_name("name", &n.name)?;
        let Some(existing) = self.nic(&n.name).cloned() else {
            self.create_nic_mut(NicSpec {
                name: Some(n.name.clone()),
                vpc: n.vpc.clone(),
                subnet: n.subnet.clone(),
                host: n.host.clone(),
                ifname: n.ifname.clone(),
                ip: n.ip.clone(),
                mac: n.mac.clone(),
                source_check: n.source_check,
                security_groups: n.security_groups.clone(),
            })?;
            return Ok(Change::Created);
        };
        let vpc = self.resolve_vpc("vpc", &n.vpc)?;
        if vpc.id != existing.vpc {
            return Err(immutable(
                "vpc",
                "NIC",
                &existing.id,
                &existing.vpc,
                &vpc.id,
            ));
        }
        let subnet = self.resolve_subnet(Some(&vpc.id), &n.subnet)?;
        if subnet.id != existing.subnet {
            return Err(immutable(
                "subnet",
                "NIC",
                &existing.id,
                &existing.subnet,
                &subnet.id,
            ));
        }
        if let Some(ip) = &n.ip {
            let ip = parse_ip("ip", ip)?;
            if ip != existing.ip {
                return Err(immutable("ip", "NIC", &existing.id, &existing.ip, &ip));
            }
        }
        if let Some(mac) = &n.mac {
            let mac = parse_unicast_mac("mac", mac)?;
            if mac != existing.mac {
                return Err(immutable("mac", "NIC", &existing.id, &existing.mac, &mac));
            }
        }
        let update = NicUpdate {
            host: Some(n.host.clone()),
            ifname: Some(n.ifname.clone()),
            source_check: Some(n.source_check.unwrap_or(true)),
            security_groups: n.security_groups.clone(),
        };
        Ok(self.update_nic_mut(&existing.id, update)?.1)
    }

    fn apply_peering(&mut self, p: &TopologyPeering) -> Result<Change> {
        check_resource_name("name", &p.name)?;
        let change = match self.peering(&p.name).cloned() {
            Some(existing) => {
                let a = self.resolve_vpc("vpc", &p.vpc)?;
                let b = self.resolve_vpc("peer_vpc", &p.peer_vpc)?;
                if a.id != existing.vpc {
                    return Err(immutable(
                        "vpc",
                        "peering",
                        &existing.id,
                        &existing.vpc,
                        &a.id,
                    ));
                }
                if b.id != existing.peer_vpc {
                    return Err(immutable(
                        "peer_vpc",
                        "peering",
                        &existing.id,
                        &existing.peer_vpc,
                        &b.id,
                    ));
                }
                Change::Unchanged
            }
            None => {
                self.create_peering_mut(PeeringSpec {
                    name: Some(p.name.clone()),
                    vpc: p.vpc.clone(),
                    peer_vpc: p.peer_vpc.clone(),
                })?;
                Change::Created
            }
        };
        if p.accepted {
            let (_, c) = self.accept_peering_mut(&p.name)?;
            if change == Change::Unchanged {
                return Ok(c);
            }
        }
        Ok(change)
    }
}

/// What a create-or-update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PutMode {
    Create,
    Upsert,
}

fn immutable(
    field: &str,
    kind: &str,
    id: &str,
    was: &dyn fmt::Display,
    now: &dyn fmt::Display,
) -> ValidationError {
    ValidationError::conflict(
        field,
        format!(
            "{kind} {id}'s {field} is {was} and cannot change to {now}: delete and recreate it"
        ),
        vec![],
    )
}

pub(super) fn no_duplicates<'a>(field: &str, names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, n) in names.enumerate() {
        if let Some(first) = seen.insert(n, k) {
            return Err(ValidationError::invalid(
                format!("{field}[{k}]"),
                format!("{n:?} is declared twice (first at {field}[{first}])"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two hosts; two tenants with identical CIDRs, subnets and VM IPs spread over both
    /// hosts; a firewall appliance in tenant-a; a shared-services VPC peered with tenant-a.
    pub(crate) const LAB: &str = r#"
hosts:
  - { name: h1, underlay_ip: 192.168.50.1, underlay_ifname: ul0 }
  - { name: h2, underlay_ip: 192.168.50.2, underlay_ifname: ul0, underlay_mtu: 9000 }
vpcs:
  - name: tenant-a
    cidr: 10.0.0.0/16
    subnets:
      - { name: web, cidr: 10.0.1.0/24 }
      - { name: db, cidr: 10.0.2.0/24 }
    routes:
      - destination: 0.0.0.0/0
        next_hop: { type: nic, nic: a-fw }
      - destination: 10.9.0.0/16
        next_hop: { type: blackhole }
      - destination: 10.200.0.0/16
        next_hop: { type: peering, peering: a-shared }
  - name: tenant-b
    cidr: 10.0.0.0/16
    subnets:
      - { name: web, cidr: 10.0.1.0/24 }
      - { name: db, cidr: 10.0.2.0/24 }
  - name: shared
    cidr: 10.200.0.0/16
    subnets:
      - { name: svc, cidr: 10.200.1.0/24 }
    routes:
      - destination: 10.0.0.0/16
        next_hop: { type: peering, peering: a-shared }
nics:
  - { name: a-vm1, vpc: tenant-a, subnet: web, host: h1, ifname: a-vm1, ip: 10.0.1.10 }
  - { name: a-vm2, vpc: tenant-a, subnet: db, host: h2, ifname: a-vm2, ip: 10.0.2.10 }
  - { name: a-fw, vpc: tenant-a, subnet: web, host: h2, ifname: a-fw, ip: 10.0.1.20 }
  - { name: b-vm1, vpc: tenant-b, subnet: web, host: h2, ifname: b-vm1, ip: 10.0.1.10 }
  - { name: b-vm2, vpc: tenant-b, subnet: db, host: h1, ifname: b-vm2, ip: 10.0.2.10 }
  - { name: s-vm1, vpc: shared, subnet: svc, host: h2, ifname: s-vm1, ip: 10.200.1.10 }
peerings:
  - { name: a-shared, vpc: tenant-a, peer_vpc: shared, accepted: true }
"#;

    pub(crate) fn lab_topology() -> Topology {
        serde_yaml::from_str(LAB).expect("lab topology parses")
    }

    pub(crate) fn lab() -> Intent {
        Intent::default()
            .apply(lab_topology())
            .expect("lab applies")
            .0
    }

    pub(crate) fn host(name: &str, ip: &str) -> HostSpec {
        HostSpec {
            name: name.into(),
            underlay_ip: ip.into(),
            underlay_ifname: "ul0".into(),
            ..Default::default()
        }
    }

    pub(crate) fn vpc(name: &str, cidr: &str) -> VpcSpec {
        VpcSpec {
            name: Some(name.into()),
            cidr: cidr.into(),
        }
    }

    pub(crate) fn subnet(vpc: &str, name: &str, cidr: &str) -> SubnetSpec {
        SubnetSpec {
            vpc: vpc.into(),
            name: Some(name.into()),
            cidr: cidr.into(),
        }
    }

    pub(crate) fn nic(name: &str, vpc: &str, subnet: &str, host: &str) -> NicSpec {
        NicSpec {
            name: Some(name.into()),
            vpc: vpc.into(),
            subnet: subnet.into(),
            host: host.into(),
            ifname: name.into(),
            ..Default::default()
        }
    }

    fn route(vpc: &str, dst: &str, next_hop: NextHop) -> RouteSpec {
        RouteSpec {
            vpc: vpc.into(),
            destination: dst.into(),
            next_hop,
        }
    }

    fn nic_hop(n: &str) -> NextHop {
        NextHop::Nic { nic: n.into() }
    }

    fn peering_hop(p: &str) -> NextHop {
        NextHop::Peering { peering: p.into() }
    }

    /// One host, one VPC `a` (10.0.0.0/16) with subnet `web` (10.0.1.0/24).
    fn base() -> Intent {
        let i = Intent::default();
        let (i, _) = i.create_host(host("h1", "192.168.50.1")).unwrap();
        let (i, _) = i.create_vpc(vpc("a", "10.0.0.0/16")).unwrap();
        let (i, _) = i.create_subnet(subnet("a", "web", "10.0.1.0/24")).unwrap();
        i
    }

    #[track_caller]
    fn refused<T: fmt::Debug>(r: Result<T>, kind: ErrorKind, field: &str) -> ValidationError {
        let e = r.expect_err("the change was accepted");
        assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
        e
    }

    #[test]
    fn vpcs_get_sequential_ids_and_distinct_vnis_even_with_identical_cidrs() {
        let (i, a) = Intent::default()
            .create_vpc(vpc("a", "10.0.0.0/16"))
            .unwrap();
        let (i, b) = i.create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        assert_eq!((a.id.as_str(), a.vni), ("vpc-1", 1));
        assert_eq!((b.id.as_str(), b.vni), ("vpc-2", 2));
        assert_eq!(i.vpc("b").unwrap().id, "vpc-2");
        assert_eq!(i.vpc("vpc-1").unwrap().name, "a");
        assert!(
            i.routes_of("vpc-1").next().is_none(),
            "route table starts empty"
        );
    }

    #[test]
    fn vpc_without_a_name_is_named_by_its_id() {
        let spec = VpcSpec {
            name: None,
            cidr: "10.0.0.0/8".into(),
        };
        let (_, v) = Intent::default().create_vpc(spec).unwrap();
        assert_eq!(v.name, v.id);
    }

    #[test]
    fn vpc_cidr_must_be_a_slash_8_to_28_outside_special_ranges() {
        let i = Intent::default();
        for bad in [
            "10.0.0.0/7",
            "10.0.0.0/29",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.1.0.0/16",
            "nonsense",
            "10.0.0.0/33",
        ] {
            let e = refused(i.create_vpc(vpc("a", bad)), ErrorKind::Invalid, "cidr");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let e = refused(
            i.create_vpc(vpc("a", "10.0.0.1/16")),
            ErrorKind::Invalid,
            "cidr",
        );
        assert!(e.reason.contains("did you mean 10.0.0.0/16"), "{e}");
        assert!(i.create_vpc(vpc("a", "10.0.0.0/28")).is_ok());
        assert!(i.create_vpc(vpc("a", "10.0.0.0/8")).is_ok());
    }

    #[test]
    fn names_are_checked_unique_and_never_look_like_ids() {
        let (i, _) = Intent::default()
            .create_vpc(vpc("a", "10.0.0.0/16"))
            .unwrap();
        let e = refused(
            i.create_vpc(vpc("a", "10.1.0.0/16")),
            ErrorKind::Conflict,
            "name",
        );
        assert_eq!(e.dependents, ["vpc/vpc-1"]);
        assert_eq!(e.status(), StatusCode::CONFLICT);
        refused(
            i.create_vpc(vpc("vpc-7", "10.1.0.0/16")),
            ErrorKind::Invalid,
            "name",
        );
        refused(
            i.create_vpc(vpc("has space", "10.1.0.0/16")),
            ErrorKind::Invalid,
            "name",
        );
        refused(
            i.create_vpc(vpc("", "10.1.0.0/16")),
            ErrorKind::Invalid,
            "name",
        );
    }

    #[test]
    fn subnet_must_be_inside_its_vpc_and_not_overlap_siblings() {
        let i = base();
        let e = refused(
            i.create_subnet(subnet("a", "x", "10.1.0.0/24")),
            ErrorKind::Invalid,
            "cidr",
        );
        assert!(e.reason.contains("not inside"), "{e}");
        let e = refused(
            i.create_subnet(subnet("a", "x", "10.0.1.128/25")),
            ErrorKind::Conflict,
            "cidr",
        );
        assert_eq!(e.dependents, ["subnet/subnet-1"]);
        refused(
            i.create_subnet(subnet("a", "x", "10.0.3.0/29")),
            ErrorKind::Invalid,
            "cidr",
        );
        refused(
            i.create_subnet(subnet("nope", "x", "10.0.3.0/24")),
            ErrorKind::NotFound,
            "vpc",
        );
        refused(
            i.create_subnet(subnet("a", "web", "10.0.3.0/24")),
            ErrorKind::Conflict,
            "name",
        );
        let (_, s) = i.create_subnet(subnet("a", "db", "10.0.2.0/24")).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(10, 0, 2, 1));
    }

    #[test]
    fn subnet_names_are_scoped_by_vpc() {
        let (i, _) = base().create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        let (i, s) = i.create_subnet(subnet("b", "web", "10.0.1.0/24")).unwrap();
        assert_eq!(i.subnet(Some("b"), "web").unwrap().id, s.id);
        assert_eq!(i.subnet(Some("a"), "web").unwrap().id, "subnet-1");
        assert!(i.subnet(None, "web").is_none(), "ambiguous without the VPC");
        assert!(
            i.subnet(Some("a"), &s.id).is_none(),
            "b's subnet is not a's"
        );
    }

    #[test]
    fn nic_ip_is_allocated_after_the_reserved_addresses_and_reserved_ones_are_refused() {
        let i = base();
        let (i, n1) = i.create_nic(nic("vm1", "a", "web", "h1")).unwrap();
        let (i, n2) = i.create_nic(nic("vm2", "a", "web", "h1")).unwrap();
        assert_eq!(n1.ip, Ipv4Addr::new(10, 0, 1, 4));
        assert_eq!(n2.ip, Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(n1.id, "nic-1");
        for (ip, why) in [
            ("10.0.1.0", "network"),
            ("10.0.1.1", "gateway"),
            ("10.0.1.2", "DNS"),
            ("10.0.1.3", "DNS"),
            ("10.0.1.255", "broadcast"),
        ] {
            let spec = NicSpec {
                ip: Some(ip.into()),
                ..nic("x", "a", "web", "h1")
            };
            let e = refused(i.create_nic(spec), ErrorKind::Invalid, "ip");
            assert!(e.reason.contains(why), "{ip}: {e}");
        }
        let spec = NicSpec {
            ip: Some("10.0.2.9".into()),
            ..nic("x", "a", "web", "h1")
        };
        refused(i.create_nic(spec), ErrorKind::Invalid, "ip");
        let spec = NicSpec {
            ip: Some("10.0.1.4".into()),
            ..nic("x", "a", "web", "h1")
        };
        let e = refused(i.create_nic(spec), ErrorKind::Conflict, "ip");
        assert_eq!(e.dependents, ["nic/nic-1"]);
    }

    #[test]
    fn identical_nic_ips_are_fine_in_different_vpcs() {
        let (i, _) = base().create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        let (i, _) = i.create_subnet(subnet("b", "web", "10.0.1.0/24")).unwrap();
        let spec = |name: &str, v: &str| NicSpec {
            ip: Some("10.0.1.10".into()),
            ..nic(name, v, "web", "h1")
        };
        let (i, a) = i.create_nic(spec("a1", "a")).unwrap();
        let (_, b) = i.create_nic(spec("b1", "b")).unwrap();
        assert_eq!(a.ip, b.ip);
        assert_ne!(a.mac, b.mac);
    }

    #[test]
    fn allocated_macs_are_local_unicast_and_unique_and_given_ones_are_checked() {
        let (i, n1) = base().create_nic(nic("vm1", "a", "web", "h1")).unwrap();
        assert!(n1.mac.is_local() && !n1.mac.is_multicast(), "{}", n1.mac);
        assert_eq!(n1.mac.to_string(), "02:73:6c:00:00:01");
        let taken = NicSpec {
            mac: Some("02:73:6c:00:00:02".into()),
            ..nic("vm2", "a", "web", "h1")
        };
        let (i, n2) = i.create_nic(taken).unwrap();
        // The next allocation skips the MAC vm2 was given.
        let (i, n3) = i.create_nic(nic("vm3", "a", "web", "h1")).unwrap();
        assert_ne!(n3.mac, n2.mac);
        let dup = NicSpec {
            mac: Some(n1.mac.to_string()),
            ..nic("vm4", "a", "web", "h1")
        };
        refused(i.create_nic(dup), ErrorKind::Conflict, "mac");
        let multicast = NicSpec {
            mac: Some("01:00:5e:00:00:01".into()),
            ..nic("vm4", "a", "web", "h1")
        };
        refused(i.create_nic(multicast), ErrorKind::Invalid, "mac");
    }

    #[test]
    fn nic_references_and_interface_names_are_checked() {
        let (i, _) = base().create_nic(nic("vm1", "a", "web", "h1")).unwrap();
        refused(
            i.create_nic(nic("x", "a", "web", "h9")),
            ErrorKind::NotFound,
            "host",
        );
        refused(
            i.create_nic(nic("x", "a", "nope", "h1")),
            ErrorKind::NotFound,
            "subnet",
        );
        refused(
            i.create_nic(nic("x", "zz", "web", "h1")),
            ErrorKind::NotFound,
            "vpc",
        );
        let same_if = NicSpec {
            ifname: "vm1".into(),
            ..nic("x", "a", "web", "h1")
        };
        refused(i.create_nic(same_if), ErrorKind::Conflict, "ifname");
        let underlay = NicSpec {
            ifname: "ul0".into(),
            ..nic("x", "a", "web", "h1")
        };
        refused(i.create_nic(underlay), ErrorKind::Conflict, "ifname");
        let long = NicSpec {
            ifname: "a-very-long-interface".into(),
            ..nic("x", "a", "web", "h1")
        };
        refused(i.create_nic(long), ErrorKind::Invalid, "ifname");
        refused(
            i.create_nic(nic("vm1", "a", "web", "h1")),
            ErrorKind::Conflict,
            "name",
        );
    }

    #[test]
    fn hosts_are_validated_and_vteps_unique() {
        let i = base();
        let mut bad = host("h2", "127.0.0.1");
        refused(
            i.create_host(bad.clone()),
            ErrorKind::Invalid,
            "underlay_ip",
        );
        bad.underlay_ip = "192.168.50.1".into();
        let e = refused(
            i.create_host(bad.clone()),
            ErrorKind::Conflict,
            "underlay_ip",
        );
        assert_eq!(e.dependents, ["host/h1"]);
        bad.underlay_ip = "192.168.50.2".into();
        bad.underlay_mtu = Some(100);
        refused(
            i.create_host(bad.clone()),
            ErrorKind::Invalid,
            "underlay_mtu",
        );
        bad.underlay_mtu = None;
        bad.router_mac = Some("ff:ff:ff:ff:ff:ff".into());
        refused(i.create_host(bad.clone()), ErrorKind::Invalid, "router_mac");
        refused(
            i.create_host(host("h1", "192.168.50.9")),
            ErrorKind::Conflict,
            "name",
        );
        let (i, h) = i.put_host(host("h1", "192.168.50.9")).unwrap();
        assert_eq!(i.host("h1").unwrap().underlay_ip, h.underlay_ip);
        assert_eq!(h.underlay_mtu, 1500);
        assert_eq!(h.router_mac, derived_router_mac("h1"));
        assert!(h.router_mac.is_local() && !h.router_mac.is_multicast());
        assert_ne!(derived_router_mac("h1"), derived_router_mac("h2"));
    }

    #[test]
    fn deleting_a_host_with_nics_is_refused() {
        let (i, _) = base().create_nic(nic("vm1", "a", "web", "h1")).unwrap();
        let e = refused(i.delete_host("h1"), ErrorKind::Conflict, "host");
        assert_eq!(e.dependents, ["nic/nic-1"]);
        let i = i.delete_nic("vm1").unwrap().delete_host("h1").unwrap();
        assert!(i.host("h1").is_none());
        refused(i.delete_host("h1"), ErrorKind::NotFound, "host");
    }

    #[test]
    fn deleting_a_vpc_lists_every_dependent_and_changes_nothing() {
        let i = lab();
        let before = i.clone();
        let e = refused(i.delete_vpc("tenant-a"), ErrorKind::Conflict, "vpc");
        assert_eq!(i, before, "a refused change leaves the intent as it was");
        for dep in [
            "subnet/subnet-1",
            "subnet/subnet-2",
            "nic/nic-1",
            "nic/nic-2",
            "nic/nic-3",
            "route/vpc-1:0.0.0.0/0",
            "route/vpc-1:10.9.0.0/16",
            "route/vpc-1:10.200.0.0/16",
            "peering/pcx-1",
        ] {
            assert!(e.dependents.iter().any(|d| d == dep), "{dep} missing: {e}");
        }
        assert_eq!(e.dependents.len(), 9, "{e}");
        refused(i.delete_vpc("nope"), ErrorKind::NotFound, "vpc");
    }

    #[test]
    fn a_deleted_vpcs_vni_is_not_reused() {
        let (i, a) = Intent::default()
            .create_vpc(vpc("a", "10.0.0.0/16"))
            .unwrap();
        let i = i.delete_vpc("a").unwrap();
        let (_, b) = i.create_vpc(vpc("a", "10.0.0.0/16")).unwrap();
        assert_ne!(a.vni, b.vni);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn vni_allocation_wraps_and_skips_vnis_in_use() {
        let (mut i, _) = Intent::default()
            .create_vpc(vpc("a", "10.0.0.0/16"))
            .unwrap();
        i.counters.next_vni = MAX_VNI;
        let (i, b) = i.create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        let (_, c) = i.create_vpc(vpc("c", "10.0.0.0/16")).unwrap();
        assert_eq!(b.vni, MAX_VNI);
        assert_eq!(c.vni, 2, "1 is vpc a's");
    }

    #[test]
    fn deleting_a_nic_that_is_a_next_hop_names_the_route() {
        let (i, _) = base().create_nic(nic("fw", "a", "web", "h1")).unwrap();
        let (i, _) = i
            .create_route(route("a", "0.0.0.0/0", nic_hop("fw")))
            .unwrap();
        let e = refused(i.delete_nic("fw"), ErrorKind::Conflict, "nic");
        assert_eq!(e.dependents, ["route/vpc-1:0.0.0.0/0"]);
        let i = i.delete_route("a", "0.0.0.0/0").unwrap();
        let i = i.delete_nic("fw").unwrap();
        assert!(i.nic("fw").is_none());
        refused(i.delete_nic("fw"), ErrorKind::NotFound, "nic");
    }

    #[test]
    fn routes_are_checked_against_subnets_next_hops_and_each_other() {
        let (i, _) = base().create_nic(nic("fw", "a", "web", "h1")).unwrap();
        let (i, r) = i
            .create_route(route("a", "0.0.0.0/0", nic_hop("fw")))
            .unwrap();
        assert_eq!(r.next_hop, nic_hop("nic-1"), "stored by ID");
        refused(
            i.create_route(route("a", "0.0.0.0/0", NextHop::Blackhole)),
            ErrorKind::Conflict,
            "destination",
        );
        let (i, r) = i
            .put_route(route("a", "0.0.0.0/0", NextHop::Blackhole))
            .unwrap();
        assert_eq!(
            i.route("vpc-1", &r.destination).unwrap().next_hop,
            NextHop::Blackhole
        );
        let e = refused(
            i.create_route(route("a", "10.0.1.0/24", NextHop::Blackhole)),
            ErrorKind::Conflict,
            "destination",
        );
        assert_eq!(e.dependents, ["subnet/subnet-1"]);
        refused(
            i.create_route(route("a", "10.1.0.0/16", nic_hop("ghost"))),
            ErrorKind::NotFound,
            "next_hop.nic",
        );
        refused(
            i.create_route(route("a", "10.1.0.1/16", NextHop::Blackhole)),
            ErrorKind::Invalid,
            "destination",
        );
        refused(
            i.delete_route("a", "10.0.1.0/24"),
            ErrorKind::Conflict,
            "destination",
        );
        refused(
            i.delete_route("a", "10.7.0.0/16"),
            ErrorKind::NotFound,
            "destination",
        );
        // A subnet whose CIDR a custom route already has is refused too.
        let (i, _) = i
            .create_route(route("a", "10.0.2.0/24", NextHop::Blackhole))
            .unwrap();
        refused(
            i.create_subnet(subnet("a", "db", "10.0.2.0/24")),
            ErrorKind::Conflict,
            "cidr",
        );
    }

    #[test]
    fn a_nic_next_hop_must_be_in_the_routes_vpc() {
        let (i, _) = base().create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        let (i, _) = i.create_subnet(subnet("b", "web", "10.0.1.0/24")).unwrap();
        let (i, _) = i.create_nic(nic("b-fw", "b", "web", "h1")).unwrap();
        refused(
            i.create_route(route("a", "0.0.0.0/0", nic_hop("b-fw"))),
            ErrorKind::Invalid,
            "next_hop.nic",
        );
    }

    fn peering(name: &str, a: &str, b: &str) -> PeeringSpec {
        PeeringSpec {
            name: Some(name.into()),
            vpc: a.into(),
            peer_vpc: b.into(),
        }
    }

    #[test]
    fn peerings_refuse_overlaps_duplicates_and_overlapping_peers() {
        let i = base();
        let (i, _) = i.create_vpc(vpc("b", "10.0.0.0/16")).unwrap();
        let (i, _) = i.create_vpc(vpc("c", "10.1.0.0/16")).unwrap();
        let (i, _) = i.create_vpc(vpc("d", "10.0.0.0/8")).unwrap();
        refused(
            i.create_peering(peering("p", "a", "b")),
            ErrorKind::Conflict,
            "peer_vpc",
        );
        refused(
            i.create_peering(peering("p", "a", "d")),
            ErrorKind::Conflict,
            "peer_vpc",
        );
        refused(
            i.create_peering(peering("p", "a", "a")),
            ErrorKind::Invalid,
            "peer_vpc",
        );
        refused(
            i.create_peering(peering("p", "a", "zz")),
            ErrorKind::NotFound,
            "peer_vpc",
        );
        let (i, p) = i.create_peering(peering("a-c", "a", "c")).unwrap();
        assert_eq!((p.id.as_str(), p.state), ("pcx-1", PeeringState::Pending));
        let e = refused(
            i.create_peering(peering("c-a", "c", "a")),
            ErrorKind::Conflict,
            "peer_vpc",
        );
        assert_eq!(e.dependents, ["peering/pcx-1"]);
        // c is peered with a (10.0/16): b (also 10.0/16) may not peer with c too.
        let e = refused(
            i.create_peering(peering("b-c", "b", "c")),
            ErrorKind::Conflict,
            "peer_vpc",
        );
        assert_eq!(e.dependents, ["peering/pcx-1"]);
        let (i, p) = i.accept_peering("a-c").unwrap();
        assert!(p.is_active());
        let (i2, _) = i.accept_peering("pcx-1").unwrap();
        assert_eq!(i2, i, "accepting twice changes nothing");
    }

    #[test]
    fn peering_routes_must_target_the_peer_and_block_its_deletion() {
        let (i, _) = base().create_vpc(vpc("c", "10.1.0.0/16")).unwrap();
        let (i, _) = i.create_vpc(vpc("e", "10.2.0.0/16")).unwrap();
        let (i, _) = i.create_peering(peering("a-c", "a", "c")).unwrap();
        refused(
            i.create_route(route("a", "10.2.0.0/16", peering_hop("a-c"))),
            ErrorKind::Invalid,
            "destination",
        );
        refused(
            i.create_route(route("e", "10.1.0.0/16", peering_hop("a-c"))),
            ErrorKind::Invalid,
            "next_hop.peering",
        );
        // A route into a pending peering is held (the compiler leaves it out).
        let (i, _) = i
            .create_route(route("a", "10.1.0.0/16", peering_hop("a-c")))
            .unwrap();
        let (i, _) = i
            .create_route(route("c", "10.0.1.0/24", peering_hop("a-c")))
            .unwrap();
        let e = refused(i.delete_peering("a-c"), ErrorKind::Conflict, "peering");
        assert_eq!(
            e.dependents,
            ["route/vpc-1:10.1.0.0/16", "route/vpc-2:10.0.1.0/24"]
        );
    }

    #[test]
    fn nic_update_moves_hosts_but_checks_the_interface() {
        let (i, _) = base().create_host(host("h2", "192.168.50.2")).unwrap();
        let (i, n) = i.create_nic(nic("vm1", "a", "web", "h1")).unwrap();
        let (i, _) = i.create_nic(nic("vm2", "a", "web", "h2")).unwrap();
        let clash = NicUpdate {
            host: Some("h2".into()),
            ifname: Some("vm2".into()),
            ..Default::default()
        };
        refused(i.update_nic("vm1", clash), ErrorKind::Conflict, "ifname");
        let (i, moved) = i
            .update_nic(
                "vm1",
                NicUpdate {
                    host: Some("h2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            (moved.host.as_str(), moved.ip, moved.mac),
            ("h2", n.ip, n.mac)
        );
        assert_eq!(i.nic("nic-1").unwrap().host, "h2");
    }

    #[test]
    fn route_table_shows_system_and_custom_routes() {
        let i = lab();
        let t = i.route_table("tenant-a").unwrap();
        let dst: Vec<String> = t.iter().map(|e| e.destination.to_string()).collect();
        assert_eq!(
            dst,
            [
                "0.0.0.0/0",
                "10.0.1.0/24",
                "10.0.2.0/24",
                "10.9.0.0/16",
                "10.200.0.0/16"
            ]
        );
        assert!(t[1].system && !t[0].system);
        assert_eq!(
            t[1].target,
            RouteTarget::Local {
                subnet: "subnet-1".into()
            }
        );
        assert!(i.route_table("nope").is_none());
    }

    #[test]
    fn apply_creates_the_lab_then_changes_nothing_the_second_time() {
        let (i, sum) = Intent::default().apply(lab_topology()).unwrap();
        assert_eq!(sum.updated, Vec::<String>::new());
        // 2 hosts + 3 VPCs + 5 subnets + 6 NICs + 1 peering + 4 routes.
        assert_eq!(sum.created.len(), 21, "{sum:?}");
        assert!(
            sum.created
                .contains(&"route/tenant-a/0.0.0.0/0".to_string()),
            "{sum:?}"
        );
        assert_eq!(i.peering("a-shared").unwrap().state, PeeringState::Active);
        assert_eq!(
            i.vpc("tenant-b").unwrap().cidr,
            i.vpc("tenant-a").unwrap().cidr
        );
        let (again, sum) = i.apply(lab_topology()).unwrap();
        assert_eq!(sum.changes(), 0, "{sum:?}");
        assert_eq!(sum.unchanged, 21);
        assert_eq!(again, i);
    }

    #[test]
    fn apply_updates_what_differs_and_reports_it() {
        let i = lab();
        let mut t = lab_topology();
        t.vpcs[0].routes[1].next_hop = NextHop::Blackhole; // unchanged
        t.vpcs[0].routes[0].next_hop = NextHop::Blackhole;
        t.nics[0].host = "h2".into();
        t.hosts[0].underlay_mtu = Some(1600);
        let (next, sum) = i.apply(t).unwrap();
        assert_eq!(
            sum.updated,
            ["host/h1", "nic/a-vm1", "route/tenant-a/0.0.0.0/0"],
            "{sum:?}"
        );
        assert!(sum.created.is_empty());
        assert_eq!(next.nic("a-vm1").unwrap().host, "h2");
        assert_eq!(next.nic("a-vm1").unwrap().ip, i.nic("a-vm1").unwrap().ip);
    }

    #[test]
    fn apply_is_all_or_nothing_and_names_the_offending_field() {
        let i = lab();
        let mut t = lab_topology();
        t.vpcs.push(TopologyVpc {
            name: "new".into(),
            cidr: "10.50.0.0/16".into(),
            ..Default::default()
        });
        t.nics[4].ip = Some("10.0.2.1".into());
        let e = refused(
            Intent::default().apply(t.clone()),
            ErrorKind::Invalid,
            "nics[4].ip",
        );
        assert!(e.reason.contains("gateway"), "{e}");
        // On the existing lab the same line would change a fixed IP.
        let e = refused(i.apply(t), ErrorKind::Conflict, "nics[4].ip");
        assert!(e.reason.contains("cannot change"), "{e}");

        let mut t = lab_topology();
        t.vpcs[1].cidr = "10.0.0.0/15".into();
        let e = refused(i.apply(t), ErrorKind::Conflict, "vpcs[1].cidr");
        assert!(e.reason.contains("cannot change"), "{e}");

        let mut t = lab_topology();
        t.vpcs[0].subnets[1].cidr = "10.0.1.128/25".into();
        refused(
            Intent::default().apply(t),
            ErrorKind::Conflict,
            "vpcs[0].subnets[1].cidr",
        );

        let mut t = lab_topology();
        t.nics[2].ip = Some("10.0.1.21".into());
        refused(i.apply(t), ErrorKind::Conflict, "nics[2].ip");

        let mut t = lab_topology();
        t.vpcs[0].routes[0].next_hop = nic_hop("ghost");
        refused(
            i.apply(t),
            ErrorKind::NotFound,
            "vpcs[0].routes[0].next_hop.nic",
        );

        let mut t = lab_topology();
        t.nics.push(t.nics[0].clone());
        refused(i.apply(t), ErrorKind::Invalid, "nics[6]");
    }

    #[test]
    fn topology_yaml_rejects_unknown_fields_and_next_hop_types() {
        let e = serde_yaml::from_str::<Topology>("vpcs: [{name: a, cidr: 10.0.0.0/16, cidrs: x}]")
            .unwrap_err();
        assert!(e.to_string().contains("cidrs"), "{e}");
        let e = serde_yaml::from_str::<NextHop>("{type: gateway}").unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        let hop: NextHop = serde_json::from_str(r#"{"type":"peering","peering":"p"}"#).unwrap();
        assert_eq!(hop, peering_hop("p"));
    }

    #[test]
    fn validation_error_serializes_with_field_reason_and_dependents() {
        let e = lab().delete_nic("a-fw").unwrap_err();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "conflict");
        assert_eq!(v["field"], "nic");
        assert_eq!(
            v["dependents"],
            serde_json::json!(["route/vpc-1:0.0.0.0/0"])
        );
        assert!(
            e.to_string().contains("dependents: route/vpc-1:0.0.0.0/0"),
            "{e}"
        );
        let nf = ValidationError::not_found("vpc", "no VPC");
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
        assert!(serde_json::to_value(&nf)
            .unwrap()
            .get("dependents")
            .is_none());
    }

    #[test]
    fn records_round_trip_rebuilds_the_name_index() {
        let i = lab();
        let back = Intent::from_records(i.to_records());
        assert_eq!(back, i);
        assert_eq!(back.subnet(Some("tenant-b"), "db").unwrap().id, "subnet-4");
    }
}
