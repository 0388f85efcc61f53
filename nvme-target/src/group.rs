//! Poll groups: the controller threads that serve one port's connections.
//!
//! Every thread of a port's group holds a view of the port ([`crate::Port`]); the port's
//! own thread accepts. A connection is placed when its Connect says what it is (like
//! SPDK's poll groups, which spread a host's queue pairs over reactors): an admin queue's
//! controller gets a home thread, round-robin over the group (the first stays where it was
//! accepted); an I/O queue goes to the member that serves the fewest live I/O queues of the
//! whole target ([`QueueLoad`], counted per thread over every port), the member `qid` places
//! after its controller's home first on a tie. So the queues of one host association run on
//! every core even when the host sends all its I/O down one path, one-queue associations on
//! different ports share the threads out too, and queues that have gone no longer count. A
//! connection placed on another thread moves there right after its Connect, before its
//! response is sent: the socket and what the connection has set up ([`Moving`]) go through
//! that member's inbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::abort::AbortBox;
use crate::auth::QueueAuth;
use crate::cell::lock;
use crate::codec::Digests;
use crate::conn::Queue;
use crate::ctrl::Ctrl;

/// A connection on its way to another member: its socket, its place under the listener's
/// limits, and what it had set up.
pub(crate) struct Moving {
    pub stream: std::net::TcpStream,
    pub slot: listener::Slot,
    pub carried: Carried,
}

impl std::fmt::Debug for Moving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moving")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// The state of a connection that has just connected its queue.
pub(crate) struct Carried {
    pub peer: Option<std::net::SocketAddr>,
    pub dg: Digests,
    pub max_plen: usize,
    pub q: Queue,
    /// Output not yet sent (the Connect response).
    pub out: Vec<u8>,
    /// Input received after the Connect.
    pub input: Vec<u8>,
    pub auth: QueueAuth,
    pub aborts: Arc<AbortBox>,
    pub sqhd: u16,
    pub accepted: Instant,
    /// The admin queue's keep-alive timer is still to be started (on its home thread).
    pub keep_alive_pending: bool,
}

/// What the views of one port share across threads.
#[derive(Debug)]
pub(crate) struct GroupShared {
    /// Controllers of this port, for I/O queue Connects.
    pub controllers: Mutex<HashMap<(usize, u16), Weak<Ctrl>>>,
    pub drop_tx: watch::Sender<u64>,
    /// The members' threads and inboxes, in joining order.
    members: Mutex<Vec<Member>>,
    /// Admin queues placed so far.
    admins: AtomicUsize,
}

/// A member of a group: the thread its view lives on, and its inbox.
#[derive(Debug)]
struct Member {
    thread: ThreadId,
    inbox: mpsc::UnboundedSender<Box<Moving>>,
}

/// Live I/O queues per controller thread, over every port of one target. Touched only
/// when a queue connects or goes, never per command.
#[derive(Debug, Default)]
pub(crate) struct QueueLoad {
    threads: Mutex<Vec<(ThreadId, usize)>>,
}

/// Live I/O queues counted on `thread`.
fn queues_on(threads: &[(ThreadId, usize)], thread: ThreadId) -> usize {
    threads
        .iter()
        .find(|(t, _)| *t == thread)
        .map_or(0, |&(_, n)| n)
}

/// One I/O queue counted on its thread until this is dropped (the queue has gone).
#[derive(Debug)]
pub(crate) struct LoadShare {
    load: Arc<QueueLoad>,
    thread: ThreadId,
}

impl Drop for LoadShare {
    fn drop(&mut self) {
        let mut threads = lock(&self.load.threads);
        if let Some((_, n)) = threads.iter_mut().find(|(t, _)| *t == self.thread) {
            *n = n.saturating_sub(1);
        }
    }
}

impl GroupShared {
    /// Adds a member living on this thread; returns its index and its inbox.
    pub fn join(&self) -> (usize, mpsc::UnboundedReceiver<Box<Moving>>) {
        self.join_on(std::thread::current().id())
    }

    fn join_on(&self, thread: ThreadId) -> (usize, mpsc::UnboundedReceiver<Box<Moving>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut m = lock(&self.members);
        m.push(Member { thread, inbox: tx });
        (m.len() - 1, rx)
    }

    fn len(&self) -> usize {
        lock(&self.members).len().max(1)
    }

    /// The home of a new controller whose admin queue `member` accepted.
    pub fn place_admin(&self, member: usize) -> usize {
        (member + self.admins.fetch_add(1, Ordering::Relaxed)) % self.len()
    }

