//! A completion queue: the usual [`Sink`], which a task waits on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::{Completion, Sink};

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
