//! The load balancer paths of `micro`: the measured VM of the VPC paths (on `lo`, 10
//! routes, no security group) sending to a VIP of its subnet, in an instance of its own.
//! The VIP has [`LB_PORTS`] UDP listeners from port [`LB_PORT`], each with a Maglev table
//! of the default size ([`MAGLEV_SIZE`] entries) naming its backend: the local NIC
//! [`LOCAL_PEER`] on port [`BACKEND_PORT`] + i (so every packet ends as `fwd_local`).
//!
//! - `lb_new_flow`: a new flow each packet (its source port counts up, then its listener
//!   port): forward entry (miss), listener, table, backend, conflict lookup, rewrite,
//!   translated entry and forward entry inserted, counted.
//! - `lb_established`: a live balanced flow: forward entry hit, backend still usable,
//!   rewrite, translated entry kept.
//! - `lb_no_listener_drop`: a VIP port no listener serves: dropped.
//! - `lb_no_backend_drop`: a listener ([`NO_BACKEND_PORT`]) whose every backend is down
//!   and that fails closed: as the agent writes it, table size 0 and no table, its
//!   backend's slot without `BACKEND_USABLE`: dropped.
//! - `lb_no_table_drop`: a listener ([`NO_TABLE_PORT`]) naming a table slot with no table
//!   in it: dropped. A guard: the agent puts a slot's table in before any listener names
//!   it and takes it out only after no listener does, so this stands for maps written
//!   out of that order (another writer, a bug), not for a moment of a table swap.
//! - `lb_conflict_drop`: a TCP listener on [`LB_PORT`] whose pick (the backend NIC on
//!   [`BACKEND_PORT`]) makes a translated tuple a live connection entry that is not this
//!   VIP's already holds (the client talking to the backend directly from the same
//!   source port): forward entry (miss), listener, table, backend, conflict lookup (hit,
//!   live, not a SYN): dropped.
//!
//! `lb_new_flow` and `lb_established` rewrite their frame, so they run through the bench
//! wrapper (new flows: `Method::NewFlows`; the live flow: `Method::RepeatRestoredFrame`);
//! the drops leave their frame untouched and are repeated on it.

use anyhow::{ensure, Context, Result};
use aya::maps::{Array, ArrayOfMaps, HashMap, MapData};
use sluice_common::{
    conntrack::{self, CtEntry, CtKey, CT_COUNT_USERSPACE, TCP_ACK},
    lb::{self, *},
    maps,
    programs::{XDP_BENCH_VM, XDP_VM},
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    stats::Reason,
    vpc::{Endpoint, EndpointKey, Ipv4, ENDPOINT_LB_BACKEND, ENDPOINT_VIP},
};
use sluice_dataplane::{conntrack as ct, loader::Dataplane};

use crate::{
    micro::{run_one, Method, PathSpec, SOURCE_PORT_OFFSET, XDP_DROP, XDP_REDIRECT},
    sg::FLOWS_PER_PORT,
    vpc::{self, Scale, LO, LOCAL_PEER, VM, VNI},
};

/// The VIP, in the measured VM's subnet.
pub const VIP: Ipv4 = [10, 0, 1, 100];
/// The first listener port (the VPC frames' destination port).
pub const LB_PORT: u16 = 5000;
/// Listener ports: new flows take 60,000 source ports on each.
pub const LB_PORTS: u16 = 16;
pub const BACKEND_PORT: u16 = 8080;

/// The base names of the balancer paths (they run on the balancer instance).
pub const PATHS: [&str; 6] = [
    "lb_new_flow",
    "lb_established",
    "lb_no_listener_drop",
    "lb_no_backend_drop",
    "lb_no_table_drop",
    "lb_conflict_drop",
];

/// The fail-closed listener whose every backend is down (UDP), its table slot and its
/// one backend's slot (the backend NIC on `BACKEND_PORT + LB_PORTS`, not usable).
pub const NO_BACKEND_PORT: u16 = LB_PORT + LB_PORTS + 1;
const NO_BACKEND_TABLE: u32 = LB_PORTS as u32;
const NO_BACKEND_SLOT: u32 = LB_PORTS as u32 + 1;
/// The listener (UDP) whose table slot holds no table.
pub const NO_TABLE_PORT: u16 = LB_PORT + LB_PORTS + 2;
const NO_TABLE_TABLE: u32 = LB_PORTS as u32 + 1;
/// The TCP listener on `LB_PORT`: its table names backend slot 1 (the backend NIC on
/// `BACKEND_PORT`, as UDP listener 0's does).
const CONFLICT_TABLE: u32 = LB_PORTS as u32 + 2;
const CONFLICT_BACKEND_SLOT: u32 = 1;
/// The client's source port of the conflicting TCP flow (the UDP flows' ports are
/// 1024 + k and 40000: another protocol's keys anyway).
pub const CONFLICT_SPORT: u16 = 45000;

