//! Load balancers in the intent: resources, requests and their validated mutations (pure,
//! all or nothing, like `validate.rs`).
//!
//! A load balancer (`lb-<n>`) lives in a VPC with a VIP in one of its subnets (given, or
//! the lowest free address; no NIC, other VIP or reserved address may have it). It has
//! listeners (`lbl-<n>`: protocol tcp|udp and port, unique per load balancer), each with
//! a scheduler, a health check, an all-down policy and backends (`lbb-<n>`: a NIC of the
//! VPC or a private IP inside one of its subnets, a port and a weight 0..=100; 0 drains).
//! The controller gives every listener and backend a numeric slot (lowest free, stable
//! while it exists): the datapath's table slot ([`sluice_common::lb::MAX_LISTENERS`]) and
//! backend slot ([`sluice_common::lb::MAX_BACKENDS`]); pinned flows name backends by slot.
//! Design of the datapath: the top of `common/src/lb.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};
use sluice_common::lb::{LEAST_CONN_MAX, MAX_BACKENDS, MAX_LISTENERS, MAX_LISTENER_BACKENDS};

use super::{
    model::*,
    nat::{check_name_not_id, not_found, port, NatProtocol},
    validate::{no_duplicates, parse_ip, Change, ValidationError},
};

type Result<T, E = ValidationError> = std::result::Result<T, E>;

/// Listener protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbProtocol {
    Tcp,
    Udp,
}

/// How a listener picks a backend for a new flow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Weighted consistent hashing of the 5-tuple.
    #[default]
    Maglev,
    /// Weighted consistent hashing of the client address (affinity).
    SourceIp,
    /// Fewest active connections per weight (on the client's host).
    LeastConn,
}

/// What a listener does when every backend is unhealthy.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// Use every backend as if healthy (a health checker's failure must not take the
    /// service down).
    #[default]
    FailOpen,
    /// Drop new flows, counted (`drop_lb_no_backend`).
    FailClosed,
}

/// What a health check does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// `GET path`; healthy when the status is one of `expected_status`.
    Http {
        path: String,
        expected_status: Vec<u16>,
    },
}

/// A listener's health check (run by every agent with clients of the listener, through
/// the VPC's own path, from [`sluice_common::lb::HEALTH_CHECK_NET`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: HealthCheckKind,
    /// Checked port; `None`: each backend's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive successes that make a backend healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a backend unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::Tcp,
            port: None,
            interval_ms: 2_000,
            timeout_ms: 1_000,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

/// A backend: where it is and how much it gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbBackend {
    pub id: String,
    /// The NIC's ID when given as a NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// The NIC's address, or the given private IP.
    pub ip: Ipv4Addr,
    pub port: u16,
    /// 0 (drain: no new connections) to 100.
    pub weight: u8,
    /// Datapath backend slot (stable while the backend exists).
    pub slot: u32,
}

/// A listener of a load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbListener {
    pub id: String,
    pub protocol: LbProtocol,
    pub port: u16,
    pub scheduler: SchedulerKind,
    pub health_check: HealthCheck,
    pub all_down: AllDown,
    pub backends: Vec<LbBackend>,
    /// Datapath table slot (stable while the listener exists).
    pub slot: u32,
}

/// A load balancer: a VIP in a subnet of its VPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub subnet: String,
    pub vip: Ipv4Addr,
    pub listeners: Vec<LbListener>,
}

impl Intent {
    pub fn load_balancers(&self) -> impl Iterator<Item = &LoadBalancer> {
        self.load_balancers.values()
    }

    /// A load balancer by ID or name.
    pub fn load_balancer(&self, key: &str) -> Option<&LoadBalancer> {
        self.load_balancers.get(key).or_else(|| {
            self.lookup_name(NameKind::LoadBalancer, "", key)
                .and_then(|id| self.load_balancers.get(id))
        })
    }
}

/// Rebuild the load balancers' part of an intent from its records.
pub(super) fn index_lb(i: &mut Intent, lbs: Vec<LoadBalancer>) {
    for lb in lbs {
        i.index_name(NameKind::LoadBalancer, "", &lb.name, &lb.id);
        i.load_balancers.insert(lb.id.clone(), lb);
    }
}

impl fmt::Display for LbProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbProtocol::Tcp => "tcp",
            LbProtocol::Udp => "udp",
        })
    }
}

impl LbProtocol {
    /// Whether a DNAT entry of protocol `p` forwards this protocol's packets.
    fn served_by(self, p: NatProtocol) -> bool {
        matches!(
            (self, p),
            (_, NatProtocol::Any)
                | (LbProtocol::Tcp, NatProtocol::Tcp)
                | (LbProtocol::Udp, NatProtocol::Udp)
        )
    }
}

impl LoadBalancer {
    pub fn listener(&self, id: &str) -> Option<&LbListener> {
        self.listeners.iter().find(|l| l.id == id)
    }

    /// How dependents lists name one of its listeners: `listener/<lb id>:<listener id>`.
    pub fn listener_reference(&self, l: &LbListener) -> String {
        format!("listener/{}:{}", self.id, l.id)
    }

    /// How dependents lists name one of its backends: `backend/<lb id>:<backend id>`.
    pub fn backend_reference(&self, b: &LbBackend) -> String {
        format!("backend/{}:{}", self.id, b.id)
    }
}

impl LbListener {
    /// The port health checks of backend `b` go to.
    pub fn health_check_port(&self, b: &LbBackend) -> u16 {
        self.health_check.port.unwrap_or(b.port)
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Backend weight when none is given.
pub const DEFAULT_WEIGHT: u8 = 100;
pub const MAX_WEIGHT: u8 = 100;
/// Health-check bounds: thresholds, interval.
pub const MAX_THRESHOLD: u32 = 10;
pub const MIN_INTERVAL_MS: u32 = 1_000;
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// `type` of a health-check request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    #[default]
    Tcp,
    Http,
}

/// A listener's health check as requested; absent fields take the defaults (tcp, every
/// 2 s, 1 s timeout, 3 to go healthy, 3 to go unhealthy, the backend's port; http: `GET
/// /`, status 200).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default, rename = "type")]
    pub kind: HealthCheckType,
    /// http only; starts with '/'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http only; 100 to 599 each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
}

/// A backend as requested: exactly one of `nic` (ID or name, of the load balancer's VPC)
/// and `ip` (inside one of its subnets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub port: i64,
    /// 0 (drain) to 100; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// PATCH of a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendUpdate {
    /// 0 (drain) to 100.
    pub weight: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub protocol: LbProtocol,
    pub port: i64,
    /// Default `maglev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Default `fail_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_down: Option<AllDown>,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// Defaults to the allocated ID (required in a topology); unique across the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VPC ID or name.
    pub vpc: String,
    /// Subnet ID, or its name within the VPC.
    pub subnet: String,
    /// Default: the subnet's lowest free address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

const LB_ID_PREFIXES: [&str; 3] = ["lb", "lbl", "lbb"];

/// Names follow the other names' rules and must not look like an ID.
fn check_lb_name(field: &str, name: &str) -> Result<()> {
    check_name_not_id(field, name, &LB_ID_PREFIXES)
}

fn weight(field: &str, w: i64) -> Result<u8> {
    u8::try_from(w)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| {
            ValidationError::invalid(
                field,
                format!("{w} is not a weight (0 to {MAX_WEIGHT}; 0 drains the backend)"),
            )
        })
}

fn in_range(field: &str, v: i64, lo: u32, hi: u32, unit: &str) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| ValidationError::invalid(field, format!("{v} is not {lo} to {hi}{unit}")))
}

/// A health check from its request, defaults filled in.
pub fn resolve_health_check(spec: Option<&HealthCheckSpec>) -> Result<HealthCheck> {
    let d = HealthCheck::default();
    let Some(s) = spec else {
        return Ok(d);
    };
    let kind = match s.kind {
        HealthCheckType::Tcp => {
            for (field, given) in [
                ("path", s.path.is_some()),
                ("expected_status", s.expected_status.is_some()),
            ] {
                if given {
                    return Err(ValidationError::invalid(
                        field,
                        "only http health checks have one",
                    ));
                }
            }
            HealthCheckKind::Tcp
        }
        HealthCheckType::Http => {
            let path = s.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ValidationError::invalid(
                    "path",
                    format!("{path:?} is not a request path: it starts with '/' and has no spaces"),
                ));
            }
            let status = s.expected_status.clone().unwrap_or_else(|| vec![200]);
            if status.is_empty() {
                return Err(ValidationError::invalid(
                    "expected_status",
                    "at least one status code",
                ));
            }
            let mut expected_status = vec![];
            for (k, c) in status.iter().enumerate() {
                let c = in_range(
                    &format!("expected_status[{k}]"),
                    *c,
                    100,
                    599,
                    " (an HTTP status)",
                )?;
                expected_status.push(c as u16);
            }
            expected_status.sort_unstable();
            expected_status.dedup();
            HealthCheckKind::Http {
                path,
                expected_status,
            }
        }
    };
    let interval_ms = match s.interval_ms {
        Some(v) => in_range("interval_ms", v, MIN_INTERVAL_MS, MAX_INTERVAL_MS, " ms")?,
        None => d.interval_ms,
    };
    let timeout_ms = match s.timeout_ms {
        Some(v) => in_range("timeout_ms", v, 1, MAX_INTERVAL_MS, " ms")?,
        None => d.timeout_ms,
    };
    if timeout_ms >= interval_ms {
        return Err(ValidationError::invalid(
            "timeout_ms",
            format!("{timeout_ms} ms is not shorter than the interval ({interval_ms} ms)"),
        ));
    }
    let threshold = |field: &str, v: Option<i64>, default: u32| match v {
        Some(v) => in_range(field, v, 1, MAX_THRESHOLD, ""),
        None => Ok(default),
    };
    Ok(HealthCheck {
        kind,
        port: s.port.map(|p| port("port", p)).transpose()?,
        interval_ms,
        timeout_ms,
        healthy_threshold: threshold(
            "healthy_threshold",
            s.healthy_threshold,
            d.healthy_threshold,
        )?,
        unhealthy_threshold: threshold(
            "unhealthy_threshold",
            s.unhealthy_threshold,
            d.unhealthy_threshold,
        )?,
    })
}

