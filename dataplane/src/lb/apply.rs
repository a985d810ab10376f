//! The agent's LB map I/O: [`resolve`] turns a host's [`LbTables`] and the health checks'
//! view into map contents (pure), [`LbSync::apply`] brings the maps there.
//!
//! Health: a backend the checks have not decided on yet (unknown) counts as healthy, so a
//! new pool serves at once; the checker marks it down only after `unhealthy_threshold`
//! failures (no flapping on one lost probe). A backend is usable when healthy, or when
//! its listener fails open and none of its weighted backends is healthy. A listener's
//! table holds its usable backends of weight > 0 (Maglev for `maglev` and `source_ip`,
//! the candidate list for `least_conn`); none: `size` 0, new flows are dropped.
//!
//! Hitless order:
//! 1. listeners no longer wanted go (their flows are pinned; new ones are not balanced);
//! 2. backends that are usable after, in their new slots;
//! 3. per listener, its table and its value: a table is a NEW inner map, filled, then put
//!    in the listener's slot of `SLUICE_LB_TABLES` with one update (a packet sees the old
//!    table or the new one); the listener's value follows, except when the new table is
//!    smaller than the `size` the listener holds (then the listener goes first: the old,
//!    larger table serves the new size meanwhile). Every index below `size` is thus
//!    always valid. `least_conn` lists always have [`LEAST_CONN_MAX`] entries (the
//!    candidates repeated), so any size up to that reads candidates only;
//! 4. tables of slots no listener uses;
//! 5. backends that are no longer usable (out of every table by now) or gone.
//!
//! Unchanged tables are not rewritten (a digest of each written table is kept): a health
//! change rewrites the tables of its listener only. After a restart every table is
//! rewritten once (a swap, hitless).

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData};
use sluice_common::lb::{
    maps, Backend, Listener, ListenerKey, Scheduler, BACKEND_USABLE, INNER_MAP_FLAGS,
    LEAST_CONN_MAX, MAX_BACKENDS, MAX_LISTENERS,
};

use super::{
    maglev::{self, Candidate},
    LbTables, ListenerRow,
};
use crate::{
    intent::lb::{AllDown, SchedulerKind},
    loader::Dataplane,
};

/// What one listener's map entries should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerWant {
    pub listener: Listener,
    /// Its table's entries (backend slots); empty when `listener.size` is 0.
    pub table: Vec<u32>,
}

/// What the LB maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbResolved {
    pub backends: BTreeMap<u32, Backend>,
    pub listeners: BTreeMap<ListenerKey, ListenerWant>,
}

pub fn scheduler(s: SchedulerKind) -> Scheduler {
    match s {
        SchedulerKind::Maglev => Scheduler::Maglev,
        SchedulerKind::SourceIp => Scheduler::SourceIp,
        SchedulerKind::LeastConn => Scheduler::LeastConn,
    }
}

/// Which of `l`'s backends (by slot) may carry flows, given the checks' verdict
/// `healthy(slot)` (unknown counts as healthy: the caller's business).
pub fn usable_backends(l: &ListenerRow, healthy: impl Fn(u32) -> bool) -> BTreeSet<u32> {
    let weighted_up = l.backends.iter().any(|b| b.weight > 0 && healthy(b.slot));
    let any_weighted = l.backends.iter().any(|b| b.weight > 0);
    let fail_open = l.all_down == AllDown::FailOpen && any_weighted && !weighted_up;
    l.backends
        .iter()
        .filter(|b| fail_open || healthy(b.slot))
        .map(|b| b.slot)
        .collect()
}

