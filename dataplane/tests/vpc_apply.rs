//! The agent's map I/O against the real kernel maps: apply, read back, change, converge.
//!
//! Maps are private (`Dataplane::load(None)`) and nothing is attached, so interfaces are
//! resolved with fake ifindexes; `resolve_from_system` is tested on `lo` and inside a lab
//! namespace.
mod support;

use std::{fs::File, os::fd::AsRawFd, thread};

use aya::maps::LpmTrie;
use sluice_common::{
    maps,
    vpc::{
        ApplianceVtepKey, Ipv4, Mac, NextHop, NextHopKind, Port, RouteKey, VniInfo,
        ENDPOINT_APPLIANCE, ENDPOINT_DIRECT, ENDPOINT_LOCAL, ENDPOINT_PEER_SOURCE, MAX_PORTS,
        MAX_VNIS,
    },
};
use sluice_dataplane::{
    lab::{cmd, Lab},
    loader::Dataplane,
    vpc::{
        apply::{apply, execute, read_tables, resolve_from_system, trie_key, ApplyError, MapSync},
        diff::{diff, resolve, ResolveError, ResolvedTables, Step, TableDiff, VpcMap},
        tables::{
            EndpointEntry, HostTables, HostUnderlay, LocalPort, NextHopEntry, RouteEntry,
            RoutePrefix,
        },
    },
};

const VTEP_SELF: Ipv4 = [192, 0, 2, 1];
const VTEP_A: Ipv4 = [192, 0, 2, 2];
const VTEP_B: Ipv4 = [192, 0, 2, 3];

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
        mac: [2, vni as u8, ip[0], ip[1], ip[2], ip[3]],
        vtep,
        flags: if ifname.is_some() { ENDPOINT_LOCAL } else { 0 },
        ifname: ifname.map(str::to_string),
    }
}

fn appliance(e: EndpointEntry) -> EndpointEntry {
    EndpointEntry {
        flags: e.flags | ENDPOINT_APPLIANCE,
        ..e
    }
}

fn port(vni: u32, ip: Ipv4) -> Port {
    Port {
        vni,
        ip,
        mac: [2, vni as u8, ip[0], ip[1], ip[2], ip[3]],
        flags: 0,
        subnet: [ip[0], ip[1], ip[2], 0],
        subnet_mask: [255, 255, 255, 0],
        vpc: [ip[0], ip[1], 0, 0],
        vpc_mask: [255, 255, 0, 0],
    }
}

fn local_route(vni: u32, ip: Ipv4, len: u8) -> RouteEntry {
    route(vni, ip, len, hop(NextHopKind::Local, vni, [0; 4]))
}

/// Two tenants with identical addresses (VNIs 100 and 200), a local and a remote NIC
/// each, an appliance route in tenant 100 (to its remote NIC, an appliance).
fn tables_v1() -> HostTables {
    HostTables {
        underlay: Some(HostUnderlay {
            ifname: "under0".into(),
            vtep: VTEP_SELF,
            router_mac: [2, 0, 0, 0, 0, 1],
            underlay_mtu: 1500,
        }),
        ports: vec![
            LocalPort {
                ifname: "vm1".into(),
                port: port(100, [10, 0, 0, 5]),
            },
            LocalPort {
                ifname: "vm2".into(),
                port: port(200, [10, 0, 0, 5]),
            },
        ],
        endpoints: vec![
            endpoint(100, [10, 0, 0, 5], VTEP_SELF, Some("vm1")),
            appliance(endpoint(100, [10, 0, 1, 9], VTEP_A, None)),
            endpoint(200, [10, 0, 0, 5], VTEP_SELF, Some("vm2")),
            endpoint(200, [10, 0, 1, 9], VTEP_A, None),
        ],
        routes: vec![
            local_route(100, [10, 0, 0, 0], 24),
            local_route(100, [10, 0, 1, 0], 24),
            route(100, [0; 4], 0, hop(NextHopKind::Nic, 100, [10, 0, 1, 9])),
            local_route(200, [10, 0, 0, 0], 24),
            local_route(200, [10, 0, 1, 0], 24),
        ],
        vnis: vec![100, 200],
        remote_vteps: vec![VTEP_A],
        ..Default::default()
    }
}

