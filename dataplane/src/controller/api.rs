//! The intent API (REST/JSON, axum): one handler per resource operation, every change one
//! store transaction (all or nothing), and the agents' long-poll for their host's tables.
//! The machine-readable description is [`super::openapi`]; `/v1/openapi.json` serves it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header::HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::Controller;
use crate::{
    intent::{
        Cidr, ErrorKind, HostSpec, Intent, NicSpec, NicUpdate, PeeringSpec, RouteSpec, SubnetSpec,
        Topology, TransactError, ValidationError, VpcSpec,
    },
    vpc::tables::HostTables,
};

/// Carries the intent generation a change produced; agents report what they applied in
/// the same numbers, so a client can wait until its change is in the datapath.
pub const GENERATION_HEADER: &str = "sluice-generation";

/// Longest long-poll an agent may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorJson,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    /// `invalid`, `not_found`, `conflict` or `internal`.
    pub kind: String,
    pub field: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
}

/// GET /v1/agent/hosts/{host}/tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentTables {
    pub generation: u64,
    /// False when the host is not (or no longer) in the intent: the tables are empty.
    pub registered: bool,
    pub tables: HostTables,
}

#[derive(Debug)]
enum ApiError {
    Invalid(ValidationError),
    Internal(String),
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<TransactError> for ApiError {
    fn from(e: TransactError) -> Self {
        match e {
            TransactError::Invalid(v) => ApiError::Invalid(v),
            TransactError::Store(s) => ApiError::Internal(s.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            ApiError::Invalid(e) => (
                e.status(),
                ErrorJson {
                    kind: match e.kind {
                        ErrorKind::Invalid => "invalid",
                        ErrorKind::NotFound => "not_found",
                        ErrorKind::Conflict => "conflict",
                    }
                    .to_string(),
                    field: e.field,
                    reason: e.reason,
                    dependents: e.dependents,
                },
            ),
            ApiError::Internal(reason) => {
                log::error!("intent API: {reason}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorJson {
                        kind: "internal".into(),
                        field: String::new(),
                        reason,
                        dependents: vec![],
                    },
                )
            }
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;
type Ctl = State<Arc<Controller>>;

/// The largest request body the controller accepts.
pub const MAX_BODY_BYTES: usize = 64 << 20;

pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/hosts", get(list_hosts).post(create_host))
        .route(
            "/v1/hosts/{name}",
            get(get_host).put(put_host).delete(delete_host),
        )
        .route("/v1/vpcs", get(list_vpcs).post(create_vpc))
        .route("/v1/vpcs/{vpc}", get(get_vpc).delete(delete_vpc))
        .route("/v1/vpcs/{vpc}/route-table", get(route_table))
        .route(
            "/v1/vpcs/{vpc}/routes/{*destination}",
            get(get_route).delete(delete_route),
        )
        .route("/v1/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/v1/subnets/{subnet}",
            get(get_subnet).delete(delete_subnet),
        )
        .route("/v1/nics", get(list_nics).post(create_nic))
        .route(
            "/v1/nics/{nic}",
            get(get_nic).patch(update_nic).delete(delete_nic),
        )
        .route(
            "/v1/routes",
            get(list_routes).post(create_route).put(put_route),
        )
        .route("/v1/peerings", get(list_peerings).post(create_peering))
        .route(
            "/v1/peerings/{pcx}",
            get(get_peering).delete(delete_peering),
        )
        .route("/v1/peerings/{pcx}/accept", post(accept_peering))
        .route("/v1/topology", post(apply_topology))
        .route("/v1/agent/hosts/{host}/tables", get(agent_tables))
        // A whole-cloud `apply -f` (1,000 VPCs x 100 routes) is ~7 MB of JSON; axum's
        // default 2 MiB limit would refuse it with 413.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(controller)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::DOCUMENT.as_str(),
    )
        .into_response()
}

/// Parses a JSON body, naming the field that is wrong (`next_hop.type`, `body`).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::Invalid(ValidationError::invalid(field, e.into_inner().to_string()))
    })
}

/// Commits one change off the async threads (the store syncs to disk) and answers with
/// `status` and what the change returned, or 204 for `()`.
async fn commit<T, F>(c: Arc<Controller>, status: StatusCode, mutation: F) -> ApiResult
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Intent) -> Result<(Intent, T), ValidationError> + Send + 'static,
{
    let (out, generation) = tokio::task::spawn_blocking(move || c.transact(mutation))
        .await
        .map_err(|e| ApiError::Internal(format!("the change did not run: {e}")))??;
    let mut resp = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, Json(out)).into_response()
    };
    resp.headers_mut().insert(
        HeaderName::from_static(GENERATION_HEADER),
        HeaderValue::from(generation),
    );
    Ok(resp)
}

