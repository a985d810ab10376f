//! The intent compiler: pure code from [`Intent`] to the [`HostTables`] of each host.
//!
//! For a host, the VPCs *present* are those with a NIC on it (and, on a host with a public
//! gateway, those whose VIPs the Internet reaches through DNAT: [`Intent::present_vpcs`]).
//! It gets:
//! - a port per local NIC (`PORT_NO_SOURCE_CHECK` when the NIC's source check is off or the
//!   NIC is some route's next hop, i.e. an appliance that forwards others' packets);
//! - for every present VPC: its VNI, every NIC of it as an endpoint (local ones with their
//!   interface and `ENDPOINT_LOCAL`, remote ones with their host's VTEP), a `Local` route
//!   per subnet, and its custom routes (`nic` → the appliance's IP; `peering` → the peer's
//!   VNI, only once the peering is accepted, else the route is left out so traffic falls
//!   to less specific routes; `blackhole`);
//! - for every accepted peering a present VPC routes into: the peer's own NICs under the
//!   peer's VNI (the `Peering` next hop looks the destination up there);
//! - for every accepted peering whose other side routes into it: that side's NICs under the
//!   present VPC's VNI with `ENDPOINT_PEER_SOURCE` (so decapsulation can check the source);
//! - the VTEPs of the remote hosts it may send to;
//! - for load balancers of a present VPC (`lb/mod.rs`): each VIP as an `ENDPOINT_VIP`
//!   endpoint, `ENDPOINT_LB_BACKEND` / `PORT_LB_BACKEND` on backend NICs, and, when the
//!   VPC has listeners, a health-check port here and the health-check endpoint of every
//!   host with the VPC, each with a `Local` /32 route.
//!
//! Appliance NICs (source check off, or some route's next hop) carry `ENDPOINT_APPLIANCE`
//! wherever they appear (own VPC and as peer sources): decapsulation accepts any inner
//! source from their host under that VNI (see `ebpf/src/vpc.rs`; the agent derives the
//! `(VNI, VTEP)` pairs). `ENDPOINT_DIRECT` is not compiled: the agent derives it.
//!
//! Nothing of a VPC that is neither present nor an accepted peer of a present VPC appears,
//! and a peer's peers never do (peerings are not transitive). Output is sorted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use sluice_common::vpc::{
    Ipv4, NextHopKind, Port, ENDPOINT_APPLIANCE, ENDPOINT_LB_BACKEND, ENDPOINT_LOCAL,
    ENDPOINT_PEER_SOURCE, ENDPOINT_VIP, PORT_LB_BACKEND, PORT_NO_SOURCE_CHECK,
};

use super::tables::{
    EndpointEntry, HostTables, HostUnderlay, LocalPort, NextHopEntry, RouteEntry, RoutePrefix,
};
use crate::{
    intent::{mask, model::RouteTable, Intent, NextHop, Nic, Vpc},
    lb,
};

/// Tables of every registered host, by host name.
pub fn compile_all(intent: &Intent) -> BTreeMap<String, HostTables> {
    let index = Index::new(intent);
    intent
        .hosts()
        .map(|h| (h.name.clone(), index.compile(&h.name)))
        .collect()
}

/// Everything `host`'s maps should hold (empty, with no underlay, for an unknown host).
pub fn compile_host(intent: &Intent, host: &str) -> HostTables {
    Index::new(intent).compile(host)
}

/// What [`compile_host_cached`] keeps between compiles of one host: the intent compiled
/// last, each present VPC's part of the tables, and the appliances each route table names.
#[derive(Debug, Default)]
pub struct CompileCache {
    host: String,
    intent: Option<Arc<Intent>>,
    fragments: HashMap<String, Fragment>,
    /// By VPC ID: the table, and the NICs its routes name as next hop (sorted).
    appliances: HashMap<String, (Arc<RouteTable>, Vec<String>)>,
    /// The last compile found hosts, VPCs, subnets, NICs, peerings and names unchanged.
    same_context: bool,
}

impl CompileCache {
    /// The intent the cache was last filled from.
    pub fn intent(&self) -> Option<&Arc<Intent>> {
        self.intent.as_ref()
    }

    /// The last compile changed nothing but route tables (and what hangs on nothing a
    /// VPC reads: security groups, the blocklist, NAT).
    pub fn only_routes_changed(&self) -> bool {
        self.same_context
    }
}

/// [`compile_host`], recompiling only the VPCs whose inputs changed since the intent in
/// `cache`: with only route tables changed (tables are shared between intents until
/// edited, so `Arc::ptr_eq` tells), those VPCs, their peers, and the VPCs of NICs that
/// became or stopped being appliances. Any other change recompiles every VPC. The result
/// equals `compile_host(intent, host)` (property-tested).
pub fn compile_host_cached(
    intent: &Arc<Intent>,
    host: &str,
    cache: &mut CompileCache,
) -> HostTables {
    if cache.host != host {
        *cache = CompileCache {
            host: host.to_string(),
            ..Default::default()
        };
    }
    // Per route table: the NICs it names, recomputed only for tables that changed. The
    // NICs named by one version of a table and not the other may have changed status.
    let mut renamed: BTreeSet<String> = BTreeSet::new();
    cache.appliances.retain(|vpc, (_, names)| {
        let keep = intent.routes.contains_key(vpc);
        if !keep {
            renamed.append(&mut names.drain(..).collect());
        }
        keep
    });
    for (vpc, table) in &intent.routes {
        if let Some((t, _)) = cache.appliances.get(vpc) {
            if Arc::ptr_eq(t, table) {
                continue;
            }
        }
        let mut names: Vec<String> = table
            .values()
            .filter_map(|r| match &r.next_hop {
                NextHop::Nic { nic } => Some(nic.clone()),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        let old = cache
            .appliances
            .insert(vpc.clone(), (table.clone(), names))
            .map(|(_, n)| n)
            .unwrap_or_default();
        let new = &cache.appliances[vpc].1;
        renamed.extend(
            old.iter()
                .filter(|n| new.binary_search(n).is_err())
                .cloned(),
        );
        renamed.extend(
            new.iter()
                .filter(|n| old.binary_search(n).is_err())
                .cloned(),
        );
    }
    let appliances: HashSet<&str> = cache
        .appliances
        .values()
        .flat_map(|(_, n)| n.iter().map(String::as_str))
        .collect();

    let prev = cache.intent.take();
    // What a VPC's part reads besides route tables (the same in both, or all recompile).
    let same_context = prev.as_ref().is_some_and(|p| {
        Arc::ptr_eq(p, intent)
            || (p.hosts == intent.hosts
                && p.vpcs == intent.vpcs
                && p.subnets == intent.subnets
                && p.nics == intent.nics
                && p.peerings == intent.peerings
                && p.load_balancers == intent.load_balancers
                && p.names == intent.names)
    });
    let index = Index {
        intent,
        nics_by_vpc: nics_by_vpc(intent),
        appliances,
    };
    let present = intent.present_vpcs(host);
    let mut dirty: HashSet<&str> = HashSet::new();
    match (&prev, same_context) {
        (Some(p), true) => {
            let routes_changed = |vpc: &str| match (p.routes.get(vpc), intent.routes.get(vpc)) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (a, b) => a.is_some() != b.is_some(),
            };
            // NICs whose appliance status may have changed mark their VPC.
            let touched: HashSet<&str> = renamed
                .iter()
                .filter_map(|n| intent.nic(n))
                .map(|n| n.vpc.as_str())
                .collect();
            for &vpc in &present {
                // A VPC's part reads its own routes and NICs, and its active peers'.
                let peers = intent
                    .peerings_of(vpc)
                    .filter(|pe| pe.is_active())
                    .filter_map(|pe| pe.other_side(vpc));
                let stale = std::iter::once(vpc)
                    .chain(peers)
                    .any(|v| routes_changed(v) || touched.contains(v));
                if stale {
                    dirty.insert(vpc);
                }
            }
        }
        _ => cache.fragments.clear(),
    }
    cache.same_context = same_context;
    cache
        .fragments
        .retain(|vpc, _| present.contains(vpc.as_str()) && !dirty.contains(vpc.as_str()));
    for &vpc in &present {
        if !cache.fragments.contains_key(vpc) {
            if let Some(f) = index.fragment(host, vpc) {
                cache.fragments.insert(vpc.to_string(), f);
            }
        }
    }
    let out = index.assemble(host, present.iter().filter_map(|v| cache.fragments.get(*v)));
    drop(index);
    cache.intent = Some(intent.clone());
    // The previous intent is usually the last holder of what changed: let it go after.
    drop(prev);
    out
}

/// Longest-prefix match in `routes` (sorted by prefix, as the compiler emits them): the
/// reference the kernel's LPM trie must agree with.
pub fn lookup(routes: &[RouteEntry], vni: u32, ip: Ipv4) -> Option<&RouteEntry> {
    let addr = u32::from_be_bytes(ip);
    (0..=32u8).rev().find_map(|len| {
        let prefix = RoutePrefix {
            vni,
            ip: (addr & mask(len)).to_be_bytes(),
            len,
        };
        routes
            .binary_search_by(|r| r.prefix.cmp(&prefix))
            .ok()
            .map(|k| &routes[k])
    })
}

fn nics_by_vpc(intent: &Intent) -> BTreeMap<&str, Vec<&Nic>> {
    let mut nics_by_vpc: BTreeMap<&str, Vec<&Nic>> = BTreeMap::new();
    for n in intent.nics() {
        nics_by_vpc.entry(&n.vpc).or_default().push(n);
    }
    nics_by_vpc
}

/// One present VPC's part of a host's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fragment {
    vni: u32,
    ports: Vec<LocalPort>,
    /// Its NICs, then the peer sources, in the order compiled (a later one wins a key).
    endpoints: Vec<EndpointEntry>,
    /// Sorted, one per prefix (a custom route over a system one).
    routes: Vec<RouteEntry>,
    /// Peer VPCs whose own NICs this host must know (it routes into their peering).
    peers_reached: Vec<String>,
}