/// Map contents for `t`; `healthy(slot)`: the checks' verdict on a backend (true while
/// unknown).
pub fn resolve(t: &LbTables, healthy: impl Fn(u32) -> bool) -> LbResolved {
    let mut r = LbResolved::default();
    for l in &t.listeners {
        if l.slot >= MAX_LISTENERS {
            log::warn!("listener {}: table slot {} out of range", l.id, l.slot);
            continue;
        }
        let usable = usable_backends(l, &healthy);
        for b in &l.backends {
            if b.slot >= MAX_BACKENDS {
                continue;
            }
            r.backends.entry(b.slot).or_insert(Backend {
                ip: b.ip,
                port: b.port.to_be_bytes(),
                weight: b.weight,
                flags: if usable.contains(&b.slot) {
                    BACKEND_USABLE
                } else {
                    0
                },
            });
        }
        let candidates: Vec<Candidate> = l
            .backends
            .iter()
            .filter(|b| b.weight > 0 && b.slot < MAX_BACKENDS && usable.contains(&b.slot))
            .map(|b| Candidate {
                slot: b.slot,
                ip: b.ip,
                port: b.port,
                weight: b.weight,
            })
            .collect();
        let scheduler = scheduler(l.scheduler);
        let (size, table) = match scheduler {
            Scheduler::Maglev | Scheduler::SourceIp => {
                match maglev::build(&candidates, maglev::table_size(l.backends.len())) {
                    Some(t) => (t.len() as u32, t),
                    None => (0, Vec::new()),
                }
            }
            Scheduler::LeastConn => {
                let n = candidates.len().min(LEAST_CONN_MAX as usize);
                let table = if n == 0 {
                    Vec::new()
                } else {
                    // Repeated to the full length: any index below an older, larger size
                    // still reads a candidate.
                    (0..LEAST_CONN_MAX as usize)
                        .map(|k| candidates[k % n].slot)
                        .collect()
                };
                (n as u32, table)
            }
        };
        r.listeners.entry(l.key()).or_insert(ListenerWant {
            listener: Listener {
                table: l.slot,
                size,
                scheduler: scheduler as u8,
                flags: 0,
                _pad: [0; 2],
            },
            table,
        });
    }
    r
}

fn digest(w: &ListenerWant) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    w.table.hash(&mut h);
    h.finish()
}

/// Entries written and deleted by one apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbApplied {
    pub backends: usize,
    pub tables: usize,
    pub listeners: usize,
    pub deleted: usize,
}

impl LbApplied {
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }
}

/// What the agent wrote to the LB maps, kept between applies.
#[derive(Debug, Default)]
pub struct LbSync {
    /// Table slot -> digest of the table in it (written by this process).
    tables: BTreeMap<u32, u64>,
    /// Backend slots as written; `None` until read from the map once.
    backends: Option<BTreeMap<u32, Backend>>,
    /// Table slots read from the map once (after a restart: stale tables to remove).
    swept: bool,
}

impl LbSync {
    /// Brings the LB maps of `dp` to `want` (order: the module comment).
    pub fn apply(&mut self, dp: &mut Dataplane, want: &LbResolved) -> Result<LbApplied> {
        let mut done = LbApplied::default();
        let current: BTreeMap<ListenerKey, Listener> = {
            let m: HashMap<&MapData, ListenerKey, Listener> =
                HashMap::try_from(dp.map(maps::LISTENERS)?)?;
            m.iter().filter_map(|kv| kv.ok()).collect()
        };
        if self.backends.is_none() {
            let a: Array<&MapData, Backend> = Array::try_from(dp.map(maps::BACKENDS)?)?;
            let all = a
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.ok().map(|v| (k as u32, v)))
                .filter(|(_, v)| *v != Backend::default())
                .collect();
            self.backends = Some(all);
        }
        if !self.swept {
            let used = used_table_slots(dp.map(maps::TABLES)?)?;
            // Unknown content: rewritten below if wanted, removed in step 4 if not.
            for slot in used {
                self.tables.entry(slot).or_insert(0);
            }
            self.swept = true;
        }

