//! The intent API (REST/JSON, axum): one handler per resource operation, every change one
//! store transaction (all or nothing), and the agents' long-poll for their host's tables.
//! The machine-readable description is [`super::openapi`]; `/v1/openapi.json` serves it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header::HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    lb_status::{HostReport, LbStatus},
    Controller,
};
use crate::{
    intent::{
        lb::{BackendSpec, BackendUpdate, ListenerSpec, LoadBalancerSpec},
        BlocklistSpec, Cidr, DnatSpec, EipAttach, EipBind, EipPoolSpec, EipSpec, ErrorKind,
        HostSpec, Intent, NatGatewaySpec, Nic, NicSpec, NicUpdate, PeeringSpec, RouteSpec,
        SecurityGroupSpec, SgRule, SgRuleSpec, SnatSpec, SubnetSpec, Topology, TransactError,
        ValidationError, VpcSpec,
    },
    vpc::delta::TablesDelta,
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
    /// The whole tables; absent when `delta` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<HostTables>,
    /// With `have=G` in the request, when the controller still knew generation G's tables:
    /// the generation the delta applies to (G) and the change from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<TablesDelta>,
}

impl AgentTables {
    /// The whole tables: `tables`, or `delta` applied to `held` (the tables of `base`).
    pub fn into_tables(self, held: Option<(u64, HostTables)>) -> anyhow::Result<HostTables> {
        match (self.tables, self.delta, self.base, held) {
            (Some(t), _, _, _) => Ok(t),
            (None, Some(d), Some(base), Some((g, mut t))) if g == base => {
                d.apply(&mut t);
                Ok(t)
            }
            (None, Some(_), base, held) => anyhow::bail!(
                "a delta from generation {base:?}, but the tables held are of {:?}",
                held.map(|h| h.0)
            ),
            (None, None, _, _) => anyhow::bail!("neither tables nor a delta"),
        }
    }
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
        .route(
            "/v1/security-groups",
            get(list_security_groups).post(create_security_group),
        )
        .route(
            "/v1/security-groups/{sg}",
            get(get_security_group).delete(delete_security_group),
        )
        .route("/v1/security-groups/{sg}/rules", post(add_rule))
        .route(
            "/v1/security-groups/{sg}/rules/{rule}",
            axum::routing::delete(remove_rule),
        )
        .route("/v1/blocklist", get(list_blocklist).post(add_blocklist))
        .route(
            "/v1/blocklist/{*prefix}",
            get(get_blocklist).delete(delete_blocklist),
        )
        .route("/v1/eip-pools", get(list_eip_pools).post(create_eip_pool))
        .route(
            "/v1/eip-pools/{pool}",
            get(get_eip_pool).delete(delete_eip_pool),
        )
        .route("/v1/eips", get(list_eips).post(create_eip))
        .route("/v1/eips/{eip}", get(get_eip).delete(delete_eip))
        .route("/v1/eips/{eip}/bind", post(bind_eip))
        .route("/v1/eips/{eip}/unbind", post(unbind_eip))
        .route(
            "/v1/nat-gateways",
            get(list_nat_gateways).post(create_nat_gateway),
        )
        .route(
            "/v1/nat-gateways/{gw}",
            get(get_nat_gateway).delete(delete_nat_gateway),
        )
        .route("/v1/nat-gateways/{gw}/eips", post(attach_gateway_eip))
        .route(
            "/v1/nat-gateways/{gw}/eips/{eip}",
            axum::routing::delete(detach_gateway_eip),
        )
        .route("/v1/nat-gateways/{gw}/snat", get(list_snat).post(add_snat))
        .route(
            "/v1/nat-gateways/{gw}/snat/{entry}",
            axum::routing::delete(remove_snat),
        )
        .route("/v1/nat-gateways/{gw}/dnat", get(list_dnat).post(add_dnat))
        .route(
            "/v1/nat-gateways/{gw}/dnat/{entry}",
            axum::routing::delete(remove_dnat),
        )
        .route(
            "/v1/load-balancers",
            get(list_load_balancers).post(create_load_balancer),
        )
        .route(
            "/v1/load-balancers/{lb}",
            get(get_load_balancer).delete(delete_load_balancer),
        )
        .route("/v1/load-balancers/{lb}/status", get(load_balancer_status))
        .route("/v1/load-balancers/{lb}/listeners", post(add_listener))
        .route(
            "/v1/load-balancers/{lb}/listeners/{listener}",
            axum::routing::delete(remove_listener),
        )
        .route(
            "/v1/load-balancers/{lb}/listeners/{listener}/backends",
            post(add_backend),
        )
        .route(
            "/v1/load-balancers/{lb}/listeners/{listener}/backends/{backend}",
            axum::routing::patch(update_backend).delete(remove_backend),
        )
        .route("/v1/topology", post(apply_topology))
        .route("/v1/agent/hosts/{host}/tables", get(agent_tables))
        .route("/v1/agent/hosts/{host}/lb-health", put(agent_lb_health))
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
            .map(|n| NicView::of(i, n))
            .collect();
        Ok(Json(nics).into_response())
    })
}

