//! Controllers: one OS thread each (pinned to a core), each with its own single-threaded
//! async runtime. Work reaches a controller as a message; everything it runs stays on its
//! thread, so the I/O path needs no locks.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

/// A unit of work run on a controller thread, inside its `LocalSet`: it may call
/// `tokio::task::spawn_local`.
pub type Job = Box<dyn FnOnce() + Send>;

enum Msg {
    Run(Job),
    Stop,
}

/// How often a controller's reactor proves it still turns.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// A controller reactor's liveness: the reactor stores the time of its last turn, so a
/// stopped or stuck reactor (a task that blocks the thread) shows as a growing age.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Microseconds from `origin` to the last beat.
    last_us: AtomicU64,
    /// Beats so far.
    beats: AtomicU64,
}

impl Heartbeat {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_us: AtomicU64::new(0),
            beats: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_us.store(us, Ordering::Relaxed);
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the reactor last turned (since start if it never did).
    pub fn age(&self) -> Duration {
        let last = Duration::from_micros(self.last_us.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Beats so far.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// A controller's mailbox; cheap to clone and send anywhere.
#[derive(Clone, Debug)]
pub struct ControllerHandle {
    index: usize,
    tx: mpsc::UnboundedSender<Msg>,
    heartbeat: Arc<Heartbeat>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Run(_) => "Run",
            Msg::Stop => "Stop",
        })
    }
}

/// The controller thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("controller {0} has stopped")]
pub struct ControllerGone(pub usize);

impl ControllerHandle {
    /// This controller's index (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the controller thread is still taking jobs.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The reactor's liveness signal.
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// Runs `job` on the controller thread.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), ControllerGone> {
        self.tx
            .send(Msg::Run(Box::new(job)))
            .map_err(|_| ControllerGone(self.index))
    }
}

/// The running controller threads.
#[derive(Debug)]
pub struct Controllers {
    handles: Vec<ControllerHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Starts `count` controller threads; with `pin`, controller i runs on core
    /// `i % cores`.
    pub fn start(count: usize, pin: bool) -> io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let core = pin.then_some(index % cores);
            let heartbeat = Arc::new(Heartbeat::new());
            let hb = Arc::clone(&heartbeat);
            let thread = std::thread::Builder::new()
                .name(format!("baton-ctrl-{index}"))
                .spawn(move || run_controller(index, core, runtime, rx, &hb))?;
            handles.push(ControllerHandle {
                index,
                tx,
                heartbeat,
            });
            threads.push(thread);
        }
        Ok(Self { handles, threads })
    }

    /// Mailboxes, by controller index.
    pub fn handles(&self) -> &[ControllerHandle] {
        &self.handles
    }

    /// Number of controllers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are no controllers.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops taking jobs and waits until every task each controller spawned has finished
    /// (tasks end on the service shutdown signal).
    pub fn join(self) {
        for h in &self.handles {
            // A controller that already exited has nothing left to stop.
            let _ = h.tx.send(Msg::Stop);
        }
        for (index, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() {
                warn!(controller = index, "controller thread panicked");
            }
        }
    }
}

fn run_controller(
    index: usize,
    core: Option<usize>,
    runtime: tokio::runtime::Runtime,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    heartbeat: &Heartbeat,
) {
    if let Some(core) = core {
        if let Err(e) = pin_to(core) {
            warn!(controller = index, core, error = %e, "cannot pin controller");
        }
    }
    info!(controller = index, ?core, "controller started");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        // The beat is a turn of this loop, which shares the thread with every task the
        // controller runs: a task that blocks the thread stops the heartbeat too.
        let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Run(job)) => job(),
                    Some(Msg::Stop) | None => break,
                },
                _ = beat.tick() => heartbeat.beat(),
            }
        }
    });
    // Let every spawned task (connections, streams) run to its end.
    runtime.block_on(local);
    info!(controller = index, "controller stopped");
}

fn pin_to(core: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn jobs_run_on_their_own_controller_thread() {
        let controllers = Controllers::start(2, false).unwrap();
        let (tx, rx) = std_mpsc::channel();
        for h in controllers.handles() {
            let tx = tx.clone();
            let index = h.index();
            h.run(move || {
                // Spawned local tasks run on the same thread.
                tokio::task::spawn_local(async move {
                    tokio::task::yield_now().await;
                    let name = std::thread::current().name().map(str::to_owned);
                    tx.send((index, name)).unwrap();
                });
            })
            .unwrap();
        }
        drop(tx);
        controllers.join();
        let mut seen: Vec<_> = rx.iter().collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (0, Some("baton-ctrl-0".to_owned())),
                (1, Some("baton-ctrl-1".to_owned()))
            ]
        );
    }

    #[test]
    fn a_blocked_reactor_stops_its_heartbeat() {
        let controllers = Controllers::start(1, false).unwrap();
        let handle = controllers.handles()[0].clone();
        let hb = handle.heartbeat();
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(HEARTBEAT_INTERVAL / 2);
            }
        };
        wait_for("the reactor beats", &|| hb.beats() >= 2);
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        handle
            .run(move || {
                // A job that blocks the thread, as a stuck reactor would.
                let _ = blocked.recv();
            })
            .unwrap();
        wait_for("the age grows past four beats", &|| {
            hb.age() > HEARTBEAT_INTERVAL * 4
        });
        let beats = hb.beats();
        release.send(()).unwrap();
        wait_for("the reactor beats again", &|| hb.beats() > beats);
        controllers.join();
    }

    #[test]
    fn stopped_controller_refuses_jobs() {
        let controllers = Controllers::start(1, true).unwrap();
        let handle = controllers.handles()[0].clone();
        controllers.join();
        assert!(handle.run(|| {}).is_err());
    }
}
