use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;

use super::*;
use crate::span::Span;
use crate::testing::{local, read, run, submit, write};
use crate::{BufPool, CompletionQueue, Op};

fn temp_file(dir: &tempfile::TempDir, direct: bool, size: u64) -> Option<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true);
    if direct {
        o.custom_flags(nix::libc::O_DIRECT);
    }
    match o.open(dir.path().join("dev.img")) {
        Ok(f) => {
            f.set_len(size).unwrap();
            Some(f)
        }
        // tmpfs refuses O_DIRECT.
        Err(e) if direct && e.raw_os_error() == Some(nix::libc::EINVAL) => None,
        Err(e) => panic!("{e}"),
    }
}

/// Many requests in flight on one handle; every one completes, with its data.
fn many_in_flight(engine: Engine, direct: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(f) = temp_file(&dir, direct, 8 << 20) else {
        eprintln!("O_DIRECT unsupported where the test runs");
        return;
    };
    let dev = FileDevice::new(f, 8 << 20, 512, direct);
    local(async move {
        let io = dev.open(engine, 16).unwrap();
        assert_eq!(io.engine(), engine);
        let pool = BufPool::small(40).unwrap();
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        // 32 writes of 64 KiB: more than the ring's 16, so some wait inside the engine.
        for i in 0..32u64 {
            let mut b = pool.get(64 << 10).unwrap();
            b.as_mut_slice().fill(u8::try_from(i + 1).unwrap());
            io.submit(Request::write(i << 16, 64 << 10, b, i), &sink);
        }
        assert!(
            io.in_flight() > 0,
            "writes are at the kernel, not done inside submit"
        );
        let mut tags = Vec::new();
        while tags.len() < 32 {
            let c = tokio::time::timeout(std::time::Duration::from_secs(20), cq.next())
                .await
                .unwrap();
            c.result.unwrap();
            tags.push(c.tag);
        }
        tags.sort_unstable();
        assert_eq!(tags, (0..32).collect::<Vec<_>>());
        run(&io, Op::Flush, 0, 0).await.unwrap();
        for i in [0u64, 17, 31] {
            let back = read(&io, &pool, i << 16, 64 << 10).await.unwrap();
            assert!(back.iter().all(|&b| u64::from(b) == i + 1), "block {i}");
        }
        assert_eq!(io.in_flight(), 0);
        assert_eq!(pool.free(), 120, "every buffer came back");
    });
}

#[test]
fn uring_keeps_many_requests_in_flight() {
    many_in_flight(Engine::Uring, false);
}

#[test]
fn uring_with_o_direct() {
    many_in_flight(Engine::Uring, true);
}

#[test]
fn thread_pool_keeps_many_requests_in_flight() {
    many_in_flight(Engine::Threads, false);
}

#[test]
fn thread_pool_with_o_direct() {
    many_in_flight(Engine::Threads, true);
}

/// Any byte range is read as whole blocks and trimmed: never an alignment error.
#[test]
fn unaligned_ranges_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for direct in [false, true] {
        let Some(f) = temp_file(&dir, direct, 1 << 20) else {
            continue;
        };
        let dev = FileDevice::new(f, 1 << 20, 512, direct);
        local(async {
            for engine in [Engine::Uring, Engine::Threads] {
                let io = dev.open(engine, 8).unwrap();
                let pool = BufPool::small(2).unwrap();
                let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
                let mut padded = data.clone();
                padded.resize(200_192, 0);
                write(&io, &pool, 0, &padded).await.unwrap();
                for (offset, want) in [
                    (0u64, 1usize),
                    (3, 100),
                    (4095, 2),
                    (511, 99_999),
                    (0, 200_000),
                ] {
                    let s = Span::cover(offset, want, 512).unwrap();
                    let buf = pool.get(usize::try_from(s.len).unwrap()).unwrap();
                    let c = submit(&io, Request::read(s.offset, s.len, buf, 0)).await;
                    c.result.unwrap();
                    let mut b = c.buf.unwrap();
                    s.trim(&mut b);
                    let o = usize::try_from(offset).unwrap();
                    assert_eq!(
                        b.as_slice(),
                        &data[o..o + want],
                        "{offset}+{want} direct={direct}"
                    );
                }
            }
        });
    }
}

