//! The connection table, userspace side (ABI and design: `common/src/conntrack.rs`; the
//! datapath: `ebpf/src/conntrack.rs`): its configuration, its counts, the periodic sweep
//! that collects expired entries (and NAT public-side entries whose flow is gone) and
//! notices LRU evictions, and a listing of its flows.
//!
//! The table is read with `BPF_MAP_LOOKUP_BATCH` (a few hundred syscalls for a million
//! entries instead of two million), whose bucket cursor stays valid while the datapath
//! inserts and deletes; get-next-key iteration would restart from the first key whenever
//! the current one vanished.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use serde::{Deserialize, Serialize};
use sluice_common::{
    conntrack::{
        maps, CtConfig, CtCount, CtEntry, CtEvent, CtKey, CtState, CT_COUNT_DATAPATH,
        CT_COUNT_EVICTED, CT_COUNT_SLOTS, CT_COUNT_USERSPACE, CT_MIDSTREAM, CT_ORIG_IS_A,
        CT_REVOKED, CT_SEEN_REPLY, CT_TOUCH_NS,
    },
    lb::{LB_COUNTED, LB_LINK_FORWARD, LB_LINK_REVERSE, LB_VNI},
    nat::{LINK_NONE, NAT_VNI},
    proto::IPPROTO_ICMP,
    vpc::Ipv4,
};

use crate::{
    sg::apply::{typed, typed_mut, SgMaps},
    vpc::apply::ApplyError,
};

/// CLOCK_MONOTONIC in ns: the clock of the entries' timestamps (`bpf_ktime_get_coarse_ns`
/// is its coarse reading, at most a tick behind).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- configuration ----

/// `max_entries` to give `SLUICE_CT` for an admission limit of `max_entries` on this
/// machine (LRU headroom per possible CPU; see [`sluice_common::conntrack::ct_map_size`]).
/// The object declares the size for [`CtConfig::DEFAULT`] and 64 CPUs; a loader wanting
/// another passes this to `EbpfLoader::set_max_entries` before the map is created (a pinned
/// map keeps the size it was created with).
pub fn map_size_for(max_entries: u32) -> u32 {
    let cpus = aya::util::nr_cpus().map_or(64, |n| n as u32);
    sluice_common::conntrack::ct_map_size(max_entries, cpus)
}

/// The configuration the datapath applies ([`CtConfig::effective`]).
pub fn read_config(maps: &impl SgMaps) -> Result<CtConfig, ApplyError> {
    let a: Array<&MapData, CtConfig> = typed(maps, maps::CONFIG)?;
    let c = a.get(&0, 0).map_err(|source| ApplyError::Read {
        map: maps::CONFIG,
        source,
    })?;
    Ok(*c.effective())
}

/// Why a [`CtConfig`] cannot be written, if it cannot: a zero `max_entries` means "not
/// configured", and a timeout under [`CT_TOUCH_NS`] would break the datapath's fast path
/// (an entry touched less than that long ago is taken to be alive).
pub fn config_error(cfg: &CtConfig) -> Option<String> {
    if cfg.max_entries == 0 {
        return Some("max_entries must be at least 1".into());
    }
    let timeouts = [
        ("tcp_syn_ns", cfg.tcp_syn_ns),
        ("tcp_established_ns", cfg.tcp_established_ns),
        ("tcp_fin_ns", cfg.tcp_fin_ns),
        ("tcp_close_ns", cfg.tcp_close_ns),
        ("udp_ns", cfg.udp_ns),
        ("icmp_ns", cfg.icmp_ns),
        ("other_ns", cfg.other_ns),
        ("nat_time_wait_ns", cfg.nat_time_wait_ns),
    ];
    timeouts
        .iter()
        .find(|(_, v)| *v < CT_TOUCH_NS)
        .map(|(name, v)| format!("{name} is {v} ns; timeouts are at least {CT_TOUCH_NS} ns (1 s)"))
}

