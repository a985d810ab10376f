//! A small HTTP/1 client (hyper) for the daemon's API over TCP or a Unix socket. Used by
//! `sluicectl`, the lab and the integration tests.
//!
//! [`request`] sends any method with an optional body and returns whatever the daemon
//! answered; [`Response::error_for_status`] turns a non-2xx answer into an [`ApiError`]
//! (the API's `{"error": {"field", "reason", ...}}` body, or the raw text when the body is
//! not in that shape).

use std::{fmt, time::Duration};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, header, Request};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

pub use crate::config::ApiAddr;
pub use hyper::Method;

/// How long one request may take, connect included, before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The header every successful mutation carries: the intent generation after the change.
pub const GENERATION_HEADER: &str = "sluice-generation";

pub const JSON: &str = "application/json";

/// A response: status code, headers and body text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What was asked, for error messages.
    pub method: Method,
    pub path: String,
    pub addr: ApiAddr,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `sluice-generation` header of a successful mutation.
    pub fn generation(&self) -> Option<u64> {
        self.header(GENERATION_HEADER)?.trim().parse().ok()
    }

    /// The body as JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "{} {} from {}: unexpected JSON: {}",
                self.method,
                self.path,
                self.addr,
                self.body.trim()
            )
        })
    }

    /// `self` if 2xx, else the [`ApiError`] it carries (downcastable from the `anyhow::Error`).
    pub fn error_for_status(self) -> Result<Response> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(ApiError::from_response(&self).into())
        }
    }
}

/// A non-2xx answer. Displays as `field: reason` (with the dependents, if any) when the
/// daemon sent the API's error shape, else as the status line and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// `invalid`, `not_found`, `conflict`, `internal`; `None` when the body was not the
    /// API's error shape.
    pub kind: Option<String>,
    pub field: Option<String>,
    pub reason: String,
    pub dependents: Vec<String>,
    /// Where it came from, for bodies that say nothing themselves.
    pub request: String,
}

/// `{"error": {...}}`, or `{"error": "text"}` (the daemon's older internal errors).
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorDetail {
    Structured {
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        field: Option<String>,
        reason: String,
        #[serde(default)]
        dependents: Vec<String>,
    },
    Text(String),
}

