//! The agent's pure half: [`resolve`] turns [`HostTables`] (interface names) into
//! [`ResolvedTables`] (exactly the keys and values the maps hold), and [`diff`] plans the
//! map writes that take the maps from what they hold to what they should hold.
//!
//! Resolving also derives what the datapath's shortcuts rely on: `ENDPOINT_DIRECT` on every
//! endpoint whose own (VNI, address) resolves to a `Local` route (so the datapath may skip
//! the route lookup for it), the underlay MAC copied into each remote endpoint, and the
//! appliance VTEPs (hosts of `ENDPOINT_APPLIANCE` NICs) per VNI.
//!
//! The plan is hitless. Upserts come first, things that are pointed to before the things
//! that point to them (HOST, UNDERLAY, VNIS, APPLIANCE_VTEPS, ENDPOINTS, PORTS, ROUTES);
//! deletions follow in the reverse order. A changed value is one
//! upsert (hash and LPM updates replace a value atomically), never delete + insert. Route
//! upserts go most specific first and route deletions least specific first, so while the
//! plan runs every destination is routed either as before or as after, never by a third
//! route; a destination forwarded the same before and after keeps being forwarded so.
//! `ENDPOINT_DIRECT` follows that rule too: endpoints change before routes, and a direct
//! endpoint is forwarded exactly as its `Local` route would forward it, so while a route
//! over it appears or goes, it is forwarded as before or as after.
//! Only a map too full to hold its old and new entries together ([`diff_within`]) makes
//! some of its deletions go first.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use serde::Serialize;
use sluice_common::{
    maps,
    vpc::{
        ApplianceVtep, ApplianceVtepKey, Endpoint, EndpointKey, HostConfig, Ipv4, Mac, NextHop,
        NextHopKind, Port, PortKey, UnderlayNeighbor, VniInfo, ENDPOINT_APPLIANCE, ENDPOINT_DIRECT,
        ENDPOINT_LOCAL, ENDPOINT_PEER_SOURCE, MAX_PORTS,
    },
};

use super::tables::{endpoint_key, host_config, HostTables, RoutePrefix};

/// Exactly what this host's VPC maps hold (or should hold), keyed as in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedTables {
    /// The HOST slot; `None` is the all-zero (unconfigured) value.
    pub host: Option<HostConfig>,
    pub underlay_neighbors: BTreeMap<Ipv4, UnderlayNeighbor>,
    pub vnis: BTreeMap<u32, VniInfo>,
    pub appliance_vteps: BTreeMap<ApplianceVtepKey, ApplianceVtep>,
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// By ifindex (an index into the PORTS array: below its capacity).
    pub ports: BTreeMap<PortKey, Port>,
    /// Keyed by prefix with the host bits cleared: the trie treats keys that differ only in
    /// host bits as one key.
    pub routes: BTreeMap<RoutePrefix, NextHop>,
}

impl ResolvedTables {
    /// Number of entries for `map` (HOST: 1 when configured).
    pub fn entries(&self, map: VpcMap) -> usize {
        match map {
            VpcMap::Host => usize::from(self.host.is_some()),
            VpcMap::UnderlayNeighbors => self.underlay_neighbors.len(),
            VpcMap::Vnis => self.vnis.len(),
            VpcMap::ApplianceVteps => self.appliance_vteps.len(),
            VpcMap::Endpoints => self.endpoints.len(),
            VpcMap::Ports => self.ports.len(),
            VpcMap::Routes => self.routes.len(),
        }
    }

    /// Number of entries over all maps.
    pub fn len(&self) -> usize {
        VpcMap::ALL.into_iter().map(|m| self.entries(m)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`resolve`]'s result: the tables, and the remote VTEPs whose underlay MAC is not known
/// yet (left out of UNDERLAY, so the datapath counts `drop_no_underlay_neighbor` for them
/// until a later apply finds the MAC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub tables: ResolvedTables,
    pub unresolved_neighbors: Vec<Ipv4>,
}

/// Why [`HostTables`] could not be turned into map entries; nothing was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("interface {ifname} (for {used_by}) does not exist on this host")]
    MissingInterface { ifname: String, used_by: String },
    #[error("no MAC address for underlay interface {ifname}")]
    MissingMac { ifname: String },
    #[error(
        "interface {ifname} has ifindex {ifindex}: a VM port's ifindex must be below {capacity} \
         (the PORTS array's size); re-create the interface so it gets a smaller one"
    )]
    PortIfindexTooLarge {
        ifname: String,
        ifindex: u32,
        capacity: u32,
    },
    #[error("the port on interface {ifname} has VNI 0, which marks an empty PORTS slot")]
    PortWithoutVni { ifname: String },
    #[error("two ports on interface {ifname} (ifindex {ifindex}) with different values")]
    DuplicatePort { ifname: String, ifindex: u32 },
    #[error("endpoint {key} is listed twice with different values")]
    DuplicateEndpoint { key: String },
    #[error("route {prefix} is listed twice with different next hops")]
    DuplicateRoute { prefix: String },
    #[error("endpoint {key} is ENDPOINT_LOCAL but names no interface")]
    LocalEndpointWithoutInterface { key: String },
    #[error("route {prefix}: prefix length {len} is longer than 32")]
    PrefixTooLong { prefix: String, len: u8 },
    #[error("route {prefix}: unknown next hop kind {kind}")]
    UnknownNextHopKind { prefix: String, kind: u32 },
}

/// Resolves interface names and MACs with the given look-ups (the system's, in
/// [`super::apply::resolve_from_system`]; fakes in tests).
pub fn resolve(
    tables: &HostTables,
    ifindex_of: impl Fn(&str) -> Option<u32>,
    mac_of: impl Fn(&str) -> Option<Mac>,
    neighbor_mac: impl Fn(Ipv4) -> Option<Mac>,
) -> Result<Resolved, ResolveError> {
    let ifindex = |ifname: &str, used_by: &dyn Fn() -> String| {
        ifindex_of(ifname).ok_or_else(|| ResolveError::MissingInterface {
            ifname: ifname.to_string(),
            used_by: used_by(),
        })
    };
    let mut out = ResolvedTables::default();

    if let Some(u) = &tables.underlay {
        let idx = ifindex(&u.ifname, &|| "the underlay".into())?;
        let mac = mac_of(&u.ifname).ok_or_else(|| ResolveError::MissingMac {
            ifname: u.ifname.clone(),
        })?;
        out.host = Some(host_config(u, idx, mac));
    }

    let mut unresolved_neighbors = Vec::new();
    for &vtep in &tables.remote_vteps {
        match neighbor_mac(vtep) {
            Some(mac) => {
                out.underlay_neighbors
                    .insert(vtep, UnderlayNeighbor { mac, _pad: [0; 2] });
            }
            None => unresolved_neighbors.push(vtep),
        }
    }
    unresolved_neighbors.sort_unstable();
    unresolved_neighbors.dedup();

    for &vni in &tables.vnis {
        out.vnis.insert(vni, VniInfo::default());
    }

    for e in &tables.endpoints {
        let key = endpoint_key(e.vni, e.ip);
        let idx = match &e.ifname {
            Some(name) => ifindex(name, &|| format!("endpoint {}", fmt_endpoint_key(&key)))?,
            None if e.flags & ENDPOINT_LOCAL != 0 => {
                return Err(ResolveError::LocalEndpointWithoutInterface {
                    key: fmt_endpoint_key(&key),
                })
            }
            None => 0,
        };
        let remote = e.flags & (ENDPOINT_LOCAL | ENDPOINT_PEER_SOURCE) == 0;
        let vtep_mac = match out.underlay_neighbors.get(&e.vtep) {
            Some(n) if remote => n.mac,
            _ => [0; 6],
        };
        let mut value = e.to_endpoint(idx, vtep_mac);
        // Derived below from the routes, whatever the input says.
        value.flags &= !ENDPOINT_DIRECT;
        if out.endpoints.insert(key, value).is_some_and(|v| v != value) {
            return Err(ResolveError::DuplicateEndpoint {
                key: fmt_endpoint_key(&key),
            });
        }
    }

    for p in &tables.ports {
        let port = p.port;
        let idx = ifindex(&p.ifname, &|| {
            format!(
                "the port of {} in VNI {}",
                Ipv4Addr::from(port.ip),
                port.vni
            )
        })?;
        if idx >= MAX_PORTS {
            return Err(ResolveError::PortIfindexTooLarge {
                ifname: p.ifname.clone(),
                ifindex: idx,
                capacity: MAX_PORTS,
            });
        }
        if port.vni == 0 {
            return Err(ResolveError::PortWithoutVni {
                ifname: p.ifname.clone(),
            });
        }
        if out.ports.insert(idx, port).is_some_and(|v| v != port) {
            return Err(ResolveError::DuplicatePort {
                ifname: p.ifname.clone(),
                ifindex: idx,
            });
        }
    }

    // Collected and sorted, then built in one pass: a tree insert per route was most of
    // resolving 100,000 routes.
    let mut routes: Vec<(RoutePrefix, NextHop)> = Vec::with_capacity(tables.routes.len());
    for r in &tables.routes {
        if r.prefix.len > 32 {
            return Err(ResolveError::PrefixTooLong {
                prefix: fmt_prefix(&r.prefix),
                len: r.prefix.len,
            });
        }
        if NextHopKind::from_u32(r.next_hop.kind).is_none() {
            return Err(ResolveError::UnknownNextHopKind {
                prefix: fmt_prefix(&r.prefix),
                kind: r.next_hop.kind,
            });
        }
        routes.push((normalize(r.prefix), NextHop::from(r.next_hop)));
    }
    routes.sort_by_key(|r| r.0);
    // The same route twice is harmless; the same prefix with two next hops is not.
    routes.dedup();
    if let Some(w) = routes.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ResolveError::DuplicateRoute {
            prefix: fmt_prefix(&w[0].0),
        });
    }
    out.routes = routes.into_iter().collect();

    mark_direct(&mut out.endpoints, &out.routes);
    out.appliance_vteps = appliance_vteps(&out.endpoints, &out.vnis);

    Ok(Resolved {
        tables: out,
        unresolved_neighbors,
    })
}

