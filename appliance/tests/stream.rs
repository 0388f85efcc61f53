//! The stream service through the real `baton` binary: exact bytes over 1, 2 and 4
//! controllers, order under random controller delays, many sessions, a controller stopped
//! mid-stream, a crash during put, hostile requests, and real clients (curl, ffprobe).
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod stream_harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use stream::client::ClientError;
use stream_harness::{BS, Baton, data, fetch, http_get, put, rt, sha};

#[test]
fn exact_bytes_over_one_two_and_four_controllers() {
    for n in [1, 2, 4] {
        let b = Baton::start(n, &[]);
        let c = b.client();
        rt().block_on(async {
            for (i, len) in [0, 1, BS - 1, BS, BS + 1, 37 * BS + 123]
                .into_iter()
                .enumerate()
            {
                let name = format!("item-{i}.bin");
                let d = data(len, i as u64 + 1);
                put(&c, &name, &d).await;
                let (got, _) = fetch(&c, &name, 0, None, None).await.unwrap();
                assert_eq!(sha(&got), sha(&d), "{len} bytes over {n} controllers");
                if len > 10 {
                    let (part, _) = fetch(&c, &name, 3, Some(len as u64 - 7), None)
                        .await
                        .unwrap();
                    assert!(
                        part == d[3..len - 4],
                        "range of {len} bytes over {n} controllers"
                    );
                }
            }
            let items = c.list().await.unwrap();
            assert_eq!(items.len(), 6);
        });
        // The HTTP face hands the socket from controller to controller.
        let d = data(37 * BS + 123, 6);
        let (status, head, body) = http_get(b.http, "/content/item-5.bin", None);
        assert!(status.contains("200"), "{status}");
        assert!(
            head.contains(&format!("Content-Length: {}", d.len())),
            "{head}"
        );
        assert!(head.contains("Accept-Ranges: bytes"));
        assert_eq!(sha(&body), sha(&d), "HTTP over {n} controllers");
        let (status, head, body) =
            http_get(b.http, "/content/item-5.bin", Some("bytes=100000-300000"));
        assert!(status.contains("206"), "{status}");
        assert!(
            head.contains(&format!("Content-Range: bytes 100000-300000/{}", d.len())),
            "{head}"
        );
        assert!(body == d[100_000..=300_000]);
        let status = baton::admin::fetch_status(b.admin).unwrap();
        assert!(status.volumes.iter().any(|v| v.role == "content store"));
    }
}

#[test]
fn order_holds_when_controllers_are_delayed_at_random() {
    let b = Baton::start(4, &[("BATON_STREAM_TEST_JITTER_MS", "15")]);
    let c = b.client();
    rt().block_on(async {
        let d = data(48 * BS + 5, 9);
        put(&c, "jitter.bin", &d).await;
        let (got, _) = fetch(&c, "jitter.bin", 0, None, None).await.unwrap();
        assert_eq!(sha(&got), sha(&d));
    });
    let (_, _, body) = http_get(b.http, "/content/jitter.bin", None);
    assert_eq!(sha(&body), sha(&data(48 * BS + 5, 9)));
}

#[test]
fn two_hundred_concurrent_sessions() {
    let b = Baton::start(2, &[]);
    let c = b.client();
    let rt = rt();
    rt.block_on(async {
        let d = data(5 * BS + 77, 3);
        put(&c, "many.bin", &d).await;
        let want = sha(&d);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                c.fetch("many.bin", 0, None, None, &mut out, |_, _| {})
                    .await
                    .map(|_| sha(&out))
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), want);
        }
    });
    let metrics = String::from_utf8(
        baton::admin::call(b.admin, hyper::Method::GET, "/metrics")
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains("baton_stream_sessions_completed_total 200"),
        "{metrics}"
    );
}

#[test]
fn a_controller_stopped_mid_stream_is_replanned_away() {
    let b = Baton::start(3, &[]);
    let c = b.client();
    let d = data(64 * BS, 4);
    rt().block_on(put(&c, "replan.bin", &d));
    let admin = b.admin;
    let token = baton::admin::auth::read_token_file(&b.dir.join("admin.token")).unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        baton::admin::call_with_token(
            admin,
            hyper::Method::POST,
            "/api/v1/controllers/1/stop-streams",
            Some(&token),
        )
        .unwrap();
    });
    // About 2.7 s paced: the controller stops in the middle.
    let rate = (d.len() as u64 * 8) * 10 / 27;
    let (got, replans) = rt()
        .block_on(fetch(&c, "replan.bin", 0, None, Some(rate)))
        .unwrap();
    stopper.join().unwrap();
    assert_eq!(sha(&got), sha(&d), "every byte exactly once, in order");
    assert!(replans >= 1, "the session was re-planned");
    // New sessions avoid the stopped controller.
    let (again, _) = rt()
        .block_on(fetch(&c, "replan.bin", 0, None, None))
        .unwrap();
    assert_eq!(sha(&again), sha(&d));
}

