//! The security-group and connection-table map I/O against the real kernel maps: policies
//! written hitlessly and read back, re-applies that write nothing, policies and orphaned
//! trie entries collected, the blocklist with its counters, and the connection table's
//! configuration, counts, sweep and listing. Maps are private (`Dataplane::load(None)`);
//! interfaces resolve to made-up ifindexes.
mod support;

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use sluice_common::{
    conntrack::{self, CtConfig, CtEntry, CtKey, CT_COUNT_USERSPACE, TCP_ACK, TCP_SYN},
    proto::{IPPROTO_TCP, IPPROTO_UDP},
    sg::{self, RemoteKey, RuleSet, ServiceKey, SgConfig, BLOCK_DST, BLOCK_SRC, NIC_SG_ENFORCED},
    stats::Counter,
};
use sluice_dataplane::{
    conntrack as ct,
    loader::Dataplane,
    sg::{
        apply::{self, BlockPrefix, SgStep},
        NicPolicies, Policy, RemoteEntry, ServiceEntry, SgTables,
    },
};

fn rules(slots: &[usize]) -> RuleSet {
    let mut r = RuleSet::EMPTY;
    for k in slots {
        r.insert(*k);
    }
    r
}

/// A policy with `n` remote entries (10.<id>.<k>.0/24) and one service entry.
fn policy(id: u64, n: u8) -> Policy {
    Policy {
        id,
        rules: vec![],
        allow: rules(&[0]),
        remotes: (0..n)
            .map(|k| RemoteEntry {
                addr: [10, id as u8, k, 0],
                len: 24,
                rules: rules(&[0]),
            })
            .collect(),
        services: vec![ServiceEntry {
            proto: Some(IPPROTO_TCP),
            port: 80,
            len: 16,
            rules: rules(&[0]),
        }],
    }
}

fn nic(ifname: &str, ingress: u64, egress: u64) -> NicPolicies {
    NicPolicies {
        ifname: ifname.into(),
        nic: format!("nic-{ifname}"),
        ingress,
        egress,
    }
}

fn tables(nics: Vec<NicPolicies>, policies: Vec<Policy>) -> SgTables {
    let mut t = SgTables { nics, policies };
    t.nics.sort();
    t.policies.sort_by_key(|p| p.id);
    t
}

fn ifindex(n: &str) -> Option<u32> {
    match n {
        "vm-a" => Some(10),
        "vm-b" => Some(11),
        _ => None,
    }
}

fn resolved(dp: &Dataplane, t: &SgTables) -> apply::SgResolved {
    apply::resolve(t, apply::nic_slots(dp).unwrap(), ifindex)
}

/// The policy ids every trie entry carries.
fn trie_ids(dp: &Dataplane) -> (Vec<u64>, Vec<u64>) {
    let r: LpmTrie<&MapData, RemoteKey, RuleSet> =
        LpmTrie::try_from(dp.map(sg::maps::REMOTES).unwrap()).unwrap();
    let s: LpmTrie<&MapData, ServiceKey, RuleSet> =
        LpmTrie::try_from(dp.map(sg::maps::SERVICES).unwrap()).unwrap();
    let mut remotes: Vec<u64> = r
        .keys()
        .map(|k| u64::from_be_bytes(k.unwrap().data().policy))
        .collect();
    let mut services: Vec<u64> = s
        .keys()
        .map(|k| u64::from_be_bytes(k.unwrap().data().policy))
        .collect();
    remotes.sort();
    remotes.dedup();
    services.sort();
    services.dedup();
    (remotes, services)
}