fn found<T: Serialize>(value: Option<T>, field: &str, what: &str, key: &str) -> ApiResult {
    value
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ValidationError::not_found(field, format!("no {what} {key:?}")).into())
}

/// The VPC a `vpc` reference (ID or name) names, as its ID.
fn vpc_id(i: &Intent, key: &str) -> Result<String, ApiError> {
    i.vpc(key)
        .map(|v| v.id.clone())
        .ok_or_else(|| ValidationError::not_found("vpc", format!("no VPC {key:?}")).into())
}

// ---- hosts ----

async fn list_hosts(State(c): Ctl) -> Response {
    Json(c.read(|i| i.hosts().cloned().collect::<Vec<_>>())).into_response()
}

async fn create_host(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: HostSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_host(spec)).await
}

async fn get_host(State(c): Ctl, Path(name): Path<String>) -> ApiResult {
    found(c.read(|i| i.host(&name).cloned()), "name", "host", &name)
}

async fn put_host(State(c): Ctl, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let spec: HostSpec = parse(&body)?;
    if spec.name != name {
        return Err(ValidationError::invalid(
            "name",
            format!("{:?} differs from the host in the path {name:?}", spec.name),
        )
        .into());
    }
    commit(c, StatusCode::OK, move |i| i.put_host(spec)).await
}

async fn delete_host(State(c): Ctl, Path(name): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_host(&name).map(|n| (n, ()))
    })
    .await
}

// ---- VPCs ----

async fn list_vpcs(State(c): Ctl) -> Response {
    Json(c.read(|i| i.vpcs().cloned().collect::<Vec<_>>())).into_response()
}

async fn create_vpc(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: VpcSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_vpc(spec)).await
}

async fn get_vpc(State(c): Ctl, Path(vpc): Path<String>) -> ApiResult {
    found(c.read(|i| i.vpc(&vpc).cloned()), "vpc", "VPC", &vpc)
}

async fn delete_vpc(State(c): Ctl, Path(vpc): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_vpc(&vpc).map(|n| (n, ()))
    })
    .await
}

async fn route_table(State(c): Ctl, Path(vpc): Path<String>) -> ApiResult {
    found(c.read(|i| i.route_table(&vpc)), "vpc", "VPC", &vpc)
}

// ---- subnets ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VpcFilter {
    vpc: Option<String>,
}

async fn list_subnets(State(c): Ctl, Query(q): Query<VpcFilter>) -> ApiResult {
    c.read(|i| {
        let vpc = q.vpc.as_deref().map(|v| vpc_id(i, v)).transpose()?;
        let subnets: Vec<_> = i
            .subnets()
            .filter(|s| vpc.as_ref().is_none_or(|v| &s.vpc == v))
            .cloned()
            .collect();
        Ok(Json(subnets).into_response())
    })
}

async fn create_subnet(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: SubnetSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_subnet(spec)).await
}

async fn get_subnet(
    State(c): Ctl,
    Path(subnet): Path<String>,
    Query(q): Query<VpcFilter>,
) -> ApiResult {
    found(
        c.read(|i| i.subnet(q.vpc.as_deref(), &subnet).cloned()),
        "subnet",
        "subnet",
        &subnet,
    )
}

async fn delete_subnet(
    State(c): Ctl,
    Path(subnet): Path<String>,
    Query(q): Query<VpcFilter>,
) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_subnet(q.vpc.as_deref(), &subnet).map(|n| (n, ()))
    })
    .await
}

// ---- NICs ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NicFilter {
    vpc: Option<String>,
    host: Option<String>,
}

async fn list_nics(State(c): Ctl, Query(q): Query<NicFilter>) -> ApiResult {
    c.read(|i| {
        let vpc = q.vpc.as_deref().map(|v| vpc_id(i, v)).transpose()?;
        let nics: Vec<_> = i
            .nics()
            .filter(|n| vpc.as_ref().is_none_or(|v| &n.vpc == v))
            .filter(|n| q.host.as_ref().is_none_or(|h| &n.host == h))
            .cloned()
            .collect();
        Ok(Json(nics).into_response())
    })
}

async fn create_nic(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: NicSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_nic(spec)).await
}

async fn get_nic(State(c): Ctl, Path(nic): Path<String>) -> ApiResult {
    found(c.read(|i| i.nic(&nic).cloned()), "nic", "NIC", &nic)
}

async fn update_nic(State(c): Ctl, Path(nic): Path<String>, body: Bytes) -> ApiResult {
    let update: NicUpdate = parse(&body)?;
    commit(c, StatusCode::OK, move |i| i.update_nic(&nic, update)).await
}

