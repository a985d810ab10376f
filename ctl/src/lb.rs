//! Load balancers: `sluicectl lb create|list|get|delete|status`, `lb listener add|remove`
//! and `lb backend add|remove|weight`, mapped to one API request each.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use sluice_dataplane::{
    client::{encode, load_balancer_path, Method},
    intent::lb::{
        AllDown, BackendSpec, BackendUpdate, HealthCheckSpec, HealthCheckType, LbProtocol,
        ListenerSpec, LoadBalancerSpec, SchedulerKind,
    },
};

use crate::resource::{json, req, spec, word, ApiRequest, Expect, Kind};

#[derive(Debug, Subcommand)]
pub enum LbCmd {
    /// A load balancer: a VIP in a subnet (listeners and backends with -f, or added later).
    Create(LbArgs),
    /// List load balancers.
    #[command(alias = "ls")]
    List {
        /// Only this VPC's (ID or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    /// Show a load balancer with its listeners and backends.
    Get {
        /// ID or name.
        lb: String,
    },
    /// Delete a load balancer (refused while DNAT entries forward to its VIP).
    Delete {
        /// ID or name.
        lb: String,
    },
    /// Each backend's health, weight, active connections and last check.
    Status {
        /// ID or name.
        lb: String,
    },
    /// Add or remove a listener.
    #[command(subcommand)]
    Listener(ListenerCmd),
    /// Add or remove a backend, or change its weight.
    #[command(subcommand)]
    Backend(BackendCmd),
}

#[derive(Debug, Args)]
pub struct LbArgs {
    /// Read the LoadBalancerSpec (with listeners) from this YAML/JSON file (`-` for stdin).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["name", "vpc", "subnet", "vip"])]
    pub file: Option<PathBuf>,
    /// Default: the allocated ID.
    #[arg(long)]
    pub name: Option<String>,
    /// VPC ID or name.
    #[arg(long, required_unless_present = "file")]
    pub vpc: Option<String>,
    /// Subnet ID, or its name within the VPC: where the VIP is.
    #[arg(long, required_unless_present = "file")]
    pub subnet: Option<String>,
    /// Default: the subnet's lowest free address.
    #[arg(long)]
    pub vip: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ListenerCmd {
    /// Add a listener (one per protocol and port).
    Add(Box<ListenerArgs>),
    /// Remove a listener and its backends.
    #[command(alias = "rm")]
    Remove {
        /// Load balancer ID or name.
        lb: String,
        /// Listener ID (lbl-<n>).
        listener: String,
    },
}

#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// Load balancer ID or name.
    pub lb: String,
    /// Read the ListenerSpec from this YAML/JSON file (`-` for stdin) instead of flags.
    #[arg(short, long, value_name = "FILE",
          conflicts_with_all = ["protocol", "port", "scheduler", "all_down", "backends", "check",
                                "check_path", "check_status", "check_port", "interval_ms",
                                "timeout_ms", "healthy_threshold", "unhealthy_threshold"])]
    pub file: Option<PathBuf>,
    #[arg(long, required_unless_present = "file", value_parser = ["tcp", "udp"])]
    pub protocol: Option<String>,
    #[arg(long, required_unless_present = "file")]
    pub port: Option<i64>,
    /// Default maglev.
    #[arg(long, value_parser = ["maglev", "source_ip", "least_conn"])]
    pub scheduler: Option<String>,
    /// When every backend is unhealthy (default fail_open).
    #[arg(long, value_parser = ["fail_open", "fail_closed"])]
    pub all_down: Option<String>,
    /// A backend: `<nic or ip>:<port>[:<weight>]`; repeat for more.
    #[arg(long = "backend", value_name = "BACKEND", value_parser = parse_backend)]
    pub backends: Vec<BackendSpec>,
    /// Health check type (default tcp).
    #[arg(long, value_parser = ["tcp", "http"])]
    pub check: Option<String>,
    /// http: the path (default /).
    #[arg(long)]
    pub check_path: Option<String>,
    /// http: healthy status codes, comma-separated (default 200).
    #[arg(long, value_delimiter = ',')]
    pub check_status: Vec<i64>,
    /// Checked port (default: each backend's).
    #[arg(long)]
    pub check_port: Option<i64>,
    #[arg(long)]
    pub interval_ms: Option<i64>,
    #[arg(long)]
    pub timeout_ms: Option<i64>,
    #[arg(long)]
    pub healthy_threshold: Option<i64>,
    #[arg(long)]
    pub unhealthy_threshold: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend: a NIC or a private IP of the VPC.
    Add {
        /// Load balancer ID or name.
        lb: String,
        /// Listener ID (lbl-<n>).
        listener: String,
        #[arg(long, required_unless_present = "ip", conflicts_with = "ip")]
        nic: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        port: i64,
        /// 0 (drain) to 100 (default 100).
        #[arg(long)]
        weight: Option<i64>,
    },
    /// Remove a backend (its flows pick another).
    #[command(alias = "rm")]
    Remove {
        lb: String,
        listener: String,
        /// Backend ID (lbb-<n>).
        backend: String,
    },
    /// Set a backend's weight: 0 drains it (open connections continue).
    Weight {
        lb: String,
        listener: String,
        backend: String,
        weight: i64,
    },
}

