//! The agent's security-group map I/O: brings this host's maps to an [`SgTables`], the
//! operator blocklist to a list of prefixes, and reads them back.
//!
//! Hitless order (see `common/src/sg.rs`, "Policy ids"): the tries and allow set of every
//! new policy are written first, its `SLUICE_SG_POLICIES` entry last (that entry marks the
//! policy complete); then NIC slots switch to their new ids; then policies no NIC uses are
//! deleted, entry first, tries after. A policy id names one content, so a policy present
//! in `SLUICE_SG_POLICIES` is never rewritten, and re-applying the same tables writes
//! nothing. A failure stops the run: NICs still point at complete policies, and the next
//! apply finishes the work. Trie entries of a policy whose write failed and that is no
//! longer wanted are collected by the next apply that deletes a policy (which scans the
//! tries).
//!
//! The blocklist is an LPM trie matched by longest prefix, so each prefix's value carries
//! the source/destination flags of every blocked prefix containing it (a /32 blocked as
//! destination inside a /24 blocked as source blocks both ways), and its own counter slot
//! in `SLUICE_BLOCK_STATS`, kept while the prefix stays listed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use serde::{Deserialize, Serialize};
use sluice_common::{
    conntrack,
    sg::{
        maps, BlockEntry, BlockKey, NicSg, PolicyInfo, RemoteKey, RuleSet, ServiceKey, SgConfig,
        BLOCK_DST, BLOCK_SRC, NIC_SG_ENFORCED,
    },
    stats::Counter,
    vpc::Ipv4,
};

use super::{Policy, SgTables};
use crate::{
    loader::{open_pinned_map, Dataplane},
    vpc::apply::{system_ifindex, ApplyError},
};

/// Where the security-group and connection-table maps come from: a loaded [`Dataplane`],
/// or [`PinnedSgMaps`].
pub trait SgMaps {
    fn sg_map(&self, name: &str) -> anyhow::Result<&Map>;
    fn sg_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map>;
}

impl SgMaps for Dataplane {
    fn sg_map(&self, name: &str) -> anyhow::Result<&Map> {
        self.map(name)
    }

    fn sg_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.map_mut(name)
    }
}

/// The security-group and connection-table maps a daemon pinned under `<pin_dir>/maps`,
/// for tools that load no programs.
pub struct PinnedSgMaps {
    maps: BTreeMap<&'static str, Map>,
}

impl PinnedSgMaps {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let mut out = BTreeMap::new();
        // The LB active counts: the connection-table sweep recounts them.
        let lb_active = sluice_common::lb::maps::ACTIVE;
        for name in maps::ALL
            .into_iter()
            .chain(conntrack::maps::ALL)
            .chain([lb_active])
        {
            let data = open_pinned_map(pin_dir, name)?;
            let map = match name {
                maps::NICS | maps::CONFIG | conntrack::maps::CONFIG | conntrack::maps::COUNT => {
                    Map::Array(data)
                }
                n if n == lb_active => Map::Array(data),
                maps::BLOCK_STATS | conntrack::maps::STATS | conntrack::maps::SCRATCH => {
                    Map::PerCpuArray(data)
                }
                maps::REMOTES | maps::SERVICES | maps::BLOCKLIST => Map::LpmTrie(data),
                conntrack::maps::CONNTRACK => Map::LruHashMap(data),
                _ => Map::HashMap(data),
            };
            out.insert(name, map);
        }
        Ok(Self { maps: out })
    }
}

impl SgMaps for PinnedSgMaps {
    fn sg_map(&self, name: &str) -> anyhow::Result<&Map> {
        self.maps
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no map {name}"))
    }

    fn sg_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.maps
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no map {name}"))
    }
}

// ---- resolving ----

/// [`SgTables`] with interface names resolved to the ifindexes that index
/// `SLUICE_SG_NICS`: what [`apply`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgResolved {
    /// Slot values by ifindex.
    pub nics: BTreeMap<u32, NicSg>,
    /// The policies those NICs use, by id.
    pub policies: BTreeMap<u64, Policy>,
    /// NICs left out: their interface does not exist here (yet), or its ifindex does not
    /// fit the NIC array. Such a NIC has no VPC port either, so nothing reaches it.
    pub unresolved: Vec<String>,
}

