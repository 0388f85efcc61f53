//! A completion queue: the usual [`Sink`], which a task waits on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use std::rc::Rc;

use crate::{BlockIo, Completion, IoError, Op, Request, Sink};

/// Completions in the order the engines delivered them, and the task waiting for them.
#[derive(Default)]
pub struct CompletionQueue {
    done: RefCell<VecDeque<Completion>>,
    waiter: Cell<Option<Waker>>,
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("ready", &self.done.borrow().len())
            .finish()
    }
}

impl CompletionQueue {
    /// An empty queue with room for `n` completions before it allocates.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            done: RefCell::new(VecDeque::with_capacity(n)),
            waiter: Cell::new(None),
        }
    }

    /// The oldest completion, if any.
    pub fn pop(&self) -> Option<Completion> {
        self.done.borrow_mut().pop_front()
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        self.done.borrow().len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.done.borrow().is_empty()
    }

    /// Resolves once a completion is waiting (one task waits at a time).
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.done.borrow().is_empty() {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// The next completion, waiting for it.
    pub async fn next(&self) -> Completion {
        loop {
            if let Some(c) = self.pop() {
                return c;
            }
            self.ready().await;
        }
    }
}

impl Sink for CompletionQueue {
    fn complete(&self, c: Completion) {
        self.done.borrow_mut().push_back(c);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }
}

/// Flushes every device of `devices` at once and waits for all of them (each engine has its
/// own command deadlines, so this ends); returns the position and error of each that failed.
pub async fn flush_all(devices: &[Rc<dyn BlockIo>]) -> Vec<(usize, IoError)> {
    let cq = Rc::new(CompletionQueue::with_capacity(devices.len()));
    let sink: Rc<dyn Sink> = cq.clone();
    for (i, d) in devices.iter().enumerate() {
        d.submit(Request::bare(Op::Flush, 0, 0, i as u64), &sink);
    }
    let mut failed = Vec::new();
    for _ in devices {
        let c = cq.next().await;
        if let Err(e) = c.result {
            failed.push((usize::try_from(c.tag).unwrap_or(usize::MAX), e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDevice;
    use crate::testing::{Order, Scripted, local};

    #[test]
    fn flush_all_waits_for_late_completions_and_names_the_failures() {
        local(async {
            let ok: Rc<dyn BlockIo> = Rc::new(RamDevice::new("a", 1 << 20, 512).unwrap().open());
            let late = Rc::new(Scripted::new(
                RamDevice::new("b", 1 << 20, 512).unwrap().open(),
            ));
            let failing = Rc::new(Scripted::new(
                RamDevice::new("c", 1 << 20, 512).unwrap().open(),
            ));
            failing.fail_next(1);
            late.hold();
            let devices: Vec<Rc<dyn BlockIo>> = vec![ok, late.clone(), failing];
            let flush = flush_all(&devices);
            tokio::pin!(flush);
            // The held flush keeps it waiting.
            assert!(poll_once(flush.as_mut()).await.is_none());
            late.release(Order::Fifo);
            let failed = flush.await;
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, 2);
        });
    }

    /// Polls `f` once: `Some` if it finished.
    async fn poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        poll_fn(|cx| {
            Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }
}
