//! The VPC overlay paths of `micro`: one measured VPC (its VM on `lo`), the frames it sends
//! and receives, and the tables around it at two scales: 10 routes (that VPC alone) and
//! 100,000 routes (1,000 VPCs × 100 prefixes, the measured one among them).
//!
//! The frames are chosen so a measured path leaves the frame as it found it, and so every
//! repetition of a repeated test run takes the same path: the VM's MAC is the router MAC and
//! so is every measured destination's, so the MAC rewrite (dst = endpoint MAC, src = router
//! MAC) writes the bytes already there and anti-spoofing still passes next time. Paths that
//! cannot be made so (TTL decrement, ARP reply) use a fresh frame per test run instead.
//!
//! Endpoints carry what the agent would derive for them: `ENDPOINT_DIRECT` where their own
//! address resolves to a `Local` route (computed by the agent's own code), and the
//! underlay MAC of their host. The measured destinations are all direct, so `vpc_local`
//! and `vpc_encap` measure the shortcut that skips the route lookup; the drop paths (no
//! route, blackhole) still measure the lookup.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie};
use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};
use sluice_common::{
    maps,
    programs::{XDP_BENCH_UNDERLAY, XDP_BENCH_VM, XDP_UNDERLAY, XDP_VM},
    proto::VXLAN_PORT,
    stats::Reason,
    vpc::*,
};
use sluice_dataplane::{
    loader::Dataplane,
    vpc::{diff::mark_direct, tables::RoutePrefix},
};

use crate::micro::{Method, PathSpec, XDP_DROP, XDP_REDIRECT, XDP_TX};

/// `lo`: a real device for `xdp_md.ingress_ifindex` (the VM port), the local endpoints and
/// the underlay. Test runs transmit nothing, so nothing is ever sent there.
pub const LO: u32 = 1;

/// The measured VPC's VNI; at the large scale VNIs 1..=1000 exist and this is one of them.
pub const VNI: u32 = 500;
pub const THIS_VTEP: Ipv4 = [192, 168, 0, 1];
/// The host of the measured VPC's remote NICs.
pub const PEER_VTEP: Ipv4 = [192, 168, 0, 2];
/// Remote hosts of the filler endpoints (192.168.0.2 ..= 192.168.0.9), all resolved.
pub const REMOTE_HOSTS: u8 = 8;

pub const ROUTER_MAC: Mac = [0x02, 0xee, 0, 0, 0, 1];
pub const UNDERLAY_MAC: Mac = [0x02, 0xdd, 0, 0, 0, 1];
pub const PEER_VTEP_MAC: Mac = [0x02, 0xdd, 0, 0, 0, 2];

/// The VM on `lo`, in subnet 10.0.1.0/24 of VPC 10.0.0.0/16.
pub const VM: Ipv4 = [10, 0, 1, 10];
/// Same subnet, this host.
pub const LOCAL_PEER: Ipv4 = [10, 0, 1, 11];
/// Same subnet, the peer host.
pub const REMOTE_PEER: Ipv4 = [10, 0, 1, 20];
/// Another subnet (10.0.2.0/24), this host.
pub const ROUTED_LOCAL: Ipv4 = [10, 0, 2, 11];
/// Another subnet (10.0.3.0/24), the peer host.
pub const ROUTED_REMOTE: Ipv4 = [10, 0, 3, 20];
pub const GATEWAY: Ipv4 = [10, 0, 1, 1];
/// Inside the blackholed 10.9.0.0/16.
pub const BLACKHOLED: Ipv4 = [10, 9, 1, 1];
/// Covered by no route of the measured VPC at either scale.
pub const NO_ROUTE: Ipv4 = [10, 200, 0, 1];
/// An address the VM does not own.
pub const SPOOFED: Ipv4 = [10, 0, 1, 99];
/// In the VM's subnet, no NIC has it.
pub const NO_NIC: Ipv4 = [10, 0, 1, 250];
/// Same subnet, on a host whose underlay MAC this host has not resolved.
pub const UNRESOLVED_PEER: Ipv4 = [10, 0, 1, 21];
pub const UNRESOLVED_VTEP: Ipv4 = [192, 168, 0, 99];
/// Behind the VPC's NAT gateway route, which this host has no NAT configuration for.
pub const BEHIND_NAT: Ipv4 = [198, 51, 100, 1];

/// Every destination a measured path looks up: no generated route may cover one, or it
/// would change which route the 100k-route figure measures.
pub const MEASURED_DESTINATIONS: [Ipv4; 10] = [
    VM,
    LOCAL_PEER,
    REMOTE_PEER,
    ROUTED_LOCAL,
    ROUTED_REMOTE,
    BLACKHOLED,
    NO_ROUTE,
    NO_NIC,
    UNRESOLVED_PEER,
    BEHIND_NAT,
];

