//! Content store safety through the real `baton` binary: concurrent puts never share
//! blocks, a remove or replace never changes the bytes of a running stream, existing names
//! are refused unless replaced, a full store answers 507 and damages nothing, listings of
//! any size, and `kill -9` at random points during concurrent puts and removes.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod stream_harness;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use stream::client::ClientError;
use stream_harness::{BS, Baton, Opts, data, fetch, put, read_line, rt, sha};

/// Starts a raw put: sends the request and waits for the go-ahead.
fn begin_raw_put(b: &Baton, name: &str, size: usize) -> TcpStream {
    let mut s = TcpStream::connect(b.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, r#"{{"op":"put","name":"{name}","size":{size}}}"#).unwrap();
    let go = read_line(&mut s);
    assert!(go.contains("continue"), "{go}");
    s
}

#[test]
fn overlapping_puts_never_share_blocks() {
    let mut b = Baton::start(2, &[]);
    let (da, db) = (data(20 * BS + 3, 1), data(20 * BS + 9, 2));
    let mut a = begin_raw_put(&b, "a.bin", da.len());
    a.write_all(&da[..da.len() / 2]).unwrap();
    // b starts while a is half way: it must get other blocks.
    let mut bb = begin_raw_put(&b, "b.bin", db.len());
    bb.write_all(&db).unwrap();
    assert!(read_line(&mut bb).contains("stored"));
    a.write_all(&da[da.len() / 2..]).unwrap();
    assert!(read_line(&mut a).contains("stored"));
    let c = b.client();
    rt().block_on(async {
        assert_eq!(
            sha(&fetch(&c, "a.bin", 0, None, None).await.unwrap().0),
            sha(&da)
        );
        assert_eq!(
            sha(&fetch(&c, "b.bin", 0, None, None).await.unwrap().0),
            sha(&db)
        );
    });
    b.kill();
    let report = b.check_store();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.items, 2);
}

#[test]
fn remove_or_replace_during_a_stream_keeps_its_bytes() {
    let b = Baton::start(2, &[]);
    let c = b.client();
    let orig = data(64 * BS, 3);
    rt().block_on(put(&c, "v.bin", &orig));
    for replace in [false, true] {
        // About 2 s paced, so the remove and the puts land in the middle.
        let rate = (orig.len() as u64 * 8) / 2;
        let reader =
            std::thread::spawn(move || rt().block_on(fetch(&c, "v.bin", 0, None, Some(rate))));
        std::thread::sleep(Duration::from_millis(400));
        rt().block_on(async {
            if replace {
                let other = data(64 * BS, 100);
                c.replace("v.bin", other.len() as u64, &other[..], |_| {})
                    .await
                    .unwrap();
            } else {
                c.remove("v.bin").await.unwrap();
            }
            // New items that would take freed blocks.
            for i in 0..3 {
                put(&c, &format!("other-{replace}-{i}"), &data(64 * BS, 200 + i)).await;
            }
        });
        let (got, _) = reader.join().unwrap().unwrap();
        assert!(
            got == orig,
            "the running stream kept the old bytes (replace: {replace})"
        );
        rt().block_on(async {
            for i in 0..3 {
                let name = format!("other-{replace}-{i}");
                assert_eq!(
                    sha(&fetch(&c, &name, 0, None, None).await.unwrap().0),
                    sha(&data(64 * BS, 200 + i)),
                );
                c.remove(&name).await.unwrap();
            }
            if !replace {
                put(&c, "v.bin", &orig).await;
            }
        });
    }
    rt().block_on(async {
        // After the replace, new sessions see the new item.
        assert_eq!(
            sha(&fetch(&c, "v.bin", 0, None, None).await.unwrap().0),
            sha(&data(64 * BS, 100))
        );
    });
}

#[test]
fn an_existing_name_is_refused_unless_replaced() {
    let b = Baton::start(1, &[]);
    let c = b.client();
    rt().block_on(async {
        put(&c, "n.bin", &data(BS, 1)).await;
        let again = c.put("n.bin", 5, &b"hello"[..], |_| {}).await;
        assert!(
            matches!(again, Err(ClientError::Refused { code: 409, .. })),
            "{again:?}"
        );
        assert_eq!(
            sha(&fetch(&c, "n.bin", 0, None, None).await.unwrap().0),
            sha(&data(BS, 1))
        );
        c.replace("n.bin", 5, &b"hello"[..], |_| {}).await.unwrap();
        assert_eq!(fetch(&c, "n.bin", 0, None, None).await.unwrap().0, b"hello");
        assert_eq!(c.list().await.unwrap().len(), 1);
    });
    // The CLI says so too, and --replace replaces.
    let f = b.dir.join("n.txt");
    std::fs::write(&f, b"world").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["put", "--name", "n.bin", "--stream", &b.control.to_string()])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "put",
            "--replace",
            "--name",
            "n.bin",
            "--stream",
            &b.control.to_string(),
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = rt().block_on(fetch(&c, "n.bin", 0, None, None)).unwrap().0;
    assert_eq!(got, b"world");
}

