//! `baton serve`: opens the backplane, starts the controllers and services, and runs until
//! SIGINT or SIGTERM, then shuts down gracefully; SIGHUP reloads the configuration.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::{Admin, AdminRouter};
use crate::block::BlockService;
use crate::config::Config;
use backplane::{Backplane, BackplaneError};
use controller::Controllers;

/// Why the appliance could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The backplane could not be opened.
    #[error("backplane")]
    Backplane(#[from] BackplaneError),
    /// The NVMe/TCP block service could not start.
    #[error("block service")]
    Block(#[from] crate::block::BlockError),
    /// The stream service could not start.
    #[error("stream service")]
    Stream(#[from] stream::StreamError),
    /// A listener or thread could not be started.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Builds a [`ServeError::Io`] naming what failed.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// A running appliance.
#[derive(Debug)]
pub struct Appliance {
    config: Arc<Config>,
    backplane: Arc<Backplane>,
    block: Arc<BlockService>,
    stream: Option<Arc<stream::StreamService>>,
    controllers: Controllers,
    admin: Arc<Admin>,
    admin_thread: Option<std::thread::JoinHandle<()>>,
    budget: listener::Budget,
    shutdown: watch::Sender<bool>,
}

impl Appliance {
    /// Opens the backplane and starts every configured service.
    pub fn start(config: Config) -> Result<Self, ServeError> {
        let config = Arc::new(config);
        let budget = descriptor_budget(&config)?;
        let backplane = Arc::new(config.open_backplane()?);
        let controllers = Controllers::start(config.controller_count(), config.controllers.pin)
            .map_err(io_err("starting controller threads"))?;
        let (shutdown, _) = watch::channel(false);
        let block = Arc::new(BlockService::start(
            &config,
            &backplane,
            &controllers,
            &shutdown,
            &budget,
        )?);
        let stream = match config.stream_settings() {
            Some(settings) => Some(Arc::new(stream::StreamService::start(
                &settings,
                &backplane,
                &controllers,
                &shutdown,
                &budget,
            )?)),
            None => None,
        };
        let admin = Arc::new(Admin::new(
            Arc::clone(&config),
            Arc::clone(&backplane),
            Arc::clone(&block),
            stream.clone(),
            controllers.handles().to_vec(),
        ));
        let admin_thread = match config.admin.address {
            Some(addr) => Some(start_admin(
                addr,
                Arc::clone(&admin),
                config.limits.admin(),
                // The admin API's places are set apart from the shared budget, so an operator
                // reaches it even while a flood holds every other descriptor.
                listener::Budget::new(config.limits.admin_connections),
                shutdown.subscribe(),
            )?),
            None => None,
        };
        info!(
            controllers = controllers.len(),
            devices = backplane.devices().len(),
            volumes = backplane.volumes().len(),
            "appliance started"
        );
        Ok(Self {
            config,
            backplane,
            block,
            stream,
            controllers,
            admin,
            admin_thread,
            budget,
            shutdown,
        })
    }

    /// The admin endpoint's state.
    pub fn admin(&self) -> &Arc<Admin> {
        &self.admin
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The NVMe/TCP block service.
    pub fn block(&self) -> &Arc<BlockService> {
        &self.block
    }

    /// The stream service, if configured.
    pub fn stream(&self) -> Option<&Arc<stream::StreamService>> {
        self.stream.as_ref()
    }

    /// The descriptor budget the NVMe/TCP and stream listeners' connections share (the admin
    /// API has its own).
    pub fn budget(&self) -> &listener::Budget {
        &self.budget
    }

    /// The backplane.
    pub fn backplane(&self) -> &Arc<Backplane> {
        &self.backplane
    }

    /// Signals every service to stop, waits for in-flight work to finish, and returns.
    pub fn shutdown(self) {
        info!("shutting down");
        // Receivers may all be gone already; that is a finished shutdown.
        let _ = self.shutdown.send(true);
        if let Some(s) = &self.stream {
            s.join();
        }
        self.controllers.join();
        if let Some(t) = self.admin_thread {
            // A panicked admin thread has nothing left to clean up.
            let _ = t.join();
        }
        info!("stopped");
    }
}

/// Runs the appliance until SIGINT or SIGTERM; SIGHUP reloads `path` (the file `config`
/// came from, if any; see [`crate::reload`]).
pub fn run(config: Config, path: Option<&std::path::Path>) -> Result<(), ServeError> {
    let mut running = config.clone();
    let appliance = Appliance::start(config)?;
    let block = Arc::clone(&appliance.block);
    notify_service_manager("READY=1");
    wait_for_signal(|| match path {
        None => warn!("SIGHUP: serving the embedded default, there is no file to reload"),
        Some(p) => match crate::reload::reload(p, &mut running, &block) {
            Ok(applied) if applied.is_empty() => info!("SIGHUP: configuration unchanged"),
            Ok(applied) => {
                for change in applied {
                    info!(%change, "SIGHUP: applied");
                }
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused, nothing changed"),
        },
    })
    .map_err(io_err("waiting for signals"))?;
    notify_service_manager("STOPPING=1");
    appliance.shutdown();
    Ok(())
}

/// Tells systemd (`Type=notify`) the appliance's state, when it started us with
/// `NOTIFY_SOCKET`: `READY=1` once every listener is bound and every service started.
fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    // A leading '@' names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        warn!(error = %e, state, "cannot notify the service manager");
    }
}

fn wait_for_signal(mut on_hangup: impl FnMut()) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SIGHUP reloads the configuration (its default action would kill the process).
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM"); break }
                _ = int.recv() => { info!("SIGINT"); break }
                _ = hup.recv() => on_hangup(),
            }
        }
        Ok(())
    })
}

