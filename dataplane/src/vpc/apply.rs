//! The agent's map I/O: reads what this host's VPC maps hold, and runs a
//! [`TableDiff`](super::diff::TableDiff) against them step by step.
//!
//! A failed step (a full map, say) stops the run there. Because the plan is ordered so
//! that every prefix of it is a consistent state (see [`super::diff`]), the maps are then
//! left between the old and the new tables, never corrupted, and the next apply reads them
//! back and plans the rest.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::{Command, Stdio},
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError};
use sluice_common::vpc::{
    ApplianceVtep, ApplianceVtepKey, Endpoint, EndpointKey, HostConfig, Ipv4, Mac, NextHop, Port,
    RouteKey, UnderlayNeighbor, VniInfo,
};

use super::{
    diff::{
        change_tables, diff_within, normalize, resolve, DiffCounts, ResolveError, Resolved,
        ResolvedTables, RouteChange, Step, TableDiff, VpcMap,
    },
    tables::{HostTables, RoutePrefix},
};
use crate::loader::{open_pinned_map, Dataplane};

/// Where the VPC maps come from: a loaded [`Dataplane`], or [`PinnedVpcMaps`].
pub trait VpcMaps {
    fn vpc_map(&self, name: &str) -> anyhow::Result<&Map>;
    fn vpc_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map>;
}

impl VpcMaps for Dataplane {
    fn vpc_map(&self, name: &str) -> anyhow::Result<&Map> {
        self.map(name)
    }

    fn vpc_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.map_mut(name)
    }
}

/// The VPC maps a daemon pinned under `<pin_dir>/maps`, for tools that load no programs.
pub struct PinnedVpcMaps {
    maps: BTreeMap<&'static str, Map>,
}

impl PinnedVpcMaps {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let mut maps = BTreeMap::new();
        for m in VpcMap::ALL {
            let data = open_pinned_map(pin_dir, m.name())?;
            let map = match m {
                VpcMap::Host | VpcMap::Ports => Map::Array(data),
                VpcMap::Routes => Map::LpmTrie(data),
                _ => Map::HashMap(data),
            };
            maps.insert(m.name(), map);
        }
        Ok(Self { maps })
    }
}

impl VpcMaps for PinnedVpcMaps {
    fn vpc_map(&self, name: &str) -> anyhow::Result<&Map> {
        self.maps
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no map {name}"))
    }

    fn vpc_map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.maps
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no map {name}"))
    }
}

/// Why reading or writing the maps failed; every variant names the map.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("map {map}: {source:#}")]
    Open {
        map: &'static str,
        source: anyhow::Error,
    },
    #[error("map {map} does not have the expected type or key/value sizes: {source}")]
    Type { map: &'static str, source: MapError },
    #[error("reading map {map}: {source}")]
    Read { map: &'static str, source: MapError },
    #[error("{entries} entries do not fit map {map}, which holds {capacity}; nothing was applied")]
    TooLarge {
        map: &'static str,
        entries: usize,
        capacity: usize,
    },
    #[error(
        "map {map} has {capacity} slots: no port at ifindex {ifindex} (its interface needs a \
         smaller ifindex); nothing was applied"
    )]
    PortOutOfRange {
        map: &'static str,
        ifindex: u32,
        capacity: usize,
    },
    #[error("map {map} holds a key this agent never writes: {key}")]
    UnexpectedKey { map: &'static str, key: String },
    #[error(
        "map {map} is full: cannot insert {key}; {applied} of {total} steps were applied \
         (the maps stay consistent; the next apply retries)"
    )]
    MapFull {
        map: &'static str,
        key: String,
        /// Steps of the plan that were done.
        applied: usize,
        total: usize,
    },
    #[error("{step} failed: {source}; {applied} of {total} steps were applied")]
    Write {
        step: String,
        source: MapError,
        applied: usize,
        total: usize,
    },
}

