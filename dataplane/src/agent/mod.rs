//! The per-host agent: keeps this host's maps and XDP attachments equal to what the
//! controller compiled for it.
//!
//! It long-polls the controller for its host's tables (only its own NICs and the VPCs
//! present on it), resolves interface names and neighbour MACs on this host, applies the
//! difference to the maps in hitless order ([`MapSync`]), and attaches `xdp_vm` to each
//! local NIC interface and `xdp_underlay` to the fabric interface (detaching them when
//! they go). Without an intent change it resolves again every `resync_secs`, so VM
//! interfaces created after their NIC, and underlay MACs learnt later, are picked up.
//! A small change (routes, and the values of endpoints and ports they touch) is resolved
//! and written by itself ([`route_change`], [`MapSync::apply_change`]) when the last round
//! resolved everything: no interface look-ups, `ip neigh` or whole-table diff for one
//! route among 100,000.
//!
//! Security groups travel with the tables and are written around the VPC maps: new
//! policies and NIC slots before (a NIC's slot is set before its port goes live), slots
//! and policies no longer used after (a port stops before its filter goes); the blocklist
//! first. The load balancer maps follow the VPC and NAT maps ([`lb_apply::LbState`],
//! shared with the health checks, which re-apply it when a verdict changes). A separate
//! task sweeps expired connection-table entries every
//! [`SWEEP_INTERVAL`], through its own handles on the pinned maps, so a sweep of a large
//! table never holds up an apply (and with it a revocation).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use aya::programs::XdpMode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    client::{self, ApiAddr},
    conntrack,
    controller::api::AgentTables,
    lb::{apply as lb_apply, health as lb_health},
    loader::{self, Dataplane, Role},
    metrics::AgentMetrics,
    nat::apply as nat_apply,
    sg::apply::{self as sg_apply, PinnedSgMaps, SgStep},
    vpc::{
        apply::{resolve_with, MapSync, SystemInterfaces},
        delta::TablesDelta,
        diff::{normalize, route_change, VpcMap},
        tables::HostTables,
    },
};

/// Longest long-poll; the client gives up on a request after 10 s.
const MAX_POLL: Duration = Duration::from_secs(8);

/// How often expired connection-table entries are collected: the shortest default timeout
/// (TCP close, 10 s), so an expired entry lingers at most about that long again. The
/// datapath also deletes an expired entry its lookup finds, and on RST.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The agent's part of `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub host: String,
    pub controller: String,
    /// The intent generation the maps hold, once an apply succeeded.
    pub applied_generation: Option<u64>,
    /// Why the last fetch or apply failed; cleared by the next success.
    pub last_error: Option<String>,
    /// Interfaces this agent attached XDP to.
    pub attached: Vec<String>,
    /// NIC interfaces named by the intent that do not exist on this host (yet).
    pub missing_interfaces: Vec<String>,
    /// Remote VTEPs with no underlay MAC yet (their traffic is dropped and counted).
    pub unresolved_neighbors: Vec<String>,
}

pub struct Agent {
    pub host: String,
    pub controller: ApiAddr,
    pub resync: Duration,
    pub pin_dir: PathBuf,
    pub xdp_mode: XdpMode,
    /// Interfaces the daemon attached from its config: never detached by the agent.
    pub configured: BTreeSet<String>,
    pub dataplane: Arc<Mutex<Dataplane>>,
    pub status: Arc<Mutex<AgentStatus>>,
    pub metrics: AgentMetrics,
    /// What the LB maps hold and why; the health checks change it through
    /// [`lb_apply::apply_health`].
    pub lb: Arc<Mutex<lb_apply::LbState>>,
    /// The backends' health checks, through each VPC's own path (`lb::health`).
    pub checks: Arc<lb_health::Checks>,
}

