//! The stream session lifecycle through the real `baton` binary, the same for the framed
//! and the HTTP face: a controller lost during an HTTP GET is re-planned and the body
//! completes; a device read error ends the session with an error the client sees; clients
//! that stop reading are dropped at the send timeout and give their admission back (with
//! the process's memory bounded meanwhile); OPENs never attached are freed at the
//! handshake timeout; stale batons never finish a re-planned session; SIGTERM drains even
//! when clients stop reading.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod stream_harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use stream::client::ClientError;
use stream_harness::{BS, Baton, Opts, attach_raw, data, fetch, http_get, open_raw, put, rt, sha};

const MIB: u64 = 1024 * 1024;

/// Sends a GET and reads the head; the body is left in the socket.
fn get_head(b: &Baton, path: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(b.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..p]).into_owned();
            return (s, head, got[p + 4..].to_vec());
        }
    }
}

#[test]
fn a_controller_lost_during_an_http_get_is_replanned_and_the_body_completes() {
    let mut o = Opts::new(3);
    // Slow enough that the stop lands in the middle of the body.
    o.env = vec![("BATON_STREAM_TEST_JITTER_MS".into(), "12".into())];
    let b = Baton::start_with(&o);
    let d = data(256 * BS, 21);
    rt().block_on(put(&b.client(), "big.bin", &d));
    let (mut s, head, mut body) = get_head(&b, "/content/big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = vec![0u8; 64 * 1024];
    while body.len() < 2 * MIB as usize {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "body cut at {} bytes", body.len());
        body.extend_from_slice(&buf[..n]);
    }
    b.admin_post("/api/v1/controllers/1/stop-streams");
    s.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), d.len(), "the whole body");
    assert_eq!(sha(&body), sha(&d), "byte-exact");
    assert!(b.metric("baton_stream_replans_total") >= 1, "re-planned");
    assert!(
        b.eventually(20, || b.sessions() == 0),
        "the session was freed"
    );
    // And the admission it held is back: another GET over the remaining controllers.
    let (status, _, again) = http_get(b.http, "/content/big.bin", None);
    assert!(status.contains("200"), "{status}");
    assert_eq!(sha(&again), sha(&d));
}

#[test]
fn a_device_read_error_ends_the_session_with_an_error_the_client_sees() {
    let b = Baton::start(2, &[]);
    let d = data(64 * BS, 22);
    let c = b.client();
    rt().block_on(put(&c, "bad.bin", &d));
    // The second device loses everything past its first MiB: reads there fail.
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.dir.join("c1.img"))
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let r = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), fetch(&c, "bad.bin", 0, None, None)).await
    });
    match r {
        Ok(Err(ClientError::Refused { code: 500, message })) => {
            assert!(message.contains("block"), "{message}");
        }
        other => panic!("expected the session's failure, got {other:?}"),
    }
    // HTTP: the connection closes short of the Content-Length (no hang).
    let (mut s, head, mut body) = get_head(&b, "/content/bad.bin");
    assert!(
        head.contains(&format!("Content-Length: {}", d.len())),
        "{head}"
    );
    let r = s.read_to_end(&mut body);
    assert!(r.is_ok(), "closed, not timed out: {r:?}");
    assert!(body.len() < d.len());
    assert!(
        b.eventually(20, || b.sessions() == 0),
        "both sessions freed"
    );
    assert!(b.metric("baton_stream_sessions_failed_total") >= 2);
    let log = b.log();
    assert!(
        log.matches("device read error at block").count() >= 2,
        "the reason is logged for both faces: {log}"
    );
}

#[test]
fn clients_that_stop_reading_are_dropped_at_the_send_timeout() {
    let mut o = Opts::new(2);
    o.limits = "send_timeout_ms: 1000".into();
    o.stream_extra = ", send_budget: 6".into();
    let b = Baton::start_with(&o);
    let d = data(256 * BS, 23);
    rt().block_on(put(&b.client(), "s.bin", &d));
    // Three framed sessions attach and never read; three HTTP GETs never read.
    let mut keep = Vec::new();
    for _ in 0..3 {
        let (ctl, info) = open_raw(b.control, "s.bin", None);
        assert_eq!(info["reply"], "session", "{info}");
        let chans = attach_raw(&info);
        keep.push((ctl, chans));
    }
    let mut gets = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(b.http).unwrap();
        write!(s, "GET /content/s.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        gets.push(s);
    }
    assert!(b.eventually(10, || b.sessions() == 6));
    // Every one is dropped and gives its admission back.
    assert!(
        b.eventually(60, || b.sessions() == 0),
        "{} sessions still held",
        b.sessions()
    );
    assert!(b.metric("baton_stream_sessions_failed_total") >= 6);
    let (got, _) = rt()
        .block_on(fetch(&b.client(), "s.bin", 0, None, None))
        .unwrap();
    assert_eq!(sha(&got), sha(&d), "the budget is back for everyone else");
    // The framed clients learned why on their control connection.
    let (mut ctl, _) = keep.remove(0);
    let mut line = stream_harness::read_line(&mut ctl);
    while line.contains("\"replan\"") {
        line = stream_harness::read_line(&mut ctl);
    }
    assert!(
        line.contains("408") && line.contains("send timeout"),
        "{line}"
    );
}

