//! What load balancer backends look like from the datapath: health, active connections
//! and the last health check, per backend slot, for `GET /v1/load-balancers/{id}/status`.
//!
//! Every agent checks the backends of the listeners its host has (its clients' view) and
//! reports its whole view (`PUT /v1/agent/hosts/{host}/lb-health`, [`HostReport`]); the
//! board keeps each host's latest and merges them when read. A report names the address
//! and port it is about, so a report for a slot since reused by another backend is not
//! shown for the new one. Backends without a report are `unknown` with 0 connections.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::RwLock,
};

use serde::{Deserialize, Serialize};

use crate::intent::lb::{LbProtocol, LoadBalancer, SchedulerKind};
pub use crate::lb::health::{CheckResult as LastCheck, Health};

/// What an agent says about one backend slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The backend the report is about (a slot is reused once its backend is gone).
    pub ip: Ipv4Addr,
    pub port: u16,
    pub health: Health,
    pub active_connections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
}

/// `PUT /v1/agent/hosts/{host}/lb-health`: everything one agent checks, by backend slot.
pub type HostReport = BTreeMap<u32, BackendReport>;

/// Reports by host, each replaced whole by that host's next report.
#[derive(Debug, Default)]
pub struct LbStatusBoard {
    by_host: RwLock<HashMap<String, HostReport>>,
}

impl LbStatusBoard {
    /// Replace what `host` knows.
    pub fn report_host(&self, host: &str, report: HostReport) {
        self.by_host
            .write()
            .expect("lb status")
            .insert(host.to_string(), report);
    }

    /// Slot `slot` about `ip:port` merged over the hosts that check it: unhealthy when any
    /// host's checks say so (that host's clients no longer reach it), healthy when some
    /// say healthy and none unhealthy; connections summed; the latest check.
    pub fn get(&self, slot: u32, ip: Ipv4Addr, port: u16) -> Option<BackendReport> {
        let hosts = self.by_host.read().expect("lb status");
        let mut merged: Option<BackendReport> = None;
        for r in hosts
            .values()
            .filter_map(|h| h.get(&slot))
            .filter(|r| (r.ip, r.port) == (ip, port))
        {
            let m = merged.get_or_insert_with(|| BackendReport {
                active_connections: 0,
                last_check: None,
                health: Health::Unknown,
                ..r.clone()
            });
            m.active_connections += r.active_connections;
            m.health = match (m.health, r.health) {
                (Health::Unhealthy, _) | (_, Health::Unhealthy) => Health::Unhealthy,
                (Health::Healthy, _) | (_, Health::Healthy) => Health::Healthy,
                _ => Health::Unknown,
            };
            if r.last_check.as_ref().map(|c| c.at) > m.last_check.as_ref().map(|c| c.at) {
                m.last_check = r.last_check.clone();
            }
        }
        merged
    }

    /// `lb`'s listeners and backends with what is known of each.
    pub fn status(&self, lb: &LoadBalancer) -> LbStatus {
        LbStatus {
            load_balancer: lb.id.clone(),
            name: lb.name.clone(),
            vip: lb.vip,
            listeners: lb
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    id: l.id.clone(),
                    protocol: l.protocol,
                    port: l.port,
                    scheduler: l.scheduler,
                    backends: l
                        .backends
                        .iter()
                        .map(|b| {
                            let r = self.get(b.slot, b.ip, b.port);
                            BackendStatus {
                                id: b.id.clone(),
                                nic: b.nic.clone(),
                                ip: b.ip,
                                port: b.port,
                                weight: b.weight,
                                health: r.as_ref().map(|r| r.health).unwrap_or_default(),
                                active_connections: r.as_ref().map_or(0, |r| r.active_connections),
                                last_check: r.and_then(|r| r.last_check),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `GET /v1/load-balancers/{id}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    pub load_balancer: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub id: String,
    pub protocol: LbProtocol,
    pub port: u16,
    pub scheduler: SchedulerKind,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u8,
    pub health: Health,
    pub active_connections: u64,
    /// Absent until a check ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
}
