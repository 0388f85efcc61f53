//! The stream service's listeners and heads through the real `baton` binary: connection
//! limits with clean refusals (HTTP 503 with Retry-After, a JSON error line, a closed data
//! port), whole-head and whole-line deadlines that dribbling cannot stretch, the head size
//! limit, raw-byte percent decoding, case-insensitive range units, and a load test
//! (thousands of idle connections and a connect flood on every stream listener while a
//! well-behaved client streams byte-exact, with the process's RSS and descriptors bounded).
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod stream_harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stream_harness::{BS, Baton, Opts, data, fetch, http_get, open_raw, put, read_line, rt, sha};

const MIB: u64 = 1024 * 1024;

/// Sends raw bytes as one request and reads everything the appliance answers.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn raw_byte_paths_and_range_units() {
    let b = Baton::start(2, &[]);
    let d = data(3 * BS, 1);
    rt().block_on(put(&b.client(), "x.ts", &d));
    // A multi-byte character right after '%' (this panicked the coordinator).
    let out = raw(
        b.http,
        b"GET /content/%a\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        out.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = raw(b.http, b"GET /content/%\xff%\xc3 HTTP/1.1\r\n\r\n");
    assert!(out.starts_with(b"HTTP/1.1 404") || out.starts_with(b"HTTP/1.1 400"));
    // Units are case-insensitive (RFC 9110).
    let (status, head, body) = http_get(b.http, "/content/x.ts", Some("Bytes=0-9"));
    assert!(status.contains("206"), "{head}");
    assert_eq!(body, d[..10]);
    let (status, _, body) = http_get(b.http, "/content/x%2Ets", Some("BYTES=-5"));
    assert!(status.contains("206"));
    assert_eq!(body, d[d.len() - 5..]);
    // The process is still serving.
    let (got, _) = rt()
        .block_on(fetch(&b.client(), "x.ts", 0, None, None))
        .unwrap();
    assert_eq!(got, d);
    // A head over the limit.
    let mut big = b"GET /content/x.ts HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(9000, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let out = raw(b.http, &big);
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Writes `bytes` one every `gap`; returns how long the appliance kept the connection open
/// (`None`: still open after all of them).
fn dribble(
    addr: SocketAddr,
    prefix: &[u8],
    bytes: &[u8],
    gap: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(prefix).unwrap();
    s.set_read_timeout(Some(gap)).unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    for &byte in bytes {
        if s.write_all(&[byte]).is_err() {
            return (Some(t.elapsed()), answer);
        }
        match s.read(&mut buf) {
            Ok(0) => return (Some(t.elapsed()), answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (Some(t.elapsed()), answer),
        }
    }
    (None, answer)
}

#[test]
fn dribbled_heads_lines_and_attaches_are_cut_at_the_handshake_timeout() {
    let mut o = Opts::new(1);
    o.limits = "handshake_timeout_ms: 1000".into();
    let b = Baton::start_with(&o);
    rt().block_on(put(&b.client(), "x.ts", &data(BS, 2)));
    let gap = Duration::from_millis(200);
    // 60 bytes at 5 per second: 12 s, far past the 1 s handshake timeout.
    let filler = vec![b'a'; 60];
    let (closed, answer) = dribble(
        b.http,
        b"GET /content/x.ts HTTP/1.1\r\nX-Slow: ",
        &filler,
        gap,
    );
    assert!(closed.is_some(), "the HTTP head was dribbled for 12 s");
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (closed, answer) = dribble(b.control, b"{\"op\":\"list\",\"x\":\"", &filler, gap);
    assert!(closed.is_some(), "the control line was dribbled for 12 s");
    assert!(String::from_utf8_lossy(&answer).contains("408"));
    let (_, info) = open_raw(b.control, "x.ts", None);
    let port = info["data_ports"][0].as_u64().unwrap() as u16;
    let (closed, _) = dribble(
        SocketAddr::from(([127, 0, 0, 1], port)),
        b"",
        &[0u8; 39],
        gap,
    );
    assert!(closed.is_some(), "the ATTACH was dribbled for 8 s");
}

#[test]
fn listeners_refuse_cleanly_over_their_connection_limit() {
    let mut o = Opts::new(1);
    o.limits = "stream_connections: 8, handshake_timeout_ms: 30000".into();
    let b = Baton::start_with(&o);
    rt().block_on(put(&b.client(), "x.ts", &data(BS, 3)));
    let (_, info) = open_raw(b.control, "x.ts", None);
    let data_port = SocketAddr::from((
        [127, 0, 0, 1],
        info["data_ports"][0].as_u64().unwrap() as u16,
    ));
    for (addr, what) in [
        (b.http, "http"),
        (b.control, "control"),
        (data_port, "data"),
    ] {
        let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // The listener counts them once it accepted them.
        std::thread::sleep(Duration::from_millis(300));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        match what {
            "http" => assert!(
                text.starts_with("HTTP/1.1 503") && text.contains("Retry-After:"),
                "{text}"
            ),
            "control" => {
                let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
                assert_eq!(v["code"], 503, "{text}");
            }
            _ => assert!(out.is_empty(), "the data port just closes: {text}"),
        }
        drop(held);
    }
    // Places come back when connections close.
    assert!(b.eventually(10, || {
        let mut s = TcpStream::connect(b.control).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"{\"op\":\"list\"}\n").unwrap();
        read_line(&mut s).contains("items")
    }));
}

/// Keeps connecting to `addr` and closing at once until `stop`; counts the connections.
fn flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(b"garbage\r\n\r\n");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// A connection the appliance closed at once: a listener at its connection cap refuses so.
fn is_refusal(error: &str) -> bool {
    [
        "ConnectionReset",
        "ConnectionRefused",
        "BrokenPipe",
        "UnexpectedEof",
    ]
    .iter()
    .any(|k| error.contains(k))
}

/// While the flood holds a listener at its connection cap, a good client may be refused
/// (closed at once) now and then, as by any full server; it tries again, as clients do. Twenty
/// refusals in a row fail the test.
fn refused_retried<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
    for _ in 0..20 {
        if let Some(t) = attempt() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("refused 20 times in a row");
}

#[test]
fn thousands_of_idle_connections_and_a_flood_do_not_stop_a_good_client() {
    let mut o = Opts::new(2);
    o.limits = "stream_connections: 1024, handshake_timeout_ms: 120000".into();
    let b = Baton::start_with(&o);
    let d = data(128 * BS, 4);
    let c = b.client();
    rt().block_on(put(&c, "load.bin", &d));
    let (_, info) = open_raw(b.control, "load.bin", None);
    let ports: Vec<SocketAddr> = info["data_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p.as_u64().unwrap() as u16)))
        .collect();
    let listeners: Vec<SocketAddr> = [b.control, b.http].into_iter().chain(ports).collect();
    let base_rss = b.rss();
    let base_fds = b.descriptors();
    // 900 idle connections on each of the 4 listeners: 3,600 in all.
    let mut idle = Vec::new();
    for &addr in &listeners {
        for _ in 0..900 {
            idle.push(TcpStream::connect(addr).unwrap());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = listeners
        .iter()
        .map(|&a| flood(a, Arc::clone(&stop), Arc::clone(&count)))
        .collect();
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    for round in 0..2 {
        let (got, _) =
            refused_retried(
                || match rt().block_on(fetch(&c, "load.bin", 0, None, None)) {
                    Ok(r) => Some(r),
                    Err(e) if is_refusal(&format!("{e:?}")) => None,
                    Err(e) => panic!("framed round {round}: {e}"),
                },
            );
        assert_eq!(sha(&got), sha(&d), "framed round {round}");
        let (status, _, body) = refused_retried(|| {
            let r = http_get(b.http, "/content/load.bin", None);
            (!r.0.is_empty()).then_some(r)
        });
        assert!(status.contains("200"), "{status}");
        assert_eq!(sha(&body), sha(&d), "HTTP round {round}");
        peak_rss = peak_rss.max(b.rss());
        peak_fds = peak_fds.max(b.descriptors());
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    eprintln!(
        "idle {} + flood {} connections: RSS {} -> peak {} MiB, descriptors {} -> peak {}",
        idle.len(),
        count.load(Ordering::Relaxed),
        base_rss / MIB,
        peak_rss / MIB,
        base_fds,
        peak_fds
    );
    // Bounds (README, stream service limits): each listener holds at most its 1,024
    // connections, one descriptor each; memory per idle connection is a task and a small
    // buffer, well under 16 KiB.
    assert!(
        peak_fds <= base_fds + 4 * 1024 + 16,
        "{peak_fds} descriptors"
    );
    assert!(
        peak_rss <= base_rss + 128 * MIB,
        "RSS {} MiB",
        peak_rss / MIB
    );
    drop(idle);
}