/// The `n` lowest numbers of `0..limit` not in `used`; `None` if there are fewer.
fn lowest_free(used: &BTreeSet<u32>, n: usize, limit: u32) -> Option<Vec<u32>> {
    let out: Vec<u32> = (0..limit).filter(|s| !used.contains(s)).take(n).collect();
    (out.len() == n).then_some(out)
}

// ---------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------

impl Intent {
    /// Who holds address `ip` of VPC `vpc`: `nic/<id>` or `load-balancer/<id>` (its VIP).
    pub(super) fn address_holder(&self, vpc: &str, ip: Ipv4Addr) -> Option<String> {
        self.nics
            .values()
            .find(|n| n.vpc == vpc && n.ip == ip)
            .map(|n| format!("nic/{}", n.id))
            .or_else(|| {
                self.load_balancers
                    .values()
                    .find(|l| l.vpc == vpc && l.vip == ip)
                    .map(|l| format!("load-balancer/{}", l.id))
            })
    }

    /// The load balancer of VPC `vpc` whose VIP is `ip`.
    /// The IDs of the VPCs with a DNAT entry whose target is one of their VIPs.
    pub fn dnat_vip_vpcs(&self) -> impl Iterator<Item = &str> {
        self.nat_gateways()
            .filter(|g| {
                g.dnat
                    .iter()
                    .any(|d| self.load_balancer_at(&g.vpc, d.private_ip).is_some())
            })
            .map(|g| g.vpc.as_str())
    }

    pub fn load_balancer_at(&self, vpc: &str, ip: Ipv4Addr) -> Option<&LoadBalancer> {
        self.load_balancers
            .values()
            .find(|l| l.vpc == vpc && l.vip == ip)
    }

    /// What load balancers keep a VPC, subnet or NIC (by ID) from being deleted: the
    /// load balancers in it, and backends that are the NIC or addresses of the subnet.
    pub(super) fn lb_dependents(
        &self,
        vpc: Option<&str>,
        subnet: Option<&str>,
        nic: Option<&str>,
    ) -> Vec<String> {
        let sub = subnet.and_then(|s| self.subnets.get(s));
        let mut deps = vec![];
        for lb in self.load_balancers.values() {
            if Some(lb.vpc.as_str()) == vpc || Some(lb.subnet.as_str()) == subnet {
                deps.push(format!("load-balancer/{}", lb.id));
                continue;
            }
            for b in lb.listeners.iter().flat_map(|l| &l.backends) {
                let hit = (nic.is_some() && b.nic.as_deref() == nic)
                    || sub.is_some_and(|s| s.vpc == lb.vpc && s.cidr.contains(b.ip));
                if hit {
                    deps.push(lb.backend_reference(b));
                }
            }
        }
        deps
    }

    /// The ports health checks reach NIC `nic` on (as a backend of any listener): what
    /// its system security-group rule opens to [`sluice_common::lb::HEALTH_CHECK_NET`].
    pub fn health_check_ports(&self, nic: &Nic) -> BTreeSet<(LbProtocol, u16)> {
        let mut out = BTreeSet::new();
        for lb in self.load_balancers.values().filter(|l| l.vpc == nic.vpc) {
            for l in &lb.listeners {
                for b in &l.backends {
                    if b.nic.as_deref() == Some(nic.id.as_str()) || b.ip == nic.ip {
                        // Both check types connect over TCP.
                        out.insert((LbProtocol::Tcp, l.health_check_port(b)));
                    }
                }
            }
        }
        out
    }

    /// DNAT entries forwarding to `lb`'s VIP (on listener `only`, when given).
    fn dnat_users(&self, lb: &LoadBalancer, only: Option<&LbListener>) -> Vec<String> {
        self.nat_gateways()
            .filter(|g| g.vpc == lb.vpc)
            .flat_map(|g| {
                g.dnat
                    .iter()
                    .filter(|d| d.private_ip == lb.vip)
                    .filter(move |d| {
                        only.is_none_or(|l| {
                            d.private_port == l.port && l.protocol.served_by(d.protocol)
                        })
                    })
                    .map(move |d| g.dnat_reference(d))
            })
            .collect()
    }

    /// A DNAT entry of a gateway in `vpc` to (`ip`, `port`, `protocol`): when `ip` is a
    /// VIP, the port must be one of its listeners' for every protocol the entry forwards.
    pub(super) fn check_dnat_to_vip(
        &self,
        vpc: &str,
        ip: Ipv4Addr,
        port: u16,
        protocol: NatProtocol,
    ) -> Result<()> {
        let Some(lb) = self.load_balancer_at(vpc, ip) else {
            return Ok(());
        };
        let want: &[LbProtocol] = match protocol {
            NatProtocol::Tcp => &[LbProtocol::Tcp],
            NatProtocol::Udp => &[LbProtocol::Udp],
            NatProtocol::Any => &[LbProtocol::Tcp, LbProtocol::Udp],
        };
        for p in want {
            if !lb
                .listeners
                .iter()
                .any(|l| l.protocol == *p && l.port == port)
            {
                return Err(ValidationError::invalid(
                    "private_port",
                    format!(
                        "{ip} is load balancer {}'s VIP, which has no {p} listener on port {port}",
                        lb.id
                    ),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

impl Intent {
    /// Create a load balancer with its listeners and backends.
    pub fn create_load_balancer(&self, spec: LoadBalancerSpec) -> Result<(Intent, LoadBalancer)> {
        self.mutate(|i| i.create_lb_mut(spec))
    }

    /// Delete a load balancer with its listeners; 409 naming the DNAT entries that
    /// forward to its VIP.
    pub fn delete_load_balancer(&self, key: &str) -> Result<Intent> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            let users = i.dnat_users(&lb, None);
            if !users.is_empty() {
                return Err(ValidationError::conflict(
                    "load_balancer",
                    format!(
                        "DNAT entries forward to load balancer {}'s VIP {}; remove them first",
                        lb.id, lb.vip
                    ),
                    users,
                ));
            }
            i.unindex_name(NameKind::LoadBalancer, "", &lb.name);
            i.load_balancers.remove(&lb.id);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    pub fn add_lb_listener(&self, key: &str, spec: ListenerSpec) -> Result<(Intent, LbListener)> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            i.add_listener_mut(&lb.id, spec)
        })
    }

    /// Remove a listener and its backends; 409 naming the DNAT entries that forward to it.
    pub fn remove_lb_listener(&self, key: &str, listener: &str) -> Result<Intent> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            let l = resolve_listener(&lb, listener)?;
            i.remove_listener_mut(&lb, l)
        })
        .map(|(i, ())| i)
    }