        // 1. Listeners no longer wanted.
        {
            let mut m: HashMap<&mut MapData, ListenerKey, Listener> =
                HashMap::try_from(dp.map_mut(maps::LISTENERS)?)?;
            for k in current.keys().filter(|k| !want.listeners.contains_key(k)) {
                if m.remove(k).is_ok() {
                    done.deleted += 1;
                }
            }
        }
        // 2. Backends usable after.
        let known = self.backends.get_or_insert_with(BTreeMap::new);
        {
            let mut a: Array<&mut MapData, Backend> = Array::try_from(dp.map_mut(maps::BACKENDS)?)?;
            for (slot, b) in &want.backends {
                if b.flags & BACKEND_USABLE != 0 && known.get(slot) != Some(b) {
                    a.set(*slot, b, 0)
                        .with_context(|| format!("{}: slot {slot}", maps::BACKENDS))?;
                    known.insert(*slot, *b);
                    done.backends += 1;
                }
            }
        }
        // 3. Tables and listeners.
        for (key, w) in &want.listeners {
            let slot = w.listener.table;
            let cur = current.get(key);
            let table_changed = w.listener.size > 0 && self.tables.get(&slot) != Some(&digest(w));
            let listener_changed = cur != Some(&w.listener);
            let shrinks = cur.is_some_and(|c| c.table == slot && c.size as usize > w.table.len());
            if table_changed && shrinks && listener_changed {
                write_listener(dp, key, &w.listener)?;
                done.listeners += 1;
                write_table(dp, slot, &w.table)?;
                self.tables.insert(slot, digest(w));
                done.tables += 1;
                continue;
            }
            if table_changed {
                write_table(dp, slot, &w.table)?;
                self.tables.insert(slot, digest(w));
                done.tables += 1;
            }
            if listener_changed {
                write_listener(dp, key, &w.listener)?;
                done.listeners += 1;
            }
        }
        // 4. Tables of slots no listener uses.
        let used: BTreeSet<u32> = want.listeners.values().map(|w| w.listener.table).collect();
        let stale: Vec<u32> = self
            .tables
            .keys()
            .filter(|s| !used.contains(s))
            .copied()
            .collect();
        for slot in stale {
            remove_table(dp.map_mut(maps::TABLES)?, slot)?;
            self.tables.remove(&slot);
            done.deleted += 1;
        }
        // 5. Backends no longer usable, or gone.
        {
            let mut a: Array<&mut MapData, Backend> = Array::try_from(dp.map_mut(maps::BACKENDS)?)?;
            let known = self.backends.get_or_insert_with(BTreeMap::new);
            for (slot, b) in &want.backends {
                if known.get(slot) != Some(b) {
                    a.set(*slot, b, 0)
                        .with_context(|| format!("{}: slot {slot}", maps::BACKENDS))?;
                    known.insert(*slot, *b);
                    done.backends += 1;
                }
            }
            let gone: Vec<u32> = known
                .keys()
                .filter(|s| !want.backends.contains_key(s))
                .copied()
                .collect();
            for slot in gone {
                a.set(slot, Backend::default(), 0)
                    .with_context(|| format!("{}: clearing slot {slot}", maps::BACKENDS))?;
                known.remove(&slot);
                done.deleted += 1;
            }
        }
        Ok(done)
    }
}

/// The agent's LB state, shared with the health checker (`Arc<Mutex<_>>`): the tables
/// the controller sent, the checks' verdicts, and what was written. Either side changes
/// its half and the maps follow. Lock order: the dataplane first, then this.
#[derive(Debug, Default)]
pub struct LbState {
    sync: LbSync,
    tables: LbTables,
    /// Backend slot -> healthy, as the checks last decided; missing: not decided yet
    /// (counts as healthy).
    health: BTreeMap<u32, bool>,
    /// The inputs of the last successful apply: the same again writes nothing.
    applied: Option<(LbTables, BTreeMap<u32, bool>)>,
}

impl LbState {
    /// The tables last received.
    pub fn tables(&self) -> &LbTables {
        &self.tables
    }

    /// The checks' verdicts in use.
    pub fn health(&self) -> &BTreeMap<u32, bool> {
        &self.health
    }

