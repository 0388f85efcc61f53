//! One NVMe/TCP connection (one queue): framing, the R2T machinery and responses.
//!
//! The connection reads every complete PDU available and starts each command as it arrives:
//! admin and Fabrics commands answer at once; I/O commands go to the namespace's
//! asynchronous block device and finish when their completions come back, in any order,
//! while the connection goes on parsing and answering (see [`crate::io`]). Responses are
//! appended to one output buffer; read data goes out from the device's buffers (or, for
//! files, with `sendfile`) at its place in the stream, with as few system calls as the
//! socket allows, reading and writing at the same time so neither side can stall the
//! other.
//!
//! Memory per connection is bounded whatever the host sends:
//! * input: one PDU at most, about max(in-capsule data, MAXH2CDATA) plus headers (a PLEN past
//!   it is fatal before anything is read into it);
//! * output: reading stops at [`OUT_HIGH_WATER`] (4 MiB), so at most that plus one reply
//!   (reads are bounded by MDTS, admin replies by their page); a quiet connection shrinks it
//!   back to 128 KiB;
//! * R2T data: [`crate::TargetConfig::r2t_buffer_limit`] (4 MiB by default), taken as data
//!   arrives, plus at most 128 KiB kept per slot (see [`crate::r2t`]);
//! * device buffers: one per command at the device, from the controller thread's fixed
//!   pool, at most the queue's SQ size per connection;
//! * a connection that has not sent its first bytes holds no buffers.
//!
//! Every wait on the host has a deadline from [`crate::TargetConfig::limits`]: ICReq and
//! Connect within the handshake timeout, the idle timeout for queues without keep-alive (or
//! owing R2T data), the send timeout for output the host does not take and for the drain at
//! shutdown.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nvme_spec::cmds::{AdminCmd, FabricsCmd, IoCmd, is_fabrics};
use nvme_spec::command::{Cqe, SglDescriptor, Sqe};
use nvme_spec::pdu::{
    self, CapsuleCmd, CapsuleResp, CommonHeader, DataHeader, IcReq, IcResp, dgst, flags, pdu_type,
};
use nvme_spec::status;
use nvme_spec::{FromBytes, FromZeros, IntoBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use bdev::slots::Slots;
use bdev::{CompletionQueue, Extent, IoBuf, Sink};
use ffi::{IoVec, IoVecMut};

use crate::abort::AbortBox;
use crate::auth::QueueAuth;
use crate::buf::{InBuf, OutBuf};
use crate::cell::lock;
use crate::codec::{self, Digests, Fatal, Frame};
use crate::completion::{Command, Completion, Error};
use crate::ctrl::Ctrl;
use crate::group::{Carried, Moving};
use crate::io::IoReq;
use crate::metrics::CommandKind;
use crate::port::PortShared;
use crate::r2t::{DIRECT_MIN, Direct, ReadInto, Slot};
use crate::signals::{self, Signals};

/// Stop reading new PDUs while this much output is waiting for the socket.
const OUT_HIGH_WATER: usize = 4 << 20;
/// Largest in-capsule data accepted on any queue for admin and Fabrics commands.
pub(crate) const ADMIN_IN_CAPSULE: usize = 8192;
/// Fabrics Connect data: exactly this long (NVMe over Fabrics 1.1, figure 20).
const CONNECT_DATA_LEN: usize = size_of::<nvme_spec::fabrics::ConnectData>();
/// Every Identify data structure is 4 KiB.
const IDENTIFY_LEN: usize = 4096;

/// The queue a connection became by its Connect command.
pub(crate) struct Queue {
    pub ctrl: Arc<Ctrl>,
    pub qid: u16,
    pub sqsize: u16,
    /// An I/O queue's count on the thread that serves it ([`crate::group::QueueLoad`]).
    pub load: Option<crate::group::LoadShare>,
}

/// Where a command's data is.
pub(crate) enum Data<'a> {
    /// No data.
    None,
    /// Host data in the capsule.
    Host(&'a [u8]),
    /// Host data gathered from H2CData PDUs into a device buffer.
    Buf(IoBuf),
    /// Host data that landed in the device's memory ([`crate::land`]).
    Landed(crate::land::Landing),
    /// The controller sends this many bytes (C2HData).
    ToHost(usize),
}

pub(crate) struct Conn {
    pub port: Rc<PortShared>,
    /// The host's address (TCP peer).
    pub peer: Option<std::net::SocketAddr>,
    pub dg: Digests,
    ic_done: bool,
    pub q: Option<Queue>,
    pub out: OutBuf,
    pub(crate) inb: InBuf,
    /// A large H2CData payload being read straight into its command's buffer.
    pub(crate) direct: Option<Direct>,
    /// A payload read directly whose data digest is still to come.
    pub(crate) pending_digest: Option<Direct>,
    /// R2T slots (see [`crate::r2t`]).
    pub(crate) slots: Vec<Slot>,
    /// Commands with host data waiting for a slot or R2T budget.
    pub(crate) waiting: VecDeque<(Sqe, Command, Instant)>,
    /// DH-HMAC-CHAP state of the queue.
    pub(crate) auth: QueueAuth,
    /// Commands waiting for data, as the admin queue's Abort sees them.
    pub(crate) aborts: Arc<AbortBox>,
    /// Bytes requested by R2Ts not yet fully answered.
    pub(crate) r2t_reserved: usize,
    pub scratch: Vec<u8>,
    sqhd: u16,
    pub closing: bool,
    max_plen: usize,
    /// Read data to send at its stream position: device buffers, or extents (file pieces for
    /// `sendfile`, ranges of a RAM device's mapping) for zero-copy reads.
    pub pieces: VecDeque<(u64, Piece)>,
    /// Scratch for [`bdev::BlockIo::extents`].
    pub extents: Vec<Extent>,
    /// I/O commands with data at hand, at the device (see [`crate::io`]).
    pub reqs: Slots<IoReq>,
    /// Reads waiting for a device buffer.
    pub buffer_wait: VecDeque<(Sqe, Instant)>,
    /// Where the devices post this connection's completions.
    pub cq: Rc<CompletionQueue>,
    /// `cq`, as the devices see it.
    pub sink: Rc<dyn Sink>,
    /// Reads whose data is still queued: (stream position of their pieces, when the
    /// command arrived). They complete when their last piece is handed to the socket.
    pub(crate) piece_reads: VecDeque<(u64, Instant)>,
    /// I/O-queue commands of this connection counted in the port's `in_flight`.
    pub(crate) io_in_flight: u32,
    /// Fused command pairs and writes waiting for a range lock (see [`crate::compare`]).
    pub(crate) fused: crate::compare::FusedState,
    /// When the connection was accepted (the handshake deadline runs from here).
    accepted: Instant,
    /// The member of the port's group this connection moves to after its Connect.
    pub(crate) place: Option<usize>,
    /// The admin queue's keep-alive timer is still to be started.
    pub(crate) keep_alive_pending: bool,
    /// When the loop's current turn began (the arrival time of the commands it parses).
    now: Instant,
    /// A command arrived this turn (the controller's `last_seen` is due).
    heard: bool,
}

/// Read data waiting in the output stream.
pub(crate) enum Piece {
    /// A device buffer, and how much of it went out.
    Buf { buf: IoBuf, sent: usize },
    /// A piece of a file (for `sendfile`) or of a device's mapped memory.
    Extent(Extent),
}

/// Most data pieces queued before the connection stops reading new commands.
const MAX_QUEUED_PIECES: usize = 1024;
/// How often reads waiting for a device buffer look again (buffers come back as other
/// connections' data leaves).
const BUFFER_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Input taken per read once the queue is connected: a queue depth of small writes with
/// their in-capsule data, so a busy queue parses many PDUs per system call (one PDU per
/// read costs a loop turn and a system call per command).
const READ_BATCH: usize = 64 * 1024;
/// Input taken per read while large H2CData payloads are owed (see [`DIRECT_MIN`]).
const SMALL_READ: usize = 8 * 1024;

/// Output and scratch memory a quiet connection keeps: enough for a queue depth of small
/// commands without allocating, little enough for thousands of connections. (The input
/// buffer never passes the negotiated PDU limit, about MAXH2CDATA.)
const IDLE_KEEP: usize = 128 * 1024;

/// Why a connection was closed by its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    /// ICReq and Connect did not complete within the handshake timeout.
    Handshake,
    /// Silent for the idle timeout with no keep-alive, or while owing R2T data.
    Idle,
    /// The host took no output bytes for the send timeout.
    Send,
    /// The drain at shutdown did not finish within the send timeout.
    Drain,
}