#[test]
fn a_crash_during_put_leaves_the_store_consistent() {
    let mut b = Baton::start(2, &[]);
    let first = data(9 * BS + 1, 11);
    rt().block_on(put(&b.client(), "first.bin", &first));
    // Start a large put and kill the appliance half way through.
    let mut s = TcpStream::connect(b.control).unwrap();
    let big = data(200 * BS, 12);
    writeln!(
        s,
        r#"{{"op":"put","name":"second.bin","size":{}}}"#,
        big.len()
    )
    .unwrap();
    s.write_all(&big[..big.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.crash_and_restart();
    let c = b.client();
    rt().block_on(async {
        let items = c.list().await.unwrap();
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["first.bin"],
            "the interrupted put never became visible"
        );
        let (got, _) = fetch(&c, "first.bin", 0, None, None).await.unwrap();
        assert_eq!(sha(&got), sha(&first));
        // The space of the interrupted put is reusable.
        put(&c, "second.bin", &big).await;
        let (got, _) = fetch(&c, "second.bin", 0, None, None).await.unwrap();
        assert_eq!(sha(&got), sha(&big));
        c.remove("first.bin").await.unwrap();
        assert!(matches!(
            fetch(&c, "first.bin", 0, None, None).await,
            Err(ClientError::Refused { code: 404, .. })
        ));
    });
    // Removal and replacement survive a restart too.
    b.crash_and_restart();
    let names: Vec<String> = rt()
        .block_on(b.client().list())
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec!["second.bin".to_owned()]);
}

#[test]
fn hostile_requests_get_clear_errors() {
    let b = Baton::start(2, &[]);
    let c = b.client();
    rt().block_on(async {
        put(&c, "x.ts", &data(3 * BS, 5)).await;
        assert!(matches!(
            fetch(&c, "nope", 0, None, None).await,
            Err(ClientError::Refused { code: 404, .. })
        ));
        assert!(matches!(
            fetch(&c, "x.ts", 3 * BS as u64 + 1, None, None).await,
            Err(ClientError::Refused { code: 416, .. })
        ));
        assert!(matches!(
            fetch(&c, "x.ts", 10, Some(3 * BS as u64), None).await,
            Err(ClientError::Refused { code: 416, .. })
        ));
        assert!(matches!(
            c.put("a/b", 1, &[0u8][..], |_| {}).await,
            Err(ClientError::Refused { code: 400, .. })
        ));
    });
    // Bad JSON and oversized lines.
    let mut s = TcpStream::connect(b.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"{\"op\":\"format\"}\n").unwrap();
    let mut line = [0u8; 256];
    let n = s.read(&mut line).unwrap();
    assert!(String::from_utf8_lossy(&line[..n]).contains("\"code\":400"));
    s.write_all(&vec![b'a'; 10_000]).unwrap();
    let n = s.read(&mut line).unwrap();
    assert!(String::from_utf8_lossy(&line[..n]).contains("longer than"));
    // A data channel with the wrong secret is refused, and another session's secret does
    // not open this one.
    let mut ctl = TcpStream::connect(b.control).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ctl.write_all(b"{\"op\":\"open\",\"name\":\"x.ts\"}\n")
        .unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while ctl.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        reply.push(byte[0]);
    }
    let info: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let session = info["session"].as_u64().unwrap();
    let port = info["data_ports"][0].as_u64().unwrap() as u16;
    let mut wrong = [0u8; 40];
    wrong[..4].copy_from_slice(&0x414e_5442u32.to_le_bytes());
    wrong[8..16].copy_from_slice(&session.to_le_bytes());
    wrong[16..32].copy_from_slice(&[0x55; 16]);
    let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    d.write_all(&wrong).unwrap();
    let mut ack = [0u8; 1];
    d.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0xff, "wrong secret refused");
    assert!(
        matches!(d.read(&mut ack), Ok(0) | Err(_)),
        "and the channel closed"
    );
    // HTTP errors.
    assert!(http_get(b.http, "/content/nope", None).0.contains("404"));
    let (status, head, _) = http_get(b.http, "/content/x.ts", Some("bytes=999999999-"));
    assert!(
        status.contains("416") && head.contains(&format!("Content-Range: bytes */{}", 3 * BS)),
        "{head}"
    );
    assert!(http_get(b.http, "/other", None).0.contains("404"));
    let (_, head, _) = http_get(b.http, "/content/x.ts", Some("bytes=0-0"));
    assert!(head.contains("Content-Type: video/mp2t"), "{head}");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
#[ignore = "needs curl, ffmpeg and ffprobe (tests/run installs them and runs ignored tests)"]
fn curl_and_ffprobe_read_an_mpeg_ts_over_http() {
    assert!(
        have("curl") && have("ffmpeg") && have("ffprobe"),
        "curl, ffmpeg and ffprobe must be installed"
    );
    let b = Baton::start(2, &[]);
    let ts = b.dir.join("test.ts");
    let st = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=4:size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=4",
        ])
        .args(["-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts"])
        .arg(&ts)
        .status()
        .unwrap();
    assert!(st.success());
    let d = std::fs::read(&ts).unwrap();
    assert!(d.len() > 3 * BS, "a multi-block file");
    rt().block_on(put(&b.client(), "movie.ts", &d));
    let url = format!("http://{}/content/movie.ts", b.http);
    let out = b.dir.join("curl.ts");
    let st = Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        sha(&std::fs::read(&out).unwrap()),
        sha(&d),
        "curl got the exact bytes"
    );
    // A range in the middle.
    let mid = Command::new("curl")
        .args(["-sSf", "-r", "100000-250000", &url])
        .output()
        .unwrap();
    assert!(mid.status.success());
    assert!(mid.stdout == d[100_000..=250_000]);
    // ffprobe decodes the streams straight from the HTTP face.
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "csv=p=0",
            &url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(
        text.contains("mpeg2video,video") && text.contains("mp2,audio"),
        "{text}"
    );
    let dec = Command::new("ffmpeg")
        .args(["-v", "error", "-i", &url, "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        dec.status.success() && dec.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
}
