//! The daemon's HTTP API (axum): health, Prometheus metrics, stats and status as JSON.
//! The JSON types are shared with `sluicectl`, which deserializes them.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use sluice_common::stats::Reason;

use crate::{
    agent::AgentStatus,
    controller::Controller,
    loader::{Attached, Role},
    metrics::{self, StatsSource},
    stats::{CounterJson, StatsSnapshot},
};

/// GET /v1/stats: every reason, zeros included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsJson {
    pub reasons: BTreeMap<String, CounterJson>,
}

impl From<&StatsSnapshot> for StatsJson {
    fn from(s: &StatsSnapshot) -> Self {
        let reasons = Reason::ALL
            .iter()
            .map(|&r| (r.name().to_string(), CounterJson::from(s.get(r))))
            .collect();
        Self { reasons }
    }
}

/// How an interface got its program in this daemon run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachJson {
    /// A new link was created and pinned.
    New,
    /// A pinned link from an earlier run got the new program (hitless restart).
    Replaced,
}

impl From<Attached> for AttachJson {
    fn from(a: Attached) -> Self {
        match a {
            Attached::New => AttachJson::New,
            Attached::Replaced => AttachJson::Replaced,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceJson {
    pub name: String,
    pub role: Role,
    pub ifindex: u32,
    pub attach: AttachJson,
}

/// GET /v1/status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusJson {
    pub version: String,
    pub pin_dir: String,
    pub uptime_secs: u64,
    pub interfaces: Vec<InterfaceJson>,
    /// Present when this daemon is a controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerStatusJson>,
    /// Present when this daemon is a host agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatusJson {
    /// The intent generation: bumped by every committed change.
    pub generation: u64,
}

/// What the handlers share.
pub struct ApiState {
    stats: Arc<dyn StatsSource>,
    registry: Registry,
    pin_dir: PathBuf,
    interfaces: Vec<InterfaceJson>,
    started: Instant,
    controller: Option<Arc<Controller>>,
    agent: Option<Arc<Mutex<AgentStatus>>>,
}

impl ApiState {
    pub fn new(
        stats: Arc<dyn StatsSource>,
        pin_dir: PathBuf,
        interfaces: Vec<InterfaceJson>,
    ) -> Self {
        Self {
            registry: metrics::registry(stats.clone(), interfaces.len()),
            stats,
            pin_dir,
            interfaces,
            started: Instant::now(),
            controller: None,
            agent: None,
        }
    }

    /// Export the connection table's counts (entries, inserts, failures, evictions,
    /// collections) in `/metrics`, read from the kernel at scrape time.
    pub fn with_conntrack(self, source: Arc<dyn metrics::ConntrackSource>) -> Self {
        self.registry
            .register(Box::new(metrics::ConntrackCollector::new(source)))
            .expect("the conntrack collector registers once");
        self
    }

    /// Serve the intent API of `controller` too, and report its generation.
    pub fn with_controller(mut self, controller: Arc<Controller>) -> Self {
        self.controller = Some(controller);
        self
    }

    /// Report this host agent's status and metrics.
    pub fn with_agent(
        mut self,
        status: Arc<Mutex<AgentStatus>>,
        m: &metrics::AgentMetrics,
    ) -> Self {
        m.register(&self.registry)
            .expect("agent metrics register once, with names of their own");
        self.agent = Some(status);
        self
    }

    fn status(&self) -> StatusJson {
        StatusJson {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pin_dir: self.pin_dir.display().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: self.interfaces.clone(),
            controller: self.controller.as_ref().map(|c| ControllerStatusJson {
                generation: c.generation(),
            }),
            agent: self
                .agent
                .as_ref()
                .map(|a| a.lock().expect("agent status").clone()),
        }
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    let intent = state.controller.clone().map(crate::controller::api::router);
    let daemon = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .route("/v1/stats", get(stats_handler))
        .route("/v1/status", get(status_handler))
        .with_state(state);
    match intent {
        Some(intent) => daemon.merge(intent),
        None => daemon,
    }
}

fn internal_error(what: &str, e: anyhow::Error) -> Response {
    log::error!("{what}: {e:#}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": format!("{what}: {e:#}") })),
    )
        .into_response()
}