async fn delete_nic(State(c): Ctl, Path(nic): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_nic(&nic).map(|n| (n, ()))
    })
    .await
}

// ---- routes ----

async fn list_routes(State(c): Ctl, Query(q): Query<VpcFilter>) -> ApiResult {
    c.read(|i| {
        let vpc = q.vpc.as_deref().map(|v| vpc_id(i, v)).transpose()?;
        let routes: Vec<_> = i
            .routes()
            .filter(|r| vpc.as_ref().is_none_or(|v| &r.vpc == v))
            .cloned()
            .collect();
        Ok(Json(routes).into_response())
    })
}

async fn create_route(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: RouteSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_route(spec)).await
}

async fn put_route(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: RouteSpec = parse(&body)?;
    commit(c, StatusCode::OK, move |i| i.put_route(spec)).await
}

async fn get_route(State(c): Ctl, Path((vpc, destination)): Path<(String, String)>) -> ApiResult {
    let dest: Cidr = destination.parse().map_err(|e: String| {
        ValidationError::invalid("destination", format!("{destination:?}: {e}"))
    })?;
    c.read(|i| {
        let id = vpc_id(i, &vpc)?;
        found(
            i.route(&id, &dest).cloned(),
            "destination",
            "route to",
            &destination,
        )
    })
}

async fn delete_route(
    State(c): Ctl,
    Path((vpc, destination)): Path<(String, String)>,
) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_route(&vpc, &destination).map(|n| (n, ()))
    })
    .await
}

// ---- peerings ----

async fn list_peerings(State(c): Ctl) -> Response {
    Json(c.read(|i| i.peerings().cloned().collect::<Vec<_>>())).into_response()
}

async fn create_peering(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: PeeringSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_peering(spec)).await
}

async fn get_peering(State(c): Ctl, Path(pcx): Path<String>) -> ApiResult {
    found(
        c.read(|i| i.peering(&pcx).cloned()),
        "peering",
        "peering",
        &pcx,
    )
}

async fn accept_peering(State(c): Ctl, Path(pcx): Path<String>) -> ApiResult {
    commit(c, StatusCode::OK, move |i| i.accept_peering(&pcx)).await
}

async fn delete_peering(State(c): Ctl, Path(pcx): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_peering(&pcx).map(|n| (n, ()))
    })
    .await
}

// ---- topology and agents ----