/// Writes the admission limit and timeouts; new flows and the next packet of every flow
/// see them. Refused, writing nothing, if [`config_error`] finds fault.
pub fn write_config(maps: &mut impl SgMaps, cfg: &CtConfig) -> Result<(), ApplyError> {
    if let Some(reason) = config_error(cfg) {
        return Err(ApplyError::Write {
            step: format!("set {}: {reason}", maps::CONFIG),
            source: MapError::InvalidValueSize {
                size: 0,
                expected: 1,
            },
            applied: 0,
            total: 1,
        });
    }
    let mut a: Array<&mut MapData, CtConfig> = typed_mut(maps, maps::CONFIG)?;
    a.set(0, cfg, 0).map_err(|source| ApplyError::Write {
        step: format!("set {}", maps::CONFIG),
        source,
        applied: 0,
        total: 1,
    })
}

// ---- counts ----

/// The table's counters, as metrics show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtCounts {
    /// Entries now (inserted minus deleted, over every writer).
    pub entries: u64,
    pub inserts: u64,
    /// New flows refused: the table was at its admission limit, or the map refused the
    /// insert.
    pub insert_failures: u64,
    /// Entries the LRU evicted, as sweeps found them missing.
    pub evictions: u64,
    /// Entries deleted because they ended (RST) or expired: by the datapath or a sweep.
    pub collections: u64,
    /// Per-event totals, by [`CtEvent`] discriminant.
    pub events: [u64; CtEvent::COUNT as usize],
}

impl CtCounts {
    pub fn event(&self, e: CtEvent) -> u64 {
        self.events[e as usize]
    }
}

fn read_slots(maps: &impl SgMaps) -> Result<Vec<CtCount>, ApplyError> {
    let a: Array<&MapData, CtCount> = typed(maps, maps::COUNT)?;
    (0..CT_COUNT_SLOTS)
        .map(|i| {
            a.get(&i, 0).map_err(|source| ApplyError::Read {
                map: maps::COUNT,
                source,
            })
        })
        .collect()
}

pub fn counts(maps: &impl SgMaps) -> Result<CtCounts, ApplyError> {
    let slots = read_slots(maps)?;
    let stats: PerCpuArray<&MapData, u64> = typed(maps, maps::STATS)?;
    let mut events = [0u64; CtEvent::COUNT as usize];
    for (i, e) in events.iter_mut().enumerate() {
        let per_cpu = stats
            .get(&(i as u32), 0)
            .map_err(|source| ApplyError::Read {
                map: maps::STATS,
                source,
            })?;
        *e = per_cpu.iter().sum();
    }
    let slot = |i: u32| slots[i as usize];
    Ok(CtCounts {
        entries: CtCount::entries(&slots),
        inserts: slots.iter().map(|s| s.inserted).sum(),
        insert_failures: events[CtEvent::Full as usize] + events[CtEvent::InsertFailed as usize],
        evictions: slot(CT_COUNT_EVICTED).deleted,
        collections: slot(CT_COUNT_DATAPATH).deleted + slot(CT_COUNT_USERSPACE).deleted,
        events,
    })
}

/// Adds to the userspace-owned slot `slot` (its only writer is this process).
pub fn add_to_slot(
    maps: &mut impl SgMaps,
    slot: u32,
    inserted: u64,
    deleted: u64,
) -> Result<(), ApplyError> {
    if inserted == 0 && deleted == 0 {
        return Ok(());
    }
    let mut a: Array<&mut MapData, CtCount> = typed_mut(maps, maps::COUNT)?;
    let old = a.get(&slot, 0).map_err(|source| ApplyError::Read {
        map: maps::COUNT,
        source,
    })?;
    let new = CtCount {
        inserted: old.inserted + inserted,
        deleted: old.deleted + deleted,
    };
    a.set(slot, new, 0).map_err(|source| ApplyError::Write {
        step: format!("add to {} slot {slot}", maps::COUNT),
        source,
        applied: 0,
        total: 1,
    })
}

