//! What wakes a connection besides its socket, its devices and its deadlines: the target's
//! shutdown, the port dropping its connections, its controller's teardown, an Abort naming
//! one of its commands, and for an admin queue events and reservation notices.
//!
//! Each source is watched by a small task of its own on the connection's thread, which
//! raises a flag and wakes the connection. So the connection's loop, which turns once per
//! burst of PDUs, polls one flag for all of them, instead of registering and dropping a
//! waiter on every source every turn (each a lock in tokio's `Notify` and `watch`).

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Poll, Waker};

use tokio::task::JoinHandle;

/// The target is shutting down (or its shutdown signal is gone): drain and close.
pub(crate) const SHUTDOWN: u8 = 1;
/// Close now: the port dropped its connections, or the controller was torn down.
pub(crate) const CLOSE: u8 = 2;
/// An Abort on the admin queue named a command of this queue.
pub(crate) const ABORT: u8 = 4;
/// Something that raises asynchronous events changed.
pub(crate) const EVENTS: u8 = 8;
/// A reservation notice for this controller.
pub(crate) const NOTICE: u8 = 16;

/// The flags raised since the connection last looked, and its waker.
#[derive(Default)]
struct Flags {
    raised: Cell<u8>,
    waker: Cell<Option<Waker>>,
}

impl Flags {
    fn raise(&self, bit: u8) {
        self.raised.set(self.raised.get() | bit);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A handle the watching tasks raise their flag through.
#[derive(Clone)]
pub(crate) struct Raise {
    flags: Rc<Flags>,
    bit: u8,
}

impl Raise {
    /// Raises the flag and wakes the connection.
    pub fn raise(&self) {
        self.flags.raise(self.bit);
    }
}

/// One connection's signals; dropping it ends the watching tasks.
#[derive(Default)]
pub(crate) struct Signals {
    flags: Rc<Flags>,
    tasks: Vec<JoinHandle<()>>,
}

impl Signals {
    /// Starts `watch` on this thread (inside its `LocalSet`) with a handle that raises
    /// `bit`.
    pub fn watch<F>(&mut self, bit: u8, watch: impl FnOnce(Raise) -> F)
    where
        F: Future<Output = ()> + 'static,
    {
        let raise = Raise {
            flags: Rc::clone(&self.flags),
            bit,
        };
        self.tasks.push(tokio::task::spawn_local(watch(raise)));
    }

    /// Resolves once a flag is raised (at once if one is).
    pub async fn raised(&self) {
        poll_fn(|cx| {
            if self.flags.raised.get() != 0 {
                return Poll::Ready(());
            }
            let w = self.flags.waker.take();
            match w {
                Some(w) if w.will_wake(cx.waker()) => self.flags.waker.set(Some(w)),
                _ => self.flags.waker.set(Some(cx.waker().clone())),
            }
            Poll::Pending
        })
        .await;
    }

    /// The flags raised since the last call, cleared.
    pub fn take(&self) -> u8 {
        self.flags.raised.replace(0)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watching_task_wakes_the_connection_with_its_flag_and_ends_with_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let (tx, mut rx) = tokio::sync::watch::channel(0u32);
            let mut s = Signals::default();
            let probe = Rc::new(());
            let held = Rc::clone(&probe);
            s.watch(ABORT, move |r| async move {
                let _held = held;
                while rx.changed().await.is_ok() {
                    r.raise();
                }
            });
            assert_eq!(s.take(), 0);
            tx.send_replace(1);
            s.raised().await;
            assert_eq!(s.take(), ABORT);
            assert_eq!(s.take(), 0, "taking clears");
            tx.send_replace(2);
            tx.send_replace(3);
            s.raised().await;
            assert_eq!(s.take(), ABORT, "changes coalesce into one flag");
            drop(s);
            tokio::task::yield_now().await;
            assert_eq!(
                Rc::strong_count(&probe),
                1,
                "the task ended with its signals"
            );
        });
    }
}