/// The map entries a small change of a host's tables alters, as desired values (`None`:
/// absent): routes, the endpoints and ports it replaces, and the endpoints whose
/// `ENDPOINT_DIRECT` flips. Everything else resolves as before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChange {
    pub routes: BTreeMap<RoutePrefix, Option<NextHop>>,
    pub endpoints: BTreeMap<EndpointKey, Option<Endpoint>>,
    pub ports: BTreeMap<PortKey, Option<Port>>,
}

/// What resolving the tables again would change in `known` (the resolved tables of the
/// previous round, whose interfaces `ifindex_of` still gives) for the change `d`: equal to
/// a whole [`resolve`] of the new tables (tested). `None` unless `d` changes only routes,
/// endpoints and existing ports' values, with plain prefixes, known next hop kinds, and
/// no remote appliance (whose VTEPs the appliance table derives): resolve whole then.
pub fn route_change(
    known: &ResolvedTables,
    d: &super::delta::TablesDelta,
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> Option<RouteChange> {
    let simple = d.underlay.is_none()
        && d.nat.is_none()
        && d.lb.is_none()
        && d.ports.removed.is_empty()
        && d.vnis.is_empty()
        && d.remote_vteps.is_empty()
        && d.sg_nics.is_empty()
        && d.sg_policies.is_empty()
        && d.blocklist.is_empty()
        && !d.is_empty();
    if !simple {
        return None;
    }
    let mut c = RouteChange::default();
    let plain = |p: &RoutePrefix| p.len <= 32 && normalize(*p) == *p;
    for p in &d.routes.removed {
        if !plain(p) {
            return None;
        }
        c.routes.insert(*p, None);
    }
    for r in &d.routes.upserted {
        if !plain(&r.prefix) || NextHopKind::from_u32(r.next_hop.kind).is_none() {
            return None;
        }
        c.routes.insert(r.prefix, Some(NextHop::from(r.next_hop)));
    }
    for p in &d.ports.upserted {
        let idx = ifindex_of(&p.ifname)?;
        if idx >= MAX_PORTS || p.port.vni == 0 || !known.ports.contains_key(&idx) {
            return None;
        }
        c.ports.insert(idx, Some(p.port));
    }
    // The route `(vni, ip)` resolves to once the change is made.
    let route_after = |vni: u32, ip: Ipv4| {
        (0..=32u8).rev().find_map(|len| {
            let p = normalize(RoutePrefix { vni, ip, len });
            match c.routes.get(&p) {
                Some(changed) => changed.as_ref(),
                None => known.routes.get(&p),
            }
        })
    };
    let direct = |k: &EndpointKey, flags: u32| {
        flags & ENDPOINT_PEER_SOURCE == 0
            && route_after(k.vni, k.ip).is_some_and(|h| h.kind == NextHopKind::Local as u32)
    };
    let with_direct = |k: &EndpointKey, mut value: Endpoint| {
        if direct(k, value.flags) {
            value.flags |= ENDPOINT_DIRECT;
        } else {
            value.flags &= !ENDPOINT_DIRECT;
        }
        value
    };
    let remote_appliance =
        |flags: u32| flags & ENDPOINT_APPLIANCE != 0 && flags & ENDPOINT_LOCAL == 0;
    let mut endpoints = BTreeMap::new();
    for p in c.routes.keys() {
        let from = EndpointKey {
            vni: p.vni,
            ip: [0; 4],
        };
        let to = EndpointKey {
            vni: p.vni,
            ip: [255; 4],
        };
        for (k, e) in known.endpoints.range(from..=to) {
            if normalize(RoutePrefix {
                vni: k.vni,
                ip: k.ip,
                len: p.len,
            }) != *p
            {
                continue;
            }
            let value = with_direct(k, *e);
            if value != *e {
                endpoints.insert(*k, Some(value));
            }
        }
    }
    let old_is_remote_appliance = |k: &EndpointKey| {
        known
            .endpoints
            .get(k)
            .is_some_and(|e| remote_appliance(e.flags))
    };
    for &(vni, ip) in &d.endpoints.removed {
        let k = endpoint_key(vni, ip);
        if old_is_remote_appliance(&k) {
            return None;
        }
        endpoints.insert(k, None);
    }
    for e in &d.endpoints.upserted {
        let k = endpoint_key(e.vni, e.ip);
        if remote_appliance(e.flags) || old_is_remote_appliance(&k) {
            return None;
        }
        let idx = match &e.ifname {
            Some(name) => ifindex_of(name)?,
            None if e.flags & ENDPOINT_LOCAL != 0 => return None,
            None => 0,
        };
        let remote = e.flags & (ENDPOINT_LOCAL | ENDPOINT_PEER_SOURCE) == 0;
        let vtep_mac = match known.underlay_neighbors.get(&e.vtep) {
            Some(n) if remote => n.mac,
            _ => [0; 6],
        };
        endpoints.insert(k, Some(with_direct(&k, e.to_endpoint(idx, vtep_mac))));
    }
    c.endpoints = endpoints;
    Some(c)
}

/// `current` and `desired` restricted to the keys `change` names: the input of
/// [`diff_within`] for only those keys.
pub fn change_tables(
    known: &ResolvedTables,
    change: &RouteChange,
) -> (ResolvedTables, ResolvedTables) {
    let (mut cur, mut want) = (ResolvedTables::default(), ResolvedTables::default());
    for (k, v) in &change.routes {
        if let Some(old) = known.routes.get(k) {
            cur.routes.insert(*k, *old);
        }
        if let Some(v) = v {
            want.routes.insert(*k, *v);
        }
    }
    for (k, v) in &change.endpoints {
        if let Some(old) = known.endpoints.get(k) {
            cur.endpoints.insert(*k, *old);
        }
        if let Some(v) = v {
            want.endpoints.insert(*k, *v);
        }
    }
    for (k, v) in &change.ports {
        if let Some(old) = known.ports.get(k) {
            cur.ports.insert(*k, *old);
        }
        if let Some(v) = v {
            want.ports.insert(*k, *v);
        }
    }
    (cur, want)
}

/// Sets `ENDPOINT_DIRECT` on exactly the endpoints (peer sources aside) whose own (VNI,
/// address) resolves to a `Local` route in `routes`: for them the datapath's shortcut
/// (deliver without the route lookup) gives what the lookup would.
pub fn mark_direct(
    endpoints: &mut BTreeMap<EndpointKey, Endpoint>,
    routes: &BTreeMap<RoutePrefix, NextHop>,
) {
    // Prefix lengths in use per VNI, longest first: an LPM probes only those.
    let mut lens: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for p in routes.keys() {
        lens.entry(p.vni).or_default().push(p.len);
    }
    for l in lens.values_mut() {
        l.sort_unstable_by(|a, b| b.cmp(a));
        l.dedup();
    }
    for (k, e) in endpoints.iter_mut() {
        let local_route = e.flags & ENDPOINT_PEER_SOURCE == 0
            && lens.get(&k.vni).is_some_and(|lens| {
                lens.iter()
                    .find_map(|&len| {
                        routes.get(&normalize(RoutePrefix {
                            vni: k.vni,
                            ip: k.ip,
                            len,
                        }))
                    })
                    .is_some_and(|h| h.kind == NextHopKind::Local as u32)
            });
        if local_route {
            e.flags |= ENDPOINT_DIRECT;
        } else {
            e.flags &= !ENDPOINT_DIRECT;
        }
    }
}

/// (VNI, VTEP) of every remote appliance NIC under a VNI decapsulated here: its host may
/// send any inner source under that VNI (under a peer's VNI too, where the appliance
/// appears as a peer source).
pub fn appliance_vteps(
    endpoints: &BTreeMap<EndpointKey, Endpoint>,
    vnis: &BTreeMap<u32, VniInfo>,
) -> BTreeMap<ApplianceVtepKey, ApplianceVtep> {
    endpoints
        .iter()
        .filter(|(k, e)| {
            e.flags & ENDPOINT_APPLIANCE != 0
                && e.flags & ENDPOINT_LOCAL == 0
                && vnis.contains_key(&k.vni)
        })
        .map(|(k, e)| {
            (
                ApplianceVtepKey {
                    vni: k.vni,
                    vtep: e.vtep,
                },
                ApplianceVtep::default(),
            )
        })
        .collect()
}

/// The prefix with its host bits cleared (as the trie matches it).
pub fn normalize(p: RoutePrefix) -> RoutePrefix {
    let len = p.len.min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    RoutePrefix {
        vni: p.vni,
        ip: (u32::from_be_bytes(p.ip) & mask).to_be_bytes(),
        len: p.len,
    }
}

/// The VPC maps, in the order their upserts run (deletions run in reverse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VpcMap {
    Host,
    UnderlayNeighbors,
    Vnis,
    ApplianceVteps,
    Endpoints,
    Ports,
    Routes,
}