/// Repetitions per test run for the routed (TTL-decrementing) paths: the frame starts at
/// TTL 255 and ends at 55, so every repetition is routed the same way.
pub const ROUTED_REPEAT: u32 = 200;
const ROUTED_TTL: u8 = 255;
const _: () = assert!(ROUTED_REPEAT < ROUTED_TTL as u32 - 1);

/// Routes per VPC at the large scale.
pub const ROUTES_PER_VPC: usize = 100;
/// Endpoints (NICs) per VPC at either scale.
pub const ENDPOINTS_PER_VPC: usize = 10;
const MIN_FRAME: usize = 60;

/// The size of the route tables a VPC path runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// One VPC with 10 prefixes.
    Routes10,
    /// 1,000 VPCs × 100 prefixes, /16 to /32.
    Routes100k,
}

impl Scale {
    pub const ALL: [Scale; 2] = [Scale::Routes10, Scale::Routes100k];

    /// Suffix of the path names (`vpc_encap@10`).
    pub fn suffix(self) -> &'static str {
        match self {
            Scale::Routes10 => "10",
            Scale::Routes100k => "100k",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scale::Routes10 => "10 routes",
            Scale::Routes100k => "100k routes",
        }
    }

    pub fn vpcs(self) -> u32 {
        match self {
            Scale::Routes10 => 1,
            Scale::Routes100k => 1000,
        }
    }
}

/// One route: `prefix/len` in VPC `vni` (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub vni: u32,
    pub prefix: Ipv4,
    pub len: u8,
    pub hop: NextHop,
}

impl Route {
    pub fn covers(&self, vni: u32, ip: Ipv4) -> bool {
        self.vni == vni && covers(self.prefix, self.len, ip)
    }
}

/// Everything one scale puts into the maps.
pub struct Tables {
    pub scale: Scale,
    pub host: HostConfig,
    pub ports: Vec<(PortKey, Port)>,
    pub endpoints: Vec<(EndpointKey, Endpoint)>,
    pub routes: Vec<Route>,
    pub vnis: Vec<u32>,
    pub neighbors: Vec<(Ipv4, UnderlayNeighbor)>,
}

fn covers(prefix: Ipv4, len: u8, ip: Ipv4) -> bool {
    let mask = mask(len);
    u32::from_be_bytes(ip) & mask == u32::from_be_bytes(prefix) & mask
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn hop(kind: NextHopKind, vni: u32, ip: Ipv4) -> NextHop {
    NextHop {
        kind: kind as u32,
        vni,
        ip,
    }
}

/// The measured VPC's own 10 routes, lengths /16 to /32 (the same at both scales).
pub fn measured_vpc_routes() -> Vec<Route> {
    let local = hop(NextHopKind::Local, VNI, [0; 4]);
    let r = |prefix, len, hop| Route {
        vni: VNI,
        prefix,
        len,
        hop,
    };
    vec![
        r([10, 0, 1, 0], 24, local),
        r([10, 0, 2, 0], 24, local),
        r([10, 0, 3, 0], 24, local),
        r([10, 0, 4, 0], 22, local),
        r([10, 0, 8, 0], 21, local),
        r(
            [198, 51, 100, 0],
            24,
            hop(NextHopKind::NatGateway, VNI, [0; 4]),
        ),
        r([10, 0, 1, 128], 25, local),
        r([10, 0, 3, 200], 32, local),
        r([10, 9, 0, 0], 16, hop(NextHopKind::Blackhole, VNI, [0; 4])),
        r([172, 16, 0, 0], 16, hop(NextHopKind::Nic, VNI, LOCAL_PEER)),
    ]
}

/// A small deterministic generator (splitmix64), so every run builds the same tables.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `count` more distinct routes for `vni`, none equal to one of `existing` and none covering
/// an address of `avoid`. Three in four fall inside the VPC's 10.0.0.0/16 (next to the
/// measured destinations, so the trie is deep where the lookups go), the rest anywhere in
/// 10.0.0.0/8; lengths are uniform over /16..=/32.
fn generated_routes(vni: u32, existing: &[Route], count: usize, avoid: &[Ipv4]) -> Vec<Route> {
    let mut rng = SplitMix(u64::from(vni) ^ 0x5eed_0f5e_1ce0_0000);
    let mut seen: BTreeSet<([u8; 4], u8)> = existing
        .iter()
        .filter(|r| r.vni == vni)
        .map(|r| (r.prefix, r.len))
        .collect();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let x = rng.next();
        let len = 16 + (x % 17) as u8;
        let low = (x >> 8) as u32;
        let addr = if (x >> 40).is_multiple_of(4) {
            0x0a00_0000 | (low & 0x00ff_ffff)
        } else {
            0x0a00_0000 | (low & 0x0000_ffff)
        };
        let prefix = (addr & mask(len)).to_be_bytes();
        if avoid.iter().any(|ip| covers(prefix, len, *ip)) || !seen.insert((prefix, len)) {
            continue;
        }
        let kind = match out.len() % 10 {
            8 => hop(NextHopKind::Nic, vni, [10, 0, 1, 11]),
            9 => hop(NextHopKind::Blackhole, vni, [0; 4]),
            _ => hop(NextHopKind::Local, vni, [0; 4]),
        };
        out.push(Route {
            vni,
            prefix,
            len,
            hop: kind,
        });
    }
    out
}