    pub fn add_lb_backend(
        &self,
        key: &str,
        listener: &str,
        spec: BackendSpec,
    ) -> Result<(Intent, LbBackend)> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            let l = resolve_listener(&lb, listener)?;
            let mut added = i.add_backends_mut(&lb.id, &l.id, &[spec], "")?;
            Ok(added.remove(0))
        })
    }

    /// Remove a backend: its pinned flows pick again.
    pub fn remove_lb_backend(&self, key: &str, listener: &str, backend: &str) -> Result<Intent> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            let l = resolve_listener(&lb, listener)?;
            resolve_backend_in(l, backend)?;
            let (lb_id, l_id) = (lb.id.clone(), l.id.clone());
            i.listener_mut(&lb_id, &l_id)
                .backends
                .retain(|b| b.id != backend);
            Ok(())
        })
        .map(|(i, ())| i)
    }

    /// Change a backend's weight (0 drains it: no new flows, open ones continue).
    pub fn set_lb_backend_weight(
        &self,
        key: &str,
        listener: &str,
        backend: &str,
        update: BackendUpdate,
    ) -> Result<(Intent, LbBackend)> {
        self.mutate(|i| {
            let lb = i.resolve_lb(key)?;
            let l = resolve_listener(&lb, listener)?;
            resolve_backend_in(l, backend)?;
            let w = weight("weight", update.weight)?;
            let (lb_id, l_id) = (lb.id.clone(), l.id.clone());
            let b = i
                .listener_mut(&lb_id, &l_id)
                .backends
                .iter_mut()
                .find(|b| b.id == backend)
                .expect("resolved above");
            b.weight = w;
            Ok(b.clone())
        })
    }

    // ---- in-place forms ----

    fn resolve_lb(&self, key: &str) -> Result<LoadBalancer> {
        self.load_balancer(key)
            .cloned()
            .ok_or_else(|| not_found("load_balancer", "load balancer", key))
    }

    fn listener_mut(&mut self, lb: &str, listener: &str) -> &mut LbListener {
        self.load_balancers
            .get_mut(lb)
            .and_then(|lb| lb.listeners.iter_mut().find(|l| l.id == listener))
            .expect("a resolved listener")
    }

    fn create_lb_mut(&mut self, spec: LoadBalancerSpec) -> Result<LoadBalancer> {
        if let Some(name) = &spec.name {
            check_lb_name("name", name)?;
            if let Some(id) = self.lookup_name(NameKind::LoadBalancer, "", name) {
                return Err(ValidationError::conflict(
                    "name",
                    format!("a load balancer named {name:?} already exists"),
                    vec![format!("load-balancer/{id}")],
                ));
            }
        }
        let vpc = self.resolve_vpc("vpc", &spec.vpc)?;
        let subnet = self
            .subnet(Some(&vpc.id), &spec.subnet)
            .cloned()
            .ok_or_else(|| {
                not_found("subnet", &format!("subnet in VPC {}", vpc.id), &spec.subnet)
            })?;
        let vip = match &spec.vip {
            Some(v) => {
                let ip = parse_ip("vip", v)?;
                if !subnet.cidr.contains(ip) {
                    return Err(ValidationError::invalid(
                        "vip",
                        format!("{ip} is not in subnet {} ({})", subnet.id, subnet.cidr),
                    ));
                }
                if let Some(why) = subnet.reserved_reason(ip) {
                    return Err(ValidationError::invalid("vip", format!("{ip} is {why}")));
                }
                if let Some(holder) = self.address_holder(&vpc.id, ip) {
                    return Err(ValidationError::conflict(
                        "vip",
                        format!("{ip} is in use already"),
                        vec![holder],
                    ));
                }
                ip
            }
            None => (RESERVED_LOW_ADDRESSES..subnet.cidr.size() - 1)
                .filter_map(|k| subnet.cidr.nth(k))
                .find(|ip| self.address_holder(&vpc.id, *ip).is_none())
                .ok_or_else(|| {
                    ValidationError::conflict(
                        "vip",
                        format!("subnet {} ({}) has no free address", subnet.id, subnet.cidr),
                        vec![],
                    )
                })?,
        };
        let id = format!("lb-{}", self.counters.next_load_balancer);
        self.counters.next_load_balancer += 1;
        let lb = LoadBalancer {
            name: spec.name.unwrap_or_else(|| id.clone()),
            id: id.clone(),
            vpc: vpc.id,
            subnet: subnet.id,
            vip,
            listeners: vec![],
        };
        self.index_name(NameKind::LoadBalancer, "", &lb.name, &id);
        self.load_balancers.insert(id.clone(), lb);
        for (k, l) in spec.listeners.into_iter().enumerate() {
            self.add_listener_mut(&id, l)
                .map_err(|e| e.at(&format!("listeners[{k}]")))?;
        }
        Ok(self.load_balancers[&id].clone())
    }

    fn add_listener_mut(&mut self, lb: &str, spec: ListenerSpec) -> Result<LbListener> {
        let l = self.resolve_listener_spec(&spec)?;
        let balancer = &self.load_balancers[lb];
        if let Some(dup) = balancer
            .listeners
            .iter()
            .find(|x| (x.protocol, x.port) == (l.protocol, l.port))
        {
            return Err(ValidationError::conflict(
                "port",
                format!(
                    "load balancer {lb} has a {} listener on port {} already ({})",
                    l.protocol, l.port, dup.id
                ),
                vec![balancer.listener_reference(dup)],
            ));
        }
        let used: BTreeSet<u32> = self
            .load_balancers
            .values()
            .flat_map(|b| b.listeners.iter().map(|l| l.slot))
            .collect();
        let slot = lowest_free(&used, 1, MAX_LISTENERS).ok_or_else(|| {
            ValidationError::conflict(
                "listener",
                format!("every listener slot is in use (at most {MAX_LISTENERS} listeners in the cloud)"),
                vec![],
            )
        })?[0];
        let id = format!("lbl-{}", self.counters.next_lb_listener);
        self.counters.next_lb_listener += 1;
        if let Some(b) = self.load_balancers.get_mut(lb) {
            b.listeners.push(LbListener {
                id: id.clone(),
                slot,
                backends: vec![],
                ..l
            });
        }
        self.add_backends_mut(lb, &id, &spec.backends, "backends")?;
        Ok(self.load_balancers[lb]
            .listener(&id)
            .expect("added")
            .clone())
    }

    /// A listener without ID, slot or backends; its backends' count checked.
    fn resolve_listener_spec(&self, spec: &ListenerSpec) -> Result<LbListener> {
        let scheduler = spec.scheduler.unwrap_or_default();
        check_backend_count("backends", scheduler, spec.backends.len())?;
        Ok(LbListener {
            id: String::new(),
            protocol: spec.protocol,
            port: port("port", spec.port)?,
            scheduler,
            health_check: resolve_health_check(spec.health_check.as_ref())
                .map_err(|e| e.at("health_check"))?,
            all_down: spec.all_down.unwrap_or_default(),
            backends: vec![],
            slot: 0,
        })
    }

    fn remove_listener_mut(&mut self, lb: &LoadBalancer, l: &LbListener) -> Result<()> {
        let users = self.dnat_users(lb, Some(l));
        if !users.is_empty() {
            return Err(ValidationError::conflict(
                "listener",
                format!(
                    "DNAT entries forward to listener {} ({} {}:{}); remove them first",
                    l.id, l.protocol, lb.vip, l.port
                ),
                users,
            ));
        }
        if let Some(b) = self.load_balancers.get_mut(&lb.id) {
            b.listeners.retain(|x| x.id != l.id);
        }
        Ok(())
    }

    /// A backend without ID or slot.
    fn resolve_backend(&self, lb: &LoadBalancer, spec: &BackendSpec) -> Result<LbBackend> {
        let (nic, ip) = match (&spec.nic, &spec.ip) {
            (Some(n), None) => {
                let n = self.resolve_nic("nic", n)?;
                if n.vpc != lb.vpc {
                    return Err(ValidationError::invalid(
                        "nic",
                        format!(
                            "NIC {} is in VPC {}, outside the load balancer's VPC {}",
                            n.id, n.vpc, lb.vpc
                        ),
                    ));
                }
                (Some(n.id), n.ip)
            }
            (None, Some(ip)) => {
                let ip = parse_ip("ip", ip)?;
                match self.subnets_of(&lb.vpc).find(|s| s.cidr.contains(ip)) {
                    None => {
                        return Err(ValidationError::invalid(
                            "ip",
                            format!("{ip} is in no subnet of the load balancer's VPC {}", lb.vpc),
                        ))
                    }
                    Some(s) => {
                        if let Some(why) = s.reserved_reason(ip) {
                            return Err(ValidationError::invalid("ip", format!("{ip} is {why}")));
                        }
                    }
                }
                if let Some(other) = self.load_balancer_at(&lb.vpc, ip) {
                    return Err(ValidationError::invalid(
                        "ip",
                        format!(
                            "{ip} is load balancer {}'s VIP; a backend is a VM's address",
                            other.id
                        ),
                    ));
                }
                (None, ip)
            }
            _ => {
                return Err(ValidationError::invalid(
                    "nic",
                    "a backend is exactly one of nic and ip",
                ))
            }
        };
        Ok(LbBackend {
            id: String::new(),
            nic,
            ip,
            port: port("port", spec.port)?,
            weight: weight("weight", spec.weight.unwrap_or(DEFAULT_WEIGHT as i64))?,
            slot: 0,
        })
    }

    /// Add backends to a listener (their slots allocated together); errors are located
    /// at `field[k]` (`field` empty: a single backend, unlocated).
    fn add_backends_mut(
        &mut self,
        lb: &str,
        listener: &str,
        specs: &[BackendSpec],
        field: &str,
    ) -> Result<Vec<LbBackend>> {
        let balancer = self.load_balancers[lb].clone();
        let l = balancer.listener(listener).expect("a resolved listener");
        let at = |k: usize| {
            if field.is_empty() {
                String::new()
            } else {
                format!("{field}[{k}]")
            }
        };
        let locate = |e: ValidationError, k: usize| {
            let at = at(k);
            if at.is_empty() {
                e
            } else {
                e.at(&at)
            }
        };
        let total = l.backends.len() + specs.len();
        if check_backend_count("", l.scheduler, total).is_err() {
            let most = max_backends(l.scheduler);
            return Err(ValidationError::conflict(
                if field.is_empty() { "listener" } else { field },
                format!(
                    "listener {} ({}) would have {total} backends; it may have at most {most}",
                    l.id,
                    scheduler_name(l.scheduler)
                ),
                vec![],
            ));
        }
        let mut new: Vec<LbBackend> = vec![];
        for (k, s) in specs.iter().enumerate() {
            let b = self
                .resolve_backend(&balancer, s)
                .map_err(|e| locate(e, k))?;
            if let Some(dup) = l.backends.iter().find(|x| (x.ip, x.port) == (b.ip, b.port)) {
                return Err(locate(
                    ValidationError::conflict(
                        "port",
                        format!(
                            "{}:{} is a backend of listener {} already ({})",
                            b.ip, b.port, l.id, dup.id
                        ),
                        vec![balancer.backend_reference(dup)],
                    ),
                    k,
                ));
            }
            if new.iter().any(|x| (x.ip, x.port) == (b.ip, b.port)) {
                return Err(locate(
                    ValidationError::invalid(
                        "port",
                        format!("{}:{} is listed twice", b.ip, b.port),
                    ),
                    k,
                ));
            }
            new.push(b);
        }
        let used: BTreeSet<u32> = self
            .load_balancers
            .values()
            .flat_map(|b| &b.listeners)
            .flat_map(|l| l.backends.iter().map(|b| b.slot))
            .collect();
        let slots = lowest_free(&used, new.len(), MAX_BACKENDS).ok_or_else(|| {
            ValidationError::conflict(
                if field.is_empty() { "listener" } else { field },
                format!(
                    "not enough free backend slots (at most {MAX_BACKENDS} backends in the cloud)"
                ),
                vec![],
            )
        })?;
        for (b, slot) in new.iter_mut().zip(slots) {
            b.id = format!("lbb-{}", self.counters.next_lb_backend);
            self.counters.next_lb_backend += 1;
            b.slot = slot;
        }
        self.listener_mut(lb, listener)
            .backends
            .extend(new.iter().cloned());
        // Each NIC behind a new backend once: its system rules must still fit.
        let by_ip: BTreeMap<Ipv4Addr, &Nic> = self
            .nics
            .values()
            .filter(|n| n.vpc == balancer.vpc)
            .map(|n| (n.ip, n))
            .collect();
        let mut checked = BTreeSet::new();
        for (k, b) in new.iter().enumerate() {
            if let Some(n) = by_ip.get(&b.ip) {
                if checked.insert(n.id.as_str()) {
                    self.check_system_rule_room("port", n)
                        .map_err(|e| locate(e, k))?;
                }
            }
        }
        Ok(new)
    }

    // ---- apply -f ----

    /// Load balancers matched by name: created, or brought to the declared listeners
    /// (matched by protocol and port, keeping their IDs and slots) and backends (matched
    /// by address and port, likewise); undeclared listeners and backends are removed.
    pub(super) fn apply_lb_mut(
        &mut self,
        lbs: &[LoadBalancerSpec],
        mut record: impl FnMut(&str, &str, Change),
    ) -> Result<()> {
        let names = lbs
            .iter()
            .enumerate()
            .map(|(k, l)| {
                l.name.clone().ok_or_else(|| {
                    ValidationError::invalid(
                        format!("load_balancers[{k}].name"),
                        "required in a topology",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        no_duplicates("load_balancers", names.iter().map(String::as_str))?;
        for (k, spec) in lbs.iter().enumerate() {
            let c = self
                .apply_one_lb(spec)
                .map_err(|e| e.at(&format!("load_balancers[{k}]")))?;
            record("load-balancer", &names[k], c);
        }
        Ok(())
    }

    fn apply_one_lb(&mut self, t: &LoadBalancerSpec) -> Result<Change> {
        let name = t.name.as_deref().unwrap_or_default();
        let Some(existing) = self.load_balancer(name).cloned() else {
            self.create_lb_mut(t.clone())?;
            return Ok(Change::Created);
        };
        self.check_same_place(
            ("load balancer", &existing.id),
            (&existing.vpc, &existing.subnet),
            (&t.vpc, &t.subnet),
        )?;
        if let Some(v) = &t.vip {
            let v = parse_ip("vip", v)?;
            if v != existing.vip {
                return Err(ValidationError::conflict(
                    "vip",
                    format!(
                        "load balancer {}'s VIP is {} and cannot change: delete and recreate it",
                        existing.id, existing.vip
                    ),
                    vec![],
                ));
            }
        }
        let id = existing.id.clone();
        // Resolve everything first: listeners as (spec, listener, backends).
        let mut declared = vec![];
        for (k, s) in t.listeners.iter().enumerate() {
            let at = format!("listeners[{k}]");
            let l = self.resolve_listener_spec(s).map_err(|e| e.at(&at))?;
            if declared
                .iter()
                .any(|(_, x, _): &(&ListenerSpec, LbListener, Vec<LbBackend>)| {
                    (x.protocol, x.port) == (l.protocol, l.port)
                })
            {
                return Err(ValidationError::invalid(
                    format!("{at}.port"),
                    format!("{} port {} is declared twice", l.protocol, l.port),
                ));
            }
            let backends = s
                .backends
                .iter()
                .enumerate()
                .map(|(j, b)| {
                    self.resolve_backend(&existing, b)
                        .map_err(|e| e.at(&format!("{at}.backends[{j}]")))
                })
                .collect::<Result<Vec<_>>>()?;
            for (j, b) in backends.iter().enumerate() {
                if backends[..j]
                    .iter()
                    .any(|x| (x.ip, x.port) == (b.ip, b.port))
                {
                    return Err(ValidationError::invalid(
                        format!("{at}.backends[{j}].port"),
                        format!("{}:{} is listed twice", b.ip, b.port),
                    ));
                }
            }
            declared.push((s, l, backends));
        }
        for l in &existing.listeners {
            if !declared
                .iter()
                .any(|(_, x, _)| (x.protocol, x.port) == (l.protocol, l.port))
            {
                self.remove_listener_mut(&existing, l)
                    .map_err(|e| e.at("listeners"))?;
            }
        }
        for (k, (spec, l, backends)) in declared.into_iter().enumerate() {
            let at = format!("listeners[{k}]");
            let current = self.load_balancers[&id]
                .listeners
                .iter()
                .find(|x| (x.protocol, x.port) == (l.protocol, l.port))
                .cloned();
            let Some(current) = current else {
                self.add_listener_mut(&id, spec.clone())
                    .map_err(|e| e.at(&at))?;
                continue;
            };
            let same = |a: &LbBackend, b: &LbBackend| (a.ip, a.port) == (b.ip, b.port);
            let (mut new_specs, mut updates) = (vec![], vec![]);
            for (b, s) in backends.iter().zip(&spec.backends) {
                match current.backends.iter().find(|x| same(x, b)) {
                    Some(x) => updates.push(LbBackend {
                        id: x.id.clone(),
                        slot: x.slot,
                        ..b.clone()
                    }),
                    None => new_specs.push(s.clone()),
                }
            }
            let target = self.listener_mut(&id, &current.id);
            target.scheduler = l.scheduler;
            target.health_check = l.health_check;
            target.all_down = l.all_down;
            target.backends = updates;
            self.add_backends_mut(&id, &current.id, &new_specs, &format!("{at}.backends"))?;
        }
        Ok(if self.load_balancers[&id] == existing {
            Change::Unchanged
        } else {
            Change::Updated
        })
    }
}

fn max_backends(s: SchedulerKind) -> u32 {
    match s {
        SchedulerKind::LeastConn => LEAST_CONN_MAX,
        _ => MAX_LISTENER_BACKENDS,
    }
}

fn scheduler_name(s: SchedulerKind) -> &'static str {
    match s {
        SchedulerKind::Maglev => "maglev",
        SchedulerKind::SourceIp => "source_ip",
        SchedulerKind::LeastConn => "least_conn",
    }
}

fn check_backend_count(field: &str, s: SchedulerKind, n: usize) -> Result<()> {
    let most = max_backends(s);
    if n > most as usize {
        return Err(ValidationError::invalid(
            field,
            format!(
                "{n} backends; a {} listener has at most {most}",
                scheduler_name(s)
            ),
        ));
    }
    Ok(())
}

fn resolve_listener<'a>(lb: &'a LoadBalancer, key: &str) -> Result<&'a LbListener> {
    lb.listener(key).ok_or_else(|| {
        ValidationError::not_found(
            "listener",
            format!("load balancer {} has no listener {key:?}", lb.id),
        )
    })
}

fn resolve_backend_in<'a>(l: &'a LbListener, key: &str) -> Result<&'a LbBackend> {
    l.backends.iter().find(|b| b.id == key).ok_or_else(|| {
        ValidationError::not_found(
            "backend",
            format!("listener {} has no backend {key:?}", l.id),
        )
    })
}