/// Reads the whole content of the VPC maps.
pub fn read_tables(maps: &impl VpcMaps) -> Result<ResolvedTables, ApplyError> {
    let mut t = ResolvedTables::default();

    let name = VpcMap::Host.name();
    let host: Array<&MapData, HostConfig> = typed(maps, name)?;
    let h = host
        .get(&0, 0)
        .map_err(|source| ApplyError::Read { map: name, source })?;
    t.host = (h.configured != 0).then_some(h);

    t.underlay_neighbors = read_hash::<Ipv4, UnderlayNeighbor>(maps, VpcMap::UnderlayNeighbors)?;
    t.vnis = read_hash::<u32, VniInfo>(maps, VpcMap::Vnis)?;
    t.appliance_vteps = read_hash::<ApplianceVtepKey, ApplianceVtep>(maps, VpcMap::ApplianceVteps)?;
    t.endpoints = read_hash::<EndpointKey, Endpoint>(maps, VpcMap::Endpoints)?;

    // Every slot of the array; VNI 0 marks an empty one.
    let name = VpcMap::Ports.name();
    let ports: Array<&MapData, Port> = typed(maps, name)?;
    for (i, port) in ports.iter().enumerate() {
        let port = port.map_err(|source| ApplyError::Read { map: name, source })?;
        if port.vni != 0 {
            t.ports.insert(i as u32, port);
        }
    }

    let name = VpcMap::Routes.name();
    let routes: LpmTrie<&MapData, RouteKey, NextHop> = typed(maps, name)?;
    for entry in routes.iter() {
        let (key, hop) = entry.map_err(|source| ApplyError::Read { map: name, source })?;
        let (trie_len, data) = (key.prefix_len(), key.data());
        if !(32..=64).contains(&trie_len) {
            return Err(ApplyError::UnexpectedKey {
                map: name,
                key: format!("trie prefix length {trie_len} (a route's is 32 to 64)"),
            });
        }
        let prefix = normalize(RoutePrefix {
            vni: u32::from_be_bytes(data.vni),
            ip: data.ip,
            len: (trie_len - 32) as u8,
        });
        t.routes.insert(prefix, hop);
    }
    Ok(t)
}