/// Whether `name` is a balancer path.
pub fn is_lb_path(name: &str) -> bool {
    PATHS.contains(&name)
}

/// Writes the VPC tables (10 routes), the VIP, its listeners, table and backend, and
/// opens the established flow as its first packet would.
pub fn install(dp: &mut Dataplane) -> Result<()> {
    vpc::install(dp, &vpc::tables(Scale::Routes10))?;
    {
        let mut eps: HashMap<_, EndpointKey, Endpoint> =
            HashMap::try_from(dp.map_mut(maps::ENDPOINTS)?)?;
        let peer = EndpointKey {
            vni: VNI,
            ip: LOCAL_PEER,
        };
        let mut e = eps.get(&peer, 0).context("the local peer's endpoint")?;
        e.flags |= ENDPOINT_LB_BACKEND;
        eps.insert(peer, e, 0)?;
        let vip = Endpoint {
            flags: ENDPOINT_VIP,
            ..Default::default()
        };
        eps.insert(EndpointKey { vni: VNI, ip: VIP }, vip, 0)?;
    }
    // Listener `i` has a table of its own naming backend slot `i + 1`: the backend NIC
    // on port `BACKEND_PORT + i`, so flows of two listeners never share a translated tuple.
    for i in 0..u32::from(LB_PORTS) {
        let slot = i + 1;
        let mut backends: Array<_, Backend> = Array::try_from(dp.map_mut(lb::maps::BACKENDS)?)?;
        let b = Backend {
            ip: LOCAL_PEER,
            port: (BACKEND_PORT + i as u16).to_be_bytes(),
            weight: 100,
            flags: BACKEND_USABLE,
        };
        backends.set(slot, b, 0)?;
        write_table(dp, i, slot)?;
        write_listener(dp, LB_PORT + i as u16, IPPROTO_UDP, i, MAGLEV_SIZE)?;
    }
    install_drops(dp)?;
    // The established flow, opened as its first packet would.
    let (action, out) = run_one(dp, XDP_VM, &vpc::from_vm(VIP))?;
    ensure!(
        action == XDP_REDIRECT && out[30..34] == LOCAL_PEER,
        "the balanced flow's first packet was not sent to the backend (action {action})"
    );
    Ok(())
}

/// Table slot `table`: a Maglev table of the default size whose every entry names backend
/// slot `backend`.
fn write_table(dp: &mut Dataplane, table: u32, backend: u32) -> Result<()> {
    let mut inner = Array::<MapData, u32>::create(MAGLEV_SIZE, INNER_MAP_FLAGS)?;
    for j in 0..MAGLEV_SIZE {
        inner.set(j, backend, 0)?;
    }
    let mut tables: ArrayOfMaps<_, Array<MapData, u32>> =
        ArrayOfMaps::try_from(dp.map_mut(lb::maps::TABLES)?)?;
    tables
        .set(table, &inner, 0)
        .with_context(|| format!("writing table slot {table}"))
}

/// A listener on the VIP (`port`, `proto`) with table slot `table` of `size` entries
/// (Maglev).
fn write_listener(dp: &mut Dataplane, port: u16, proto: u8, table: u32, size: u32) -> Result<()> {
    let mut listeners: HashMap<_, ListenerKey, Listener> =
        HashMap::try_from(dp.map_mut(lb::maps::LISTENERS)?)?;
    let k = ListenerKey {
        vni: VNI,
        vip: VIP,
        port: port.to_be_bytes(),
        proto,
        _pad: 0,
    };
    let l = Listener {
        table,
        size,
        scheduler: Scheduler::Maglev as u8,
        flags: 0,
        _pad: [0; 2],
    };
    listeners
        .insert(k, l, 0)
        .with_context(|| format!("writing the listener on port {port}/{proto}"))
}