/// Per-intent lookups shared by every host's compilation.
struct Index<'a> {
    intent: &'a Intent,
    nics_by_vpc: BTreeMap<&'a str, Vec<&'a Nic>>,
    /// NICs some route names as next hop.
    appliances: HashSet<&'a str>,
}

impl<'a> Index<'a> {
    fn new(intent: &'a Intent) -> Self {
        // Routes of a VPC mostly name the same few appliances: skip repeats before hashing
        // (this loop sees every route of the cloud on every compile).
        let mut appliances = HashSet::new();
        let mut last: Option<&str> = None;
        for r in intent.routes() {
            if let NextHop::Nic { nic } = &r.next_hop {
                if last != Some(nic.as_str()) {
                    appliances.insert(nic.as_str());
                    last = Some(nic.as_str());
                }
            }
        }
        Self {
            intent,
            nics_by_vpc: nics_by_vpc(intent),
            appliances,
        }
    }
}

impl<'a> Index<'a> {
    fn nics_of(&self, vpc: &str) -> &[&'a Nic] {
        self.nics_by_vpc.get(vpc).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Validation keeps every NIC's host registered; a NIC without one (a damaged store)
    /// is left out rather than trusted.
    fn vtep_of(&self, host: &str) -> Option<Ipv4> {
        self.intent.host(host).map(|h| h.underlay_ip.octets())
    }

    /// Does `vpc` have a route into peering `peering`?
    fn routes_into(&self, vpc: &str, peering: &str) -> bool {
        self.intent
            .routes_of(vpc)
            .any(|r| matches!(&r.next_hop, NextHop::Peering { peering: p } if p == peering))
    }

    fn compile(&self, host: &str) -> HostTables {
        let present = self.intent.present_vpcs(host);
        let fragments: Vec<Fragment> = present
            .iter()
            .filter_map(|v| self.fragment(host, v))
            .collect();
        self.assemble(host, fragments.iter())
    }

    /// The endpoint of `nic` under `vni` as `host` sees it.
    fn endpoint(
        &self,
        host: &str,
        nic: &Nic,
        vni: u32,
        peer_source: bool,
    ) -> Option<EndpointEntry> {
        let vtep = self.vtep_of(&nic.host)?;
        let local = nic.host == host && !peer_source;
        let place = if peer_source {
            ENDPOINT_PEER_SOURCE
        } else if local {
            ENDPOINT_LOCAL
        } else {
            0
        };
        let appliance = if self.is_appliance(nic) {
            ENDPOINT_APPLIANCE
        } else {
            0
        };
        Some(EndpointEntry {
            vni,
            ip: nic.ip.octets(),
            mac: nic.mac.0,
            vtep,
            flags: place | appliance,
            ifname: local.then(|| nic.ifname.clone()),
        })
    }

    /// Present VPC `vpc_id`'s part of `host`'s tables (`None`: no such VPC).
    fn fragment(&self, host: &str, vpc_id: &str) -> Option<Fragment> {
        let intent = self.intent;
        let vpc = intent.vpc(vpc_id)?;
        let mut f = Fragment {
            vni: vpc.vni,
            ports: Vec::new(),
            endpoints: Vec::new(),
            routes: Vec::new(),
            peers_reached: Vec::new(),
        };
        for nic in self.nics_of(vpc_id) {
            if nic.host == host {
                f.ports.extend(self.port(vpc, nic));
            }
            f.endpoints.extend(self.endpoint(host, nic, vpc.vni, false));
        }
        let checked = self.load_balancers(host, vpc, &mut f);
        // A vector sorted once at the end: at 100,000 routes a tree insert per route was
        // most of the compile time. Later entries win (a custom route over a system one).
        let routes = &mut f.routes;
        for s in intent.subnets_of(vpc_id) {
            routes.push(RouteEntry {
                prefix: prefix(vpc.vni, s.cidr),
                next_hop: hop(NextHopKind::Local, vpc.vni, [0; 4]),
            });
        }
        // The last appliance looked up: consecutive routes usually share it.
        let mut last_nic: Option<(&str, Ipv4)> = None;
        for r in intent.routes_of(vpc_id) {
            let next = match &r.next_hop {
                NextHop::Nic { nic } => {
                    let ip = match last_nic {
                        Some((id, ip)) if id == nic.as_str() => ip,
                        _ => {
                            let Some(n) = intent.nic(nic) else { continue };
                            last_nic = Some((nic.as_str(), n.ip.octets()));
                            n.ip.octets()
                        }
                    };
                    hop(NextHopKind::Nic, vpc.vni, ip)
                }
                NextHop::Peering { peering } => {
                    let Some(p) = intent.peering(peering).filter(|p| p.is_active()) else {
                        continue;
                    };
                    let Some(peer) = p.other_side(vpc_id).and_then(|v| intent.vpc(v)) else {
                        continue;
                    };
                    f.peers_reached.push(peer.id.clone());
                    hop(NextHopKind::Peering, peer.vni, [0; 4])
                }
                NextHop::Blackhole => hop(NextHopKind::Blackhole, vpc.vni, [0; 4]),
                // Translated at this host and sent to the border router (nat.rs).
                NextHop::NatGateway { .. } => hop(NextHopKind::NatGateway, vpc.vni, [0; 4]),
            };
            routes.push(RouteEntry {
                prefix: prefix(vpc.vni, r.destination),
                next_hop: next,
            });
        }
        // Health-check addresses are outside the VPC's subnets: a /32 `Local` route each,
        // so the route fast path (ENDPOINT_DIRECT) and decapsulation deliver to them.
        for e in &checked {
            routes.push(RouteEntry {
                prefix: RoutePrefix {
                    vni: vpc.vni,
                    ip: e.ip,
                    len: 32,
                },
                next_hop: hop(NextHopKind::Local, vpc.vni, [0; 4]),
            });
        }
        f.endpoints.extend(checked);
        routes.reverse();
        routes.sort_by_key(|r| r.prefix); // stable: the last pushed of a prefix comes first
        routes.dedup_by_key(|r| r.prefix);
        for p in intent.peerings_of(vpc_id).filter(|p| p.is_active()) {
            let other = p.other_side(vpc_id).expect("peering of this VPC");
            if self.routes_into(other, &p.id) {
                for nic in self.nics_of(other) {
                    f.endpoints.extend(self.endpoint(host, nic, vpc.vni, true));
                }
            }
        }
        Some(f)
    }

    /// `host`'s tables from the fragments of its present VPCs, in VPC ID order.
    fn assemble<'f>(
        &self,
        host: &str,
        fragments: impl Iterator<Item = &'f Fragment>,
    ) -> HostTables {
        let intent = self.intent;
        let Some(h) = intent.host(host) else {
            return HostTables::default();
        };
        let fragments: Vec<&Fragment> = fragments.collect();
        let mut endpoints: BTreeMap<(u32, Ipv4), EndpointEntry> = BTreeMap::new();
        let insert = |endpoints: &mut BTreeMap<(u32, Ipv4), EndpointEntry>, e: EndpointEntry| {
            let prev = endpoints.insert((e.vni, e.ip), e.clone());
            debug_assert!(
                prev.is_none_or(|p| p == e),
                "endpoint ({}, {:?}) compiled twice",
                e.vni,
                e.ip
            );
        };
        let mut peers_reached: BTreeSet<&str> = BTreeSet::new();
        for f in &fragments {
            for e in &f.endpoints {
                insert(&mut endpoints, e.clone());
            }
            peers_reached.extend(f.peers_reached.iter().map(String::as_str));
        }
        for peer_id in peers_reached {
            let Some(peer) = intent.vpc(peer_id) else {
                continue;
            };
            for nic in self.nics_of(peer_id) {
                // A peer present here too has them already, as its own fragment made them
                // (with its load balancers' flags).
                if endpoints.contains_key(&(peer.vni, nic.ip.octets())) {
                    continue;
                }
                if let Some(e) = self.endpoint(host, nic, peer.vni, false) {
                    insert(&mut endpoints, e);
                }
            }
        }

        let own_vtep = h.underlay_ip.octets();
        let remote_vteps = endpoints
            .values()
            .filter(|e| e.flags & (ENDPOINT_LOCAL | ENDPOINT_PEER_SOURCE | ENDPOINT_VIP) == 0)
            .map(|e| e.vtep)
            .filter(|v| *v != own_vtep)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut ports: Vec<LocalPort> = fragments.iter().flat_map(|f| f.ports.clone()).collect();
        ports.sort_by(|a: &LocalPort, b| a.ifname.cmp(&b.ifname));
        HostTables {
            underlay: Some(HostUnderlay {
                ifname: h.underlay_ifname.clone(),
                vtep: h.underlay_ip.octets(),
                router_mac: h.router_mac.0,
                underlay_mtu: h.underlay_mtu,
            }),
            ports,
            endpoints: endpoints.into_values().collect(),
            routes: merge_routes(&fragments),
            vnis: fragments
                .iter()
                .map(|f| f.vni)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            remote_vteps,
            ..Default::default()
        }
    }

