use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn bound(limit: usize, budget: Budget) -> (Listener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (
        Listener::new(l, "test", limit, budget).with_refusal(b"busy\n"),
        addr,
    )
}

/// Reads until EOF with a deadline; what the peer sent before closing.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut v))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    v
}

#[tokio::test]
async fn over_the_limit_is_refused_with_the_answer_and_closed() {
    let (mut l, addr) = bound(2, Budget::new(100)).await;
    let _c1 = TcpStream::connect(addr).await.unwrap();
    let a1 = l.accept().await;
    let _c2 = TcpStream::connect(addr).await.unwrap();
    let a2 = l.accept().await;
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    let mut c4 = TcpStream::connect(addr).await.unwrap();
    // The listener refuses c3 while it waits for a connection it may admit; dropping a
    // slot lets the next one (c4 is refused too while both places are taken).
    let accept = tokio::spawn(async move {
        let a = l.accept().await;
        (l, a)
    });
    assert_eq!(read_to_close(&mut c3).await, b"busy\n");
    assert_eq!(read_to_close(&mut c4).await, b"busy\n");
    drop(a1);
    let _c5 = TcpStream::connect(addr).await.unwrap();
    let (l, a5) = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .unwrap()
        .unwrap();
    let stats = l.stats();
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 3);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 2);
    assert_eq!(stats.open.load(Ordering::Relaxed), 2);
    drop((a2, a5));
    assert_eq!(stats.open.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn listeners_share_the_descriptor_budget() {
    let budget = Budget::new(1);
    let (mut l1, addr1) = bound(10, budget.clone()).await;
    let (mut l2, addr2) = bound(10, budget.clone()).await;
    let _c1 = TcpStream::connect(addr1).await.unwrap();
    let a1 = l1.accept().await;
    assert_eq!(budget.available(), 0);
    let mut c2 = TcpStream::connect(addr2).await.unwrap();
    let second = tokio::spawn(async move { l2.accept().await });
    assert_eq!(read_to_close(&mut c2).await, b"busy\n");
    drop(a1);
    assert_eq!(budget.available(), 1);
    let _c3 = TcpStream::connect(addr2).await.unwrap();
    let a3 = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.available(), 0);
    drop(a3);
    assert_eq!(budget.available(), 1);
}

#[test]
fn budget_for_a_descriptor_limit_keeps_the_reserve() {
    assert_eq!(Budget::for_descriptor_limit(1024, 100).capacity(), 924);
    assert_eq!(Budget::for_descriptor_limit(10, 100).capacity(), 0);
    let b = Budget::new(0);
    assert!(!b.try_take());
}
