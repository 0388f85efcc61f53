//! The accept loop out of descriptors: peers are refused through the reserve and the loop
//! backs off instead of spinning. Its own test binary, because it lowers the process's
//! descriptor limit.
#![allow(clippy::tests_outside_test_module)]

use std::fs::File;
use std::time::Duration;

use listener::{Budget, Listener};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "current_thread")]
async fn emfile_refuses_pending_peers_and_backs_off() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut l = Listener::new(l, "test", 100, Budget::new(100));
    let stats = l.stats();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Connect first (the client socket needs a descriptor), then use up the rest.
    let mut client = TcpStream::connect(addr).await.unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let mut hog = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        hog.push(f);
    }
    let task = tokio::spawn(async move {
        let _ = l.accept().await;
    });
    let mut v = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut v)).await;
    assert!(
        read.is_ok(),
        "the pending peer is refused (closed), not left in the backlog"
    );
    // Give the loop time to show whether it spins: with backoff it makes a handful of
    // attempts in half a second, a spinning loop makes thousands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors = stats.errors.load(std::sync::atomic::Ordering::Relaxed);
    assert!(errors >= 1, "the descriptor shortage was seen");
    assert!(
        errors < 50,
        "{errors} failed accepts in 0.5 s: the loop spins"
    );
    task.abort();
    drop(hog);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}