/// Runs `plan` front to back; returns what was done. Stops at the first failure.
pub fn execute(maps: &mut impl VpcMaps, plan: &TableDiff) -> Result<DiffCounts, ApplyError> {
    let mut done = DiffCounts::default();
    let total = plan.len();
    let mut rest = plan.steps.as_slice();
    // Consecutive steps on one map share one typed handle.
    while let Some(first) = rest.first() {
        let map = first.map();
        let run_len = rest.iter().take_while(|s| s.map() == map).count();
        let (run, tail) = rest.split_at(run_len);
        rest = tail;
        let name = map.name();
        let m = maps
            .vpc_map_mut(name)
            .map_err(|source| ApplyError::Open { map: name, source })?;
        let mut write = |step: &Step, res: Result<(), MapError>| match res {
            Ok(()) => {
                done.add(step);
                Ok(())
            }
            Err(source) => Err(write_error(
                step,
                source,
                done.upserts() + done.deletes(),
                total,
            )),
        };
        let ty = |source| ApplyError::Type { map: name, source };
        match map {
            VpcMap::Host => {
                let mut a: Array<&mut MapData, HostConfig> = Array::try_from(m).map_err(ty)?;
                for s in run {
                    if let Step::SetHost(h) = s {
                        write(s, a.set(0, h.unwrap_or_default(), 0))?;
                    }
                }
            }
            VpcMap::UnderlayNeighbors => {
                let mut h: HashMap<&mut MapData, Ipv4, UnderlayNeighbor> =
                    HashMap::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertNeighbor(k, v) => write(s, h.insert(k, v, 0))?,
                        Step::DeleteNeighbor(k) => write(s, remove_idempotent(h.remove(k)))?,
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
            VpcMap::Vnis => {
                let mut h: HashMap<&mut MapData, u32, VniInfo> =
                    HashMap::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertVni(k, v) => write(s, h.insert(k, v, 0))?,
                        Step::DeleteVni(k) => write(s, remove_idempotent(h.remove(k)))?,
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
            VpcMap::ApplianceVteps => {
                let mut h: HashMap<&mut MapData, ApplianceVtepKey, ApplianceVtep> =
                    HashMap::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertApplianceVtep(k, v) => write(s, h.insert(k, v, 0))?,
                        Step::DeleteApplianceVtep(k) => write(s, remove_idempotent(h.remove(k)))?,
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
            VpcMap::Endpoints => {
                let mut h: HashMap<&mut MapData, EndpointKey, Endpoint> =
                    HashMap::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertEndpoint(k, v) => write(s, h.insert(k, v, 0))?,
                        Step::DeleteEndpoint(k) => write(s, remove_idempotent(h.remove(k)))?,
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
            VpcMap::Ports => {
                // An array: deleting is writing the empty (VNI 0) value.
                let mut a: Array<&mut MapData, Port> = Array::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertPort(k, v) => write(s, a.set(*k, v, 0))?,
                        Step::DeletePort(k) => write(s, a.set(*k, Port::default(), 0))?,
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
            VpcMap::Routes => {
                let mut t: LpmTrie<&mut MapData, RouteKey, NextHop> =
                    LpmTrie::try_from(m).map_err(ty)?;
                for s in run {
                    match s {
                        Step::UpsertRoute(p, v) => write(s, t.insert(&trie_key(p), v, 0))?,
                        Step::DeleteRoute(p) => {
                            write(s, remove_idempotent(t.remove(&trie_key(p))))?
                        }
                        _ => unreachable!("steps are grouped by map"),
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Brings the maps to `desired`: reads them, plans the difference within the maps'
/// capacities, runs it. Tables too large for a map are refused before anything is written.
pub fn apply(maps: &mut impl VpcMaps, desired: &ResolvedTables) -> Result<DiffCounts, ApplyError> {
    let capacity = capacities(maps)?;
    check_fits(desired, &capacity)?;
    let current = read_tables(maps)?;
    execute(
        maps,
        &diff_within(&current, desired, |m| plan_capacity(&capacity, m)),
    )
}

/// [`apply`] for a long-running agent: remembers what the maps hold after each successful
/// apply, so later applies diff against that instead of reading every map back (which
/// costs two syscalls per entry). After a failure, or when told the maps may have changed
/// behind its back ([`MapSync::forget`]), it reads them again.
#[derive(Debug, Default)]
pub struct MapSync {
    known: Option<ResolvedTables>,
    capacity: Option<[usize; 7]>,
}

impl MapSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next apply reads the maps instead of trusting the last result.
    pub fn forget(&mut self) {
        self.known = None;
    }

    /// What the maps held after the last successful apply, if remembered.
    pub fn known(&self) -> Option<&ResolvedTables> {
        self.known.as_ref()
    }

    /// Brings the maps to `desired`, like [`apply`] (taking it by value: it is kept).
    pub fn apply(
        &mut self,
        maps: &mut impl VpcMaps,
        desired: ResolvedTables,
    ) -> Result<DiffCounts, ApplyError> {
        let capacity = match self.capacity {
            Some(c) => c,
            None => *self.capacity.insert(capacities(maps)?),
        };
        check_fits(&desired, &capacity)?;
        let current = match self.known.take() {
            Some(t) => t,
            None => read_tables(maps)?,
        };
        let plan = diff_within(&current, &desired, |m| plan_capacity(&capacity, m));
        // On error `known` stays empty: the maps hold some prefix of the plan.
        let done = execute(maps, &plan)?;
        self.known = Some(desired);
        Ok(done)
    }
}

impl MapSync {
    /// Applies a change of routes alone (from [`route_change`] against [`MapSync::known`]),
    /// planning and writing only the entries it names, in the order a whole apply would.
    /// `None` when nothing is known (the caller applies whole tables instead).
    pub fn apply_change(
        &mut self,
        maps: &mut impl VpcMaps,
        change: &RouteChange,
    ) -> Result<Option<DiffCounts>, ApplyError> {
        let (Some(known), Some(capacity)) = (self.known.take(), self.capacity) else {
            return Ok(None);
        };
        let (current, desired) = change_tables(&known, change);
        // Room the entries left alone take.
        let others = |m: VpcMap| known.entries(m) - current.entries(m);
        for map in VpcMap::ALL {
            let entries = others(map) + desired.entries(map);
            if entries > capacity[map as usize] {
                self.known = Some(known);
                return Err(ApplyError::TooLarge {
                    map: map.name(),
                    entries,
                    capacity: capacity[map as usize],
                });
            }
        }
        let plan = diff_within(&current, &desired, |m| {
            plan_capacity(&capacity, m).saturating_sub(others(m))
        });
        // On error `known` stays empty: the maps hold some prefix of the plan.
        let done = execute(maps, &plan)?;
        let mut known = known;
        for s in &plan.steps {
            s.apply_to(&mut known);
        }
        self.known = Some(known);
        Ok(Some(done))
    }
}

/// Room the plan must respect: an array has a slot for every key below its size, so it
/// never needs deletions first.
fn plan_capacity(capacity: &[usize; 7], map: VpcMap) -> usize {
    match map {
        VpcMap::Ports => usize::MAX,
        _ => capacity[map as usize],
    }
}

fn check_fits(desired: &ResolvedTables, capacity: &[usize; 7]) -> Result<(), ApplyError> {
    let slots = capacity[VpcMap::Ports as usize];
    if let Some(&ifindex) = desired.ports.keys().find(|&&i| i as usize >= slots) {
        return Err(ApplyError::PortOutOfRange {
            map: VpcMap::Ports.name(),
            ifindex,
            capacity: slots,
        });
    }
    for map in VpcMap::ALL {
        let entries = desired.entries(map);
        if entries > capacity[map as usize] {
            return Err(ApplyError::TooLarge {
                map: map.name(),
                entries,
                capacity: capacity[map as usize],
            });
        }
    }
    Ok(())
}

/// Each VPC map's `max_entries`, as the kernel reports it.
pub fn capacities(maps: &impl VpcMaps) -> Result<[usize; 7], ApplyError> {
    let mut caps = [0; 7];
    for map in VpcMap::ALL {
        let name = map.name();
        let m = maps
            .vpc_map(name)
            .map_err(|source| ApplyError::Open { map: name, source })?;
        let data = match m {
            Map::Array(d) | Map::HashMap(d) | Map::LpmTrie(d) => d,
            _ => {
                return Err(ApplyError::Open {
                    map: name,
                    source: anyhow::anyhow!("not an array, hash map or LPM trie"),
                })
            }
        };
        let info = data
            .info()
            .map_err(|source| ApplyError::Read { map: name, source })?;
        caps[map as usize] = info.max_entries() as usize;
    }
    Ok(caps)
}

/// The LPM key of a route: VNI and prefix, with the trie prefix length 32 + the route's.
pub fn trie_key(p: &RoutePrefix) -> Key<RouteKey> {
    Key::new(RouteKey::trie_prefix_len(p.len), p.key())
}

fn typed<'m, M>(maps: &'m impl VpcMaps, name: &'static str) -> Result<M, ApplyError>
where
    M: TryFrom<&'m Map, Error = MapError>,
{
    let m = maps
        .vpc_map(name)
        .map_err(|source| ApplyError::Open { map: name, source })?;
    M::try_from(m).map_err(|source| ApplyError::Type { map: name, source })
}

fn read_hash<K: aya::Pod + Ord, V: aya::Pod>(
    maps: &impl VpcMaps,
    map: VpcMap,
) -> Result<BTreeMap<K, V>, ApplyError> {
    let name = map.name();
    let h: HashMap<&MapData, K, V> = typed(maps, name)?;
    h.iter()
        .map(|e| e.map_err(|source| ApplyError::Read { map: name, source }))
        .collect()
}

/// Removing what is already gone is success: the goal (absent) holds.
fn remove_idempotent(res: Result<(), MapError>) -> Result<(), MapError> {
    match res {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn write_error(step: &Step, source: MapError, applied: usize, total: usize) -> ApplyError {
    // Hash maps report a full table as E2BIG, the LPM trie as ENOSPC.
    let full = matches!(
        &source,
        MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
    );
    if full && !step.is_delete() {
        ApplyError::MapFull {
            map: step.map().name(),
            key: step.key(),
            applied,
            total,
        }
    } else {
        ApplyError::Write {
            step: step.to_string(),
            source,
            applied,
            total,
        }
    }
}

/// [`resolve`] with this host's view: ifindexes and MACs of the interfaces in the agent's
/// network namespace, and underlay neighbour MACs from the kernel's neighbour table (a
/// VTEP missing from it is pinged once to trigger ARP, then looked up again).
pub fn resolve_from_system(tables: &HostTables) -> Result<Resolved, ResolveError> {
    resolve_with(tables, &SystemInterfaces::of(tables))
}

/// [`resolve_from_system`] against interface indexes the caller already looked up.
pub fn resolve_with(tables: &HostTables, ifs: &SystemInterfaces) -> Result<Resolved, ResolveError> {
    let dev = tables.underlay.as_ref().map(|u| u.ifname.as_str());
    let neighbors = underlay_neighbor_macs(&tables.remote_vteps, dev);
    resolve(
        tables,
        |n| ifs.ifindex(n),
        system_mac,
        |vtep| neighbors.get(&vtep).copied(),
    )
}

/// The indexes of the interfaces a host's tables name, looked up once per agent round
/// (the agent used to ask the kernel three times per NIC per round).
#[derive(Clone, Debug, Default)]
pub struct SystemInterfaces(std::collections::HashMap<String, u32>);

impl SystemInterfaces {
    /// Looks up every interface `tables` names: its ports and the underlay.
    pub fn of(tables: &HostTables) -> Self {
        let names = tables
            .ports
            .iter()
            .map(|p| p.ifname.as_str())
            .chain(tables.underlay.as_ref().map(|u| u.ifname.as_str()));
        Self(
            names
                .filter_map(|n| Some((n.to_string(), system_ifindex(n)?)))
                .collect(),
        )
    }

    /// `None` for an interface that does not exist (or was not looked up).
    pub fn ifindex(&self, ifname: &str) -> Option<u32> {
        self.0.get(ifname).copied()
    }
}

/// The ifindex of `ifname` in the calling thread's network namespace.
pub fn system_ifindex(ifname: &str) -> Option<u32> {
    let name = CString::new(ifname).ok()?;
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The MAC of `ifname`, by `SIOCGIFHWADDR` on a socket: unlike /sys/class/net, which shows
/// the namespace /sys was mounted in, this always answers for the caller's namespace.
pub fn system_mac(ifname: &str) -> Option<Mac> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return None;
    }
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return None;
    }
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Some(mac)
}

/// How many ARP-triggering pings run at once.
const PING_BATCH: usize = 64;

/// MACs of `vteps` on `dev` from the neighbour table; the ones missing are pinged (in
/// parallel, one second each at most) and looked up once more.
pub fn underlay_neighbor_macs(vteps: &[Ipv4], dev: Option<&str>) -> BTreeMap<Ipv4, Mac> {
    let mut found = BTreeMap::new();
    if vteps.is_empty() {
        return found;
    }
    let table = neighbor_table(dev);
    let mut missing = Vec::new();
    for vtep in vteps {
        match table.get(vtep) {
            Some(mac) => {
                found.insert(*vtep, *mac);
            }
            None => missing.push(*vtep),
        }
    }
    if missing.is_empty() {
        return found;
    }
    for batch in missing.chunks(PING_BATCH) {
        let children: Vec<_> = batch
            .iter()
            .filter_map(|vtep| {
                let mut ping = Command::new("ping");
                ping.args(["-n", "-q", "-c1", "-W1"]);
                if let Some(dev) = dev {
                    ping.args(["-I", dev]);
                }
                ping.arg(Ipv4Addr::from(*vtep).to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut c in children {
            let _ = c.wait();
        }
    }
    let table = neighbor_table(dev);
    for vtep in missing {
        if let Some(mac) = table.get(&vtep) {
            found.insert(vtep, *mac);
        }
    }
    found
}

/// The IPv4 neighbour table (on `dev`, if given) as address -> MAC, from `ip -j neigh`.
/// Entries without a link-layer address (INCOMPLETE, FAILED) are left out.
fn neighbor_table(dev: Option<&str>) -> BTreeMap<Ipv4, Mac> {
    let mut cmd = Command::new("ip");
    cmd.args(["-j", "-4", "neigh", "show"]);
    if let Some(dev) = dev {
        cmd.args(["dev", dev]);
    }
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => parse_neighbors(&String::from_utf8_lossy(&out.stdout)),
        _ => BTreeMap::new(),
    }
}

/// Parses `ip -j neigh show` output.
pub fn parse_neighbors(json: &str) -> BTreeMap<Ipv4, Mac> {
    let mut table = BTreeMap::new();
    let Ok(serde_json::Value::Array(entries)) = serde_json::from_str(json.trim()) else {
        return table;
    };
    for e in entries {
        let dst = e.get("dst").and_then(|v| v.as_str());
        let lladdr = e.get("lladdr").and_then(|v| v.as_str());
        if let (Some(dst), Some(lladdr)) = (dst, lladdr) {
            if let (Ok(ip), Some(mac)) = (dst.parse::<Ipv4Addr>(), parse_mac(lladdr)) {
                table.entry(ip.octets()).or_insert(mac);
            }
        }
    }
    table
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_neigh_json() {
        let json = r#"[{"dst":"192.0.2.2","dev":"eth1","lladdr":"aa:bb:cc:00:11:22","state":["REACHABLE"]},
            {"dst":"192.0.2.3","dev":"eth1","state":["FAILED"]},
            {"dst":"192.0.2.4","dev":"eth1","lladdr":"02:00:00:00:00:04","state":["STALE"]}]"#;
        let t = parse_neighbors(json);
        assert_eq!(t.len(), 2);
        assert_eq!(t[&[192, 0, 2, 2]], [0xaa, 0xbb, 0xcc, 0, 0x11, 0x22]);
        assert_eq!(t[&[192, 0, 2, 4]], [2, 0, 0, 0, 0, 4]);
        assert!(parse_neighbors("").is_empty());
        assert!(parse_neighbors("[ ]").is_empty());
        assert!(parse_neighbors("garbage").is_empty());
    }

    #[test]
    fn parses_macs_strictly() {
        assert_eq!(parse_mac("02:00:0a:0B:ff:01"), Some([2, 0, 10, 11, 255, 1]));
        assert_eq!(parse_mac("02:00:0a:0b:ff"), None);
        assert_eq!(parse_mac("02:00:0a:0b:ff:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:0b:ff:01"), None);
    }

    #[test]
    fn route_trie_key_carries_vni_and_prefix_length() {
        let k = trie_key(&RoutePrefix {
            vni: 0x0102_0304,
            ip: [10, 0, 0, 0],
            len: 16,
        });
        assert_eq!(k.prefix_len(), 48);
        assert_eq!(k.data().vni, [1, 2, 3, 4]);
        assert_eq!(k.data().ip, [10, 0, 0, 0]);
    }
}
