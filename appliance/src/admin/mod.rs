//! Operations: the admin endpoint (Prometheus `/metrics`, `/api/v1/status`, controller
//! actions) and its client side for `baton status` / `baton ctl`.

pub mod ana;
pub mod auth;
pub mod exporter;
mod hosts;
pub mod http;
mod namespaces;
mod nvme;
pub mod status;
mod stream_metrics;
mod subsystems;

use std::sync::Arc;
use std::time::Instant;

use hyper::{Method, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::block::BlockService;
use crate::config::{Config, DeviceConfig};
use backplane::Backplane;
use controller::ControllerHandle;
use exporter::{Families, labels};
use http::{Body, Router};
use status::{DeviceStatus, Status, VolumeStatus};

/// What the admin endpoint reports on and acts upon.
#[derive(Debug)]
pub struct Admin {
    started: Instant,
    config: Arc<Config>,
    backplane: Arc<Backplane>,
    block: Arc<BlockService>,
    stream: Option<Arc<stream::StreamService>>,
    controllers: Vec<ControllerHandle>,
}

impl Admin {
    /// An admin endpoint over the running appliance's parts.
    pub fn new(
        config: Arc<Config>,
        backplane: Arc<Backplane>,
        block: Arc<BlockService>,
        stream: Option<Arc<stream::StreamService>>,
        controllers: Vec<ControllerHandle>,
    ) -> Self {
        Self {
            started: Instant::now(),
            config,
            backplane,
            block,
            stream,
            controllers,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Closes every NVMe/TCP connection of controller `index` (its listener stays up).
    pub async fn drop_connections(&self, index: usize) -> Result<(), String> {
        let handle = self
            .controllers
            .get(index)
            .ok_or_else(|| format!("no controller {index}"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle
            .run(move || {
                // The receiver waits below; a dropped receiver only means nobody cares.
                let _ = tx.send(crate::block::drop_local_connections());
            })
            .map_err(|e| e.to_string())?;
        match rx.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("controller {index} serves no NVMe/TCP port")),
            Err(_) => Err(format!("controller {index} stopped")),
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        let volumes = self
            .backplane
            .volumes()
            .iter()
            .map(|v| VolumeStatus {
                name: v.name().to_owned(),
                size: v.size(),
                block_size: v.block_size(),
                stripe_size: v.stripe_size(),
                devices: v
                    .members()
                    .iter()
                    .map(|m| m.device.name().to_owned())
                    .collect(),
                role: self.volume_role(v.name()),
            })
            .collect();
        let devices = self
            .backplane
            .devices()
            .iter()
            .zip(&self.config.devices)
            .map(|(d, dc)| DeviceStatus {
                name: d.device.name().to_owned(),
                kind: device_kind(dc).to_owned(),
                size: d.device.size(),
                reads: load(&d.metrics.reads),
                writes: load(&d.metrics.writes),
                errors: load(&d.metrics.errors),
            })
            .collect();
        let mut controllers = nvme::controllers(&self.block);
        let workers = self.stream.as_ref().map(|s| s.workers_up());
        for c in &mut controllers {
            if let Some(h) = self.controllers.get(c.index) {
                let age = h.heartbeat().age();
                c.heartbeat_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                c.reactor = if !h.is_alive() {
                    status::Liveness::Stopped
                } else if c.heartbeat_age_ms > status::STUCK_AFTER_MS {
                    status::Liveness::Stuck
                } else {
                    status::Liveness::Up
                };
            }
            c.stream_worker = match workers.as_ref().and_then(|w| w.get(c.index)) {
                None => status::WorkerState::None,
                Some(true) => status::WorkerState::Up,
                Some(false) => status::WorkerState::Stopped,
            };
        }
        let stream = self.stream.as_ref().map(|s| {
            let m = s.metrics();
            let used = load(&m.store_used);
            let capacity = load(&m.store_capacity);
            status::StreamStatus {
                control: s.control().to_string(),
                http: s.http().map(|a| a.to_string()),
                data_ports: s.data_ports().to_vec(),
                store_used: used,
                store_capacity: capacity,
                store_free: capacity.saturating_sub(used),
            }
        });
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            controllers,
            subsystems: nvme::subsystems(&self.block),
            ana: ana::status(&self.block),
            volumes,
            devices,
            sessions: self
                .stream
                .as_ref()
                .map(|s| {
                    s.sessions()
                        .into_iter()
                        .map(|(id, content, controllers, blocks_sent, blocks, _)| {
                            status::SessionStatus {
                                id,
                                content,
                                controllers,
                                blocks_sent,
                                blocks,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            stream,
        }
    }

    fn volume_role(&self, volume: &str) -> String {
        if self
            .config
            .stream
            .as_ref()
            .is_some_and(|s| s.volume == volume)
        {
            return "content store".into();
        }
        for (nqn, namespaces) in self.block.namespaces() {
            for ns in namespaces {
                if ns.volume == volume {
                    return format!("{nqn}/{}", ns.nsid);
                }
            }
        }
        String::new()
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("baton");
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }

    fn encode_devices(&self, f: &mut Families<'_>) -> Result<(), std::fmt::Error> {
        let devs = self.backplane.devices();
        let per = |pick: fn(&backplane::DeviceMetrics) -> &std::sync::atomic::AtomicU64| {
            devs.iter().map(move |d| {
                (
                    labels([("device", d.device.name().to_owned())]),
                    load(pick(&d.metrics)),
                )
            })
        };
        f.counter(
            "device_reads",
            "Read operations completed by a backplane device.",
            per(|m| &m.reads),
        )?;
        f.counter(
            "device_read_bytes",
            "Bytes read from a backplane device.",
            per(|m| &m.read_bytes),
        )?;
        f.counter(
            "device_writes",
            "Write operations completed by a backplane device.",
            per(|m| &m.writes),
        )?;
        f.counter(
            "device_write_bytes",
            "Bytes written to a backplane device.",
            per(|m| &m.write_bytes),
        )?;
        f.counter(
            "device_flushes",
            "Flushes of a backplane device.",
            per(|m| &m.flushes),
        )?;
        f.counter(
            "device_trims",
            "Deallocate and write-zeroes operations on a device.",
            per(|m| &m.trims),
        )?;
        f.counter(
            "device_errors",
            "Failed operations on a backplane device.",
            per(|m| &m.errors),
        )?;
        f.gauge(
            "device_capacity_bytes",
            "Capacity of a backplane device.",
            devs.iter().map(|d| {
                (
                    labels([("device", d.device.name().to_owned())]),
                    exporter::gauge_value(d.device.size()),
                )
            }),
        )?;
        f.gauge(
            "device_queue_pairs",
            "Hardware I/O queue pairs held on an nvme-pcie device (one per controller handle).",
            devs.iter().filter_map(|d| {
                d.device.queue_pairs().map(|n| {
                    (
                        labels([("device", d.device.name().to_owned())]),
                        exporter::gauge_value(n),
                    )
                })
            }),
        )?;
        f.counter(
            "device_resets",
            "Controller resets that brought a path of an nvme-pcie device back after a fatal status.",
            devs.iter().filter_map(|d| {
                d.device.resets().map(|n| {
                    (labels([("device", d.device.name().to_owned())]), n)
                })
            }),
        )?;
        f.gauge(
            "device_down",
            "1 while a path of an nvme-pcie device stays down after failed controller resets.",
            devs.iter().filter_map(|d| {
                d.device.is_down().map(|down| {
                    (
                        labels([("device", d.device.name().to_owned())]),
                        i64::from(down),
                    )
                })
            }),
        )?;
        f.gauge(
            "volume_capacity_bytes",
            "Capacity of a volume.",
            self.backplane.volumes().iter().map(|v| {
                (
                    labels([("volume", v.name().to_owned())]),
                    exporter::gauge_value(v.size()),
                )
            }),
        )?;
        Ok(())
    }
}

impl Collector for Admin {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut f = Families::new(encoder);
        f.gauge(
            "uptime_seconds",
            "Seconds since the appliance started.",
            [(
                labels([]),
                exporter::gauge_value(self.started.elapsed().as_secs()),
            )],
        )?;
        f.gauge(
            "controller_up",
            "1 while the controller thread takes work (see the heartbeat for a stuck one).",
            self.controllers.iter().map(|h| {
                (
                    labels([("controller", h.index().to_string())]),
                    i64::from(h.is_alive()),
                )
            }),
        )?;
        f.gauge(
            "controller_heartbeat_age_seconds",
            "Seconds since the controller's reactor last turned (it beats every 0.25 s).",
            self.controllers.iter().map(|h| {
                (
                    labels([("controller", h.index().to_string())]),
                    h.heartbeat().age().as_secs_f64(),
                )
            }),
        )?;
        self.encode_devices(&mut f)?;
        nvme::encode(&self.block, &mut f)?;
        ana::encode(&self.block, &mut f)?;
        if let Some(s) = &self.stream {
            stream_metrics::encode(s, &mut f)?;
        }
        Ok(())
    }
}

fn device_kind(dc: &DeviceConfig) -> &'static str {
    match dc {
        DeviceConfig::Ram { .. } => "ram",
        DeviceConfig::File { .. } => "file",
        DeviceConfig::NvmePcie { .. } => "nvme-pcie",
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// Why an admin request from the CLI failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The appliance could not be reached.
    #[error("cannot reach the appliance's admin endpoint at {addr}")]
    Connect {
        /// Address tried.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The appliance refused the request.
    #[error("the appliance answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
    /// The answer was not understood.
    #[error("unexpected answer from the appliance")]
    Decode(#[from] serde_json::Error),
}

/// Sends `method path` to the admin endpoint at `addr` and returns the body of a 2xx answer.
pub fn call(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
) -> Result<hyper::body::Bytes, AdminClientError> {
    call_with_token(addr, method, path, None)
}

/// [`call`] with the admin token, which every action that changes something needs.
pub fn call_with_token(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<hyper::body::Bytes, AdminClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AdminClientError::Connect { addr, source })?;
    let (status, body) = rt
        .block_on(http::request(addr, method, path, token))
        .map_err(|source| AdminClientError::Connect { addr, source })?;
    if !(200..300).contains(&status) {
        return Err(AdminClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(body)
}

/// Fetches a running appliance's status.
pub fn fetch_status(addr: std::net::SocketAddr) -> Result<Status, AdminClientError> {
    let body = call(addr, Method::GET, "/api/v1/status")?;
    Ok(serde_json::from_slice(&body)?)
}

/// Routes admin requests for one appliance; requests that change something must pass
/// [`auth::AdminToken::authorize`].
#[derive(Debug)]
pub struct AdminRouter {
    admin: Arc<Admin>,
    token: auth::AdminToken,
}

impl AdminRouter {
    /// A router for `admin` whose actions need `token`.
    pub fn new(admin: Arc<Admin>, token: auth::AdminToken) -> Self {
        Self { admin, token }
    }
}

/// Endpoints anyone who reaches the admin address may read.
fn is_read_only(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && matches!(
            path,
            "/metrics" | "/api/v1/status" | "/api/v1/ana" | "/healthz"
        )
}

impl Router for AdminRouter {
    async fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &hyper::HeaderMap,
    ) -> Response<Body> {
        if !is_read_only(method, path) {
            if let Err(refusal) = self.token.authorize(headers) {
                let status = match refusal {
                    auth::Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
                    auth::Refusal::ForeignHost | auth::Refusal::ForeignOrigin => {
                        StatusCode::FORBIDDEN
                    }
                };
                tracing::warn!(%method, path, reason = %refusal, "admin request refused");
                let mut resp = http::error(status, &refusal.to_string());
                if status == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                }
                return resp;
            }
        }
        match (method, path) {
            (&Method::GET, "/metrics") => match self.admin.metrics_text() {
                Ok(text) => http::text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ),
                Err(_) => http::error(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
            },
            (&Method::GET, "/api/v1/status") => http::json(StatusCode::OK, &self.admin.status()),
            (&Method::GET, "/healthz") => http::text(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/api/v1/ana") => {
                http::json(StatusCode::OK, &ana::status(&self.admin.block))
            }
            (&Method::POST, p) if ana::set_path(p).is_some() => match ana::set_path(p) {
                Some(Ok((index, group, state))) => {
                    match ana::set(&self.admin.block, index, group, state) {
                        Ok(msg) => http::text(StatusCode::OK, "text/plain", msg),
                        Err(e) => http::error(StatusCode::BAD_REQUEST, &e),
                    }
                }
                Some(Err(e)) => http::error(StatusCode::BAD_REQUEST, &e),
                None => http::error(StatusCode::NOT_FOUND, "no such endpoint"),
            },
            (&Method::POST, p) if action_path(p, "stop-streams").is_some() => {
                let Some(Ok(index)) = action_path(p, "stop-streams") else {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "controller index is not a number",
                    );
                };
                match self.admin.stream.as_ref() {
                    Some(s) if s.stop_controller(index) => {
                        http::text(StatusCode::OK, "text/plain", "stopped\n")
                    }
                    Some(_) => {
                        http::error(StatusCode::NOT_FOUND, &format!("no controller {index}"))
                    }
                    None => http::error(
                        StatusCode::NOT_FOUND,
                        "the stream service is not configured",
                    ),
                }
            }
            (&Method::POST, p) if drop_path(p).is_some() => {
                let Some(Ok(index)) = drop_path(p) else {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "controller index is not a number",
                    );
                };
                match self.admin.drop_connections(index).await {
                    Ok(()) => http::text(StatusCode::OK, "text/plain", "dropped\n"),
                    Err(e) => http::error(StatusCode::NOT_FOUND, &e),
                }
            }
            (&Method::POST | &Method::DELETE, p) if hosts::host_path(p).is_some() => {
                let Some((nqn, host)) = hosts::host_path(p) else {
                    return http::error(StatusCode::NOT_FOUND, "no such endpoint");
                };
                match hosts::change(&self.admin.block, nqn, host, *method == Method::POST) {
                    Ok(msg) => http::text(StatusCode::OK, "text/plain", msg),
                    Err(e) => http::error(StatusCode::BAD_REQUEST, &e),
                }
            }
            (&Method::POST | &Method::DELETE, p) if namespaces::namespace_path(p).is_some() => {
                let Some((nqn, nsid)) = namespaces::namespace_path(p) else {
                    return http::error(StatusCode::NOT_FOUND, "no such endpoint");
                };
                let nsid = match nsid {
                    Ok(n) => n,
                    Err(e) => return http::error(StatusCode::BAD_REQUEST, &e),
                };
                let add = if *method == Method::POST {
                    match namespaces::parse_query(nsid, query) {
                        Ok(ns) => Some(ns),
                        Err(e) => return http::error(StatusCode::BAD_REQUEST, &e),
                    }
                } else {
                    None
                };
                let (block, nqn) = (Arc::clone(&self.admin.block), nqn.to_owned());
                change_response(move || namespaces::change(&block, &nqn, nsid, add)).await
            }
            (&Method::POST | &Method::DELETE, p) if subsystems::subsystem_path(p).is_some() => {
                let Some(nqn) = subsystems::subsystem_path(p) else {
                    return http::error(StatusCode::NOT_FOUND, "no such endpoint");
                };
                let add = if *method == Method::POST {
                    match subsystems::parse_query(nqn, query) {
                        Ok(s) => Some(s),
                        Err(e) => return http::error(StatusCode::BAD_REQUEST, &e),
                    }
                } else {
                    None
                };
                let (block, nqn) = (Arc::clone(&self.admin.block), nqn.to_owned());
                change_response(move || subsystems::change(&block, &nqn, add)).await
            }
            (_, "/metrics" | "/api/v1/status" | "/api/v1/ana" | "/healthz") => {
                http::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => http::error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}

/// Runs a run-time change of the block service off the admin runtime (it waits for every
/// controller thread to take it) and answers with what happened: 404 for a subsystem or
/// namespace that does not exist, 400 for a refusal.
async fn change_response(
    change: impl FnOnce() -> Result<String, crate::block::ChangeError> + Send + 'static,
) -> Response<Body> {
    match tokio::task::spawn_blocking(change).await {
        Ok(Ok(msg)) => http::text(StatusCode::OK, "text/plain", msg),
        Ok(Err(e @ crate::block::ChangeError::NotFound(_))) => {
            http::error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Ok(Err(e)) => http::error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => http::error(StatusCode::INTERNAL_SERVER_ERROR, "the change failed"),
    }
}

/// `Some(index)` for `/api/v1/controllers/{index}/drop-connections`.
fn drop_path(path: &str) -> Option<Result<usize, std::num::ParseIntError>> {
    action_path(path, "drop-connections")
}

/// `Some(index)` for `/api/v1/controllers/{index}/{action}`.
fn action_path(path: &str, action: &str) -> Option<Result<usize, std::num::ParseIntError>> {
    let rest = path.strip_prefix("/api/v1/controllers/")?;
    let index = rest.strip_suffix(action)?.strip_suffix('/')?;
    Some(index.parse())
}
