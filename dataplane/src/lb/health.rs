//! Health checks of load balancer backends, run by every agent whose host has clients of
//! the listener, through the tenant's own VPC path.
//!
//! Why not from the host: tenants reuse addresses, so `10.0.1.20` means a different VM in
//! every VPC, and a host-side probe would test the host's routing, not the dataplane's.
//! Instead each VPC with listeners gets, on every host with the VPC, a health-check port
//! (`slhc<vni>`, compiled like a NIC: address from 100.64.0.0/10, the host's own, and an
//! endpoint every other host routes replies to). Its far end lives in a network namespace
//! of the agent's own, held by one thread: probes are real TCP connects and HTTP GETs made
//! from there, so they cross `xdp_vm`, the route, VXLAN, the backend host's decapsulation
//! and the backend's security groups (which let 100.64.0.0/10 in by a system rule), as
//! clients' packets do. The namespace is anonymous: it lives as long as the agent process,
//! and its veth pair with it, so nothing is left behind.
//!
//! Each backend (by slot) has a small state machine ([`BackendHealth`]): `unknown` until the
//! thresholds say otherwise (and usable meanwhile, so a new pool serves at once); healthy
//! after `healthy_threshold` consecutive successes, unhealthy after `unhealthy_threshold`
//! consecutive failures. Only a crossed threshold changes the maps (no flapping on one lost
//! probe), and then at once: the agent rewrites the listener's table right after the
//! result that crossed it, so a dead backend stops getting new flows within
//! `interval x unhealthy_threshold` (+ the timeout) of its death.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::OwnedFd,
    process::Command,
    sync::{mpsc as std_mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{CheckPortRow, LbTables};
use crate::{
    controller::lb_status::{BackendReport, HostReport},
    intent::lb::HealthCheckKind,
    lab::cmd,
};

/// A backend's health as the checks see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not enough results yet: treated as healthy.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Whether the datapath may use the backend.
    pub fn usable(self) -> bool {
        self != Health::Unhealthy
    }

    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub ok: bool,
    pub latency_ms: f64,
    /// What happened: `connected`, `status 200`, `timeout after 1000 ms`, ...
    pub detail: String,
    /// Wall-clock time of the probe's end, milliseconds since the Unix epoch.
    pub at: u64,
}

/// What to probe: kind and timing, from the listener's health check.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckKind {
    Tcp,
    Http { path: String, expected: Vec<u16> },
}

/// One backend to check, through the VPC `vni`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub vni: u32,
    /// Backend slot (the key of its health).
    pub backend: u32,
    /// The listener's ID, for logs and metrics.
    pub listener: String,
    /// The backend's own port (the check may probe another).
    pub port: u16,
    /// What is probed: the backend's address and the check's port.
    pub addr: SocketAddrV4,
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// A backend's check history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub health: Health,
    /// Consecutive successes (0 after a failure) and failures (0 after a success).
    pub successes: u32,
    pub failures: u32,
    pub transitions: u64,
    pub last: Option<CheckResult>,
}

impl BackendHealth {
    /// Records a result; the new health when a threshold was crossed.
    pub fn record(
        &mut self,
        r: CheckResult,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Health> {
        if r.ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        self.last = Some(r);
        let next = if self.successes >= healthy_threshold.max(1) {
            Health::Healthy
        } else if self.failures >= unhealthy_threshold.max(1) {
            Health::Unhealthy
        } else {
            self.health
        };
        if next == self.health {
            return None;
        }
        let was = self.health;
        self.health = next;
        // Unknown -> healthy changes nothing the datapath sees; still a transition to log.
        self.transitions += u64::from(was != Health::Unknown || next == Health::Unhealthy);
        Some(next)
    }
}

/// Health of every checked backend on this host, by slot.
pub type HealthView = BTreeMap<u32, BackendHealth>;

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One probe. Runs on a prober thread, so its sockets live in that thread's namespace.
pub async fn probe(kind: &CheckKind, addr: SocketAddrV4, timeout: Duration) -> CheckResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, probe_once(kind, addr)).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(e)) => (false, e),
        Err(_) => (false, format!("timeout after {} ms", timeout.as_millis())),
    };
    CheckResult {
        ok,
        latency_ms,
        detail,
        at: now_unix_ms(),
    }
}