/// v1 changed: tenant 200's remote NIC moved to VTEP_B, tenant 100's appliance route became
/// a blackhole, a more specific /28 and a new VPC 300 (peered with 100) appeared, vm2's
/// port is gone with its endpoint and the old VTEP_A neighbour.
fn tables_v2() -> HostTables {
    let mut t = tables_v1();
    t.ports.retain(|p| p.ifname != "vm2");
    t.ports.push(LocalPort {
        ifname: "vm3".into(),
        port: port(300, [10, 1, 0, 7]),
    });
    t.endpoints = vec![
        endpoint(100, [10, 0, 0, 5], VTEP_SELF, Some("vm1")),
        appliance(endpoint(100, [10, 0, 1, 9], VTEP_B, None)),
        EndpointEntry {
            flags: ENDPOINT_PEER_SOURCE | ENDPOINT_LOCAL,
            ..endpoint(100, [10, 1, 0, 7], VTEP_SELF, Some("vm3"))
        },
        endpoint(300, [10, 1, 0, 7], VTEP_SELF, Some("vm3")),
    ];
    t.routes = vec![
        local_route(100, [10, 0, 0, 0], 24),
        local_route(100, [10, 0, 1, 0], 24),
        route(
            100,
            [10, 0, 1, 0],
            28,
            hop(NextHopKind::Blackhole, 100, [0; 4]),
        ),
        route(100, [0; 4], 0, hop(NextHopKind::Blackhole, 100, [0; 4])),
        route(
            100,
            [10, 1, 0, 0],
            16,
            hop(NextHopKind::Peering, 300, [0; 4]),
        ),
        local_route(300, [10, 1, 0, 0], 24),
    ];
    t.vnis = vec![100, 300];
    t.remote_vteps = vec![VTEP_B];
    t
}

fn fake_ifindex(name: &str) -> Option<u32> {
    match name {
        "under0" => Some(2),
        "vm1" => Some(11),
        "vm2" => Some(12),
        "vm3" => Some(13),
        _ => None,
    }
}

fn fake_mac(name: &str) -> Option<Mac> {
    fake_ifindex(name).map(|i| [2, 0xee, 0, 0, 0, i as u8])
}

fn fake_neighbor(vtep: Ipv4) -> Option<Mac> {
    Some([2, 0xaa, 0, 0, 0, vtep[3]])
}

fn resolved(t: &HostTables) -> ResolvedTables {
    resolve(t, fake_ifindex, fake_mac, fake_neighbor)
        .expect("test tables resolve")
        .tables
}

/// The route the kernel's trie picks for `(vni, ip)`, as the datapath would look it up.
fn kernel_route(dp: &Dataplane, vni: u32, ip: Ipv4) -> Option<NextHop> {
    let trie: LpmTrie<_, RouteKey, NextHop> =
        LpmTrie::try_from(dp.map(maps::ROUTES).expect("routes map")).expect("typed trie");
    let key = trie_key(&RoutePrefix { vni, ip, len: 32 });
    trie.get(&key, 0).ok()
}

