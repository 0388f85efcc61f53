//! One PCIe controller of the namespace (a path), shared by every thread's handle on it, and
//! its recovery by a controller reset.
//!
//! A path has a generation. Each handle's queue pair belongs to the generation it was
//! created in; a handle that sees the controller fatal, or whose queue cannot be deleted or
//! created on a live controller, moves the generation on ([`Path::fail`]). Every handle then
//! finds its queue stale: it fails what it has in flight, and reconnects
//! ([`Path::reconnect`]): the first to take the path's lock resets the controller (as
//! `nvme_reset_ctrl` in Linux or `spdk_nvme_ctrlr_reset` in SPDK), each then creates a new
//! queue pair of the new generation. Failed resets back off (100 ms doubling to 5 s); after
//! [`MAX_RESET_ATTEMPTS`] in a row the path stays down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use ffi::PciDevice;
use nvme_driver::{Controller, DriverError, IoQueue};
use tokio::sync::watch;

/// Consecutive failed recoveries (a reset, or the first queue pair after it) after which a
/// path stays down.
pub const MAX_RESET_ATTEMPTS: u32 = 5;
/// Wait after the first failed reset; it doubles with each further failure.
const RESET_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two resets.
const RESET_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counters shared by every path of a namespace, read by the exporter.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// I/O queue pairs created (first ones, replacements and those after resets).
    pub queue_pairs: AtomicU64,
    /// Successful controller resets.
    pub resets: AtomicU64,
}

/// What is changed under the path's lock.
pub(super) struct Ctl<D: PciDevice> {
    pub dev: Arc<D>,
    /// Brought up when a handle first uses the path.
    pub ctrl: Option<Controller<D>>,
    /// The generation the controller was last brought up for: the path is ready when this
    /// is its current generation.
    ready: u64,
    /// Failed recoveries in a row.
    failures: u32,
    /// No reset before this.
    retry_at: Option<Instant>,
}

/// One PCIe controller and the state its handles share.
pub(super) struct Path<D: PciDevice> {
    generation: AtomicU64,
    /// The newest generation for which the controller was disabled: the device writes no
    /// queue nor buffer of an older generation any more.
    quiesced: AtomicU64,
    down: AtomicBool,
    /// Wakes idle handles when the generation moves on or a reset completes.
    changed: watch::Sender<u64>,
    ctl: Mutex<Ctl<D>>,
}

/// The outcome of one [`Path::reconnect`].
pub(super) enum Step<D: PciDevice> {
    /// A new queue pair of this generation.
    Ready(Box<IoQueue<D>>, u64),
    /// Try again after this long (a reset failed and backs off).
    Wait(Duration),
    /// The path stays down.
    Down,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<D: PciDevice> Path<D> {
    pub fn new(dev: Arc<D>, ctrl: Option<Controller<D>>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            quiesced: AtomicU64::new(0),
            down: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            ctl: Mutex::new(Ctl {
                dev,
                ctrl,
                ready: 0,
                failures: 0,
                retry_at: None,
            }),
        }
    }

    /// The current generation (one atomic load: the handles check it per request).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The newest generation for which the controller was disabled: buffers and queues of
    /// older generations are safe from the device.
    pub fn quiesced(&self) -> u64 {
        self.quiesced.load(Ordering::Acquire)
    }

    /// Whether the path stays down after failed resets.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// A receiver that sees generation changes and completed resets.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits for the lock (at bring-up, and in [`Path::reconnect`] off the reactor).
    pub fn lock(&self) -> MutexGuard<'_, Ctl<D>> {
        lock(&self.ctl)
    }

    /// The lock if nobody holds it (a reactor never waits for a reset in progress).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Ctl<D>>> {
        match self.ctl.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The controller of generation `seen` is unusable (`why`): the path needs a reset.
    /// Several handles may see it; the generation moves on once.
    pub fn fail(&self, seen: u64, why: &str) {
        let next = seen + 1;
        if self
            .generation
            .compare_exchange(seen, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(generation = next, why, "NVMe controller needs a reset");
            self.changed.send_replace(next);
        }
    }

    /// Brings the calling handle a queue pair of the current generation: resets the
    /// controller first unless it was already brought up for it (by another handle), and
    /// backs off after failures. Blocks on the lock and on the admin commands (each with a
    /// timeout): runs off the reactor, or at bring-up.
    pub fn reconnect(&self, depth: u16, timeout: Duration, counters: &Counters) -> Step<D> {
        let mut ctl = self.lock();
        self.connect(&mut ctl, depth, timeout, counters)
    }

    /// [`Path::reconnect`] with the lock held.
    pub fn connect(
        &self,
        ctl: &mut Ctl<D>,
        depth: u16,
        timeout: Duration,
        counters: &Counters,
    ) -> Step<D> {
        if self.is_down() {
            return Step::Down;
        }
        let generation = self.generation();
        if ctl.ready != generation {
            if let Some(at) = ctl.retry_at {
                let now = Instant::now();
                if now < at {
                    return Step::Wait(at - now);
                }
            }
            if let Err(e) = self.reset(ctl, generation) {
                return self.failed(ctl, generation, "reset", &e);
            }
            ctl.ready = generation;
            ctl.retry_at = None;
            counters.resets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(generation, "NVMe controller reset");
            self.changed.send_replace(generation);
        }
        let ctrl = ctl.ctrl.as_mut().expect("a ready path has a controller");
        match ctrl.create_io_queue(depth, timeout) {
            Ok(q) => {
                ctl.failures = 0;
                counters.queue_pairs.fetch_add(1, Ordering::Relaxed);
                Step::Ready(Box::new(q), generation)
            }
            Err(e) => {
                self.fail(generation, "no new I/O queue");
                self.failed(ctl, generation, "I/O queue creation", &e)
            }
        }
    }

    /// Controller reset for `generation`: disable (after which the device writes nothing
    /// of an older generation), then enable.
    fn reset(&self, ctl: &mut Ctl<D>, generation: u64) -> Result<(), DriverError> {
        match ctl.ctrl.as_mut() {
            Some(c) => {
                c.disable()?;
                self.quiesced.fetch_max(generation, Ordering::AcqRel);
                c.enable()
            }
            None => {
                ctl.ctrl = Some(Controller::new(Arc::clone(&ctl.dev))?);
                self.quiesced.fetch_max(generation, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    /// Counts a failed recovery: backs off, or gives the path up after too many.
    fn failed(
        &self,
        ctl: &mut Ctl<D>,
        generation: u64,
        what: &'static str,
        e: &DriverError,
    ) -> Step<D> {
        ctl.failures += 1;
        if ctl.failures >= MAX_RESET_ATTEMPTS {
            self.down.store(true, Ordering::Release);
            self.changed.send_replace(generation);
            tracing::error!(
                generation,
                attempts = ctl.failures,
                error = %e,
                "NVMe controller {what} failed again: the path stays down"
            );
            return Step::Down;
        }
        let backoff = RESET_BACKOFF
            .saturating_mul(1 << (ctl.failures - 1).min(16))
            .min(RESET_BACKOFF_MAX);
        ctl.retry_at = Some(Instant::now() + backoff);
        tracing::warn!(
            generation,
            attempts = ctl.failures,
            ?backoff,
            error = %e,
            "NVMe controller {what} failed: trying again"
        );
        Step::Wait(backoff)
    }
}
