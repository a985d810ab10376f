//! The load balancer map I/O against the real kernel maps (`lb::apply`): listeners,
//! Maglev and `least_conn` tables (inner maps swapped into the array of maps) and
//! backends written and read back; a re-apply writes nothing; a health change rewrites
//! only its listener's table; a removed listener leaves nothing behind; and while tables
//! are swapped back and forth, a reader that looks as the datapath does (listener, then
//! its table) never finds a missing, short or foreign table. Maps are private
//! (`Dataplane::load(None)`).
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
};

use aya::maps::{Array, HashMap, MapData};
use sluice_common::{
    lb::{
        maps, Backend, Listener, ListenerKey, Scheduler, BACKEND_USABLE, LEAST_CONN_MAX,
        MAGLEV_SIZE,
    },
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};
use sluice_dataplane::{
    intent::lb::{AllDown, HealthCheck, SchedulerKind},
    lb::{
        apply::{active_connections, read_table, LbApplied, LbState},
        BackendRow, LbTables, ListenerRow,
    },
    loader::Dataplane,
};

const VNI: u32 = 42;
const VIP: [u8; 4] = [10, 0, 1, 100];

fn backend(slot: u32, weight: u8) -> BackendRow {
    BackendRow {
        id: format!("lbb-{slot}"),
        slot,
        ip: [10, 0, 1, 10 + slot as u8],
        port: 8080,
        weight,
        nic: None,
        vtep: None,
    }
}

fn listener(
    id: &str,
    proto: u8,
    port: u16,
    slot: u32,
    scheduler: SchedulerKind,
    backends: Vec<BackendRow>,
) -> ListenerRow {
    ListenerRow {
        id: id.into(),
        lb: "lb-1".into(),
        vni: VNI,
        vip: VIP,
        proto,
        port,
        slot,
        scheduler,
        all_down: AllDown::FailOpen,
        health_check: HealthCheck::default(),
        backends,
    }
}

/// tcp 80 (maglev over slots 1-3, table slot 0) and udp 53 (least_conn over 4-5, slot 1).
fn tables() -> LbTables {
    LbTables {
        listeners: vec![
            listener(
                "lbl-1",
                IPPROTO_TCP,
                80,
                0,
                SchedulerKind::Maglev,
                (1..=3).map(|s| backend(s, 10)).collect(),
            ),
            listener(
                "lbl-2",
                IPPROTO_UDP,
                53,
                1,
                SchedulerKind::LeastConn,
                (4..=5).map(|s| backend(s, 10)).collect(),
            ),
        ],
        check_ports: vec![],
    }
}

fn listeners(dp: &Dataplane) -> BTreeMap<ListenerKey, Listener> {
    let m: HashMap<&MapData, ListenerKey, Listener> =
        HashMap::try_from(dp.map(maps::LISTENERS).unwrap()).unwrap();
    m.iter().map(|kv| kv.unwrap()).collect()
}

fn backend_at(dp: &Dataplane, slot: u32) -> Backend {
    let a: Array<&MapData, Backend> = Array::try_from(dp.map(maps::BACKENDS).unwrap()).unwrap();
    a.get(&slot, 0).unwrap()
}

fn slots(t: &[u32]) -> BTreeSet<u32> {
    t.iter().copied().collect()
}

#[test]
fn listeners_tables_and_backends_are_written_and_read_back() {
    if !support::privileged("listeners_tables_and_backends_are_written_and_read_back") {
        return;
    }
    let mut dp = Dataplane::load(None).unwrap();
    let mut lb = LbState::default();
    let t = tables();
    let done = lb.set_tables(&mut dp, &t).unwrap();
    assert_eq!((done.listeners, done.tables, done.backends), (2, 2, 5));

    let l = listeners(&dp);
    let tcp = l[&t.listeners[0].key()];
    assert_eq!((tcp.table, tcp.size), (0, MAGLEV_SIZE));
    assert_eq!(tcp.scheduler, Scheduler::Maglev as u8);
    let udp = l[&t.listeners[1].key()];
    assert_eq!((udp.table, udp.size), (1, 2));
    assert_eq!(udp.scheduler, Scheduler::LeastConn as u8);

    let maglev = read_table(&dp, 0).unwrap().expect("a Maglev table");
    assert_eq!(maglev.len(), MAGLEV_SIZE as usize);
    assert_eq!(slots(&maglev), [1, 2, 3].into());
    let least = read_table(&dp, 1).unwrap().expect("a least_conn table");
    assert_eq!(least.len(), LEAST_CONN_MAX as usize);
    assert_eq!(&least[..4], &[4, 5, 4, 5]);
    assert_eq!(read_table(&dp, 2).unwrap(), None);

    let b = backend_at(&dp, 2);
    assert_eq!(
        (b.ip, b.port, b.weight),
        ([10, 0, 1, 12], 8080u16.to_be_bytes(), 10)
    );
    assert_eq!(b.flags, BACKEND_USABLE);
    assert_eq!(backend_at(&dp, 6), Backend::default());

    // The same again writes nothing; so does a fresh state over the same maps, except the
    // tables it cannot know it wrote (rewritten once, same content).
    assert_eq!(lb.set_tables(&mut dp, &t).unwrap(), LbApplied::default());
    let mut fresh = LbState::default();
    let again = fresh.set_tables(&mut dp, &t).unwrap();
    assert_eq!((again.listeners, again.backends, again.deleted), (0, 0, 0));
    assert_eq!(read_table(&dp, 0).unwrap().unwrap(), maglev);
}

