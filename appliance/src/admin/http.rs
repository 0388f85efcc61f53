//! The admin HTTP server (hyper): `/metrics`, `/api/v1/...`. It runs on its own thread,
//! away from the controllers' data path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::debug;

/// A response body.
pub type Body = Full<Bytes>;

/// Routes a request to a response.
pub trait Router: Send + Sync + 'static {
    /// Handles `method path` with the request's headers (the admin API reads no bodies).
    fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// The `key=value` pairs of a query string, in order; a pair without `=` has an empty value.
/// Nothing is percent-decoded: the admin API's values are names, numbers and booleans, and
/// a value with a `%` simply names nothing that exists.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// A response with a status and a text body.
pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => text(status, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode: {e}\n"),
        ),
    }
}

/// A JSON error body `{"error": message}`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The answer to a connection over the admin API's connection limit.
pub const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` turns true. A request head must arrive
/// within the handshake timeout; a connection idle between requests is closed after the idle
/// timeout.
pub async fn serve<R: Router>(
    mut listener: listener::Listener,
    router: Arc<R>,
    limits: listener::Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => return,
        };
        let router = Arc::clone(&router);
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let listener::Admitted { stream, peer, slot } = conn;
            let service = service_fn(move |req: Request<Incoming>| {
                let router = Arc::clone(&router);
                async move {
                    let resp = router
                        .route(
                            req.method(),
                            req.uri().path(),
                            req.uri().query(),
                            req.headers(),
                        )
                        .await;
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // Past the whole-connection deadline a connection is closed even if it keeps
            // dribbling requests (the admin API has short requests only).
            let deadline = tokio::time::sleep(limits.idle_timeout);
            tokio::pin!(deadline);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    debug!(%peer, error = %e, "admin connection ended");
                },
                _ = conn_shutdown.changed() => conn.as_mut().graceful_shutdown(),
                () = &mut deadline => debug!(%peer, "admin connection closed at its deadline"),
            }
            drop(slot);
        });
    }
}

/// Binds the admin listener (done before starting, so errors surface at startup).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A tiny HTTP/1.1 client for the CLI (`baton status`, `baton ctl`); `token` goes in
/// `Authorization: Bearer`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, Bytes)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok((status, body))
}