#[test]
fn apply_converges_on_changed_tables_with_exact_step_counts() {
    if !support::privileged("apply_converges_on_changed_tables_with_exact_step_counts") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("load the eBPF object");
    assert_eq!(
        read_tables(&dp).expect("read fresh maps"),
        ResolvedTables::default(),
        "private maps start empty"
    );

    let v1 = resolved(&tables_v1());
    let counts = apply(&mut dp, &v1).expect("apply v1");
    // HOST 1, UNDERLAY 1, VNIS 2, APPLIANCE_VTEPS 1, ENDPOINTS 4, PORTS 2, ROUTES 5.
    assert_eq!((counts.upserts(), counts.deletes()), (16, 0), "{counts}");
    assert_eq!(read_tables(&dp).expect("read v1"), v1);
    let key = |vtep| ApplianceVtepKey { vni: 100, vtep };
    assert_eq!(
        v1.appliance_vteps.keys().copied().collect::<Vec<_>>(),
        vec![key(VTEP_A)]
    );
    // Every endpoint here is in a Local /24 with nothing more specific: all direct.
    assert!(v1
        .endpoints
        .values()
        .all(|e| e.flags & ENDPOINT_DIRECT != 0));
    let remote = v1.endpoints[&sluice_dataplane::vpc::tables::endpoint_key(100, [10, 0, 1, 9])];
    assert_eq!(remote.vtep_mac, fake_neighbor(VTEP_A).unwrap());

    // The kernel's longest-prefix match sees the same table, per tenant.
    let appliance = kernel_route(&dp, 100, [8, 8, 8, 8]).expect("default route");
    assert_eq!(appliance.kind, NextHopKind::Nic as u32);
    assert_eq!(appliance.ip, [10, 0, 1, 9]);
    assert_eq!(
        kernel_route(&dp, 100, [10, 0, 1, 3]).map(|h| h.kind),
        Some(NextHopKind::Local as u32)
    );
    assert_eq!(
        kernel_route(&dp, 200, [8, 8, 8, 8]),
        None,
        "tenant 200 has no default route"
    );

    let v2 = resolved(&tables_v2());
    let plan = diff(&read_tables(&dp).expect("read before v2"), &v2);
    let expected = [
        // (map, upserts, deletes)
        (VpcMap::Host, 0, 0),
        // VTEP_B learnt, VTEP_A no longer needed.
        (VpcMap::UnderlayNeighbors, 1, 1),
        (VpcMap::Vnis, 1, 1),
        // The appliance moved from VTEP_A to VTEP_B.
        (VpcMap::ApplianceVteps, 1, 1),
        // 100/10.0.1.9 moved; 100/10.1.0.7 (peer source) and 300/10.1.0.7 new; both of
        // tenant 200's gone.
        (VpcMap::Endpoints, 3, 2),
        (VpcMap::Ports, 1, 1),
        // The default route changed in place; /28, /16 peering and 300's /24 new; tenant
        // 200's two routes gone.
        (VpcMap::Routes, 4, 2),
    ];
    let planned = plan.counts();
    for (map, upserts, deletes) in expected {
        let c = planned.get(map);
        assert_eq!(
            (c.upserts, c.deletes),
            (upserts, deletes),
            "{map}: {planned}"
        );
    }
    let done = execute(&mut dp, &plan).expect("apply v2");
    assert_eq!(done, planned);
    assert_eq!(read_tables(&dp).expect("read v2"), v2);
    assert_eq!(
        kernel_route(&dp, 100, [8, 8, 8, 8]).map(|h| h.kind),
        Some(NextHopKind::Blackhole as u32)
    );
    assert_eq!(
        kernel_route(&dp, 100, [10, 0, 1, 3]).map(|h| h.kind),
        Some(NextHopKind::Blackhole as u32),
        "the /28 beats the /24"
    );
    assert_eq!(
        kernel_route(&dp, 100, [10, 0, 1, 200]).map(|h| h.kind),
        Some(NextHopKind::Local as u32)
    );
    assert_eq!(kernel_route(&dp, 200, [10, 0, 0, 5]), None);

    // Applying the same tables again changes nothing.
    assert!(diff(&read_tables(&dp).expect("read again"), &v2).is_empty());
    let again = apply(&mut dp, &v2).expect("apply v2 again");
    assert_eq!((again.upserts(), again.deletes()), (0, 0));

    // Back to nothing: every entry is removed and HOST unconfigured.
    let cleared = apply(&mut dp, &ResolvedTables::default()).expect("clear");
    assert_eq!(cleared.upserts(), 0);
    assert_eq!(cleared.deletes(), v2.len());
    assert_eq!(
        read_tables(&dp).expect("read cleared"),
        ResolvedTables::default()
    );
}

#[test]
fn a_port_beyond_the_array_is_refused_naming_it() {
    if !support::privileged("a_port_beyond_the_array_is_refused_naming_it") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("load the eBPF object");
    let v1 = resolved(&tables_v1());
    apply(&mut dp, &v1).expect("apply v1");
    // The last slot holds a port; one past it cannot exist.
    let mut last = v1.clone();
    last.ports.insert(MAX_PORTS - 1, port(100, [10, 0, 0, 6]));
    apply(&mut dp, &last).expect("the last slot");
    assert_eq!(read_tables(&dp).expect("read back"), last);
    let mut beyond = v1.clone();
    beyond.ports.insert(MAX_PORTS, port(100, [10, 0, 0, 7]));
    let err = apply(&mut dp, &beyond).expect_err("ifindex beyond the array");
    assert!(
        matches!(&err, ApplyError::PortOutOfRange { map, ifindex, capacity }
            if *map == maps::PORTS && *ifindex == MAX_PORTS && *capacity == MAX_PORTS as usize),
        "{err:?}"
    );
    assert!(err.to_string().contains("ifindex 4096"), "{err}");
    let err = MapSync::new()
        .apply(&mut dp, beyond)
        .expect_err("MapSync refuses it too");
    assert!(matches!(err, ApplyError::PortOutOfRange { .. }), "{err:?}");
    assert_eq!(read_tables(&dp).expect("nothing written"), last);
}