/// A NIC as GET shows it: with its system security-group rules (read-only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicView {
    #[serde(flatten)]
    pub nic: Nic,
    /// Rules the cloud adds before the NIC's groups' (load balancer health checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_rules: Vec<SgRule>,
}

impl NicView {
    fn of(i: &Intent, n: &Nic) -> Self {
        let system_rules = [
            crate::intent::Direction::Ingress,
            crate::intent::Direction::Egress,
        ]
        .into_iter()
        .flat_map(|d| i.system_rules(n, d))
        .collect();
        Self {
            nic: n.clone(),
            system_rules,
        }
    }
}

async fn create_nic(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: NicSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_nic(spec)).await
}

async fn get_nic(State(c): Ctl, Path(nic): Path<String>) -> ApiResult {
    found(
        c.read(|i| i.nic(&nic).map(|n| NicView::of(i, n))),
        "nic",
        "NIC",
        &nic,
    )
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

// ---- security groups ----

async fn list_security_groups(State(c): Ctl, Query(q): Query<VpcFilter>) -> ApiResult {
    c.read(|i| {
        let groups: Vec<_> = match q.vpc.as_deref() {
            Some(v) => {
                let id = vpc_id(i, v)?;
                i.security_groups_of(&id).cloned().collect()
            }
            None => i.security_groups().cloned().collect(),
        };
        Ok(Json(groups).into_response())
    })
}

async fn create_security_group(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: SecurityGroupSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| {
        i.create_security_group(spec)
    })
    .await
}

async fn get_security_group(
    State(c): Ctl,
    Path(sg): Path<String>,
    Query(q): Query<VpcFilter>,
) -> ApiResult {
    c.read(|i| {
        if let Some(v) = q.vpc.as_deref() {
            vpc_id(i, v)?;
        }
        found(
            i.security_group(q.vpc.as_deref(), &sg).cloned(),
            "security_group",
            "security group",
            &sg,
        )
    })
}

async fn delete_security_group(
    State(c): Ctl,
    Path(sg): Path<String>,
    Query(q): Query<VpcFilter>,
) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_security_group(q.vpc.as_deref(), &sg)
            .map(|n| (n, ()))
    })
    .await
}

async fn add_rule(
    State(c): Ctl,
    Path(sg): Path<String>,
    Query(q): Query<VpcFilter>,
    body: Bytes,
) -> ApiResult {
    let spec: SgRuleSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| {
        i.add_security_group_rule(q.vpc.as_deref(), &sg, spec)
    })
    .await
}

async fn remove_rule(
    State(c): Ctl,
    Path((sg, rule)): Path<(String, String)>,
    Query(q): Query<VpcFilter>,
) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.remove_security_group_rule(q.vpc.as_deref(), &sg, &rule)
            .map(|(n, _)| (n, ()))
    })
    .await
}

// ---- blocklist ----

async fn list_blocklist(State(c): Ctl) -> Response {
    Json(c.read(|i| i.blocklist().cloned().collect::<Vec<_>>())).into_response()
}

async fn add_blocklist(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: BlocklistSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.add_blocklist(spec)).await
}

async fn get_blocklist(State(c): Ctl, Path(prefix): Path<String>) -> ApiResult {
    let p: Cidr = prefix
        .parse()
        .map_err(|e: String| ValidationError::invalid("prefix", e))?;
    found(
        c.read(|i| i.blocklist_entry(&p).cloned()),
        "prefix",
        "blocklist entry for",
        &prefix,
    )
}

async fn delete_blocklist(State(c): Ctl, Path(prefix): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_blocklist(&prefix).map(|n| (n, ()))
    })
    .await
}

// ---- EIP pools, EIPs and NAT gateways ----

async fn list_eip_pools(State(c): Ctl) -> Response {
    Json(c.read(|i| i.eip_pools().cloned().collect::<Vec<_>>())).into_response()
}

async fn create_eip_pool(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: EipPoolSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_eip_pool(spec)).await
}

async fn get_eip_pool(State(c): Ctl, Path(pool): Path<String>) -> ApiResult {
    found(
        c.read(|i| i.eip_pool(&pool).cloned()),
        "eip_pool",
        "EIP pool",
        &pool,
    )
}

async fn delete_eip_pool(State(c): Ctl, Path(pool): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_eip_pool(&pool).map(|n| (n, ()))
    })
    .await
}

async fn list_eips(State(c): Ctl) -> Response {
    Json(c.read(|i| i.eips().cloned().collect::<Vec<_>>())).into_response()
}

async fn create_eip(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: EipSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_eip(spec)).await
}

async fn get_eip(State(c): Ctl, Path(eip): Path<String>) -> ApiResult {
    found(c.read(|i| i.eip(&eip).cloned()), "eip", "EIP", &eip)
}

async fn delete_eip(State(c): Ctl, Path(eip): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_eip(&eip).map(|n| (n, ()))
    })
    .await
}

async fn bind_eip(State(c): Ctl, Path(eip): Path<String>, body: Bytes) -> ApiResult {
    let bind: EipBind = parse(&body)?;
    commit(c, StatusCode::OK, move |i| i.bind_eip(&eip, bind)).await
}

async fn unbind_eip(State(c): Ctl, Path(eip): Path<String>) -> ApiResult {
    commit(c, StatusCode::OK, move |i| i.unbind_eip(&eip)).await
}