#[test]
fn policies_apply_hitlessly_converge_and_are_collected() {
    if !support::privileged("policies_apply_hitlessly_converge_and_are_collected") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let t1 = tables(
        vec![nic("vm-a", 1, 0), nic("vm-b", 1, 2), nic("gone", 1, 1)],
        vec![policy(1, 3), policy(2, 1)],
    );
    let r1 = resolved(&dp, &t1);
    assert_eq!(r1.unresolved, ["gone"]);
    let plan = apply::plan(&apply::read_state(&dp).unwrap(), &r1);
    assert!(
        matches!(
            plan[..],
            [
                SgStep::WritePolicy(1),
                SgStep::WritePolicy(2),
                SgStep::SetNic(10, _),
                SgStep::SetNic(11, _)
            ]
        ),
        "policies complete before any NIC points at them: {plan:?}"
    );
    let done = apply::apply(&mut dp, &r1).unwrap();
    assert_eq!(
        (done.policies_written, done.nics_set, done.trie_writes),
        (2, 2, 3 + 1 + 1 + 1)
    );
    let st = apply::read_state(&dp).unwrap();
    assert_eq!(st.policies.iter().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(st.nics[&11].ingress, 1);
    assert_eq!(st.nics[&11].egress, 2);
    assert_eq!(st.nics[&11].flags, NIC_SG_ENFORCED);
    assert_eq!(trie_ids(&dp), (vec![1, 2], vec![1, 2]));

    // The same tables again: nothing to write.
    assert!(apply::apply(&mut dp, &r1).unwrap().is_noop());

    // A trie entry of a policy whose write never finished (no POLICIES entry).
    {
        let mut r: LpmTrie<&mut MapData, RemoteKey, RuleSet> =
            LpmTrie::try_from(dp.map_mut(sg::maps::REMOTES).unwrap()).unwrap();
        r.insert(
            &Key::new(96, RemoteKey::new(9, [10, 9, 9, 9])),
            rules(&[0]),
            0,
        )
        .unwrap();
    }
    // vm-a moves to a new policy 3, vm-b goes away: 1 and 2 (and the orphan 9) go.
    let t2 = tables(vec![nic("vm-a", 3, 0)], vec![policy(3, 2)]);
    let r2 = resolved(&dp, &t2);
    let done = apply::apply(&mut dp, &r2).unwrap();
    assert_eq!(
        (
            done.policies_written,
            done.nics_set,
            done.nics_cleared,
            done.policies_deleted
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(
        done.trie_deletes,
        3 + 1 + 1 + 1 + 1,
        "policy 1, policy 2, and the orphan"
    );
    assert_eq!(trie_ids(&dp), (vec![3], vec![3]));
    let st = apply::read_state(&dp).unwrap();
    assert_eq!(st.nics.keys().copied().collect::<Vec<_>>(), [10]);
    assert_eq!(st.policies.iter().copied().collect::<Vec<_>>(), [3]);

    // Nothing left: every slot cleared, every policy gone.
    let none = resolved(&dp, &SgTables::default());
    let done = apply::apply(&mut dp, &none).unwrap();
    assert_eq!((done.nics_cleared, done.policies_deleted), (1, 1));
    assert_eq!(trie_ids(&dp), (vec![], vec![]));
    assert_eq!(apply::read_state(&dp).unwrap(), apply::SgState::default());
}

#[test]
fn interfaces_resolve_in_the_callers_namespace() {
    if !support::privileged("interfaces_resolve_in_the_callers_namespace") {
        return;
    }
    let dp = Dataplane::load(None).expect("object loads");
    let t = tables(
        vec![nic("lo", 1, 0), nic("no-such-if0", 1, 0)],
        vec![policy(1, 1)],
    );
    let r = apply::resolve_from_system(&dp, &t).unwrap();
    assert_eq!(r.nics.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(r.unresolved, ["no-such-if0"]);
}

fn block(addr: [u8; 4], len: u8, src: bool, dst: bool) -> BlockPrefix {
    BlockPrefix {
        addr,
        len,
        src,
        dst,
    }
}

fn entries_switch(dp: &Dataplane) -> u32 {
    let a: aya::maps::Array<&MapData, SgConfig> =
        aya::maps::Array::try_from(dp.map(sg::maps::CONFIG).unwrap()).unwrap();
    a.get(&0, 0).unwrap().blocklist_entries
}

#[test]
fn the_blocklist_folds_flags_keeps_counters_and_switches_lookups() {
    if !support::privileged("the_blocklist_folds_flags_keeps_counters_and_switches_lookups") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let net = block([203, 0, 113, 0], 24, true, false);
    // Host bits are cleared; the /32 inside the /24 gets the /24's source flag too.
    let host = block([203, 0, 113, 7], 32, false, true);
    let wanted = vec![block([203, 0, 113, 99], 24, true, false), host];
    let done = apply::apply_blocklist(&mut dp, &wanted).unwrap();
    assert_eq!((done.written, done.deleted, done.entries), (2, 0, 2));
    assert_eq!(entries_switch(&dp), 2);
    let list = apply::read_blocklist(&dp).unwrap();
    assert_eq!(list[&([203, 0, 113, 0], 24)].flags, BLOCK_SRC);
    assert_eq!(list[&([203, 0, 113, 7], 32)].flags, BLOCK_SRC | BLOCK_DST);

    // Count a drop on the /24's slot, as the datapath would.
    let slot = list[&([203, 0, 113, 0], 24)].counter;
    {
        let mut stats: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(dp.map_mut(sg::maps::BLOCK_STATS).unwrap()).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let mut v = vec![Counter::default(); cpus];
        v[0] = Counter {
            packets: 5,
            bytes: 300,
        };
        stats
            .set(slot, PerCpuValues::try_from(v).unwrap(), 0)
            .unwrap();
    }
    // Same list: nothing written, the count stays.
    let done = apply::apply_blocklist(&mut dp, &[net, host]).unwrap();
    assert_eq!((done.written, done.deleted), (0, 0));
    // The /32 goes: the /24 keeps its slot and count.
    let done = apply::apply_blocklist(&mut dp, &[net]).unwrap();
    assert_eq!((done.written, done.deleted, done.entries), (0, 1, 1));
    let counters = apply::blocklist_counters(&dp).unwrap();
    assert_eq!(counters.len(), 1);
    assert_eq!(counters[0].0, net);
    assert_eq!((counters[0].1.packets, counters[0].1.bytes), (5, 300));
    // A new prefix never inherits a count.
    let other = block([198, 51, 100, 0], 24, false, true);
    apply::apply_blocklist(&mut dp, &[net, other]).unwrap();
    let counters = apply::blocklist_counters(&dp).unwrap();
    let fresh = counters.iter().find(|(p, _)| *p == other).unwrap();
    assert_eq!(fresh.1.packets, 0);
    // Empty: the lookups are switched off and the trie emptied.
    let done = apply::apply_blocklist(&mut dp, &[]).unwrap();
    assert_eq!((done.deleted, done.entries), (2, 0));
    assert_eq!(entries_switch(&dp), 0);
    assert!(apply::read_blocklist(&dp).unwrap().is_empty());
}

const S: u64 = 1_000_000_000;

#[test]
fn conntrack_configuration_counts_sweep_and_listing() {
    if !support::privileged("conntrack_configuration_counts_sweep_and_listing") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    // Unconfigured: the defaults apply.
    assert_eq!(ct::read_config(&dp).unwrap(), CtConfig::DEFAULT);
    let cfg = CtConfig {
        max_entries: 100,
        udp_ns: 60 * S,
        ..CtConfig::DEFAULT
    };
    ct::write_config(&mut dp, &cfg).unwrap();
    assert_eq!(ct::read_config(&dp).unwrap(), cfg);
    let bad = CtConfig {
        tcp_fin_ns: 1,
        ..cfg
    };
    let err = ct::write_config(&mut dp, &bad).unwrap_err().to_string();
    assert!(err.contains("tcp_fin_ns"), "{err}");
    assert_eq!(
        ct::read_config(&dp).unwrap(),
        cfg,
        "a refused config changes nothing"
    );

    // Five flows written as a fill would: three idle for two minutes (UDP: expired), two
    // fresh; and two more counted that the LRU evicted before any sweep saw them.
    let now = ct::monotonic_ns();
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK).unwrap()).unwrap();
        for k in 0..5u8 {
            let (key, a) = CtKey::new(
                7,
                IPPROTO_UDP,
                [10, 0, 0, k],
                [0, 53],
                [10, 0, 1, 1],
                [4, 0],
            );
            let age = if k < 3 { 120 * S } else { 0 };
            let e = CtEntry::new(now - age, IPPROTO_UDP, a, 0);
            table.insert(key, e, 0).unwrap();
        }
        let (key, a) = CtKey::new(
            7,
            IPPROTO_TCP,
            [10, 0, 0, 9],
            [0x9c, 0x40],
            [10, 0, 1, 1],
            [0, 80],
        );
        let mut e = CtEntry::new(now, IPPROTO_TCP, a, TCP_SYN);
        e.track_tcp(false, TCP_SYN | TCP_ACK);
        table.insert(key, e, 0).unwrap();
    }
    ct::add_to_slot(&mut dp, CT_COUNT_USERSPACE, 6 + 2, 0).unwrap();
    let c = ct::counts(&dp).unwrap();
    assert_eq!(
        (c.entries, c.inserts, c.collections, c.evictions),
        (8, 8, 0, 0)
    );

    let st = ct::sweep(&mut dp, ct::monotonic_ns()).unwrap();
    assert_eq!(
        (st.scanned, st.collected, st.live, st.evicted),
        (6, 3, 3, 2)
    );
    let c = ct::counts(&dp).unwrap();
    assert_eq!((c.entries, c.collections, c.evictions), (3, 3, 2));
    assert_eq!(ct::entries(&dp).unwrap().len(), 3);
    // A second sweep finds nothing more.
    let st = ct::sweep(&mut dp, ct::monotonic_ns()).unwrap();
    assert_eq!((st.collected, st.evicted, st.live), (0, 0, 3));

    let flows = ct::list(&dp, ct::monotonic_ns()).unwrap();
    assert_eq!(flows.len(), 3);
    let tcp = flows.iter().find(|f| f.protocol == IPPROTO_TCP).unwrap();
    assert_eq!((tcp.orig.as_str(), tcp.orig_port), ("10.0.0.9", 40000));
    assert_eq!((tcp.resp.as_str(), tcp.resp_port), ("10.0.1.1", 80));
    assert_eq!(tcp.state, "syn_recv");
    assert_eq!(tcp.flags, ["seen_reply"]);
}

#[test]
fn a_large_table_is_read_in_batches() {
    if !support::privileged("a_large_table_is_read_in_batches") {
        return;
    }
    let mut dp = Dataplane::load(None).expect("object loads");
    let n = 20_000u32;
    let now = ct::monotonic_ns();
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(dp.map_mut(conntrack::maps::CONNTRACK).unwrap()).unwrap();
        for k in 0..n {
            let b = k.to_be_bytes();
            let (key, a) = CtKey::new(
                1,
                IPPROTO_UDP,
                [10, b[1], b[2], b[3]],
                [0, 1],
                [10, 255, 0, 1],
                [0, 2],
            );
            table
                .insert(key, CtEntry::new(now, IPPROTO_UDP, a, 0), 0)
                .unwrap();
        }
    }
    let all = ct::entries(&dp).unwrap();
    assert_eq!(
        all.len(),
        n as usize,
        "more than one batch, each entry once"
    );
    let mut keys: Vec<CtKey> = all.iter().map(|(k, _)| *k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n as usize);
}
