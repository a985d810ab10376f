//! Tier 3: the VPC overlay driven through the real control plane, with real traffic.
//!
//! Each test builds the default lab (`lab/default.yaml`, see `lab::topology`): a fabric, hosts
//! h1 (controller + agent) and h2 (agent, talking to h1's API over its Unix socket), two
//! tenants with identical CIDRs and VM addresses spread over both hosts. Every change goes
//! through the controller's REST API and is waited for by generation (each agent's
//! `/v1/status`), never by sleeping. Throughout every test, tcpdump watches tenant B's VM
//! interfaces (and in the first test every VM's) and must see nothing of any other tenant:
//! each tenant's pings carry its own payload pattern and its TCP its own port, so frames are
//! told apart although the addresses are the same.
//!
//! Scenarios are grouped so that a lab is built once per group (a build starts two daemons
//! and attaches XDP to every interface): connectivity and isolation; custom routes
//! (appliance, blackhole, longest prefix); peerings, transit and deletes.
mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use sluice_common::{
    stats::Reason,
    vpc::{EndpointKey, Ipv4, ENDPOINT_LOCAL},
};
use sluice_dataplane::{
    client::{self, ApiError, Method},
    intent::{ApplySummary, Nic, Peering, PeeringState, RouteTableEntry, TopologyNic, Vpc},
    lab::{
        capture::{self, ipv4, ports, vxlan},
        overlay::VM_MTU,
        topology::{default_lab_path, load_topology},
        Capture, Lab, LabProcess, LabVm, PingReport, TcpReport, TopologyLab,
    },
    stats::StatsSnapshot,
    vpc::{compile::lookup, tables::RouteEntry},
};

const SLUICED: &str = env!("CARGO_BIN_EXE_sluiced");
const PINGS: u32 = 3;
/// Enough for full-size segments (they fit the underlay only because the VM MTU leaves room
/// for VXLAN), small enough to stay quick on two cores.
const TCP_BYTES: u64 = 300_000;
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// For exchanges that must fail: how long the client tries.
const TCP_FAIL_TIMEOUT: Duration = Duration::from_secs(2);

// ---- tenants' traffic tags ----

/// How a tenant's test traffic is recognised in captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    vpc: &'static str,
    /// Fills each echo request's payload (`ping -p`).
    pattern: u8,
    /// Its TCP echo servers listen here.
    port: u16,
    marker: &'static str,
}

const TAGS: [Tag; 4] = [
    Tag {
        vpc: "tenant-a",
        pattern: 0xaa,
        port: 7100,
        marker: "tenant-a-bytes|",
    },
    Tag {
        vpc: "tenant-b",
        pattern: 0xbb,
        port: 7200,
        marker: "tenant-b-bytes|",
    },
    Tag {
        vpc: "tenant-c",
        pattern: 0xcc,
        port: 7300,
        marker: "tenant-c-bytes|",
    },
    Tag {
        vpc: "tenant-d",
        pattern: 0xdd,
        port: 7400,
        marker: "tenant-d-bytes|",
    },
];

fn tag(vpc: &str) -> Tag {
    *TAGS
        .iter()
        .find(|t| t.vpc == vpc)
        .unwrap_or_else(|| panic!("no traffic tag for VPC {vpc}"))
}

// ---- frames ----

/// Which tenant's test traffic a frame is (by ping pattern or TCP port).
fn tag_of(frame: &[u8]) -> Option<Tag> {
    let ip = ipv4(frame)?;
    TAGS.into_iter().find(|t| match ip.proto {
        1 => ip
            .l4
            .get(8..)
            .is_some_and(|p| p.windows(16).any(|w| w.iter().all(|b| *b == t.pattern))),
        6 => ports(ip.l4).is_some_and(|(s, d)| s == t.port || d == t.port),
        _ => false,
    })
}

fn ip4(s: &str) -> Ipv4 {
    s.parse::<std::net::Ipv4Addr>()
        .unwrap_or_else(|_| panic!("{s} is not an IPv4 address"))
        .octets()
}

// ---- the lab ----

fn default_lab(lab: &Lab) -> TopologyLab<'_> {
    let topology = load_topology(&default_lab_path()).expect("lab/default.yaml");
    let started = Instant::now();
    let t =
        TopologyLab::build(lab, topology, Path::new(SLUICED)).expect("building the default lab");
    println!(
        "lab {} built in {:.1}s (generation {})",
        lab.name(),
        started.elapsed().as_secs_f64(),
        t.generation()
    );
    t
}

/// Captures on VM interfaces for the whole test; [`Watch::finish`] checks isolation.
struct Watch<'lab> {
    captures: Vec<(LabVm, Capture<'lab>)>,
}

fn watch<'lab>(t: &TopologyLab<'lab>, vpcs: &[&str]) -> Watch<'lab> {
    let captures = t
        .vms()
        .iter()
        .filter(|v| vpcs.contains(&v.vpc.as_str()))
        .map(|v| {
            let c = t
                .lab()
                .capture(&v.name, &v.port.vm_if)
                .unwrap_or_else(|e| panic!("capture on {}: {e:#}", v.name));
            (v.clone(), c)
        })
        .collect();
    Watch { captures }
}

impl Watch<'_> {
    /// Every watched VM saw frames of its own tenant (the capture works) and none tagged
    /// with another tenant's pattern or port.
    fn finish(self) {
        for (vm, capture) in self.captures {
            let frames = capture.finish().expect("capture");
            let own = frames
                .iter()
                .filter(|f| tag_of(f).is_some_and(|t| t.vpc == vm.vpc))
                .count();
            let foreign: Vec<&str> = frames
                .iter()
                .filter_map(|f| tag_of(f).filter(|t| t.vpc != vm.vpc).map(|t| t.vpc))
                .collect();
            println!(
                "isolation: {} ({}, {}) saw {} frames, {own} of its tenant, {} of others",
                vm.name,
                vm.vpc,
                vm.ip(),
                frames.len(),
                foreign.len()
            );
            assert!(
                own > 0,
                "{}: the capture saw none of its own traffic",
                vm.name
            );
            assert!(
                foreign.is_empty(),
                "{} of {} saw frames of {foreign:?}",
                vm.name,
                vm.vpc
            );
        }
    }
}

fn ping(t: &TopologyLab, from: &str, dst: &str) -> PingReport {
    let pattern = format!("{:02x}", tag(&t.vm(from).vpc).pattern);
    t.lab()
        .ping(from, dst, PINGS, &["-p", &pattern])
        .unwrap_or_else(|e| panic!("ping {from} -> {dst}: {e:#}"))
}

/// A TCP echo of `bytes` from VM `from` to `dst`, on the port of `from`'s tenant.
fn tcp(t: &TopologyLab, from: &str, dst: &str, bytes: u64, timeout: Duration) -> TcpReport {
    let tg = tag(&t.vm(from).vpc);
    t.lab()
        .tcp_exchange(from, dst, tg.port, bytes, tg.marker, timeout)
        .unwrap_or_else(|e| panic!("tcp {from} -> {dst}: {e:#}"))
}