async fn list_nat_gateways(State(c): Ctl, Query(q): Query<VpcFilter>) -> ApiResult {
    c.read(|i| of_vpc(i, &q, i.nat_gateways(), |g| &g.vpc))
}

/// `items` in the VPC `?vpc=` names (ID or name; all without it), as a JSON list.
fn of_vpc<'a, T: Serialize + 'a>(
    i: &Intent,
    q: &VpcFilter,
    items: impl Iterator<Item = &'a T>,
    vpc_of: impl Fn(&T) -> &str,
) -> ApiResult {
    let vpc = q.vpc.as_deref().map(|v| vpc_id(i, v)).transpose()?;
    let list: Vec<&T> = items
        .filter(|x| vpc.as_deref().is_none_or(|v| v == vpc_of(x)))
        .collect();
    Ok(Json(list).into_response())
}

async fn create_nat_gateway(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: NatGatewaySpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.create_nat_gateway(spec)).await
}

fn nat_gateway_found(c: &Controller, gw: &str) -> Result<crate::intent::NatGateway, ApiError> {
    c.read(|i| i.nat_gateway(gw).cloned()).ok_or_else(|| {
        ValidationError::not_found("nat_gateway", format!("no NAT gateway {gw:?}")).into()
    })
}

async fn get_nat_gateway(State(c): Ctl, Path(gw): Path<String>) -> ApiResult {
    Ok(Json(nat_gateway_found(&c, &gw)?).into_response())
}

async fn delete_nat_gateway(State(c): Ctl, Path(gw): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_nat_gateway(&gw).map(|n| (n, ()))
    })
    .await
}

async fn attach_gateway_eip(State(c): Ctl, Path(gw): Path<String>, body: Bytes) -> ApiResult {
    let a: EipAttach = parse(&body)?;
    commit(c, StatusCode::OK, move |i| i.attach_nat_gateway_eip(&gw, a)).await
}

async fn detach_gateway_eip(State(c): Ctl, Path((gw, eip)): Path<(String, String)>) -> ApiResult {
    commit(c, StatusCode::OK, move |i| {
        i.detach_nat_gateway_eip(&gw, &eip)
    })
    .await
}

async fn list_snat(State(c): Ctl, Path(gw): Path<String>) -> ApiResult {
    Ok(Json(nat_gateway_found(&c, &gw)?.snat).into_response())
}

async fn add_snat(State(c): Ctl, Path(gw): Path<String>, body: Bytes) -> ApiResult {
    let spec: SnatSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.add_snat(&gw, spec)).await
}

async fn list_dnat(State(c): Ctl, Path(gw): Path<String>) -> ApiResult {
    Ok(Json(nat_gateway_found(&c, &gw)?.dnat).into_response())
}

async fn add_dnat(State(c): Ctl, Path(gw): Path<String>, body: Bytes) -> ApiResult {
    let spec: DnatSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| i.add_dnat(&gw, spec)).await
}

async fn remove_snat(State(c): Ctl, Path((gw, entry)): Path<(String, String)>) -> ApiResult {
    remove_nat_entry(c, gw, entry, "snat").await
}

async fn remove_dnat(State(c): Ctl, Path((gw, entry)): Path<(String, String)>) -> ApiResult {
    remove_nat_entry(c, gw, entry, "dnat").await
}

/// Entries of both kinds share the gateway's ID space; each path removes only its kind.
async fn remove_nat_entry(c: Arc<Controller>, gw: String, entry: String, kind: &str) -> ApiResult {
    if !entry.starts_with(&format!("{kind}-")) {
        return Err(ValidationError::not_found(
            "entry",
            format!("{entry:?} is not a {kind} entry ({kind}-<n>)"),
        )
        .into());
    }
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.remove_nat_entry(&gw, &entry).map(|n| (n, ()))
    })
    .await
}

// ---- load balancers ----

async fn list_load_balancers(State(c): Ctl, Query(q): Query<VpcFilter>) -> ApiResult {
    c.read(|i| of_vpc(i, &q, i.load_balancers(), |l| &l.vpc))
}

async fn create_load_balancer(State(c): Ctl, body: Bytes) -> ApiResult {
    let spec: LoadBalancerSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| {
        i.create_load_balancer(spec)
    })
    .await
}

async fn get_load_balancer(State(c): Ctl, Path(lb): Path<String>) -> ApiResult {
    found(
        c.read(|i| i.load_balancer(&lb).cloned()),
        "load_balancer",
        "load balancer",
        &lb,
    )
}

async fn delete_load_balancer(State(c): Ctl, Path(lb): Path<String>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.delete_load_balancer(&lb).map(|n| (n, ()))
    })
    .await
}

/// Each backend's health, weight, active connections and last check, from what the
/// agents reported (`unknown` and 0 until they do).
async fn load_balancer_status(State(c): Ctl, Path(lb): Path<String>) -> ApiResult {
    let status: Option<LbStatus> = c.read(|i| i.load_balancer(&lb).map(|l| c.lb_status.status(l)));
    found(status, "load_balancer", "load balancer", &lb)
}