/// The listeners of the drop paths, written as the agent would, and the connection entry
/// the conflict path's pick runs into.
fn install_drops(dp: &mut Dataplane) -> Result<()> {
    // Fail closed with every backend down: the agent's `resolve` gives size 0 and no
    // table (nothing usable to fill one), and writes the backend's slot without
    // `BACKEND_USABLE`.
    {
        let mut backends: Array<_, Backend> = Array::try_from(dp.map_mut(lb::maps::BACKENDS)?)?;
        let down = Backend {
            ip: LOCAL_PEER,
            port: (BACKEND_PORT + LB_PORTS).to_be_bytes(),
            weight: 100,
            flags: 0,
        };
        backends.set(NO_BACKEND_SLOT, down, 0)?;
    }
    write_listener(dp, NO_BACKEND_PORT, IPPROTO_UDP, NO_BACKEND_TABLE, 0)?;
    // A full-size Maglev listener whose slot holds no table.
    write_listener(dp, NO_TABLE_PORT, IPPROTO_UDP, NO_TABLE_TABLE, MAGLEV_SIZE)?;
    // The TCP listener on LB_PORT: its own table, every entry backend slot 1.
    write_table(dp, CONFLICT_TABLE, CONFLICT_BACKEND_SLOT)?;
    write_listener(dp, LB_PORT, IPPROTO_TCP, CONFLICT_TABLE, MAGLEV_SIZE)?;
    // The client's own established TCP connection to the backend NIC on the tuple the pick
    // translates to, not the VIP's (no balancer link). Established TCP lives 6 hours, so
    // it stays live through the run (UDP's 60 s would not).
    let (key, a_first) = conflict_key();
    let e = CtEntry::new(ct::monotonic_ns(), IPPROTO_TCP, a_first, TCP_ACK);
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK)?)?;
        table
            .insert(key, e, 0)
            .context("inserting the conflicting connection entry")?;
    }
    ct::add_to_slot(dp, CT_COUNT_USERSPACE, 1, 0)?;
    Ok(())
}

/// The connection entry the conflict path's translated tuple meets: VM:CONFLICT_SPORT to
/// the backend NIC's `BACKEND_PORT`, TCP.
fn conflict_key() -> (CtKey, bool) {
    CtKey::new(
        VNI,
        IPPROTO_TCP,
        VM,
        CONFLICT_SPORT.to_be_bytes(),
        LOCAL_PEER,
        BACKEND_PORT.to_be_bytes(),
    )
}

/// The VM's TCP ACK (no SYN: a SYN may take over the tuple of a connection that ended)
/// from `CONFLICT_SPORT` to the VIP's `LB_PORT`.
pub fn conflict_frame() -> Vec<u8> {
    vpc::tcp_from_vm(CONFLICT_SPORT, VIP, LB_PORT, TCP_ACK)
}

/// The VM's UDP frame (`vpc::from_vm`'s ports) to the VIP's `port`.
fn to_port(port: u16) -> Vec<u8> {
    vpc::udp_from_vm(40000, VIP, port)
}