// ---- reading the table ----

/// Every entry, read in batches.
pub fn entries(maps: &impl SgMaps) -> Result<Vec<(CtKey, CtEntry)>, ApplyError> {
    let name = maps::CONNTRACK;
    let m = maps
        .sg_map(name)
        .map_err(|source| ApplyError::Open { map: name, source })?;
    let data = match m {
        Map::LruHashMap(d) | Map::HashMap(d) => d,
        _ => {
            return Err(ApplyError::Open {
                map: name,
                source: anyhow::anyhow!("not a hash map"),
            })
        }
    };
    match lookup_batch(data.fd().as_fd()) {
        Ok(all) => Ok(all),
        // Kernels without batch lookups (before 5.6): one key at a time, deduplicated.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
            let h: HashMap<&MapData, CtKey, CtEntry> = typed(maps, name)?;
            let mut all = std::collections::BTreeMap::new();
            for kv in h.iter() {
                let (k, v) = kv.map_err(|source| ApplyError::Read { map: name, source })?;
                all.insert(k, v);
            }
            Ok(all.into_iter().collect())
        }
        Err(io_error) => Err(ApplyError::Read {
            map: name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            }),
        }),
    }
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
pub(crate) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a bucket holding more than this would need a larger one.
const BATCH: usize = 8192;

fn lookup_batch(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(CtKey, CtEntry)>> {
    let mut out = Vec::new();
    let mut keys = vec![CtKey::default(); BATCH];
    let mut values = vec![CtEntry::default(); BATCH];
    // The hash map's cursor is a bucket index (u32); room for a u64 costs nothing.
    let mut cursor = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u64 as u64
            },
            out_batch: &mut cursor as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let err = crate::sys_bpf::call(BPF_MAP_LOOKUP_BATCH, &mut attr).err();
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => first = false,
            // ENOENT: the last bucket was read.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
    }
}

/// One connection, for listings (`sluicectl`): originator and responder as the first
/// packet saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtFlow {
    pub vni: u32,
    pub protocol: u8,
    pub orig: String,
    pub orig_port: u16,
    pub resp: String,
    pub resp_port: u16,
    pub state: String,
    pub age_secs: u64,
    pub idle_secs: u64,
    /// Seconds left before it expires without packets (0: expired, a sweep collects it).
    pub expires_in_secs: u64,
    /// `seen_reply`, `revoked`, `midstream`.
    pub flags: Vec<String>,
    /// Local NICs it was admitted for (0: not on this host) and their policy ids.
    pub egress_ifindex: u32,
    pub egress_policy: u64,
    pub ingress_ifindex: u32,
    pub ingress_policy: u64,
}