impl Conn {
    pub fn new(port: Rc<PortShared>) -> Self {
        let cfg = port.target.config();
        let slots = (0..cfg.max_r2t_in_flight).map(|_| Slot::new()).collect();
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        Self {
            port,
            peer: None,
            dg: Digests::default(),
            ic_done: false,
            q: None,
            // Empty until used: an idle or refused connection costs no buffer memory.
            out: OutBuf::with_capacity(0),
            inb: InBuf::with_capacity(0),
            direct: None,
            pending_digest: None,
            slots,
            waiting: VecDeque::new(),
            aborts: Arc::new(AbortBox::default()),
            auth: QueueAuth::default(),
            r2t_reserved: 0,
            scratch: Vec::new(),
            sqhd: 0,
            closing: false,
            max_plen: pdu::IC_LEN,
            pieces: VecDeque::new(),
            extents: Vec::new(),
            reqs: Slots::with_capacity(0),
            buffer_wait: VecDeque::new(),
            cq,
            sink,
            piece_reads: VecDeque::new(),
            io_in_flight: 0,
            fused: crate::compare::FusedState::default(),
            accepted: Instant::now(),
            place: None,
            keep_alive_pending: false,
            now: Instant::now(),
            heard: false,
        }
    }

    /// A connection another member of the port's group moved here, as it was set up.
    pub fn resume(port: Rc<PortShared>, c: Carried) -> Self {
        let mut conn = Self::new(port);
        conn.restore(c);
        conn
    }

    fn restore(&mut self, c: Carried) {
        self.peer = c.peer;
        self.dg = c.dg;
        self.ic_done = true;
        self.max_plen = c.max_plen;
        self.q = Some(c.q);
        self.out = OutBuf::with_capacity(c.out.len());
        self.out.extend(&c.out);
        self.inb = InBuf::with_capacity(c.input.len());
        self.inb.spare(c.input.len())[..c.input.len()].copy_from_slice(&c.input);
        self.inb.filled(c.input.len());
        self.auth = c.auth;
        self.aborts = c.aborts;
        self.sqhd = c.sqhd;
        self.accepted = c.accepted;
        self.keep_alive_pending = c.keep_alive_pending;
    }