/// The slots in use: listeners' and backends' (for tests and the compiler's checks).
pub fn used_slots(i: &Intent) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
    let mut listeners = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for lb in i.load_balancers() {
        for l in &lb.listeners {
            listeners.insert(l.slot, l.id.clone());
            for b in &l.backends {
                backends.insert(b.slot, b.id.clone());
            }
        }
    }
    (listeners, backends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{
        nat::{DnatSpec, EipPoolSpec, EipSpec, NatGatewaySpec},
        sg::Direction,
        validate::tests::{lab, lab_topology, LAB},
        ErrorKind, NicSpec,
    };

    fn refused<T: fmt::Debug>(r: Result<T>, kind: ErrorKind, field: &str) -> ValidationError {
        let e = r.expect_err("refused");
        assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
        e
    }

    fn nic_backend(nic: &str, port: i64) -> BackendSpec {
        BackendSpec {
            nic: Some(nic.into()),
            port,
            ..Default::default()
        }
    }

    fn ip_backend(ip: &str, port: i64) -> BackendSpec {
        BackendSpec {
            ip: Some(ip.into()),
            port,
            ..Default::default()
        }
    }

    fn listener(protocol: LbProtocol, port: i64, backends: Vec<BackendSpec>) -> ListenerSpec {
        ListenerSpec {
            protocol,
            port,
            scheduler: None,
            health_check: None,
            all_down: None,
            backends,
        }
    }

    fn lb_spec(name: &str, vip: Option<&str>, listeners: Vec<ListenerSpec>) -> LoadBalancerSpec {
        LoadBalancerSpec {
            name: Some(name.into()),
            vpc: "tenant-a".into(),
            subnet: "web".into(),
            vip: vip.map(Into::into),
            listeners,
        }
    }

    /// The lab with `web-lb` in tenant-a's web subnet: tcp 80 to a-vm1:8080 and
    /// 10.0.2.10:8080 (a-vm2 by address).
    fn lb_lab() -> Intent {
        lab()
            .create_load_balancer(lb_spec(
                "web-lb",
                None,
                vec![listener(
                    LbProtocol::Tcp,
                    80,
                    vec![nic_backend("a-vm1", 8080), ip_backend("10.0.2.10", 8080)],
                )],
            ))
            .unwrap()
            .0
    }

    #[test]
    fn a_load_balancer_gets_ids_slots_defaults_and_the_lowest_free_vip() {
        let i = lb_lab();
        let lb = i.load_balancer("web-lb").unwrap();
        assert_eq!(lb.id, "lb-1");
        assert_eq!(lb.vip, "10.0.1.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(i.load_balancer("lb-1"), Some(lb));
        let l = &lb.listeners[0];
        assert_eq!((l.id.as_str(), l.slot), ("lbl-1", 0));
        assert_eq!(l.scheduler, SchedulerKind::Maglev);
        assert_eq!(l.all_down, AllDown::FailOpen);
        assert_eq!(l.health_check, HealthCheck::default());
        assert_eq!(
            (l.health_check.interval_ms, l.health_check.timeout_ms),
            (2_000, 1_000)
        );
        let b: Vec<_> = l
            .backends
            .iter()
            .map(|b| {
                (
                    b.id.as_str(),
                    b.nic.as_deref(),
                    b.ip.to_string(),
                    b.weight,
                    b.slot,
                )
            })
            .collect();
        assert_eq!(
            b,
            [
                ("lbb-1", Some("nic-1"), "10.0.1.10".into(), 100, 0),
                ("lbb-2", None, "10.0.2.10".into(), 100, 1)
            ]
        );
        // NICs now skip the VIP, and may not take it.
        let (i2, n) = i
            .create_nic(NicSpec {
                name: Some("a-vm3".into()),
                vpc: "tenant-a".into(),
                subnet: "web".into(),
                host: "h1".into(),
                ifname: "a-vm3".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(n.ip.to_string(), "10.0.1.5");
        let e = refused(
            i2.create_nic(NicSpec {
                name: Some("a-vm4".into()),
                vpc: "tenant-a".into(),
                subnet: "web".into(),
                host: "h1".into(),
                ifname: "a-vm4".into(),
                ip: Some("10.0.1.4".into()),
                ..Default::default()
            }),
            ErrorKind::Conflict,
            "ip",
        );
        assert_eq!(e.dependents, ["load-balancer/lb-1"]);
        // The same address is free in another VPC.
        let mut b = lb_spec("b-lb", Some("10.0.1.4"), vec![]);
        b.vpc = "tenant-b".into();
        assert!(i.create_load_balancer(b).is_ok());
    }

    #[test]
    fn a_vip_outside_the_subnet_reserved_or_taken_is_refused() {
        let i = lb_lab();
        for (vip, why) in [
            ("10.0.2.50", "not in subnet"),
            ("10.0.1.1", "gateway"),
            ("10.0.1.0", "network address"),
            ("10.0.1.255", "broadcast"),
            ("10.0.1", "not an IPv4 address"),
        ] {
            let e = refused(
                i.create_load_balancer(lb_spec("x", Some(vip), vec![])),
                ErrorKind::Invalid,
                "vip",
            );
            assert!(e.reason.contains(why), "{vip}: {e}");
        }
        let e = refused(
            i.create_load_balancer(lb_spec("x", Some("10.0.1.10"), vec![])),
            ErrorKind::Conflict,
            "vip",
        );
        assert_eq!(e.dependents, ["nic/nic-1"]);
        let e = refused(
            i.create_load_balancer(lb_spec("x", Some("10.0.1.4"), vec![])),
            ErrorKind::Conflict,
            "vip",
        );
        assert_eq!(e.dependents, ["load-balancer/lb-1"]);
        // Names: unique, not an ID's shape.
        refused(
            i.create_load_balancer(lb_spec("web-lb", None, vec![])),
            ErrorKind::Conflict,
            "name",
        );
        refused(
            i.create_load_balancer(lb_spec("lbl-4", None, vec![])),
            ErrorKind::Invalid,
            "name",
        );
        let mut s = lb_spec("x", None, vec![]);
        s.vpc = "nope".into();
        refused(i.create_load_balancer(s), ErrorKind::NotFound, "vpc");
        let mut s = lb_spec("x", None, vec![]);
        s.subnet = "svc".into();
        refused(i.create_load_balancer(s), ErrorKind::NotFound, "subnet");
    }

    #[test]
    fn duplicate_listeners_and_bad_ports_are_refused() {
        let i = lb_lab();
        let e = refused(
            i.add_lb_listener("web-lb", listener(LbProtocol::Tcp, 80, vec![])),
            ErrorKind::Conflict,
            "port",
        );
        assert_eq!(e.dependents, ["listener/lb-1:lbl-1"]);
        let (i2, udp) = i
            .add_lb_listener("web-lb", listener(LbProtocol::Udp, 80, vec![]))
            .unwrap();
        assert_eq!(
            (udp.id.as_str(), udp.slot),
            ("lbl-2", 1),
            "udp 80 is another listener"
        );
        assert_eq!(i2.load_balancer("lb-1").unwrap().listeners.len(), 2);
        refused(
            i.create_load_balancer(lb_spec(
                "x",
                None,
                vec![
                    listener(LbProtocol::Tcp, 443, vec![]),
                    listener(LbProtocol::Tcp, 443, vec![]),
                ],
            )),
            ErrorKind::Conflict,
            "listeners[1].port",
        );
        for p in [0, -1, 65_536] {
            refused(
                i.add_lb_listener("web-lb", listener(LbProtocol::Tcp, p, vec![])),
                ErrorKind::Invalid,
                "port",
            );
        }
        refused(
            i.add_lb_listener("nope", listener(LbProtocol::Tcp, 81, vec![])),
            ErrorKind::NotFound,
            "load_balancer",
        );
    }

    #[test]
    fn backends_outside_the_vpc_or_out_of_range_are_refused() {
        let i = lb_lab();
        let add = |b: BackendSpec| i.add_lb_backend("web-lb", "lbl-1", b);
        let e = refused(add(nic_backend("b-vm1", 80)), ErrorKind::Invalid, "nic");
        assert!(e.reason.contains("outside the load balancer's VPC"), "{e}");
        refused(add(nic_backend("nope", 80)), ErrorKind::NotFound, "nic");
        let e = refused(add(ip_backend("10.0.9.5", 80)), ErrorKind::Invalid, "ip");
        assert!(e.reason.contains("no subnet"), "{e}");
        refused(add(ip_backend("10.200.1.10", 80)), ErrorKind::Invalid, "ip");
        refused(add(ip_backend("10.0.1.1", 80)), ErrorKind::Invalid, "ip");
        let e = refused(add(ip_backend("10.0.1.4", 80)), ErrorKind::Invalid, "ip");
        assert!(e.reason.contains("VIP"), "{e}");
        for w in [101, -1, 1_000] {
            let b = BackendSpec {
                weight: Some(w),
                ..nic_backend("a-fw", 80)
            };
            refused(add(b), ErrorKind::Invalid, "weight");
        }
        refused(add(nic_backend("a-fw", 0)), ErrorKind::Invalid, "port");
        let both = BackendSpec {
            ip: Some("10.0.1.20".into()),
            ..nic_backend("a-fw", 80)
        };
        refused(add(both), ErrorKind::Invalid, "nic");
        refused(
            add(BackendSpec {
                port: 80,
                ..Default::default()
            }),
            ErrorKind::Invalid,
            "nic",
        );
        let e = refused(
            add(ip_backend("10.0.1.10", 8080)),
            ErrorKind::Conflict,
            "port",
        );
        assert_eq!(e.dependents, ["backend/lb-1:lbb-1"]);
        // Within one request the field names the backend.
        refused(
            i.create_load_balancer(lb_spec(
                "x",
                None,
                vec![listener(
                    LbProtocol::Tcp,
                    80,
                    vec![nic_backend("a-fw", 80), nic_backend("b-vm1", 80)],
                )],
            )),
            ErrorKind::Invalid,
            "listeners[0].backends[1].nic",
        );
        let (_, b) = add(BackendSpec {
            weight: Some(0),
            ..nic_backend("a-fw", 80)
        })
        .unwrap();
        assert_eq!((b.weight, b.slot, b.id.as_str()), (0, 2, "lbb-3"));
    }

    #[test]
    fn backend_counts_are_limited_per_scheduler() {
        let i = lab();
        let many = |n: u32| -> Vec<BackendSpec> {
            (0..n)
                .map(|k| ip_backend("10.0.2.100", 1 + k as i64))
                .collect()
        };
        let mut l = listener(LbProtocol::Tcp, 80, many(LEAST_CONN_MAX + 1));
        l.scheduler = Some(SchedulerKind::LeastConn);
        let e = refused(
            i.create_load_balancer(lb_spec("x", None, vec![l.clone()])),
            ErrorKind::Invalid,
            "listeners[0].backends",
        );
        assert!(e.reason.contains("least_conn"), "{e}");
        l.backends = many(LEAST_CONN_MAX);
        let (i2, _) = i.create_load_balancer(lb_spec("x", None, vec![l])).unwrap();
        let e = refused(
            i2.add_lb_backend("x", "lbl-1", ip_backend("10.0.2.101", 1)),
            ErrorKind::Conflict,
            "listener",
        );
        assert!(e.reason.contains(&LEAST_CONN_MAX.to_string()), "{e}");
        refused(
            i.create_load_balancer(lb_spec(
                "y",
                None,
                vec![listener(
                    LbProtocol::Tcp,
                    80,
                    many(MAX_LISTENER_BACKENDS + 1),
                )],
            )),
            ErrorKind::Invalid,
            "listeners[0].backends",
        );
        let (i3, lb) = i
            .create_load_balancer(lb_spec(
                "y",
                None,
                vec![listener(LbProtocol::Tcp, 80, many(MAX_LISTENER_BACKENDS))],
            ))
            .unwrap();
        assert_eq!(
            lb.listeners[0].backends.len(),
            MAX_LISTENER_BACKENDS as usize
        );
        refused(
            i3.add_lb_backend("y", "lbl-1", ip_backend("10.0.2.101", 1)),
            ErrorKind::Conflict,
            "listener",
        );
    }

    #[test]
    fn health_checks_take_defaults_and_refuse_out_of_range_values() {
        let http = resolve_health_check(Some(&HealthCheckSpec {
            kind: HealthCheckType::Http,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            http.kind,
            HealthCheckKind::Http {
                path: "/".into(),
                expected_status: vec![200]
            }
        );
        assert_eq!(
            (
                http.interval_ms,
                http.timeout_ms,
                http.healthy_threshold,
                http.unhealthy_threshold
            ),
            (2_000, 1_000, 3, 3)
        );
        let ok = resolve_health_check(Some(&HealthCheckSpec {
            kind: HealthCheckType::Http,
            path: Some("/healthz".into()),
            expected_status: Some(vec![204, 200, 204]),
            port: Some(9000),
            interval_ms: Some(60_000),
            timeout_ms: Some(59_999),
            healthy_threshold: Some(1),
            unhealthy_threshold: Some(10),
        }))
        .unwrap();
        assert_eq!(ok.port, Some(9000));
        assert!(
            matches!(&ok.kind, HealthCheckKind::Http { expected_status, .. } if expected_status == &[200, 204])
        );
        let tcp = || HealthCheckSpec::default();
        let http = || HealthCheckSpec {
            kind: HealthCheckType::Http,
            ..Default::default()
        };
        let cases: Vec<(HealthCheckSpec, &str)> = vec![
            (
                HealthCheckSpec {
                    interval_ms: Some(999),
                    ..tcp()
                },
                "interval_ms",
            ),
            (
                HealthCheckSpec {
                    interval_ms: Some(60_001),
                    ..tcp()
                },
                "interval_ms",
            ),
            (
                HealthCheckSpec {
                    timeout_ms: Some(2_000),
                    ..tcp()
                },
                "timeout_ms",
            ),
            (
                HealthCheckSpec {
                    timeout_ms: Some(0),
                    ..tcp()
                },
                "timeout_ms",
            ),
            (
                HealthCheckSpec {
                    interval_ms: Some(1_000),
                    timeout_ms: Some(1_000),
                    ..tcp()
                },
                "timeout_ms",
            ),
            (
                HealthCheckSpec {
                    healthy_threshold: Some(0),
                    ..tcp()
                },
                "healthy_threshold",
            ),
            (
                HealthCheckSpec {
                    healthy_threshold: Some(11),
                    ..tcp()
                },
                "healthy_threshold",
            ),
            (
                HealthCheckSpec {
                    unhealthy_threshold: Some(0),
                    ..tcp()
                },
                "unhealthy_threshold",
            ),
            (
                HealthCheckSpec {
                    unhealthy_threshold: Some(11),
                    ..tcp()
                },
                "unhealthy_threshold",
            ),
            (
                HealthCheckSpec {
                    port: Some(0),
                    ..tcp()
                },
                "port",
            ),
            (
                HealthCheckSpec {
                    path: Some("/x".into()),
                    ..tcp()
                },
                "path",
            ),
            (
                HealthCheckSpec {
                    expected_status: Some(vec![200]),
                    ..tcp()
                },
                "expected_status",
            ),
            (
                HealthCheckSpec {
                    path: Some("healthz".into()),
                    ..http()
                },
                "path",
            ),
            (
                HealthCheckSpec {
                    path: Some("/a b".into()),
                    ..http()
                },
                "path",
            ),
            (
                HealthCheckSpec {
                    expected_status: Some(vec![]),
                    ..http()
                },
                "expected_status",
            ),
            (
                HealthCheckSpec {
                    expected_status: Some(vec![200, 99]),
                    ..http()
                },
                "expected_status[1]",
            ),
            (
                HealthCheckSpec {
                    expected_status: Some(vec![600]),
                    ..http()
                },
                "expected_status[0]",
            ),
        ];
        let i = lb_lab();
        for (spec, field) in cases {
            let mut l = listener(LbProtocol::Tcp, 81, vec![]);
            l.health_check = Some(spec.clone());
            refused(
                i.add_lb_listener("web-lb", l),
                ErrorKind::Invalid,
                &format!("health_check.{field}"),
            );
        }
    }

    #[test]
    fn weights_change_backends_go_and_failed_changes_leave_nothing() {
        let i = lb_lab();
        let (i2, b) = i
            .set_lb_backend_weight("web-lb", "lbl-1", "lbb-2", BackendUpdate { weight: 0 })
            .unwrap();
        assert_eq!(b.weight, 0);
        assert_eq!(
            i2.load_balancer("lb-1").unwrap().listeners[0].backends[1].weight,
            0
        );
        refused(
            i.set_lb_backend_weight("web-lb", "lbl-1", "lbb-2", BackendUpdate { weight: 101 }),
            ErrorKind::Invalid,
            "weight",
        );
        refused(
            i.set_lb_backend_weight("web-lb", "lbl-1", "lbb-9", BackendUpdate { weight: 1 }),
            ErrorKind::NotFound,
            "backend",
        );
        refused(
            i.remove_lb_backend("web-lb", "lbl-9", "lbb-1"),
            ErrorKind::NotFound,
            "listener",
        );
        // A refused create allocates nothing.
        let bad = i.create_load_balancer(lb_spec(
            "x",
            None,
            vec![listener(
                LbProtocol::Tcp,
                80,
                vec![nic_backend("b-vm1", 80)],
            )],
        ));
        assert!(bad.is_err());
        assert_eq!(i.counters().next_load_balancer, 2);
        let i3 = i.remove_lb_backend("web-lb", "lbl-1", "lbb-1").unwrap();
        let l = &i3.load_balancer("lb-1").unwrap().listeners[0];
        assert_eq!(l.backends.len(), 1);
        let i4 = i3.remove_lb_listener("web-lb", "lbl-1").unwrap();
        assert!(i4.load_balancer("lb-1").unwrap().listeners.is_empty());
        let i5 = i4.delete_load_balancer("web-lb").unwrap();
        assert!(i5.load_balancer("web-lb").is_none());
        // Its name and VIP are free again.
        let (_, again) = i5
            .create_load_balancer(lb_spec("web-lb", None, vec![]))
            .unwrap();
        assert_eq!(
            (again.id.as_str(), again.vip.to_string()),
            ("lb-2", "10.0.1.4".into())
        );
    }

    #[test]
    fn slots_are_the_lowest_free_and_stay_while_their_owner_exists() {
        let i = lab();
        let (i, _) = i
            .create_load_balancer(lb_spec(
                "one",
                None,
                vec![listener(
                    LbProtocol::Tcp,
                    80,
                    vec![
                        ip_backend("10.0.2.100", 1),
                        ip_backend("10.0.2.100", 2),
                        ip_backend("10.0.2.100", 3),
                    ],
                )],
            ))
            .unwrap();
        let (i, two) = i
            .create_load_balancer(lb_spec(
                "two",
                None,
                vec![listener(
                    LbProtocol::Udp,
                    53,
                    vec![ip_backend("10.0.2.101", 53), ip_backend("10.0.2.102", 53)],
                )],
            ))
            .unwrap();
        let slots = |i: &Intent| {
            let (l, b) = used_slots(i);
            (
                l.into_iter().collect::<Vec<_>>(),
                b.into_iter().collect::<Vec<_>>(),
            )
        };
        assert_eq!(two.listeners[0].slot, 1);
        let before = slots(&i);
        assert_eq!(
            before.1.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        // Removing backend slot 1 moves nobody; the next backend takes slot 1.
        let i = i.remove_lb_backend("one", "lbl-1", "lbb-2").unwrap();
        let after = slots(&i);
        assert_eq!(
            after.1,
            before
                .1
                .iter()
                .filter(|(s, _)| *s != 1)
                .cloned()
                .collect::<Vec<_>>()
        );
        let (i, b) = i
            .add_lb_backend("two", "lbl-2", ip_backend("10.0.2.103", 53))
            .unwrap();
        assert_eq!((b.slot, b.id.as_str()), (1, "lbb-6"));
        // Removing listener slot 0 moves nobody; the next listener takes slot 0.
        let i = i.remove_lb_listener("one", "lbl-1").unwrap();
        assert_eq!(slots(&i).0, [(1, "lbl-2".to_string())]);
        assert_eq!(
            slots(&i).1.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        let (i, l) = i
            .add_lb_listener(
                "one",
                listener(LbProtocol::Tcp, 443, vec![ip_backend("10.0.2.100", 443)]),
            )
            .unwrap();
        assert_eq!(l.slot, 0);
        assert_eq!(l.backends[0].slot, 0);
        // Records round trip with slots and counters.
        assert_eq!(Intent::from_records(i.to_records()), i);
    }

    #[test]
    fn full_slot_spaces_are_a_conflict_naming_the_limit() {
        let (mut i, _) = lab()
            .create_load_balancer(lb_spec("x", None, vec![]))
            .unwrap();
        let lb = i.load_balancers.get_mut("lb-1").unwrap();
        let l = LbListener {
            id: String::new(),
            protocol: LbProtocol::Tcp,
            port: 1,
            scheduler: SchedulerKind::Maglev,
            health_check: HealthCheck::default(),
            all_down: AllDown::FailOpen,
            backends: vec![],
            slot: 0,
        };
        lb.listeners = (0..MAX_LISTENERS)
            .map(|s| LbListener {
                id: format!("lbl-x{s}"),
                port: 1 + s as u16,
                slot: s,
                ..l.clone()
            })
            .collect();
        let e = refused(
            i.add_lb_listener("x", listener(LbProtocol::Udp, 1, vec![])),
            ErrorKind::Conflict,
            "listener",
        );
        assert!(e.reason.contains(&MAX_LISTENERS.to_string()), "{e}");
        let lb = i.load_balancers.get_mut("lb-1").unwrap();
        lb.listeners.truncate(1);
        lb.listeners[0].backends = (0..MAX_BACKENDS)
            .map(|s| LbBackend {
                id: format!("lbb-x{s}"),
                nic: None,
                ip: "10.0.2.100".parse().unwrap(),
                port: 1,
                weight: 1,
                slot: s,
            })
            .collect();
        let e = refused(
            i.add_lb_listener(
                "x",
                listener(LbProtocol::Udp, 1, vec![ip_backend("10.0.2.9", 1)]),
            ),
            ErrorKind::Conflict,
            "backends",
        );
        assert!(e.reason.contains(&MAX_BACKENDS.to_string()), "{e}");
        assert_eq!(lowest_free(&BTreeSet::from([0, 2]), 2, 5), Some(vec![1, 3]));
        assert_eq!(lowest_free(&BTreeSet::from([0, 1]), 1, 2), None);
    }

    #[test]
    fn what_a_load_balancer_uses_cannot_be_deleted_under_it() {
        let i = lb_lab();
        let e = refused(i.delete_nic("a-vm1"), ErrorKind::Conflict, "nic");
        assert_eq!(e.dependents, ["backend/lb-1:lbb-1"]);
        let e = refused(
            i.delete_subnet(Some("tenant-a"), "db"),
            ErrorKind::Conflict,
            "subnet",
        );
        assert!(
            e.dependents.contains(&"backend/lb-1:lbb-2".to_string()),
            "{e}"
        );
        let e = refused(
            i.delete_subnet(Some("tenant-a"), "web"),
            ErrorKind::Conflict,
            "subnet",
        );
        assert!(
            e.dependents.contains(&"load-balancer/lb-1".to_string()),
            "{e}"
        );
        let e = refused(i.delete_vpc("tenant-a"), ErrorKind::Conflict, "vpc");
        assert!(
            e.dependents.contains(&"load-balancer/lb-1".to_string()),
            "{e}"
        );
        // Without the load balancer, they go (a-vm1 after its route).
        let i = i.delete_load_balancer("web-lb").unwrap();
        assert!(i.delete_nic("a-vm1").is_ok());
    }

    fn nat_to(
        i: &Intent,
        protocol: crate::intent::NatProtocol,
        private_port: i64,
    ) -> Result<Intent> {
        let (i, _) = i
            .create_eip_pool(EipPoolSpec {
                name: Some("pub".into()),
                cidrs: vec!["203.0.113.0/28".into()],
                description: None,
            })
            .unwrap();
        let (i, _) = i
            .create_eip(EipSpec {
                name: Some("e1".into()),
                ..Default::default()
            })
            .unwrap();
        i.create_nat_gateway(NatGatewaySpec {
            name: Some("gw".into()),
            vpc: "tenant-a".into(),
            subnet: "web".into(),
            eips: vec!["e1".into()],
            dnat: vec![DnatSpec {
                eip: "e1".into(),
                protocol,
                public_port: 443,
                private_ip: "10.0.1.4".into(),
                private_port: Some(private_port),
            }],
            ..Default::default()
        })
        .map(|(i, _)| i)
    }

    #[test]
    fn dnat_may_target_a_vip_on_a_listener_port_and_holds_it() {
        use crate::intent::NatProtocol;
        let i = lb_lab();
        let e = refused(
            nat_to(&i, NatProtocol::Tcp, 81),
            ErrorKind::Invalid,
            "dnat[0].private_port",
        );
        assert!(e.reason.contains("lb-1"), "{e}");
        refused(
            nat_to(&i, NatProtocol::Udp, 80),
            ErrorKind::Invalid,
            "dnat[0].private_port",
        );
        refused(
            nat_to(&i, NatProtocol::Any, 80),
            ErrorKind::Invalid,
            "dnat[0].private_port",
        );
        let with_nat = nat_to(&i, NatProtocol::Tcp, 80).unwrap();
        let e = refused(
            with_nat.remove_lb_listener("web-lb", "lbl-1"),
            ErrorKind::Conflict,
            "listener",
        );
        assert_eq!(e.dependents, ["dnat/natgw-1:dnat-1"]);
        let e = refused(
            with_nat.delete_load_balancer("web-lb"),
            ErrorKind::Conflict,
            "load_balancer",
        );
        assert_eq!(e.dependents, ["dnat/natgw-1:dnat-1"]);
        // Both protocols listened: `any` is fine.
        let (both, _) = i
            .add_lb_listener("web-lb", listener(LbProtocol::Udp, 80, vec![]))
            .unwrap();
        let with_any = nat_to(&both, NatProtocol::Any, 80).unwrap();
        refused(
            with_any.remove_lb_listener("web-lb", "lbl-2"),
            ErrorKind::Conflict,
            "listener",
        );
    }

    #[test]
    fn backends_get_a_system_rule_for_health_checks_that_compiles_first() {
        let i = lb_lab();
        let vm1 = i.nic("a-vm1").unwrap().clone();
        let rules = i.system_rules(&vm1, Direction::Ingress);
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(
            r.remote,
            crate::intent::Remote::Cidr("100.64.0.0/10".parse().unwrap())
        );
        assert_eq!(r.ports.map(|p| p.to_string()), Some("8080".into()));
        assert_eq!(r.protocol, crate::intent::Protocol::Tcp);
        assert_eq!(
            r.description.as_deref(),
            Some("load balancer health checks")
        );
        assert!(i.system_rules(&vm1, Direction::Egress).is_empty());
        let fw = i.nic("a-fw").unwrap().clone();
        assert!(i.system_rules(&fw, Direction::Ingress).is_empty());
        // a-vm2 is a backend by address; a second listener checks 8081 and 9000.
        let mut l = listener(
            LbProtocol::Tcp,
            81,
            vec![nic_backend("a-vm1", 8081), nic_backend("a-vm2", 1)],
        );
        l.health_check = Some(HealthCheckSpec {
            port: None,
            ..Default::default()
        });
        let (i, _) = i.add_lb_listener("web-lb", l).unwrap();
        let vm1 = i.nic("a-vm1").unwrap().clone();
        let ports: Vec<String> = i
            .system_rules(&vm1, Direction::Ingress)
            .iter()
            .map(|r| r.ports.unwrap().to_string())
            .collect();
        assert_eq!(ports, ["8080-8081"], "adjacent ports merge");
        let vm2 = i.nic("a-vm2").unwrap().clone();
        let ports: Vec<String> = i
            .system_rules(&vm2, Direction::Ingress)
            .iter()
            .map(|r| r.ports.unwrap().to_string())
            .collect();
        assert_eq!(ports, ["1", "8080"]);
        // The compiled slots start with it.
        let slots = crate::sg::compile::slot_rules(&i, &vm1, Direction::Ingress);
        assert_eq!(slots[0].priority, crate::intent::sg::SYSTEM_PRIORITY);
        assert_eq!(slots[0].remote, r.remote);
        let no_lb = lab();
        let plain = crate::sg::compile::slot_rules(&no_lb, &vm1, Direction::Ingress);
        assert_eq!(slots.len(), plain.len() + 1);
    }

    #[test]
    fn system_rules_count_toward_a_nics_rule_limit() {
        use crate::intent::{
            sg::MAX_RULES_PER_NIC, Action, NicUpdate, SecurityGroupSpec, SgRuleSpec,
        };
        let group = |name: &str, n: usize| SecurityGroupSpec {
            vpc: "tenant-a".into(),
            name: Some(name.into()),
            description: None,
            rules: (0..n)
                .map(|k| SgRuleSpec {
                    direction: Direction::Ingress,
                    protocol: crate::intent::Protocol::Tcp,
                    ports: Some((1000 + k).to_string()),
                    icmp_type: None,
                    icmp_code: None,
                    cidr: Some("10.0.0.0/8".into()),
                    group: None,
                    action: Action::Allow,
                    priority: 100,
                    description: None,
                })
                .collect(),
        };
        let i = lb_lab();
        let (i, _) = i
            .create_security_group(group("full", MAX_RULES_PER_NIC))
            .unwrap();
        let (i, _) = i
            .create_security_group(group("almost", MAX_RULES_PER_NIC - 1))
            .unwrap();
        let groups = |g: &str| NicUpdate {
            security_groups: Some(vec![g.into()]),
            ..Default::default()
        };
        // a-vm1 is a backend: its system rule takes one slot.
        let e = refused(
            i.update_nic("a-vm1", groups("full")),
            ErrorKind::Conflict,
            "security_groups",
        );
        assert_eq!(e.dependents, ["nic/nic-1"]);
        let (i, _) = i.update_nic("a-vm1", groups("almost")).unwrap();
        let rule = group("x", 1).rules.remove(0);
        let rule = SgRuleSpec {
            ports: Some("60000".into()),
            ..rule
        };
        refused(
            i.add_security_group_rule(Some("tenant-a"), "almost", rule),
            ErrorKind::Conflict,
            "direction",
        );
        // a-fw may have the full group until it becomes a backend.
        let (i, _) = i.update_nic("a-fw", groups("full")).unwrap();
        let e = refused(
            i.add_lb_backend("web-lb", "lbl-1", nic_backend("a-fw", 80)),
            ErrorKind::Conflict,
            "port",
        );
        assert_eq!(e.dependents, ["nic/nic-3"]);
    }

    #[test]
    fn cached_compiles_see_a_new_backends_system_rule() {
        use crate::controller::{compile_tables, compile_tables_cached, TablesCache};
        // tenant-b (not peered): b-vm1 (h2) is a backend, then b-vm2 (h1) too.
        let mut spec = lb_spec(
            "b-lb",
            None,
            vec![listener(
                LbProtocol::Tcp,
                80,
                vec![nic_backend("b-vm1", 80)],
            )],
        );
        spec.vpc = "tenant-b".into();
        let i1 = std::sync::Arc::new(lab().create_load_balancer(spec).unwrap().0);
        let mut cache = TablesCache::default();
        compile_tables_cached(&i1, "h1", &mut cache);
        let (i2, _) = i1
            .add_lb_backend("b-lb", "lbl-1", nic_backend("b-vm2", 9090))
            .unwrap();
        let i2 = std::sync::Arc::new(i2);
        let cached = compile_tables_cached(&i2, "h1", &mut cache);
        let full = compile_tables(&i2, "h1");
        assert_eq!(cached.security_groups, full.security_groups);
        assert_ne!(
            full.security_groups,
            compile_tables(&i1, "h1").security_groups,
            "the system rule changed b-vm2's policy"
        );
    }

    #[test]
    fn hosts_get_stable_health_check_addresses() {
        let i = lab();
        let ip = |i: &Intent, h: &str| i.host(h).unwrap().health_check_ip.unwrap().to_string();
        assert_eq!(
            (ip(&i, "h1").as_str(), ip(&i, "h2").as_str()),
            ("100.64.0.1", "100.64.0.2")
        );
        // Re-registering keeps it; a new host takes the lowest free.
        let mut spec = lab_topology().hosts[0].clone();
        spec.underlay_mtu = Some(9000);
        let (i, h) = i.put_host(spec).unwrap();
        assert_eq!(h.health_check_ip.unwrap().to_string(), "100.64.0.1");
        let mut bare = i.clone();
        for h in bare.hosts.values_mut() {
            h.health_check_ip = None;
        }
        bare.hosts.get_mut("h2").unwrap().health_check_ip = Some("100.64.0.1".parse().unwrap());
        let fixed = bare.with_health_check_ips();
        assert_eq!(
            (ip(&fixed, "h1").as_str(), ip(&fixed, "h2").as_str()),
            ("100.64.0.2", "100.64.0.1")
        );
        assert_eq!(fixed.with_health_check_ips(), fixed, "idempotent");
        assert_eq!(i.with_health_check_ips(), i);
    }

    #[test]
    fn stores_from_before_load_balancers_give_hosts_their_address_once_on_open() {
        let path =
            std::env::temp_dir().join(format!("sluice-lb-hc-{}/intent.redb", std::process::id()));
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        {
            let (store, empty) = crate::intent::Store::open(&path).unwrap();
            let mut old = lab();
            for h in old.hosts.values_mut() {
                h.health_check_ip = None;
            }
            store.commit(&empty, &mut old).unwrap();
        }
        let (store, first) = crate::intent::Store::open(&path).unwrap();
        let stored = store.load().unwrap();
        assert!(
            stored.hosts().all(|h| h.health_check_ip.is_some()),
            "persisted"
        );
        drop(store);
        let ips: Vec<String> = first
            .hosts()
            .map(|h| h.health_check_ip.unwrap().to_string())
            .collect();
        assert_eq!(ips, ["100.64.0.1", "100.64.0.2"]);
        let (_, second) = crate::intent::Store::open(&path).unwrap();
        assert_eq!(second, first, "the second open changes nothing");
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }

    #[test]
    fn topologies_declare_load_balancers_idempotently_keeping_ids_and_slots() {
        let yaml = format!(
            "{LAB}load_balancers:
  - name: web-lb
    vpc: tenant-a
    subnet: web
    vip: 10.0.1.50
    listeners:
      - protocol: tcp
        port: 80
        scheduler: source_ip
        health_check: {{ type: http, path: /healthz }}
        backends:
          - {{ nic: a-vm1, port: 8080 }}
          - {{ ip: 10.0.2.10, port: 8080, weight: 50 }}
"
        );
        let t: Topology = serde_yaml::from_str(&yaml).unwrap();
        let (i, sum) = Intent::default().apply(t.clone()).unwrap();
        assert!(
            sum.created.contains(&"load-balancer/web-lb".to_string()),
            "{sum:?}"
        );
        let lb = i.load_balancer("web-lb").unwrap().clone();
        assert_eq!(lb.vip.to_string(), "10.0.1.50");
        let (again, sum) = i.apply(t.clone()).unwrap();
        assert_eq!(sum.changes(), 0, "{sum:?}");
        assert_eq!(again, i);
        // Change a weight, drop a backend, add a listener: IDs and slots of the rest stay.
        let mut t2 = t.clone();
        let l = &mut t2.load_balancers[0].listeners[0];
        l.backends[0].weight = Some(0);
        l.backends.remove(1);
        t2.load_balancers[0].listeners.push(listener(
            LbProtocol::Udp,
            53,
            vec![ip_backend("10.0.2.10", 53)],
        ));
        let (i2, sum) = i.apply(t2).unwrap();
        assert_eq!(sum.updated, ["load-balancer/web-lb"]);
        let lb2 = i2.load_balancer("web-lb").unwrap();
        let l0 = &lb2.listeners[0];
        assert_eq!((l0.id.as_str(), l0.slot), ("lbl-1", 0));
        assert_eq!(l0.backends.len(), 1);
        assert_eq!(
            (
                l0.backends[0].id.as_str(),
                l0.backends[0].slot,
                l0.backends[0].weight
            ),
            ("lbb-1", 0, 0)
        );
        assert_eq!(
            (lb2.listeners[1].slot, lb2.listeners[1].backends[0].slot),
            (1, 1)
        );
        // Bad declarations name their place.
        let mut twice = t.clone();
        let l = &mut twice.load_balancers[0].listeners[0];
        l.backends.push(l.backends[0].clone());
        refused(
            i.apply(twice),
            ErrorKind::Invalid,
            "load_balancers[0].listeners[0].backends[2].port",
        );
        let mut bad = t;
        bad.load_balancers[0].listeners[0].backends[0].port = 0;
        refused(
            i.apply(bad.clone()),
            ErrorKind::Invalid,
            "load_balancers[0].listeners[0].backends[0].port",
        );
        bad.load_balancers[0].name = None;
        refused(
            Intent::default().apply(bad),
            ErrorKind::Invalid,
            "load_balancers[0].name",
        );
    }

    #[test]
    fn stores_without_load_balancer_counters_read_as_fresh() {
        let old = serde_json::json!({"next_vpc": 3, "next_subnet": 1, "next_nic": 1, "next_peering": 1, "next_vni": 3, "next_mac": 1});
        let c: Counters = serde_json::from_value(old).unwrap();
        assert_eq!(
            (c.next_load_balancer, c.next_lb_listener, c.next_lb_backend),
            (1, 1, 1)
        );
    }
}