#[test]
fn a_framed_client_that_never_reads_does_not_grow_the_appliance() {
    let mut o = Opts::new(2);
    // Long enough to watch; the watchdog fires many times meanwhile.
    o.limits = "send_timeout_ms: 60000".into();
    o.sync_timeout_ms = 100;
    let b = Baton::start_with(&o);
    let d = data(512 * BS, 24);
    rt().block_on(put(&b.client(), "m.bin", &d));
    let mut keep = Vec::new();
    for _ in 0..24 {
        let (ctl, info) = open_raw(b.control, "m.bin", None);
        let chans = attach_raw(&info);
        keep.push((ctl, chans));
    }
    // Let every channel's socket buffers fill, then watch the process for a while.
    std::thread::sleep(Duration::from_secs(3));
    let before = b.rss();
    let t = Instant::now();
    let mut peak = before;
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(b.rss());
    }
    eprintln!("RSS {} MiB -> peak {} MiB", before / MIB, peak / MIB);
    assert!(
        peak < before + 16 * MIB,
        "RSS grew from {} to {} MiB with 24 stuck sessions",
        before / MIB,
        peak / MIB
    );
    assert_eq!(
        b.metric("baton_stream_replans_total"),
        0,
        "a slow client is not a stalled controller"
    );
    drop(keep);
}

#[test]
fn opens_never_attached_are_freed_at_the_handshake_timeout() {
    let mut o = Opts::new(2);
    o.limits = "handshake_timeout_ms: 500".into();
    o.stream_extra = ", send_budget: 8".into();
    let b = Baton::start_with(&o);
    let d = data(3 * BS, 25);
    rt().block_on(put(&b.client(), "o.bin", &d));
    let mut keep = Vec::new();
    for _ in 0..8 {
        let (ctl, info) = open_raw(b.control, "o.bin", None);
        assert_eq!(info["reply"], "session", "{info}");
        keep.push(ctl);
    }
    let (_, refused) = open_raw(b.control, "o.bin", None);
    assert_eq!(refused["code"], 503, "{refused}");
    // Counted as a capacity refusal, the one reason BatonStreamsRefused alerts on.
    let reason = |r: &str| {
        b.metric(&format!(
            "baton_stream_sessions_refused_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!(reason("capacity"), 1);
    assert_eq!(reason("not_found"), 0);
    assert!(
        b.eventually(5, || b.sessions() == 0),
        "freed at the handshake timeout"
    );
    let line = stream_harness::read_line(&mut keep[0]);
    assert!(line.contains("408"), "{line}");
    let (got, _) = rt()
        .block_on(fetch(&b.client(), "o.bin", 0, None, None))
        .unwrap();
    assert_eq!(got, d);
    assert!(b.metric("baton_stream_sessions_failed_total") >= 8);
}

#[test]
fn stale_batons_never_move_a_replanned_session() {
    // Batons wait up to 300 ms at random, the watchdog re-plans after 100 ms: stale
    // batons wake up under old plans all the time.
    let mut o = Opts::new(3);
    o.env = vec![("BATON_STREAM_TEST_JITTER_MS".into(), "300".into())];
    o.sync_timeout_ms = 100;
    let b = Baton::start_with(&o);
    let d = data(10 * BS + 17, 26);
    let c = b.client();
    rt().block_on(put(&c, "j.bin", &d));
    let mut replans = 0;
    for _ in 0..3 {
        let (got, r) = rt().block_on(fetch(&c, "j.bin", 0, None, None)).unwrap();
        assert_eq!(sha(&got), sha(&d));
        replans += r;
        let (status, _, body) = http_get(b.http, "/content/j.bin", None);
        assert!(status.contains("200"));
        assert_eq!(sha(&body), sha(&d), "HTTP body exact under re-plans");
    }
    assert!(replans > 0, "the test did re-plan");
    assert!(b.eventually(10, || b.sessions() == 0));
    assert_eq!(
        b.metric("baton_stream_sessions_completed_total"),
        6,
        "every session completed, none failed"
    );
}

#[test]
fn sigterm_drains_even_when_clients_stop_reading() {
    let mut o = Opts::new(2);
    o.limits = "send_timeout_ms: 1000".into();
    let mut b = Baton::start_with(&o);
    let d = data(256 * BS, 27);
    rt().block_on(put(&b.client(), "t.bin", &d));
    let (ctl, info) = open_raw(b.control, "t.bin", None);
    let chans = attach_raw(&info);
    let mut get = TcpStream::connect(b.http).unwrap();
    write!(get, "GET /content/t.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(b.eventually(10, || b.sessions() == 2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(b.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            break Some(st);
        }
        if t.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "baton exited cleanly: {status:?}"
    );
    drop((ctl, chans, get));
}