async fn metrics_handler(State(state): State<Arc<ApiState>>) -> Response {
    match metrics::render(&state.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => internal_error("rendering metrics", e),
    }
}

async fn stats_handler(State(state): State<Arc<ApiState>>) -> Response {
    match state.stats.snapshot() {
        Ok(s) => Json(StatsJson::from(&s)).into_response(),
        Err(e) => internal_error("reading the stats map", e),
    }
}

async fn status_handler(State(state): State<Arc<ApiState>>) -> Json<StatusJson> {
    Json(state.status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{snapshot_with, FakeStats};
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(stats: Option<StatsSnapshot>) -> Router {
        let interfaces = vec![InterfaceJson {
            name: "veth0".into(),
            role: Role::Underlay,
            ifindex: 7,
            attach: AttachJson::Replaced,
        }];
        router(Arc::new(ApiState::new(
            Arc::new(FakeStats(stats)),
            "/run/sluice/bpffs/t".into(),
            interfaces,
        )))
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        assert_eq!(
            get(app(None), "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
    }

    #[tokio::test]
    async fn stats_lists_every_reason() {
        let snap = snapshot_with(&[(Reason::PassVxlan, 4, 400)]);
        let (code, body) = get(app(Some(snap)), "/v1/stats").await;
        assert_eq!(code, StatusCode::OK);
        let stats: StatsJson = serde_json::from_str(&body).unwrap();
        assert_eq!(stats.reasons.len(), Reason::COUNT as usize);
        assert_eq!(
            stats.reasons["pass_vxlan"],
            CounterJson {
                packets: 4,
                bytes: 400
            }
        );
        assert_eq!(stats.reasons["drop_eth_truncated"].packets, 0);
    }

    #[tokio::test]
    async fn stats_read_failure_is_a_500_with_the_cause() {
        let (code, body) = get(app(None), "/v1/stats").await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("map gone"), "{body}");
    }

    #[tokio::test]
    async fn status_has_the_contract_fields() {
        let (code, body) = get(app(None), "/v1/status").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["pin_dir"], "/run/sluice/bpffs/t");
        assert!(v["uptime_secs"].is_u64(), "{v}");
        assert_eq!(
            v["interfaces"],
            serde_json::json!([{"name": "veth0", "role": "underlay", "ifindex": 7, "attach": "replaced"}])
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let snap = snapshot_with(&[(Reason::PassIpv4, 3, 300)]);
        let (code, body) = get(app(Some(snap)), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("sluice_packets_total{reason=\"pass_ipv4\"} 3\n"),
            "{body}"
        );
        assert!(body.contains("sluice_interfaces_attached 1\n"), "{body}");
    }

    #[tokio::test]
    async fn an_agent_adds_its_status_and_metrics() {
        let m = metrics::AgentMetrics::new();
        let status = Arc::new(Mutex::new(AgentStatus {
            host: "h1".into(),
            applied_generation: Some(7),
            ..Default::default()
        }));
        let state =
            ApiState::new(Arc::new(FakeStats(None)), "/p".into(), vec![]).with_agent(status, &m);
        let app = router(Arc::new(state));
        m.applied_generation.set(7);
        m.map_entries.with_label_values(&["SLUICE_ROUTES"]).set(3);
        let (_, body) = get(app.clone(), "/v1/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["agent"]["host"], "h1");
        assert_eq!(v["agent"]["applied_generation"], 7);
        assert!(v.get("controller").is_none(), "{v}");
        let (_, text) = get(app, "/metrics").await;
        assert!(
            text.contains("sluice_agent_applied_generation 7\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_vpc_map_entries{map=\"SLUICE_ROUTES\"} 3\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        assert_eq!(get(app(None), "/v2/nothing").await.0, StatusCode::NOT_FOUND);
    }
}