/// Resolves `t`'s interface names with `ifindex`; NICs whose index is missing or not below
/// `slots` (the NIC array's size, [`nic_slots`]) are listed in `unresolved`.
pub fn resolve(t: &SgTables, slots: u32, ifindex: impl Fn(&str) -> Option<u32>) -> SgResolved {
    let mut out = SgResolved::default();
    for n in &t.nics {
        match ifindex(&n.ifname).filter(|i| *i < slots) {
            Some(i) => {
                out.nics.insert(i, n.to_nic_sg());
                for id in [n.ingress, n.egress] {
                    if let Some(p) = t.policy(id) {
                        out.policies.entry(id).or_insert_with(|| p.clone());
                    }
                }
            }
            None => out.unresolved.push(n.ifname.clone()),
        }
    }
    out
}

/// [`resolve`] with the interfaces of the calling thread's network namespace.
pub fn resolve_from_system(maps: &impl SgMaps, t: &SgTables) -> Result<SgResolved, ApplyError> {
    Ok(resolve(t, nic_slots(maps)?, system_ifindex))
}

/// Slots in `SLUICE_SG_NICS` (one per possible ifindex).
pub fn nic_slots(maps: &impl SgMaps) -> Result<u32, ApplyError> {
    let name = maps::NICS;
    let m = open(maps, name)?;
    let Map::Array(data) = m else {
        return Err(ApplyError::Open {
            map: name,
            source: anyhow::anyhow!("not an array"),
        });
    };
    data.info()
        .map(|i| i.max_entries())
        .map_err(|source| ApplyError::Read { map: name, source })
}

// ---- planning ----

/// What the policy maps hold, as far as planning needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgState {
    /// Enforced NIC slots.
    pub nics: BTreeMap<u32, NicSg>,
    /// Ids in `SLUICE_SG_POLICIES` (complete policies).
    pub policies: BTreeSet<u64>,
}

/// A trie key as stored: prefix length and key data.
pub type TrieKey<K> = (u32, K);

/// One map write of an apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SgStep {
    /// A new policy: its trie entries, then its allow set (the completion mark).
    WritePolicy(u64),
    SetNic(u32, NicSg),
    /// Writes the zeroed (not filtered) value.
    ClearNic(u32),
    /// Deletes the allow set first (so the policy is no longer complete), then the tries.
    DeletePolicy(u64),
}

/// The steps from `current` to `desired`, in hitless order.
pub fn plan(current: &SgState, desired: &SgResolved) -> Vec<SgStep> {
    let mut steps: Vec<SgStep> = desired
        .policies
        .keys()
        .filter(|id| !current.policies.contains(id))
        .map(|id| SgStep::WritePolicy(*id))
        .collect();
    for (i, v) in &desired.nics {
        if current.nics.get(i) != Some(v) {
            steps.push(SgStep::SetNic(*i, *v));
        }
    }
    for i in current.nics.keys() {
        if !desired.nics.contains_key(i) {
            steps.push(SgStep::ClearNic(*i));
        }
    }
    for id in &current.policies {
        if !desired.policies.contains_key(id) {
            steps.push(SgStep::DeletePolicy(*id));
        }
    }
    steps
}

/// What an [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgApplied {
    pub policies_written: usize,
    pub policies_deleted: usize,
    pub nics_set: usize,
    pub nics_cleared: usize,
    /// Trie entries written and deleted (orphans of failed writes included).
    pub trie_writes: usize,
    pub trie_deletes: usize,
}

impl SgApplied {
    pub fn is_noop(&self) -> bool {
        *self == SgApplied::default()
    }
}

// ---- reading ----

fn open<'m>(maps: &'m impl SgMaps, name: &'static str) -> Result<&'m Map, ApplyError> {
    maps.sg_map(name)
        .map_err(|source| ApplyError::Open { map: name, source })
}