    /// The member that serves I/O queue `qid` of a controller at home on `home`: the one
    /// whose thread serves the fewest live I/O queues in `load`, looking from the member
    /// `qid` places after `home` on. The queue counts there until the share is dropped.
    pub fn place_io(&self, load: &Arc<QueueLoad>, home: usize, qid: u16) -> (usize, LoadShare) {
        let members = lock(&self.members);
        let n = members.len().max(1);
        let first = (home + usize::from(qid)) % n;
        let mut threads = lock(&load.threads);
        let to = (0..members.len())
            .map(|k| (first + k) % n)
            .min_by_key(|&i| queues_on(&threads, members[i].thread))
            .unwrap_or(0);
        let thread = members
            .get(to)
            .map_or_else(|| std::thread::current().id(), |m| m.thread);
        match threads.iter_mut().find(|(t, _)| *t == thread) {
            Some((_, c)) => *c += 1,
            None => threads.push((thread, 1)),
        }
        let share = LoadShare {
            load: Arc::clone(load),
            thread,
        };
        (to, share)
    }

    /// Sends a connection to member `to`; gives it back if that member has stopped.
    pub fn send(&self, to: usize, m: Box<Moving>) -> Result<(), Box<Moving>> {
        let tx = lock(&self.members).get(to).map(|m| m.inbox.clone());
        match tx {
            Some(tx) => tx.send(m).map_err(|e| e.0),
            None => Err(m),
        }
    }
}

/// One port's poll group: the controller threads that serve its connections. Create one per
/// port, then a [`crate::Port`] view of it on each member thread; cheap to clone and send.
#[derive(Clone, Debug)]
pub struct PortGroup {
    pub(crate) shared: Arc<GroupShared>,
}

impl Default for PortGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl PortGroup {
    /// An empty group.
    pub fn new() -> Self {
        let (drop_tx, _) = watch::channel(0);
        Self {
            shared: Arc::new(GroupShared {
                controllers: Mutex::new(HashMap::new()),
                drop_tx,
                members: Mutex::new(Vec::new()),
                admins: AtomicUsize::new(0),
            }),
        }
    }

    /// Threads that have joined the group (made a [`crate::Port`] view of it).
    pub fn members(&self) -> usize {
        lock(&self.shared.members).len()
    }

    /// Closes every connection of the port, on every thread; the listener stays up.
    pub fn drop_connections(&self) {
        self.shared.drop_tx.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_spread_from_their_controllers_home() {
        let g = PortGroup::new();
        for t in threads(3) {
            let _ = g.shared.join_on(t);
        }
        let load = Arc::default();
        // Admin queues accepted by member 1: homes 1, 2, 0, 1.
        let homes: Vec<usize> = (0..4).map(|_| g.shared.place_admin(1)).collect();
        assert_eq!(homes, [1, 2, 0, 1]);
        // A Linux host's queues 1..=3 of a controller at home on 2: members 0, 1, 2.
        let io: Vec<(usize, LoadShare)> = (1..=3).map(|q| g.shared.place_io(&load, 2, q)).collect();
        assert_eq!(io.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        // A group of one never moves anything.
        let one = PortGroup::new();
        let _ = one.shared.join();
        assert_eq!(one.shared.place_admin(0), 0);
        assert_eq!(one.shared.place_io(&load, 0, 7).0, 0);
    }

    #[test]
    fn io_queues_go_to_the_least_loaded_thread_of_every_port() {
        // Two ports, each served by the same two threads, joined in different orders.
        let t = threads(2);
        let (a, b) = (PortGroup::new(), PortGroup::new());
        let _ = a.shared.join_on(t[0]);
        let _ = a.shared.join_on(t[1]);
        let _ = b.shared.join_on(t[1]);
        let _ = b.shared.join_on(t[0]);
        let load: Arc<QueueLoad> = Arc::default();
        let on = |i: usize| queues_on(&lock(&load.threads), t[i]);
        // A one-queue controller at home on member 1 of port a: its queue goes to thread 0.
        let first = a.shared.place_io(&load, 1, 1);
        assert_eq!(first.0, 0);
        // Port b's member 0 (thread 1) would be first in turn, and it is the less loaded.
        let second = b.shared.place_io(&load, 1, 1);
        assert_eq!((second.0, on(0), on(1)), (0, 1, 1));
        // Port a, where the turn says thread 0 (loaded like thread 1): a tie keeps the turn.
        let third = a.shared.place_io(&load, 1, 1);
        assert_eq!((third.0, on(0), on(1)), (0, 2, 1));
        // The turn says thread 0 again, but thread 1 has fewer.
        let fourth = b.shared.place_io(&load, 0, 1);
        assert_eq!((fourth.0, on(0), on(1)), (0, 2, 2));
        // Queues that have gone no longer count: thread 0 is the emptier now.
        drop((first, third));
        assert_eq!((on(0), on(1)), (0, 2));
        let fifth = b.shared.place_io(&load, 0, 1);
        assert_eq!((fifth.0, on(0), on(1)), (1, 1, 2));
    }

    /// `n` distinct thread identities.
    fn threads(n: usize) -> Vec<ThreadId> {
        (0..n)
            .map(|_| {
                std::thread::spawn(|| std::thread::current().id())
                    .join()
                    .unwrap()
            })
            .collect()
    }
}