impl VpcMap {
    pub const ALL: [VpcMap; 7] = [
        VpcMap::Host,
        VpcMap::UnderlayNeighbors,
        VpcMap::Vnis,
        VpcMap::ApplianceVteps,
        VpcMap::Endpoints,
        VpcMap::Ports,
        VpcMap::Routes,
    ];

    /// The map's name in the eBPF object.
    pub fn name(self) -> &'static str {
        match self {
            VpcMap::Host => maps::HOST,
            VpcMap::UnderlayNeighbors => maps::UNDERLAY_NEIGHBORS,
            VpcMap::Vnis => maps::VNIS,
            VpcMap::ApplianceVteps => maps::APPLIANCE_VTEPS,
            VpcMap::Endpoints => maps::ENDPOINTS,
            VpcMap::Ports => maps::PORTS,
            VpcMap::Routes => maps::ROUTES,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for VpcMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Writes the HOST slot; `None` writes the all-zero (unconfigured) value.
    SetHost(Option<HostConfig>),
    UpsertNeighbor(Ipv4, UnderlayNeighbor),
    DeleteNeighbor(Ipv4),
    UpsertVni(u32, VniInfo),
    DeleteVni(u32),
    UpsertApplianceVtep(ApplianceVtepKey, ApplianceVtep),
    DeleteApplianceVtep(ApplianceVtepKey),
    UpsertEndpoint(EndpointKey, Endpoint),
    DeleteEndpoint(EndpointKey),
    UpsertPort(PortKey, Port),
    DeletePort(PortKey),
    UpsertRoute(RoutePrefix, NextHop),
    DeleteRoute(RoutePrefix),
}

impl Step {
    pub fn map(&self) -> VpcMap {
        match self {
            Step::SetHost(_) => VpcMap::Host,
            Step::UpsertNeighbor(..) | Step::DeleteNeighbor(_) => VpcMap::UnderlayNeighbors,
            Step::UpsertVni(..) | Step::DeleteVni(_) => VpcMap::Vnis,
            Step::UpsertApplianceVtep(..) | Step::DeleteApplianceVtep(_) => VpcMap::ApplianceVteps,
            Step::UpsertEndpoint(..) | Step::DeleteEndpoint(_) => VpcMap::Endpoints,
            Step::UpsertPort(..) | Step::DeletePort(_) => VpcMap::Ports,
            Step::UpsertRoute(..) | Step::DeleteRoute(_) => VpcMap::Routes,
        }
    }

    /// True for removals (clearing HOST counts as one).
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Step::SetHost(None)
                | Step::DeleteNeighbor(_)
                | Step::DeleteVni(_)
                | Step::DeleteApplianceVtep(_)
                | Step::DeleteEndpoint(_)
                | Step::DeletePort(_)
                | Step::DeleteRoute(_)
        )
    }

    /// The key the step writes, for messages.
    pub fn key(&self) -> String {
        match self {
            Step::SetHost(_) => "slot 0".into(),
            Step::UpsertNeighbor(vtep, _) | Step::DeleteNeighbor(vtep) => {
                format!("vtep {}", Ipv4Addr::from(*vtep))
            }
            Step::UpsertVni(vni, _) | Step::DeleteVni(vni) => format!("vni {vni}"),
            Step::UpsertApplianceVtep(k, _) | Step::DeleteApplianceVtep(k) => {
                format!("vni {} vtep {}", k.vni, Ipv4Addr::from(k.vtep))
            }
            Step::UpsertEndpoint(k, _) | Step::DeleteEndpoint(k) => fmt_endpoint_key(k),
            Step::UpsertPort(ifindex, _) | Step::DeletePort(ifindex) => {
                format!("ifindex {ifindex}")
            }
            Step::UpsertRoute(p, _) | Step::DeleteRoute(p) => fmt_prefix(p),
        }
    }

    /// Performs the step on a model of the maps.
    pub fn apply_to(&self, t: &mut ResolvedTables) {
        match *self {
            Step::SetHost(h) => t.host = h,
            Step::UpsertNeighbor(k, v) => {
                t.underlay_neighbors.insert(k, v);
            }
            Step::DeleteNeighbor(k) => {
                t.underlay_neighbors.remove(&k);
            }
            Step::UpsertVni(k, v) => {
                t.vnis.insert(k, v);
            }
            Step::DeleteVni(k) => {
                t.vnis.remove(&k);
            }
            Step::UpsertApplianceVtep(k, v) => {
                t.appliance_vteps.insert(k, v);
            }
            Step::DeleteApplianceVtep(k) => {
                t.appliance_vteps.remove(&k);
            }
            Step::UpsertEndpoint(k, v) => {
                t.endpoints.insert(k, v);
            }
            Step::DeleteEndpoint(k) => {
                t.endpoints.remove(&k);
            }
            Step::UpsertPort(k, v) => {
                t.ports.insert(k, v);
            }
            Step::DeletePort(k) => {
                t.ports.remove(&k);
            }
            Step::UpsertRoute(k, v) => {
                t.routes.insert(k, v);
            }
            Step::DeleteRoute(k) => {
                t.routes.remove(&k);
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.is_delete() { "delete" } else { "upsert" };
        write!(f, "{op} {} {}", self.map(), self.key())
    }
}

/// Upserts and deletions planned for (or done to) one map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    pub upserts: usize,
    pub deletes: usize,
}

/// [`OpCounts`] per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffCounts([OpCounts; 7]);

impl DiffCounts {
    pub fn get(&self, map: VpcMap) -> OpCounts {
        self.0[map.index()]
    }

    /// Counts one step.
    pub fn add(&mut self, step: &Step) {
        let c = &mut self.0[step.map().index()];
        if step.is_delete() {
            c.deletes += 1;
        } else {
            c.upserts += 1;
        }
    }

    pub fn upserts(&self) -> usize {
        self.0.iter().map(|c| c.upserts).sum()
    }

    pub fn deletes(&self) -> usize {
        self.0.iter().map(|c| c.deletes).sum()
    }

    /// (map name, counts) for every map, in upsert order.
    pub fn by_map(&self) -> impl Iterator<Item = (VpcMap, OpCounts)> + '_ {
        VpcMap::ALL.into_iter().map(|m| (m, self.get(m)))
    }
}

impl fmt::Display for DiffCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (map, c) in self.by_map() {
            if c.upserts == 0 && c.deletes == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{map} +{} -{}", c.upserts, c.deletes)?;
        }
        if first {
            f.write_str("no changes")?;
        }
        Ok(())
    }
}

impl Serialize for DiffCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(VpcMap::ALL.len()))?;
        for (map, c) in self.by_map() {
            m.serialize_entry(map.name(), &c)?;
        }
        m.end()
    }
}

/// An ordered plan of map writes; run it front to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub steps: Vec<Step>,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn counts(&self) -> DiffCounts {
        let mut c = DiffCounts::default();
        for s in &self.steps {
            c.add(s);
        }
        c
    }
}

/// Plans the writes that turn `current` into `desired` (see the module doc for the order),
/// for maps of unlimited size.
pub fn diff(current: &ResolvedTables, desired: &ResolvedTables) -> TableDiff {
    diff_within(current, desired, |_| usize::MAX)
}