#[test]
fn a_full_map_aborts_naming_it_and_the_next_apply_recovers() {
    if !support::privileged("a_full_map_aborts_naming_it_and_the_next_apply_recovers") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("load the eBPF object");
    let v1 = resolved(&tables_v1());
    apply(&mut dp, &v1).expect("apply v1");

    // More VNIs than VNIS holds, plus a route that would come after them.
    let mut too_big = v1.clone();
    for vni in 1000..1000 + MAX_VNIS {
        too_big.vnis.insert(vni, VniInfo::default());
    }
    too_big.routes.insert(
        RoutePrefix {
            vni: 100,
            ip: [10, 9, 0, 0],
            len: 16,
        },
        NextHopEntry {
            kind: NextHopKind::Blackhole as u32,
            vni: 100,
            ip: [0; 4],
        }
        .into(),
    );
    // apply() refuses tables that cannot fit before writing anything.
    let err = apply(&mut dp, &too_big).expect_err("too many VNIs");
    assert!(
        matches!(&err, ApplyError::TooLarge { map, capacity, .. }
            if *map == maps::VNIS && *capacity == MAX_VNIS as usize),
        "{err:?}"
    );
    assert_eq!(read_tables(&dp).expect("read after refusal"), v1);

    // Run blindly, the plan fails at the insert the map has no room for.
    let plan = diff(&v1, &too_big);
    let err = execute(&mut dp, &plan).expect_err("VNIS overflows");
    assert!(
        matches!(&err, ApplyError::MapFull { map, .. } if *map == maps::VNIS),
        "{err:?}"
    );
    assert!(err.to_string().contains(maps::VNIS), "{err}");

    // Stopped in the VNIS phase: earlier entries intact, VNIS full, nothing after written.
    let now = read_tables(&dp).expect("read after the failure");
    assert_eq!(now.vnis.len(), MAX_VNIS as usize);
    assert_eq!(now.endpoints, v1.endpoints);
    assert_eq!(now.ports, v1.ports);
    assert_eq!(now.routes, v1.routes);

    // A desired state that fits converges from there, though VNIS is full: the plan
    // removes stale VNIs before it adds VNI 300.
    let v2 = resolved(&tables_v2());
    apply(&mut dp, &v2).expect("apply v2 after the failure");
    assert_eq!(read_tables(&dp).expect("read v2"), v2);
}

#[test]
fn resolve_from_system_on_loopback() {
    let mut t = HostTables {
        underlay: Some(HostUnderlay {
            ifname: "lo".into(),
            vtep: [127, 0, 0, 1],
            router_mac: [2, 0, 0, 0, 0, 1],
            underlay_mtu: 65536,
        }),
        ports: vec![LocalPort {
            ifname: "lo".into(),
            port: port(100, [10, 0, 0, 5]),
        }],
        // Loopback has no neighbours: the VTEP stays unresolved, which is not an error.
        remote_vteps: vec![[127, 0, 0, 2]],
        ..Default::default()
    };
    let r = resolve_from_system(&t).expect("lo resolves");
    let lo_index = std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .expect("lo's ifindex")
        .trim()
        .parse::<u32>()
        .expect("a number");
    assert_eq!(
        r.tables.ports.keys().copied().collect::<Vec<_>>(),
        vec![lo_index]
    );
    let host = r.tables.host.expect("host configured");
    assert_eq!(host.underlay_ifindex, lo_index);
    assert_eq!(host.underlay_mac, [0; 6]);
    assert_eq!(r.unresolved_neighbors, vec![[127, 0, 0, 2]]);
    assert!(r.tables.underlay_neighbors.is_empty());

    t.ports[0].ifname = "sluice-nope0".into();
    let err = resolve_from_system(&t).expect_err("unknown interface");
    assert!(
        matches!(&err, ResolveError::MissingInterface { ifname, .. } if ifname == "sluice-nope0"),
        "{err:?}"
    );
}