/// `vtep_mac` and `ENDPOINT_DIRECT` are filled in by [`tables`], as the agent would.
fn endpoint(mac: Mac, vtep: Ipv4, local: bool) -> Endpoint {
    Endpoint {
        mac,
        vtep_mac: [0; 6],
        vtep,
        ifindex: if local { LO } else { 0 },
        flags: if local { ENDPOINT_LOCAL } else { 0 },
    }
}

fn remote_host(i: usize) -> Ipv4 {
    [192, 168, 0, 2 + (i % REMOTE_HOSTS as usize) as u8]
}

/// The measured VPC's endpoints: the six a path uses (MAC = router MAC, see the module
/// comment) and four more remote ones, so it has as many as every other VPC.
fn measured_vpc_endpoints() -> Vec<(EndpointKey, Endpoint)> {
    let key = |ip| EndpointKey { vni: VNI, ip };
    let mut eps = vec![
        (key(VM), endpoint(ROUTER_MAC, THIS_VTEP, true)),
        (key(LOCAL_PEER), endpoint(ROUTER_MAC, THIS_VTEP, true)),
        (key(REMOTE_PEER), endpoint(ROUTER_MAC, PEER_VTEP, false)),
        (key(ROUTED_LOCAL), endpoint(ROUTER_MAC, THIS_VTEP, true)),
        (key(ROUTED_REMOTE), endpoint(ROUTER_MAC, PEER_VTEP, false)),
        (
            key(UNRESOLVED_PEER),
            endpoint(ROUTER_MAC, UNRESOLVED_VTEP, false),
        ),
    ];
    for i in eps.len()..ENDPOINTS_PER_VPC {
        let mac = [0x02, 0xa0, 0, 0, 0, i as u8];
        eps.push((
            key([10, 0, 1, 30 + i as u8]),
            endpoint(mac, remote_host(i), false),
        ));
    }
    eps
}

/// Another VPC's endpoints: 10.0.1.10.. (tenants reuse addresses), half on this host.
fn filler_endpoints(vni: u32) -> Vec<(EndpointKey, Endpoint)> {
    (0..ENDPOINTS_PER_VPC)
        .map(|i| {
            let v = vni.to_be_bytes();
            let mac = [0x02, 0xb0, v[2], v[3], 0, i as u8];
            let ip = [10, 0, 1, 10 + i as u8];
            let local = i % 2 == 0;
            let vtep = if local { THIS_VTEP } else { remote_host(i) };
            (EndpointKey { vni, ip }, endpoint(mac, vtep, local))
        })
        .collect()
}

/// The tables of `scale`, built in memory (pure; [`install`] puts them into the maps).
pub fn tables(scale: Scale) -> Tables {
    let host = HostConfig {
        configured: 1,
        underlay_ifindex: LO,
        vtep: THIS_VTEP,
        underlay_mac: UNDERLAY_MAC,
        router_mac: ROUTER_MAC,
        underlay_mtu: 1500,
    };
    let port = Port {
        vni: VNI,
        ip: VM,
        // The router MAC, so the rewritten frame is again a valid frame from this VM.
        mac: ROUTER_MAC,
        flags: 0,
        subnet: [10, 0, 1, 0],
        subnet_mask: [255, 255, 255, 0],
        vpc: [10, 0, 0, 0],
        vpc_mask: [255, 255, 0, 0],
    };
    let mut routes = measured_vpc_routes();
    let mut endpoints = measured_vpc_endpoints();
    let mut vnis = vec![VNI];
    if scale == Scale::Routes100k {
        let own = generated_routes(
            VNI,
            &routes,
            ROUTES_PER_VPC - routes.len(),
            &MEASURED_DESTINATIONS,
        );
        routes.extend(own);
        for vni in (1..=scale.vpcs()).filter(|v| *v != VNI) {
            routes.extend(generated_routes(vni, &[], ROUTES_PER_VPC, &[]));
            endpoints.extend(filler_endpoints(vni));
            vnis.push(vni);
        }
    }
    let neighbors: Vec<(Ipv4, UnderlayNeighbor)> = (0..REMOTE_HOSTS as usize)
        .map(|i| {
            let vtep = remote_host(i);
            let mac = if vtep == PEER_VTEP {
                PEER_VTEP_MAC
            } else {
                [0x02, 0xdd, 0, 0, 0, vtep[3]]
            };
            (vtep, UnderlayNeighbor { mac, _pad: [0; 2] })
        })
        .collect();
    let endpoints = as_the_agent_resolves(endpoints, &routes, &neighbors);
    Tables {
        scale,
        host,
        ports: vec![(LO, port)],
        endpoints,
        routes,
        vnis,
        neighbors,
    }
}