#[test]
fn a_health_change_rewrites_only_its_listeners_table() {
    if !support::privileged("a_health_change_rewrites_only_its_listeners_table") {
        return;
    }
    let mut dp = Dataplane::load(None).unwrap();
    let mut lb = LbState::default();
    let t = tables();
    lb.set_tables(&mut dp, &t).unwrap();
    let least = read_table(&dp, 1).unwrap().unwrap();

    let done = lb.set_health(&mut dp, [(2, false)].into()).unwrap();
    assert_eq!((done.tables, done.listeners, done.backends), (1, 0, 1));
    assert_eq!(slots(&read_table(&dp, 0).unwrap().unwrap()), [1, 3].into());
    assert_eq!(backend_at(&dp, 2).flags, 0, "down: pinned flows leave it");
    assert_eq!(read_table(&dp, 1).unwrap().unwrap(), least);

    // Every backend of the maglev listener down: it fails open (all of them again).
    lb.set_health(&mut dp, [(1, false), (2, false), (3, false)].into())
        .unwrap();
    assert_eq!(
        slots(&read_table(&dp, 0).unwrap().unwrap()),
        [1, 2, 3].into()
    );
    assert_eq!(backend_at(&dp, 2).flags, BACKEND_USABLE);

    // A fail-closed listener with every backend down: size 0, its backends unusable.
    let mut closed = t.clone();
    closed.listeners[1].all_down = AllDown::FailClosed;
    lb.set_tables(&mut dp, &closed).unwrap();
    lb.set_health(&mut dp, [(4, false), (5, false)].into())
        .unwrap();
    assert_eq!(listeners(&dp)[&t.listeners[1].key()].size, 0);
    assert_eq!(backend_at(&dp, 4).flags, 0);
    // Healthy again: back.
    lb.set_health(&mut dp, BTreeMap::new()).unwrap();
    assert_eq!(listeners(&dp)[&t.listeners[1].key()].size, 2);
    assert_eq!(backend_at(&dp, 4).flags, BACKEND_USABLE);
}

#[test]
fn a_removed_listener_leaves_no_entry_table_or_backend() {
    if !support::privileged("a_removed_listener_leaves_no_entry_table_or_backend") {
        return;
    }
    let mut dp = Dataplane::load(None).unwrap();
    let mut lb = LbState::default();
    let t = tables();
    lb.set_tables(&mut dp, &t).unwrap();
    let mut fewer = t.clone();
    fewer.listeners.remove(1);
    let done = lb.set_tables(&mut dp, &fewer).unwrap();
    assert_eq!(done.deleted, 1 + 1 + 2, "listener, table, two backends");
    assert!(!listeners(&dp).contains_key(&t.listeners[1].key()));
    assert_eq!(read_table(&dp, 1).unwrap(), None);
    assert_eq!(backend_at(&dp, 4), Backend::default());
    assert!(read_table(&dp, 0).unwrap().is_some());
    // Nothing at all.
    lb.set_tables(&mut dp, &LbTables::default()).unwrap();
    assert!(listeners(&dp).is_empty());
    assert_eq!(read_table(&dp, 0).unwrap(), None);
    assert_eq!(backend_at(&dp, 1), Backend::default());
}

/// Tables swapped back and forth between two backend sets and two schedulers (Maglev's
/// 65,537 entries, least_conn's 64 with a size of 3): a reader doing what the datapath
/// does (the listener, then the table in its slot) always finds a table at least `size`
/// long holding only backends of one set or the other.
#[test]
fn the_listener_always_points_at_a_complete_table() {
    if !support::privileged("the_listener_always_points_at_a_complete_table") {
        return;
    }
    let dp = Arc::new(Mutex::new(Dataplane::load(None).unwrap()));
    let a: Vec<BackendRow> = (1..=3).map(|s| backend(s, 10)).collect();
    let b: Vec<BackendRow> = (3..=5).map(|s| backend(s, 10)).collect();
    let version = |k: usize| LbTables {
        listeners: vec![listener(
            "lbl-1",
            IPPROTO_TCP,
            80,
            7,
            if k % 4 < 2 {
                SchedulerKind::Maglev
            } else {
                SchedulerKind::LeastConn
            },
            if k.is_multiple_of(2) {
                a.clone()
            } else {
                b.clone()
            },
        )],
        check_ports: vec![],
    };
    let key = version(0).listeners[0].key();
    let mut lb = LbState::default();
    lb.set_tables(&mut dp.lock().unwrap(), &version(0)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dp, stop) = (dp.clone(), stop.clone());
        thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // The datapath's order, each read a separate look (the lock is held per
                // read only, so applies interleave between them).
                let l = listeners(&dp.lock().unwrap())[&key];
                let table = read_table(&dp.lock().unwrap(), l.table).unwrap();
                let table = table.expect("the listener's slot holds a table");
                assert!(
                    table.len() >= l.size as usize,
                    "size {} but the table has {}",
                    l.size,
                    table.len()
                );
                let used = slots(&table[..l.size as usize]);
                assert!(used.is_subset(&[1, 2, 3, 4, 5].into()), "{used:?}");
                reads += 1;
            }
            reads
        })
    };
    for k in 1..=24 {
        lb.set_tables(&mut dp.lock().unwrap(), &version(k)).unwrap();
        thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw a broken table");
    assert!(reads > 0);
    // It ended on version 24: Maglev over set a.
    let table = read_table(&dp.lock().unwrap(), 7).unwrap().unwrap();
    assert_eq!(slots(&table), [1, 2, 3].into());
}

