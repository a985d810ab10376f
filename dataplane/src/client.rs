//! A small HTTP/1 client (hyper) for the daemon's API over TCP or a Unix socket. Used by
//! `sluicectl` and the integration tests.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, header, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

pub use crate::config::ApiAddr;

/// How long one request may take, connect included, before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code and body text.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GET `path` from the daemon at `addr`.
pub async fn get(addr: &ApiAddr, path: &str) -> Result<Response> {
    tokio::time::timeout(REQUEST_TIMEOUT, get_inner(addr, path))
        .await
        .with_context(|| format!("sluiced at {addr} did not answer GET {path} in time"))?
}

async fn get_inner(addr: &ApiAddr, path: &str) -> Result<Response> {
    match addr {
        ApiAddr::Unix(p) => {
            let stream = UnixStream::connect(p)
                .await
                .with_context(|| unreachable(addr))?;
            request(stream, "localhost", addr, path).await
        }
        ApiAddr::Tcp(a) => {
            let stream = TcpStream::connect(a.as_str())
                .await
                .with_context(|| unreachable(addr))?;
            request(stream, a, addr, path).await
        }
    }
}

fn unreachable(addr: &ApiAddr) -> String {
    format!("cannot connect to sluiced at {addr} (is the daemon running? set --api or SLUICE_API)")
}

async fn request<S>(stream: S, host: &str, addr: &ApiAddr, path: &str) -> Result<Response>
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
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {path} from sluiced at {addr}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the body of GET {path} from {addr}"))?
        .to_bytes();
    let body = String::from_utf8(body.to_vec())
        .with_context(|| format!("GET {path} from {addr}: body is not UTF-8"))?;
    Ok(Response { status, body })
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(get(addr, path))
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
}