    /// Load balancers of `vpc` in its fragment (see `lb/mod.rs`): its VIPs as endpoints
    /// (`ENDPOINT_VIP`: no NIC, never local), its backends' NICs marked (endpoint and
    /// local port), and, when it has listeners, this host's health-check port. Returns
    /// the health-check endpoints of every host with the VPC (this one's local).
    fn load_balancers(&self, host: &str, vpc: &Vpc, f: &mut Fragment) -> Vec<EndpointEntry> {
        let intent = self.intent;
        let mut backends: BTreeSet<Ipv4> = BTreeSet::new();
        let mut listeners = false;
        for lb in intent.load_balancers().filter(|lb| lb.vpc == vpc.id) {
            f.endpoints.push(EndpointEntry {
                vni: vpc.vni,
                ip: lb.vip.octets(),
                mac: [0; 6],
                vtep: [0; 4],
                flags: ENDPOINT_VIP,
                ifname: None,
            });
            for l in &lb.listeners {
                listeners = true;
                backends.extend(l.backends.iter().map(|b| b.ip.octets()));
            }
        }
        if !backends.is_empty() {
            for e in f.endpoints.iter_mut().filter(|e| backends.contains(&e.ip)) {
                e.flags |= ENDPOINT_LB_BACKEND;
            }
            for p in f.ports.iter_mut().filter(|p| backends.contains(&p.port.ip)) {
                p.port.flags |= PORT_LB_BACKEND;
            }
        }
        if !listeners {
            return Vec::new();
        }
        let hosts: BTreeSet<&str> = self
            .nics_of(&vpc.id)
            .iter()
            .map(|n| n.host.as_str())
            .collect();
        let mut checked = Vec::new();
        for h in hosts {
            let (Some(ip), Some(vtep)) = (lb::compile::health_check_ip(intent, h), self.vtep_of(h))
            else {
                continue;
            };
            let local = h == host;
            let ifname = lb::health_check_ifname(vpc.vni);
            let mac = lb::health_check_mac(vpc.vni, ip);
            if local {
                f.ports.push(LocalPort {
                    ifname: ifname.clone(),
                    port: Port {
                        vni: vpc.vni,
                        ip,
                        mac,
                        flags: 0,
                        // Its own /32: every VPC address is off-subnet, routed, and ARP
                        // for any of them is answered.
                        subnet: ip,
                        subnet_mask: [255; 4],
                        vpc: vpc.cidr.addr().octets(),
                        vpc_mask: vpc.cidr.netmask().octets(),
                    },
                });
            }
            checked.push(EndpointEntry {
                vni: vpc.vni,
                ip,
                mac,
                vtep,
                flags: if local { ENDPOINT_LOCAL } else { 0 },
                ifname: local.then_some(ifname),
            });
        }
        checked
    }

    /// Forwards others' packets: its source check is off, or a route names it.
    fn is_appliance(&self, nic: &Nic) -> bool {
        !nic.source_check || self.appliances.contains(nic.id.as_str())
    }

    fn port(&self, vpc: &Vpc, nic: &Nic) -> Option<LocalPort> {
        let subnet = self.intent.subnet(None, &nic.subnet).map(|s| s.cidr)?;
        let appliance = self.is_appliance(nic);
        Some(LocalPort {
            ifname: nic.ifname.clone(),
            port: Port {
                vni: vpc.vni,
                ip: nic.ip.octets(),
                mac: nic.mac.0,
                flags: if appliance { PORT_NO_SOURCE_CHECK } else { 0 },
                subnet: subnet.addr().octets(),
                subnet_mask: subnet.netmask().octets(),
                vpc: vpc.cidr.addr().octets(),
                vpc_mask: vpc.cidr.netmask().octets(),
            },
        })
    }
}

/// The fragments' routes as one sorted table, one per prefix, a later fragment's route
/// winning a prefix. Each fragment's routes carry its own VNI, so in VNI order they are
/// usually already in order and only need joining.
fn merge_routes(fragments: &[&Fragment]) -> Vec<RouteEntry> {
    let mut by_vni: Vec<&Fragment> = fragments.to_vec();
    by_vni.sort_by_key(|f| f.vni);
    let mut out: Vec<RouteEntry> = Vec::with_capacity(by_vni.iter().map(|f| f.routes.len()).sum());
    let mut ordered = true;
    for f in &by_vni {
        if let (Some(last), Some(first)) = (out.last(), f.routes.first()) {
            ordered &= last.prefix < first.prefix;
        }
        out.extend_from_slice(&f.routes);
    }
    if !ordered {
        // Two VPCs sharing a VNI (a damaged store): the general way, in fragment order.
        out = fragments
            .iter()
            .flat_map(|f| f.routes.iter().copied())
            .collect();
        out.reverse();
        out.sort_by_key(|r| r.prefix);
        out.dedup_by_key(|r| r.prefix);
    }
    out
}

fn prefix(vni: u32, cidr: crate::intent::Cidr) -> RoutePrefix {
    RoutePrefix {
        vni,
        ip: cidr.addr().octets(),
        len: cidr.prefix_len(),
    }
}