fn open_mut<'m>(maps: &'m mut impl SgMaps, name: &'static str) -> Result<&'m mut Map, ApplyError> {
    maps.sg_map_mut(name)
        .map_err(|source| ApplyError::Open { map: name, source })
}

pub(crate) fn typed<'m, M>(maps: &'m impl SgMaps, name: &'static str) -> Result<M, ApplyError>
where
    M: TryFrom<&'m Map, Error = MapError>,
{
    M::try_from(open(maps, name)?).map_err(|source| ApplyError::Type { map: name, source })
}

pub(crate) fn typed_mut<'m, M>(
    maps: &'m mut impl SgMaps,
    name: &'static str,
) -> Result<M, ApplyError>
where
    M: TryFrom<&'m mut Map, Error = MapError>,
{
    M::try_from(open_mut(maps, name)?).map_err(|source| ApplyError::Type { map: name, source })
}

/// Reads the NIC slots and the complete policies' ids.
pub fn read_state(maps: &impl SgMaps) -> Result<SgState, ApplyError> {
    let mut st = SgState::default();
    let nics: Array<&MapData, NicSg> = typed(maps, maps::NICS)?;
    for (i, v) in nics.iter().enumerate() {
        let v = v.map_err(|source| ApplyError::Read {
            map: maps::NICS,
            source,
        })?;
        if v.flags & NIC_SG_ENFORCED != 0 {
            st.nics.insert(i as u32, v);
        }
    }
    let policies: HashMap<&MapData, u64, PolicyInfo> = typed(maps, maps::POLICIES)?;
    for k in policies.keys() {
        st.policies.insert(k.map_err(|source| ApplyError::Read {
            map: maps::POLICIES,
            source,
        })?);
    }
    Ok(st)
}

/// Every key of an LPM trie whose first 8 data bytes (the policy id) `keep` rejects.
fn trie_keys_of<K: aya::Pod>(
    maps: &impl SgMaps,
    name: &'static str,
    policy: impl Fn(&K) -> u64,
    keep: impl Fn(u64) -> bool,
) -> Result<Vec<TrieKey<K>>, ApplyError> {
    let trie: LpmTrie<&MapData, K, RuleSet> = typed(maps, name)?;
    let mut out = Vec::new();
    for k in trie.keys() {
        let k = k.map_err(|source| ApplyError::Read { map: name, source })?;
        if !keep(policy(&k.data())) {
            out.push((k.prefix_len(), k.data()));
        }
    }
    Ok(out)
}

// ---- writing ----

/// Brings the policy maps to `desired`: reads what they hold, plans, runs the plan.
pub fn apply(maps: &mut impl SgMaps, desired: &SgResolved) -> Result<SgApplied, ApplyError> {
    let current = read_state(maps)?;
    execute(maps, &plan(&current, desired), desired)
}