/// An echo server in namespace `ns` on the port of tenant `vpc`.
fn server<'lab>(t: &TopologyLab<'lab>, ns: &str, vpc: &str) -> LabProcess<'lab> {
    t.lab()
        .tcp_echo_server(ns, tag(vpc).port)
        .unwrap_or_else(|e| panic!("echo server in {ns}: {e:#}"))
}

fn assert_answered(r: &PingReport, what: &str, ttl: u8) {
    assert_eq!(
        (r.transmitted, r.received),
        (u64::from(PINGS), u64::from(PINGS)),
        "{what}: not every echo request was answered: {r:?}"
    );
    assert!(
        r.ttls.iter().all(|x| *x == ttl),
        "{what}: replies should arrive with ttl {ttl}: {r:?}"
    );
}

fn assert_unanswered(r: &PingReport, what: &str) {
    assert_eq!(r.received, 0, "{what}: must not get through: {r:?}");
}

fn assert_tcp_ok(r: &TcpReport, what: &str) {
    assert!(r.ok(), "{what}: the echo did not come back intact: {r:?}");
}

type Stats = BTreeMap<String, StatsSnapshot>;

fn stats(t: &TopologyLab) -> Stats {
    t.stats().expect("daemon stats")
}

fn since(t: &TopologyLab, before: &Stats) -> Stats {
    stats(t)
        .into_iter()
        .map(|(h, now)| {
            let d = now.since(&before[&h]);
            (h, d)
        })
        .collect()
}

fn packets(d: &Stats, host: &str, r: Reason) -> u64 {
    d[host].get(r).packets
}

fn drops(d: &StatsSnapshot) -> Vec<(&'static str, u64)> {
    Reason::ALL
        .iter()
        .filter(|r| r.is_drop() && d.get(**r).packets > 0)
        .map(|r| (r.name(), d.get(*r).packets))
        .collect()
}

fn assert_no_drops(d: &Stats, what: &str) {
    for (h, s) in d {
        assert_eq!(drops(s), [], "{what}: unexpected drops on {h}");
    }
}

