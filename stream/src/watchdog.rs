//! One watchdog for every face: from the first baton to the end of a session, it waits for
//! the session's events and re-plans it over the live controllers when the baton stops
//! moving. A stall while a controller is writing to the client is the client's and is left
//! to the send timeout; a stall anywhere else is the controller's. An HTTP session's
//! socket travels with the baton: a re-plan waits for it to come home (the stale baton
//! gives it back) and hands it to the new plan, so the body goes on where it stopped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::warn;

use super::coordinator::{CoordRef, send_reply};
use super::proto::{Plan, Reply};
use super::{Event, Failure, Phase, Session};

/// How the session reaches its client.
pub(super) enum Face<'a> {
    /// Framed data channels; re-plans are announced on the control connection, whose
    /// closing ends the session.
    Framed {
        rd: &'a mut BufReader<OwnedReadHalf>,
        wr: &'a mut OwnedWriteHalf,
    },
    /// The client's HTTP socket, handed to the first baton.
    Http(std::net::TcpStream),
    /// An HTTP session after its socket went to the first baton.
    HttpStarted,
}

/// Whether a paced session is waiting for its next deadline (not a stall).
fn paced_wait(s: &Session, sent: u64) -> bool {
    let Some(rate) = s.rate.filter(|&r| r > 0) else {
        return false;
    };
    let t0 = *s
        .t0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    t0.is_some_and(|t0| {
        let due = (sent * s.block_size) as f64 * 8.0 / rate as f64;
        t0 + Duration::from_secs_f64(due) > Instant::now()
    })
}

fn take_home(s: &Session) -> Option<std::net::TcpStream> {
    s.home
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Starts the session's baton and watches it to the end: `Ok` when every block was
/// delivered, the reason otherwise. The caller ends the session with the result.
pub(super) async fn supervise(
    coord: &CoordRef,
    s: &Arc<Session>,
    mut plan: Arc<Plan>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut face: Face<'_>,
) -> Result<(), Failure> {
    let timeout = coord.shared.cfg.sync_timeout;
    let send_timeout = coord.shared.cfg.limits.send_timeout;
    if !s.advance(Phase::Streaming) {
        return Err(Failure::Shutdown);
    }
    face = match face {
        Face::Http(sock) => {
            coord.kick(s, &plan, Some(sock));
            Face::HttpStarted
        }
        framed @ Face::Framed { .. } => {
            coord.kick(s, &plan, None);
            framed
        }
        Face::HttpStarted => return Err(Failure::ClientGone),
    };
    let mut last = (s.sent.load(Ordering::Acquire), Instant::now());
    // HTTP: a new plan waiting for the socket to come home, since when.
    let mut waiting: Option<Instant> = None;
    let mut tick = tokio::time::interval(timeout / 4);
    let mut probe = [0u8; 1];
    loop {
        let control_closed = async {
            match &mut face {
                Face::Framed { rd, .. } => {
                    // Any byte or EOF: the client closed (or broke) the control connection.
                    let _ = rd.read(&mut probe).await;
                }
                Face::Http(_) | Face::HttpStarted => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Finished(_)) => return Ok(()),
                Some(Event::Failed(_, f)) => return Err(f),
                Some(Event::BatonHome(_)) => {
                    let Some(sock) = take_home(s) else { continue };
                    if waiting.take().is_none() {
                        // Not asked for: the baton was dropped on its way (a stopped or dead
                        // controller). Re-plan at once.
                        plan = coord.replan(s, &plan).ok_or(Failure::NoController)?;
                    }
                    plan = coord.rebase(s, &plan);
                    last = (s.sent.load(Ordering::Acquire), Instant::now());
                    coord.kick(s, &plan, Some(sock));
                }
                Some(Event::Attached(_)) => {}
                None => return Err(Failure::Shutdown),
            },
            () = control_closed => return Err(Failure::ClientGone),
            _ = tick.tick() => {
                let sent = s.sent.load(Ordering::Acquire);
                if sent != last.0 {
                    last = (sent, Instant::now());
                    continue;
                }
                if let Some(since) = waiting {
                    // The stale baton returns the socket once its send ends, which the send
                    // timeout bounds.
                    if since.elapsed() > timeout + send_timeout * 2 {
                        warn!(session = s.id, "the HTTP socket never came back to the coordinator");
                        return Err(Failure::ClientGone);
                    }
                    continue;
                }
                if paced_wait(s, sent)
                    || s.sending.load(Ordering::Acquire)
                    || last.1.elapsed() < timeout
                {
                    continue;
                }
                plan = coord.replan(s, &plan).ok_or(Failure::NoController)?;
                last = (sent, Instant::now());
                match &mut face {
                    Face::Framed { wr, .. } => {
                        send_reply(wr, &Reply::Replan((*plan).clone()), send_timeout)
                            .await
                            .map_err(|_| Failure::ClientGone)?;
                        coord.kick(s, &plan, None);
                    }
                    Face::Http(_) | Face::HttpStarted => match take_home(s) {
                        Some(sock) => {
                            plan = coord.rebase(s, &plan);
                            coord.kick(s, &plan, Some(sock));
                        }
                        None => waiting = Some(Instant::now()),
                    },
                }
            }
        }
    }
}