#[test]
fn a_full_store_answers_507_and_damages_nothing() {
    let mut o = Opts::new(2);
    o.device_size = "4MiB";
    let mut b = Baton::start_with(&o);
    let c = b.client();
    let mut kept = Vec::new();
    rt().block_on(async {
        for i in 0.. {
            let d = data(10 * BS, i);
            match c
                .put(&format!("f{i}"), d.len() as u64, &d[..], |_| {})
                .await
            {
                Ok(_) => kept.push((format!("f{i}"), d)),
                Err(ClientError::Refused { code: 507, .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(!kept.is_empty());
    // The CLI shows the store's answer, not a broken pipe, even for a large file.
    let f = b.dir.join("big.bin");
    std::fs::write(&f, data(64 * BS, 77)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["put", "--stream", &b.control.to_string()])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("507") && err.contains("full"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    rt().block_on(async {
        for (name, d) in &kept {
            assert_eq!(
                sha(&fetch(&c, name, 0, None, None).await.unwrap().0),
                sha(d)
            );
        }
        // Space comes back when an item goes.
        c.remove(&kept[0].0).await.unwrap();
        put(&c, "after", &data(10 * BS, 999)).await;
    });
    b.kill();
    let report = b.check_store();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[test]
fn listing_works_past_256_kib() {
    let mut o = Opts::new(1);
    o.stream_extra = ", catalog_entries: 2048".into();
    let b = Baton::start_with(&o);
    let c = b.client();
    let n = 1200;
    let name = |i: usize| format!("{i:05}-{}", "x".repeat(240));
    rt().block_on(async {
        for i in 0..n {
            put(&c, &name(i), &[]).await;
        }
        let items = c.list().await.unwrap();
        assert_eq!(items.len(), n);
        assert!(items.iter().enumerate().all(|(i, it)| it.name == name(i)));
    });
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["ls", "--stream", &b.control.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.len() > 256 * 1024);
    assert_eq!(text.lines().count(), n + 1, "a header and every item");
}

/// A small xorshift generator: the rounds differ but a failure can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A name's operations in one round: what each would leave (`None`: removed), and whether
/// one of them was not acknowledged before the kill.
type Touched = (Vec<Option<Vec<u8>>>, bool);

#[test]
fn kill_9_during_concurrent_puts_and_removes_keeps_every_committed_item() {
    let mut o = Opts::new(2);
    o.device_size = "16MiB";
    let mut b = Baton::start_with(&o);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    // What the client was told: name -> content of the last acknowledged put; removed names
    // are gone. Unacknowledged operations may or may not have happened.
    let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
    for round in 0..20u64 {
        let c = b.client();
        let kill_after = Duration::from_millis(50 + rng.below(400));
        let ops: Vec<(String, Option<Vec<u8>>)> = (0..8)
            .map(|i| {
                let name = format!("k{}", rng.below(12));
                if rng.below(3) == 0 {
                    (name, None)
                } else {
                    let len = rng.below(12 * BS as u64) as usize;
                    (name, Some(data(len, round * 100 + i)))
                }
            })
            .collect();
        let pending: Vec<(String, Option<Vec<u8>>)> = ops.clone();
        let results = rt().block_on(async move {
            let mut tasks = Vec::new();
            for (name, d) in ops {
                tasks.push(tokio::spawn(async move {
                    let r = match &d {
                        Some(d) => c.replace(&name, d.len() as u64, &d[..], |_| {}).await,
                        None => c.remove(&name).await,
                    };
                    r.is_ok()
                }));
            }
            let t = tokio::time::sleep(kill_after);
            tokio::pin!(t);
            let mut acked = Vec::new();
            for task in tasks {
                tokio::select! {
                    r = task => acked.push(r.unwrap_or(false)),
                    () = &mut t => break,
                }
            }
            acked
        });
        b.kill();
        // What each name may hold now: the result of any of this round's operations on it
        // (concurrent ones commit in any order), or its old content if one of them was not
        // acknowledged before the kill. `None`: absent.
        let mut touched: HashMap<String, Touched> = HashMap::new();
        for (i, (name, d)) in pending.into_iter().enumerate() {
            let e = touched.entry(name).or_default();
            e.0.push(d);
            e.1 |= !results.get(i).copied().unwrap_or(false);
        }
        let report = b.check_store();
        assert!(report.problems.is_empty(), "round {round}: {report:?}");
        b.restart();
        let c = b.client();
        let listed: Vec<String> = rt()
            .block_on(c.list())
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        let mut now: HashMap<String, Vec<u8>> = HashMap::new();
        for name in listed {
            let got = rt().block_on(fetch(&c, &name, 0, None, None)).unwrap().0;
            now.insert(name, got);
        }
        let mut names: Vec<&String> = committed
            .keys()
            .chain(now.keys())
            .chain(touched.keys())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let state = now.get(name).map(|d| sha(d));
            let old = committed.get(name).map(|d| sha(d));
            let ok = match touched.get(name) {
                None => state == old,
                Some((values, some_unacked)) => {
                    values.iter().any(|v| v.as_ref().map(|d| sha(d)) == state)
                        || (*some_unacked && state == old)
                }
            };
            assert!(
                ok,
                "round {round}: `{name}` holds what no operation left there"
            );
        }
        // The store's state is what it is now (unknown operations resolved).
        committed = now;
    }
}