/// A mutation through the API that must succeed (and be applied by every agent).
fn change(t: &mut TopologyLab, method: Method, path: &str, body: Option<serde_json::Value>) {
    let what = format!("{method} {path}");
    t.change(method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

/// A mutation the API must refuse with `status`; returns the error it gave.
fn refused(
    t: &TopologyLab,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    status: u16,
) -> ApiError {
    let resp = t
        .request(method.clone(), path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let err = ApiError::from_response(&resp);
    assert_eq!(
        resp.status, status,
        "{method} {path} should be refused with {status}: {}",
        resp.body
    );
    err
}

fn vpc(t: &TopologyLab, name: &str) -> Vpc {
    t.get(&format!("/v1/vpcs/{name}"))
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET VPC {name}: {e:#}"))
}

fn nic(t: &TopologyLab, name: &str) -> Nic {
    t.get(&format!("/v1/nics/{name}"))
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("GET NIC {name}: {e:#}"))
}

fn route_path(vpc: &str, destination: &str) -> String {
    format!("/v1/vpcs/{vpc}/routes/{}", client::encode(destination))
}

fn route_body(vpc: &str, destination: &str, next_hop: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"vpc": vpc, "destination": destination, "next_hop": next_hop})
}

fn blackhole() -> serde_json::Value {
    serde_json::json!({"type": "blackhole"})
}

/// Every agent is healthy: no error, every NIC interface present and attached.
fn assert_agents_healthy(t: &TopologyLab) {
    for h in t.hosts() {
        let s = t.agent_state(&h.name).expect("agent status");
        assert_eq!(s.last_error, None, "agent on {}: {s:?}", h.name);
        assert_eq!(s.missing_interfaces, Vec::<String>::new(), "{}", h.name);
        assert_eq!(s.unresolved_neighbors, Vec::<String>::new(), "{}", h.name);
        for vm in t.vms().iter().filter(|v| v.port.host == h.name) {
            assert!(
                s.attached.contains(&vm.port.host_if),
                "agent on {} did not attach xdp_vm to {} ({}): {s:?}",
                h.name,
                vm.port.host_if,
                vm.name
            );
        }
        assert!(
            s.attached.contains(&h.underlay.ifname),
            "agent on {} did not attach xdp_underlay to {}: {s:?}",
            h.name,
            h.underlay.ifname
        );
    }
}

// ---- tests ----

/// Same subnet and across subnets, on one host and across hosts, in both tenants at once
/// over identical addresses; every VM of both tenants captured throughout; VXLAN on the
/// fabric carries each tenant's traffic under the VNI the controller allocated to it.
#[test]
fn tenants_with_identical_addresses_connect_and_stay_isolated() {
    if !support::privileged("tenants_with_identical_addresses_connect_and_stay_isolated") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let started = Instant::now();
    let lab = Lab::new().expect("lab");
    let t = default_lab(&lab);
    assert_agents_healthy(&t);

    // The intent as the controller holds it: identical CIDRs, distinct VNIs.
    let (a, b) = (vpc(&t, "tenant-a"), vpc(&t, "tenant-b"));
    assert_eq!(a.cidr, b.cidr);
    assert_ne!(a.vni, b.vni, "two VPCs share VNI {}", a.vni);
    let nics: Vec<Nic> = t.get("/v1/nics").unwrap().json().unwrap();
    assert_eq!(nics.len(), t.vms().len());

    // Posting the same topology again changes nothing.
    let again = t
        .request(Method::POST, "/v1/topology", Some(t.topology()))
        .expect("re-post");
    let again: ApplySummary = again.error_for_status().unwrap().json().unwrap();
    assert_eq!(again.changes(), 0, "re-applying the lab changed {again:?}");

    let watch_vms = watch(&t, &["tenant-a", "tenant-b"]);
    let fabric = lab.fabric().expect("fabric bridge");
    let wire = lab.capture("fabric", &fabric).expect("fabric capture");
    let _servers: Vec<_> = t
        .vms()
        .iter()
        .map(|v| server(&t, &v.name, &v.vpc))
        .collect();
    let before = stats(&t);

    // (from, to, ttl of the replies, what): TTL 64 within a subnet, 63 routed across.
    let pairs = [
        ("a1", "a2", 64, "tenant-a, same subnet, same host (h1)"),
        ("a1", "a4", 64, "tenant-a, same subnet, h1 -> h2"),
        ("a4", "a3", 63, "tenant-a, across subnets, same host (h2)"),
        ("a1", "a3", 63, "tenant-a, across subnets, h1 -> h2"),
        ("b1", "b4", 64, "tenant-b, same subnet, same host (h2)"),
        ("b2", "b1", 64, "tenant-b, same subnet, h1 -> h2"),
        ("b2", "b3", 63, "tenant-b, across subnets, same host (h1)"),
        ("b1", "b3", 63, "tenant-b, across subnets, h2 -> h1"),
    ];
    for (from, to, ttl, what) in pairs {
        let dst = t.vm(to).ip();
        let p = ping(&t, from, &dst);
        let c = tcp(&t, from, &dst, TCP_BYTES, TCP_TIMEOUT);
        println!("{what}: {from} -> {to} ({dst}): ping {p:?}, tcp {c:?}");
        assert_answered(&p, &format!("{what}: {from} -> {to}"), ttl);
        assert_tcp_ok(&c, &format!("{what}: {from} -> {to}"));
    }
    let delta = since(&t, &before);
    let frames = wire.finish().expect("fabric capture");
    watch_vms.finish();

    for h in ["h1", "h2"] {
        println!("{h}: {:?}", delta[h].by_name());
        for r in [
            Reason::FwdLocal,
            Reason::FwdEncap,
            Reason::FwdDecap,
            Reason::ArpReply,
        ] {
            assert!(
                packets(&delta, h, r) > 0,
                "{} did not move on {h}",
                r.name()
            );
        }
    }
    assert_no_drops(&delta, "connectivity");
    // Each tenant's packets cross the fabric under its own VNI, and nothing else does.
    let mut by_vni: BTreeMap<u32, usize> = BTreeMap::new();
    for capture::Vxlan { vni, inner, .. } in frames.iter().filter_map(|f| vxlan(f)) {
        *by_vni.entry(vni).or_default() += 1;
        if let Some(tg) = tag_of(inner) {
            let expected = if tg.vpc == "tenant-a" { a.vni } else { b.vni };
            assert_eq!(vni, expected, "{} traffic under VNI {vni}", tg.vpc);
        }
    }
    println!("fabric VXLAN frames by VNI: {by_vni:?}");
    assert!(by_vni.keys().all(|v| *v == a.vni || *v == b.vni));
    assert!(by_vni.contains_key(&a.vni) && by_vni.contains_key(&b.vni));
    println!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// An appliance route (a network behind a forwarding VM with source check off), used from
/// the appliance's host and from the other host; a blackhole /32 added later wins over the
/// appliance's /24 for its address only; a /0 blackhole loses to every subnet route.
#[test]
fn custom_routes_appliance_blackhole_and_longest_prefix() {
    if !support::privileged("custom_routes_appliance_blackhole_and_longest_prefix") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let started = Instant::now();
    let lab = Lab::new().expect("lab");
    let mut t = default_lab(&lab);
    let watch_b = watch(&t, &["tenant-b"]);
    for (from, to, ttl) in [("b1", "b4", 64), ("b2", "b3", 63)] {
        let dst = t.vm(to).ip();
        assert_answered(&ping(&t, from, &dst), &format!("{from} -> {to}"), ttl);
    }

    // The appliance: VM afw in tenant-a's web subnet on h1, routing (ip_forward=1) to a
    // service network 10.0.3.0/24 that exists only behind it (namespace svc).
    let afw = t
        .add_vm(TopologyNic {
            name: "afw".into(),
            host: "h1".into(),
            ifname: "vm-afw".into(),
            vpc: "tenant-a".into(),
            subnet: "web".into(),
            ip: Some("10.0.1.20".into()),
            source_check: Some(false),
            ..Default::default()
        })
        .expect("appliance VM");
    assert!(!nic(&t, "afw").source_check);
    let (fw_if, svc_if) = ("svc0".to_string(), "eth0".to_string());
    lab.add_host("svc").unwrap();
    lab.disable_ipv6("svc").unwrap();
    lab.veth("afw", &fw_if, "svc", &svc_if).unwrap();
    for (ns, ifname, cidr) in [
        ("afw", &fw_if, "10.0.3.1/24"),
        ("svc", &svc_if, "10.0.3.50/24"),
        ("svc", &svc_if, "10.0.3.60/24"),
    ] {
        lab.addr(ns, ifname, cidr).unwrap();
    }
    for (ns, ifname) in [("afw", &fw_if), ("svc", &svc_if)] {
        lab.mtu(ns, ifname, VM_MTU).unwrap();
        lab.up(ns, ifname).unwrap();
    }
    // The VMs' packets cross a redirect that drops checksum offload state (lab::overlay).
    lab.exec("svc", &["ethtool", "-K", &svc_if, "tx", "off"])
        .unwrap();
    lab.exec("svc", &["ip", "route", "add", "default", "via", "10.0.3.1"])
        .unwrap();
    let _svc_server = server(&t, "svc", "tenant-a");

    // No route yet: 10.0.3.0/24 is inside tenant-a's CIDR but no subnet's.
    let before = stats(&t);
    assert_unanswered(
        &ping(&t, "a1", "10.0.3.60"),
        "a1 -> 10.0.3.60 without a route",
    );
    assert!(packets(&since(&t, &before), "h1", Reason::DropNoRoute) >= u64::from(PINGS));

    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body(
            "tenant-a",
            "10.0.3.0/24",
            serde_json::json!({"type": "nic", "nic": "afw"}),
        )),
    );
    let table: Vec<RouteTableEntry> = t
        .get("/v1/vpcs/tenant-a/route-table")
        .unwrap()
        .json()
        .unwrap();
    println!("tenant-a route table: {table:?}");
    assert_eq!(table.len(), 3, "two system routes and the appliance route");

    // Through the appliance, from its own host (a1, h1) and from the other one (a4, h2):
    // the request is routed once by XDP (63) and once by the appliance (62); the reply
    // once by the appliance and then stays in the appliance's subnet (63).
    let fw_capture = lab.capture("afw", &afw.port.vm_if).unwrap();
    let svc_capture = lab.capture("svc", &svc_if).unwrap();
    let before = stats(&t);
    let local = ping(&t, "a1", "10.0.3.60");
    let local_tcp = tcp(&t, "a1", "10.0.3.60", TCP_BYTES, TCP_TIMEOUT);
    let remote = ping(&t, "a4", "10.0.3.60");
    let remote_tcp = tcp(&t, "a4", "10.0.3.60", TCP_BYTES, TCP_TIMEOUT);
    let delta = since(&t, &before);
    let through_fw = fw_capture.finish().unwrap();
    let at_svc = svc_capture.finish().unwrap();
    println!(
        "via appliance: local {local:?} {local_tcp:?}\nremote {remote:?} {remote_tcp:?}\nh1 {:?}\nh2 {:?}",
        delta["h1"].by_name(),
        delta["h2"].by_name()
    );
    assert_answered(&local, "a1 -> 10.0.3.60 via the appliance on its host", 63);
    assert_tcp_ok(&local_tcp, "a1 -> 10.0.3.60 via the appliance");
    assert_answered(&remote, "a4 (h2) -> 10.0.3.60 via the appliance on h1", 63);
    assert_tcp_ok(&remote_tcp, "a4 (h2) -> 10.0.3.60 via the appliance on h1");
    assert_no_drops(&delta, "appliance route");
    // The appliance's interface carried both directions of both clients' traffic; the
    // service network saw the clients' own addresses, forwarded (TTL 62).
    let (a1, a4, svc) = (ip4("10.0.1.10"), ip4("10.0.1.12"), ip4("10.0.3.60"));
    for client in [a1, a4] {
        for (src, dst) in [(client, svc), (svc, client)] {
            let n = through_fw
                .iter()
                .filter_map(|f| ipv4(f))
                .filter(|ip| ip.src == src && ip.dst == dst && ip.proto == 1)
                .count();
            assert!(
                n >= PINGS as usize,
                "{n} ICMP {src:?} -> {dst:?} frames on the appliance's interface"
            );
        }
        assert!(
            at_svc
                .iter()
                .filter_map(|f| ipv4(f))
                .any(|ip| ip.src == client && ip.dst == svc && ip.ttl == 62),
            "no forwarded packet from {client:?} reached the service network"
        );
    }

    // A /32 blackhole added later beats the appliance's /24 for its address only.
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-a", "10.0.3.50/32", blackhole())),
    );
    let before = stats(&t);
    let dark = ping(&t, "a1", "10.0.3.50");
    let dark_remote = ping(&t, "a4", "10.0.3.50");
    let lit = ping(&t, "a1", "10.0.3.60");
    // Tenant B has no such route: its identical a1 twin (b2's subnet) sees no route.
    let other_tenant = ping(&t, "b2", "10.0.3.50");
    let delta = since(&t, &before);
    println!("/32 blackhole: {dark:?} {dark_remote:?} {lit:?} {other_tenant:?}");
    assert_unanswered(&dark, "a1 -> 10.0.3.50 behind a /32 blackhole");
    assert_unanswered(&dark_remote, "a4 -> 10.0.3.50 behind a /32 blackhole");
    assert_answered(
        &lit,
        "a1 -> 10.0.3.60 (the /24 still goes to the appliance)",
        63,
    );
    assert_unanswered(&other_tenant, "b2 -> 10.0.3.50 (tenant-b has no route)");
    assert!(packets(&delta, "h1", Reason::DropBlackhole) >= u64::from(PINGS));
    assert!(packets(&delta, "h2", Reason::DropBlackhole) >= u64::from(PINGS));
    assert!(packets(&delta, "h1", Reason::DropNoRoute) >= u64::from(PINGS));

    // A default blackhole is the least specific route: subnets and the appliance still win.
    change(
        &mut t,
        Method::PUT,
        "/v1/routes",
        Some(route_body("tenant-a", "0.0.0.0/0", blackhole())),
    );
    let before = stats(&t);
    let outside = ping(&t, "a1", "10.9.9.9");
    let subnet = ping(&t, "a1", &t.vm("a3").ip());
    let appliance = ping(&t, "a1", "10.0.3.60");
    let delta = since(&t, &before);
    assert_unanswered(&outside, "a1 -> 10.9.9.9 into the /0 blackhole");
    assert!(packets(&delta, "h1", Reason::DropBlackhole) >= u64::from(PINGS));
    assert_eq!(packets(&delta, "h1", Reason::DropNoRoute), 0);
    assert_answered(&subnet, "a1 -> a3 with a /0 blackhole", 63);
    assert_answered(&appliance, "a1 -> 10.0.3.60 with a /0 blackhole", 63);

    // Removing the /32 gives 10.0.3.50 back to the appliance's /24.
    change(
        &mut t,
        Method::DELETE,
        &route_path("tenant-a", "10.0.3.50/32"),
        None,
    );
    assert_answered(
        &ping(&t, "a1", "10.0.3.50"),
        "a1 -> 10.0.3.50 after the /32 is deleted",
        63,
    );
    // A subnet's system route is not a custom route: it cannot be deleted or shadowed.
    let e = refused(
        &t,
        Method::DELETE,
        &route_path("tenant-a", "10.0.1.0/24"),
        None,
        409,
    );
    assert_eq!(e.field.as_deref(), Some("destination"), "{e}");
    watch_b.finish();
    println!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// Peering: pending carries nothing, accepted works with routes on both sides once the