    /// Verdicts to start from, written with the next tables (an agent's first apply: see
    /// `health::Checks::seed`).
    pub fn seed_health(&mut self, health: BTreeMap<u32, bool>) {
        self.health = health;
    }

    /// New tables from the controller (the agent, after the VPC maps).
    pub fn set_tables(&mut self, dp: &mut Dataplane, t: &LbTables) -> Result<LbApplied> {
        if self.tables != *t {
            self.tables = t.clone();
        }
        self.sync(dp)
    }

    /// New verdicts from the health checks: backend slot -> healthy; a slot left out is
    /// not decided yet (healthy).
    pub fn set_health(
        &mut self,
        dp: &mut Dataplane,
        health: BTreeMap<u32, bool>,
    ) -> Result<LbApplied> {
        self.health = health;
        self.sync(dp)
    }

    fn sync(&mut self, dp: &mut Dataplane) -> Result<LbApplied> {
        let inputs = (self.tables.clone(), self.health.clone());
        if self.applied.as_ref() == Some(&inputs) {
            return Ok(LbApplied::default());
        }
        let health = &self.health;
        let want = resolve(&self.tables, |s| health.get(&s).copied().unwrap_or(true));
        // A failed apply is retried whole next time.
        self.applied = None;
        let done = self.sync.apply(dp, &want)?;
        self.applied = Some(inputs);
        Ok(done)
    }
}

/// [`LbState::set_health`] with both locks taken in order: for the health checker.
pub fn apply_health(
    dataplane: &std::sync::Mutex<Dataplane>,
    lb: &std::sync::Mutex<LbState>,
    health: BTreeMap<u32, bool>,
) -> Result<LbApplied> {
    let mut dp = dataplane.lock().expect("dataplane");
    let mut state = lb.lock().expect("lb state");
    state.set_health(&mut dp, health)
}

fn write_listener(dp: &mut Dataplane, key: &ListenerKey, l: &Listener) -> Result<()> {
    let mut m: HashMap<&mut MapData, ListenerKey, Listener> =
        HashMap::try_from(dp.map_mut(maps::LISTENERS)?)?;
    m.insert(key, l, 0)
        .with_context(|| format!("{}: writing listener slot {}", maps::LISTENERS, l.table))
}

/// A new inner map holding `table`, swapped into `slot` with one update.
fn write_table(dp: &mut Dataplane, slot: u32, table: &[u32]) -> Result<()> {
    let inner = filled_table(table)?;
    let mut outer: ArrayOfMaps<&mut MapData, MapData> =
        ArrayOfMaps::try_from(dp.map_mut(maps::TABLES)?)?;
    outer
        .set(slot, &inner, 0)
        .with_context(|| format!("{}: swapping in the table of slot {slot}", maps::TABLES))
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// A standalone inner table map (an array of `u32` backend slots with
/// [`INNER_MAP_FLAGS`]) holding `table`, filled with one batch update. Created by hand:
/// aya's `Array::create` hides the descriptor a batch update needs.
pub fn filled_table(table: &[u32]) -> Result<MapData> {
    if table.is_empty() {
        bail!("an empty table");
    }
    // `union bpf_attr` for BPF_MAP_CREATE as words, every byte set (the kernel refuses
    // non-zero bytes it does not expect): type, key and value size, max_entries, flags,
    // inner map fd, NUMA node, then the name (16 bytes) at word 7.
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[
        BPF_MAP_TYPE_ARRAY,
        4,
        4,
        table.len() as u32,
        INNER_MAP_FLAGS,
    ]);
    attr[7] = u32::from_ne_bytes(*b"slui");
    attr[8] = u32::from_ne_bytes(*b"ce_l");
    attr[9] = u32::from_ne_bytes(*b"b_tb");
    let fd = crate::sys_bpf::call(BPF_MAP_CREATE, &mut attr).context("creating a table map")?;
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let keys: Vec<u32> = (0..table.len() as u32).collect();
    match update_batch(fd.as_raw_fd(), &keys, table) {
        Ok(()) => {}
        // Kernels without batch updates (before 5.6): one entry at a time.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
            for (k, v) in keys.iter().zip(table) {
                crate::sys_bpf::update_elem(fd.as_raw_fd(), k, v).context("filling a table map")?;
            }
        }
        Err(e) => return Err(e).context("filling a table map (batch)"),
    }
    MapData::from_fd(fd).context("opening the table map")
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

