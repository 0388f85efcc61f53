//! Poll groups: the controller threads that serve one port's connections.
//!
//! Every thread of a port's group holds a view of the port ([`crate::Port`]); the port's
//! own thread accepts. A connection is placed when its Connect says what it is (like
//! SPDK's poll groups, which spread a host's queue pairs over reactors): an admin queue's
//! controller gets a home thread, round-robin over the group (the first stays where it was
//! accepted); I/O queue `qid` of that controller goes to the member `qid` places after its
//! home. So the queues of one host association run on every core even when the host sends
//! all its I/O down one path, and one-queue associations alternate. A connection placed on
//! another thread moves there right after its Connect, before its response is sent: the
//! socket and what the connection has set up ([`Moving`]) go through that member's inbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    /// The members' inboxes, in joining order.
    members: Mutex<Vec<mpsc::UnboundedSender<Box<Moving>>>>,
    /// Admin queues placed so far.
    admins: AtomicUsize,
}

impl GroupShared {
    /// Adds a member; returns its index and its inbox.
    pub fn join(&self) -> (usize, mpsc::UnboundedReceiver<Box<Moving>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut m = lock(&self.members);
        m.push(tx);
        (m.len() - 1, rx)
    }

    fn len(&self) -> usize {
        lock(&self.members).len().max(1)
    }

    /// The home of a new controller whose admin queue `member` accepted.
    pub fn place_admin(&self, member: usize) -> usize {
        (member + self.admins.fetch_add(1, Ordering::Relaxed)) % self.len()
    }

    /// The member that serves I/O queue `qid` of a controller at home on `home`.
    pub fn place_io(&self, home: usize, qid: u16) -> usize {
        (home + usize::from(qid)) % self.len()
    }

    /// Sends a connection to member `to`; gives it back if that member has stopped.
    pub fn send(&self, to: usize, m: Box<Moving>) -> Result<(), Box<Moving>> {
        let tx = lock(&self.members).get(to).cloned();
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
        for _ in 0..3 {
            let _ = g.shared.join();
        }
        // Admin queues accepted by member 1: homes 1, 2, 0, 1.
        let homes: Vec<usize> = (0..4).map(|_| g.shared.place_admin(1)).collect();
        assert_eq!(homes, [1, 2, 0, 1]);
        // A Linux host's queues 1..=3 of a controller at home on 2: members 0, 1, 2.
        let io: Vec<usize> = (1..=3).map(|q| g.shared.place_io(2, q)).collect();
        assert_eq!(io, [0, 1, 2]);
        // A group of one never moves anything.
        let one = PortGroup::new();
        let _ = one.shared.join();
        assert_eq!(one.shared.place_admin(0), 0);
        assert_eq!(one.shared.place_io(0, 7), 0);
    }
}