/// [`diff`] for maps holding at most `capacity(map)` entries. Where the old and the new
/// entries of a map do not fit together, just enough of that map's deletions move to
/// right before its upserts, so the plan never needs more room than the map has: the
/// entries going away then go a little earlier (a route's window may open: only under
/// capacity pressure). `desired` itself must fit (checked by the caller).
pub fn diff_within(
    current: &ResolvedTables,
    desired: &ResolvedTables,
    capacity: impl Fn(VpcMap) -> usize,
) -> TableDiff {
    let mut plans = [
        MapPlan::of(
            VpcMap::UnderlayNeighbors,
            &current.underlay_neighbors,
            &desired.underlay_neighbors,
            Step::UpsertNeighbor,
            Step::DeleteNeighbor,
        ),
        MapPlan::of(
            VpcMap::Vnis,
            &current.vnis,
            &desired.vnis,
            Step::UpsertVni,
            Step::DeleteVni,
        ),
        MapPlan::of(
            VpcMap::ApplianceVteps,
            &current.appliance_vteps,
            &desired.appliance_vteps,
            Step::UpsertApplianceVtep,
            Step::DeleteApplianceVtep,
        ),
        MapPlan::of(
            VpcMap::Endpoints,
            &current.endpoints,
            &desired.endpoints,
            Step::UpsertEndpoint,
            Step::DeleteEndpoint,
        ),
        MapPlan::of(
            VpcMap::Ports,
            &current.ports,
            &desired.ports,
            Step::UpsertPort,
            Step::DeletePort,
        ),
        MapPlan::of(
            VpcMap::Routes,
            &current.routes,
            &desired.routes,
            Step::UpsertRoute,
            Step::DeleteRoute,
        ),
    ];
    let routes = plans
        .iter_mut()
        .find(|p| p.map == VpcMap::Routes)
        .expect("a routes plan");
    // Most specific upsert first: a destination never falls to a less specific route that
    // is about to be replaced by a more specific one.
    routes.upserts.sort_by_key(|s| match s {
        Step::UpsertRoute(p, _) => (std::cmp::Reverse(p.len), *p),
        _ => unreachable!("only route upserts here"),
    });
    // Least specific deletion first: removing a route never uncovers another route that
    // is itself about to go.
    routes.deletes.sort_by_key(|s| match s {
        Step::DeleteRoute(p) => (p.len, *p),
        _ => unreachable!("only route deletions here"),
    });

    let mut steps = Vec::new();
    if desired.host.is_some() && desired.host != current.host {
        steps.push(Step::SetHost(desired.host));
    }
    // Upserts, pointed-to maps first (each preceded by the deletions it needs room from).
    let mut late_deletes = Vec::new();
    for plan in &mut plans {
        let cap = capacity(plan.map);
        let early = plan.peak.saturating_sub(cap).min(plan.deletes.len());
        let rest = plan.deletes.split_off(early);
        steps.append(&mut plan.deletes);
        steps.append(&mut plan.upserts);
        late_deletes.push(rest);
    }
    // Deletions, pointing maps first.
    for mut rest in late_deletes.into_iter().rev() {
        steps.append(&mut rest);
    }
    if desired.host.is_none() && current.host.is_some() {
        steps.push(Step::SetHost(None));
    }
    TableDiff { steps }
}

/// One map's upserts and deletions, and its occupancy if all upserts ran first.
struct MapPlan {
    map: VpcMap,
    upserts: Vec<Step>,
    deletes: Vec<Step>,
    peak: usize,
}

impl MapPlan {
    fn of<K: Ord + Copy, V: PartialEq + Copy>(
        map: VpcMap,
        current: &BTreeMap<K, V>,
        desired: &BTreeMap<K, V>,
        upsert: impl Fn(K, V) -> Step,
        delete: impl Fn(K) -> Step,
    ) -> Self {
        let mut added = 0;
        let upserts: Vec<Step> = desired
            .iter()
            .filter(|(k, v)| {
                let old = current.get(k);
                added += usize::from(old.is_none());
                old != Some(v)
            })
            .map(|(k, v)| upsert(*k, *v))
            .collect();
        let deletes: Vec<Step> = current
            .keys()
            .filter(|k| !desired.contains_key(k))
            .map(|k| delete(*k))
            .collect();
        Self {
            map,
            upserts,
            deletes,
            peak: current.len() + added,
        }
    }
}

/// `vni 7 10.0.0.5`.
pub fn fmt_endpoint_key(k: &EndpointKey) -> String {
    format!("vni {} {}", k.vni, Ipv4Addr::from(k.ip))
}