fn update_batch(fd: i32, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    let mut attr = crate::conntrack::BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..Default::default()
    };
    crate::sys_bpf::call(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}

/// Empties `slot` of the outer table map (aya has no delete for arrays of maps).
fn remove_table(map: &mut Map, slot: u32) -> Result<()> {
    let Map::ArrayOfMaps(data) = map else {
        bail!("{} is not an array of maps", maps::TABLES);
    };
    match crate::sys_bpf::delete_elem(data.fd().as_fd().as_raw_fd(), &slot) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            Err(e).with_context(|| format!("{}: removing slot {slot}", maps::TABLES))
        }
        _ => Ok(()),
    }
}

/// Slots of the outer table map that hold a table.
fn used_table_slots(map: &Map) -> Result<Vec<u32>> {
    let outer: ArrayOfMaps<&MapData, Array<MapData, u32>> = ArrayOfMaps::try_from(map)?;
    Ok((0..outer.len())
        .filter(|s| outer.get(s, 0).is_ok())
        .collect())
}

/// Backend slot `slot` as the maps hold it (`None` if unreadable).
pub fn pinned_backend(dp: &Dataplane, slot: u32) -> Option<Backend> {
    let a: Array<&MapData, Backend> = Array::try_from(dp.map(maps::BACKENDS).ok()?).ok()?;
    a.get(&slot, 0).ok()
}

/// Active connections on this host per backend slot (`SLUICE_LB_ACTIVE`, kept by the
/// datapath and recounted by the connection-table sweep), for status reports.
pub fn active_connections(
    dp: &Dataplane,
    slots: impl IntoIterator<Item = u32>,
) -> Result<BTreeMap<u32, u32>> {
    let a: Array<&MapData, u32> = Array::try_from(dp.map(maps::ACTIVE)?)?;
    slots
        .into_iter()
        .map(|s| {
            let n = a
                .get(&s, 0)
                .with_context(|| format!("{}: slot {s}", maps::ACTIVE))?;
            Ok((s, n))
        })
        .collect()
}