async fn probe_once(kind: &CheckKind, addr: SocketAddrV4) -> std::result::Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (path, expected) = match kind {
        CheckKind::Tcp => return Ok("connected".into()),
        CheckKind::Http { path, expected } => (path, expected),
    };
    let status = http_status(stream, addr, path).await?;
    if expected.contains(&status) {
        Ok(format!("status {status}"))
    } else {
        Err(format!("status {status}, expected {expected:?}"))
    }
}

/// `GET path` over `stream` with hyper; the response's status code.
async fn http_status(
    stream: tokio::net::TcpStream,
    addr: SocketAddrV4,
    path: &str,
) -> std::result::Result<u16, String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "sluice-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    conn.abort();
    Ok(resp.status().as_u16())
}

/// The far end's name: the host side's plus `p`.
fn peer_name(ifname: &str) -> String {
    format!("{ifname}p")
}

/// A VPC's prober: the namespace thread and the targets it checks.
struct Prober {
    port: CheckPortRow,
    targets: watch::Sender<Vec<Target>>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The namespace went with the thread, and the veth pair with it; this only
        // covers a pair whose far end never left this namespace.
        let _ = cmd::ip(&["link", "del", &self.port.ifname]);
    }
}

impl Prober {
    /// Creates the veth pair, moves its far end into a new namespace held by a thread of
    /// its own, configures it there, and starts probing.
    fn start(
        port: CheckPortRow,
        results: mpsc::UnboundedSender<(Target, CheckResult)>,
    ) -> Result<Self> {
        let peer = peer_name(&port.ifname);
        // A pair left by a crashed earlier run whose namespace is somehow still alive.
        let _ = cmd::ip(&["link", "del", &port.ifname]);
        cmd::ip(&[
            "link",
            "add",
            &port.ifname,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        let (tid_tx, tid_rx) = std_mpsc::channel::<Result<libc::pid_t>>();
        let (go_tx, go_rx) = std_mpsc::channel::<()>();
        let (targets_tx, targets_rx) = watch::channel(Vec::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let p = port.clone();
        let thread = thread::Builder::new()
            .name(format!("hc-{:x}", port.vni))
            .spawn(move || {
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = tid_tx.send(Err(anyhow!("unshare(CLONE_NEWNET): {e}")));
                    return;
                }
                let _ = tid_tx.send(Ok(unsafe { libc::gettid() }));
                if go_rx.recv().is_err() {
                    return;
                }
                let link = match configure_far_end(&p) {
                    Ok(link) => link,
                    Err(e) => {
                        log::warn!("health checks of VNI {}: {e:#}", p.vni);
                        return;
                    }
                };
                run_probes(targets_rx, stop_rx, results);
                drop(link);
            })
            .context("starting a health-check thread")?;
        let tid = tid_rx
            .recv()
            .map_err(|_| anyhow!("the health-check thread ended early"))??;
        let moved = cmd::ip(&["link", "set", &peer, "netns", &tid.to_string()]);
        let _ = go_tx.send(());
        let prober = Prober {
            port,
            targets: targets_tx,
            stop: stop_tx,
            thread: Some(thread),
        };
        moved.context("moving the health-check port's far end into its namespace")?;
        cmd::ip(&["link", "set", &prober.port.ifname, "up"])?;
        Ok(prober)
    }
}

/// In the prober's namespace: loopback up, the far end with the port's MAC and address, a
/// pass-everything XDP program (so redirected frames and the ARP responder's replies are
/// received: see `lab::xdp`), no TX checksum offload (redirected frames lose it), and the
/// VPC's CIDR routed through it (every VPC address is answered by the virtual router).
fn configure_far_end(port: &CheckPortRow) -> Result<OwnedFd> {
    let peer = peer_name(&port.ifname);
    let mac = port
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    cmd::ip(&["link", "set", "lo", "up"])?;
    // IPv4 only, as the overlay: no IPv6 chatter for `xdp_vm` to drop. /proc/sys/net is
    // the namespace of the thread that opens it: this one.
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6");
    if let Err(e) = std::fs::write(&ipv6, "1") {
        log::debug!("health-check port {peer}: {ipv6}: {e}");
    }
    cmd::ip(&["link", "set", &peer, "address", &mac])?;
    let ip = Ipv4Addr::from(port.ip);
    cmd::ip(&["addr", "add", &format!("{ip}/32"), "dev", &peer])?;
    cmd::ip(&["link", "set", &peer, "up"])?;
    cmd::run(Command::new("ethtool").args(["-K", &peer, "tx", "off"]))?;
    let vpc = format!("{}/{}", Ipv4Addr::from(port.vpc), port.vpc_len);
    cmd::ip(&["route", "add", &vpc, "dev", &peer])?;
    let name = std::ffi::CString::new(peer.clone())?;
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {peer} in the health-check namespace");
    }
    crate::lab::xdp::attach_pass(ifindex)
}

/// The prober thread's loop: one task per target, restarted when its target changes.
fn run_probes(
    mut targets: watch::Receiver<Vec<Target>>,
    mut stop: watch::Receiver<bool>,
    results: mpsc::UnboundedSender<(Target, CheckResult)>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::warn!("health checks: no runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut running: BTreeMap<Target, tokio::task::JoinHandle<()>> = BTreeMap::new();
        loop {
            let want: BTreeSet<Target> = targets.borrow_and_update().iter().cloned().collect();
            running.retain(|t, task| {
                let keep = want.contains(t);
                if !keep {
                    task.abort();
                }
                keep
            });
            for t in want {
                if running.contains_key(&t) {
                    continue;
                }
                let results = results.clone();
                let target = t.clone();
                running.insert(
                    t,
                    tokio::spawn(async move {
                        let mut next = tokio::time::Instant::now();
                        loop {
                            let r = probe(&target.kind, target.addr, target.timeout).await;
                            if results.send((target.clone(), r)).is_err() {
                                return;
                            }
                            next += target.interval;
                            tokio::time::sleep_until(next).await;
                        }
                    }),
                );
            }
            tokio::select! {
                c = targets.changed() => if c.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, task) in running {
            task.abort();
        }
    });
}

/// What this host checks: every backend of every listener it has, through the
/// listener's VPC.
pub fn targets(t: &LbTables) -> Vec<Target> {
    let mut out = Vec::new();
    for l in &t.listeners {
        let hc = &l.health_check;
        let kind = match &hc.kind {
            HealthCheckKind::Tcp => CheckKind::Tcp,
            HealthCheckKind::Http {
                path,
                expected_status,
            } => CheckKind::Http {
                path: path.clone(),
                expected: expected_status.clone(),
            },
        };
        for b in &l.backends {
            out.push(Target {
                vni: l.vni,
                backend: b.slot,
                listener: l.id.clone(),
                port: b.port,
                addr: SocketAddrV4::new(Ipv4Addr::from(b.ip), l.check_port(b)),
                kind: kind.clone(),
                interval: Duration::from_millis(hc.interval_ms.into()),
                timeout: Duration::from_millis(hc.timeout_ms.into()),
                healthy_threshold: hc.healthy_threshold,
                unhealthy_threshold: hc.unhealthy_threshold,
            });
        }
    }
    out
}

/// Everything the agent's checks know, shared with the agent's status report.
#[derive(Default)]
pub struct Shared {
    pub view: HealthView,
    /// What each checked backend slot is (the report names it).
    pub targets: BTreeMap<u32, Target>,
}

impl Shared {
    /// This host's report for the controller (`lb_status`), with the active connection
    /// counts read from the datapath (by backend slot).
    pub fn report(&self, active: &BTreeMap<u32, u32>) -> HostReport {
        self.targets
            .iter()
            .map(|(slot, t)| {
                let h = self.view.get(slot);
                let r = BackendReport {
                    ip: *t.addr.ip(),
                    port: t.port,
                    health: h.map(|h| h.health).unwrap_or_default(),
                    active_connections: active.get(slot).copied().unwrap_or(0).into(),
                    last_check: h.and_then(|h| h.last.clone()),
                };
                (*slot, r)
            })
            .collect()
    }
}

/// The agent's health checker: one prober per VPC with listeners on this host.
pub struct HealthChecker {
    probers: BTreeMap<u32, Prober>,
    results: mpsc::UnboundedSender<(Target, CheckResult)>,
    pub shared: Arc<Mutex<Shared>>,
}

impl HealthChecker {
    /// A checker whose results arrive on the returned receiver (see [`HealthChecker::record`]).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(Target, CheckResult)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                probers: BTreeMap::new(),
                results: tx,
                shared: Arc::default(),
            },
            rx,
        )
    }

    /// Makes the probers match `ports` (one per VPC) and their targets `targets`: new
    /// ports' interfaces exist when this returns (call it before resolving interfaces).
    /// Health of backends no longer checked is forgotten.
    pub fn sync(&mut self, ports: &[CheckPortRow], targets: &[Target]) -> Result<()> {
        let wanted: BTreeMap<u32, &CheckPortRow> = ports.iter().map(|p| (p.vni, p)).collect();
        self.probers
            .retain(|vni, p| wanted.get(vni).is_some_and(|w| **w == p.port));
        let mut errors = Vec::new();
        for (vni, port) in &wanted {
            if self.probers.contains_key(vni) {
                continue;
            }
            match Prober::start((*port).clone(), self.results.clone()) {
                Ok(p) => {
                    log::info!(
                        "health checks of VNI {vni}: probing from {} on {}",
                        Ipv4Addr::from(port.ip),
                        port.ifname
                    );
                    self.probers.insert(*vni, p);
                }
                Err(e) => errors.push(format!("VNI {vni}: {e:#}")),
            }
        }
        for (vni, p) in &self.probers {
            let mine: Vec<Target> = targets.iter().filter(|t| t.vni == *vni).cloned().collect();
            p.targets.send_if_modified(|cur| {
                let changed = *cur != mine;
                if changed {
                    *cur = mine.clone();
                }
                changed
            });
        }
        let slots: BTreeSet<u32> = targets.iter().map(|t| t.backend).collect();
        let mut shared = self.shared.lock().expect("health");
        shared.view.retain(|slot, _| slots.contains(slot));
        shared.targets = targets.iter().map(|t| (t.backend, t.clone())).collect();
        if !errors.is_empty() {
            bail!("starting health checks: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Seeds the health of targets not checked yet from what the maps hold (`pinned`: a
    /// backend slot's entry as the previous agent left it): a backend whose slot still
    /// holds its address and port but is not usable was unhealthy then, and stays so
    /// until `healthy_threshold` checks pass, so an agent restart never puts a dead
    /// backend back into the tables. The verdicts to start from.
    pub fn seed(
        &self,
        pinned: impl Fn(u32) -> Option<sluice_common::lb::Backend>,
    ) -> BTreeMap<u32, bool> {
        let mut s = self.shared.lock().expect("health");
        let targets: Vec<Target> = s.targets.values().cloned().collect();
        for t in targets {
            if s.view.contains_key(&t.backend) {
                continue;
            }
            let Some(b) = pinned(t.backend) else {
                continue;
            };
            let same = b.ip == t.addr.ip().octets() && u16::from_be_bytes(b.port) == t.port;
            if same && b.flags & sluice_common::lb::BACKEND_USABLE == 0 {
                s.view.insert(
                    t.backend,
                    BackendHealth {
                        health: Health::Unhealthy,
                        failures: t.unhealthy_threshold,
                        ..Default::default()
                    },
                );
            }
        }
        verdicts(&s.view)
    }

    /// Records a result: the backend's new health when a threshold was crossed.
    pub fn record(shared: &Mutex<Shared>, target: &Target, r: CheckResult) -> Option<Health> {
        let mut s = shared.lock().expect("health");
        if s.targets.get(&target.backend) != Some(target) {
            return None; // no longer checked
        }
        s.view.entry(target.backend).or_default().record(
            r,
            target.healthy_threshold,
            target.unhealthy_threshold,
        )
    }
}

/// The agent's health checks: the checker (synced at every apply), its results (taken
/// once by [`Checks::run`]) and the report wake-up.
pub struct Checks {
    pub checker: Mutex<HealthChecker>,
    results: Mutex<Option<mpsc::UnboundedReceiver<(Target, CheckResult)>>>,
    shared: Arc<Mutex<Shared>>,
}

impl Default for Checks {
    fn default() -> Self {
        let (checker, results) = HealthChecker::new();
        let shared = checker.shared.clone();
        Self {
            checker: Mutex::new(checker),
            results: Mutex::new(Some(results)),
            shared,
        }
    }
}

/// How often an agent reports to the controller without a transition to tell.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);

impl Checks {
    /// [`HealthChecker::seed`].
    pub fn seed(
        &self,
        pinned: impl Fn(u32) -> Option<sluice_common::lb::Backend>,
    ) -> BTreeMap<u32, bool> {
        self.checker.lock().expect("checker").seed(pinned)
    }

    /// Makes the probers and targets match `t` (before the interfaces are resolved, so
    /// new health-check ports exist by then). A prober that cannot start is logged and
    /// retried at the next apply; it never fails the apply.
    pub fn sync(&self, host: &str, t: &LbTables) {
        let targets = targets(t);
        if let Err(e) = self
            .checker
            .lock()
            .expect("checker")
            .sync(&t.check_ports, &targets)
        {
            log::warn!("agent {host}: {e:#}");
        }
    }

    /// Runs until `stop`: records results, and on a crossed threshold rewrites the LB maps
    /// at once (`lb::apply::apply_health`) and reports to the controller; reports every
    /// [`REPORT_INTERVAL`] anyway (health, last checks, active connections).
    pub async fn run(
        &self,
        host: String,
        controller: crate::client::ApiAddr,
        dataplane: Arc<Mutex<crate::loader::Dataplane>>,
        lb: Arc<Mutex<super::apply::LbState>>,
        metrics: HealthMetrics,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(results) = self.results.lock().expect("results").take() else {
            return;
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let changed = {
            let (dataplane, lb, wake, host) = (dataplane.clone(), lb, wake.clone(), host.clone());
            move |v: BTreeMap<u32, bool>| {
                let (dataplane, lb, wake, host) =
                    (dataplane.clone(), lb.clone(), wake.clone(), host.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = super::apply::apply_health(&dataplane, &lb, v) {
                        log::warn!("agent {host}: applying health verdicts: {e:#}");
                    }
                    wake.notify_one();
                });
            }
        };
        let results = tokio::spawn(run_results(
            results,
            self.shared.clone(),
            metrics,
            host.clone(),
            changed,
        ));
        let path = format!("/v1/agent/hosts/{}/lb-health", crate::client::encode(&host));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REPORT_INTERVAL) => {}
                _ = wake.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let report = {
                let slots: Vec<u32> = self
                    .shared
                    .lock()
                    .expect("health")
                    .targets
                    .keys()
                    .copied()
                    .collect();
                let active = {
                    let dp = dataplane.lock().expect("dataplane");
                    super::apply::active_connections(&dp, slots).unwrap_or_default()
                };
                self.shared.lock().expect("health").report(&active)
            };
            let sent = crate::client::send_json(&controller, hyper::Method::PUT, &path, &report)
                .await
                .and_then(|r| r.error_for_status());
            if let Err(e) = sent {
                log::debug!("agent {host}: reporting health: {e:#}");
            }
        }
        results.abort();
    }
}