async fn apply_topology(State(c): Ctl, body: Bytes) -> ApiResult {
    let topology: Topology = parse(&body)?;
    commit(c, StatusCode::OK, move |i| i.apply(topology)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesQuery {
    /// Answer once the generation is past this one (long-poll).
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn agent_tables(
    State(c): Ctl,
    Path(host): Path<String>,
    Query(q): Query<TablesQuery>,
) -> Response {
    if let Some(after) = q.after {
        let wait = q
            .wait_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let mut rx = c.subscribe();
        // On timeout the agent gets the current tables again: a cheap keep-alive.
        let _ = tokio::time::timeout(wait, rx.wait_for(|g| *g > after)).await;
    }
    let (generation, registered, tables) = c.host_tables(&host);
    Json(AgentTables {
        generation,
        registered,
        tables,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::tests::TempController;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Reply {
        status: StatusCode,
        generation: Option<u64>,
        body: serde_json::Value,
    }

    async fn call(app: &Router, method: &str, path: &str, body: Option<&str>) -> Reply {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let generation = resp
            .headers()
            .get(GENERATION_HEADER)
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        Reply {
            status,
            generation,
            body,
        }
    }

    async fn lab(t: &TempController) -> Router {
        let app = router(t.controller.clone());
        for (method, path, body) in [
            (
                "POST",
                "/v1/hosts",
                r#"{"name":"h1","underlay_ip":"192.0.2.1","underlay_ifname":"ul0"}"#,
            ),
            (
                "POST",
                "/v1/hosts",
                r#"{"name":"h2","underlay_ip":"192.0.2.2","underlay_ifname":"ul0"}"#,
            ),
            ("POST", "/v1/vpcs", r#"{"name":"a","cidr":"10.0.0.0/16"}"#),
            ("POST", "/v1/vpcs", r#"{"name":"b","cidr":"10.0.0.0/16"}"#),
            (
                "POST",
                "/v1/subnets",
                r#"{"vpc":"a","name":"s1","cidr":"10.0.1.0/24"}"#,
            ),
            (
                "POST",
                "/v1/nics",
                r#"{"name":"a1","vpc":"a","subnet":"s1","host":"h1","ifname":"vm-a1"}"#,
            ),
        ] {
            let r = call(&app, method, path, Some(body)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{path}: {}", r.body);
        }
        app
    }

    #[tokio::test]
    async fn resources_are_created_listed_fetched_and_deleted() {
        let t = TempController::new("api-crud");
        let app = lab(&t).await;
        let vpcs = call(&app, "GET", "/v1/vpcs", None).await.body;
        assert_eq!(vpcs.as_array().unwrap().len(), 2);
        // Identical CIDRs, distinct VNIs.
        assert_eq!(vpcs[0]["cidr"], vpcs[1]["cidr"]);
        assert_ne!(vpcs[0]["vni"], vpcs[1]["vni"]);

        let nic = call(&app, "GET", "/v1/nics/a1", None).await;
        assert_eq!(nic.status, StatusCode::OK);
        assert_eq!(
            nic.body["ip"], "10.0.1.4",
            "first address after the reserved ones"
        );

        let filtered = call(&app, "GET", "/v1/nics?vpc=b", None).await.body;
        assert_eq!(filtered, serde_json::json!([]));

        let r = call(&app, "DELETE", "/v1/nics/a1", None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.generation.is_some());
        let r = call(&app, "GET", "/v1/nics/a1", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body["error"]["kind"], "not_found");
    }

    #[tokio::test]
    async fn routes_are_addressed_by_vpc_and_encoded_destination() {
        let t = TempController::new("api-routes");
        let app = lab(&t).await;
        let r = call(
            &app,
            "POST",
            "/v1/routes",
            Some(r#"{"vpc":"a","destination":"0.0.0.0/0","next_hop":{"type":"nic","nic":"a1"}}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let again = call(
            &app,
            "POST",
            "/v1/routes",
            Some(r#"{"vpc":"a","destination":"0.0.0.0/0","next_hop":{"type":"blackhole"}}"#),
        )
        .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
        let put = call(
            &app,
            "PUT",
            "/v1/routes",
            Some(r#"{"vpc":"a","destination":"0.0.0.0/0","next_hop":{"type":"blackhole"}}"#),
        )
        .await;
        assert_eq!(put.status, StatusCode::OK, "{}", put.body);
        assert_eq!(put.body["next_hop"]["type"], "blackhole");

        for path in [
            "/v1/vpcs/a/routes/0.0.0.0%2F0",
            "/v1/vpcs/a/routes/0.0.0.0/0",
        ] {
            let r = call(&app, "GET", path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        }
        let table = call(&app, "GET", "/v1/vpcs/a/route-table", None).await.body;
        assert_eq!(table.as_array().unwrap().len(), 2, "{table}");
        let r = call(&app, "DELETE", "/v1/vpcs/a/routes/0.0.0.0%2F0", None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = call(&app, "GET", "/v1/vpcs/a/routes/0.0.0.0%2F0", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field_and_change_nothing() {
        let t = TempController::new("api-bad");
        let app = lab(&t).await;
        let g = t.controller.generation();
        let cases = [
            (
                "POST",
                "/v1/vpcs",
                r#"{"name":"c","cidr":"10.0.0.0/7"}"#,
                400,
                "cidr",
            ),
            (
                "POST",
                "/v1/vpcs",
                r#"{"name":"c","cidr":"10.0.0.0/16","x":1}"#,
                400,
                "x",
            ),
            ("POST", "/v1/vpcs", r#"{"name":"c","cidr":5}"#, 400, "cidr"),
            ("POST", "/v1/vpcs", "not json", 400, "body"),
            (
                "POST",
                "/v1/routes",
                r#"{"vpc":"a","destination":"10.5.0.0/16","next_hop":{"type":"teleport"}}"#,
                400,
                "next_hop",
            ),
            (
                "POST",
                "/v1/subnets",
                r#"{"vpc":"nope","cidr":"10.0.2.0/24"}"#,
                404,
                "vpc",
            ),
            (
                "PUT",
                "/v1/hosts/h3",
                r#"{"name":"h4","underlay_ip":"192.0.2.4","underlay_ifname":"ul0"}"#,
                400,
                "name",
            ),
            (
                "GET",
                "/v1/vpcs/a/routes/not-a-cidr",
                "",
                400,
                "destination",
            ),
            ("GET", "/v1/nics?vpc=nope", "", 404, "vpc"),
        ];
        for (method, path, body, status, field) in cases {
            let body = (!body.is_empty()).then_some(body);
            let r = call(&app, method, path, body).await;
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
            let got = r.body["error"]["field"].as_str().unwrap_or_default();
            assert!(
                got.starts_with(field),
                "{method} {path}: field {got:?}: {}",
                r.body
            );
            assert!(!r.body["error"]["reason"].as_str().unwrap().is_empty());
        }
        assert_eq!(
            t.controller.generation(),
            g,
            "a refused request changed the intent"
        );

        let r = call(&app, "DELETE", "/v1/vpcs/a", None).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        let deps: Vec<String> =
            serde_json::from_value(r.body["error"]["dependents"].clone()).unwrap();
        assert!(deps.iter().any(|d| d.starts_with("subnet/")), "{deps:?}");
        assert!(deps.iter().any(|d| d.starts_with("nic/")), "{deps:?}");
    }

    #[tokio::test]
    async fn peerings_need_an_accept() {
        let t = TempController::new("api-pcx");
        let app = lab(&t).await;
        call(
            &app,
            "POST",
            "/v1/vpcs",
            Some(r#"{"name":"c","cidr":"10.1.0.0/16"}"#),
        )
        .await;
        let r = call(
            &app,
            "POST",
            "/v1/peerings",
            Some(r#"{"name":"ac","vpc":"a","peer_vpc":"c"}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["state"], "pending");
        let overlapping = call(
            &app,
            "POST",
            "/v1/peerings",
            Some(r#"{"vpc":"a","peer_vpc":"b"}"#),
        )
        .await;
        assert_eq!(overlapping.status.as_u16() / 100, 4, "{}", overlapping.body);
        let r = call(&app, "POST", "/v1/peerings/ac/accept", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["state"], "active");
    }

    #[tokio::test]
    async fn topology_apply_is_idempotent() {
        let t = TempController::new("api-topo");
        let app = router(t.controller.clone());
        let topo = r#"{
            "hosts": [{"name":"h1","underlay_ip":"192.0.2.1","underlay_ifname":"ul0"}],
            "vpcs": [{"name":"a","cidr":"10.0.0.0/16","subnets":[{"name":"s1","cidr":"10.0.1.0/24"}]}],
            "nics": [{"name":"a1","vpc":"a","subnet":"s1","host":"h1","ifname":"vm-a1"}]
        }"#;
        let first = call(&app, "POST", "/v1/topology", Some(topo)).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        assert_eq!(
            first.body["created"].as_array().unwrap().len(),
            4,
            "{}",
            first.body
        );
        let g = first.generation.unwrap();
        let second = call(&app, "POST", "/v1/topology", Some(topo)).await;
        assert_eq!(second.body["created"], serde_json::json!([]));
        assert_eq!(second.body["updated"], serde_json::json!([]));
        assert_eq!(
            second.generation,
            Some(g),
            "nothing changed, nothing written"
        );
    }

    #[tokio::test]
    async fn agents_get_only_their_host_and_long_poll_for_changes() {
        let t = TempController::new("api-agent");
        let app = lab(&t).await;
        let r = call(&app, "GET", "/v1/agent/hosts/h1/tables", None).await;
        let h1: AgentTables = serde_json::from_value(r.body).unwrap();
        assert!(h1.registered);
        assert_eq!(h1.tables.ports.len(), 1);
        let h2: AgentTables = serde_json::from_value(
            call(&app, "GET", "/v1/agent/hosts/h2/tables", None)
                .await
                .body,
        )
        .unwrap();
        assert!(h2.tables.ports.is_empty(), "h2 has no NIC");
        assert!(h2.tables.routes.is_empty(), "and so no VPC routes");
        let nobody: AgentTables = serde_json::from_value(
            call(&app, "GET", "/v1/agent/hosts/h9/tables", None)
                .await
                .body,
        )
        .unwrap();
        assert!(!nobody.registered);

        // Nothing changes: the poll ends at its deadline with the same generation.
        let path = format!(
            "/v1/agent/hosts/h2/tables?after={}&wait_ms=50",
            h1.generation
        );
        let same: AgentTables =
            serde_json::from_value(call(&app, "GET", &path, None).await.body).unwrap();
        assert_eq!(same.generation, h1.generation);

        // A NIC on h2 wakes the waiting poll.
        let path = format!(
            "/v1/agent/hosts/h2/tables?after={}&wait_ms=20000",
            h1.generation
        );
        let waiting = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "GET", &path, None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let created = call(
            &app,
            "POST",
            "/v1/nics",
            Some(r#"{"name":"a2","vpc":"a","subnet":"s1","host":"h2","ifname":"vm-a2"}"#),
        )
        .await;
        let woke: AgentTables = serde_json::from_value(waiting.await.unwrap().body).unwrap();
        assert_eq!(Some(woke.generation), created.generation);
        assert_eq!(woke.tables.ports.len(), 1);
    }
}