impl CtFlow {
    pub fn new(k: &CtKey, e: &CtEntry, now_ns: u64, cfg: &CtConfig) -> Self {
        let ((o, op), (r, rp)) = k.ends(e.flags & CT_ORIG_IS_A != 0);
        let flags = [
            (CT_SEEN_REPLY, "seen_reply"),
            (CT_REVOKED, "revoked"),
            (CT_MIDSTREAM, "midstream"),
        ]
        .iter()
        .filter(|(f, _)| e.flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
        let idle = now_ns.saturating_sub(e.last_seen_ns);
        Self {
            vni: k.vni,
            protocol: k.proto,
            orig: Ipv4Addr::from(o).to_string(),
            orig_port: u16::from_be_bytes(op),
            resp: Ipv4Addr::from(r).to_string(),
            resp_port: u16::from_be_bytes(rp),
            state: CtState::from_u8(e.state)
                .map_or("unknown", |s| s.name())
                .into(),
            age_secs: now_ns.saturating_sub(e.created_ns) / 1_000_000_000,
            idle_secs: idle / 1_000_000_000,
            expires_in_secs: e.timeout_ns(k.proto, cfg).saturating_sub(idle) / 1_000_000_000,
            flags,
            egress_ifindex: e.egress_ifindex,
            egress_policy: e.egress_policy,
            ingress_ifindex: e.ingress_ifindex,
            ingress_policy: e.ingress_policy,
        }
    }
}

/// Every connection, oldest first.
pub fn list(maps: &impl SgMaps, now_ns: u64) -> Result<Vec<CtFlow>, ApplyError> {
    let cfg = read_config(maps)?;
    let mut all = entries(maps)?;
    all.sort_by_key(|(k, e)| (e.created_ns, *k));
    Ok(all
        .iter()
        .map(|(k, e)| CtFlow::new(k, e, now_ns, &cfg))
        .collect())
}

// ---- the sweep ----

/// What one [`sweep`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepStats {
    /// Entries read.
    pub scanned: u64,
    /// Expired entries this sweep deleted.
    pub collected: u64,
    /// Entries the counters promised that were neither seen, collected, nor deleted by
    /// the datapath meanwhile: evicted by the LRU (a lower bound; a later sweep finds
    /// the rest).
    pub evicted: u64,
    /// Entries left.
    pub live: u64,
    /// Of `collected`: NAT public-side and LB forward entries whose partner no longer
    /// links to them.
    pub unlinked: u64,
    /// Live LB forward entries: the active connections recounted.
    #[serde(default)]
    pub lb_forward: u64,
}

/// Entries without a clock of their own: they live while the entry they translate
/// for (their partner) exists, has not expired, and links back to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dependent {
    /// A NAT public-side entry (under [`NAT_VNI`]); its partner is the private entry.
    NatPublic,
    /// A load balancer's forward entry (under `vni | LB_VNI`, the client's 5-tuple to
    /// the VIP); its partner is the translated flow's entry (client to backend, under the
    /// VNI) with a reverse link naming the VIP.
    LbForward,
}

fn dependent(k: &CtKey) -> Option<Dependent> {
    // An Internet flow's pin at a host that forwards it to its backend's host (under
    // `NAT_VNI | LB_VNI`) has no partner here: it keeps its own clock.
    if k.vni == NAT_VNI | LB_VNI {
        None
    } else if k.vni == NAT_VNI {
        Some(Dependent::NatPublic)
    } else if k.vni & LB_VNI != 0 {
        Some(Dependent::LbForward)
    } else {
        None
    }
}

/// The partner's key of a dependent entry (`k`, `e`), taking end `a` (`first_is_a`) or
/// `b` as the dependent's own translated end (EIP and port; VIP and port), and that end.
fn partner_key(
    kind: Dependent,
    k: &CtKey,
    e: &CtEntry,
    first_is_a: bool,
) -> (CtKey, Ipv4, [u8; 2]) {
    let ((own, oport), (remote, rport)) = k.ends(first_is_a);
    let (vni, addr, port, rport) = match kind {
        // ICMP echo keys carry the identifier on both sides, so the private key's
        // remote "port" is the private identifier.
        Dependent::NatPublic => {
            let link = e.nat;
            let rport = if k.proto == IPPROTO_ICMP {
                link.port
            } else {
                rport
            };
            (link.vni, link.addr, link.port, rport)
        }
        Dependent::LbForward => (k.vni & !LB_VNI, e.lb.addr, e.lb.port, rport),
    };
    let (key, _) = CtKey::new(vni, k.proto, addr, port, remote, rport);
    (key, own, oport)
}

/// Whether partner entry `p` links back to the end (`addr`, `port`).
fn links_back(kind: Dependent, p: &CtEntry, addr: Ipv4, port: [u8; 2]) -> bool {
    match kind {
        Dependent::NatPublic => p.nat.kind != LINK_NONE && p.nat.addr == addr && p.nat.port == port,
        Dependent::LbForward => {
            p.lb.kind == LB_LINK_REVERSE && p.lb.addr == addr && p.lb.port == port
        }
    }
}