    /// Whether the connection can move now: it has connected its queue and holds nothing
    /// of the thread it runs on (no command, buffer or data piece).
    fn movable(&self) -> bool {
        self.q.is_some()
            && self.reqs.is_empty()
            && self.waiting.is_empty()
            && self.buffer_wait.is_empty()
            && self.pieces.is_empty()
            && self.slots.iter().all(|s| !s.is_active())
            && self.fused.is_idle()
    }

    fn carry(&mut self) -> Option<Carried> {
        let q = self.q.take()?;
        let c = Carried {
            peer: self.peer,
            dg: self.dg,
            max_plen: self.max_plen,
            q,
            out: self.out.pending().to_vec(),
            input: self.inb.data().to_vec(),
            auth: std::mem::take(&mut self.auth),
            aborts: Arc::clone(&self.aborts),
            sqhd: self.sqhd,
            accepted: self.accepted,
            keep_alive_pending: self.keep_alive_pending,
        };
        let n = self.out.len();
        self.out.consume(n);
        let n = self.inb.data().len();
        self.inb.consume(n);
        Some(c)
    }

    /// Moves the connection to member `to` of its port's group. On failure (the port is
    /// stopping) the connection is as it was and the stream is given back.
    fn move_to(
        &mut self,
        to: usize,
        stream: std::net::TcpStream,
        slot: listener::Slot,
    ) -> Result<(), (std::net::TcpStream, listener::Slot)> {
        let Some(carried) = self.carry() else {
            return Err((stream, slot));
        };
        let m = Box::new(Moving {
            stream,
            slot,
            carried,
        });
        let group = Arc::clone(&self.port.group);
        match group.send(to, m) {
            Ok(()) => {
                debug!(to, port = self.port.port_id, "connection moved");
                Ok(())
            }
            Err(m) => {
                let m = *m;
                self.restore(m.carried);
                Err((m.stream, m.slot))
            }
        }
    }

    /// Serves the connection until it closes, the port drops its connections, the controller
    /// is torn down, a deadline passes or the target shuts down. `slot` is the connection's
    /// place under the listener's limits, given back when this returns.
    pub async fn serve(
        mut self,
        stream: TcpStream,
        slot: listener::Slot,
        drop_rx: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut slot = Some(slot);
        if self.peer.is_none() {
            self.peer = stream.peer_addr().ok();
        }
        let limits = self.port.target.config().limits;
        // Small responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut signals = self.watch_signals(drop_rx, shutdown);
        // The queue's own sources (its controller, its events) are watched once it has one.
        let mut queue_watched = false;
        let accepted = self.accepted;
        let mut last_input = Instant::now();
        // Last time output made progress, or the output queue was empty.
        let mut last_output = accepted;
        let mut was_idle = true;
        let mut drain_until: Option<Instant> = None;
        let timer = tokio::time::sleep_until(accepted.into());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // Input or output moved in the last wait: their clocks restart at the next turn.
        let (mut input_moved, mut output_moved) = (false, false);
        let mut abort_due = false;
        let cq = Rc::clone(&self.cq);
        let reason = loop {
            // One clock read per turn: commands parsed in a turn arrived together.
            let now = Instant::now();
            self.now = now;
            if std::mem::take(&mut input_moved) {
                last_input = now;
            }
            if std::mem::take(&mut output_moved) {
                last_output = now;
            }
            let raised = signals.take();
            abort_due |= raised & signals::ABORT != 0;
            if raised & signals::SHUTDOWN != 0 && drain_until.is_none() {
                // A host that stops reading cannot hold the shutdown up.
                drain_until = Some(now + limits.send_timeout);
                self.abort_pending();
            }
            if raised & signals::CLOSE != 0 {
                break None;
            }
            if raised & signals::NOTICE != 0 {
                self.deliver_events();
            }
            let draining = drain_until.is_some();
            self.on_completions();
            if !self.buffer_wait.is_empty() {
                self.retry_buffer_waits();
            }
            if !self.waiting.is_empty() {
                self.start_waiting();
            }
            if self.fused.has_waiters() {
                self.retry_lock_waits();
            }
            if !draining && !self.closing {
                if std::mem::take(&mut abort_due) {
                    self.take_aborts();
                }
                if let Err(f) = self.process() {
                    self.fatal(f);
                }
                // Every command counts as the controller's keep-alive: once per turn.
                if std::mem::take(&mut self.heard) {
                    if let Some(q) = &self.q {
                        q.ctrl.last_seen.set(now);
                    }
                }
            }
            // Placed on another thread by its Connect: go there before answering.
            if self.place.is_some() && self.movable() {
                break None;
            }
            self.place = None;
            if self.keep_alive_pending {
                self.start_keep_alive();
            }
            if !queue_watched && self.q.is_some() {
                self.watch_queue(&mut signals);
                queue_watched = true;
            }
            self.deliver_async_events();
            let idle = self.out.is_empty() && self.pieces.is_empty();
            // A drain waits for the commands at the devices (they have deadlines of their
            // own) and for the writes waiting for a range lock that those commands hold; a
            // connection closed for an error does not.
            let settled = self.reqs.is_empty() && !self.fused.has_waiters();
            if (self.closing || draining) && idle && (self.closing || settled) {
                break None;
            }
            // The send clock runs from when output became pending, or last moved.
            if idle || was_idle {
                last_output = now;
            }
            was_idle = idle;
            if idle {
                self.shrink();
            }
            // Recomputed on every wake-up: what it depends on (the controller's activity on
            // other queues, say) moves on its own.
            let deadline = self.deadline(
                &limits,
                accepted,
                last_input,
                last_output,
                drain_until,
                idle,
            );
            if let Some((at, why)) = deadline {
                if now >= at {
                    break Some(why);
                }
                // Deadlines mostly move later (input and output make progress): the timer
                // stays set for the earlier one, and the turn it wakes looks again. It is
                // reset only for an earlier deadline.
                if armed.is_none_or(|a| at < a) {
                    timer.as_mut().reset(at.into());
                    armed = Some(at);
                }
            }
            let can_read = !draining
                && !self.closing
                && self.out.len() < OUT_HIGH_WATER
                && self.pieces.len() < MAX_QUEUED_PIECES;
            let buffer_wait = !self.buffer_wait.is_empty()
                || !self.waiting.is_empty()
                || self.fused.has_waiters();
            let need = self.next_len();
            // While large payloads are owed, read little into the input buffer so that
            // they mostly go straight to their buffers.
            let in_limit = if self.r2t_reserved >= DIRECT_MIN {
                SMALL_READ
            } else {
                usize::MAX
            };
            tokio::select! {
                biased;
                // Shutdown, teardown, aborts, events and notices: taken at the top.
                () = signals.raised() => {}
                // Wakes the loop, which checks the deadline afresh.
                () = &mut timer, if armed.is_some() => armed = None,
                // Completions are taken at the top of the loop.
                () = cq.ready() => {}
                () = tokio::time::sleep(BUFFER_RETRY), if buffer_wait => {}
                r = send(wr.as_ref(), &mut self.out, &mut self.pieces), if !idle => match r {
                    Ok(0) => {}
                    Ok(_) => {
                        output_moved = true;
                        self.reads_sent();
                    }
                    Err(_) => break None,
                },
                r = read_into(&mut rd, if self.direct.is_some() {
                    Self::direct_target(&self.direct, &mut self.slots, self.inb.spare(SMALL_READ))
                } else {
                    ReadInto::Buf(limit(self.inb.spare(need), in_limit))
                }), if can_read => match r {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => {
                        if self.direct.is_some() {
                            if let Err(f) = self.direct_filled(n) {
                                self.fatal(f);
                            }
                        } else {
                            self.inb.filled(n);
                        }
                        input_moved = true;
                    }
                },
            }
        };
        if let Some(why) = reason {
            info!(
                port = self.port.port_id,
                reason = ?why,
                connected = self.q.is_some(),
                "closing connection at its deadline"
            );
        }
        if let Some(to) = self.place.take() {
            let std = rd
                .reunite(wr)
                .map_err(|e| e.to_string())
                .and_then(|s| s.into_std().map_err(|e| e.to_string()));
            match std.map(|s| self.move_to(to, s, slot.take().expect("slot held until the end"))) {
                Ok(Ok(())) => return,
                // The group is going away: the connection closes here.
                Ok(Err(_)) => {}
                Err(e) => warn!(error = %e, "connection could not move"),
            }
            self.teardown();
            return;
        }
        let _ = wr.shutdown().await;
        self.teardown();
        drop(slot);
    }