/// The endpoints with what the agent derives: the underlay MAC of remote ones' host, and
/// `ENDPOINT_DIRECT` by the agent's own rule.
fn as_the_agent_resolves(
    endpoints: Vec<(EndpointKey, Endpoint)>,
    routes: &[Route],
    neighbors: &[(Ipv4, UnderlayNeighbor)],
) -> Vec<(EndpointKey, Endpoint)> {
    let trie: BTreeMap<RoutePrefix, NextHop> = routes
        .iter()
        .map(|r| {
            let p = RoutePrefix {
                vni: r.vni,
                ip: r.prefix,
                len: r.len,
            };
            (p, r.hop)
        })
        .collect();
    let mut eps: BTreeMap<EndpointKey, Endpoint> = endpoints.into_iter().collect();
    for e in eps.values_mut() {
        if e.flags & ENDPOINT_LOCAL == 0 {
            if let Some((_, n)) = neighbors.iter().find(|(v, _)| *v == e.vtep) {
                e.vtep_mac = n.mac;
            }
        }
    }
    mark_direct(&mut eps, &trie);
    eps.into_iter().collect()
}

/// Writes `t` into `dp`'s maps (one syscall per entry: a few seconds for 100k routes).
pub fn install(dp: &mut Dataplane, t: &Tables) -> Result<()> {
    let what = t.scale.label();
    let mut host: Array<_, HostConfig> = Array::try_from(dp.map_mut(maps::HOST)?)?;
    host.set(0, t.host, 0)
        .with_context(|| format!("{what}: writing {}", maps::HOST))?;
    let mut ports: Array<_, Port> = Array::try_from(dp.map_mut(maps::PORTS)?)?;
    for (k, v) in &t.ports {
        ports
            .set(*k, v, 0)
            .with_context(|| format!("{what}: writing port {k} into {}", maps::PORTS))?;
    }
    let mut eps: HashMap<_, EndpointKey, Endpoint> =
        HashMap::try_from(dp.map_mut(maps::ENDPOINTS)?)?;
    for (k, v) in &t.endpoints {
        eps.insert(k, v, 0).with_context(|| {
            format!(
                "{what}: inserting endpoint {:?} in VNI {} into {}",
                k.ip,
                k.vni,
                maps::ENDPOINTS
            )
        })?;
    }
    let mut routes: LpmTrie<_, RouteKey, NextHop> = LpmTrie::try_from(dp.map_mut(maps::ROUTES)?)?;
    for r in &t.routes {
        let key = Key::new(
            RouteKey::trie_prefix_len(r.len),
            RouteKey::new(r.vni, r.prefix),
        );
        routes.insert(&key, r.hop, 0).with_context(|| {
            format!(
                "{what}: inserting route {:?}/{} in VNI {} into {}",
                r.prefix,
                r.len,
                r.vni,
                maps::ROUTES
            )
        })?;
    }
    let mut vnis: HashMap<_, u32, VniInfo> = HashMap::try_from(dp.map_mut(maps::VNIS)?)?;
    for v in &t.vnis {
        vnis.insert(v, VniInfo::default(), 0)
            .with_context(|| format!("{what}: inserting VNI {v} into {}", maps::VNIS))?;
    }
    let mut neigh: HashMap<_, Ipv4, UnderlayNeighbor> =
        HashMap::try_from(dp.map_mut(maps::UNDERLAY_NEIGHBORS)?)?;
    for (k, v) in &t.neighbors {
        neigh.insert(k, v, 0).with_context(|| {
            format!(
                "{what}: inserting neighbour {k:?} into {}",
                maps::UNDERLAY_NEIGHBORS
            )
        })?;
    }
    Ok(())
}

