//! Talking to a lab daemon's HTTP API over its Unix socket, through the library's own
//! client ([`crate::client`]).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sluice_common::stats::{Counter, Reason};

use crate::{
    client::{self, ApiAddr},
    stats::{CounterJson, StatsSnapshot},
};

/// GETs `path` from the daemon listening on `socket`; the body of a 200 answer.
pub fn http_get(socket: &Path, path: &str) -> Result<String> {
    let addr = ApiAddr::Unix(socket.to_path_buf());
    let resp = client::blocking_get(&addr, path)?;
    if resp.status != 200 {
        bail!(
            "GET {path} from {addr}: HTTP {}: {}",
            resp.status,
            resp.body.trim()
        );
    }
    Ok(resp.body)
}

/// `GET /v1/stats` as the daemon answers it.
#[derive(Debug, Deserialize)]
struct StatsBody {
    reasons: std::collections::BTreeMap<String, CounterJson>,
}

/// Parses `/v1/stats` into a snapshot; every reason must be present.
pub fn parse_stats(body: &str) -> Result<StatsSnapshot> {
    let parsed: StatsBody = serde_json::from_str(body)
        .with_context(|| format!("/v1/stats is not {{\"reasons\": {{...}}}}: {body}"))?;
    let counters = Reason::ALL
        .iter()
        .map(|r| {
            let c = parsed
                .reasons
                .get(r.name())
                .ok_or_else(|| anyhow!("/v1/stats lacks reason {:?}: {body}", r.name()))?;
            Ok(Counter {
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(unknown) = parsed
        .reasons
        .keys()
        .find(|k| Reason::ALL.iter().all(|r| r.name() != k.as_str()))
    {
        bail!("/v1/stats has unknown reason {unknown:?}");
    }
    Ok(StatsSnapshot { counters })
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub version: String,
    pub pin_dir: String,
    pub uptime_secs: u64,
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub role: String,
    pub ifindex: u32,
    /// `new` or `replaced`.
    pub attach: String,
}

impl Status {
    pub fn interface(&self, name: &str) -> Result<&InterfaceStatus> {
        self.interfaces
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("/v1/status does not list interface {name}: {self:?}"))
    }
}

pub fn parse_status(body: &str) -> Result<Status> {
    serde_json::from_str(body)
        .with_context(|| format!("/v1/status has an unexpected shape: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(skip: Option<Reason>, extra: &str) -> String {
        let mut parts: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| Some(**r) != skip)
            .map(|r| {
                format!(
                    "\"{}\": {{\"packets\": {}, \"bytes\": 0}}",
                    r.name(),
                    r.index()
                )
            })
            .collect();
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        format!("{{\"reasons\": {{{}}}}}", parts.join(","))
    }

    #[test]
    fn stats_parse_into_a_snapshot_by_reason() {
        let snap = parse_stats(&body(None, "")).unwrap();
        assert_eq!(
            snap.get(Reason::PassIpv4).packets,
            Reason::PassIpv4.index() as u64
        );
        assert_eq!(snap.counters.len(), Reason::COUNT as usize);
    }

    #[test]
    fn stats_missing_or_unknown_reasons_are_errors_naming_them() {
        let err = parse_stats(&body(Some(Reason::PassArp), "")).unwrap_err();
        assert!(err.to_string().contains("pass_arp"), "{err}");
        let err = parse_stats(&body(
            None,
            "\"pass_bogus\": {\"packets\": 1, \"bytes\": 1}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("pass_bogus"), "{err}");
        assert!(parse_stats("not json").is_err());
    }

    #[test]
    fn status_parses_and_finds_interfaces() {
        let s = parse_status(
            r#"{"version": "0.1.0", "pin_dir": "/run/sluice/bpffs/x", "uptime_secs": 3,
                "interfaces": [{"name": "sl0001-vm1", "role": "vm", "ifindex": 4, "attach": "replaced"}]}"#,
        )
        .unwrap();
        assert_eq!(s.interface("sl0001-vm1").unwrap().attach, "replaced");
        let err = s.interface("nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