impl ApiError {
    pub fn from_response(resp: &Response) -> Self {
        let request = format!(
            "{} {} from sluiced at {}",
            resp.method, resp.path, resp.addr
        );
        let (kind, field, reason, dependents) = match serde_json::from_str::<ErrorBody>(&resp.body)
        {
            Ok(ErrorBody {
                error:
                    ErrorDetail::Structured {
                        kind,
                        field,
                        reason,
                        dependents,
                    },
            }) => (kind, field.filter(|f| !f.is_empty()), reason, dependents),
            Ok(ErrorBody {
                error: ErrorDetail::Text(t),
            }) => (None, None, t, vec![]),
            Err(_) => (None, None, resp.body.trim().to_string(), vec![]),
        };
        Self {
            status: resp.status,
            kind,
            field,
            reason,
            dependents,
            request,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.field, &self.kind) {
            (Some(field), _) => write!(f, "{field}: {}", self.reason)?,
            (None, Some(_)) => f.write_str(&self.reason)?,
            // Not the API's error shape (a proxy, an unknown route): say where and what.
            (None, None) if self.reason.is_empty() => {
                write!(f, "{}: HTTP {}", self.request, self.status)?
            }
            (None, None) => write!(f, "{}: HTTP {}: {}", self.request, self.status, self.reason)?,
        }
        if !self.dependents.is_empty() {
            write!(f, " (dependents: {})", self.dependents.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// Percent-encode one path segment or query value: everything but RFC 3986's unreserved
/// characters, so `10.0.0.0/24` becomes `10.0.0.0%2F24`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API path of load balancer `lb`, of one of its listeners, or of one of that
/// listener's backends (segments encoded).
pub fn load_balancer_path(lb: &str, listener: Option<&str>, backend: Option<&str>) -> String {
    let mut p = format!("/v1/load-balancers/{}", encode(lb));
    if let Some(l) = listener {
        p.push_str(&format!("/listeners/{}", encode(l)));
        if let Some(b) = backend {
            p.push_str(&format!("/backends/{}", encode(b)));
        }
    }
    p
}

/// `GET /v1/load-balancers/{lb}/status`: each backend's health, weight, connections and
/// last check.
pub async fn load_balancer_status(
    addr: &ApiAddr,
    lb: &str,
) -> Result<crate::controller::lb_status::LbStatus> {
    get_json(
        addr,
        &format!("{}/status", load_balancer_path(lb, None, None)),
    )
    .await
}

/// Send `method path` with an optional `(content type, bytes)` body to the daemon at
/// `addr`; any status is returned as is.
pub async fn request(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response> {
    let what = format!("{method} {path}");
    tokio::time::timeout(REQUEST_TIMEOUT, request_inner(addr, method, path, body))
        .await
        .with_context(|| format!("sluiced at {addr} did not answer {what} in time"))?
}

/// `method path` with `body` as JSON; any status is returned as is.
pub async fn send_json<B: Serialize + ?Sized>(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: &B,
) -> Result<Response> {
    let bytes = serde_json::to_vec(body).context("encoding the request body as JSON")?;
    request(addr, method, path, Some((JSON, bytes))).await
}

/// `method path` with `body` as JSON; requires a 2xx and returns its body as `T`.
pub async fn send_json_ok<T: DeserializeOwned, B: Serialize + ?Sized>(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: &B,
) -> Result<T> {
    send_json(addr, method, path, body)
        .await?
        .error_for_status()?
        .json()
}

/// `POST path` with `body` as JSON; any status.
pub async fn post_json<B: Serialize + ?Sized>(
    addr: &ApiAddr,
    path: &str,
    body: &B,
) -> Result<Response> {
    send_json(addr, Method::POST, path, body).await
}

/// `DELETE path`; any status.
pub async fn delete(addr: &ApiAddr, path: &str) -> Result<Response> {
    request(addr, Method::DELETE, path, None).await
}

/// GET `path` from the daemon at `addr`; any status.
pub async fn get(addr: &ApiAddr, path: &str) -> Result<Response> {
    request(addr, Method::GET, path, None).await
}

async fn request_inner(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response> {
    match addr {
        ApiAddr::Unix(p) => {
            let stream = UnixStream::connect(p)
                .await
                .with_context(|| unreachable(addr))?;
            exchange(stream, "localhost", addr, method, path, body).await
        }
        ApiAddr::Tcp(a) => {
            let stream = TcpStream::connect(a.as_str())
                .await
                .with_context(|| unreachable(addr))?;
            exchange(stream, a, addr, method, path, body).await
        }
    }
}

fn unreachable(addr: &ApiAddr) -> String {
    format!("cannot connect to sluiced at {addr} (is the daemon running? set --api or SLUICE_API)")
}

async fn exchange<S>(
    stream: S,
    host: &str,
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with sluiced at {addr}"))?;
    // The connection future drives the socket; it ends when the response is read.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("connection closed: {e}");
        }
    });
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, host);
    let bytes = match body {
        Some((content_type, bytes)) => {
            req = req.header(header::CONTENT_TYPE, content_type);
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(bytes))
        .with_context(|| format!("building {method} {path}"))?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{method} {path} to sluiced at {addr}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the body of {method} {path} from {addr}"))?
        .to_bytes();
    let body = String::from_utf8(body.to_vec())
        .with_context(|| format!("{method} {path} from {addr}: body is not UTF-8"))?;
    Ok(Response {
        status,
        headers,
        body,
        method,
        path: path.to_string(),
        addr: addr.clone(),
    })
}

/// GET `path` and require a 200 with a JSON body of type `T`.
pub async fn get_json<T: DeserializeOwned>(addr: &ApiAddr, path: &str) -> Result<T> {
    let resp = get_ok(addr, path).await?;
    serde_json::from_str(&resp.body)
        .with_context(|| format!("GET {path} from {addr}: unexpected JSON: {}", resp.body))
}

/// GET `path` and require a 200.
pub async fn get_ok(addr: &ApiAddr, path: &str) -> Result<Response> {
    let resp = get(addr, path).await?;
    if resp.status != 200 {
        bail!(
            "GET {path} from sluiced at {addr}: HTTP {}: {}",
            resp.status,
            resp.body.trim()
        );
    }
    Ok(resp)
}

/// Blocking wrapper for synchronous callers (tests, tools): runs one request on its own runtime.
pub fn blocking_get(addr: &ApiAddr, path: &str) -> Result<Response> {
    blocking_request(addr, Method::GET, path, None)
}

/// Blocking [`request`] on its own runtime, for synchronous callers.
pub fn blocking_request(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(request(addr, method, path, body))
}

/// Blocking [`send_json`] on its own runtime, for synchronous callers.
pub fn blocking_send_json<B: Serialize + ?Sized>(
    addr: &ApiAddr,
    method: Method,
    path: &str,
    body: &B,
) -> Result<Response> {
    let bytes = serde_json::to_vec(body).context("encoding the request body as JSON")?;
    blocking_request(addr, method, path, Some((JSON, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_names_the_address() {
        let addr: ApiAddr = "unix:/nonexistent/sluice-test/api.sock".parse().unwrap();
        let e = format!("{:#}", get(&addr, "/healthz").await.unwrap_err());
        assert!(
            e.contains("cannot connect to sluiced at unix:/nonexistent/sluice-test/api.sock"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refused_tcp_names_the_address() {
        // Bind then drop to get a port that is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: ApiAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let e = format!("{:#}", get(&addr, "/healthz").await.unwrap_err());
        assert!(
            e.contains(&format!("cannot connect to sluiced at 127.0.0.1:{port}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn talks_http_to_an_axum_server_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("sluice-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/v1/x",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"a": 1})) }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let addr = ApiAddr::Unix(sock.clone());
        let resp = get(&addr, "/healthz").await.unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok"));
        let v: serde_json::Value = get_json(&addr, "/v1/x").await.unwrap();
        assert_eq!(v["a"], 1);
        let e = format!("{:#}", get_ok(&addr, "/missing").await.unwrap_err());
        assert!(e.contains("HTTP 404"), "{e}");
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn encode_escapes_everything_but_unreserved() {
        assert_eq!(encode("10.0.0.0/24"), "10.0.0.0%2F24");
        assert_eq!(encode("a b?c&d=e%"), "a%20b%3Fc%26d%3De%25");
        assert_eq!(encode("vpc-1_a.b~"), "vpc-1_a.b~");
    }

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("sluice-generation".into(), "7".into())],
            body: body.into(),
            method: Method::DELETE,
            path: "/v1/vpcs/a".into(),
            addr: ApiAddr::Tcp("127.0.0.1:9464".into()),
        }
    }

    #[test]
    fn api_error_shows_field_reason_and_dependents() {
        let r = response(
            409,
            r#"{"error":{"kind":"conflict","field":"vpc","reason":"VPC a is in use","dependents":["subnet/subnet-1","nic/nic-2"]}}"#,
        );
        assert_eq!(r.generation(), Some(7));
        assert_eq!(r.header("Sluice-Generation"), Some("7"));
        let e = r.error_for_status().unwrap_err();
        let api = e.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!(api.kind.as_deref(), Some("conflict"));
        assert_eq!(
            e.to_string(),
            "vpc: VPC a is in use (dependents: subnet/subnet-1, nic/nic-2)"
        );
    }

    #[test]
    fn api_error_falls_back_to_status_and_body() {
        let e = response(500, r#"{"error":"reading the stats map: boom"}"#)
            .error_for_status()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DELETE /v1/vpcs/a from sluiced at 127.0.0.1:9464: HTTP 500: reading the stats map: boom"
        );
        let e = response(405, "").error_for_status().unwrap_err();
        assert_eq!(
            e.to_string(),
            "DELETE /v1/vpcs/a from sluiced at 127.0.0.1:9464: HTTP 405"
        );
        assert!(response(204, "").error_for_status().is_ok());
    }

    #[tokio::test]
    async fn sends_methods_bodies_and_reads_headers() {
        use axum::{
            extract::Path,
            http::{HeaderMap, StatusCode},
            routing::{delete as delete_route, post},
        };
        let dir = std::env::temp_dir().join(format!("sluice-client-req-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let app = axum::Router::new()
            .route(
                "/v1/echo",
                post(|headers: HeaderMap, body: String| async move {
                    let ct = headers[axum::http::header::CONTENT_TYPE]
                        .to_str()
                        .unwrap()
                        .to_string();
                    (
                        StatusCode::CREATED,
                        [(GENERATION_HEADER, "42")],
                        axum::Json(serde_json::json!({"content_type": ct, "body": body})),
                    )
                }),
            )
            .route(
                "/v1/things/{id}",
                delete_route(|Path(id): Path<String>| async move {
                    if id == "10.0.0.0/24" {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::NOT_FOUND
                    }
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let addr = ApiAddr::Unix(sock.clone());

        let resp = post_json(
            &addr,
            "/v1/echo",
            &serde_json::json!({"cidr": "10.0.0.0/16"}),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.generation(), Some(42));
        let v: serde_json::Value = resp.json().unwrap();
        assert_eq!(v["content_type"], JSON);
        assert_eq!(v["body"], r#"{"cidr":"10.0.0.0/16"}"#);

        let v: serde_json::Value =
            send_json_ok(&addr, Method::POST, "/v1/echo", &serde_json::json!([1]))
                .await
                .unwrap();
        assert_eq!(v["body"], "[1]");

        // The percent-encoded slash stays inside one path segment.
        let path = format!("/v1/things/{}", encode("10.0.0.0/24"));
        assert_eq!(delete(&addr, &path).await.unwrap().status, 204);
        assert_eq!(delete(&addr, "/v1/things/x").await.unwrap().status, 404);
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
    }
}