// ---- frames ----

/// IPv4 UDP between router-MAC'd ends, padded to 60 bytes.
fn udp(src: Ipv4, dst: Ipv4, ttl: u8) -> Vec<u8> {
    udp_of_len(src, dst, ttl, MIN_FRAME)
}

/// IPv4 UDP between router-MAC'd ends, `len` bytes with the Ethernet header.
fn udp_of_len(src: Ipv4, dst: Ipv4, ttl: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    PacketBuilder::ethernet2(ROUTER_MAC, ROUTER_MAC)
        .ipv4(src, dst, ttl)
        .udp(40000, 5000)
        .write(&mut out, &vec![0xab; len - 14 - 20 - 8])
        .expect("etherparse serialises a valid frame");
    out
}

/// The VM to `dst`.
pub fn from_vm(dst: Ipv4) -> Vec<u8> {
    udp(VM, dst, 64)
}

/// The VM's UDP from `sport` to `dst`:`dport`.
pub fn udp_from_vm(sport: u16, dst: Ipv4, dport: u16) -> Vec<u8> {
    let mut f = from_vm(dst);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// The VM's TCP segment from `sport` to `dst`:`dport` (`flags`: SYN, else an ACK), 60 bytes
/// between router-MAC'd ends.
pub fn tcp_from_vm(sport: u16, dst: Ipv4, dport: u16, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, ROUTER_MAC)
        .ipv4(VM, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if flags & sluice_common::conntrack::TCP_SYN != 0 {
        b.syn()
    } else {
        b.ack(1)
    };
    let mut out = Vec::with_capacity(MIN_FRAME);
    b.write(&mut out, &[])
        .expect("etherparse serialises a valid frame");
    out.resize(out.len().max(MIN_FRAME), 0);
    out
}

/// The VM to `dst` in another subnet, with room for [`ROUTED_REPEAT`] TTL decrements.
pub fn routed_from_vm(dst: Ipv4) -> Vec<u8> {
    udp(VM, dst, ROUTED_TTL)
}

/// "Who has the gateway" from the VM, padded to 60 bytes.
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&VM);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GATEWAY);
    f.resize(MIN_FRAME, 0);
    f
}

/// What the peer host sends for REMOTE_PEER → VM: the 60-byte inner frame already carries
/// the MACs decapsulation writes (dst = the VM's endpoint MAC, src = router MAC).
pub fn from_underlay() -> Vec<u8> {
    vxlan_from_peer(VNI, &udp(REMOTE_PEER, VM, 64))
}

/// `inner` in VXLAN under `vni` from the peer host.
pub(crate) fn vxlan_from_peer(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let mut out = Vec::with_capacity(50 + inner.len());
    PacketBuilder::ethernet2(PEER_VTEP_MAC, UNDERLAY_MAC)
        .ipv4(PEER_VTEP, THIS_VTEP, 64)
        .udp(vxlan_source_port(0x1234), VXLAN_PORT)
        .write(&mut out, &payload)
        .expect("etherparse serialises a valid frame");
    out
}

/// IPv6 UDP from router-MAC'd ends.
fn ipv6_frame() -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_FRAME);
    PacketBuilder::ethernet2(ROUTER_MAC, ROUTER_MAC)
        .ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11],
            64,
        )
        .udp(40000, 5000)
        .write(&mut out, &[0xab; 2])
        .expect("etherparse serialises a valid frame");
    out
}