/// Health-check metrics: per backend up/down, check latency and transitions.
#[derive(Clone)]
pub struct HealthMetrics {
    pub up: prometheus::IntGaugeVec,
    pub check_seconds: prometheus::HistogramVec,
    pub transitions: prometheus::IntCounterVec,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthMetrics {
    pub fn new() -> Self {
        use prometheus::{histogram_opts, opts, HistogramVec, IntCounterVec, IntGaugeVec};
        Self {
            up: IntGaugeVec::new(
                opts!(
                    "sluice_lb_backend_up",
                    "1 while a backend is usable by this host's checks (healthy or not yet decided), 0 once unhealthy."
                ),
                &["listener", "backend"],
            )
            .expect("valid metric"),
            check_seconds: HistogramVec::new(
                histogram_opts!(
                    "sluice_lb_check_seconds",
                    "Duration of health checks through the VPC path (failed ones included).",
                    vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
                ),
                &["listener"],
            )
            .expect("valid metric"),
            transitions: IntCounterVec::new(
                opts!(
                    "sluice_lb_backend_transitions_total",
                    "Backend health changes decided by this host's checks."
                ),
                &["listener", "backend", "to"],
            )
            .expect("valid metric"),
        }
    }

    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.up.clone()))?;
        registry.register(Box::new(self.check_seconds.clone()))?;
        registry.register(Box::new(self.transitions.clone()))
    }
}