/// `ip -n <ns> -j link show dev <if>`: (ifindex, MAC).
fn link_info(ns: &str, ifname: &str) -> (u32, String) {
    let out = cmd::ip_in(ns, &["-j", "link", "show", "dev", ifname]).expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    (
        v[0]["ifindex"].as_u64().expect("ifindex") as u32,
        v[0]["address"].as_str().expect("address").to_string(),
    )
}

fn mac_string(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The agent runs inside its host's namespace: ifindexes, MACs and the neighbour table
/// must all be that namespace's. A thread entered into the lab namespace stands in for it.
#[test]
fn resolve_from_system_inside_a_host_namespace() {
    if !support::privileged("resolve_from_system_inside_a_host_namespace") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let host_ns = lab.add_host("h").expect("host namespace");
    let peer_ns = lab.add_host("peer").expect("peer namespace");
    let under = lab.ifname("u").expect("name");
    let peer_if = lab.ifname("p").expect("name");
    lab.veth("h", &under, "peer", &peer_if).expect("veth");
    lab.addr("h", &under, "10.99.0.1/24").expect("address");
    lab.addr("peer", &peer_if, "10.99.0.2/24").expect("address");
    lab.up("h", &under).expect("up");
    lab.up("peer", &peer_if).expect("up");

    let tables = HostTables {
        underlay: Some(HostUnderlay {
            ifname: under.clone(),
            vtep: [10, 99, 0, 1],
            router_mac: [2, 0, 0, 0, 0, 1],
            underlay_mtu: 1500,
        }),
        // 10.99.0.2 answers ARP (after the agent's ping); 10.99.0.3 does not exist.
        remote_vteps: vec![[10, 99, 0, 2], [10, 99, 0, 3]],
        ..Default::default()
    };
    let netns_file = File::open(format!("/run/netns/{host_ns}")).expect("open the netns");
    let resolved = thread::spawn(move || {
        // setns affects only this thread (and the commands it spawns).
        let rc = unsafe { libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        resolve_from_system(&tables)
    })
    .join()
    .expect("resolver thread")
    .expect("resolves inside the namespace");

    let (under_index, under_mac) = link_info(&host_ns, &under);
    let (_, peer_mac) = link_info(&peer_ns, &peer_if);
    let host = resolved.tables.host.expect("host configured");
    assert_eq!(host.underlay_ifindex, under_index);
    assert_eq!(mac_string(host.underlay_mac), under_mac);
    let learnt = resolved.tables.underlay_neighbors[&[10, 99, 0, 2]];
    assert_eq!(mac_string(learnt.mac), peer_mac);
    assert_eq!(resolved.unresolved_neighbors, vec![[10, 99, 0, 3]]);
    lab.close().expect("lab cleanup");
}

#[test]
fn map_sync_remembers_what_it_applied_and_rereads_after_forget() {
    if !support::privileged("map_sync_remembers_what_it_applied_and_rereads_after_forget") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("load the eBPF object");
    let mut sync = MapSync::new();
    let v1 = resolved(&tables_v1());
    let v2 = resolved(&tables_v2());
    sync.apply(&mut dp, v1.clone()).expect("apply v1");
    assert_eq!(sync.known(), Some(&v1));
    let counts = sync.apply(&mut dp, v2.clone()).expect("apply v2");
    assert_eq!(counts, diff(&v1, &v2).counts());
    assert_eq!(read_tables(&dp).expect("read v2"), v2);

    // Someone removes a route behind the agent's back: only a re-read notices.
    let stolen = *v2.routes.keys().next().expect("v2 has routes");
    execute(
        &mut dp,
        &TableDiff {
            steps: vec![Step::DeleteRoute(stolen)],
        },
    )
    .expect("delete one route");
    let trusting = sync
        .apply(&mut dp, v2.clone())
        .expect("apply v2 from memory");
    assert_eq!((trusting.upserts(), trusting.deletes()), (0, 0));
    sync.forget();
    let reread = sync
        .apply(&mut dp, v2.clone())
        .expect("apply v2 after forget");
    assert_eq!(reread.get(VpcMap::Routes).upserts, 1);
    assert_eq!(read_tables(&dp).expect("read repaired"), v2);
}