/// The VPC's drop paths that need its state, each leaving its frame as it found it: name,
/// whether it arrives at the underlay, description, frame, reason.
fn state_drops() -> Vec<(&'static str, bool, &'static str, Vec<u8>, Reason)> {
    let mut other_mac = from_vm(LOCAL_PEER);
    other_mac[6..12].copy_from_slice(&[0x02, 0xee, 0, 0, 0, 0x99]);
    let mut arp_outside = arp_request();
    arp_outside[38..42].copy_from_slice(&[192, 0, 2, 9]);
    vec![
        (
            "vpc_spoofed_mac_drop",
            false,
            "source MAC not the port's",
            other_mac,
            Reason::DropSpoofedMac,
        ),
        (
            "vpc_not_ipv4_drop",
            false,
            "IPv6 from a VM port (the overlay carries IPv4)",
            ipv6_frame(),
            Reason::DropVmNotIpv4,
        ),
        (
            "vpc_arp_not_in_vpc_drop",
            false,
            "ARP request for an address outside the VPC",
            arp_outside,
            Reason::DropArpNotInVpc,
        ),
        (
            "vpc_ttl_exceeded_drop",
            false,
            "routed to another subnet with TTL 1",
            udp(VM, ROUTED_LOCAL, 1),
            Reason::DropTtlExceeded,
        ),
        (
            "vpc_no_endpoint_drop",
            false,
            "destination in the VM's subnet that no NIC has (its route is local, the endpoint lookup misses)",
            from_vm(NO_NIC),
            Reason::DropNoEndpoint,
        ),
        (
            "vpc_mtu_exceeded_drop",
            false,
            "a 1,514-byte frame to a NIC on another host: with the 50 bytes of VXLAN it would not fit the 1,500-byte underlay (never truncated)",
            udp_of_len(VM, REMOTE_PEER, 64, 1514),
            Reason::DropMtuExceeded,
        ),
        (
            "vpc_no_underlay_neighbor_drop",
            false,
            "to a NIC on a host whose underlay MAC is not resolved yet",
            from_vm(UNRESOLVED_PEER),
            Reason::DropNoUnderlayNeighbor,
        ),
        (
            "vpc_nat_no_border_drop",
            false,
            "routed to the NAT gateway on a host without NAT configuration (no border router resolved)",
            from_vm(BEHIND_NAT),
            Reason::DropNatNoBorder,
        ),
        (
            "vpc_unknown_vni_drop",
            true,
            "VXLAN under a VNI this host does not have",
            vxlan_from_peer(0x00ab_cdef, &udp(REMOTE_PEER, VM, 64)),
            Reason::DropUnknownVni,
        ),
        (
            "vpc_vxlan_unknown_dest_drop",
            true,
            "VXLAN to an address no NIC of the VNI has here",
            vxlan_from_peer(VNI, &udp(REMOTE_PEER, NO_NIC, 64)),
            Reason::DropVxlanUnknownDest,
        ),
        (
            "vpc_vxlan_spoofed_source_drop",
            true,
            "VXLAN whose inner source lives on another host than the sender",
            vxlan_from_peer(VNI, &udp(LOCAL_PEER, VM, 64)),
            Reason::DropVxlanSpoofedSource,
        ),
        (
            "vpc_vxlan_inner_not_ipv4_drop",
            true,
            "VXLAN carrying IPv6",
            vxlan_from_peer(VNI, &ipv6_frame()),
            Reason::DropVxlanInnerNotIpv4,
        ),
    ]
}