/// `vni 7 10.0.0.0/16`.
pub fn fmt_prefix(p: &RoutePrefix) -> String {
    format!("vni {} {}/{}", p.vni, Ipv4Addr::from(p.ip), p.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpc::tables::{
        EndpointEntry, HostUnderlay, LocalPort, NextHopEntry, RouteEntry, RoutePrefix,
    };
    const VTEP_SELF: Ipv4 = [192, 0, 2, 1];
    const VTEP_A: Ipv4 = [192, 0, 2, 2];
    const VTEP_B: Ipv4 = [192, 0, 2, 3];
    const MAC_A: Mac = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: Mac = [2, 0, 0, 0, 0, 0xb];

    fn hop(kind: NextHopKind, vni: u32, ip: Ipv4) -> NextHopEntry {
        NextHopEntry {
            kind: kind as u32,
            vni,
            ip,
        }
    }

    fn route(vni: u32, ip: Ipv4, len: u8, next_hop: NextHopEntry) -> RouteEntry {
        RouteEntry {
            prefix: RoutePrefix { vni, ip, len },
            next_hop,
        }
    }

    fn endpoint(vni: u32, ip: Ipv4, vtep: Ipv4, ifname: Option<&str>) -> EndpointEntry {
        EndpointEntry {
            vni,
            ip,
            mac: [2, 0, ip[0], ip[1], ip[2], ip[3]],
            vtep,
            flags: if ifname.is_some() { ENDPOINT_LOCAL } else { 0 },
            ifname: ifname.map(str::to_string),
        }
    }

    fn port(vni: u32, ip: Ipv4) -> Port {
        Port {
            vni,
            ip,
            mac: [2, 0, ip[0], ip[1], ip[2], ip[3]],
            flags: 0,
            subnet: [ip[0], ip[1], ip[2], 0],
            subnet_mask: [255, 255, 255, 0],
            vpc: [ip[0], ip[1], 0, 0],
            vpc_mask: [255, 255, 0, 0],
        }
    }

    /// One VPC (VNI 7) with a local and a remote NIC, the host's underlay, two remote VTEPs.
    fn host_tables() -> HostTables {
        HostTables {
            underlay: Some(HostUnderlay {
                ifname: "under0".into(),
                vtep: VTEP_SELF,
                router_mac: [2, 0, 0, 0, 0, 1],
                underlay_mtu: 1500,
            }),
            ports: vec![LocalPort {
                ifname: "vm1".into(),
                port: port(7, [10, 0, 0, 5]),
            }],
            endpoints: vec![
                endpoint(7, [10, 0, 0, 5], VTEP_SELF, Some("vm1")),
                endpoint(7, [10, 0, 1, 9], VTEP_A, None),
            ],
            routes: vec![
                route(7, [10, 0, 0, 0], 24, hop(NextHopKind::Local, 7, [0; 4])),
                // Host bits set on purpose: the trie ignores them, so must the diff.
                route(7, [10, 0, 1, 77], 24, hop(NextHopKind::Local, 7, [0; 4])),
                route(7, [0; 4], 0, hop(NextHopKind::Nic, 7, [10, 0, 1, 9])),
            ],
            vnis: vec![7],
            remote_vteps: vec![VTEP_A, VTEP_B],
            ..Default::default()
        }
    }

    fn ifindex_of(name: &str) -> Option<u32> {
        match name {
            "under0" => Some(2),
            "vm1" => Some(11),
            "vm2" => Some(12),
            _ => None,
        }
    }

    fn mac_of(name: &str) -> Option<Mac> {
        (name == "under0").then_some([2, 0, 0, 0, 0, 0xee])
    }

    /// VTEP_A answers ARP, VTEP_B does not.
    fn neighbor_mac(vtep: Ipv4) -> Option<Mac> {
        (vtep == VTEP_A).then_some(MAC_A)
    }

    fn resolved(t: &HostTables) -> ResolvedTables {
        resolve(t, ifindex_of, mac_of, neighbor_mac)
            .expect("resolves")
            .tables
    }

    #[test]
    fn resolve_gives_map_keys_and_values() {
        let r = resolve(&host_tables(), ifindex_of, mac_of, neighbor_mac).expect("resolves");
        let t = &r.tables;
        let host = t.host.expect("host configured");
        assert_eq!(host.configured, 1);
        assert_eq!(host.underlay_ifindex, 2);
        assert_eq!(host.underlay_mac, [2, 0, 0, 0, 0, 0xee]);
        assert_eq!(host.vtep, VTEP_SELF);
        assert_eq!(t.ports.keys().copied().collect::<Vec<_>>(), vec![11]);
        let local = t.endpoints[&endpoint_key(7, [10, 0, 0, 5])];
        assert_eq!(
            (local.ifindex, local.flags),
            (11, ENDPOINT_LOCAL | ENDPOINT_DIRECT)
        );
        let remote = t.endpoints[&endpoint_key(7, [10, 0, 1, 9])];
        assert_eq!((remote.ifindex, remote.vtep), (0, VTEP_A));
        assert!(t.routes.contains_key(&RoutePrefix {
            vni: 7,
            ip: [10, 0, 1, 0],
            len: 24
        }));
        assert_eq!(t.routes.len(), 3);
        assert_eq!(t.vnis.keys().copied().collect::<Vec<_>>(), vec![7]);
        // The unanswered VTEP is left out and reported, not an error.
        assert_eq!(
            t.underlay_neighbors.keys().copied().collect::<Vec<_>>(),
            vec![VTEP_A]
        );
        assert_eq!(r.unresolved_neighbors, vec![VTEP_B]);
    }

    #[test]
    fn resolve_names_a_missing_interface() {
        let mut t = host_tables();
        t.ports[0].ifname = "gone0".into();
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(&err, ResolveError::MissingInterface { ifname, .. } if ifname == "gone0"),
            "{err:?}"
        );
        assert!(err.to_string().contains("gone0"), "{err}");

        let mut t = host_tables();
        t.endpoints[0].ifname = Some("gone1".into());
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(err.to_string().contains("gone1"), "{err}");
        assert!(err.to_string().contains("vni 7 10.0.0.5"), "{err}");

        let mut t = host_tables();
        t.underlay.as_mut().unwrap().ifname = "gone2".into();
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(err.to_string().contains("gone2"), "{err}");
        assert!(err.to_string().contains("underlay"), "{err}");
    }

    #[test]
    fn resolve_rejects_inconsistent_tables() {
        let mut t = host_tables();
        t.underlay.as_mut().unwrap().ifname = "vm1".into();
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert_eq!(
            err,
            ResolveError::MissingMac {
                ifname: "vm1".into()
            }
        );

        let mut t = host_tables();
        t.endpoints[0].ifname = None;
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(err, ResolveError::LocalEndpointWithoutInterface { .. }),
            "{err:?}"
        );

        let mut t = host_tables();
        t.routes[0].prefix.len = 33;
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(err, ResolveError::PrefixTooLong { len: 33, .. }),
            "{err:?}"
        );

        let mut t = host_tables();
        t.routes[0].next_hop.kind = 9;
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(err, ResolveError::UnknownNextHopKind { kind: 9, .. }),
            "{err:?}"
        );

        // Two routes that differ only in host bits are one trie key.
        let mut t = host_tables();
        t.routes.push(route(
            7,
            [10, 0, 0, 1],
            24,
            hop(NextHopKind::Blackhole, 7, [0; 4]),
        ));
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert_eq!(
            err,
            ResolveError::DuplicateRoute {
                prefix: "vni 7 10.0.0.0/24".into()
            }
        );

        let mut t = host_tables();
        let mut twin = t.endpoints[1].clone();
        twin.vtep = VTEP_B;
        t.endpoints.push(twin);
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(err, ResolveError::DuplicateEndpoint { .. }),
            "{err:?}"
        );

        let mut t = host_tables();
        t.ports.push(LocalPort {
            ifname: "vm1".into(),
            port: port(7, [10, 0, 0, 6]),
        });
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert!(
            matches!(err, ResolveError::DuplicatePort { ifindex: 11, .. }),
            "{err:?}"
        );

        // An identical repeat is harmless.
        let mut t = host_tables();
        t.endpoints.push(t.endpoints[0].clone());
        assert!(resolve(&t, ifindex_of, mac_of, neighbor_mac).is_ok());
    }

    #[test]
    fn resolve_refuses_ports_the_array_cannot_hold() {
        let big = |name: &str| match name {
            "vm1" => Some(MAX_PORTS),
            other => ifindex_of(other),
        };
        let err = resolve(&host_tables(), big, mac_of, neighbor_mac).unwrap_err();
        assert_eq!(
            err,
            ResolveError::PortIfindexTooLarge {
                ifname: "vm1".into(),
                ifindex: MAX_PORTS,
                capacity: MAX_PORTS
            }
        );
        assert!(err.to_string().contains("vm1"), "{err}");
        assert!(err.to_string().contains("4096"), "{err}");
        // The last slot is fine.
        let last = |name: &str| match name {
            "vm1" => Some(MAX_PORTS - 1),
            other => ifindex_of(other),
        };
        let t = resolve(&host_tables(), last, mac_of, neighbor_mac).unwrap();
        assert!(t.tables.ports.contains_key(&(MAX_PORTS - 1)));

        let mut t = host_tables();
        t.ports[0].port.vni = 0;
        let err = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap_err();
        assert_eq!(
            err,
            ResolveError::PortWithoutVni {
                ifname: "vm1".into()
            }
        );
    }

    #[test]
    fn resolve_marks_endpoints_whose_route_is_local_as_direct() {
        let mut t = host_tables();
        // 10.0.1.9 gets a /32 to an appliance: the route lookup must decide for it.
        t.routes.push(route(
            7,
            [10, 0, 1, 9],
            32,
            hop(NextHopKind::Nic, 7, [10, 0, 0, 5]),
        ));
        // Covered only by the default route (to the appliance).
        t.endpoints.push(endpoint(7, [10, 5, 0, 1], VTEP_A, None));
        // A peer source inside a Local route: never a destination, never direct.
        t.endpoints.push(EndpointEntry {
            flags: ENDPOINT_PEER_SOURCE,
            ..endpoint(7, [10, 0, 0, 77], VTEP_B, None)
        });
        // A DIRECT flag given in the input does not count.
        t.endpoints[0].flags |= ENDPOINT_DIRECT;
        let mut u = t.clone();
        u.endpoints[0].flags &= !ENDPOINT_DIRECT;
        let r = resolved(&t);
        assert_eq!(r, resolved(&u));
        let direct = |ip: Ipv4| r.endpoints[&endpoint_key(7, ip)].flags & ENDPOINT_DIRECT != 0;
        assert!(direct([10, 0, 0, 5]), "its /24 is Local");
        assert!(!direct([10, 0, 1, 9]), "a /32 custom route covers it");
        assert!(!direct([10, 5, 0, 1]), "only the default route covers it");
        assert!(!direct([10, 0, 0, 77]), "peer source");
        // Without the /32 the remote NIC is direct again.
        t.routes.pop();
        let r = resolved(&t);
        assert_ne!(
            r.endpoints[&endpoint_key(7, [10, 0, 1, 9])].flags & ENDPOINT_DIRECT,
            0
        );
    }

    #[test]
    fn remote_endpoints_carry_their_vteps_underlay_mac() {
        let mut t = host_tables();
        t.endpoints.push(endpoint(7, [10, 0, 1, 10], VTEP_B, None));
        t.endpoints.push(EndpointEntry {
            flags: ENDPOINT_PEER_SOURCE,
            ..endpoint(7, [10, 0, 0, 77], VTEP_A, None)
        });
        let r = resolve(&t, ifindex_of, mac_of, neighbor_mac).unwrap();
        let mac = |ip: Ipv4| r.tables.endpoints[&endpoint_key(7, ip)].vtep_mac;
        assert_eq!(mac([10, 0, 1, 9]), MAC_A, "VTEP_A answered");
        assert_eq!(
            mac([10, 0, 1, 10]),
            [0; 6],
            "VTEP_B did not: dropped, counted"
        );
        assert_eq!(mac([10, 0, 0, 5]), [0; 6], "local");
        assert_eq!(mac([10, 0, 0, 77]), [0; 6], "peer source");
        assert_eq!(r.unresolved_neighbors, vec![VTEP_B]);
    }

    #[test]
    fn remote_appliances_give_their_vni_and_vtep() {
        let mut t = host_tables();
        t.endpoints[1].flags |= ENDPOINT_APPLIANCE;
        // A local appliance sends locally: no VXLAN from it to accept.
        t.endpoints[0].flags |= ENDPOINT_APPLIANCE;
        t.endpoints.push(EndpointEntry {
            flags: ENDPOINT_PEER_SOURCE | ENDPOINT_APPLIANCE,
            ..endpoint(8, [10, 1, 0, 1], VTEP_B, None)
        });
        // A VNI not decapsulated here (a peer this host only sends to) needs none.
        t.endpoints.push(EndpointEntry {
            flags: ENDPOINT_APPLIANCE,
            ..endpoint(9, [10, 2, 0, 1], VTEP_B, None)
        });
        t.vnis.push(8);
        let r = resolved(&t);
        let keys: Vec<ApplianceVtepKey> = r.appliance_vteps.keys().copied().collect();
        assert_eq!(
            keys,
            vec![
                ApplianceVtepKey {
                    vni: 7,
                    vtep: VTEP_A
                },
                ApplianceVtepKey {
                    vni: 8,
                    vtep: VTEP_B
                },
            ]
        );
        let plan = diff(&ResolvedTables::default(), &r);
        let first_endpoint = plan
            .steps
            .iter()
            .position(|s| s.map() == VpcMap::Endpoints)
            .unwrap();
        let appliance = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::UpsertApplianceVtep(..)))
            .unwrap();
        assert!(appliance < first_endpoint, "{:?}", plan.steps);
        assert_eq!(
            Step::DeleteApplianceVtep(keys[0]).to_string(),
            "delete SLUICE_APPLIANCE_VTEPS vni 7 vtep 192.0.2.2"
        );
    }

    #[test]
    fn no_underlay_means_unconfigured_host() {
        let mut t = host_tables();
        t.underlay = None;
        assert_eq!(resolved(&t).host, None);
    }

    #[test]
    fn identical_tables_need_no_steps() {
        let t = resolved(&host_tables());
        assert!(diff(&t, &t).is_empty());
        assert!(diff(&ResolvedTables::default(), &ResolvedTables::default()).is_empty());
    }

    #[test]
    fn from_empty_inserts_pointed_to_maps_first() {
        let desired = resolved(&host_tables());
        let plan = diff(&ResolvedTables::default(), &desired);
        let maps: Vec<VpcMap> = plan.steps.iter().map(Step::map).collect();
        assert_eq!(
            maps,
            vec![
                VpcMap::Host,
                VpcMap::UnderlayNeighbors,
                VpcMap::Vnis,
                VpcMap::Endpoints,
                VpcMap::Endpoints,
                VpcMap::Ports,
                VpcMap::Routes,
                VpcMap::Routes,
                VpcMap::Routes,
            ]
        );
        assert!(plan.steps.iter().all(|s| !s.is_delete()));
        let c = plan.counts();
        assert_eq!((c.upserts(), c.deletes()), (9, 0));
        assert_eq!(c.get(VpcMap::Endpoints).upserts, 2);
        // Most specific route first: the default route (/0) comes last.
        assert!(matches!(plan.steps[8], Step::UpsertRoute(p, _) if p.len == 0));
    }

    #[test]
    fn to_empty_deletes_pointing_maps_first_and_clears_host_last() {
        let current = resolved(&host_tables());
        let plan = diff(&current, &ResolvedTables::default());
        let maps: Vec<VpcMap> = plan.steps.iter().map(Step::map).collect();
        assert_eq!(
            maps,
            vec![
                VpcMap::Routes,
                VpcMap::Routes,
                VpcMap::Routes,
                VpcMap::Ports,
                VpcMap::Endpoints,
                VpcMap::Endpoints,
                VpcMap::Vnis,
                VpcMap::UnderlayNeighbors,
                VpcMap::Host,
            ]
        );
        assert!(plan.steps.iter().all(Step::is_delete));
        assert_eq!(plan.steps.last(), Some(&Step::SetHost(None)));
        // Least specific route first.
        assert!(matches!(plan.steps[0], Step::DeleteRoute(p) if p.len == 0));
    }

    #[test]
    fn changed_values_are_single_upserts() {
        let current = resolved(&host_tables());
        let mut t = host_tables();
        // The appliance route now blackholes; the remote NIC moved to another host.
        t.routes[2].next_hop = hop(NextHopKind::Blackhole, 7, [0; 4]);
        t.endpoints[1].vtep = VTEP_B;
        let desired = resolve(&t, ifindex_of, mac_of, |_| Some(MAC_B))
            .unwrap()
            .tables;
        let plan = diff(&current, &desired);
        let c = plan.counts();
        assert_eq!(c.deletes(), 0, "{:?}", plan.steps);
        assert_eq!(c.get(VpcMap::Routes).upserts, 1);
        assert_eq!(c.get(VpcMap::Endpoints).upserts, 1);
        // VTEP_A's MAC changed and VTEP_B's was learnt.
        assert_eq!(c.get(VpcMap::UnderlayNeighbors).upserts, 2);
        assert_eq!(c.upserts(), 4);
    }

    #[test]
    fn steps_describe_map_and_key() {
        let p = RoutePrefix {
            vni: 7,
            ip: [10, 0, 0, 0],
            len: 16,
        };
        assert_eq!(
            Step::DeleteRoute(p).to_string(),
            "delete SLUICE_ROUTES vni 7 10.0.0.0/16"
        );
        assert_eq!(
            Step::UpsertNeighbor(VTEP_A, UnderlayNeighbor::default()).to_string(),
            "upsert SLUICE_UNDERLAY vtep 192.0.2.2"
        );
        let counts = diff(&ResolvedTables::default(), &resolved(&host_tables())).counts();
        assert_eq!(
            counts.to_string(),
            "SLUICE_HOST +1 -0, SLUICE_UNDERLAY +1 -0, SLUICE_VNIS +1 -0, \
             SLUICE_ENDPOINTS +2 -0, SLUICE_PORT_ARRAY +1 -0, SLUICE_ROUTES +3 -0"
        );
        assert_eq!(DiffCounts::default().to_string(), "no changes");
    }

    /// A more specific route to an appliance appears while the covering route changes: the
    /// covered destinations must go to the appliance throughout, never via the new /16 value.
    #[test]
    fn more_specific_route_lands_before_its_cover_changes() {
        let mut cur = ResolvedTables::default();
        let appliance = NextHop::from(hop(NextHopKind::Nic, 7, [10, 0, 9, 9]));
        let slash16 = RoutePrefix {
            vni: 7,
            ip: [10, 0, 0, 0],
            len: 16,
        };
        let slash24 = RoutePrefix {
            vni: 7,
            ip: [10, 0, 5, 0],
            len: 24,
        };
        cur.routes.insert(slash16, appliance);
        let mut des = ResolvedTables::default();
        des.routes.insert(slash24, appliance);
        des.routes
            .insert(slash16, NextHop::from(hop(NextHopKind::Local, 7, [0; 4])));
        let plan = diff(&cur, &des);
        assert_eq!(
            plan.steps,
            vec![
                Step::UpsertRoute(slash24, appliance),
                Step::UpsertRoute(slash16, des.routes[&slash16]),
            ]
        );
    }

    #[test]
    fn a_full_map_gets_room_before_its_inserts() {
        let mut cur = ResolvedTables::default();
        cur.ports.insert(11, port(7, [10, 0, 0, 5]));
        cur.ports.insert(12, port(7, [10, 0, 0, 6]));
        let mut des = cur.clone();
        des.ports.remove(&12);
        des.ports.insert(13, port(7, [10, 0, 0, 7]));
        des.endpoints.insert(
            endpoint_key(7, [10, 0, 0, 7]),
            Endpoint {
                ifindex: 13,
                flags: ENDPOINT_LOCAL,
                ..Default::default()
            },
        );
        let roomy = diff(&cur, &des);
        assert!(matches!(roomy.steps.last(), Some(Step::DeletePort(12))));
        // PORTS holds two: port 12 must go before port 13 can come; ENDPOINTS still first.
        let tight = diff_within(&cur, &des, |m| if m == VpcMap::Ports { 2 } else { 10 });
        assert!(matches!(tight.steps[0], Step::UpsertEndpoint(..)));
        assert_eq!(tight.steps[1], Step::DeletePort(12));
        assert!(matches!(tight.steps[2], Step::UpsertPort(13, _)));
        assert_eq!(tight.counts(), roomy.counts());
    }

    // ---- property tests: random current/desired pairs, checked step by step ----

    use proptest::{collection::vec, prelude::*};

    const VNIS: [u32; 3] = [1, 2, 3];
    const LENS: [u8; 9] = [0, 8, 16, 23, 24, 29, 30, 31, 32];

    /// A small address space (10.0.{0,1}.{0..7}) so random tables overlap a lot.
    fn some_ip() -> impl Strategy<Value = Ipv4> {
        (0u8..2, 0u8..8).prop_map(|(c, d)| [10, 0, c, d])
    }

    fn some_vni() -> impl Strategy<Value = u32> {
        prop::sample::select(&VNIS[..])
    }

    fn some_mac() -> impl Strategy<Value = Mac> {
        prop::sample::select(vec![MAC_A, MAC_B])
    }

    fn endpoint_entry() -> impl Strategy<Value = (EndpointKey, Endpoint)> {
        (
            some_vni(),
            some_ip(),
            some_mac(),
            prop::sample::select(vec![VTEP_SELF, VTEP_A, VTEP_B]),
            prop::sample::select(vec![0, 0, ENDPOINT_LOCAL, ENDPOINT_PEER_SOURCE]),
            11u32..13,
            prop::sample::select(vec![[0; 6], MAC_A, MAC_B]),
            prop::bool::weighted(0.2),
        )
            .prop_map(
                |(vni, ip, mac, vtep, flags, ifindex, vtep_mac, appliance)| {
                    let remote = flags & (ENDPOINT_LOCAL | ENDPOINT_PEER_SOURCE) == 0;
                    let ep = Endpoint {
                        mac,
                        vtep_mac: if remote { vtep_mac } else { [0; 6] },
                        vtep,
                        ifindex: if flags == ENDPOINT_LOCAL { ifindex } else { 0 },
                        flags: flags | if appliance { ENDPOINT_APPLIANCE } else { 0 },
                    };
                    (endpoint_key(vni, ip), ep)
                },
            )
    }

    fn route_entry() -> impl Strategy<Value = (RoutePrefix, NextHop)> {
        (
            some_vni(),
            some_ip(),
            prop::sample::select(&LENS[..]),
            1u32..=4,
            some_vni(),
            some_ip(),
        )
            .prop_map(|(vni, ip, len, kind, peer, appliance)| {
                let kind = NextHopKind::from_u32(kind).expect("1..=4 are kinds");
                let nh = match kind {
                    NextHopKind::Nic => hop(kind, vni, appliance),
                    NextHopKind::Peering => hop(kind, peer, [0; 4]),
                    _ => hop(kind, vni, [0; 4]),
                };
                (normalize(RoutePrefix { vni, ip, len }), nh.into())
            })
    }

    fn tables() -> impl Strategy<Value = ResolvedTables> {
        (
            prop::option::weighted(0.8, 2u32..4),
            vec(
                (prop::sample::select(vec![VTEP_A, VTEP_B]), some_mac()),
                0..3,
            ),
            vec(some_vni(), 0..3),
            vec(endpoint_entry(), 0..20),
            vec((11u32..15, some_vni(), some_ip()), 0..5),
            vec(route_entry(), 0..12),
        )
            .prop_map(|(host, neighbors, vnis, endpoints, ports, routes)| {
                consistent(ResolvedTables {
                    host: host.map(|underlay_ifindex| HostConfig {
                        configured: 1,
                        underlay_ifindex,
                        vtep: VTEP_SELF,
                        ..Default::default()
                    }),
                    underlay_neighbors: neighbors
                        .into_iter()
                        .map(|(vtep, mac)| (vtep, UnderlayNeighbor { mac, _pad: [0; 2] }))
                        .collect(),
                    vnis: vnis.into_iter().map(|v| (v, VniInfo::default())).collect(),
                    endpoints: endpoints.into_iter().collect(),
                    ports: ports
                        .into_iter()
                        .map(|(ifindex, vni, ip)| (ifindex, port(vni, ip)))
                        .collect(),
                    routes: routes.into_iter().collect(),
                    ..Default::default()
                })
            })
    }

    /// What resolve derives, derived again (after entries were mixed from two tables).
    fn consistent(mut t: ResolvedTables) -> ResolvedTables {
        mark_direct(&mut t.endpoints, &t.routes);
        t.appliance_vteps = appliance_vteps(&t.endpoints, &t.vnis);
        t
    }

    /// `other`, with the entries of `base` whose keep bit is set copied over: usually a
    /// small change of `base`, sometimes an unrelated table.
    fn overlapping(base: &ResolvedTables, other: ResolvedTables, keep: &[bool]) -> ResolvedTables {
        fn copy<K: Ord + Copy, V: Copy>(
            keep: &mut impl Iterator<Item = bool>,
            from: &BTreeMap<K, V>,
            into: &mut BTreeMap<K, V>,
        ) {
            for (k, v) in from {
                if keep.next().unwrap_or(false) {
                    into.insert(*k, *v);
                }
            }
        }
        let mut keep = keep.iter().copied().cycle();
        let mut t = other;
        if keep.next().unwrap_or(false) {
            t.host = base.host;
        }
        copy(
            &mut keep,
            &base.underlay_neighbors,
            &mut t.underlay_neighbors,
        );
        copy(&mut keep, &base.vnis, &mut t.vnis);
        copy(&mut keep, &base.endpoints, &mut t.endpoints);
        copy(&mut keep, &base.ports, &mut t.ports);
        copy(&mut keep, &base.routes, &mut t.routes);
        consistent(t)
    }

    fn current_and_desired() -> impl Strategy<Value = (ResolvedTables, ResolvedTables)> {
        (tables(), tables(), vec(prop::bool::weighted(0.75), 1..64)).prop_map(
            |(cur, other, keep)| {
                let des = overlapping(&cur, other, &keep);
                (cur, des)
            },
        )
    }

    fn probes() -> Vec<(u32, Ipv4)> {
        let mut ips: Vec<Ipv4> = (0..2)
            .flat_map(|c| (0..8).map(move |d| [10, 0, c, d]))
            .collect();
        ips.extend([[10, 0, 2, 0], [10, 9, 0, 0], [192, 168, 0, 1]]);
        VNIS.iter()
            .flat_map(|&v| ips.iter().map(move |&ip| (v, ip)))
            .collect()
    }

    /// The route the datapath picks for `(vni, ip)`: longest prefix first.
    fn decision(t: &ResolvedTables, vni: u32, ip: Ipv4) -> Option<(RoutePrefix, NextHop)> {
        (0..=32u8).rev().find_map(|len| {
            let p = normalize(RoutePrefix { vni, ip, len });
            t.routes.get(&p).map(|h| (p, *h))
        })
    }

    /// Where the datapath sends a packet for `(vni, ip)` (as `ebpf/src/vpc.rs` does it,
    /// the `ENDPOINT_DIRECT` shortcut included); `None` is a drop.
    fn forward(t: &ResolvedTables, vni: u32, ip: Ipv4) -> Option<(EndpointKey, Endpoint)> {
        let own = endpoint_key(vni, ip);
        let key = match t.endpoints.get(&own) {
            Some(e) if e.flags & ENDPOINT_DIRECT != 0 => own,
            _ => {
                let (_, hop) = decision(t, vni, ip)?;
                match NextHopKind::from_u32(hop.kind)? {
                    NextHopKind::Local => own,
                    NextHopKind::Nic => endpoint_key(vni, hop.ip),
                    NextHopKind::Peering => endpoint_key(hop.vni, ip),
                    NextHopKind::Blackhole | NextHopKind::NatGateway => return None,
                }
            }
        };
        let ep = *t.endpoints.get(&key)?;
        if ep.flags & ENDPOINT_PEER_SOURCE != 0 {
            return None;
        }
        if ep.flags & ENDPOINT_LOCAL == 0 && ep.vtep_mac == [0; 6] {
            return None;
        }
        Some((key, ep))
    }

    /// The value `step`'s key has in `t`, printed (comparable across maps).
    fn value_in(t: &ResolvedTables, step: &Step) -> Option<String> {
        fn show<V: fmt::Debug>(v: Option<&V>) -> Option<String> {
            v.map(|v| format!("{v:?}"))
        }
        match step {
            Step::SetHost(_) => show(t.host.as_ref()),
            Step::UpsertNeighbor(k, _) | Step::DeleteNeighbor(k) => {
                show(t.underlay_neighbors.get(k))
            }
            Step::UpsertVni(k, _) | Step::DeleteVni(k) => show(t.vnis.get(k)),
            Step::UpsertApplianceVtep(k, _) | Step::DeleteApplianceVtep(k) => {
                show(t.appliance_vteps.get(k))
            }
            Step::UpsertEndpoint(k, _) | Step::DeleteEndpoint(k) => show(t.endpoints.get(k)),
            Step::UpsertPort(k, _) | Step::DeletePort(k) => show(t.ports.get(k)),
            Step::UpsertRoute(k, _) | Step::DeleteRoute(k) => show(t.routes.get(k)),
        }
    }

    /// Checks the plan from `cur` to `des` for maps of `capacity` entries. While the route
    /// table has room for old and new routes together, no window may open.
    fn check_plan(
        cur: &ResolvedTables,
        des: &ResolvedTables,
        capacity: impl Fn(VpcMap) -> usize + Copy,
    ) -> Result<(), TestCaseError> {
        let fits = |map| union_len(cur, des, map) <= capacity(map);
        let hitless = fits(VpcMap::Routes);
        let roomy = VpcMap::ALL.into_iter().all(fits);
        let plan = diff_within(cur, des, capacity);
        let steps = &plan.steps;

        let mut seen = std::collections::BTreeSet::new();
        for s in steps {
            prop_assert!(seen.insert((s.map(), s.key())), "{} is written twice", s);
            prop_assert!(
                value_in(cur, s) != value_in(des, s),
                "{} touches an entry that does not change",
                s
            );
            prop_assert!(
                !(s.is_delete() && value_in(des, s).is_some()),
                "{} removes a desired entry",
                s
            );
        }
        // Upserts run in dependency order, routes most specific first.
        let upserts: Vec<&Step> = steps.iter().filter(|s| !s.is_delete()).collect();
        for w in upserts.windows(2) {
            prop_assert!(w[0].map() <= w[1].map(), "{} before {}", w[0], w[1]);
            if let (Step::UpsertRoute(a, _), Step::UpsertRoute(b, _)) = (w[0], w[1]) {
                prop_assert!(a.len >= b.len, "{} before {}", w[0], w[1]);
            }
        }
        if roomy {
            // Without capacity pressure every deletion follows every upsert, in reverse
            // dependency order, routes least specific first.
            let first_delete = steps
                .iter()
                .position(Step::is_delete)
                .unwrap_or(steps.len());
            prop_assert!(steps[first_delete..].iter().all(Step::is_delete));
            for w in steps[first_delete..].windows(2) {
                prop_assert!(
                    w[0].map() >= w[1].map() || w[1].map() == VpcMap::Host,
                    "{} before {}",
                    w[0],
                    w[1]
                );
                if let (Step::DeleteRoute(a), Step::DeleteRoute(b)) = (w[0], w[1]) {
                    prop_assert!(a.len <= b.len, "{} before {}", w[0], w[1]);
                }
            }
        }

        let probes = probes();
        let mut state = cur.clone();
        for (i, s) in steps.iter().enumerate() {
            s.apply_to(&mut state);
            for map in VpcMap::ALL {
                prop_assert!(
                    state.entries(map) <= capacity(map),
                    "after step {} ({}) {} holds more than it has room for",
                    i,
                    s,
                    map
                );
            }
            for k in cur
                .endpoints
                .keys()
                .filter(|k| des.endpoints.contains_key(k))
            {
                prop_assert!(
                    state.endpoints.contains_key(k),
                    "after step {} ({}) the endpoint {:?} kept by both is missing",
                    i,
                    s,
                    k
                );
            }
            for &(vni, ip) in &probes {
                let (before, after, now) = (
                    decision(cur, vni, ip),
                    decision(des, vni, ip),
                    decision(&state, vni, ip),
                );
                if hitless {
                    prop_assert!(
                        now == before || now == after,
                        "after step {} ({}) vni {} {} is routed by {:?}, neither {:?} nor {:?}",
                        i,
                        s,
                        vni,
                        Ipv4Addr::from(ip),
                        now,
                        before,
                        after
                    );
                }
                let same = forward(cur, vni, ip);
                if hitless && same.is_some() && same == forward(des, vni, ip) {
                    let now = forward(&state, vni, ip);
                    prop_assert_eq!(
                        now,
                        same,
                        "after step {} ({}) vni {} {} goes elsewhere",
                        i,
                        s,
                        vni,
                        Ipv4Addr::from(ip)
                    );
                }
            }
        }
        prop_assert_eq!(&state, des, "the plan does not end at the desired tables");
        prop_assert!(diff(&state, des).is_empty());
        Ok(())
    }

    /// Old and new entries of a map together: what the map must hold if nothing is
    /// deleted before the upserts.
    fn union_len(cur: &ResolvedTables, des: &ResolvedTables, map: VpcMap) -> usize {
        fn union<K: Ord, V>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
            a.len() + b.keys().filter(|k| !a.contains_key(k)).count()
        }
        match map {
            VpcMap::Host => usize::from(cur.host.is_some() || des.host.is_some()),
            VpcMap::UnderlayNeighbors => union(&cur.underlay_neighbors, &des.underlay_neighbors),
            VpcMap::Vnis => union(&cur.vnis, &des.vnis),
            VpcMap::ApplianceVteps => union(&cur.appliance_vteps, &des.appliance_vteps),
            VpcMap::Endpoints => union(&cur.endpoints, &des.endpoints),
            VpcMap::Ports => union(&cur.ports, &des.ports),
            VpcMap::Routes => union(&cur.routes, &des.routes),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn plans_are_hitless_and_reach_the_desired_tables((cur, des) in current_and_desired()) {
            check_plan(&cur, &des, |_| usize::MAX)?;
        }

        /// Maps just big enough for either table (or a little more): the plan makes room
        /// before it inserts, and stays hitless whenever the routes fit side by side.
        #[test]
        fn plans_fit_maps_with_little_room(
            (cur, des) in current_and_desired(),
            slack in vec(0usize..3, 7),
        ) {
            // Both tables fit (the kernel holds `cur`; the caller checks `des`).
            let cap = |map: VpcMap| {
                cur.entries(map).max(des.entries(map)).max(1) + slack[map as usize]
            };
            check_plan(&cur, &des, cap)?;
        }
    }

    /// Host tables over VNIs 1-2 with endpoints (some peer sources) and routes of every
    /// kind over the same few addresses, and a change of their routes.
    fn tables_and_route_change() -> impl Strategy<Value = (HostTables, HostTables)> {
        let addr = || (1u32..3, 0u8..4, 0u8..=32);
        let entry = || {
            (addr(), 0u32..4).prop_map(|((vni, a, len), kind)| {
                let p = normalize(RoutePrefix {
                    vni,
                    ip: [10, 0, a, a * 60],
                    len,
                });
                let kind = [
                    NextHopKind::Local,
                    NextHopKind::Nic,
                    NextHopKind::Blackhole,
                    NextHopKind::Peering,
                ][kind as usize];
                route(p.vni, p.ip, p.len, hop(kind, vni, [10, 0, 0, 9]))
            })
        };
        (
            vec(entry(), 0..10),
            vec((1u32..3, 0u8..4, any::<bool>()), 0..6),
            vec(
                (prop::option::of(entry()), any::<prop::sample::Index>()),
                1..5,
            ),
            vec((any::<prop::sample::Index>(), any::<bool>()), 0..3),
        )
            .prop_map(|(routes, eps, edits, endpoint_edits)| {
                let mut endpoints: Vec<EndpointEntry> = eps
                    .into_iter()
                    .map(|(vni, a, peer)| EndpointEntry {
                        flags: if peer { ENDPOINT_PEER_SOURCE } else { 0 },
                        ..endpoint(vni, [10, 0, a, a * 60 + 1], VTEP_A, None)
                    })
                    .collect();
                endpoints.sort();
                endpoints.dedup_by_key(|e| (e.vni, e.ip));
                let sorted = |mut r: Vec<RouteEntry>| {
                    r.reverse();
                    r.sort_by_key(|r| r.prefix);
                    r.dedup_by_key(|r| r.prefix);
                    r
                };
                let old = HostTables {
                    endpoints,
                    routes: sorted(routes),
                    vnis: vec![1, 2],
                    remote_vteps: vec![VTEP_A],
                    ..Default::default()
                };
                let mut new = old.clone();
                for (add, at) in edits {
                    match add {
                        Some(r) => new.routes.push(r),
                        None if !new.routes.is_empty() => {
                            new.routes.remove(at.index(new.routes.len()));
                        }
                        None => {}
                    }
                    new.routes = sorted(std::mem::take(&mut new.routes));
                }
                // Endpoints: one gets a new MAC, or goes.
                for (at, gone) in endpoint_edits {
                    if new.endpoints.is_empty() {
                        break;
                    }
                    let k = at.index(new.endpoints.len());
                    if gone {
                        new.endpoints.remove(k);
                    } else {
                        new.endpoints[k].mac[0] ^= 0x10;
                    }
                }
                (old, new)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_route_change_resolves_as_the_whole_tables_do((old, new) in tables_and_route_change()) {
            let whole = |t: &HostTables| {
                resolve(t, |_| None, |_| None, |_| Some(MAC_A)).unwrap().tables
            };
            let known = whole(&old);
            let d = crate::vpc::delta::TablesDelta::between(&old, &new);
            let Some(change) = route_change(&known, &d, |_| None) else {
                prop_assert!(d.is_empty(), "a simple change");
                return Ok(());
            };
            let (cur, want) = change_tables(&known, &change);
            let mut got = known.clone();
            for s in diff(&cur, &want).steps {
                s.apply_to(&mut got);
            }
            prop_assert_eq!(got, whole(&new));
        }
    }
}