/// The VM's frame to the VIP as flow `k`: its source port counts up, then its listener
/// port.
pub fn next_lb_flow(frame: &[u8], k: u32) -> Vec<u8> {
    let sport = 1024 + (k % FLOWS_PER_PORT) as u16;
    let dport = LB_PORT + ((k / FLOWS_PER_PORT) % u32::from(LB_PORTS)) as u16;
    let mut f = frame.to_vec();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

/// A VIP port past the listeners.
const NO_LISTENER_PORT: u16 = LB_PORT + LB_PORTS + 100;

/// The balancer paths.
pub fn paths() -> Vec<PathSpec> {
    let p = |name: &str, description: &str, method, vary| PathSpec {
        name: name.into(),
        program: XDP_BENCH_VM,
        description: description.into(),
        frame: vpc::from_vm(VIP),
        ingress_ifindex: LO,
        action: XDP_REDIRECT,
        reason: Some(Reason::FwdLocal),
        method,
        scale: None,
        sg: None,
        vary,
    };
    // A drop: the real entry point, repeated on a frame it leaves untouched.
    let drop = |name: &str, description: &str, frame: Vec<u8>, reason: Reason| PathSpec {
        program: XDP_VM,
        frame,
        action: XDP_DROP,
        reason: Some(reason),
        ..p(name, description, Method::Repeat, None)
    };
    vec![
        p(
            "lb_new_flow",
            "VM to a VIP (Maglev, 65,537-entry table), a new flow each packet: forward entry (miss), listener, table, backend, rewrite, translated and forward entries inserted, counted, to the backend's NIC here",
            Method::NewFlows {
                vary_offset: SOURCE_PORT_OFFSET,
            },
            Some(next_lb_flow),
        ),
        p(
            "lb_established",
            "VM to a VIP, a live balanced flow: forward entry (hit), backend usable, rewrite, translated entry kept, to the backend's NIC here",
            Method::RepeatRestoredFrame,
            None,
        ),
        drop(
            "lb_no_listener_drop",
            "VM to a VIP port no listener serves: forward entry (miss), listener (miss): dropped",
            to_port(NO_LISTENER_PORT),
            Reason::DropLbNoListener,
        ),
        drop(
            "lb_no_backend_drop",
            &format!("VM to a VIP listener (UDP {NO_BACKEND_PORT}) whose every backend is down and that fails closed (as the agent writes it: table size 0, no table, the backend not usable): forward entry (miss), listener, size 0: dropped"),
            to_port(NO_BACKEND_PORT),
            Reason::DropLbNoBackend,
        ),
        drop(
            "lb_no_table_drop",
            &format!("VM to a VIP listener (UDP {NO_TABLE_PORT}, Maglev) whose table slot holds no table (a guard: the agent's order of writes never leaves a listener naming an empty slot): forward entry (miss), listener, Maglev hash, table (miss): dropped"),
            to_port(NO_TABLE_PORT),
            Reason::DropLbNoTable,
        ),
        drop(
            "lb_conflict_drop",
            &format!("VM's TCP ACK to a VIP listener (TCP {LB_PORT}) whose pick (the backend NIC on {BACKEND_PORT}) gives a translated tuple held by the client's own live connection to that backend (established, not the VIP's): forward entry (miss), listener, Maglev hash, table, backend, conflict lookup (hit, live, not a SYN): dropped"),
            conflict_frame(),
            Reason::DropLbConflict,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lb_path_is_listed_and_named_once() {
        crate::micro::tests::assert_listed_once_and_drops_repeat(paths(), &PATHS);
        assert!(PATHS.iter().all(|n| is_lb_path(n)));
    }

    #[test]
    fn drop_listeners_are_apart_from_the_balanced_ones() {
        let balanced = LB_PORT..LB_PORT + LB_PORTS;
        for port in [NO_LISTENER_PORT, NO_BACKEND_PORT, NO_TABLE_PORT] {
            assert!(!balanced.contains(&port));
        }
        assert_ne!(NO_BACKEND_PORT, NO_TABLE_PORT);
        assert_ne!(NO_LISTENER_PORT, NO_BACKEND_PORT);
        assert_ne!(NO_LISTENER_PORT, NO_TABLE_PORT);
        // Table slots past the balanced listeners' 0..LB_PORTS, and apart.
        let slots = [NO_BACKEND_TABLE, NO_TABLE_TABLE, CONFLICT_TABLE];
        assert!(slots
            .iter()
            .all(|s| *s >= u32::from(LB_PORTS) && *s < MAX_LISTENERS));
        assert!(slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2]);
        // The down backend's slot is none of the balanced listeners' 1..=LB_PORTS.
        assert!(NO_BACKEND_SLOT > u32::from(LB_PORTS));
    }

    #[test]
    fn conflict_frame_is_a_tcp_ack_on_the_conflicting_tuple() {
        let f = conflict_frame();
        assert_eq!(f.len(), 60);
        assert_eq!(f[23], IPPROTO_TCP);
        assert_eq!(f[26..30], VM);
        assert_eq!(f[30..34], VIP);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), CONFLICT_SPORT);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), LB_PORT);
        assert_eq!(f[47] & 0x3f, TCP_ACK);
        // The entry in the way is TCP (the UDP flows never share its key) and live.
        let (key, a_first) = conflict_key();
        assert_eq!(key.proto, IPPROTO_TCP);
        let e = CtEntry::new(0, IPPROTO_TCP, a_first, TCP_ACK);
        assert_eq!(
            e.state,
            sluice_common::conntrack::CtState::Established as u8
        );
    }

    #[test]
    fn new_flows_never_repeat_a_tuple_and_stay_on_listeners() {
        let base = vpc::from_vm(VIP);
        let (a, b) = (next_lb_flow(&base, 0), next_lb_flow(&base, FLOWS_PER_PORT));
        assert_ne!(a[34..38], b[34..38]);
        let dport = u16::from_be_bytes([a[36], a[37]]);
        assert!((LB_PORT..LB_PORT + LB_PORTS).contains(&dport));
    }
}