#[test]
fn errors_complete_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let f = temp_file(&dir, false, 1 << 20).unwrap();
    let dev = FileDevice::new(f, 1 << 20, 512, false);
    local(async {
        for engine in [Engine::Uring, Engine::Threads] {
            let io = dev.open(engine, 8).unwrap();
            let pool = BufPool::small(1).unwrap();
            assert!(read(&io, &pool, 7, 512).await.is_err(), "unaligned");
            assert!(
                read(&io, &pool, 1 << 20, 512).await.is_err(),
                "past the end"
            );
            run(&io, Op::WriteZeroes, 0, 4096).await.unwrap();
            run(&io, Op::Discard, 4096, 4096).await.unwrap();
        }
    });
    // A device larger than its file: a read past the file's end fails, never hangs.
    let f = temp_file(&dir, false, 4096).unwrap();
    let dev = FileDevice::new(f, 1 << 20, 512, false);
    local(async {
        for engine in [Engine::Uring, Engine::Threads] {
            let io = dev.open(engine, 8).unwrap();
            let pool = BufPool::small(1).unwrap();
            assert!(read(&io, &pool, 8192, 4096).await.is_err(), "{engine:?}");
        }
    });
}

#[test]
fn a_burst_of_requests_enters_the_kernel_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = temp_file(&dir, false, 1 << 20).unwrap();
    let dev = FileDevice::new(f, 1 << 20, 512, false);
    local(async move {
        let io = dev.open(Engine::Uring, 32).unwrap();
        let pool = BufPool::small(16).unwrap();
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        // Sixteen reads submitted in one go, as a connection does for the commands it
        // parsed from one socket read: one submission to the kernel.
        for i in 0..16u64 {
            let b = pool.get(4096).unwrap();
            io.submit(Request::read(i * 4096, 4096, b, i), &sink);
        }
        assert_eq!(
            io.submit_calls(),
            0,
            "nothing entered the kernel inside submit"
        );
        for _ in 0..16 {
            let c = tokio::time::timeout(std::time::Duration::from_secs(20), cq.next())
                .await
                .unwrap();
            c.result.unwrap();
        }
        assert_eq!(io.submit_calls(), 1, "one io_uring_enter for the burst");
        // A lone request later is a batch of its own.
        read(&io, &pool, 0, 4096).await.unwrap();
        assert_eq!(io.submit_calls(), 2);
    });
}

/// Write Zeroes on a file system without FALLOC_FL_ZERO_RANGE (tmpfs): the request goes to
/// the device's blocking-call threads and still zeroes the range.
#[test]
fn write_zeroes_where_the_file_system_refuses_zero_range() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm where the test runs");
        return;
    };
    let f = temp_file(&dir, false, 1 << 20).unwrap();
    let dev = FileDevice::new(f, 1 << 20, 512, false);
    local(async move {
        let io = dev.open(Engine::Uring, 8).unwrap();
        let pool = BufPool::small(2).unwrap();
        write(&io, &pool, 0, &[0xa5; 8192]).await.unwrap();
        run(&io, Op::WriteZeroes, 0, 4096).await.unwrap();
        let back = read(&io, &pool, 0, 8192).await.unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0), "zeroed");
        assert!(back[4096..].iter().all(|&b| b == 0xa5), "the rest kept");
        run(&io, Op::Discard, 4096, 4096).await.unwrap();
        let back = read(&io, &pool, 4096, 4096).await.unwrap();
        assert!(back.iter().all(|&b| b == 0), "deallocated reads as zeroes");
    });
}

#[test]
fn extents_are_offered_only_when_file_pieces_are_wanted_and_never_for_o_direct() {
    local(async {
        let dir = tempfile::tempdir().unwrap();
        let f = temp_file(&dir, false, 1 << 20).unwrap();
        let io = FileDevice::new(f, 1 << 20, 512, false)
            .open(Engine::Auto, 4)
            .unwrap();
        let mut out = Vec::new();
        assert!(
            !io.extents(0, 4096, false, &mut out),
            "file pieces not wanted"
        );
        assert!(io.extents(4096, 8192, true, &mut out));
        let [Extent::File { offset, len, .. }] = &out[..] else {
            panic!("one file extent: {out:?}");
        };
        assert_eq!((*offset, *len), (4096, 8192));
        assert!(!io.extents(1 << 20, 512, true, &mut out), "past the end");
        let Some(f) = temp_file(&dir, true, 1 << 20) else {
            return;
        };
        let direct = FileDevice::new(f, 1 << 20, 512, true)
            .open(Engine::Auto, 4)
            .unwrap();
        assert!(!direct.extents(0, 4096, true, &mut out), "O_DIRECT");
        assert_eq!(out.len(), 1);
    });
}