/// `<nic or ip>:<port>[:<weight>]`.
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let bad = || format!("{s:?} is not a backend: expected <nic or ip>:<port>[:<weight>]");
    let mut parts = s.split(':');
    let target = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    let port: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let weight = match parts.next() {
        Some(w) => Some(w.parse::<i64>().map_err(|_| bad())?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    let (nic, ip) = match target.parse::<Ipv4Addr>() {
        Ok(_) => (None, Some(target.to_string())),
        Err(_) => (Some(target.to_string()), None),
    };
    Ok(BackendSpec {
        nic,
        ip,
        port,
        weight,
    })
}

fn health_check(a: &ListenerArgs) -> Option<HealthCheckSpec> {
    let given = a.check.is_some()
        || a.check_path.is_some()
        || !a.check_status.is_empty()
        || a.check_port.is_some()
        || a.interval_ms.is_some()
        || a.timeout_ms.is_some()
        || a.healthy_threshold.is_some()
        || a.unhealthy_threshold.is_some();
    given.then(|| HealthCheckSpec {
        kind: match a.check.as_deref() {
            Some("http") => HealthCheckType::Http,
            _ => HealthCheckType::Tcp,
        },
        path: a.check_path.clone(),
        expected_status: (!a.check_status.is_empty()).then(|| a.check_status.clone()),
        port: a.check_port,
        interval_ms: a.interval_ms,
        timeout_ms: a.timeout_ms,
        healthy_threshold: a.healthy_threshold,
        unhealthy_threshold: a.unhealthy_threshold,
    })
}

pub fn request(cmd: &LbCmd) -> Result<ApiRequest> {
    let one = |kind| Expect::One(kind);
    Ok(match cmd {
        LbCmd::Create(a) => {
            let s: LoadBalancerSpec = spec(&a.file, || LoadBalancerSpec {
                name: a.name.clone(),
                vpc: a.vpc.clone().unwrap_or_default(),
                subnet: a.subnet.clone().unwrap_or_default(),
                vip: a.vip.clone(),
                listeners: vec![],
            })?;
            req(
                Method::POST,
                "/v1/load-balancers".into(),
                Some(json(&s)?),
                one(Kind::LoadBalancer),
            )
        }
        LbCmd::List { vpc } => {
            let q = vpc
                .as_ref()
                .map(|v| format!("?vpc={}", encode(v)))
                .unwrap_or_default();
            req(
                Method::GET,
                format!("/v1/load-balancers{q}"),
                None,
                Expect::List(Kind::LoadBalancer),
            )
        }
        LbCmd::Get { lb } => req(
            Method::GET,
            load_balancer_path(lb, None, None),
            None,
            one(Kind::LoadBalancer),
        ),
        LbCmd::Delete { lb } => req(
            Method::DELETE,
            load_balancer_path(lb, None, None),
            None,
            Expect::Deleted(format!("load-balancer/{lb}")),
        ),
        LbCmd::Status { lb } => req(
            Method::GET,
            format!("{}/status", load_balancer_path(lb, None, None)),
            None,
            Expect::LbStatus,
        ),
        LbCmd::Listener(ListenerCmd::Add(a)) => {
            let s: ListenerSpec = spec(&a.file, || ListenerSpec {
                protocol: word::<LbProtocol>(&a.protocol),
                port: a.port.unwrap_or_default(),
                scheduler: a
                    .scheduler
                    .as_ref()
                    .map(|_| word::<SchedulerKind>(&a.scheduler)),
                health_check: health_check(a),
                all_down: a.all_down.as_ref().map(|_| word::<AllDown>(&a.all_down)),
                backends: a.backends.clone(),
            })?;
            req(
                Method::POST,
                format!("{}/listeners", load_balancer_path(&a.lb, None, None)),
                Some(json(&s)?),
                one(Kind::LbListener),
            )
        }
        LbCmd::Listener(ListenerCmd::Remove { lb, listener }) => req(
            Method::DELETE,
            load_balancer_path(lb, Some(listener), None),
            None,
            Expect::Deleted(format!("listener/{lb}:{listener}")),
        ),
        LbCmd::Backend(BackendCmd::Add {
            lb,
            listener,
            nic,
            ip,
            port,
            weight,
        }) => {
            let s = BackendSpec {
                nic: nic.clone(),
                ip: ip.clone(),
                port: *port,
                weight: *weight,
            };
            req(
                Method::POST,
                format!("{}/backends", load_balancer_path(lb, Some(listener), None)),
                Some(json(&s)?),
                one(Kind::LbBackend),
            )
        }
        LbCmd::Backend(BackendCmd::Remove {
            lb,
            listener,
            backend,
        }) => req(
            Method::DELETE,
            load_balancer_path(lb, Some(listener), Some(backend)),
            None,
            Expect::Deleted(format!("backend/{lb}:{listener}:{backend}")),
        ),
        LbCmd::Backend(BackendCmd::Weight {
            lb,
            listener,
            backend,
            weight,
        }) => req(
            Method::PATCH,
            load_balancer_path(lb, Some(listener), Some(backend)),
            Some(json(&BackendUpdate { weight: *weight })?),
            one(Kind::LbBackend),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_as_nic_or_address_with_an_optional_weight() {
        assert_eq!(
            parse_backend("web1:8080"),
            Ok(BackendSpec {
                nic: Some("web1".into()),
                port: 8080,
                ..Default::default()
            })
        );
        assert_eq!(
            parse_backend("10.0.1.5:80:0"),
            Ok(BackendSpec {
                ip: Some("10.0.1.5".into()),
                port: 80,
                weight: Some(0),
                ..Default::default()
            })
        );
        for bad in ["", "web1", ":80", "web1:x", "web1:80:y", "web1:80:1:2"] {
            let e = parse_backend(bad).unwrap_err();
            assert!(e.contains("<nic or ip>:<port>[:<weight>]"), "{bad}: {e}");
        }
    }
}