/// Raises the descriptor limit and sizes the budget the service listeners' connections share:
/// the limit less `reserved_descriptors` and the admin API's own `admin_connections`.
fn descriptor_budget(config: &Config) -> Result<listener::Budget, ServeError> {
    let nofile =
        listener::raise_descriptor_limit().map_err(io_err("reading the descriptor limit"))?;
    let reserved = config.limits.reserved_descriptors + config.limits.admin_connections;
    let budget = listener::Budget::for_descriptor_limit(nofile, reserved);
    if budget.capacity() < 16 {
        return Err(ServeError::Io {
            what: format!(
                "the descriptor limit ({nofile}) leaves fewer than 16 connections after \
                 limits.reserved_descriptors and limits.admin_connections ({reserved})"
            ),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    info!(
        descriptors = nofile,
        connections = budget.capacity(),
        "descriptor budget"
    );
    Ok(budget)
}

fn start_admin(
    addr: std::net::SocketAddr,
    admin: Arc<Admin>,
    limits: listener::Limits,
    budget: listener::Budget,
    shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let what = || format!("admin endpoint on {addr}");
    let (token, token_file) = crate::admin::auth::AdminToken::resolve(admin.config())
        .map_err(io_err("reading or creating the admin token"))?;
    if let Some(f) = token_file {
        info!(file = %f.display(), "admin actions need the token in this file");
    }
    let listener = crate::admin::http::bind(addr).map_err(io_err(what()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err(what()))?;
    info!(%addr, "admin endpoint (/metrics, /api/v1/status)");
    std::thread::Builder::new()
        .name("baton-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let l = listener::Listener::new(l, "admin", limits.max_connections, budget)
                            .with_refusal(crate::admin::http::BUSY);
                        let router = Arc::new(AdminRouter::new(admin, token));
                        crate::admin::http::serve(l, router, limits, shutdown).await
                    }
                    Err(e) => tracing::error!(error = %e, "admin listener"),
                }
            });
        })
        .map_err(io_err(what()))
}