/// Runs `steps` (from [`plan`]) front to back; stops at the first failure.
pub fn execute(
    maps: &mut impl SgMaps,
    steps: &[SgStep],
    desired: &SgResolved,
) -> Result<SgApplied, ApplyError> {
    let mut done = SgApplied::default();
    let total = steps.len();
    let deletes: BTreeSet<u64> = steps
        .iter()
        .filter_map(|s| match s {
            SgStep::DeletePolicy(id) => Some(*id),
            _ => None,
        })
        .collect();
    // Trie keys to delete: of deleted policies, and orphans of no wanted policy.
    let (stale_remotes, stale_services) = if deletes.is_empty() {
        (vec![], vec![])
    } else {
        let wanted = |id| desired.policies.contains_key(&id);
        (
            trie_keys_of::<RemoteKey>(
                maps,
                maps::REMOTES,
                |k| u64::from_be_bytes(k.policy),
                wanted,
            )?,
            trie_keys_of::<ServiceKey>(
                maps,
                maps::SERVICES,
                |k| u64::from_be_bytes(k.policy),
                wanted,
            )?,
        )
    };
    for (n, step) in steps.iter().enumerate() {
        let failed = |map: &'static str, key: String, source: MapError| {
            write_error(map, key, step, source, n, total)
        };
        match step {
            SgStep::WritePolicy(id) => {
                let p = &desired.policies[id];
                let mut remotes: LpmTrie<&mut MapData, RemoteKey, RuleSet> =
                    typed_mut(maps, maps::REMOTES)?;
                for (len, k, v) in p.remote_entries() {
                    remotes
                        .insert(&Key::new(len, k), v, 0)
                        .map_err(|e| failed(maps::REMOTES, remote_name(len, &k), e))?;
                    done.trie_writes += 1;
                }
                let mut services: LpmTrie<&mut MapData, ServiceKey, RuleSet> =
                    typed_mut(maps, maps::SERVICES)?;
                for (len, k, v) in p.service_entries() {
                    services
                        .insert(&Key::new(len, k), v, 0)
                        .map_err(|e| failed(maps::SERVICES, service_name(len, &k), e))?;
                    done.trie_writes += 1;
                }
                let mut policies: HashMap<&mut MapData, u64, PolicyInfo> =
                    typed_mut(maps, maps::POLICIES)?;
                policies
                    .insert(id, p.info(), 0)
                    .map_err(|e| failed(maps::POLICIES, format!("policy {id:#018x}"), e))?;
                done.policies_written += 1;
            }
            SgStep::SetNic(i, _) | SgStep::ClearNic(i) => {
                let v = match step {
                    SgStep::SetNic(_, v) => *v,
                    _ => NicSg::default(),
                };
                let mut nics: Array<&mut MapData, NicSg> = typed_mut(maps, maps::NICS)?;
                nics.set(*i, v, 0)
                    .map_err(|e| failed(maps::NICS, format!("ifindex {i}"), e))?;
                if matches!(step, SgStep::SetNic(..)) {
                    done.nics_set += 1;
                } else {
                    done.nics_cleared += 1;
                }
            }
            SgStep::DeletePolicy(id) => {
                let mut policies: HashMap<&mut MapData, u64, PolicyInfo> =
                    typed_mut(maps, maps::POLICIES)?;
                absent_ok(policies.remove(id))
                    .map_err(|e| failed(maps::POLICIES, format!("policy {id:#018x}"), e))?;
                done.policies_deleted += 1;
            }
        }
    }
    // The tries last: no NIC uses these ids any more, and their allow sets are gone.
    done.trie_deletes += delete_trie_keys(maps, maps::REMOTES, &stale_remotes, remote_name, total)?;
    done.trie_deletes +=
        delete_trie_keys(maps, maps::SERVICES, &stale_services, service_name, total)?;
    Ok(done)
}

/// Deletes `keys` from the rule-set trie `name`; how many it deleted (or found gone).
fn delete_trie_keys<K: aya::Pod>(
    maps: &mut impl SgMaps,
    name: &'static str,
    keys: &[TrieKey<K>],
    describe: fn(u32, &K) -> String,
    total: usize,
) -> Result<usize, ApplyError> {
    let mut trie: LpmTrie<&mut MapData, K, RuleSet> = typed_mut(maps, name)?;
    for (len, k) in keys {
        absent_ok(trie.remove(&Key::new(*len, *k))).map_err(|source| ApplyError::Write {
            step: format!("delete {name} {}", describe(*len, k)),
            source,
            applied: total,
            total,
        })?;
    }
    Ok(keys.len())
}

fn remote_name(len: u32, k: &RemoteKey) -> String {
    format!(
        "policy {:#018x} remote {}/{}",
        u64::from_be_bytes(k.policy),
        Ipv4Addr::from(k.addr),
        len.saturating_sub(64)
    )
}

fn service_name(len: u32, k: &ServiceKey) -> String {
    format!(
        "policy {:#018x} protocol {} port {}/{}",
        u64::from_be_bytes(k.policy),
        k.proto,
        u16::from_be_bytes(k.port),
        len.saturating_sub(72)
    )
}