/// The partner that keeps the dependent entry (`k`, `e`) alive, if any: a live one
/// (`alive`: not expired) that points back at one of its ends. `get` reads an entry.
fn partner<E>(
    kind: Dependent,
    k: &CtKey,
    e: &CtEntry,
    alive: impl Fn(&CtKey, &CtEntry) -> bool,
    mut get: impl FnMut(&CtKey) -> Result<Option<CtEntry>, E>,
) -> Result<Option<CtEntry>, E> {
    for first_is_a in [true, false] {
        let (pk, addr, port) = partner_key(kind, k, e, first_is_a);
        let p = get(&pk)?.filter(|p| links_back(kind, p, addr, port) && alive(&pk, p));
        if p.is_some() {
            return Ok(p);
        }
    }
    Ok(None)
}

/// The backend slot whose active connection a live forward entry (`kind`, with partner
/// `p`) holds: the datapath counts a balanced flow from its first packet until its
/// translated entry ends, marking the reverse link [`LB_COUNTED`] meanwhile.
fn counted_backend(kind: Dependent, e: &CtEntry, p: &CtEntry) -> Option<u32> {
    (kind == Dependent::LbForward && e.lb.kind == LB_LINK_FORWARD && p.lb.flags & LB_COUNTED != 0)
        .then_some(p.lb.backend)
}

/// Deletes the entries expired at `now_ns` (each re-read just before its delete, so a
/// flow the datapath refreshed meanwhile stays), and books LRU evictions. NAT public-side
/// entries (under [`NAT_VNI`]) and load balancer forward entries (under `vni | LB_VNI`)
/// have no clock of their own: they go once the entry they translate for is gone, expired
/// or links elsewhere (and are at least [`CT_TOUCH_NS`] old, as the datapath inserts them
/// just before it links their partner). Then the active connections per backend slot
/// (`SLUICE_LB_ACTIVE`, read by `least_conn`) are recounted from the live forward entries
/// and written where they differ, when the maps include it.
pub fn sweep(maps: &mut impl SgMaps, now_ns: u64) -> Result<SweepStats, ApplyError> {
    let cfg = read_config(maps)?;
    let before = read_slots(maps)?;
    let all = entries(maps)?;
    let snapshot: std::collections::HashMap<CtKey, CtEntry> = all.iter().copied().collect();
    let mut st = SweepStats {
        scanned: all.len() as u64,
        ..Default::default()
    };
    let mut active: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    {
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> = typed_mut(maps, maps::CONNTRACK)?;
        let read = |table: &HashMap<&mut MapData, CtKey, CtEntry>, k: &CtKey| match table.get(k, 0)
        {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ApplyError::Read {
                map: maps::CONNTRACK,
                source,
            }),
        };
        let alive = |pk: &CtKey, p: &CtEntry| !p.is_expired(now_ns, pk.proto, &cfg);
        for (k, e) in &all {
            let kind = dependent(k);
            // A live dependent: one whose partner links back (or that is too young to
            // have been linked yet); counted when it holds an active connection.
            let mut live = |e: &CtEntry, p: Option<CtEntry>| {
                st.live += 1;
                if let (Some(kind), Some(p)) = (kind, p) {
                    if let Some(slot) = counted_backend(kind, e, &p) {
                        *active.entry(slot).or_insert(0) += 1;
                    }
                }
            };
            match kind {
                Some(kind) => {
                    let p = partner(kind, k, e, alive, |pk| {
                        Ok::<_, ()>(snapshot.get(pk).copied())
                    })
                    .unwrap_or(None);
                    if p.is_some() || now_ns.saturating_sub(e.created_ns) < CT_TOUCH_NS {
                        live(e, p);
                        continue;
                    }
                }
                None if !e.is_expired(now_ns, k.proto, &cfg) => {
                    live(e, None);
                    continue;
                }
                None => {}
            }
            // Re-read just before the delete: the datapath may have moved on meanwhile.
            let Some(fresh) = read(&table, k)? else {
                continue;
            };
            match kind {
                Some(kind) => {
                    let p = partner(kind, k, &fresh, alive, |pk| read(&table, pk))?;
                    if p.is_some() {
                        live(&fresh, p);
                        continue;
                    }
                }
                None if !fresh.is_expired(now_ns, k.proto, &cfg) => {
                    live(&fresh, None);
                    continue;
                }
                None => {}
            }
            match table.remove(k) {
                Ok(()) => {
                    st.collected += 1;
                    st.unlinked += kind.is_some() as u64;
                }
                // The datapath collected it first (and counted it).
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(ApplyError::Write {
                        step: format!("delete from {}", maps::CONNTRACK),
                        source,
                        applied: st.collected as usize,
                        total: all.len(),
                    })
                }
            }
        }
    }
    let after = read_slots(maps)?;
    let dp = CT_COUNT_DATAPATH as usize;
    let dp_deleted = after[dp].deleted.saturating_sub(before[dp].deleted);
    st.evicted = CtCount::entries(&before).saturating_sub(st.live + st.collected + dp_deleted);
    add_to_slot(maps, CT_COUNT_USERSPACE, 0, st.collected)?;
    add_to_slot(maps, CT_COUNT_EVICTED, 0, st.evicted)?;
    st.lb_forward = active.values().map(|n| *n as u64).sum();
    if maps.sg_map(sluice_common::lb::maps::ACTIVE).is_ok() {
        write_active(maps, &active)?;
    }
    Ok(st)
}

