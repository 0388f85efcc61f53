//! Accepting TCP connections under limits, the one way every listener of the appliance
//! accepts: NVMe/TCP ports and discovery, the stream service's control, data and HTTP ports,
//! and the admin API (the mini-redis `Listener` habit).
//!
//! * A per-listener connection limit, so a flood on one service cannot starve another; a
//!   connection over it is refused cleanly (an optional protocol-specific answer written
//!   without waiting, then close) instead of waiting in the backlog.
//! * A process-wide descriptor budget ([`Budget`]), so connections never take the descriptors
//!   devices, files and other services need: accepting stops at the budget, not at `EMFILE`.
//! * Accept backoff: when the kernel refuses to accept (`EMFILE`, `ENFILE`, `ENOBUFS`,
//!   `ENOMEM`) the pending connection is refused through a reserve descriptor and the loop
//!   sleeps with an exponential backoff, so it never spins.
//!
//! Timeouts (handshake, idle, send) belong to each protocol's handler; [`Limits`] carries
//! their configured values to it.

#![forbid(unsafe_code)]

mod budget;
mod reserve;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

pub use budget::{Budget, raise_descriptor_limit};

/// Limits a service applies to its connections; one value per listener kind, from the
/// configuration's `limits` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on one listener; more are refused.
    pub max_connections: usize,
    /// From accept to the end of the protocol's first exchange (ICReq + Connect, an HTTP
    /// request head, ATTACH, a control request line).
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight and no keep-alive that stays silent this long is
    /// closed.
    pub idle_timeout: Duration,
    /// A peer that accepts no bytes of a pending send for this long is dropped.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of one listener, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections admitted.
    pub accepted: AtomicU64,
    /// Connections refused: over the listener's limit or the descriptor budget, or accepted
    /// through the reserve descriptor while the process had none left.
    pub refused: AtomicU64,
    /// Accept calls that failed for lack of resources (each followed by a backoff).
    pub errors: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// A listening socket that admits connections under a limit.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    service: &'static str,
    limit: usize,
    refusal: &'static [u8],
    budget: Budget,
    stats: Arc<Stats>,
    backoff: Duration,
}

/// An admitted connection. Its [`Slot`] must live as long as the connection: dropping it
/// gives the place back to the listener and the descriptor budget.
#[derive(Debug)]
pub struct Admitted {
    /// The connection.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's place under the limits.
    pub slot: Slot,
}

/// A connection's place under its listener's limit and the descriptor budget.
#[derive(Debug)]
pub struct Slot {
    stats: Arc<Stats>,
    budget: Budget,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::AcqRel);
        self.budget.release();
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Listener {
    /// Wraps a bound, non-blocking listener. `service` names it in logs; `limit` caps its
    /// open connections; `budget` is the process's descriptor budget.
    pub fn new(inner: TcpListener, service: &'static str, limit: usize, budget: Budget) -> Self {
        reserve::ensure();
        Self {
            inner,
            service,
            limit: limit.max(1),
            refusal: &[],
            budget,
            stats: Arc::new(Stats::default()),
            backoff: Duration::ZERO,
        }
    }

    /// Bytes written (without waiting) to a connection that is refused, before it is
    /// closed: an HTTP 503, a JSON error line. Empty (the default) just closes.
    #[must_use]
    pub fn with_refusal(mut self, refusal: &'static [u8]) -> Self {
        self.refusal = refusal;
        self
    }

    /// The listener's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits for the next connection it may admit. Connections over the limits are refused
    /// and never returned; resource errors back off. Cancel-safe: a connection is either
    /// returned or refused, never lost between the two.
    pub async fn accept(&mut self) -> Admitted {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    self.on_error(&e).await;
                    continue;
                }
            };
            self.backoff = Duration::ZERO;
            if self.stats.open.load(Ordering::Acquire) >= self.limit || !self.budget.try_take() {
                self.refuse(stream);
                continue;
            }
            self.stats.open.fetch_add(1, Ordering::AcqRel);
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            return Admitted {
                stream,
                peer,
                slot: Slot {
                    stats: Arc::clone(&self.stats),
                    budget: self.budget.clone(),
                },
            };
        }
    }

    /// Writes the refusal if the socket takes it at once, then closes.
    fn refuse(&self, stream: TcpStream) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        if !self.refusal.is_empty() {
            // A refused peer gets what fits in the socket buffer now, never a wait.
            let _ = stream.try_write(self.refusal);
        }
    }

    async fn on_error(&mut self, e: &io::Error) {
        if !is_resource_error(e) {
            // ECONNABORTED and the like concern one pending connection only.
            return;
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if reserve::refuse_one(&self.inner) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        if self.backoff == BACKOFF_MIN || self.backoff == BACKOFF_MAX {
            warn!(service = self.service, error = %e, backoff_ms = self.backoff.as_millis(),
                "accept failed for lack of resources; backing off");
        }
        tokio::time::sleep(self.backoff).await;
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

#[cfg(test)]
mod tests;
