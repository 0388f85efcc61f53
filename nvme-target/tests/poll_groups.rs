//! Poll groups: the connections of one port are dealt over the controller threads, so the
//! I/O queues of one host controller run on several threads and share its state.
#![allow(clippy::tests_outside_test_module)]

mod common;

use common::{rt, timeout};

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, OPEN_NQN, pattern};
use nvme_spec::status;
use nvme_target::host::{HostController, HostError, HostOptions, Namespace, Queue};

#[test]
fn one_controllers_io_queues_run_on_both_threads() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        assert_eq!(c.set_num_queues(2).await.unwrap(), 2);
        let ns = c.namespace(2).await.unwrap();
        let mut q1 = c.connect_io_queue(1).await.unwrap();
        let mut q2 = c.connect_io_queue(2).await.unwrap();
        // Written through one queue, read back through the other: one namespace, whichever
        // thread serves the queue.
        let data = pattern(64 * 1024, 7);
        q1.write(&ns, 8, &data).await.unwrap();
        assert_eq!(q2.read(&ns, 8, data.len()).await.unwrap(), data);
        assert_eq!(q1.read(&ns, 8, data.len()).await.unwrap(), data);
        assert_eq!(
            h.ns2.reader_threads(),
            2,
            "the two I/O queues of one controller are served by two threads"
        );
        // The controller's state is one: a queue ID taken on one thread is taken on both.
        let err = c.connect_io_queue(2).await.unwrap_err();
        assert!(
            matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::CONNECT_INVALID_PARAM)
        );
        // Keep-alive on the admin queue, I/O on the others, then a clean shutdown, which
        // flushes from the admin queue's thread.
        c.keep_alive().await.unwrap();
        q2.flush_ns(&ns).await.unwrap();
        c.shutdown().await.unwrap();
    }));
    h.stop();
}

#[test]
fn dropping_a_ports_connections_reaches_every_thread() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        c.set_num_queues(2).await.unwrap();
        let ns = c.namespace(2).await.unwrap();
        let mut q1 = c.connect_io_queue(1).await.unwrap();
        let mut q2 = c.connect_io_queue(2).await.unwrap();
        q1.read(&ns, 0, 4096).await.unwrap();
        q2.read(&ns, 0, 4096).await.unwrap();
        assert_eq!(h.ns2.reader_threads(), 2);
        h.drop_connections(0);
        // Every queue of the port is closed, whichever thread served it.
        for q in [&mut q1, &mut q2] {
            let mut closed = false;
            for _ in 0..100 {
                if q.read(&ns, 0, 4096).await.is_err() {
                    closed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(closed, "an I/O queue outlived drop_connections");
        }
        assert!(
            c.keep_alive().await.is_err(),
            "the admin queue is closed too"
        );
    }));
    h.stop();
}

#[test]
fn one_queue_controllers_alternate_between_the_threads() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        // Two host controllers with one I/O queue each, on one port (a benchmark's jobs):
        // their homes alternate, so their I/O queues do too.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (c, mut q, ns) = one_queue_controller(h.ports[0], 2).await;
            q.read(&ns, 0, 4096).await.unwrap();
            held.push((c, q));
        }
        assert_eq!(
            h.ns2.reader_threads(),
            2,
            "each thread serves one of the I/O queues"
        );
    }));
    h.stop();
}

#[test]
fn one_queue_controllers_on_two_ports_share_the_threads_out() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        // A benchmark's shape: one short association first (its prefill), then one job per
        // port, each one controller with one I/O queue. The gone queue no longer counts,
        // and the two jobs' queues go to different threads whatever their ports' turns say.
        {
            let (mut c, mut q, ns) = one_queue_controller(h.ports[0], 1).await;
            q.write(&ns, 0, &pattern(4096, 1)).await.unwrap();
            c.shutdown().await.unwrap();
        }
        let pairs = |i: usize| {
            h.target.metrics().ports[i]
                .queue_pairs
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        for _ in 0..500 {
            if pairs(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pairs(0), 0, "the first association's queues are gone");
        let mut held = Vec::new();
        for port in [h.ports[0], h.ports[1]] {
            let (c, mut q, ns) = one_queue_controller(port, 2).await;
            q.read(&ns, 0, 4096).await.unwrap();
            held.push((c, q));
        }
        assert_eq!(
            h.ns2.reader_threads(),
            2,
            "the two jobs' I/O queues are served by two threads"
        );
    }));
    h.stop();
}

/// A host controller of the open subsystem with one I/O queue (a benchmark job's shape), and
/// its namespace `nsid`.
async fn one_queue_controller(port: SocketAddr, nsid: u32) -> (HostController, Queue, Namespace) {
    let mut c = HostController::connect(port, HostOptions::new(OPEN_NQN))
        .await
        .unwrap();
    c.set_num_queues(1).await.unwrap();
    let ns = c.namespace(nsid).await.unwrap();
    let q = c.connect_io_queue(1).await.unwrap();
    (c, q, ns)
}