/// Writes the active connections per backend slot where the map differs: `active`'s
/// counts, zero elsewhere. (A forward entry the datapath inserts between the count and
/// the write is missed until the next sweep.)
fn write_active(
    maps: &mut impl SgMaps,
    active: &std::collections::BTreeMap<u32, u32>,
) -> Result<(), ApplyError> {
    let name = sluice_common::lb::maps::ACTIVE;
    let mut a: Array<&mut MapData, u32> = typed_mut(maps, name)?;
    let current: Vec<(u32, u32)> = a
        .iter()
        .enumerate()
        .filter_map(|(slot, v)| v.ok().map(|v| (slot as u32, v)))
        .filter(|(slot, v)| active.get(slot).copied().unwrap_or(0) != *v)
        .collect();
    let stale: std::collections::BTreeSet<u32> = current.iter().map(|(s, _)| *s).collect();
    for slot in stale {
        let n = active.get(&slot).copied().unwrap_or(0);
        a.set(slot, n, 0).map_err(|source| ApplyError::Write {
            step: format!("set {name} slot {slot} to {n}"),
            source,
            applied: 0,
            total: 1,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_attr_matches_the_kernels_layout() {
        // struct { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64
        // elem_flags, flags; }
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }

    #[test]
    fn flows_show_the_originator_first() {
        use sluice_common::{conntrack::TCP_SYN, proto::IPPROTO_TCP};
        let (k, src_is_a) = CtKey::new(
            7,
            IPPROTO_TCP,
            [10, 0, 2, 9],
            [0x9c, 0x40],
            [10, 0, 1, 4],
            [0, 80],
        );
        assert!(!src_is_a);
        let e = CtEntry::new(1_000_000_000, IPPROTO_TCP, src_is_a, TCP_SYN);
        let cfg = CtConfig::DEFAULT;
        let f = CtFlow::new(&k, &e, 3_000_000_000, &cfg);
        assert_eq!((f.orig.as_str(), f.orig_port), ("10.0.2.9", 40000));
        assert_eq!((f.resp.as_str(), f.resp_port), ("10.0.1.4", 80));
        assert_eq!(
            (f.state.as_str(), f.age_secs, f.idle_secs),
            ("syn_sent", 2, 2)
        );
        assert_eq!(f.expires_in_secs, cfg.tcp_syn_ns / 1_000_000_000 - 2);
        assert!(f.flags.is_empty());
    }

    /// A translated flow's two entries as the datapath writes them: the private one under
    /// the VM's VNI, the public one under `NAT_VNI`.
    fn nat_pair(proto: u8, private_port: u16, public_port: u16) -> [(CtKey, CtEntry); 2] {
        use sluice_common::nat::{NatLink, LINK_SNAT};
        let (vm, eip, remote) = ([10, 0, 1, 10], [203, 0, 113, 10], [198, 51, 100, 7]);
        let echo = proto == IPPROTO_ICMP;
        let (pp, ep) = (private_port.to_be_bytes(), public_port.to_be_bytes());
        let rport = |own: [u8; 2]| if echo { own } else { 80u16.to_be_bytes() };
        let (pk, _) = CtKey::new(100, proto, vm, pp, remote, rport(pp));
        let (ek, _) = CtKey::new(NAT_VNI, proto, eip, ep, remote, rport(ep));
        let link = |addr, port, vni| NatLink {
            addr,
            port,
            kind: LINK_SNAT,
            vni,
            ..Default::default()
        };
        let private = CtEntry {
            nat: link(eip, ep, 0),
            ..Default::default()
        };
        let public = CtEntry {
            nat: link(vm, pp, 100),
            ..Default::default()
        };
        [(pk, private), (ek, public)]
    }

    fn linked_in(table: &[(CtKey, CtEntry)], dep: &(CtKey, CtEntry), now_ns: u64) -> bool {
        let get = |k: &CtKey| Ok::<_, ()>(table.iter().find(|(t, _)| t == k).map(|(_, e)| *e));
        let alive = |k: &CtKey, e: &CtEntry| !e.is_expired(now_ns, k.proto, &CtConfig::DEFAULT);
        let kind = dependent(&dep.0).expect("a dependent entry");
        partner(kind, &dep.0, &dep.1, alive, get).unwrap().is_some()
    }

    fn linked(table: &[(CtKey, CtEntry)], public: &(CtKey, CtEntry)) -> bool {
        linked_in(table, public, 0)
    }

    /// A balanced flow's two entries as the datapath writes them: the forward one under
    /// `vni | LB_VNI` (client -> VIP, naming the backend), the translated one under the
    /// VNI (client -> backend, naming the VIP).
    fn lb_pair(proto: u8, created_ns: u64) -> [(CtKey, CtEntry); 2] {
        use sluice_common::lb::LbLink;
        let (client, vip, backend) = ([10, 0, 1, 10], [10, 0, 1, 100], [10, 0, 1, 12]);
        let (cport, vport, bport) = (40000u16.to_be_bytes(), [0, 80], 8080u16.to_be_bytes());
        let (fk, c_is_a) = CtKey::new(7 | LB_VNI, proto, client, cport, vip, vport);
        let (tk, t_is_a) = CtKey::new(7, proto, client, cport, backend, bport);
        let forward = CtEntry {
            lb: LbLink {
                addr: backend,
                port: bport,
                kind: LB_LINK_FORWARD,
                backend: 4,
                ..Default::default()
            },
            ..CtEntry::new(created_ns, proto, c_is_a, sluice_common::conntrack::TCP_SYN)
        };
        let translated = CtEntry {
            lb: LbLink {
                addr: vip,
                port: vport,
                kind: LB_LINK_REVERSE,
                backend: 4,
                ..Default::default()
            },
            ..CtEntry::new(created_ns, proto, t_is_a, sluice_common::conntrack::TCP_SYN)
        };
        [(fk, forward), (tk, translated)]
    }

    #[test]
    fn a_forward_lb_entry_lives_while_its_translated_entry_links_back_and_lives() {
        for proto in [6, 17] {
            let t0 = 5_000_000_000;
            let [forward, translated] = lb_pair(proto, t0);
            assert_eq!(dependent(&forward.0), Some(Dependent::LbForward));
            assert_eq!(dependent(&translated.0), None);
            assert!(
                linked_in(&[forward, translated], &forward, t0),
                "proto {proto}"
            );
            // Gone.
            assert!(!linked_in(&[forward], &forward, t0), "proto {proto}");
            // Expired (a SYN entry: the shortest TCP timeout; UDP's own).
            let later = t0
                + CtConfig::DEFAULT
                    .tcp_established_ns
                    .max(CtConfig::DEFAULT.udp_ns)
                + 1;
            assert!(
                !linked_in(&[forward, translated], &forward, later),
                "proto {proto}"
            );
            // Re-created for another VIP port, or without a link.
            let mut other = translated;
            other.1.lb.port = [0, 81];
            assert!(!linked_in(&[forward, other], &forward, t0), "proto {proto}");
            let mut plain = translated;
            plain.1.lb = Default::default();
            assert!(!linked_in(&[forward, plain], &forward, t0), "proto {proto}");
        }
        // A NAT public entry is not taken for a balancer's, nor the reverse.
        let [_, public] = nat_pair(6, 40000, 1234);
        assert_eq!(dependent(&public.0), Some(Dependent::NatPublic));
    }

    #[test]
    fn a_forward_entry_holds_an_active_connection_while_its_reverse_link_is_counted() {
        let [forward, mut translated] = lb_pair(6, 0);
        let kind = Dependent::LbForward;
        assert_eq!(counted_backend(kind, &forward.1, &translated.1), None);
        translated.1.lb.flags |= LB_COUNTED;
        assert_eq!(counted_backend(kind, &forward.1, &translated.1), Some(4));
        // Not for a NAT public entry, nor a forward entry without its link.
        assert_eq!(
            counted_backend(Dependent::NatPublic, &forward.1, &translated.1),
            None
        );
        let mut bare = forward;
        bare.1.lb = Default::default();
        assert_eq!(counted_backend(kind, &bare.1, &translated.1), None);
    }

    #[test]
    fn an_internet_flows_pin_keeps_its_own_clock_and_the_others_follow_a_partner() {
        let key = |vni| {
            CtKey::new(
                vni,
                6,
                [198, 51, 100, 10],
                [0, 80],
                [203, 0, 113, 1],
                [0, 80],
            )
            .0
        };
        assert!(dependent(&key(NAT_VNI | LB_VNI)).is_none());
        assert!(matches!(
            dependent(&key(NAT_VNI)),
            Some(Dependent::NatPublic)
        ));
        assert!(matches!(
            dependent(&key(7 | LB_VNI)),
            Some(Dependent::LbForward)
        ));
        assert!(dependent(&key(7)).is_none());
    }

    #[test]
    fn a_public_nat_entry_lives_while_its_private_entry_links_back() {
        for proto in [6, 17, IPPROTO_ICMP] {
            let [private, public] = nat_pair(proto, 40000, 1234);
            assert!(linked(&[private, public], &public), "proto {proto}");
            // The private entry is gone (expired, RST).
            assert!(!linked(&[public], &public), "proto {proto}");
            // The private entry was re-created and links elsewhere (or nowhere).
            let mut moved = private;
            moved.1.nat.port = 1235u16.to_be_bytes();
            assert!(!linked(&[moved, public], &public), "proto {proto}");
            let mut unlinked = private;
            unlinked.1.nat = Default::default();
            assert!(!linked(&[unlinked, public], &public), "proto {proto}");
        }
    }

    #[test]
    fn configurations_need_a_limit_and_timeouts_of_a_second() {
        assert_eq!(config_error(&CtConfig::DEFAULT), None);
        let zero = CtConfig {
            max_entries: 0,
            ..CtConfig::DEFAULT
        };
        assert!(config_error(&zero).unwrap().contains("max_entries"));
        let short = CtConfig {
            udp_ns: CT_TOUCH_NS - 1,
            ..CtConfig::DEFAULT
        };
        assert!(config_error(&short).unwrap().contains("udp_ns"));
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
