//! Per-association controller state. The admin queue's connection creates it; its I/O
//! queues may be served by other controller threads (poll groups), so it is shared: what
//! the I/O path touches per command is lock-free ([`Word`]), the rest is behind locks that
//! only admin commands and queue setup take.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nvme_spec::log::ErrorLogEntry;
use tokio::sync::watch;
use tracing::info;

use crate::abort::AbortBox;
use crate::cell::{Locked, Word, lock};
use crate::resv::notices::CtrlNotices;

/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Asynchronous event requests held at once (AERL + 1).
pub const AER_LIMIT: usize = 4;

/// A controller: created by an admin queue Connect, joined by I/O queue Connects, destroyed
/// when its admin queue goes away or its keep-alive timer expires.
#[derive(Debug)]
pub struct Ctrl {
    /// Controller ID.
    pub cntlid: u16,
    /// Subsystem index (the discovery index for discovery controllers).
    pub subsys: usize,
    /// Host NQN.
    pub hostnqn: String,
    /// The member of its port's poll group that serves the admin queue.
    pub home: usize,
    /// Controller Configuration.
    pub cc: Word<u32>,
    /// Controller Status.
    pub csts: Word<u32>,
    /// Keep-alive timeout (zero: disabled).
    pub kato: Word<Duration>,
    /// Last command seen on any of its queues.
    pub last_seen: Word<Instant>,
    /// I/O queues granted by Set Features Number of Queues.
    pub io_queues_granted: Word<u16>,
    /// Connected I/O queues, bit `qid - 1` (see [`Ctrl::claim_io_queue`]).
    io_queues: Mutex<u128>,
    /// Asynchronous event configuration.
    pub aec: Word<u32>,
    /// Volatile write cache enabled.
    pub vwc_enabled: Word<bool>,
    /// Host identifier from the Connect data.
    pub hostid: Locked<[u8; 16]>,
    /// Error Recovery feature: TLER (bits 15:0).
    pub error_recovery: Word<u32>,
    /// The abort boxes of the controller's I/O queues, by queue ID.
    pub queues: Mutex<HashMap<u16, Weak<AbortBox>>>,
    /// Held Asynchronous Event Request command IDs.
    pub aers: Mutex<Vec<u16>>,
    /// Error information log, newest last.
    pub errors: Mutex<ErrorLog>,
    /// Asynchronous event notices owed and masked.
    pub events: crate::aen::Events,
    /// Reservation notifications, posted from any thread.
    pub(crate) notices: Arc<CtrlNotices>,
    kill: watch::Sender<bool>,
}

/// A bounded error information log.
#[derive(Debug, Default)]
pub struct ErrorLog {
    /// Entries, oldest first.
    pub entries: std::collections::VecDeque<ErrorLogEntry>,
    /// Errors recorded so far.
    pub count: u64,
}

impl ErrorLog {
    /// Records a failed command.
    pub fn record(&mut self, sqid: u16, cid: u16, status: u16, nsid: u32, lba: u64) {
        self.count += 1;
        let mut e = ErrorLogEntry::default();
        e.error_count.set(self.count);
        e.sqid.set(sqid);
        e.cmdid.set(cid);
        e.status.set(status << 1);
        e.lba.set(lba);
        e.nsid.set(nsid);
        e.trtype = nvme_spec::log::disc::TRTYPE_TCP;
        if self.entries.len() == ERROR_LOG_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }
}

impl Ctrl {
    /// A new, disabled controller, at home on member `home` of its port's group.
    pub fn new(
        cntlid: u16,
        subsys: usize,
        hostnqn: String,
        kato: Duration,
        io_queues: u16,
        home: usize,
    ) -> Arc<Self> {
        let (kill, _) = watch::channel(false);
        Arc::new(Self {
            cntlid,
            subsys,
            hostnqn,
            home,
            cc: Word::new(0),
            csts: Word::new(0),
            kato: Word::new(kato),
            last_seen: Word::new(Instant::now()),
            io_queues_granted: Word::new(io_queues),
            io_queues: Mutex::new(0),
            aec: Word::new(0),
            vwc_enabled: Word::new(true),
            hostid: Locked::new([0; 16]),
            error_recovery: Word::new(0),
            queues: Mutex::new(HashMap::new()),
            aers: Mutex::new(Vec::with_capacity(AER_LIMIT)),
            errors: Mutex::new(ErrorLog::default()),
            events: crate::aen::Events::default(),
            notices: Arc::default(),
            kill,
        })
    }

    /// Watches for the controller's teardown.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.kill.subscribe()
    }

    /// Tears the controller down: every connection of it closes.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Whether the controller was torn down.
    pub fn is_dead(&self) -> bool {
        *self.kill.borrow()
    }

    /// Number of connected I/O queues.
    pub fn io_queue_count(&self) -> u16 {
        u16::try_from(lock(&self.io_queues).count_ones()).unwrap_or(u16::MAX)
    }

    /// Marks I/O queue `qid` connected; false if it is out of the granted range or already
    /// connected (Connects of two queues may race on two threads: one check-and-set).
    pub fn claim_io_queue(&self, qid: u16) -> bool {
        let Some(bit) = qid
            .checked_sub(1)
            .and_then(|b| 1u128.checked_shl(u32::from(b)))
        else {
            return false;
        };
        let mut q = lock(&self.io_queues);
        if qid > self.io_queues_granted.get() || *q & bit != 0 {
            return false;
        }
        *q |= bit;
        true
    }

    /// Marks I/O queue `qid` disconnected.
    pub fn release_io_queue(&self, qid: u16) {
        if let Some(bit) = qid
            .checked_sub(1)
            .and_then(|b| 1u128.checked_shl(u32::from(b)))
        {
            *lock(&self.io_queues) &= !bit;
        }
    }
}

/// Runs the keep-alive timer of a controller until it expires (tearing the controller down:
/// returns true) or the controller goes away (false).
pub async fn keep_alive_timer(ctrl: Weak<Ctrl>) -> bool {
    // Hosts send Keep Alive at KATO/2 or less; allow one more second for scheduling.
    const GRACE: Duration = Duration::from_secs(1);
    // The timer ends as soon as the controller is torn down, not a KATO later: the
    // controller thread's shutdown waits for every task it runs.
    let Some(mut torn_down) = ctrl.upgrade().map(|c| c.subscribe()) else {
        return false;
    };
    loop {
        let Some(c) = ctrl.upgrade() else {
            return false;
        };
        if c.is_dead() {
            return false;
        }
        let kato = c.kato.get();
        let wait = if kato.is_zero() {
            Duration::from_secs(1)
        } else {
            let idle = c.last_seen.get().elapsed();
            if idle > kato + GRACE {
                info!(cntlid = c.cntlid, host = %c.hostnqn, ?idle, "keep-alive timeout: controller torn down");
                c.kill();
                return true;
            }
            kato + GRACE - idle
        };
        drop(c);
        tokio::select! {
            () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            // Torn down, or the controller is gone (its sender dropped): either way, done.
            _ = torn_down.wait_for(|k| *k) => return false,
        }
    }
}