/// peers' security groups admit each other, a side without a route back breaks it, a
/// chain gives no transit. Then deletes: a NIC's entries
/// leave the pinned maps on both hosts, a VPC with dependents is refused with their list,
/// an emptied VPC goes with its VNI.
#[test]
fn peerings_transit_and_deletes_through_the_api() {
    if !support::privileged("peerings_transit_and_deletes_through_the_api") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let started = Instant::now();
    let lab = Lab::new().expect("lab");
    let mut t = default_lab(&lab);
    let watch_b = watch(&t, &["tenant-b"]);
    for (from, to, ttl) in [("b1", "b4", 64), ("b2", "b3", 63)] {
        let dst = t.vm(to).ip();
        assert_answered(&ping(&t, from, &dst), &format!("{from} -> {to}"), ttl);
    }

    // Overlapping CIDRs cannot peer.
    let e = refused(
        &t,
        Method::POST,
        "/v1/peerings",
        Some(serde_json::json!({"vpc": "tenant-a", "peer_vpc": "tenant-b"})),
        409,
    );
    println!("peering tenant-a with tenant-b: {e}");

    // Two more VPCs, C (peered with A) and D (peered with C only).
    for (name, cidr, subnet) in [
        ("tenant-c", "10.1.0.0/16", "10.1.1.0/24"),
        ("tenant-d", "10.2.0.0/16", "10.2.1.0/24"),
    ] {
        change(
            &mut t,
            Method::POST,
            "/v1/vpcs",
            Some(serde_json::json!({"name": name, "cidr": cidr})),
        );
        change(
            &mut t,
            Method::POST,
            "/v1/subnets",
            Some(serde_json::json!({"vpc": name, "name": "app", "cidr": subnet})),
        );
    }
    for (name, host, vpc, ip) in [
        ("c1", "h2", "tenant-c", "10.1.1.10"),
        ("d1", "h1", "tenant-d", "10.2.1.10"),
    ] {
        t.add_vm(TopologyNic {
            name: name.into(),
            host: host.into(),
            ifname: format!("vm-{name}"),
            vpc: vpc.into(),
            subnet: "app".into(),
            ip: Some(ip.into()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("VM {name}: {e:#}"));
    }
    let mut servers = Vec::new();
    for vm in ["c1", "d1", "a1", "a4"] {
        for vpc in ["tenant-a", "tenant-c", "tenant-d"] {
            servers.push(server(&t, vm, vpc));
        }
    }
    let (a1, a4, c1, d1) = (
        t.vm("a1").ip(),
        t.vm("a4").ip(),
        t.vm("c1").ip(),
        t.vm("d1").ip(),
    );

    // Pending: routes on both sides are accepted but carry nothing.
    let resp = t
        .request(
            Method::POST,
            "/v1/peerings",
            Some(&serde_json::json!({"name": "a-c", "vpc": "tenant-a", "peer_vpc": "tenant-c"})),
        )
        .unwrap()
        .error_for_status()
        .unwrap();
    let pcx: Peering = resp.json().unwrap();
    assert_eq!(pcx.state, PeeringState::Pending);
    t.wait_applied(resp.generation().unwrap()).unwrap();
    let pcx_hop = serde_json::json!({"type": "peering", "peering": "a-c"});
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-a", "10.1.0.0/16", pcx_hop.clone())),
    );
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-c", "10.0.0.0/16", pcx_hop.clone())),
    );
    let before = stats(&t);
    let pending = ping(&t, "a1", &c1);
    let delta = since(&t, &before);
    assert_unanswered(&pending, "a1 -> c1 over a pending peering");
    assert!(packets(&delta, "h1", Reason::DropNoRoute) >= u64::from(PINGS));
    assert_eq!(packets(&delta, "h2", Reason::FwdDecap), 0);

    // Accepted, security groups still apply: C's default group admits only its members
    // until the tenants open their groups to the peers (A to C, C to A and D, D to C).
    change(&mut t, Method::POST, "/v1/peerings/a-c/accept", None);
    let before = stats(&t);
    assert_unanswered(&ping(&t, "a1", &c1), "a1 -> c1 before C's group admits A");
    assert!(packets(&since(&t, &before), "h2", Reason::DropSgIngress) >= u64::from(PINGS));
    for (vpc, peer) in [
        ("tenant-a", "10.1.0.0/16"),
        ("tenant-c", "10.0.0.0/16"),
        ("tenant-c", "10.2.0.0/16"),
        ("tenant-d", "10.1.0.0/16"),
    ] {
        change(
            &mut t,
            Method::POST,
            &format!("/v1/security-groups/default/rules?vpc={vpc}"),
            Some(
                serde_json::json!({"direction": "ingress", "protocol": "all",
                "cidr": peer, "action": "allow", "priority": 100}),
            ),
        );
    }
    // Both directions, across hosts (a1 on h1) and on one host (a4, c1 on h2).
    let before = stats(&t);
    let across = ping(&t, "a1", &c1);
    let across_tcp = tcp(&t, "a1", &c1, TCP_BYTES, TCP_TIMEOUT);
    let local = ping(&t, "a4", &c1);
    let back = ping(&t, "c1", &a1);
    let back_tcp = tcp(&t, "c1", &a4, TCP_BYTES, TCP_TIMEOUT);
    let delta = since(&t, &before);
    println!("peering a-c: {across:?} {across_tcp:?} {local:?} {back:?} {back_tcp:?}");
    assert_answered(&across, "a1 (h1) -> c1 (h2) over the accepted peering", 63);
    assert_tcp_ok(&across_tcp, "a1 -> c1");
    assert_answered(&local, "a4 -> c1 (both on h2)", 63);
    assert_answered(&back, "c1 -> a1", 63);
    assert_tcp_ok(&back_tcp, "c1 -> a4");
    assert_no_drops(&delta, "accepted peering");

    // A peering carries only what each side routes into it: without C's route back, the
    // replies (or already the requests, whose source C no longer expects) are dropped.
    change(
        &mut t,
        Method::DELETE,
        &route_path("tenant-c", "10.0.0.0/16"),
        None,
    );
    let before = stats(&t);
    assert_unanswered(&ping(&t, "a1", &c1), "a1 -> c1 without C's route back");
    let delta = since(&t, &before);
    assert!(
        drops(&delta["h2"]).iter().map(|(_, n)| n).sum::<u64>() >= u64::from(PINGS),
        "h2 should count the dropped packets: {:?}",
        delta["h2"].by_name()
    );
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-c", "10.0.0.0/16", pcx_hop.clone())),
    );
    assert_answered(&ping(&t, "a1", &c1), "a1 -> c1 with the route back", 63);

    // The chain A - C - D: C reaches both, A and D never reach each other.
    let resp = t
        .request(
            Method::POST,
            "/v1/peerings",
            Some(&serde_json::json!({"name": "c-d", "vpc": "tenant-c", "peer_vpc": "tenant-d"})),
        )
        .unwrap()
        .error_for_status()
        .unwrap();
    t.wait_applied(resp.generation().unwrap()).unwrap();
    change(&mut t, Method::POST, "/v1/peerings/c-d/accept", None);
    let cd_hop = serde_json::json!({"type": "peering", "peering": "c-d"});
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-c", "10.2.0.0/16", cd_hop.clone())),
    );
    change(
        &mut t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-d", "10.1.0.0/16", cd_hop.clone())),
    );
    // A may not even ask for D's addresses through C, nor use C's other peering.
    let e = refused(
        &t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-a", "10.2.0.0/16", pcx_hop.clone())),
        400,
    );
    assert_eq!(e.field.as_deref(), Some("destination"), "{e}");
    let e = refused(
        &t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-a", "10.2.0.0/16", cd_hop.clone())),
        400,
    );
    assert_eq!(e.field.as_deref(), Some("next_hop.peering"), "{e}");
    let e = refused(
        &t,
        Method::POST,
        "/v1/routes",
        Some(route_body("tenant-d", "10.0.0.0/16", cd_hop.clone())),
        400,
    );
    assert_eq!(e.field.as_deref(), Some("destination"), "{e}");
    let before = stats(&t);
    let c_to_d = ping(&t, "c1", &d1);
    let c_to_a = ping(&t, "c1", &a1);
    let a_to_d = ping(&t, "a1", &d1);
    let d_to_a = ping(&t, "d1", &a1);
    let a_to_d_tcp = tcp(&t, "a1", &d1, 1000, TCP_FAIL_TIMEOUT);
    let delta = since(&t, &before);
    println!(
        "chain: c->d {c_to_d:?} c->a {c_to_a:?} a->d {a_to_d:?} d->a {d_to_a:?} tcp a->d {a_to_d_tcp:?}\nh1 {:?}",
        delta["h1"].by_name()
    );
    assert_answered(&c_to_d, "c1 -> d1 (peering c-d)", 63);
    assert_answered(&c_to_a, "c1 -> a1 (peering a-c)", 63);
    assert_unanswered(&a_to_d, "a1 -> d1 through the chain a-c, c-d");
    assert_unanswered(&d_to_a, "d1 -> a1 through the chain c-d, a-c");
    assert!(!a_to_d_tcp.ok(), "tcp a1 -> d1 got through: {a_to_d_tcp:?}");
    assert!(packets(&delta, "h1", Reason::DropNoRoute) >= 2 * u64::from(PINGS));
    // No host's maps route tenant-a's VNI toward D's addresses, nor D's toward A's.
    let (vni_a, vni_d) = (vpc(&t, "tenant-a").vni, vpc(&t, "tenant-d").vni);
    for h in ["h1", "h2"] {
        let maps = t.maps(h).expect("pinned maps");
        let routes: Vec<RouteEntry> = maps
            .routes
            .iter()
            .map(|(p, nh)| RouteEntry {
                prefix: *p,
                next_hop: sluice_dataplane::vpc::tables::NextHopEntry {
                    kind: nh.kind,
                    vni: nh.vni,
                    ip: nh.ip,
                },
            })
            .collect();
        let mut sorted = routes.clone();
        sorted.sort();
        assert_eq!(
            lookup(&sorted, vni_a, ip4(&d1)),
            None,
            "{h}: A routes to d1"
        );
        assert_eq!(
            lookup(&sorted, vni_d, ip4(&a1)),
            None,
            "{h}: D routes to a1"
        );
    }

    // Deleting a VPC that still has subnets, NICs and peerings is refused with the list.
    let e = refused(&t, Method::DELETE, "/v1/vpcs/tenant-a", None, 409);
    println!("delete tenant-a: {e}");
    let a = vpc(&t, "tenant-a");
    for dependent in [nic(&t, "a1").id, nic(&t, "a4").id, pcx.id.clone()] {
        assert!(
            e.dependents.iter().any(|d| d.ends_with(&dependent)),
            "dependents of {} should name {dependent}: {:?}",
            a.id,
            e.dependents
        );
    }
    assert!(
        e.dependents.iter().any(|d| d.starts_with("subnet/")),
        "{:?}",
        e.dependents
    );
    assert_eq!(vpc(&t, "tenant-a"), a, "a refused delete changed the VPC");

    // Deleting NIC a4 (h2, 10.0.1.12) removes its port and endpoint on h2 and its endpoint
    // on h1; tenant-b's b4, same address on the same host, is untouched.
    let a4_ifindex = t.host_ifindex("a4").unwrap();
    let b4_ifindex = t.host_ifindex("b4").unwrap();
    let vni_b = vpc(&t, "tenant-b").vni;
    let key = |vni, ip: &str| EndpointKey { vni, ip: ip4(ip) };
    let h2_maps = t.maps("h2").unwrap();
    assert!(
        h2_maps.ports.contains_key(&a4_ifindex),
        "{:?}",
        h2_maps.ports
    );
    assert!(h2_maps.endpoints[&key(vni_a, &a4)].flags & ENDPOINT_LOCAL != 0);
    assert!(t
        .maps("h1")
        .unwrap()
        .endpoints
        .contains_key(&key(vni_a, &a4)));
    change(&mut t, Method::DELETE, "/v1/nics/a4", None);
    let (h1_maps, h2_maps) = (t.maps("h1").unwrap(), t.maps("h2").unwrap());
    assert!(
        !h2_maps.ports.contains_key(&a4_ifindex),
        "a4's port is still on h2"
    );
    assert!(!h2_maps.endpoints.contains_key(&key(vni_a, &a4)));
    assert!(!h1_maps.endpoints.contains_key(&key(vni_a, &a4)));
    assert!(
        h2_maps.ports.contains_key(&b4_ifindex),
        "b4's port went too"
    );
    assert!(h2_maps.endpoints.contains_key(&key(vni_b, &a4)));
    assert!(h1_maps.endpoints.contains_key(&key(vni_b, &a4)));
    let s = t.agent_state("h2").unwrap();
    assert!(
        !s.attached.contains(&t.vm("a4").port.host_if),
        "h2's agent still has xdp_vm on a4's interface: {s:?}"
    );
    let before = stats(&t);
    assert_unanswered(&ping(&t, "a1", &a4), "a1 -> deleted a4");
    let delta = since(&t, &before);
    assert!(packets(&delta, "h1", Reason::DropNoEndpoint) >= u64::from(PINGS));
    let r = refused(&t, Method::GET, "/v1/nics/a4", None, 404);
    assert_eq!(r.kind.as_deref(), Some("not_found"));
    assert_answered(
        &ping(&t, "b1", &t.vm("b4").ip()),
        "b1 -> b4 (tenant-b's 10.0.1.12) after a4 is deleted",
        64,
    );

    // D emptied piece by piece, then deleted: its VNI leaves h1's maps.
    change(
        &mut t,
        Method::DELETE,
        &route_path("tenant-d", "10.1.0.0/16"),
        None,
    );
    change(
        &mut t,
        Method::DELETE,
        &route_path("tenant-c", "10.2.0.0/16"),
        None,
    );
    change(&mut t, Method::DELETE, "/v1/peerings/c-d", None);
    change(&mut t, Method::DELETE, "/v1/nics/d1", None);
    change(&mut t, Method::DELETE, "/v1/subnets/app?vpc=tenant-d", None);
    change(&mut t, Method::DELETE, "/v1/vpcs/tenant-d", None);
    for h in ["h1", "h2"] {
        let maps = t.maps(h).unwrap();
        assert!(!maps.vnis.contains_key(&vni_d), "{h} still has D's VNI");
        assert!(
            maps.routes.keys().all(|p| p.vni != vni_d),
            "{h}: D's routes"
        );
        assert!(
            maps.endpoints.keys().all(|k| k.vni != vni_d),
            "{h}: D's NICs"
        );
    }
    assert_unanswered(&ping(&t, "c1", &d1), "c1 -> d1 after D is gone");
    drop(servers);
    watch_b.finish();
    println!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// The demo (`scripts/demo.sh`): the default lab, shown working. Also a test, so the