/// The verdicts the maps follow: backend slot -> usable, for every decided backend
/// (undecided ones are left out: usable).
pub fn verdicts(view: &HealthView) -> BTreeMap<u32, bool> {
    view.iter()
        .filter(|(_, h)| h.health != Health::Unknown)
        .map(|(slot, h)| (*slot, h.health.usable()))
        .collect()
}

/// Takes results as they come: records them, counts them, logs every transition, and
/// calls `changed` with the new verdicts right after a result that crossed a threshold.
pub async fn run_results(
    mut results: mpsc::UnboundedReceiver<(Target, CheckResult)>,
    shared: Arc<Mutex<Shared>>,
    metrics: HealthMetrics,
    host: String,
    changed: impl Fn(BTreeMap<u32, bool>) + Send + 'static,
) {
    while let Some((target, r)) = results.recv().await {
        let backend = target.addr.to_string();
        metrics
            .check_seconds
            .with_label_values(&[&target.listener])
            .observe(r.latency_ms / 1e3);
        let detail = r.detail.clone();
        let Some(now) = HealthChecker::record(&shared, &target, r) else {
            continue;
        };
        metrics
            .up
            .with_label_values(&[&target.listener, &backend])
            .set(now.usable() as i64);
        metrics
            .transitions
            .with_label_values(&[&target.listener, &backend, now.name()])
            .inc();
        log::info!(
            "agent {host}: health: backend {backend} (slot {}) of listener {} is {} ({detail})",
            target.backend,
            target.listener,
            now.name()
        );
        let v = verdicts(&shared.lock().expect("health").view);
        changed(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool) -> CheckResult {
        CheckResult {
            ok,
            latency_ms: 1.0,
            detail: String::new(),
            at: 0,
        }
    }

    #[test]
    fn a_backend_goes_down_only_after_the_unhealthy_threshold() {
        let mut h = BackendHealth::default();
        assert_eq!(h.record(result(false), 3, 3), None);
        assert_eq!(h.record(result(false), 3, 3), None);
        assert!(h.health.usable(), "two failures of three");
        assert_eq!(h.record(result(false), 3, 3), Some(Health::Unhealthy));
        assert!(!h.health.usable());
        assert_eq!(h.record(result(false), 3, 3), None, "already down");
        assert_eq!(h.transitions, 1);
    }

    #[test]
    fn one_lost_probe_between_successes_changes_nothing() {
        let mut h = BackendHealth::default();
        for ok in [true, true, true, false, true, false, false, true] {
            let before = h.health;
            let changed = h.record(result(ok), 3, 3);
            assert!(
                changed.is_none() || before == Health::Unknown,
                "flapped at {ok}"
            );
        }
        assert_eq!(h.health, Health::Healthy);
    }

    #[test]
    fn a_recovered_backend_comes_back_after_the_healthy_threshold() {
        let mut h = BackendHealth::default();
        for _ in 0..3 {
            h.record(result(false), 2, 3);
        }
        assert_eq!(h.health, Health::Unhealthy);
        assert_eq!(h.record(result(true), 2, 3), None);
        assert_eq!(h.record(result(true), 2, 3), Some(Health::Healthy));
        assert_eq!(h.transitions, 2);
    }

    #[test]
    fn a_restarted_agent_keeps_a_backend_the_maps_hold_unusable_down() {
        use sluice_common::lb::{Backend, BACKEND_USABLE};
        let (checker, _rx) = HealthChecker::new();
        let target = |slot: u32, ip: [u8; 4]| Target {
            vni: 1,
            backend: slot,
            listener: "lbl-1".into(),
            port: 8080,
            addr: SocketAddrV4::new(Ipv4Addr::from(ip), 8080),
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        {
            let mut s = checker.shared.lock().unwrap();
            for t in [
                target(1, [10, 0, 0, 1]),
                target(2, [10, 0, 0, 2]),
                target(3, [10, 0, 0, 3]),
            ] {
                s.targets.insert(t.backend, t);
            }
        }
        let backend = |ip: [u8; 4], flags| Backend {
            ip,
            port: 8080u16.to_be_bytes(),
            weight: 1,
            flags,
        };
        let pinned = |slot: u32| match slot {
            1 => Some(backend([10, 0, 0, 1], 0)),
            2 => Some(backend([10, 0, 0, 2], BACKEND_USABLE)),
            // The slot now holds another backend: nothing to learn from it.
            3 => Some(backend([10, 9, 9, 9], 0)),
            _ => None,
        };
        assert_eq!(checker.seed(pinned), BTreeMap::from([(1, false)]));
        let view = checker.shared.lock().unwrap().view.clone();
        let h = &view[&1];
        assert_eq!(h.health, Health::Unhealthy);
        // Two passing checks bring it back, as for any unhealthy backend.
        let mut h = h.clone();
        let ok = CheckResult {
            ok: true,
            latency_ms: 1.0,
            detail: String::new(),
            at: 0,
        };
        assert_eq!(h.record(ok.clone(), 2, 3), None);
        assert_eq!(h.record(ok, 2, 3), Some(Health::Healthy));
    }

    #[test]
    fn unknown_backends_are_usable() {
        assert!(Health::Unknown.usable());
        assert!(Health::Healthy.usable());
        assert!(!Health::Unhealthy.usable());
    }

    #[tokio::test]
    async fn probes_report_refused_connections_and_http_statuses() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A closed port: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = match closed.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        drop(closed);
        let r = probe(&CheckKind::Tcp, closed_addr, Duration::from_secs(1)).await;
        assert!(!r.ok, "{r:?}");
        assert!(r.detail.starts_with("connect"), "{r:?}");
        // A real HTTP server answering 503.
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = match server.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let http = |expected: Vec<u16>| CheckKind::Http {
            path: "/health".into(),
            expected,
        };
        let r = probe(&http(vec![200]), addr, Duration::from_secs(2)).await;
        assert!(!r.ok && r.detail.contains("503"), "{r:?}");
        let r = probe(&http(vec![200, 503]), addr, Duration::from_secs(2)).await;
        assert!(r.ok && r.detail == "status 503", "{r:?}");
        let r = probe(&CheckKind::Tcp, addr, Duration::from_secs(2)).await;
        assert!(r.ok, "{r:?}");
    }
}