/// The VPC paths at `scale` (names `<path>@<scale>`); `vpc_local_wrapped` (the wrapper's
/// own cost) only at 10 routes.
pub fn paths(scale: Scale) -> Vec<PathSpec> {
    let p = |base: &str,
             program: &'static str,
             description: &str,
             frame: Vec<u8>,
             action: u32,
             reason: Reason,
             method: Method| PathSpec {
        name: format!("{base}@{}", scale.suffix()),
        program,
        description: description.into(),
        frame,
        ingress_ifindex: if program == XDP_BENCH_UNDERLAY { 0 } else { LO },
        action,
        reason: Some(reason),
        method,
        scale: Some(scale),
        sg: None,
        vary: None,
    };
    let fresh = |repeat| Method::Fresh { repeat };
    let mut out = vec![
        p(
            "vpc_local",
            XDP_VM,
            "VM to a NIC on this host, same subnet: port, anti-spoofing, LPM route, endpoint, MAC rewrite, redirect",
            from_vm(LOCAL_PEER),
            XDP_REDIRECT,
            Reason::FwdLocal,
            Method::Repeat,
        ),
        p(
            "vpc_encap",
            XDP_BENCH_VM,
            "VM to a NIC on another host, same subnet: as vpc_local plus underlay neighbour, VXLAN encapsulation, redirect to the underlay",
            from_vm(REMOTE_PEER),
            XDP_REDIRECT,
            Reason::FwdEncap,
            Method::RepeatRestored,
        ),
        p(
            "vpc_decap",
            XDP_BENCH_UNDERLAY,
            "VXLAN from the peer host to the VM: VNI, destination and source-VTEP checks, decapsulation, MAC rewrite, redirect",
            from_underlay(),
            XDP_REDIRECT,
            Reason::FwdDecap,
            Method::RepeatRestored,
        ),
        p(
            "vpc_local_routed",
            XDP_VM,
            "VM to a NIC on this host in another subnet: as vpc_local plus TTL decrement and checksum update",
            routed_from_vm(ROUTED_LOCAL),
            XDP_REDIRECT,
            Reason::FwdLocal,
            fresh(ROUTED_REPEAT),
        ),
        p(
            "vpc_encap_routed",
            XDP_BENCH_VM,
            "VM to a NIC on another host in another subnet: as vpc_encap plus TTL decrement and checksum update",
            routed_from_vm(ROUTED_REMOTE),
            XDP_REDIRECT,
            Reason::FwdEncap,
            fresh(ROUTED_REPEAT),
        ),
        p(
            "vpc_arp_reply",
            XDP_VM,
            "ARP request for the gateway answered in place with the router MAC",
            arp_request(),
            XDP_TX,
            Reason::ArpReply,
            fresh(1),
        ),
        p(
            "vpc_no_route_drop",
            XDP_VM,
            "destination covered by no route of the VPC",
            from_vm(NO_ROUTE),
            XDP_DROP,
            Reason::DropNoRoute,
            Method::Repeat,
        ),
        p(
            "vpc_blackhole_drop",
            XDP_VM,
            "destination in a blackhole route",
            from_vm(BLACKHOLED),
            XDP_DROP,
            Reason::DropBlackhole,
            Method::Repeat,
        ),
        p(
            "vpc_spoofed_ip_drop",
            XDP_VM,
            "source address not the VM's own (dropped before the route lookup)",
            udp(SPOOFED, LOCAL_PEER, 64),
            XDP_DROP,
            Reason::DropSpoofedIp,
            Method::Repeat,
        ),
    ];
    for (name, underlay, description, frame, reason) in state_drops() {
        let program = if underlay { XDP_UNDERLAY } else { XDP_VM };
        out.push(p(
            name,
            program,
            description,
            frame,
            XDP_DROP,
            reason,
            Method::Repeat,
        ));
    }
    if scale == Scale::Routes10 {
        out.push(p(
            "vpc_local_wrapped",
            XDP_BENCH_VM,
            "vpc_local through the restoring wrapper (which has nothing to restore): the wrapper's own cost, without its bpf_xdp_adjust_head call",
            from_vm(LOCAL_PEER),
            XDP_REDIRECT,
            Reason::FwdLocal,
            Method::RepeatRestored,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Longest-prefix match over `routes`, as the kernel's trie does it.
    fn lookup(routes: &[Route], vni: u32, ip: Ipv4) -> Option<Route> {
        routes
            .iter()
            .filter(|r| r.covers(vni, ip))
            .max_by_key(|r| r.len)
            .copied()
    }

    #[test]
    fn scales_have_the_promised_sizes() {
        let small = tables(Scale::Routes10);
        assert_eq!(small.routes.len(), 10);
        assert_eq!(small.vnis, vec![VNI]);
        assert_eq!(small.endpoints.len(), ENDPOINTS_PER_VPC);

        let large = tables(Scale::Routes100k);
        assert_eq!(large.routes.len(), 100_000);
        let vnis: HashSet<u32> = large.routes.iter().map(|r| r.vni).collect();
        assert_eq!(vnis.len(), 1000);
        assert!(vnis.contains(&VNI));
        assert_eq!(large.vnis.len(), 1000);
        assert_eq!(large.endpoints.len(), 1000 * ENDPOINTS_PER_VPC);
        for vni in [1, VNI, 1000] {
            let n = large.routes.iter().filter(|r| r.vni == vni).count();
            assert_eq!(n, ROUTES_PER_VPC, "VNI {vni}");
        }
        let lens: HashSet<u8> = large.routes.iter().map(|r| r.len).collect();
        assert_eq!(lens, (16..=32).collect(), "every length /16../32 occurs");
    }

    #[test]
    fn routes_are_distinct_and_have_no_host_bits() {
        let large = tables(Scale::Routes100k);
        let mut seen = HashSet::new();
        for r in &large.routes {
            assert!(seen.insert((r.vni, r.prefix, r.len)), "duplicate {r:?}");
            assert_eq!(u32::from_be_bytes(r.prefix) & !mask(r.len), 0, "{r:?}");
        }
        let keys: HashSet<_> = large.endpoints.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), large.endpoints.len(), "duplicate endpoint");
    }

    #[test]
    fn measured_destinations_resolve_to_the_same_route_at_both_scales() {
        let small = tables(Scale::Routes10);
        let large = tables(Scale::Routes100k);
        for dst in MEASURED_DESTINATIONS {
            assert_eq!(
                lookup(&small.routes, VNI, dst),
                lookup(&large.routes, VNI, dst),
                "{dst:?}"
            );
        }
        let kind = |dst| lookup(&large.routes, VNI, dst).map(|r| r.hop.kind);
        let local = Some(NextHopKind::Local as u32);
        for dst in [VM, LOCAL_PEER, REMOTE_PEER, ROUTED_LOCAL, ROUTED_REMOTE] {
            assert_eq!(kind(dst), local, "{dst:?}");
        }
        assert_eq!(kind(BLACKHOLED), Some(NextHopKind::Blackhole as u32));
        assert_eq!(kind(NO_ROUTE), None);
        assert_eq!(kind(NO_NIC), local);
        assert_eq!(kind(UNRESOLVED_PEER), local);
        assert_eq!(kind(BEHIND_NAT), Some(NextHopKind::NatGateway as u32));
        let t = tables(Scale::Routes10);
        assert!(!t.endpoints.iter().any(|(k, _)| k.ip == NO_NIC));
        let unresolved = t.endpoints.iter().find(|(k, _)| k.ip == UNRESOLVED_PEER);
        assert_eq!(unresolved.map(|(_, e)| e.vtep_mac), Some([0; 6]));
    }

    #[test]
    fn measured_destinations_take_the_direct_shortcut_at_both_scales() {
        for scale in Scale::ALL {
            let t = tables(scale);
            for dst in [VM, LOCAL_PEER, REMOTE_PEER, ROUTED_LOCAL, ROUTED_REMOTE] {
                let ep = t
                    .endpoints
                    .iter()
                    .find(|(k, _)| k.vni == VNI && k.ip == dst)
                    .unwrap()
                    .1;
                assert_ne!(ep.flags & ENDPOINT_DIRECT, 0, "{scale:?} {dst:?}");
            }
        }
        // Some generated route is more specific than a filler NIC's subnet route: that
        // NIC is not direct (the rule is applied, not assumed).
        let large = tables(Scale::Routes100k);
        assert!(large
            .endpoints
            .iter()
            .any(|(_, e)| e.flags & ENDPOINT_DIRECT == 0));
    }

    #[test]
    fn generated_routes_sit_next_to_the_measured_ones() {
        // The trie must be deep where the measured lookups go, not only elsewhere.
        let large = tables(Scale::Routes100k);
        let near = large
            .routes
            .iter()
            .filter(|r| r.vni == VNI && covers([10, 0, 0, 0], 16, r.prefix) && r.len > 24)
            .count();
        assert!(near >= 20, "only {near} long prefixes inside 10.0.0.0/16");
    }

    #[test]
    fn measured_endpoints_carry_the_router_mac_so_rewrites_are_no_ops() {
        let t = tables(Scale::Routes10);
        let port = t.ports[0].1;
        assert_eq!(port.mac, t.host.router_mac);
        for dst in [VM, LOCAL_PEER, REMOTE_PEER, ROUTED_LOCAL, ROUTED_REMOTE] {
            let ep = t
                .endpoints
                .iter()
                .find(|(k, _)| k.vni == VNI && k.ip == dst)
                .unwrap_or_else(|| panic!("no endpoint {dst:?}"))
                .1;
            assert_eq!(ep.mac, ROUTER_MAC, "{dst:?}");
            let remote = ep.flags & ENDPOINT_LOCAL == 0;
            if remote {
                assert!(t.neighbors.iter().any(|(v, _)| *v == ep.vtep));
                assert_ne!(ep.vtep_mac, [0; 6], "{dst:?}: underlay MAC copied in");
            }
        }
        let f = from_vm(REMOTE_PEER);
        assert_eq!((&f[0..6], &f[6..12]), (&ROUTER_MAC[..], &ROUTER_MAC[..]));
        let d = from_underlay();
        assert_eq!(d.len(), 50 + MIN_FRAME);
        assert_eq!(&d[50..], &from_vm_reverse()[..]);
    }

    fn from_vm_reverse() -> Vec<u8> {
        udp(REMOTE_PEER, VM, 64)
    }

    #[test]
    fn frames_are_minimum_size_and_routed_ones_start_at_ttl_255() {
        for f in [
            from_vm(LOCAL_PEER),
            arp_request(),
            routed_from_vm(ROUTED_LOCAL),
        ] {
            assert_eq!(f.len(), MIN_FRAME);
        }
        assert_eq!(routed_from_vm(ROUTED_REMOTE)[14 + 8], 255);
    }

    #[test]
    fn every_scale_has_the_same_paths_except_the_wrapper_calibration() {
        let small: Vec<String> = paths(Scale::Routes10).into_iter().map(|p| p.name).collect();
        let large: Vec<String> = paths(Scale::Routes100k)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(small.len(), large.len() + 1);
        for name in &large {
            let base = name.strip_suffix("@100k").unwrap();
            assert!(small.contains(&format!("{base}@10")), "{base}");
        }
    }
}