/// README's main command is checked by CI; `SLUICE_LAB_HOLD=1` keeps the lab up until Enter.
#[test]
fn demo_default_lab() {
    if !support::privileged("demo_default_lab") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let lab = Lab::new().expect("lab");
    let file = default_lab_path();
    step(&format!(
        "lab {}: fabric, h1 (sluiced: controller + agent), h2 (sluiced: agent), a VM per NIC of {}",
        lab.name(),
        file.display()
    ));
    let mut t = default_lab(&lab);
    let ctl = sluicectl();
    let api = t.controller_api().to_string();
    for h in t.hosts() {
        let s = t.agent_state(&h.name).unwrap();
        println!(
            "{}: VTEP {} on {}, API {}, agent applied generation {:?}, XDP on {:?}",
            h.name,
            h.underlay.ip,
            h.underlay.ifname,
            h.daemon.api(),
            s.applied_generation,
            s.attached
        );
    }
    println!("VMs (namespace {}-<name>, interface eth0):", lab.name());
    for v in t.vms() {
        println!(
            "  {:<3} {:<9} {:<10} {} on {}, xdp_vm on {}",
            v.name,
            v.vpc,
            v.ip(),
            sluice_dataplane::lab::overlay::format_mac(&v.port.mac),
            v.port.host,
            v.port.host_if
        );
    }
    step("the intent, as the controller holds it (sluicectl over h1's API)");
    for args in [
        &["list", "hosts"][..],
        &["list", "vpcs"],
        &["list", "nics"],
        &["get", "route-table", "tenant-a"],
    ] {
        show(&ctl, &api, args);
    }
    let path = file.to_string_lossy().into_owned();
    step("applying the lab's file again changes nothing (apply is idempotent)");
    show(&ctl, &api, &["apply", "-f", &path]);

    let watch_vms = watch(&t, &["tenant-a", "tenant-b"]);
    let _servers: Vec<_> = t
        .vms()
        .iter()
        .map(|v| server(&t, &v.name, &v.vpc))
        .collect();
    let before = stats(&t);
    step("traffic: both tenants at once, over the same addresses, within and across hosts");
    for (from, to) in [
        ("a1", "a4"),
        ("b2", "b1"),
        ("a1", "a3"),
        ("b1", "b3"),
        ("a1", "a2"),
        ("b2", "b3"),
        ("b1", "b4"),
    ] {
        demo_traffic(&t, from, to, true);
    }
    step("XDP counters that moved, per host (from each daemon's /v1/stats)");
    for (h, d) in since(&t, &before) {
        let moved: Vec<String> = d
            .by_name()
            .into_iter()
            .map(|(r, c)| format!("{r} +{}", c.packets))
            .collect();
        println!("{h}: {}", moved.join(", "));
    }

    step("a route added later wins when it is more specific: tenant-a 10.0.2.10/32 -> blackhole");
    assert!(show(
        &ctl,
        &api,
        &[
            "create",
            "route",
            "--vpc",
            "tenant-a",
            "--destination",
            "10.0.2.10/32",
            "--next-hop",
            "blackhole"
        ]
    ));
    let g = t.wait_current().expect("agents apply the route");
    println!("every agent applied generation {g}");
    let before = stats(&t);
    demo_traffic(&t, "a1", "a3", false);
    demo_traffic(&t, "a1", "a4", true);
    demo_traffic(&t, "b1", "b3", true);
    for (h, d) in since(&t, &before) {
        println!(
            "{h}: drop_blackhole +{}",
            d.get(Reason::DropBlackhole).packets
        );
    }
    assert!(show(
        &ctl,
        &api,
        &["delete", "route", "10.0.2.10/32", "--vpc", "tenant-a"]
    ));
    t.wait_current().expect("agents remove the route");
    demo_traffic(&t, "a1", "a3", true);

    step("security groups: tenant-a's default group denies everything from a1 (priority 10)");
    assert!(show(
        &ctl,
        &api,
        &[
            "create",
            "rule",
            "--vpc",
            "tenant-a",
            "--sg",
            "default",
            "--direction",
            "ingress",
            "--protocol",
            "all",
            "--cidr",
            "10.0.1.10/32",
            "--action",
            "deny",
            "--priority",
            "10",
            "--description",
            "demo: deny a1"
        ]
    ));
    t.wait_current().expect("agents apply the rule");
    let before = stats(&t);
    demo_traffic(&t, "a1", "a3", false);
    demo_traffic(&t, "b1", "b3", true);
    for (h, d) in since(&t, &before) {
        println!(
            "{h}: drop_sg_ingress +{}",
            d.get(Reason::DropSgIngress).packets
        );
    }
    let group: serde_json::Value = client::blocking_get(
        t.controller_api(),
        "/v1/security-groups/default?vpc=tenant-a",
    )
    .and_then(|r| r.error_for_status())
    .and_then(|r| r.json())
    .expect("tenant-a's default group");
    let rule = group["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["description"] == "demo: deny a1"))
        .and_then(|r| r["id"].as_str())
        .expect("the demo rule")
        .to_string();
    assert!(show(
        &ctl,
        &api,
        &["delete", "rule", &rule, "--vpc", "tenant-a", "--sg", "default"]
    ));
    t.wait_current().expect("agents remove the rule");
    demo_traffic(&t, "a1", "a3", true);

    step("isolation: what tcpdump saw on every VM interface during all of this");
    watch_vms.finish();

    demo_nat(&mut t, &ctl, &api);
    demo_lb(&mut t, &ctl, &api);
    for h in t.hosts() {
        step(&format!(
            "sluicectl --api {} stats  ({})",
            h.daemon.api(),
            h.name
        ));
        show(&ctl, &h.daemon.api(), &["stats"]);
    }
    if std::env::var("SLUICE_LAB_HOLD").as_deref() == Ok("1") {
        step("the lab stays up; try:");
        println!(
            "  ip netns exec {} ping {}",
            lab.netns("a1"),
            t.vm("a3").ip()
        );
        println!(
            "  ip netns exec {} ping {}",
            lab.netns("b1"),
            t.vm("b3").ip()
        );
        println!("  {} --api {api} list nics", ctl.display());
        println!(
            "  {} --api {} status",
            ctl.display(),
            t.hosts()[1].daemon.api()
        );
        hold();
    }
    step("removing the lab");
}

/// One line of demo traffic: ping and a TCP echo, which must get through or not.
fn demo_traffic(t: &TopologyLab, from: &str, to: &str, through: bool) {
    let (f, d) = (t.vm(from), t.vm(to));
    let p = ping(t, from, &d.ip());
    let c = tcp(
        t,
        from,
        &d.ip(),
        TCP_BYTES,
        if through {
            TCP_TIMEOUT
        } else {
            TCP_FAIL_TIMEOUT
        },
    );
    println!(
        "{:<9} {from} {} on {} -> {to} {} on {}: ping {}/{} answered (ttl {}), TCP echo {}",
        f.vpc,
        f.ip(),
        f.port.host,
        d.ip(),
        d.port.host,
        p.received,
        p.transmitted,
        p.ttls.first().map_or("-".to_string(), u8::to_string),
        if c.ok() {
            format!("{} bytes intact", c.sent)
        } else {
            format!("failed ({})", c.error.as_deref().unwrap_or("corrupted"))
        }
    );
    if through {
        assert_eq!(p.received, p.transmitted, "{from} -> {to}: {p:?}");
        assert_tcp_ok(&c, &format!("{from} -> {to}"));
    } else {
        assert_eq!(p.received, 0, "{from} -> {to} should be dropped: {p:?}");
        assert!(!c.ok(), "{from} -> {to} should be dropped: {c:?}");
    }
}

/// Builds the lab in `$SLUICE_LAB_FILE` (default `lab/default.yaml`) and keeps it up until
/// Enter is pressed: `scripts/lab.sh up [FILE]`.
#[test]
#[ignore = "brings a lab up and waits for Enter; run by scripts/lab.sh up"]
fn lab_up() {
    if !support::privileged("lab_up") {
        return;
    }
    let _serial = support::one_lab_at_a_time();
    let file = std::env::var_os("SLUICE_LAB_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(default_lab_path);
    let topology = load_topology(&file).unwrap_or_else(|e| panic!("{e:#}"));
    let lab = Lab::new().expect("lab");
    step(&format!("lab {} from {}", lab.name(), file.display()));
    let t = TopologyLab::build(&lab, topology, Path::new(SLUICED))
        .unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    for h in t.hosts() {
        println!(
            "host {:<8} namespace {}  VTEP {} on {}  sluicectl --api {}{}",
            h.name,
            lab.netns(&h.name),
            h.underlay.ip,
            h.underlay.ifname,
            h.daemon.api(),
            if h.controller { "  (controller)" } else { "" }
        );
    }
    for v in t.vms() {
        println!(
            "vm   {:<8} namespace {}  {}/{} on eth0, {} on {}  ({})",
            v.name,
            lab.netns(&v.name),
            v.ip(),
            v.port.prefix_len,
            v.port.host_if,
            v.port.host,
            v.vpc
        );
    }
    println!(
        "every agent applied generation {}; the posted topology is {}",
        t.generation(),
        lab.run_dir().join("topology.yaml").display()
    );
    if let Some(v) = t.vms().first() {
        println!("try: ip netns exec {} ping <address>", lab.netns(&v.name));
    }
    hold();
    step("removing the lab");
}

/// Waits for Enter on the terminal (or stdin without one).
fn hold() {
    use std::io::BufRead;
    println!("\npress Enter to tear the lab down");
    let mut line = String::new();
    match std::fs::File::open("/dev/tty") {
        Ok(tty) => std::io::BufReader::new(tty).read_line(&mut line).ok(),
        Err(_) => std::io::stdin().lock().read_line(&mut line).ok(),
    };
}

/// The demo's NAT part: both tenants (identical addresses) reach the lab's Internet through
/// their own NAT gateway, and a DNAT entry publishes a3's web server.
fn demo_nat(t: &mut TopologyLab, ctl: &Path, api: &str) {
    use sluice_dataplane::lab::internet::{INTERNET, PUBLIC_SERVER};
    let lab = t.lab();
    let _public = lab
        .http_server(INTERNET, 8080, "public")
        .expect("public HTTP server");
    let _web = lab.http_server("a3", 8080, "a3").expect("a3's HTTP server");
    step("NAT: an EIP pool, an EIP per tenant, a NAT gateway with SNAT, a default route to it");
    let mut commands: Vec<Vec<String>> = vec![
        "create eip-pool --name public --cidrs 203.0.113.0/24".into(),
        "create eip --name web-a --pool public".into(),
    ]
    .into_iter()
    .map(|c: String| c.split(' ').map(str::to_string).collect())
    .collect();
    for x in ["a", "b"] {
        for c in [
            format!("create eip --name out-{x} --pool public"),
            format!("create nat-gateway --name gw-{x} --vpc tenant-{x} --subnet web --eips out-{x}"),
            format!("create snat --nat-gateway gw-{x} --cidr 10.0.0.0/16 --eips out-{x}"),
            format!("create route --vpc tenant-{x} --destination 0.0.0.0/0 --next-hop nat-gateway:gw-{x}"),
        ] {
            commands.push(c.split(' ').map(str::to_string).collect());
        }
    }
    for c in [
        "attach eip web-a --nat-gateway gw-a",
        "create dnat --nat-gateway gw-a --eip web-a --protocol tcp --public-port 80 --private-ip 10.0.2.10 --private-port 8080",
        "create rule --vpc tenant-a --sg default --direction ingress --protocol tcp --ports 8080 --cidr 0.0.0.0/0 --action allow --priority 20",
        "list eips",
    ] {
        commands.push(c.split(' ').map(str::to_string).collect());
    }
    for c in &commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        assert!(show(ctl, api, &args), "sluicectl {}", c.join(" "));
    }
    t.wait_current().expect("agents apply NAT");
    let before = stats(t);
    let url = format!("http://{PUBLIC_SERVER}:8080/");
    let mut seen = std::collections::BTreeSet::new();
    for vm in ["a1", "b1", "a3", "b3"] {
        let r = lab.http_get(vm, &url, Duration::from_secs(5)).expect("GET");
        let (_, ip, port) = r.seen().unwrap_or_else(|| panic!("{vm} -> {url}: {r:?}"));
        println!(
            "{vm} ({}) GET {url}: the server saw {ip}:{port}",
            t.vm(vm).ip()
        );
        assert!(
            seen.insert((ip, port)),
            "{vm}: a public (address, port) twice"
        );
    }
    let web: serde_json::Value = client::blocking_get(t.controller_api(), "/v1/eips/web-a")
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("EIP web-a");
    let web = web["address"].as_str().expect("address").to_string();
    let r = lab
        .http_get(INTERNET, &format!("http://{web}/"), Duration::from_secs(5))
        .expect("GET");
    let (name, ip, _) = r
        .seen()
        .unwrap_or_else(|| panic!("Internet -> {web}: {r:?}"));
    assert_eq!(name, "a3");
    println!("the Internet ({PUBLIC_SERVER}) GET http://{web}/ (DNAT to a3:8080): {name} saw {ip}");
    for (h, d) in since(t, &before) {
        println!(
            "{h}: fwd_nat_out +{}, fwd_nat_in +{}, fwd_nat_owner +{}",
            d.get(Reason::FwdNatOut).packets,
            d.get(Reason::FwdNatIn).packets,
            d.get(Reason::FwdNatOwner).packets
        );
    }
}

/// A load balancer in tenant a: VIP 10.0.1.100, tcp 80 over a2 (h1), a3 and a4 (h2, half
/// the weight) with HTTP health checks through the VPC; reached from a1 and, through a DNAT
/// entry of the NAT gateway (EIP web-a port 81), from the Internet.
fn demo_lb(t: &mut TopologyLab, ctl: &Path, api: &str) {
    use sluice_dataplane::lab::internet::INTERNET;
    let lab = t.lab();
    let _servers: Vec<_> = ["a2", "a3", "a4"]
        .into_iter()
        .map(|vm| lab.http_server(vm, 8080, vm).expect("backend HTTP server"))
        .collect();
    step("load balancer: a VIP in tenant a's web subnet, tcp 80 over a2, a3 and a4 (weight 50)");
    for c in [
        "lb create --name web --vpc tenant-a --subnet web --vip 10.0.1.100",
        "lb listener add web --protocol tcp --port 80 --backend a2:8080 --backend a3:8080 --backend a4:8080:50 --check http --check-path /health --interval-ms 1000 --timeout-ms 500",
        "create dnat --nat-gateway gw-a --eip web-a --protocol tcp --public-port 81 --private-ip 10.0.1.100 --private-port 80",
    ] {
        let args: Vec<&str> = c.split(' ').collect();
        assert!(show(ctl, api, &args), "sluicectl {c}");
    }
    t.wait_current().expect("agents apply the load balancer");
    // The agents' checks report every backend healthy within a few intervals.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status: serde_json::Value =
            client::blocking_get(t.controller_api(), "/v1/load-balancers/web/status")
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json())
                .expect("status");
        let healthy = status["listeners"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.iter().all(|b| b["health"] == "healthy"));
        if healthy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backends never healthy: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut tally = std::collections::BTreeMap::new();
    for _ in 0..25 {
        let r = lab
            .http_get("a1", "http://10.0.1.100/", Duration::from_secs(5))
            .expect("GET");
        let (name, ip, _) = r.seen().unwrap_or_else(|| panic!("a1 -> VIP: {r:?}"));
        assert_eq!(ip, t.vm("a1").ip(), "the backend sees the client");
        *tally.entry(name).or_insert(0) += 1;
    }
    println!("a1 GET http://10.0.1.100/ x25: {tally:?}");
    assert!(tally.len() >= 2, "one backend took everything: {tally:?}");
    let web: serde_json::Value = client::blocking_get(t.controller_api(), "/v1/eips/web-a")
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("EIP web-a");
    let url = format!("http://{}:81/", web["address"].as_str().expect("address"));
    let r = lab
        .http_get(INTERNET, &url, Duration::from_secs(5))
        .expect("GET");
    let (name, ip, _) = r
        .seen()
        .unwrap_or_else(|| panic!("Internet -> {url}: {r:?}"));
    println!("the Internet GET {url} (DNAT to the VIP): {name} saw {ip}");
    show(ctl, api, &["lb", "status", "web"]);
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// `sluicectl`: `$SLUICECTL`, or next to the `sluiced` this test runs.
fn sluicectl() -> std::path::PathBuf {
    std::env::var_os("SLUICECTL")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(SLUICED).with_file_name("sluicectl"))
}

/// Runs `sluicectl --api API args...` and prints what it says; whether it succeeded.
fn show(ctl: &Path, api: &str, args: &[&str]) -> bool {
    println!("$ sluicectl --api {api} {}", args.join(" "));
    match std::process::Command::new(ctl)
        .arg("--api")
        .arg(api)
        .args(args)
        .output()
    {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                print!("({}) {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            out.status.success()
        }
        Err(e) => {
            println!("(could not run {}: {e})", ctl.display());
            false
        }
    }
}