    /// Starts watching what every connection watches: the target's shutdown, the port
    /// dropping its connections, and Aborts naming its commands.
    fn watch_signals(
        &self,
        mut drop_rx: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Signals {
        let mut s = Signals::default();
        s.watch(signals::SHUTDOWN, |r| async move {
            // A shutdown signal that is gone is a shutdown too.
            let _ = shutdown.wait_for(|&down| down).await;
            r.raise();
        });
        s.watch(signals::CLOSE, |r| async move {
            let _ = drop_rx.changed().await;
            r.raise();
        });
        let aborts = Arc::clone(&self.aborts);
        s.watch(signals::ABORT, |r| async move {
            loop {
                aborts.wake.notified().await;
                r.raise();
            }
        });
        s
    }

    /// Starts watching what the connected queue adds: its controller's teardown, and for
    /// an admin queue its events and reservation notices.
    fn watch_queue(&self, s: &mut Signals) {
        let Some(q) = &self.q else { return };
        let mut kill = q.ctrl.subscribe();
        s.watch(signals::CLOSE, |r| async move {
            // A controller that is gone without a teardown closes nothing.
            if kill.wait_for(|&k| k).await.is_ok() {
                r.raise();
            }
        });
        if let Some(w) = self.event_watch() {
            s.watch(signals::EVENTS, |r| async move {
                let mut w = Some(w);
                loop {
                    crate::aen::changed(&mut w).await;
                    r.raise();
                }
            });
        }
        if let Some(n) = self.admin_notices() {
            s.watch(signals::NOTICE, |r| async move {
                loop {
                    n.wake.notified().await;
                    r.raise();
                }
            });
        }
    }

    /// The earliest deadline that applies to the connection now, and what it is for.
    fn deadline(
        &self,
        limits: &listener::Limits,
        accepted: Instant,
        last_input: Instant,
        last_output: Instant,
        drain_until: Option<Instant>,
        idle: bool,
    ) -> Option<(Instant, Deadline)> {
        let mut best: Option<(Instant, Deadline)> = None;
        let mut consider = |at: Instant, why| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        if let Some(at) = drain_until {
            consider(at, Deadline::Drain);
        }
        if !idle {
            consider(last_output + limits.send_timeout, Deadline::Send);
        }
        match &self.q {
            // ICReq and Connect, both within the handshake timeout of the accept.
            None => consider(accepted + limits.handshake_timeout, Deadline::Handshake),
            // Authentication is part of the handshake.
            Some(_) if self.auth.pending() => {
                consider(accepted + limits.handshake_timeout, Deadline::Handshake);
            }
            Some(q) => {
                // A host owing R2T data must keep sending it; a queue without keep-alive
                // and with nothing to answer must not stay open forever.
                if self.awaiting_host_data() {
                    consider(last_input + limits.idle_timeout, Deadline::Idle);
                } else if q.ctrl.kato.get().is_zero() && idle {
                    // Silence is the controller's: a quiet admin queue beside busy I/O
                    // queues (every command refreshes `last_seen`) is not idle.
                    let heard = last_input.max(q.ctrl.last_seen.get());
                    consider(heard + limits.idle_timeout, Deadline::Idle);
                }
            }
        }
        best
    }

    /// Gives back buffer memory a burst left behind, once the connection is quiet.
    fn shrink(&mut self) {
        self.out.shrink_to(IDLE_KEEP);
        if self.scratch.capacity() > IDLE_KEEP {
            self.scratch = Vec::new();
        }
    }

    /// Room the next read needs: the PDU at the front of the input (at least a common
    /// header), and once the queue is connected at least [`READ_BATCH`].
    fn next_len(&self) -> usize {
        let d = self.inb.data();
        let pdu = match CommonHeader::read_from_prefix(d) {
            Ok((ch, _)) => (ch.plen.get() as usize).clamp(8, self.max_plen),
            Err(_) => 8,
        };
        let batch = if self.q.is_some() { READ_BATCH } else { 4096 };
        pdu.max(batch)
    }

    /// Handles every complete PDU in the input buffer.
    fn process(&mut self) -> Result<(), Fatal> {
        loop {
            // A connection placed elsewhere by its Connect takes what follows along.
            if self.out.len() >= OUT_HIGH_WATER || self.closing || self.place.is_some() {
                return Ok(());
            }
            let ic_done = self.ic_done;
            let allowed = |t: u8| {
                if ic_done {
                    matches!(
                        t,
                        pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA | pdu_type::H2C_TERM_REQ
                    )
                } else {
                    t == pdu_type::IC_REQ
                }
            };
            if !self.take_pending_digest()? {
                return Ok(());
            }
            let frame = match codec::next_frame(self.inb.data(), self.dg, self.max_plen, allowed) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    // A large H2CData payload still to come is read into its buffer.
                    match codec::parse_header(self.inb.data(), self.dg, self.max_plen, allowed)? {
                        Some(h) if self.ic_done && self.try_direct(&h)? => continue,
                        _ => return Ok(()),
                    }
                }
                Err(f) => return Err(f),
            };
            let inb = std::mem::replace(&mut self.inb, InBuf::with_capacity(0));
            let r = self.on_pdu(&frame, &inb.data()[..frame.plen]);
            self.inb = inb;
            r?;
            self.inb.consume(frame.plen);
        }
    }

    /// Sends a TermReq for a fatal error and closes.
    fn fatal(&mut self, f: Fatal) {
        let m = self.port.metrics();
        m.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if f.fes == pdu::fes::HEADER_DIGEST_ERROR {
            m.digest_errors.fetch_add(1, Ordering::Relaxed);
        }
        let d = self.inb.data();
        let hlen = d.get(2).map_or(0, |&h| usize::from(h)).min(d.len());
        let echo = d[..hlen.max(8.min(d.len()))].to_vec();
        warn!(
            fes = f.fes,
            fei = f.fei,
            port = self.port.port_id,
            "protocol error: sending TermReq"
        );
        codec::put_term_req(&mut self.out, pdu_type::C2H_TERM_REQ, f, &echo);
        self.closing = true;
    }

    fn on_pdu(&mut self, f: &Frame, bytes: &[u8]) -> Result<(), Fatal> {
        self.port.metrics().pdus_rx.fetch_add(1, Ordering::Relaxed);
        match f.ch.pdu_type {
            pdu_type::IC_REQ => self.on_ic_req(bytes),
            pdu_type::H2C_TERM_REQ => {
                let fes = bytes
                    .get(8..10)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                debug!(fes, "host terminated the connection");
                self.closing = true;
                Ok(())
            }
            pdu_type::CAPSULE_CMD => {
                let (cmd, _) = CapsuleCmd::read_from_prefix(bytes).map_err(|_| Fatal::field(4))?;
                // In flight from here until its response (every capsule gets exactly one).
                if self.q.as_ref().is_some_and(|q| q.qid != 0) {
                    self.started_io();
                }
                if f.data_digest_error {
                    self.port
                        .metrics()
                        .digest_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.complete(cmd.sqe.cid.get(), Error::DataDigest);
                    return Ok(());
                }
                let data = &bytes[f.data.clone()];
                self.on_command(&cmd.sqe, data);
                Ok(())
            }
            pdu_type::H2C_DATA => {
                let (h, _) = DataHeader::read_from_prefix(bytes).map_err(|_| Fatal::field(4))?;
                self.on_h2c_data(&h, &bytes[f.data.clone()], f.data_digest_error)
            }
            _ => Err(Fatal::field(0)),
        }
    }

    fn on_ic_req(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        let (req, _) = IcReq::read_from_prefix(bytes).map_err(|_| Fatal::field(4))?;
        if req.pfv.get() != 0 {
            return Err(Fatal {
                fes: pdu::fes::UNSUPPORTED_PARAMETER,
                fei: 8,
            });
        }
        if req.hpda != 0 {
            return Err(Fatal {
                fes: pdu::fes::UNSUPPORTED_PARAMETER,
                fei: 10,
            });
        }
        self.dg = Digests {
            header: req.dgst & dgst::HDGST_ENABLE != 0,
            data: req.dgst & dgst::DDGST_ENABLE != 0,
        };
        let cfg = self.port.target.config();
        let mut resp = IcResp::new_zeroed();
        resp.ch = CommonHeader::new(pdu_type::IC_RESP, 0, 128, 0, 128);
        resp.dgst = req.dgst & (dgst::HDGST_ENABLE | dgst::DDGST_ENABLE);
        resp.maxh2cdata.set(cfg.max_h2c_data);
        self.out.extend(resp.as_bytes());
        self.ic_done = true;
        let incap = (cfg.in_capsule_data as usize).max(ADMIN_IN_CAPSULE);
        self.max_plen = (72 + 8 + incap).max(24 + 8 + cfg.max_h2c_data as usize);
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Parses a command for its queue, checks where its data is, and routes it.
    fn on_command(&mut self, sqe: &Sqe, incap: &[u8]) {
        let started = self.now;
        let cid = sqe.cid.get();
        self.heard = true;
        let cmd = match self.parse(sqe) {
            Ok(c) => c,
            Err(e) => return self.complete(cid, e),
        };
        // A queue that must authenticate runs nothing else until it has.
        let auth_cmd = matches!(
            cmd,
            Command::Fabrics(FabricsCmd::AuthSend(_) | FabricsCmd::AuthReceive(_))
        );
        if self.auth.pending() && !auth_cmd {
            return self.complete(cid, Error::AuthRequired);
        }
        // Fused commands pair by arrival: the second must be the very next capsule.
        if let Command::Io(c) = &cmd {
            if let Err(e) = self.fuse_arrival(sqe, c) {
                return self.complete(cid, e);
            }
        }
        let sgl = sqe.dptr;
        let len = sgl.length.get() as usize;
        let host_data = cmd.host_data();
        // Every length the host chose is checked before anything is allocated or an R2T
        // goes out; I/O commands get theirs checked against MDTS and the LBA range in
        // `check_io`.
        if let Err(e) = self.check_admin_length(&cmd, len) {
            return self.complete(cid, e);
        }
        let data = match sgl.kind {
            _ if len == 0 && incap.is_empty() => Data::None,
            SglDescriptor::DATA_BLOCK_OFFSET => {
                if sgl.addr.get() != 0 {
                    return self.complete(cid, Error::SglOffset);
                }
                let limit = if matches!(cmd, Command::Io(_)) {
                    self.port.target.config().in_capsule_data as usize
                } else {
                    ADMIN_IN_CAPSULE
                };
                if len != incap.len() || len > limit.max(ADMIN_IN_CAPSULE) || !host_data {
                    return self.complete(cid, Error::SglLength);
                }
                Data::Host(incap)
            }
            SglDescriptor::TRANSPORT_DATA_BLOCK => {
                if !incap.is_empty() {
                    return self.complete(cid, Error::SglLength);
                }
                if host_data {
                    return self.start_r2t(sqe, cmd, started);
                } else {
                    Data::ToHost(len)
                }
            }
            _ => return self.complete(cid, Error::SglType),
        };
        self.execute(sqe, cmd, data, started);
    }

    /// Parses an entry as the command its queue runs: Fabrics anywhere, admin commands on
    /// the admin queue, I/O commands on I/O queues. Failures are counted like the commands
    /// they were meant to be.
    fn parse(&self, sqe: &Sqe) -> Result<Command, Error> {
        let m = self.port.metrics();
        if is_fabrics(sqe) {
            return FabricsCmd::try_from(sqe)
                .map(Command::Fabrics)
                .map_err(|e| {
                    m.command(CommandKind::Fabrics);
                    e.into()
                });
        }
        match &self.q {
            None => Err(Error::Sequence),
            Some(q) if q.qid == 0 => AdminCmd::try_from(sqe).map(Command::Admin).map_err(|e| {
                m.command(CommandKind::Admin);
                e.into()
            }),
            Some(_) => IoCmd::try_from(sqe).map(Command::Io).map_err(|e| {
                m.command(CommandKind::Other);
                e.into()
            }),
        }
    }

    /// Bounds the data length of Fabrics and admin commands by what the command can carry:
    /// Connect data is exactly 1,024 bytes, Identify returns 4 KiB, and nothing moves more
    /// than MDTS (Get Log Page checks its own page size before replying).
    fn check_admin_length(&self, cmd: &Command, len: usize) -> Result<(), Error> {
        match cmd {
            Command::Fabrics(FabricsCmd::Connect(_)) if len != CONNECT_DATA_LEN => {
                return Err(Error::SglLength);
            }
            Command::Io(_) => return Ok(()),
            _ => {}
        }
        if len > self.port.target.config().max_transfer as usize {
            return Err(Error::TooLarge);
        }
        if matches!(cmd, Command::Admin(AdminCmd::Identify(_))) && len > IDENTIFY_LEN {
            return Err(Error::SglLength);
        }
        Ok(())
    }

    /// Executes a command whose data (if any) is at hand.
    pub(crate) fn execute(&mut self, sqe: &Sqe, cmd: Command, data: Data<'_>, started: Instant) {
        if !matches!(cmd, Command::Io(_)) {
            // Admin and Fabrics data gathered by R2T (Connect data) is read in place.
            if let Data::Buf(b) = data {
                return self.execute(sqe, cmd, Data::Host(b.as_slice()), started);
            }
        }
        match cmd {
            Command::Fabrics(f) => {
                self.port.metrics().command(CommandKind::Fabrics);
                self.fabrics(sqe, f, data);
            }
            Command::Admin(a) => {
                self.port.metrics().command(CommandKind::Admin);
                self.admin(sqe, a, data);
            }
            Command::Io(c) => self.io(sqe, c, data, started),
        }
    }

    /// Appends the response capsule of a completed (or failed) command.
    pub(crate) fn complete(&mut self, cid: u16, c: impl Into<Completion>) {
        let c = c.into();
        self.respond(cid, c.status, c.result);
    }

    /// Appends a response capsule.
    pub fn respond(&mut self, cid: u16, st: u16, result: u64) {
        let mut r = CapsuleResp::default();
        let (pdo, plen) = codec::data_pdu_lengths(24, 0, self.dg);
        r.ch = CommonHeader::new(pdu_type::CAPSULE_RESP, self.dg.flags(false), 24, pdo, plen);
        r.cqe = Cqe::default();
        r.cqe.result.set((result & 0xffff_ffff) as u32);
        r.cqe.result_hi.set((result >> 32) as u32);
        r.cqe.cid.set(cid);
        r.cqe.set_status_field(st);
        if let Some(q) = &self.q {
            self.sqhd = if self.sqhd >= q.sqsize {
                0
            } else {
                self.sqhd + 1
            };
            r.cqe.sqid.set(q.qid);
        }
        r.cqe.sqhd.set(self.sqhd);
        codec::put_header(&mut self.out, r.as_bytes(), self.dg);
        self.completed_io();
        let m = self.port.metrics();
        m.pdus_tx.fetch_add(1, Ordering::Relaxed);
        if st != status::SUCCESS {
            m.command_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(q) = &self.q {
                lock(&q.ctrl.errors).record(q.qid, cid, st, 0, 0);
            }
            // The partner of a fused command that failed is aborted with it.
            if self.fused.has_pairs() {
                self.fused_failed(cid);
            }
        }
    }

    /// Appends a C2HData PDU whose `len` bytes `fill` writes, then the response capsule.
    /// If `fill` fails, the data is dropped and the command fails with its status.
    pub fn reply_data(
        &mut self,
        cid: u16,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) {
        if len == 0 {
            return match fill(&mut []) {
                Ok(()) => self.respond(cid, status::SUCCESS, 0),
                Err(e) => self.complete(cid, e),
            };
        }
        let mark = self.out.mark();
        let h = self.c2h_header(cid, len);
        let buf = codec::put_data_pdu(&mut self.out, h.as_bytes(), self.dg, len);
        match fill(buf) {
            Ok(()) => {
                codec::seal_data(&mut self.out, self.dg, len);
                self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
                self.respond(cid, status::SUCCESS, 0);
            }
            Err(e) => {
                self.out.truncate(mark);
                self.complete(cid, e);
            }
        }
    }

    /// The header of a C2HData PDU carrying all `len` bytes of command `cid` (LAST set).
    pub fn c2h_header(&self, cid: u16, len: usize) -> DataHeader {
        let (pdo, plen) = codec::data_pdu_lengths(24, len, self.dg);
        let mut h = DataHeader {
            ch: CommonHeader::new(
                pdu_type::C2H_DATA,
                self.dg.flags(true) | flags::LAST_PDU,
                24,
                pdo,
                plen,
            ),
            ..DataHeader::default()
        };
        h.cccid.set(cid);
        h.datal.set(u32::try_from(len).unwrap_or(u32::MAX));
        h
    }

    /// Sends the first `min(len, scratch length)` bytes of the scratch buffer.
    pub fn reply_scratch(&mut self, cid: u16, len: usize) {
        let scratch = std::mem::take(&mut self.scratch);
        let n = len.min(scratch.len());
        self.reply_data(cid, n, |b| {
            b.copy_from_slice(&scratch[..n]);
            Ok(())
        });
        self.scratch = scratch;
    }

    /// Prepares the scratch buffer: `n` zeroed bytes.
    pub fn scratch(&mut self, n: usize) -> &mut [u8] {
        self.scratch.clear();
        self.scratch.resize(n, 0);
        &mut self.scratch
    }

    /// Releases what the connection held: its queue, or its whole controller if it was the
    /// admin queue.
    fn teardown(&mut self) {
        // Commands that never got their data are no longer in flight.
        let owed = self.slots.iter().filter(|s| s.is_active()).count() + self.waiting.len();
        self.aborts.clear();
        let m = self.port.metrics();
        m.awaiting_data
            .fetch_sub(i64::try_from(owed).unwrap_or(i64::MAX), Ordering::Relaxed);
        m.in_flight
            .fetch_sub(i64::from(self.io_in_flight), Ordering::Relaxed);
        self.io_in_flight = 0;
        self.piece_reads.clear();
        let Some(mut q) = self.q.take() else { return };
        // Gone from its thread's count before anything else says so.
        drop(q.load.take());
        let target = &self.port.target;
        self.port
            .metrics()
            .queue_pairs
            .fetch_sub(1, Ordering::Relaxed);
        if q.qid == 0 {
            q.ctrl.kill();
            lock(&self.port.group.controllers).remove(&(q.ctrl.subsys, q.ctrl.cntlid));
            target.unregister(q.ctrl.subsys, q.ctrl.cntlid);
            debug!(cntlid = q.ctrl.cntlid, "controller gone");
        } else {
            lock(&q.ctrl.queues).remove(&q.qid);
            q.ctrl.release_io_queue(q.qid);
            target.set_io_queues(q.ctrl.subsys, q.ctrl.cntlid, q.ctrl.io_queue_count());
        }
    }
}