/// What one apply round keeps between rounds.
#[derive(Default)]
struct Applied {
    sync: MapSync,
    /// Interface -> role of the programs this agent is responsible for.
    attached: BTreeMap<String, Role>,
    /// Interfaces attached (or given this run's program) by this run, with their ifindex.
    fresh: BTreeMap<String, u32>,
    /// Stale link pins from an earlier run were looked for.
    swept: bool,
    /// The last tables received, whole, and their generation: the controller sends the
    /// next ones as a change from these.
    held: Option<(u64, HostTables)>,
    /// The last round resolved everything (no interface missing, every VTEP's MAC known,
    /// plain prefixes): a small change may be resolved and written by itself.
    routes_only_ok: bool,
    /// The interfaces that round looked up.
    ifs: SystemInterfaces,
    /// The health checks were seeded from the maps (first apply).
    lb_seeded: bool,
}

impl Agent {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let agent = Arc::new(self);
        let applied = Arc::new(Mutex::new(Applied::default()));
        let mut after: Option<u64> = None;
        tokio::spawn(sweep_conntrack(
            agent.host.clone(),
            agent.pin_dir.clone(),
            stop.clone(),
        ));
        {
            let (checks, a, stop) = (agent.checks.clone(), agent.clone(), stop.clone());
            tokio::spawn(async move {
                checks
                    .run(
                        a.host.clone(),
                        a.controller.clone(),
                        a.dataplane.clone(),
                        a.lb.clone(),
                        a.metrics.lb_health.clone(),
                        stop,
                    )
                    .await
            });
        }
        loop {
            let have = applied.lock().expect("agent").held.as_ref().map(|h| h.0);
            let fetched = tokio::select! {
                r = agent.fetch(after, have) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let tables = match fetched {
                Ok(t) => t,
                Err(e) => {
                    agent.failed(format!("fetching tables: {e:#}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            };
            let generation = tables.generation;
            let (a, ap) = (agent.clone(), applied.clone());
            let done = tokio::task::spawn_blocking(move || {
                a.apply(&mut ap.lock().expect("agent"), tables)
            })
            .await
            .map_err(|e| anyhow!("apply task: {e}"))
            .and_then(|r| r);
            match done {
                Ok(()) => after = Some(generation),
                Err(e) => {
                    agent.failed(format!("applying generation {generation}: {e:#}"));
                    // Ask again at once next round, after a pause.
                    after = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// The tables, once the generation is past `after` or the resync interval is up.
    async fn fetch(&self, after: Option<u64>, have: Option<u64>) -> Result<AgentTables> {
        let mut query = Vec::new();
        if let Some(g) = after {
            // Shorter than the client's request timeout, so a quiet poll is not an error.
            let wait = self.resync.min(MAX_POLL);
            query.push(format!("after={g}&wait_ms={}", wait.as_millis()));
        }
        if let Some(g) = have {
            query.push(format!("have={g}"));
        }
        let mut path = format!("/v1/agent/hosts/{}/tables", client::encode(&self.host));
        if !query.is_empty() {
            path += &format!("?{}", query.join("&"));
        }
        client::get(&self.controller, &path)
            .await?
            .error_for_status()?
            .json()
    }

    fn failed(&self, e: String) {
        log::warn!("agent {}: {e}", self.host);
        self.metrics.apply_errors.inc();
        self.status.lock().expect("status").last_error = Some(e);
    }

    /// Brings maps and attachments to `t`: maps first (a new NIC's entries exist before
    /// its program sees a packet), then attach what is new, then detach what is gone.
    fn apply(&self, applied: &mut Applied, t: AgentTables) -> Result<()> {
        let _timer = self.metrics.apply_seconds.start_timer();
        let generation = t.generation;
        let small = t
            .delta
            .clone()
            .filter(|d| applied.routes_only_ok && !d.is_empty());
        let whole = t.into_tables(applied.held.take())?;
        applied.held = Some((generation, whole));
        if let Some(delta) = small {
            if self.apply_routes(applied, generation, &delta)? {
                return Ok(());
            }
        }
        applied.routes_only_ok = false;
        let whole = applied.held.as_ref().expect("held just now").1.clone();
        let plain_routes = whole
            .routes
            .iter()
            .all(|r| r.prefix.len <= 32 && normalize(r.prefix) == r.prefix);
        // Health-check ports are interfaces the agent makes: they exist before the lookup.
        self.checks.sync(&self.host, &whole.lb);
        let ifs = SystemInterfaces::of(&whole);
        let (tables, missing) = present_only_in(whole, &ifs);
        let resolved = resolve_with(&tables, &ifs).context("resolving the tables")?;
        let mut dp = self.dataplane.lock().expect("dataplane");
        let entries: Vec<(&str, usize)> = VpcMap::ALL
            .into_iter()
            .map(|m| (m.name(), resolved.tables.entries(m)))
            .collect();

        let blocked = sg_apply::apply_blocklist(&mut *dp, &tables.blocklist)
            .context("writing the blocklist")?;
        let sg = sg_apply::resolve(
            &tables.security_groups,
            sg_apply::nic_slots(&*dp).context("security-group NIC slots")?,
            |ifname| ifs.ifindex(ifname),
        );
        let current = sg_apply::read_state(&*dp).context("reading the security-group maps")?;
        let (before, after): (Vec<SgStep>, Vec<SgStep>) = sg_apply::plan(&current, &sg)
            .into_iter()
            .partition(|s| matches!(s, SgStep::WritePolicy(_) | SgStep::SetNic(..)));
        let sg_before =
            sg_apply::execute(&mut *dp, &before, &sg).context("writing the security-group maps")?;
        let nat_want = match &tables.underlay {
            Some(u) => {
                let neighbors = &resolved.tables.underlay_neighbors;
                nat_apply::resolve(&tables.nat, u.vtep, |ip| neighbors.get(&ip).map(|n| n.mac))
            }
            None => nat_apply::NatResolved::default(),
        };
        let counts = applied
            .sync
            .apply(&mut *dp, resolved.tables)
            .context("writing the maps")?;
        // After the VPC maps: a translated packet's endpoint exists before it is sent there.
        let nat_done = nat_apply::apply(&mut dp, &nat_want).context("writing the NAT maps")?;
        // After the VPC maps too: a VIP's listener goes live once its backends' endpoints
        // exist (and when a VIP goes, its endpoint is gone before its listener).
        let mut lb = self.lb.lock().expect("lb state");
        if !applied.lb_seeded {
            // A restarted agent keeps what its predecessor found down (`lb::health`).
            let pinned = |slot| lb_apply::pinned_backend(&dp, slot);
            lb.seed_health(self.checks.seed(pinned));
            applied.lb_seeded = true;
        }
        let lb_done = lb
            .set_tables(&mut dp, &tables.lb)
            .context("writing the LB maps")?;
        drop(lb);
        let sg_after = sg_apply::execute(&mut *dp, &after, &sg)
            .context("removing unused security-group entries")?;

        let mut wanted: BTreeMap<String, Role> = tables
            .ports
            .iter()
            .map(|p| (p.ifname.clone(), Role::Vm))
            .collect();
        if let Some(u) = &tables.underlay {
            wanted.insert(u.ifname.clone(), Role::Underlay);
        }
        if !applied.swept {
            // Links pinned by an earlier run, for NICs deleted while we were down, are ours
            // to remove; the ones still wanted get the new program (hitless restart).
            for ifname in self.pinned_links() {
                applied.attached.entry(ifname).or_insert(Role::Vm);
            }
            applied.swept = true;
        }
        for (ifname, role) in &wanted {
            let ifindex = ifs.ifindex(ifname);
            let current = applied.attached.get(ifname) == Some(role)
                && applied.fresh.get(ifname) == ifindex.as_ref();
            if current {
                continue;
            }
            if applied.fresh.contains_key(ifname) {
                // The interface was re-created (a VM restart): its old link went with it.
                loader::detach_pinned(&self.pin_dir, ifname)
                    .with_context(|| format!("detaching {ifname}"))?;
            }
            dp.attach(ifname, *role, self.xdp_mode)
                .with_context(|| format!("attaching {} to {ifname}", role.program()))?;
            applied.attached.insert(ifname.clone(), *role);
            if let Some(i) = ifindex {
                applied.fresh.insert(ifname.clone(), i);
            }
        }
        let gone: Vec<String> = applied
            .attached
            .keys()
            .filter(|i| !wanted.contains_key(*i))
            .cloned()
            .collect();
        for ifname in gone {
            if !self.configured.contains(&ifname) {
                loader::detach_pinned(&self.pin_dir, &ifname)
                    .with_context(|| format!("detaching {ifname}"))?;
            }
            applied.attached.remove(&ifname);
            applied.fresh.remove(&ifname);
        }
        drop(dp);

        if nat_done.written + nat_done.deleted > 0 {
            log::info!(
                "agent {}: generation {generation}: NAT {nat_done:?}",
                self.host
            );
        }
        if !lb_done.is_noop() {
            log::info!(
                "agent {}: generation {generation}: LB {lb_done:?}",
                self.host
            );
        }
        if counts.upserts() + counts.deletes() > 0 {
            log::info!("agent {}: generation {generation}: {counts}", self.host);
        }
        if !sg_before.is_noop() || !sg_after.is_noop() || blocked.written + blocked.deleted > 0 {
            log::info!(
                "agent {}: generation {generation}: security groups {sg_before:?} then {sg_after:?}; blocklist {blocked:?}",
                self.host
            );
        }
        self.metrics.applied_generation.set(generation as i64);
        for (map, n) in entries {
            self.metrics
                .map_entries
                .with_label_values(&[map])
                .set(n as i64);
        }
        applied.routes_only_ok =
            plain_routes && missing.is_empty() && resolved.unresolved_neighbors.is_empty();
        applied.ifs = ifs;
        let mut s = self.status.lock().expect("status");
        s.applied_generation = Some(generation);
        s.last_error = None;
        s.attached = applied.attached.keys().cloned().collect();
        s.missing_interfaces = missing;
        s.unresolved_neighbors = resolved
            .unresolved_neighbors
            .iter()
            .map(|v| std::net::Ipv4Addr::from(*v).to_string())
            .collect();
        Ok(())
    }

    /// A small change: resolves and writes only the entries it names (and the endpoints
    /// whose `ENDPOINT_DIRECT` its routes flip), in the order a whole apply would. Interfaces,
    /// neighbours, security groups, NAT and attachments are as the last round left them
    /// (the next resync looks at them again). False when it cannot (nothing known yet).
    fn apply_routes(
        &self,
        applied: &mut Applied,
        generation: u64,
        delta: &TablesDelta,
    ) -> Result<bool> {
        applied.routes_only_ok = false;
        let ifs = &applied.ifs;
        let Some(change) = applied
            .sync
            .known()
            .and_then(|k| route_change(k, delta, |n| ifs.ifindex(n)))
        else {
            return Ok(false);
        };
        let mut dp = self.dataplane.lock().expect("dataplane");
        let Some(counts) = applied
            .sync
            .apply_change(&mut *dp, &change)
            .context("writing the maps")?
        else {
            return Ok(false);
        };
        drop(dp);
        applied.routes_only_ok = true;
        if counts.upserts() + counts.deletes() > 0 {
            log::info!("agent {}: generation {generation}: {counts}", self.host);
        }
        self.metrics.applied_generation.set(generation as i64);
        if let Some(known) = applied.sync.known() {
            for map in VpcMap::ALL {
                self.metrics
                    .map_entries
                    .with_label_values(&[map.name()])
                    .set(known.entries(map) as i64);
            }
        }
        let mut s = self.status.lock().expect("status");
        s.applied_generation = Some(generation);
        s.last_error = None;
        Ok(true)
    }

    /// Interfaces with a pinned link under this daemon's pin dir, except configured ones.
    fn pinned_links(&self) -> Vec<String> {
        let dir = self.pin_dir.join("links");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !self.configured.contains(n))
            .collect()
    }
}

/// Collects expired connection-table entries every [`SWEEP_INTERVAL`] until `stop`.
async fn sweep_conntrack(host: String, pin_dir: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut maps: Option<PinnedSgMaps> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let dir = pin_dir.clone();
        let held = maps.take();
        let swept = tokio::task::spawn_blocking(move || {
            let mut m = match held {
                Some(m) => m,
                None => PinnedSgMaps::open(&dir)?,
            };
            let st = conntrack::sweep(&mut m, conntrack::monotonic_ns())?;
            anyhow::Ok((m, st))
        })
        .await
        .map_err(|e| anyhow!("sweep task: {e}"))
        .and_then(|r| r);
        match swept {
            Ok((m, st)) => {
                maps = Some(m);
                if st.collected + st.evicted > 0 {
                    log::debug!("agent {host}: connection table sweep: {st:?}");
                }
            }
            // Maps not pinned (yet), or replaced: open them again next time.
            Err(e) => log::warn!("agent {host}: connection table sweep: {e:#}"),
        }
    }
}

/// The tables without the NICs whose interface does not exist here (yet), or whose ifindex
/// does not fit the port array: one such VM must not hold up the rest of the host.
/// Returns them by interface name.
pub fn present_only(t: HostTables) -> (HostTables, Vec<String>) {
    let ifs = SystemInterfaces::of(&t);
    present_only_in(t, &ifs)
}

/// [`present_only`] against an interface snapshot the caller already took.
pub fn present_only_in(mut t: HostTables, ifs: &SystemInterfaces) -> (HostTables, Vec<String>) {
    let unusable = |ifname: &str| match ifs.ifindex(ifname) {
        None => true,
        Some(ifindex) if ifindex >= sluice_common::vpc::MAX_PORTS => {
            log::warn!(
                "{ifname}: ifindex {ifindex} does not fit the port array (< {}); NIC left out",
                sluice_common::vpc::MAX_PORTS
            );
            true
        }
        Some(_) => false,
    };
    let mut missing: Vec<String> = t
        .ports
        .iter()
        .filter(|p| unusable(&p.ifname))
        .map(|p| p.ifname.clone())
        .collect();
    missing.sort();
    missing.dedup();
    let absent = |name: &Option<String>| name.as_ref().is_some_and(|n| missing.contains(n));
    t.ports.retain(|p| !missing.contains(&p.ifname));
    t.endpoints.retain(|e| !absent(&e.ifname));
    (t, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpc::tables::{EndpointEntry, LocalPort};
    use sluice_common::vpc::Port;

    #[test]
    fn nics_without_an_interface_are_left_out_and_named() {
        let port = |ifname: &str| LocalPort {
            ifname: ifname.into(),
            port: Port::default(),
        };
        let endpoint = |ifname: Option<&str>, last: u8| EndpointEntry {
            vni: 1,
            ip: [10, 0, 0, last],
            mac: [2, 0, 0, 0, 0, last],
            vtep: [192, 0, 2, 1],
            flags: 0,
            ifname: ifname.map(str::to_string),
        };
        let t = HostTables {
            ports: vec![port("lo"), port("sl-nope0")],
            endpoints: vec![
                endpoint(Some("lo"), 4),
                endpoint(Some("sl-nope0"), 5),
                endpoint(None, 6),
            ],
            ..Default::default()
        };
        let (kept, missing) = present_only(t);
        assert_eq!(missing, ["sl-nope0"]);
        assert_eq!(kept.ports.len(), 1);
        assert_eq!(kept.ports[0].ifname, "lo");
        let ips: Vec<u8> = kept.endpoints.iter().map(|e| e.ip[3]).collect();
        assert_eq!(ips, [4, 6], "remote endpoints stay");
    }
}