/// Removing what is already gone is success: the goal (absent) holds.
fn absent_ok(res: Result<(), MapError>) -> Result<(), MapError> {
    match res {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn is_full(source: &MapError) -> bool {
    // Hash maps report a full table as E2BIG, the LPM trie as ENOSPC.
    matches!(
        source,
        MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
    )
}

fn write_error(
    map: &'static str,
    key: String,
    step: &SgStep,
    source: MapError,
    applied: usize,
    total: usize,
) -> ApplyError {
    if is_full(&source) {
        ApplyError::MapFull {
            map,
            key,
            applied,
            total,
        }
    } else {
        ApplyError::Write {
            step: format!("{step:?} ({map} {key})"),
            source,
            applied,
            total,
        }
    }
}

// ---- blocklist ----

/// An operator-blocked prefix: packets with a source (`src`) or destination (`dst`) in it
/// are dropped first thing at `xdp_vm` and `xdp_underlay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockPrefix {
    pub addr: Ipv4,
    pub len: u8,
    pub src: bool,
    pub dst: bool,
}

impl BlockPrefix {
    /// The prefix with host bits cleared.
    pub fn normalized(self) -> Self {
        let mask = crate::intent::mask(self.len.min(32));
        Self {
            addr: (u32::from_be_bytes(self.addr) & mask).to_be_bytes(),
            len: self.len.min(32),
            ..self
        }
    }

    fn flags(&self) -> u32 {
        (if self.src { BLOCK_SRC } else { 0 }) | (if self.dst { BLOCK_DST } else { 0 })
    }

    fn contains(&self, other: &BlockPrefix) -> bool {
        let mask = crate::intent::mask(self.len);
        self.len <= other.len
            && u32::from_be_bytes(self.addr) & mask == u32::from_be_bytes(other.addr) & mask
    }
}

/// What [`apply_blocklist`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockApplied {
    pub written: usize,
    pub deleted: usize,
    /// Prefixes in the list after the apply.
    pub entries: usize,
}

/// The blocklist as the maps hold it: each prefix with its flags and counter slot.
pub fn read_blocklist(maps: &impl SgMaps) -> Result<BTreeMap<(Ipv4, u8), BlockEntry>, ApplyError> {
    let name = maps::BLOCKLIST;
    let trie: LpmTrie<&MapData, BlockKey, BlockEntry> = typed(maps, name)?;
    let mut out = BTreeMap::new();
    for e in trie.iter() {
        let (k, v) = e.map_err(|source| ApplyError::Read { map: name, source })?;
        out.insert((k.data().addr, k.prefix_len() as u8), v);
    }
    Ok(out)
}