/// A listener's table as the map holds it (tests and `sluicectl lb status`).
pub fn read_table(dp: &Dataplane, slot: u32) -> Result<Option<Vec<u32>>> {
    let outer: ArrayOfMaps<&MapData, Array<MapData, u32>> =
        ArrayOfMaps::try_from(dp.map(maps::TABLES)?)?;
    let inner = match outer.get(&slot, 0) {
        Ok(i) => i,
        Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: slot {slot}", maps::TABLES)),
    };
    Ok(Some(inner.iter().collect::<Result<Vec<u32>, _>>()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::compile::{compile_host, tests::cloud};

    fn all_healthy(_: u32) -> bool {
        true
    }

    /// `cloud()`'s tables on h1 and its listeners' keys: (tcp 80, udp 53).
    fn tables() -> (LbTables, ListenerKey, ListenerKey) {
        let t = compile_host(&cloud(), "h1");
        let key = |id: &str| t.listeners.iter().find(|l| l.id == id).unwrap().key();
        let (tcp, udp) = (key("lbl-1"), key("lbl-2"));
        (t, tcp, udp)
    }

    fn listener<'t>(t: &'t mut LbTables, id: &str) -> &'t mut ListenerRow {
        t.listeners.iter_mut().find(|l| l.id == id).unwrap()
    }

    #[test]
    fn healthy_backends_fill_the_tables() {
        let (t, tcp, udp) = tables();
        let r = resolve(&t, all_healthy);
        assert_eq!(r.backends.len(), 3);
        assert!(r.backends.values().all(|b| b.flags == BACKEND_USABLE));
        assert_eq!(r.backends[&3].port, 8080u16.to_be_bytes());
        let tcp = &r.listeners[&tcp];
        assert_eq!(tcp.listener.scheduler, Scheduler::Maglev as u8);
        assert_eq!(tcp.listener.size, sluice_common::lb::MAGLEV_SIZE);
        assert_eq!(tcp.table.len(), tcp.listener.size as usize);
        let used: BTreeSet<u32> = tcp.table.iter().copied().collect();
        assert_eq!(used, [3, 4].into());
        let udp = &r.listeners[&udp];
        assert_eq!((udp.listener.size, udp.listener.table), (1, 1));
        assert_eq!(udp.table, vec![5; LEAST_CONN_MAX as usize]);
    }

    #[test]
    fn an_unhealthy_backend_leaves_the_table_and_is_not_usable() {
        let (t, tcp, _) = tables();
        let r = resolve(&t, |s| s != 4);
        assert_eq!(r.backends[&4].flags, 0);
        assert_eq!(r.backends[&3].flags, BACKEND_USABLE);
        let tcp = &r.listeners[&tcp];
        assert!(tcp.table.iter().all(|s| *s == 3));
    }

    #[test]
    fn all_down_fails_open_or_closed() {
        let (t, tcp, udp) = tables();
        let r = resolve(&t, |_| false);
        // tcp fails open: both usable, both in the table.
        let tcp = &r.listeners[&tcp];
        let used: BTreeSet<u32> = tcp.table.iter().copied().collect();
        assert_eq!(used, [3, 4].into());
        assert_eq!(r.backends[&3].flags, BACKEND_USABLE);
        // udp fails closed: nothing to pick, the backend not usable.
        let udp = &r.listeners[&udp];
        assert_eq!(udp.listener.size, 0);
        assert!(udp.table.is_empty());
        assert_eq!(r.backends[&5].flags, 0);
    }

    #[test]
    fn draining_keeps_a_backend_usable_but_out_of_the_table() {
        let (mut t, key, _) = tables();
        listener(&mut t, "lbl-1").backends[1].weight = 0; // slot 4
        let r = resolve(&t, all_healthy);
        assert_eq!(r.backends[&4].flags, BACKEND_USABLE);
        assert_eq!(r.backends[&4].weight, 0);
        let tcp = &r.listeners[&key];
        assert!(tcp.table.iter().all(|s| *s == 3));
        // Every weighted backend down: a fail-open listener uses them all (the drained
        // one stays out of the table: its weight is 0).
        let r = resolve(&t, |s| s == 4);
        let tcp = &r.listeners[&key];
        assert!(tcp.table.iter().all(|s| *s == 3));
        assert_eq!(r.backends[&3].flags, BACKEND_USABLE);
        // Every backend drained: nothing to pick.
        listener(&mut t, "lbl-1").backends[0].weight = 0;
        let r = resolve(&t, all_healthy);
        assert_eq!(r.listeners[&key].listener.size, 0);
    }

    #[test]
    fn least_conn_lists_at_most_the_maximum_and_repeats_to_fill() {
        let (mut t, _, key) = tables();
        let l = listener(&mut t, "lbl-2");
        let proto = l.backends[0].clone();
        l.backends = (0..(LEAST_CONN_MAX + 6))
            .map(|k| super::super::BackendRow {
                slot: 100 + k,
                ip: [10, 0, 2, k as u8],
                ..proto.clone()
            })
            .collect();
        let r = resolve(&t, all_healthy);
        let w = &r.listeners[&key];
        assert_eq!(w.listener.size, LEAST_CONN_MAX);
        assert_eq!(w.table.len(), LEAST_CONN_MAX as usize);
        listener(&mut t, "lbl-2").backends.truncate(3);
        let r = resolve(&t, all_healthy);
        let w = &r.listeners[&key];
        assert_eq!(w.listener.size, 3);
        assert_eq!(&w.table[..6], &[100, 101, 102, 100, 101, 102]);
    }
}