async fn add_listener(State(c): Ctl, Path(lb): Path<String>, body: Bytes) -> ApiResult {
    let spec: ListenerSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| {
        i.add_lb_listener(&lb, spec)
    })
    .await
}

async fn remove_listener(State(c): Ctl, Path((lb, listener)): Path<(String, String)>) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.remove_lb_listener(&lb, &listener).map(|n| (n, ()))
    })
    .await
}

async fn add_backend(
    State(c): Ctl,
    Path((lb, listener)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let spec: BackendSpec = parse(&body)?;
    commit(c, StatusCode::CREATED, move |i| {
        i.add_lb_backend(&lb, &listener, spec)
    })
    .await
}

async fn update_backend(
    State(c): Ctl,
    Path((lb, listener, backend)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let update: BackendUpdate = parse(&body)?;
    commit(c, StatusCode::OK, move |i| {
        i.set_lb_backend_weight(&lb, &listener, &backend, update)
    })
    .await
}

async fn remove_backend(
    State(c): Ctl,
    Path((lb, listener, backend)): Path<(String, String, String)>,
) -> ApiResult {
    commit(c, StatusCode::NO_CONTENT, move |i| {
        i.remove_lb_backend(&lb, &listener, &backend)
            .map(|n| (n, ()))
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
    /// The generation whose tables the agent holds: answer with the change from them.
    have: Option<u64>,
}

/// An agent's health checks and connection counts (`lb_status`): 204, or 404 for a host
/// not in the intent.
async fn agent_lb_health(State(c): Ctl, Path(host): Path<String>, body: Bytes) -> ApiResult {
    let report: HostReport = parse(&body)?;
    if !c.read(|i| i.host(&host).is_some()) {
        return Err(ValidationError::not_found("host", format!("no host {host:?}")).into());
    }
    c.lb_status.report_host(&host, report);
    Ok(StatusCode::NO_CONTENT.into_response())
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
    // Compiling and encoding 10 MB of tables must not stall the runtime's other requests.
    let reply = tokio::task::spawn_blocking(move || {
        serde_json::to_vec(&c.host_update(&host, q.have)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match reply {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("agent tables: {e}")).into_response(),
    }
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
        assert_eq!(h1.tables.as_ref().unwrap().ports.len(), 1);
        let h2: AgentTables = serde_json::from_value(
            call(&app, "GET", "/v1/agent/hosts/h2/tables", None)
                .await
                .body,
        )
        .unwrap();
        let h2_tables = h2.tables.clone().unwrap();
        assert!(h2_tables.ports.is_empty(), "h2 has no NIC");
        assert!(h2_tables.routes.is_empty(), "and so no VPC routes");
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
        assert_eq!(woke.tables.as_ref().unwrap().ports.len(), 1);
        let h2_now = woke.tables.clone().unwrap();

        // An agent that holds the tables last served gets only the change from them.
        let path = format!("/v1/agent/hosts/h2/tables?have={}", woke.generation);
        let nothing: AgentTables =
            serde_json::from_value(call(&app, "GET", &path, None).await.body).unwrap();
        assert_eq!(nothing.tables, None);
        assert_eq!(nothing.base, Some(woke.generation));
        assert!(nothing.delta.as_ref().unwrap().is_empty());
        let route = call(
            &app,
            "POST",
            "/v1/routes",
            Some(r#"{"vpc":"a","destination":"10.0.9.0/24","next_hop":{"type":"blackhole"}}"#),
        )
        .await;
        assert_eq!(route.status, StatusCode::CREATED, "{}", route.body);
        let changed: AgentTables =
            serde_json::from_value(call(&app, "GET", &path, None).await.body).unwrap();
        let delta = changed.delta.clone().expect("a delta");
        assert_eq!(delta.len(), 1, "one route: {delta:?}");
        let patched = changed
            .into_tables(Some((woke.generation, h2_now.clone())))
            .unwrap();
        let (_, _, whole) = t.controller.host_tables("h2");
        assert_eq!(patched, whole);
        // Holding tables the controller no longer knows: the whole tables.
        let stale = format!("/v1/agent/hosts/h2/tables?have={}", woke.generation);
        let full: AgentTables =
            serde_json::from_value(call(&app, "GET", &stale, None).await.body).unwrap();
        assert_eq!(full.tables.as_ref(), Some(&whole));
        assert_eq!(full.delta, None);
    }

    #[tokio::test]
    async fn security_groups_rules_and_nic_groups_through_the_api() {
        let t = TempController::new("api-sg");
        let app = lab(&t).await;
        // Every VPC has its default group, and a NIC created without groups has it.
        let groups = call(&app, "GET", "/v1/security-groups?vpc=a", None)
            .await
            .body;
        assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
        assert_eq!(groups[0]["name"], "default");
        let default_a = groups[0]["id"].as_str().unwrap().to_string();
        let a1 = call(&app, "GET", "/v1/nics/a1", None).await.body;
        assert_eq!(a1["security_groups"], serde_json::json!([default_a]));
        let all = call(&app, "GET", "/v1/security-groups", None).await.body;
        assert_eq!(all.as_array().unwrap().len(), 2, "one per VPC");

        let web = call(
            &app,
            "POST",
            "/v1/security-groups",
            Some(
                r#"{"vpc":"a","name":"web","rules":[
                {"direction":"ingress","protocol":"tcp","ports":443,"cidr":"0.0.0.0/0","action":"allow","priority":10}]}"#,
            ),
        )
        .await;
        assert_eq!(web.status, StatusCode::CREATED, "{}", web.body);
        assert_eq!(web.body["rules"][0]["ports"], "443");
        let web_id = web.body["id"].as_str().unwrap().to_string();
        let ssh = call(
            &app,
            "POST",
            "/v1/security-groups/web/rules?vpc=a",
            Some(r#"{"direction":"ingress","protocol":"tcp","ports":"22","group":"web","action":"allow","priority":20}"#),
        )
        .await;
        assert_eq!(ssh.status, StatusCode::CREATED, "{}", ssh.body);
        assert_eq!(ssh.body["group"], web_id.as_str());
        let ssh_id = ssh.body["id"].as_str().unwrap().to_string();
        let got = call(&app, "GET", &format!("/v1/security-groups/{web_id}"), None).await;
        assert_eq!(got.body["rules"].as_array().unwrap().len(), 2);
        // The bare name is fine while it is unique; `default` is in every VPC.
        assert_eq!(
            call(&app, "GET", "/v1/security-groups/web", None)
                .await
                .status,
            StatusCode::OK
        );
        let r = call(&app, "GET", "/v1/security-groups/default", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);

        // Refused changes name their field and change nothing.
        let g = t.controller.generation();
        for (method, path, body, status, field) in [
            (
                "POST",
                "/v1/security-groups/web/rules?vpc=a",
                r#"{"direction":"ingress","protocol":"tcp","cidr":"0.0.0.0/0","action":"allow","priority":0}"#,
                400,
                "priority",
            ),
            (
                "POST",
                "/v1/security-groups/web/rules?vpc=a",
                r#"{"direction":"sideways","protocol":"tcp","cidr":"0.0.0.0/0","action":"allow","priority":1}"#,
                400,
                "direction",
            ),
            (
                "POST",
                "/v1/security-groups",
                r#"{"vpc":"a","name":"x","rules":[{"direction":"egress","protocol":"udp","ports":"53","group":"ghost","action":"allow","priority":1}]}"#,
                404,
                "rules[0].group",
            ),
            (
                "PATCH",
                "/v1/nics/a1",
                r#"{"security_groups":[]}"#,
                400,
                "security_groups",
            ),
            (
                "DELETE",
                "/v1/security-groups/default?vpc=a",
                "",
                409,
                "security_group",
            ),
            (
                "DELETE",
                "/v1/security-groups/web/rules/sgr-999?vpc=a",
                "",
                404,
                "rule",
            ),
            ("GET", "/v1/security-groups/web?vpc=nope", "", 404, "vpc"),
        ] {
            let body = (!body.is_empty()).then_some(body);
            let r = call(&app, method, path, body).await;
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
            assert_eq!(
                r.body["error"]["field"], field,
                "{method} {path}: {}",
                r.body
            );
        }
        assert_eq!(t.controller.generation(), g);

        // PATCH sets a NIC's groups; a group in use cannot go.
        let r = call(
            &app,
            "PATCH",
            "/v1/nics/a1",
            Some(r#"{"security_groups":["web","default"]}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(
            r.body["security_groups"],
            serde_json::json!([web_id, default_a])
        );
        let r = call(&app, "DELETE", "/v1/security-groups/web?vpc=a", None).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(
            r.body["error"]["dependents"],
            serde_json::json!(["nic/nic-1"])
        );

        // The host's tables carry the NIC's policies: a delta from the tables held.
        let h1: AgentTables = serde_json::from_value(
            call(&app, "GET", "/v1/agent/hosts/h1/tables", None)
                .await
                .body,
        )
        .unwrap();
        let held = h1.tables.clone().unwrap();
        let nic = held.security_groups.nic("vm-a1").expect("a1's policies");
        let ingress = nic.ingress;
        assert_eq!(held.security_groups.policy(ingress).unwrap().rules.len(), 3);
        let r = call(
            &app,
            "DELETE",
            &format!("/v1/security-groups/web/rules/{ssh_id}?vpc=a"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let path = format!("/v1/agent/hosts/h1/tables?have={}", h1.generation);
        let changed: AgentTables =
            serde_json::from_value(call(&app, "GET", &path, None).await.body).unwrap();
        let delta = changed.delta.clone().expect("a delta");
        assert_eq!(delta.sg_nics.upserted.len(), 1, "{delta:?}");
        assert_eq!(delta.sg_policies.removed, [ingress], "{delta:?}");
        let patched = changed.into_tables(Some((h1.generation, held))).unwrap();
        let (_, _, whole) = t.controller.host_tables("h1");
        assert_eq!(patched, whole);
        assert_eq!(
            whole
                .security_groups
                .policy(whole.security_groups.nic("vm-a1").unwrap().ingress)
                .unwrap()
                .rules
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn the_blocklist_through_the_api_reaches_every_host() {
        let t = TempController::new("api-block");
        let app = lab(&t).await;
        let r = call(
            &app,
            "POST",
            "/v1/blocklist",
            Some(r#"{"prefix":"203.0.113.0/24","applies_to":"source","description":"ddos"}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["applies_to"], "source");
        for path in [
            "/v1/blocklist/203.0.113.0%2F24",
            "/v1/blocklist/203.0.113.0/24",
        ] {
            let r = call(&app, "GET", path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
            assert_eq!(r.body["description"], "ddos");
        }
        let again = call(
            &app,
            "POST",
            "/v1/blocklist",
            Some(r#"{"prefix":"203.0.113.0/24"}"#),
        )
        .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
        let bad = call(
            &app,
            "POST",
            "/v1/blocklist",
            Some(r#"{"prefix":"203.0.113.0/24","applies_to":"sideways"}"#),
        )
        .await;
        assert_eq!(bad.body["error"]["field"], "applies_to", "{}", bad.body);
        let list = call(&app, "GET", "/v1/blocklist", None).await.body;
        assert_eq!(list.as_array().unwrap().len(), 1);
        for host in ["h1", "h2"] {
            let (_, _, tables) = t.controller.host_tables(host);
            assert_eq!(tables.blocklist.len(), 1, "{host}");
            assert!(tables.blocklist[0].src && !tables.blocklist[0].dst);
        }
        let r = call(&app, "DELETE", "/v1/blocklist/203.0.113.0%2F24", None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = call(&app, "GET", "/v1/blocklist/203.0.113.0%2F24", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = call(&app, "GET", "/v1/blocklist/nonsense", None).await;
        assert_eq!(
            (r.status, r.body["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("prefix"))
        );
        assert!(t.controller.host_tables("h1").2.blocklist.is_empty());
    }

    #[tokio::test]
    async fn eips_and_nat_gateways_through_the_api() {
        let t = TempController::new("api-nat");
        let app = lab(&t).await;
        for (path, body) in [
            (
                "/v1/eip-pools",
                r#"{"name":"pub","cidrs":["203.0.113.0/28"]}"#,
            ),
            ("/v1/eips", r#"{"name":"e1"}"#),
            ("/v1/eips", r#"{"name":"e2","address":"203.0.113.5"}"#),
            ("/v1/eips", r#"{"name":"e3"}"#),
            (
                "/v1/nat-gateways",
                r#"{"name":"gw","vpc":"a","subnet":"s1","eips":["e1","e2"]}"#,
            ),
            (
                "/v1/nat-gateways/gw/snat",
                r#"{"subnet":"s1","eips":["e1"]}"#,
            ),
            (
                "/v1/nat-gateways/gw/dnat",
                r#"{"eip":"203.0.113.5","protocol":"tcp","public_port":8080,"private_ip":"10.0.1.4","private_port":80}"#,
            ),
            (
                "/v1/routes",
                r#"{"vpc":"a","destination":"0.0.0.0/0","next_hop":{"type":"nat_gateway","nat_gateway":"gw"}}"#,
            ),
        ] {
            let r = call(&app, "POST", path, Some(body)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{path}: {}", r.body);
            assert!(r.generation.is_some());
        }
        let e1 = call(&app, "GET", "/v1/eips/e1", None).await.body;
        assert_eq!(e1["address"], "203.0.113.1");
        assert_eq!(e1["state"], "attached");
        assert_eq!(e1["nat_gateway"], "natgw-1");
        let gw = call(&app, "GET", "/v1/nat-gateways/gw", None).await.body;
        assert_eq!(gw["eips"], serde_json::json!(["eip-1", "eip-2"]));
        let dnat = call(&app, "GET", "/v1/nat-gateways/gw/dnat", None)
            .await
            .body;
        assert_eq!(dnat[0]["id"], "dnat-1");
        assert_eq!(dnat[0]["eip"], "eip-2");

        // Bind and unbind without touching anything else.
        let r = call(&app, "POST", "/v1/eips/e3/bind", Some(r#"{"nic":"a1"}"#)).await;
        assert_eq!(
            (r.status, &r.body["state"]),
            (StatusCode::OK, &"bound".into())
        );
        let r = call(&app, "POST", "/v1/eips/203.0.113.2/unbind", None).await;
        assert_eq!(
            (r.status, &r.body["state"]),
            (StatusCode::OK, &"free".into())
        );

        // Every refusal names the field and changes nothing.
        let before = t.controller.read(|i| i.clone());
        for (method, path, body, status, field, dependents) in [
            (
                "POST",
                "/v1/nat-gateways/gw/dnat",
                r#"{"eip":"e1","protocol":"udp","public_port":53,"private_ip":"10.0.1.4"}"#,
                409,
                "eip",
                vec!["snat/natgw-1:snat-1"],
            ),
            (
                "POST",
                "/v1/nat-gateways/gw/dnat",
                r#"{"eip":"e2","protocol":"any","public_port":8080,"private_ip":"10.0.1.4"}"#,
                409,
                "public_port",
                vec!["dnat/natgw-1:dnat-1"],
            ),
            (
                "POST",
                "/v1/nat-gateways/gw/snat",
                r#"{"cidr":"10.1.0.0/24","eips":["e1"]}"#,
                400,
                "cidr",
                vec![],
            ),
            (
                "POST",
                "/v1/eips",
                r#"{"address":"192.0.2.1"}"#,
                400,
                "address",
                vec![],
            ),
            (
                "POST",
                "/v1/eips/e1/bind",
                r#"{"nic":"a1"}"#,
                409,
                "eip",
                vec!["nat-gateway/natgw-1"],
            ),
            (
                "DELETE",
                "/v1/nat-gateways/gw/eips/e2",
                "",
                409,
                "eip",
                vec!["dnat/natgw-1:dnat-1"],
            ),
            (
                "DELETE",
                "/v1/eip-pools/pub",
                "",
                409,
                "eip_pool",
                vec!["eip/eip-1", "eip/eip-2", "eip/eip-3"],
            ),
            (
                "DELETE",
                "/v1/nat-gateways/gw",
                "",
                409,
                "nat_gateway",
                vec!["route/vpc-1:0.0.0.0/0"],
            ),
            (
                "DELETE",
                "/v1/nat-gateways/gw/snat/dnat-1",
                "",
                404,
                "entry",
                vec![],
            ),
            (
                "GET",
                "/v1/nat-gateways/nope/snat",
                "",
                404,
                "nat_gateway",
                vec![],
            ),
            (
                "POST",
                "/v1/eip-pools",
                r#"{"name":"x","cidrs":["203.0.113.8/29"]}"#,
                409,
                "cidrs[0]",
                vec!["eip-pool/eipp-1"],
            ),
        ] {
            let r = call(&app, method, path, (!body.is_empty()).then_some(body)).await;
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
            assert_eq!(
                r.body["error"]["field"], field,
                "{method} {path}: {}",
                r.body
            );
            let deps: Vec<String> =
                serde_json::from_value(r.body["error"]["dependents"].clone()).unwrap_or_default();
            assert_eq!(deps, dependents, "{method} {path}");
        }
        assert_eq!(t.controller.read(|i| i.clone()), before);

        // The route sends traffic to the gateway; the host's NAT tables list the EIPs.
        let (_, _, tables) = t.controller.host_tables("h1");
        assert!(tables.routes.iter().any(|r| r.prefix.len == 0
            && r.next_hop.kind == sluice_common::vpc::NextHopKind::NatGateway as u32));
        assert!(!tables.nat.eips.is_empty());

        let r = call(&app, "DELETE", "/v1/nat-gateways/gw/dnat/dnat-1", None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = call(&app, "DELETE", "/v1/nat-gateways/gw/eips/e2", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["eips"], serde_json::json!(["eip-1"]));
    }

    #[tokio::test]
    async fn load_balancers_listeners_backends_and_status_through_the_api() {
        use crate::controller::lb_status::{BackendReport, Health, HostReport, LastCheck};
        let t = TempController::new("api-lb");
        let app = lab(&t).await;
        let r = call(
            &app,
            "POST",
            "/v1/load-balancers",
            Some(
                r#"{"name":"web","vpc":"a","subnet":"s1","listeners":[{"protocol":"tcp","port":80,
                    "health_check":{"type":"http","path":"/healthz"},
                    "backends":[{"nic":"a1","port":8080},{"ip":"10.0.1.50","port":8080,"weight":30}]}]}"#,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert!(r.generation.is_some());
        assert_eq!(r.body["id"], "lb-1");
        assert_eq!(r.body["vip"], "10.0.1.5", "a1 has .4");
        let l = &r.body["listeners"][0];
        assert_eq!(l["health_check"]["type"], "http");
        assert_eq!(
            l["health_check"]["expected_status"],
            serde_json::json!([200])
        );
        assert_eq!(l["backends"][1]["weight"], 30);

        // The backend NIC shows its system rule.
        let nic = call(&app, "GET", "/v1/nics/a1", None).await.body;
        assert_eq!(nic["system_rules"][0]["cidr"], "100.64.0.0/10");
        assert_eq!(nic["system_rules"][0]["ports"], "8080");
        assert_eq!(
            nic["system_rules"][0]["description"],
            "load balancer health checks"
        );
        let nics = call(&app, "GET", "/v1/nics", None).await.body;
        assert_eq!(nics[0]["system_rules"], nic["system_rules"]);

        let g = t.controller.generation();
        let before = t.controller.read(|i| i.clone());
        for (method, path, body, status, field) in [
            (
                "POST",
                "/v1/load-balancers",
                r#"{"vpc":"a","subnet":"s1","vip":"10.0.2.9"}"#,
                400,
                "vip",
            ),
            (
                "POST",
                "/v1/load-balancers",
                r#"{"vpc":"a","subnet":"s1","vip":"10.0.1.4"}"#,
                409,
                "vip",
            ),
            (
                "POST",
                "/v1/load-balancers",
                r#"{"vpc":"a","subnet":"s1","colour":1}"#,
                400,
                "colour",
            ),
            (
                "POST",
                "/v1/load-balancers/web/listeners",
                r#"{"protocol":"tcp","port":80}"#,
                409,
                "port",
            ),
            (
                "POST",
                "/v1/load-balancers/web/listeners",
                r#"{"protocol":"sctp","port":80}"#,
                400,
                "protocol",
            ),
            (
                "POST",
                "/v1/load-balancers/web/listeners/lbl-1/backends",
                r#"{"ip":"10.9.0.1","port":1}"#,
                400,
                "ip",
            ),
            (
                "POST",
                "/v1/load-balancers/web/listeners/lbl-1/backends",
                r#"{"nic":"a1","port":8080}"#,
                409,
                "port",
            ),
            (
                "PATCH",
                "/v1/load-balancers/web/listeners/lbl-1/backends/lbb-1",
                r#"{"weight":101}"#,
                400,
                "weight",
            ),
            (
                "PATCH",
                "/v1/load-balancers/web/listeners/lbl-1/backends/lbb-9",
                r#"{"weight":1}"#,
                404,
                "backend",
            ),
            (
                "DELETE",
                "/v1/load-balancers/web/listeners/lbl-7",
                "",
                404,
                "listener",
            ),
            ("DELETE", "/v1/nics/a1", "", 409, "nic"),
            ("GET", "/v1/load-balancers/nope", "", 404, "load_balancer"),
            (
                "GET",
                "/v1/load-balancers/nope/status",
                "",
                404,
                "load_balancer",
            ),
        ] {
            let r = call(&app, method, path, (!body.is_empty()).then_some(body)).await;
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
            assert_eq!(
                r.body["error"]["field"], field,
                "{method} {path}: {}",
                r.body
            );
        }
        assert_eq!(t.controller.generation(), g, "nothing changed");
        assert_eq!(t.controller.read(|i| i.clone()), before);

        // Status: unknown until reported; a report for a slot's old backend is not shown.
        let r = call(&app, "GET", "/v1/load-balancers/web/status", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let b = &r.body["listeners"][0]["backends"];
        assert_eq!(
            (b[0]["health"].as_str(), b[0]["active_connections"].as_u64()),
            (Some("unknown"), Some(0))
        );
        assert!(b[0].get("last_check").is_none());
        let report = |health, active, at: Option<u64>| BackendReport {
            ip: "10.0.1.4".parse().unwrap(),
            port: 8080,
            health,
            active_connections: active,
            last_check: at.map(|at| LastCheck {
                ok: health == Health::Healthy,
                latency_ms: 1000.0,
                detail: format!("check at {at}"),
                at,
            }),
        };
        let body = serde_json::to_string(&HostReport::from([
            (0, report(Health::Unhealthy, 7, Some(5))),
            // Slot 1's backend is not 10.0.1.4: a stale report.
            (1, report(Health::Healthy, 3, None)),
        ]))
        .unwrap();
        let r = call(&app, "PUT", "/v1/agent/hosts/h1/lb-health", Some(&body)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let r = call(&app, "PUT", "/v1/agent/hosts/h9/lb-health", Some(&body)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "unknown host: {}", r.body);
        // Another host sees it healthy, later: still unhealthy (h1's clients lose it),
        // connections summed, the latest check shown.
        let body = serde_json::to_string(&HostReport::from([(
            0,
            report(Health::Healthy, 2, Some(9)),
        )]))
        .unwrap();
        let r = call(&app, "PUT", "/v1/agent/hosts/h2/lb-health", Some(&body)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let r = call(&app, "GET", "/v1/load-balancers/lb-1/status", None).await;
        let b = &r.body["listeners"][0]["backends"];
        assert_eq!(b[0]["health"], "unhealthy");
        assert_eq!(b[0]["active_connections"], 9);
        assert_eq!(b[0]["last_check"]["detail"], "check at 9");
        assert_eq!(b[1]["health"], "unknown", "{}", r.body);

        let r = call(
            &app,
            "PATCH",
            "/v1/load-balancers/web/listeners/lbl-1/backends/lbb-2",
            Some(r#"{"weight":0}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["weight"], 0);
        let r = call(
            &app,
            "POST",
            "/v1/load-balancers/web/listeners",
            Some(r#"{"protocol":"udp","port":53}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(
            (r.body["id"].as_str(), r.body["slot"].as_u64()),
            (Some("lbl-2"), Some(1))
        );
        let r = call(
            &app,
            "POST",
            "/v1/load-balancers/web/listeners/lbl-2/backends",
            Some(r#"{"nic":"a1","port":53}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["slot"], 2);
        let list = call(&app, "GET", "/v1/load-balancers?vpc=b", None)
            .await
            .body;
        assert_eq!(list, serde_json::json!([]));
        let list = call(&app, "GET", "/v1/load-balancers?vpc=a", None)
            .await
            .body;
        assert_eq!(list[0]["listeners"].as_array().unwrap().len(), 2);
        for path in [
            "/v1/load-balancers/web/listeners/lbl-2/backends/lbb-3",
            "/v1/load-balancers/web/listeners/lbl-2",
            "/v1/load-balancers/web",
        ] {
            let r = call(&app, "DELETE", path, None).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}: {}", r.body);
        }
        assert_eq!(
            call(&app, "GET", "/v1/load-balancers/web", None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let nic = call(&app, "GET", "/v1/nics/a1", None).await.body;
        assert!(nic.get("system_rules").is_none(), "{nic}");
        assert_eq!(
            call(&app, "DELETE", "/v1/nics/a1", None).await.status,
            StatusCode::NO_CONTENT
        );
    }
}