fn hop(kind: NextHopKind, vni: u32, ip: Ipv4) -> NextHopEntry {
    NextHopEntry {
        kind: kind as u32,
        vni,
        ip,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use sluice_common::vpc::ENDPOINT_DIRECT;

    use super::*;
    use crate::intent::{
        validate::tests::{host, lab, nic, subnet, vpc},
        NicSpec, PeeringSpec, RouteSpec,
    };

    fn ip(s: &str) -> Ipv4 {
        s.parse::<Ipv4Addr>().unwrap().octets()
    }

    fn vni(i: &Intent, vpc: &str) -> u32 {
        i.vpc(vpc).unwrap().vni
    }

    fn endpoint<'t>(t: &'t HostTables, vni: u32, addr: &str) -> Option<&'t EndpointEntry> {
        t.endpoints
            .iter()
            .find(|e| e.vni == vni && e.ip == ip(addr))
    }

    fn route(t: &HostTables, vni: u32, cidr: &str) -> Option<NextHopEntry> {
        let c: crate::intent::Cidr = cidr.parse().unwrap();
        t.routes
            .iter()
            .find(|r| r.prefix == prefix(vni, c))
            .map(|r| r.next_hop)
    }

    /// `t` resolved as an agent would, with made-up ifindexes and MACs.
    fn resolved(t: &HostTables) -> crate::vpc::diff::ResolvedTables {
        let names: Vec<String> = t.ports.iter().map(|p| p.ifname.clone()).collect();
        let ifindex = |n: &str| {
            let port = names.iter().position(|x| x == n).map(|k| k as u32 + 10);
            port.or((n == "ul0").then_some(2))
        };
        crate::vpc::diff::resolve(t, ifindex, |_| Some([2; 6]), |_| Some([4; 6]))
            .expect("compiled tables resolve")
            .tables
    }

    #[test]
    fn unknown_host_gets_empty_tables() {
        assert_eq!(compile_host(&lab(), "h9"), HostTables::default());
    }

    #[test]
    fn host_underlay_comes_from_its_registration() {
        let i = lab();
        let u = compile_host(&i, "h2").underlay.unwrap();
        assert_eq!(u.ifname, "ul0");
        assert_eq!(u.vtep, ip("192.168.50.2"));
        assert_eq!(u.underlay_mtu, 9000);
        assert_eq!(u.router_mac, i.host("h2").unwrap().router_mac.0);
    }

    #[test]
    fn local_nic_gets_a_port_and_a_local_endpoint() {
        let i = lab();
        let t = compile_host(&i, "h1");
        let a = vni(&i, "tenant-a");
        let p = t.ports.iter().find(|p| p.ifname == "a-vm1").unwrap();
        let n = i.nic("a-vm1").unwrap();
        assert_eq!(
            p.port,
            Port {
                vni: a,
                ip: ip("10.0.1.10"),
                mac: n.mac.0,
                flags: 0,
                subnet: ip("10.0.1.0"),
                subnet_mask: ip("255.255.255.0"),
                vpc: ip("10.0.0.0"),
                vpc_mask: ip("255.255.0.0"),
            }
        );
        let e = endpoint(&t, a, "10.0.1.10").unwrap();
        assert_eq!(e.flags, ENDPOINT_LOCAL);
        assert_eq!(e.ifname.as_deref(), Some("a-vm1"));
        assert_eq!(e.vtep, ip("192.168.50.1"));
        assert_eq!(e.mac, n.mac.0);
    }

    #[test]
    fn remote_nic_of_a_present_vpc_is_an_endpoint_at_its_hosts_vtep() {
        let i = lab();
        let t = compile_host(&i, "h1");
        let e = endpoint(&t, vni(&i, "tenant-a"), "10.0.2.10").unwrap();
        assert_eq!((e.flags, e.ifname.as_ref()), (0, None));
        assert_eq!(e.vtep, ip("192.168.50.2"));
        assert_eq!(t.remote_vteps, [ip("192.168.50.2")]);
    }

    #[test]
    fn appliance_nics_have_no_source_check() {
        let i = lab();
        let t = compile_host(&i, "h2");
        let flags = |ifname: &str| {
            t.ports
                .iter()
                .find(|p| p.ifname == ifname)
                .unwrap()
                .port
                .flags
        };
        assert_eq!(flags("a-fw"), PORT_NO_SOURCE_CHECK, "a route's next hop");
        assert_eq!(flags("a-vm2"), 0);
        let (i, _) = i
            .update_nic(
                "a-vm2",
                crate::intent::NicUpdate {
                    source_check: Some(false),
                    ..Default::default()
                },
            )
            .unwrap();
        let t = compile_host(&i, "h2");
        assert_eq!(
            t.ports
                .iter()
                .find(|p| p.ifname == "a-vm2")
                .unwrap()
                .port
                .flags,
            PORT_NO_SOURCE_CHECK
        );
    }

    #[test]
    fn appliance_nics_are_marked_wherever_they_appear() {
        let i = lab();
        let (a, s) = (vni(&i, "tenant-a"), vni(&i, "shared"));
        // h1: a-fw (a route's next hop) is a remote endpoint on h2, marked.
        let t1 = compile_host(&i, "h1");
        let fw = endpoint(&t1, a, "10.0.1.20").unwrap();
        assert_eq!(
            (fw.flags, fw.vtep),
            (ENDPOINT_APPLIANCE, ip("192.168.50.2"))
        );
        // Ordinary NICs are not.
        for e in t1.endpoints.iter().filter(|e| e.ip != ip("10.0.1.20")) {
            assert_eq!(e.flags & ENDPOINT_APPLIANCE, 0, "{e:?}");
        }
        // h2: a-fw is local there, and a peer source under shared's VNI (shared routes
        // into the peering), marked both times.
        let t2 = compile_host(&i, "h2");
        assert_eq!(
            endpoint(&t2, a, "10.0.1.20").unwrap().flags,
            ENDPOINT_LOCAL | ENDPOINT_APPLIANCE
        );
        assert_eq!(
            endpoint(&t2, s, "10.0.1.20").unwrap().flags,
            ENDPOINT_PEER_SOURCE | ENDPOINT_APPLIANCE
        );
        assert_eq!(
            endpoint(&t2, s, "10.0.1.10").unwrap().flags,
            ENDPOINT_PEER_SOURCE
        );
    }

    #[test]
    fn a_nic_with_source_check_off_is_an_appliance_even_without_routes() {
        let i = lab();
        let b = vni(&i, "tenant-b");
        let off = crate::intent::NicUpdate {
            source_check: Some(false),
            ..Default::default()
        };
        let (i, _) = i.update_nic("b-vm1", off).unwrap();
        // b-vm1 is on h2; h1 (b-vm2) sees it as a remote appliance.
        let t1 = compile_host(&i, "h1");
        assert_eq!(
            endpoint(&t1, b, "10.0.1.10").unwrap().flags,
            ENDPOINT_APPLIANCE
        );
        assert_eq!(endpoint(&t1, b, "10.0.2.10").unwrap().flags, ENDPOINT_LOCAL);
    }

    /// The (VNI, VTEP) pairs the agent derives: decapsulation accepts any inner source from
    /// these hosts under these VNIs, and from no other.
    #[test]
    fn appliance_vteps_cover_the_appliances_vpc_and_the_peers_it_reaches() {
        let i = lab();
        let (a, b, s) = (vni(&i, "tenant-a"), vni(&i, "tenant-b"), vni(&i, "shared"));
        let (i, _) = i.put_host(host("h3", "192.168.50.3")).unwrap();
        let (i, _) = i.create_nic(nic("s-vm3", "shared", "svc", "h3")).unwrap();
        let (i, _) = i.create_nic(nic("a-vm3", "tenant-a", "web", "h3")).unwrap();
        let (i, _) = i.create_nic(nic("b-vm3", "tenant-b", "web", "h3")).unwrap();
        let t3 = compile_host(&i, "h3");
        let r = resolved(&t3);
        let h2 = ip("192.168.50.2");
        let keys: Vec<(u32, Ipv4)> = r.appliance_vteps.keys().map(|k| (k.vni, k.vtep)).collect();
        // a-fw on h2: for tenant-a, and for shared (tenant-a's NICs are its peer sources).
        let mut expected = vec![(a, h2), (s, h2)];
        expected.sort();
        assert_eq!(keys, expected);
        assert!(
            keys.iter().all(|(v, _)| *v != b),
            "tenant-b has no appliance"
        );
    }

    #[test]
    fn a_route_over_a_nics_address_takes_it_off_the_shortcut() {
        let i = lab();
        let a = vni(&i, "tenant-a");
        let direct = |i: &Intent, host: &str, addr: &str| {
            let r = resolved(&compile_host(i, host));
            r.endpoints[&crate::vpc::tables::endpoint_key(a, ip(addr))].flags & ENDPOINT_DIRECT != 0
        };
        assert!(direct(&i, "h1", "10.0.1.10"));
        assert!(direct(&i, "h1", "10.0.2.10"), "remote NICs too");
        // a-vm1's traffic goes through the firewall now: on every host.
        let (i, _) = i
            .create_route(RouteSpec {
                vpc: "tenant-a".into(),
                destination: "10.0.1.10/32".into(),
                next_hop: NextHop::Nic { nic: "a-fw".into() },
            })
            .unwrap();
        assert!(!direct(&i, "h1", "10.0.1.10"));
        assert!(!direct(&i, "h2", "10.0.1.10"));
        assert!(
            direct(&i, "h2", "10.0.1.20"),
            "the firewall itself still is"
        );
    }

    #[test]
    fn a_nat_gateway_route_compiles_to_a_nat_gateway_next_hop() {
        let i = lab();
        let a = vni(&i, "tenant-a");
        let (i, _) = i
            .create_eip_pool(crate::intent::EipPoolSpec {
                name: Some("pub".into()),
                cidrs: vec!["203.0.113.0/28".into()],
                description: None,
            })
            .unwrap();
        let (i, _) = i
            .create_nat_gateway(crate::intent::NatGatewaySpec {
                name: Some("gw".into()),
                vpc: "tenant-a".into(),
                subnet: "web".into(),
                ..Default::default()
            })
            .unwrap();
        let (i, _) = i
            .put_route(RouteSpec {
                vpc: "tenant-a".into(),
                destination: "0.0.0.0/0".into(),
                next_hop: NextHop::NatGateway {
                    nat_gateway: "gw".into(),
                },
            })
            .unwrap();
        for host in ["h1", "h2"] {
            let t = compile_host(&i, host);
            assert_eq!(
                route(&t, a, "0.0.0.0/0"),
                Some(NextHopEntry {
                    kind: NextHopKind::NatGateway as u32,
                    vni: a,
                    ip: [0; 4],
                }),
                "{host}"
            );
            // The subnets' own routes are untouched.
            assert_eq!(
                route(&t, a, "10.0.1.0/24").map(|h| h.kind),
                Some(NextHopKind::Local as u32)
            );
        }
    }

    #[test]
    fn each_subnet_gets_a_local_route_and_custom_routes_compile_by_type() {
        let i = lab();
        let t = compile_host(&i, "h1");
        let a = vni(&i, "tenant-a");
        let local = NextHopEntry {
            kind: NextHopKind::Local as u32,
            vni: a,
            ip: [0; 4],
        };
        assert_eq!(route(&t, a, "10.0.1.0/24"), Some(local));
        assert_eq!(route(&t, a, "10.0.2.0/24"), Some(local));
        assert_eq!(
            route(&t, a, "0.0.0.0/0"),
            Some(NextHopEntry {
                kind: NextHopKind::Nic as u32,
                vni: a,
                ip: ip("10.0.1.20")
            })
        );
        assert_eq!(
            route(&t, a, "10.9.0.0/16").map(|h| (h.kind, h.vni)),
            Some((NextHopKind::Blackhole as u32, a))
        );
        assert_eq!(
            route(&t, a, "10.200.0.0/16"),
            Some(NextHopEntry {
                kind: NextHopKind::Peering as u32,
                vni: vni(&i, "shared"),
                ip: [0; 4]
            })
        );
    }

    #[test]
    fn identical_cidrs_stay_apart_by_vni() {
        let i = lab();
        let t = compile_host(&i, "h1");
        let (a, b) = (vni(&i, "tenant-a"), vni(&i, "tenant-b"));
        assert_ne!(a, b);
        assert_eq!(t.vnis.iter().filter(|v| [a, b].contains(v)).count(), 2);
        // Same address, two tenants, two hosts.
        assert_eq!(endpoint(&t, a, "10.0.1.10").unwrap().flags, ENDPOINT_LOCAL);
        assert_eq!(
            endpoint(&t, b, "10.0.1.10").unwrap().vtep,
            ip("192.168.50.2")
        );
        assert_eq!(
            endpoint(&t, b, "10.0.1.10").unwrap().mac,
            i.nic("b-vm1").unwrap().mac.0
        );
        assert!(
            route(&t, b, "0.0.0.0/0").is_none(),
            "tenant-a's default route stays in tenant-a"
        );
    }

    #[test]
    fn a_host_gets_nothing_of_vpcs_absent_from_it() {
        let i = lab();
        let (i, _) = i.put_host(host("h3", "192.168.50.3")).unwrap();
        let (i, _) = i.create_nic(nic("b-vm3", "tenant-b", "web", "h3")).unwrap();
        let t = compile_host(&i, "h3");
        let b = vni(&i, "tenant-b");
        assert_eq!(t.vnis, [b]);
        assert!(t.endpoints.iter().all(|e| e.vni == b), "{:?}", t.endpoints);
        assert!(t.routes.iter().all(|r| r.prefix.vni == b));
        assert_eq!(t.ports.len(), 1);
        assert_eq!(t.remote_vteps, [ip("192.168.50.1"), ip("192.168.50.2")]);
    }

    #[test]
    fn accepted_peering_brings_the_peers_nics_and_peer_sources() {
        let i = lab();
        let (a, s) = (vni(&i, "tenant-a"), vni(&i, "shared"));
        // h1: tenant-a present (a-vm1), shared absent. Its route into the peering needs
        // shared's NICs under shared's VNI; shared's VNI is not decapsulated here.
        let t1 = compile_host(&i, "h1");
        let e = endpoint(&t1, s, "10.200.1.10").unwrap();
        assert_eq!((e.flags, e.vtep), (0, ip("192.168.50.2")));
        assert!(!t1.vnis.contains(&s));
        // shared routes back into the peering, so a's NICs are peer sources under a's VNI.
        let src = endpoint(&t1, a, "10.200.1.10").unwrap();
        assert_eq!(
            (src.flags, src.vtep),
            (ENDPOINT_PEER_SOURCE, ip("192.168.50.2"))
        );
        // h2: shared present; tenant-a's NICs are valid sources under shared's VNI.
        let t2 = compile_host(&i, "h2");
        let src = endpoint(&t2, s, "10.0.1.10").unwrap();
        assert_eq!(src.flags, ENDPOINT_PEER_SOURCE);
        assert_eq!((src.vtep, src.ifname.as_ref()), (ip("192.168.50.1"), None));
        assert_eq!(
            endpoint(&t2, s, "10.200.1.10").unwrap().flags,
            ENDPOINT_LOCAL
        );
    }

    #[test]
    fn pending_peering_compiles_to_nothing() {
        let mut t = crate::intent::validate::tests::lab_topology();
        t.peerings[0].accepted = false;
        let i = Intent::default().apply(t).unwrap().0;
        let s = vni(&i, "shared");
        let t1 = compile_host(&i, "h1");
        assert!(route(&t1, vni(&i, "tenant-a"), "10.200.0.0/16").is_none());
        assert!(t1.endpoints.iter().all(|e| e.vni != s));
        let t2 = compile_host(&i, "h2");
        assert!(t2
            .endpoints
            .iter()
            .all(|e| e.flags & ENDPOINT_PEER_SOURCE == 0));
    }

    #[test]
    fn peer_sources_need_the_other_side_to_route_into_the_peering() {
        let i = lab();
        let i = i.delete_route("shared", "10.0.0.0/16").unwrap();
        // shared no longer sends into the peering: h1 (tenant-a) needs no peer sources.
        let t1 = compile_host(&i, "h1");
        assert!(t1
            .endpoints
            .iter()
            .all(|e| e.flags & ENDPOINT_PEER_SOURCE == 0));
        // tenant-a still does: h2 (shared present) accepts tenant-a's sources.
        let t2 = compile_host(&i, "h2");
        assert!(endpoint(&t2, vni(&i, "shared"), "10.0.1.10").is_some());
    }

    #[test]
    fn peerings_are_not_transitive() {
        // a - b - c, every side routing into its peerings: a host with only a's NICs
        // knows b but nothing of c.
        let i = Intent::default();
        let (i, _) = i.create_host(host("h1", "192.168.50.1")).unwrap();
        let mut k = 0;
        let mut i = i;
        for (name, cidr) in [
            ("a", "10.1.0.0/16"),
            ("b", "10.2.0.0/16"),
            ("c", "10.3.0.0/16"),
        ] {
            i = i.create_vpc(vpc(name, cidr)).unwrap().0;
            let net = cidr.replace(".0.0/16", ".1.0/24");
            i = i.create_subnet(subnet(name, "s", &net)).unwrap().0;
            k += 1;
            i = i
                .create_nic(NicSpec {
                    ifname: format!("vm{k}"),
                    ..nic(&format!("{name}-vm"), name, "s", "h1")
                })
                .unwrap()
                .0;
        }
        // Only a's NIC stays on h1; b's and c's move to h2.
        let (mut j, _) = i.create_host(host("h2", "192.168.50.2")).unwrap();
        for n in ["b-vm", "c-vm"] {
            let to_h2 = crate::intent::NicUpdate {
                host: Some("h2".into()),
                ..Default::default()
            };
            j = j.update_nic(n, to_h2).unwrap().0;
        }
        for (name, a, b) in [("ab", "a", "b"), ("bc", "b", "c")] {
            j = j
                .create_peering(PeeringSpec {
                    name: Some(name.into()),
                    vpc: a.into(),
                    peer_vpc: b.into(),
                })
                .unwrap()
                .0;
            j = j.accept_peering(name).unwrap().0;
        }
        for (v, dst, p) in [
            ("a", "10.2.0.0/16", "ab"),
            ("b", "10.1.0.0/16", "ab"),
            ("b", "10.3.0.0/16", "bc"),
            ("c", "10.2.0.0/16", "bc"),
        ] {
            let next_hop = NextHop::Peering { peering: p.into() };
            j = j
                .create_route(RouteSpec {
                    vpc: v.into(),
                    destination: dst.into(),
                    next_hop,
                })
                .unwrap()
                .0;
        }
        let t = compile_host(&j, "h1");
        let (b, c) = (vni(&j, "b"), vni(&j, "c"));
        assert!(
            endpoint(&t, b, "10.2.1.4").is_some(),
            "the direct peer is reachable"
        );
        assert!(t.vnis.iter().all(|v| *v != c));
        assert!(
            t.endpoints
                .iter()
                .all(|e| e.vni != c && !e.ip.starts_with(&[10, 3])),
            "{:?}",
            t.endpoints
        );
        assert!(t.routes.iter().all(|r| r.next_hop.vni != c));
    }

    #[test]
    fn deleting_a_nic_removes_it_from_every_hosts_tables() {
        let i = lab();
        let mac = i.nic("b-vm2").unwrap().mac.0;
        let i = i.delete_nic("b-vm2").unwrap();
        for (h, t) in compile_all(&i) {
            assert!(t.ports.iter().all(|p| p.ifname != "b-vm2"), "{h}");
            assert!(t.endpoints.iter().all(|e| e.mac != mac), "{h}");
        }
        // h1 had only b-vm2 of tenant-b: tenant-b is gone from h1.
        let b = vni(&i, "tenant-b");
        let t1 = compile_host(&i, "h1");
        assert!(!t1.vnis.contains(&b) && t1.routes.iter().all(|r| r.prefix.vni != b));
    }

    #[test]
    fn output_is_sorted() {
        for t in compile_all(&lab()).values() {
            assert!(t.endpoints.windows(2).all(|w| w[0] < w[1]));
            assert!(t.routes.windows(2).all(|w| w[0].prefix < w[1].prefix));
            assert!(t.ports.windows(2).all(|w| w[0].ifname < w[1].ifname));
            assert!(t.vnis.windows(2).all(|w| w[0] < w[1]));
            assert!(t.remote_vteps.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn lookup_prefers_the_longest_prefix() {
        let i = lab();
        let t = compile_host(&i, "h1");
        let a = vni(&i, "tenant-a");
        let kind = |addr: &str| lookup(&t.routes, a, ip(addr)).map(|r| r.next_hop.kind);
        assert_eq!(kind("10.0.1.77"), Some(NextHopKind::Local as u32));
        assert_eq!(kind("10.9.3.3"), Some(NextHopKind::Blackhole as u32));
        assert_eq!(kind("8.8.8.8"), Some(NextHopKind::Nic as u32));
        assert_eq!(lookup(&t.routes, vni(&i, "tenant-b"), ip("8.8.8.8")), None);
    }

    // ---- property tests ----

    /// Brute force: every route of `vni` containing `ip`, the longest.
    fn lookup_brute(routes: &[RouteEntry], vni: u32, ip: Ipv4) -> Option<&RouteEntry> {
        let a = u32::from_be_bytes(ip);
        routes
            .iter()
            .filter(|r| {
                r.prefix.vni == vni && a & mask(r.prefix.len) == u32::from_be_bytes(r.prefix.ip)
            })
            .max_by_key(|r| r.prefix.len)
    }

    /// Two tenants with the same CIDR, subnets and NIC IPs on random hosts, random routes,
    /// and optionally an accepted peering of tenant `a` with a third VPC.
    #[derive(Clone, Debug)]
    struct TwinSpec {
        hosts: usize,
        /// Per NIC: (host of a's copy, host of b's copy, subnet 0/1, last octet).
        nics: Vec<(usize, usize, usize, u8)>,
        /// Per route: (tenant 0/1, destination octet, prefix len, blackhole or nic index).
        routes: Vec<(usize, u8, u8, Option<usize>)>,
        peering: bool,
    }

    fn twin_spec() -> impl Strategy<Value = TwinSpec> {
        (
            1usize..4,
            prop::collection::btree_map(4u8..250, (0usize..3, 0usize..3, 0usize..2), 1..8),
        )
            .prop_flat_map(|(hosts, nics)| {
                let nics: Vec<_> = nics
                    .into_iter()
                    .map(|(last, (ha, hb, s))| (ha % hosts, hb % hosts, s, last))
                    .collect();
                let n = nics.len();
                let routes = prop::collection::vec(
                    (0usize..2, 0u8..=255, 0u8..=32, prop::option::of(0..n)),
                    0..6,
                );
                (Just(hosts), Just(nics), routes, any::<bool>())
            })
            .prop_map(|(hosts, nics, routes, peering)| TwinSpec {
                hosts,
                nics,
                routes,
                peering,
            })
    }

    fn build(spec: &TwinSpec) -> Intent {
        let mut i = Intent::default();
        for h in 0..spec.hosts {
            i = i
                .create_host(host(&format!("h{h}"), &format!("192.168.50.{}", h + 1)))
                .unwrap()
                .0;
        }
        for t in ["a", "b"] {
            i = i.create_vpc(vpc(t, "10.0.0.0/16")).unwrap().0;
            i = i.create_subnet(subnet(t, "s0", "10.0.1.0/24")).unwrap().0;
            i = i.create_subnet(subnet(t, "s1", "10.0.2.0/24")).unwrap().0;
        }
        for (k, (ha, hb, s, last)) in spec.nics.iter().enumerate() {
            for (t, h) in [("a", ha), ("b", hb)] {
                let nic_spec = NicSpec {
                    ip: Some(format!("10.0.{}.{last}", s + 1)),
                    ifname: format!("{t}{k}"),
                    ..nic(&format!("{t}-{k}"), t, &format!("s{s}"), &format!("h{h}"))
                };
                i = i.create_nic(nic_spec).unwrap().0;
            }
        }
        if spec.peering {
            i = i.create_vpc(vpc("c", "10.7.0.0/16")).unwrap().0;
            i = i.create_subnet(subnet("c", "s0", "10.7.1.0/24")).unwrap().0;
            i = i
                .create_nic(NicSpec {
                    ifname: "c0".into(),
                    ..nic("c-0", "c", "s0", "h0")
                })
                .unwrap()
                .0;
            let p = PeeringSpec {
                name: Some("ac".into()),
                vpc: "a".into(),
                peer_vpc: "c".into(),
            };
            i = i.create_peering(p).unwrap().0;
            i = i.accept_peering("ac").unwrap().0;
            let hop = NextHop::Peering {
                peering: "ac".into(),
            };
            i = i
                .put_route(RouteSpec {
                    vpc: "a".into(),
                    destination: "10.7.0.0/16".into(),
                    next_hop: hop.clone(),
                })
                .unwrap()
                .0;
            i = i
                .put_route(RouteSpec {
                    vpc: "c".into(),
                    destination: "10.0.0.0/16".into(),
                    next_hop: hop,
                })
                .unwrap()
                .0;
        }
        for (t, octet, len, target) in &spec.routes {
            let tenant = ["a", "b"][*t];
            let addr = u32::from(Ipv4Addr::new(10, *octet, 3, 0)) & mask(*len);
            let destination = format!("{}/{len}", Ipv4Addr::from(addr));
            let next_hop = match target {
                Some(k) => NextHop::Nic {
                    nic: format!("{tenant}-{k}"),
                },
                None => NextHop::Blackhole,
            };
            // Routes clashing with a subnet or a peering route are refused; skip them.
            if let Ok((next, _)) = i.put_route(RouteSpec {
                vpc: tenant.into(),
                destination,
                next_hop,
            }) {
                i = next;
            }
        }
        i
    }

    /// Which VPC each (vni, ip) legitimately belongs to, from the intent.
    fn owner_vni_ok(i: &Intent, e: &EndpointEntry) -> bool {
        let nic = i
            .nics()
            .find(|n| n.mac.0 == e.mac)
            .expect("endpoint of a known NIC");
        let own = i.vpc(&nic.vpc).unwrap();
        if e.flags & ENDPOINT_PEER_SOURCE != 0 {
            // Valid only under the VNI of an accepted peer of the NIC's VPC.
            i.peerings_of(&own.id).any(|p| {
                p.is_active() && i.vpc(p.other_side(&own.id).unwrap()).unwrap().vni == e.vni
            })
        } else {
            own.vni == e.vni && nic.ip.octets() == e.ip
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tenants_with_identical_addresses_never_share_an_entry(spec in twin_spec()) {
            let i = build(&spec);
            let (a, b) = (vni(&i, "a"), vni(&i, "b"));
            for (h, t) in compile_all(&i) {
                let mut keys = std::collections::HashSet::new();
                for e in &t.endpoints {
                    prop_assert!(keys.insert((e.vni, e.ip)), "{h}: duplicate endpoint {e:?}");
                    prop_assert!(owner_vni_ok(&i, e), "{h}: {e:?} under the wrong VNI");
                }
                for p in &t.ports {
                    let nic = i.nics().find(|n| n.host == h && n.ifname == p.ifname).unwrap();
                    prop_assert_eq!(p.port.vni, i.vpc(&nic.vpc).unwrap().vni);
                }
                for r in &t.routes {
                    let kind = NextHopKind::from_u32(r.next_hop.kind).unwrap();
                    match kind {
                        NextHopKind::Peering => prop_assert_ne!(r.next_hop.vni, r.prefix.vni),
                        _ => prop_assert_eq!(r.next_hop.vni, r.prefix.vni),
                    }
                    if kind == NextHopKind::Nic {
                        // The appliance is an endpoint of the route's own VPC.
                        prop_assert!(endpoint(&t, r.prefix.vni, &Ipv4Addr::from(r.next_hop.ip).to_string()).is_some());
                    }
                    prop_assert!(r.prefix.vni != a || r.next_hop.vni != b);
                    prop_assert!(r.prefix.vni != b || r.next_hop.vni != a);
                }
            }
        }

        #[test]
        fn hosts_only_see_present_vpcs_and_their_accepted_peers(spec in twin_spec()) {
            let i = build(&spec);
            for (h, t) in compile_all(&i) {
                let present: BTreeSet<&str> =
                    i.nics().filter(|n| n.host == h).map(|n| n.vpc.as_str()).collect();
                let mut allowed: BTreeSet<u32> =
                    present.iter().map(|v| i.vpc(v).unwrap().vni).collect();
                prop_assert_eq!(t.vnis.iter().copied().collect::<BTreeSet<_>>(), allowed.clone());
                for v in &present {
                    for p in i.peerings_of(v).filter(|p| p.is_active()) {
                        allowed.insert(i.vpc(p.other_side(v).unwrap()).unwrap().vni);
                    }
                }
                for e in &t.endpoints {
                    prop_assert!(allowed.contains(&e.vni), "{h}: {e:?}");
                }
                for r in &t.routes {
                    prop_assert!(t.vnis.contains(&r.prefix.vni), "{h}: {r:?}");
                    prop_assert!(allowed.contains(&r.next_hop.vni), "{h}: {r:?}");
                }
            }
        }

        #[test]
        fn lookup_agrees_with_a_brute_force_scan(
            routes in prop::collection::btree_map((1u32..4, any::<u32>(), 0u8..=32), any::<u32>(), 0..40),
            probes in prop::collection::vec((1u32..4, any::<u32>()), 1..40),
        ) {
            let table: BTreeMap<RoutePrefix, NextHopEntry> = routes
                .into_iter()
                .map(|((vni, ip, len), tag)| {
                    let p = RoutePrefix { vni, ip: (ip & mask(len)).to_be_bytes(), len };
                    (p, NextHopEntry { kind: NextHopKind::Blackhole as u32, vni, ip: tag.to_be_bytes() })
                })
                .collect();
            let routes: Vec<RouteEntry> =
                table.into_iter().map(|(prefix, next_hop)| RouteEntry { prefix, next_hop }).collect();
            for (vni, ip) in probes {
                // Probe near existing routes too, or random addresses rarely match.
                let near = routes.get(ip as usize % routes.len().max(1)).map(|r| u32::from_be_bytes(r.prefix.ip) | (ip & 0xff));
                for addr in [ip, near.unwrap_or(ip)] {
                    let addr = addr.to_be_bytes();
                    prop_assert_eq!(lookup(&routes, vni, addr), lookup_brute(&routes, vni, addr));
                }
            }
        }

        /// Routes more specific than a subnet's, over NIC addresses, to an appliance or a
        /// blackhole: after resolving, an endpoint is direct exactly when the route lookup
        /// for its own address gives its subnet's Local route, so the datapath's shortcut
        /// never decides differently from the lookup.
        #[test]
        fn direct_endpoints_are_exactly_those_the_lookup_sends_to_local(
            extra in prop::collection::vec((0usize..6, 25u8..=32, any::<bool>()), 0..8),
        ) {
            let mut i = lab();
            let nics: Vec<(String, Ipv4Addr)> =
                i.nics().map(|n| (n.vpc.clone(), n.ip)).collect();
            for (k, len, to_fw) in extra {
                let (vpc, addr) = &nics[k % nics.len()];
                let net = Ipv4Addr::from(u32::from(*addr) & mask(len));
                let next_hop = if to_fw && vpc == "tenant-a" {
                    NextHop::Nic { nic: "a-fw".into() }
                } else {
                    NextHop::Blackhole
                };
                let spec = RouteSpec {
                    vpc: vpc.clone(),
                    destination: format!("{net}/{len}"),
                    next_hop,
                };
                if let Ok((next, _)) = i.put_route(spec) {
                    i = next;
                }
            }
            for (h, t) in compile_all(&i) {
                let r = resolved(&t);
                for (key, e) in &r.endpoints {
                    let local = lookup(&t.routes, key.vni, key.ip)
                        .is_some_and(|r| r.next_hop.kind == NextHopKind::Local as u32);
                    let expected = local && e.flags & ENDPOINT_PEER_SOURCE == 0;
                    prop_assert_eq!(
                        e.flags & ENDPOINT_DIRECT != 0,
                        expected,
                        "{}: {:?} {:?}",
                        h,
                        key,
                        e
                    );
                }
            }
        }

        #[test]
        fn compile_is_deterministic(spec in twin_spec()) {
            let i = build(&spec);
            let first = compile_all(&i);
            prop_assert_eq!(&first, &compile_all(&i));
            // The same intent reloaded from its records compiles identically too.
            let reloaded = Intent::from_records(i.to_records());
            prop_assert_eq!(&first, &compile_all(&reloaded));
            for (h, t) in &first {
                prop_assert_eq!(t, &compile_host(&i, h));
            }
        }

        #[test]
        fn incremental_compile_equals_a_full_one(
            spec in twin_spec(),
            changes in prop::collection::vec(
                (0usize..6, 0usize..3, 0u8..=255, 0u8..=32, prop::option::of(0usize..8)),
                1..10,
            ),
        ) {
            let mut i = build(&spec);
            let hosts: Vec<String> = (0..spec.hosts).map(|h| format!("h{h}")).collect();
            let mut caches: Vec<CompileCache> = hosts.iter().map(|_| CompileCache::default()).collect();
            let check = |i: &Intent, caches: &mut Vec<CompileCache>| -> Result<(), TestCaseError> {
                let shared = Arc::new(i.clone());
                for (h, cache) in hosts.iter().zip(caches.iter_mut()) {
                    prop_assert_eq!(compile_host_cached(&shared, h, cache), compile_host(i, h));
                }
                Ok(())
            };
            check(&i, &mut caches)?;
            for (kind, t, octet, len, target) in changes {
                let tenant = ["a", "b", "c"][t];
                let addr = u32::from(Ipv4Addr::new(10, octet, 3, 0)) & mask(len);
                let destination = format!("{}/{len}", Ipv4Addr::from(addr));
                let next = match kind {
                    // Routes: to a NIC (it becomes an appliance), a blackhole, into the
                    // peering, or gone.
                    0 | 1 => i.put_route(RouteSpec {
                        vpc: tenant.into(),
                        destination,
                        next_hop: match target {
                            Some(k) if kind == 0 => NextHop::Nic { nic: format!("{tenant}-{k}") },
                            _ => NextHop::Blackhole,
                        },
                    }).map(|r| r.0),
                    2 => i.put_route(RouteSpec {
                        vpc: tenant.into(),
                        destination: "10.7.0.0/16".into(),
                        next_hop: NextHop::Peering { peering: "ac".into() },
                    }).map(|r| r.0),
                    3 => i.delete_route(tenant, &destination)
                        .or_else(|_| i.delete_route(tenant, "10.7.0.0/16")),
                    // Everything else changes too: a NIC comes or goes.
                    4 => i.create_nic(NicSpec {
                        ip: Some(format!("10.0.1.{}", 250 - octet % 8)),
                        ifname: format!("x{octet}"),
                        ..nic(&format!("x-{octet}"), tenant, "s0", &format!("h{}", t % spec.hosts))
                    }).map(|r| r.0),
                    _ => i.delete_nic(&format!("{tenant}-{}", target.unwrap_or(0))),
                };
                if let Ok(next) = next {
                    i = next;
                }
                check(&i, &mut caches)?;
            }
        }
    }

    mod load_balancers {
        use super::*;
        use crate::lb::{compile::tests::cloud, health_check_ifname};
        use sluice_common::vpc::{ENDPOINT_LB_BACKEND, ENDPOINT_VIP, PORT_LB_BACKEND};

        #[test]
        fn vips_are_endpoints_of_every_host_with_the_vpc_and_never_local() {
            let i = cloud();
            let t = vni(&i, "t");
            for h in ["h1", "h2"] {
                let tables = compile_host(&i, h);
                let vip = endpoint(&tables, t, "10.0.1.100").unwrap();
                assert_eq!(vip.flags, ENDPOINT_VIP, "{h}");
                assert_eq!((vip.vtep, vip.ifname.as_ref()), ([0; 4], None));
                assert!(!tables.remote_vteps.contains(&[0; 4]), "{h}");
                // Its Local route makes it direct, like any address of the subnet.
                let r = resolved(&tables);
                let key = crate::vpc::tables::endpoint_key(t, ip("10.0.1.100"));
                assert_eq!(r.endpoints[&key].flags, ENDPOINT_VIP | ENDPOINT_DIRECT);
            }
            assert!(compile_host(&i, "h3")
                .endpoints
                .iter()
                .all(|e| e.flags & ENDPOINT_VIP == 0));
        }

        #[test]
        fn backend_nics_are_marked_where_they_appear() {
            let i = cloud();
            let t = vni(&i, "t");
            let t1 = compile_host(&i, "h1");
            assert_eq!(
                endpoint(&t1, t, "10.0.1.11").unwrap().flags,
                ENDPOINT_LOCAL | ENDPOINT_LB_BACKEND
            );
            assert_eq!(
                endpoint(&t1, t, "10.0.1.12").unwrap().flags,
                ENDPOINT_LB_BACKEND
            );
            assert_eq!(endpoint(&t1, t, "10.0.1.10").unwrap().flags, ENDPOINT_LOCAL);
            let flags = |ifname: &str| {
                t1.ports
                    .iter()
                    .find(|p| p.ifname == ifname)
                    .unwrap()
                    .port
                    .flags
            };
            assert_eq!(flags("vm-b1"), PORT_LB_BACKEND);
            assert_eq!(flags("vm-c1"), 0);
            // The same address in another VPC is not a backend.
            let u = vni(&i, "u");
            let t3 = compile_host(&i, "h3");
            assert_eq!(endpoint(&t3, u, "10.0.1.10").unwrap().flags, ENDPOINT_LOCAL);
        }

        #[test]
        fn every_host_with_the_vpc_has_a_check_port_the_others_reach_directly() {
            let i = cloud();
            let t = vni(&i, "t");
            let t1 = compile_host(&i, "h1");
            let ifname = health_check_ifname(t);
            let port = t1.ports.iter().find(|p| p.ifname == ifname).unwrap().port;
            assert_eq!((port.vni, port.ip), (t, ip("100.64.0.1")));
            assert_eq!(
                (port.subnet, port.subnet_mask),
                (ip("100.64.0.1"), [255; 4])
            );
            assert_eq!(
                (port.vpc, port.vpc_mask),
                (ip("10.0.0.0"), ip("255.255.0.0"))
            );
            assert_eq!(port.flags, 0);
            let own = endpoint(&t1, t, "100.64.0.1").unwrap();
            assert_eq!(
                (own.flags, own.ifname.as_deref()),
                (ENDPOINT_LOCAL, Some(&*ifname))
            );
            assert_eq!(own.mac, port.mac);
            let other = endpoint(&t1, t, "100.64.0.2").unwrap();
            assert_eq!((other.flags, other.vtep), (0, ip("172.31.0.2")));
            // Both direct: the fast path sends to them and decapsulation delivers.
            let r = resolved(&t1);
            for a in ["100.64.0.1", "100.64.0.2"] {
                let key = crate::vpc::tables::endpoint_key(t, ip(a));
                assert_ne!(r.endpoints[&key].flags & ENDPOINT_DIRECT, 0, "{a}");
                assert_eq!(
                    lookup(&t1.routes, t, ip(a)).unwrap().next_hop.kind,
                    NextHopKind::Local as u32
                );
            }
            // h3 has no VPC with listeners: nothing of it.
            let t3 = compile_host(&i, "h3");
            assert!(t3.ports.iter().all(|p| !p.ifname.starts_with("slhc")));
        }

        /// h2 has `shared` (s-vm1) and `tenant-a`, which routes into their peering: the
        /// peer's NICs are reached under its VNI, and s-vm1, a backend, keeps its flag.
        #[test]
        fn a_backend_of_a_present_peer_keeps_its_flag() {
            let mut i = lab();
            let mut lb = cloud().load_balancers.remove("lb-1").unwrap();
            let shared = i.vpc("shared").unwrap().clone();
            lb.vpc = shared.id.clone();
            lb.subnet = i.subnets_of(&shared.id).next().unwrap().id.clone();
            lb.vip = "10.200.1.100".parse().unwrap();
            lb.listeners.truncate(1);
            lb.listeners[0].backends = vec![crate::lb::compile::tests::backend(
                "lbb-1",
                0,
                "10.200.1.10",
                None,
            )];
            i.load_balancers.insert(lb.id.clone(), lb);
            let t2 = compile_host(&i, "h2");
            assert_eq!(
                endpoint(&t2, shared.vni, "10.200.1.10").unwrap().flags,
                ENDPOINT_LOCAL | ENDPOINT_LB_BACKEND
            );
            assert_eq!(
                endpoint(&t2, shared.vni, "10.200.1.100").unwrap().flags,
                ENDPOINT_VIP
            );
        }

        #[test]
        fn a_load_balancer_change_recompiles_cached_vpcs() {
            let with = cloud();
            let mut without = with.clone();
            without.load_balancers.clear();
            let mut cache = CompileCache::default();
            let (with, without) = (Arc::new(with), Arc::new(without));
            for i in [&without, &with, &without] {
                assert_eq!(
                    compile_host_cached(i, "h1", &mut cache),
                    compile_host(i, "h1")
                );
            }
        }
    }
}