/// The sweep against the real connection table: a forward entry whose translated flow is
/// gone is collected (a young one waits for its link), and the active connections per
/// backend slot are recounted from the forward entries still linked, stale counts zeroed.
#[test]
fn the_sweep_collects_unlinked_forward_entries_and_recounts_active_connections() {
    use sluice_common::{
        conntrack::{self, CtEntry, CtKey, CT_COUNT_USERSPACE, TCP_ACK, TCP_SYN},
        lb::{LbLink, LB_COUNTED, LB_LINK_FORWARD, LB_LINK_REVERSE, LB_VNI},
    };
    use sluice_dataplane::conntrack as ct;
    if !support::privileged(
        "the_sweep_collects_unlinked_forward_entries_and_recounts_active_connections",
    ) {
        return;
    }
    let mut dp = Dataplane::load(None).unwrap();
    let now = ct::monotonic_ns();
    let s = 1_000_000_000u64;
    // (client port, backend slot, translated entry present, forward entry's age)
    let flows = [
        (40001u16, 4u32, true, 10 * s),
        (40002, 4, true, 10 * s),
        (40003, 5, false, 10 * s),
        (40004, 5, false, 0),
    ];
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK).unwrap()).unwrap();
        for (cport, slot, translated, age) in flows {
            let client = [10, 0, 1, 10];
            let backend = [10, 0, 1, 10 + slot as u8];
            let (cport, vport, bport) = (cport.to_be_bytes(), [0, 80], 8080u16.to_be_bytes());
            let (fk, a) = CtKey::new(VNI | LB_VNI, IPPROTO_TCP, client, cport, VIP, vport);
            let mut fe = CtEntry::new(now - age, IPPROTO_TCP, a, TCP_SYN);
            fe.lb = LbLink {
                addr: backend,
                port: bport,
                kind: LB_LINK_FORWARD,
                backend: slot,
                ..Default::default()
            };
            table.insert(fk, fe, 0).unwrap();
            if translated {
                let (tk, a) = CtKey::new(VNI, IPPROTO_TCP, client, cport, backend, bport);
                let mut te = CtEntry::new(now, IPPROTO_TCP, a, TCP_SYN);
                te.track_tcp(false, TCP_SYN | TCP_ACK);
                te.lb = LbLink {
                    addr: VIP,
                    port: vport,
                    kind: LB_LINK_REVERSE,
                    flags: LB_COUNTED,
                    backend: slot,
                    ..Default::default()
                };
                table.insert(tk, te, 0).unwrap();
            }
        }
    }
    ct::add_to_slot(&mut dp, CT_COUNT_USERSPACE, 6, 0).unwrap();
    {
        // Stale counts: too many for slot 4, some for a slot nobody uses.
        let mut active: Array<&mut MapData, u32> =
            Array::try_from(dp.map_mut(maps::ACTIVE).unwrap()).unwrap();
        active.set(4, 7, 0).unwrap();
        active.set(9, 2, 0).unwrap();
    }
    let st = ct::sweep(&mut dp, ct::monotonic_ns()).unwrap();
    assert_eq!(
        (
            st.scanned,
            st.collected,
            st.unlinked,
            st.live,
            st.lb_forward
        ),
        (6, 1, 1, 5, 2)
    );
    let active = active_connections(&dp, [4, 5, 9]).unwrap();
    assert_eq!(active, [(4, 2), (5, 0), (9, 0)].into());
    let left: Vec<u16> = ct::entries(&dp)
        .unwrap()
        .iter()
        .filter(|(k, _)| k.vni & LB_VNI != 0)
        .map(|(k, e)| u16::from_be_bytes(k.ends(e.flags & conntrack::CT_ORIG_IS_A != 0).0 .1))
        .collect::<BTreeSet<u16>>()
        .into_iter()
        .collect();
    assert_eq!(
        left,
        [40001, 40002, 40004],
        "the young one waits for its link"
    );
}