/// Brings the blocklist to `wanted` (prefixes listed twice have their flags merged). New
/// prefixes get a free counter slot, zeroed first; prefixes staying keep theirs. Entries
/// are written before the lookups are switched on, and switched off before the last
/// entries go.
pub fn apply_blocklist(
    maps: &mut impl SgMaps,
    wanted: &[BlockPrefix],
) -> Result<BlockApplied, ApplyError> {
    let mut merged: BTreeMap<(Ipv4, u8), u32> = BTreeMap::new();
    for p in wanted.iter().map(|p| p.normalized()) {
        *merged.entry((p.addr, p.len)).or_default() |= p.flags();
    }
    let prefixes: Vec<BlockPrefix> = merged
        .iter()
        .map(|(&(addr, len), &f)| BlockPrefix {
            addr,
            len,
            src: f & BLOCK_SRC != 0,
            dst: f & BLOCK_DST != 0,
        })
        .collect();
    let current = read_blocklist(maps)?;
    let capacity = {
        let stats: PerCpuArray<&MapData, Counter> = typed(maps, maps::BLOCK_STATS)?;
        stats.len()
    };
    // Slots of entries about to go stay taken too: until deleted they still count there.
    let mut used: BTreeSet<u32> = current.values().map(|v| v.counter).collect();
    let mut done = BlockApplied {
        entries: prefixes.len(),
        ..Default::default()
    };
    let total = prefixes.len() + current.len() + 1;
    let mut writes: Vec<(BlockKey, u8, BlockEntry, bool)> = Vec::new();
    for p in &prefixes {
        // Longest match decides, so fold in the flags of every containing prefix.
        let flags = prefixes
            .iter()
            .filter(|q| q.contains(p))
            .fold(0, |f, q| f | q.flags());
        let old = current.get(&(p.addr, p.len));
        let counter = match old {
            Some(e) => e.counter,
            None => {
                let Some(free) = (0..capacity).find(|c| !used.contains(c)) else {
                    return Err(ApplyError::TooLarge {
                        map: maps::BLOCK_STATS,
                        entries: prefixes.len(),
                        capacity: capacity as usize,
                    });
                };
                used.insert(free);
                free
            }
        };
        let entry = BlockEntry { flags, counter };
        if old != Some(&entry) {
            writes.push((BlockKey { addr: p.addr }, p.len, entry, old.is_none()));
        }
    }
    if !writes.is_empty() {
        let mut stats: PerCpuArray<&mut MapData, Counter> = typed_mut(maps, maps::BLOCK_STATS)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| ApplyError::Read {
            map: maps::BLOCK_STATS,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        for (k, len, entry, fresh) in &writes {
            if *fresh {
                let zero = aya::maps::PerCpuValues::try_from(vec![Counter::default(); cpus])
                    .expect("one value per CPU");
                stats
                    .set(entry.counter, zero, 0)
                    .map_err(|source| ApplyError::Write {
                        step: format!(
                            "zero counter {} for {}/{len}",
                            entry.counter,
                            Ipv4Addr::from(k.addr)
                        ),
                        source,
                        applied: done.written,
                        total,
                    })?;
            }
        }
    }
    let mut trie: LpmTrie<&mut MapData, BlockKey, BlockEntry> = typed_mut(maps, maps::BLOCKLIST)?;
    for (k, len, entry, _) in &writes {
        trie.insert(&Key::new(*len as u32, *k), entry, 0)
            .map_err(|source| {
                let key = format!("{}/{len}", Ipv4Addr::from(k.addr));
                if is_full(&source) {
                    ApplyError::MapFull {
                        map: maps::BLOCKLIST,
                        key,
                        applied: done.written,
                        total,
                    }
                } else {
                    ApplyError::Write {
                        step: format!("insert {} {key}", maps::BLOCKLIST),
                        source,
                        applied: done.written,
                        total,
                    }
                }
            })?;
        done.written += 1;
    }
    write_blocklist_entries(maps, prefixes.len() as u32)?;
    let mut trie: LpmTrie<&mut MapData, BlockKey, BlockEntry> = typed_mut(maps, maps::BLOCKLIST)?;
    for &(addr, len) in current.keys().filter(|k| !merged.contains_key(k)) {
        absent_ok(trie.remove(&Key::new(len as u32, BlockKey { addr }))).map_err(|source| {
            ApplyError::Write {
                step: format!("delete {} {}/{len}", maps::BLOCKLIST, Ipv4Addr::from(addr)),
                source,
                applied: done.written + done.deleted,
                total,
            }
        })?;
        done.deleted += 1;
    }
    Ok(done)
}

/// Sets `SgConfig::blocklist_entries` (0 switches the lookups off), keeping its flags.
fn write_blocklist_entries(maps: &mut impl SgMaps, entries: u32) -> Result<(), ApplyError> {
    let name = maps::CONFIG;
    let mut cfg: Array<&mut MapData, SgConfig> = typed_mut(maps, name)?;
    let old = cfg
        .get(&0, 0)
        .map_err(|source| ApplyError::Read { map: name, source })?;
    if old.blocklist_entries == entries {
        return Ok(());
    }
    cfg.set(
        0,
        SgConfig {
            blocklist_entries: entries,
            ..old
        },
        0,
    )
    .map_err(|source| ApplyError::Write {
        step: format!("set {name} blocklist_entries {entries}"),
        source,
        applied: 0,
        total: 1,
    })
}

/// Packets and bytes each listed prefix dropped (summed over CPUs).
pub fn blocklist_counters(maps: &impl SgMaps) -> Result<Vec<(BlockPrefix, Counter)>, ApplyError> {
    let list = read_blocklist(maps)?;
    let stats: PerCpuArray<&MapData, Counter> = typed(maps, maps::BLOCK_STATS)?;
    let mut out = Vec::new();
    for ((addr, len), e) in list {
        let per_cpu = stats
            .get(&e.counter, 0)
            .map_err(|source| ApplyError::Read {
                map: maps::BLOCK_STATS,
                source,
            })?;
        let sum = per_cpu.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        });
        let p = BlockPrefix {
            addr,
            len,
            src: e.flags & BLOCK_SRC != 0,
            dst: e.flags & BLOCK_DST != 0,
        };
        out.push((p, sum));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sg::NicPolicies;

    fn policy(id: u64) -> Policy {
        Policy {
            id,
            rules: vec![],
            allow: RuleSet::EMPTY,
            remotes: vec![],
            services: vec![],
        }
    }

    fn tables(nics: &[(&str, u64, u64)]) -> SgTables {
        let mut ids: BTreeSet<u64> = BTreeSet::new();
        let nics = nics
            .iter()
            .map(|(n, i, e)| {
                ids.extend([*i, *e].into_iter().filter(|id| *id != 0));
                NicPolicies {
                    ifname: n.to_string(),
                    nic: format!("nic-{n}"),
                    ingress: *i,
                    egress: *e,
                }
            })
            .collect();
        SgTables {
            nics,
            policies: ids.into_iter().map(policy).collect(),
        }
    }

    fn index(n: &str) -> Option<u32> {
        match n {
            "vm1" => Some(5),
            "vm2" => Some(6),
            "big" => Some(9000),
            _ => None,
        }
    }

    #[test]
    fn resolve_keeps_the_policies_of_resolved_nics_and_names_the_rest() {
        let t = tables(&[("vm1", 1, 0), ("vm2", 2, 3), ("gone", 4, 4), ("big", 5, 5)]);
        let r = resolve(&t, 4096, index);
        assert_eq!(r.nics.keys().copied().collect::<Vec<_>>(), [5, 6]);
        assert_eq!(r.policies.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r.unresolved, ["gone", "big"]);
        assert_eq!(r.nics[&6].flags, NIC_SG_ENFORCED);
    }

    #[test]
    fn plans_new_policies_then_nics_then_deletes() {
        let old = resolve(&tables(&[("vm1", 1, 0), ("vm2", 2, 0)]), 4096, index);
        let current = SgState {
            nics: old.nics.clone(),
            policies: [1, 2].into(),
        };
        // vm1 moves to policy 3; vm2 disappears.
        let new = resolve(&tables(&[("vm1", 3, 0)]), 4096, index);
        let steps = plan(&current, &new);
        assert_eq!(
            steps,
            [
                SgStep::WritePolicy(3),
                SgStep::SetNic(5, new.nics[&5]),
                SgStep::ClearNic(6),
                SgStep::DeletePolicy(1),
                SgStep::DeletePolicy(2),
            ]
        );
        // Applied: nothing left to do.
        let after = SgState {
            nics: new.nics.clone(),
            policies: [3].into(),
        };
        assert!(plan(&after, &new).is_empty());
    }

    #[test]
    fn block_prefixes_normalize_and_nest() {
        let p = BlockPrefix {
            addr: [10, 1, 2, 3],
            len: 16,
            src: true,
            dst: false,
        }
        .normalized();
        assert_eq!(p.addr, [10, 1, 0, 0]);
        let host = BlockPrefix {
            addr: [10, 1, 9, 9],
            len: 32,
            src: false,
            dst: true,
        };
        assert!(p.contains(&host) && !host.contains(&p));
        assert_eq!(p.flags() | host.flags(), BLOCK_SRC | BLOCK_DST);
        let all = BlockPrefix {
            addr: [0; 4],
            len: 0,
            src: true,
            dst: true,
        };
        assert!(all.contains(&host));
    }
}