/// Most slices one vectored write gathers (output between pieces, and device buffers).
const GATHER: usize = 64;

/// Sends what is queued, once the socket takes more: the output bytes, the device buffers
/// and mapped extents at their places, gathered into one vectored write up to the next file
/// piece, or that file piece with `sendfile` when it is next. Returns how many bytes went
/// out (0 if the socket was not ready after all).
async fn send(
    stream: &TcpStream,
    out: &mut OutBuf,
    pieces: &mut VecDeque<(u64, Piece)>,
) -> std::io::Result<usize> {
    stream.writable().await?;
    let r = stream.try_io(Interest::WRITABLE, || {
        let consumed = out.consumed();
        let rel = |at: u64| usize::try_from(at - consumed).unwrap_or(usize::MAX);
        if let Some((at, Piece::Extent(e))) = pieces.front_mut() {
            if let (true, Extent::File { file, offset, len }) = (*at == consumed, &*e) {
                let mut off =
                    i64::try_from(*offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
                let n = nix::sys::sendfile::sendfile64(stream, &**file, Some(&mut off), *len)?;
                if n == 0 {
                    // The file ended before the piece did: nothing sensible can follow.
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                e.advance(n);
                if e.is_empty() {
                    pieces.pop_front();
                }
                return Ok(n);
            }
        }
        let pending = out.pending();
        let mut iov = [IoVec::EMPTY; GATHER];
        let mut n = 0;
        let mut cursor = 0;
        let mut to_end = true;
        for (at, piece) in pieces.iter() {
            if n + 2 > GATHER {
                to_end = false;
                break;
            }
            let at = rel(*at).min(pending.len());
            if at > cursor {
                iov[n] = IoVec::new(&pending[cursor..at]);
                n += 1;
                cursor = at;
            }
            iov[n] = match piece {
                Piece::Buf { buf, sent } => IoVec::new(&buf.as_slice()[*sent..]),
                Piece::Extent(Extent::Mapped { map, offset, len }) => map
                    .iovec(*offset, *len)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
                Piece::Extent(Extent::File { .. }) => {
                    to_end = false;
                    break;
                }
            };
            n += 1;
        }
        if to_end && cursor < pending.len() && n < GATHER {
            iov[n] = IoVec::new(&pending[cursor..]);
            n += 1;
        }
        let written = ffi::writev(stream.as_fd(), &iov[..n])?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Account the bytes in the order they were gathered.
        let mut left = written;
        while left > 0 {
            let head = pieces
                .front()
                .map_or(out.len(), |(at, _)| {
                    usize::try_from(*at - out.consumed()).unwrap_or(usize::MAX)
                })
                .min(out.len());
            if head > 0 {
                let k = left.min(head);
                out.consume(k);
                left -= k;
                continue;
            }
            let done = match pieces.front_mut() {
                Some((_, Piece::Buf { buf, sent })) => {
                    let k = left.min(buf.len() - *sent);
                    *sent += k;
                    left -= k;
                    *sent == buf.len()
                }
                Some((_, Piece::Extent(e @ Extent::Mapped { .. }))) => {
                    let k = left.min(e.len());
                    e.advance(k);
                    left -= k;
                    e.is_empty()
                }
                _ => break,
            };
            if done {
                // A buffer goes back to the pool, an extent drops its mapping.
                pieces.pop_front();
            }
        }
        Ok(written)
    });
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

/// Most device pieces one socket read fills.
const SCATTER: usize = 64;

/// Reads what the socket has into `into`: our memory, or a device's mapped pieces with one
/// `readv` (into the discard buffer instead when the write has been fenced off by the time
/// the bytes are there). Returns 0 at the end of the stream, or when there is nowhere to
/// read to.
async fn read_into(rd: &mut OwnedReadHalf, into: ReadInto<'_>) -> std::io::Result<usize> {
    let (extents, from, to, landing, discard) = match into {
        ReadInto::Buf(b) => return rd.read(b).await,
        ReadInto::Device {
            extents,
            from,
            to,
            landing,
            discard,
        } => (extents, from, to, landing, discard),
    };
    let mut iov = [const { IoVecMut::EMPTY }; SCATTER];
    let n = Extent::iovecs_mut(extents, from, to, &mut iov);
    if n == 0 || discard.is_empty() {
        return Ok(0);
    }
    let mut discard = [IoVecMut::new(discard)];
    let stream: &TcpStream = rd.as_ref();
    loop {
        stream.readable().await?;
        // Checked once the bytes are there, right before they would land.
        let into = if landing.fenced() {
            &mut discard[..]
        } else {
            &mut iov[..n]
        };
        match stream.try_io(Interest::READABLE, || ffi::readv(stream.as_fd(), into)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// The first `max` bytes of `buf` at most.
fn limit(buf: &mut [u8], max: usize) -> &mut [u8] {
    let n = buf.len().min(max);
    &mut buf[..n]
}
