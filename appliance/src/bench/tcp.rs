//! The reference: a raw TCP stream between two processes on loopback, iperf3-style.
//!
//! `baton bench` starts `baton bench-source` as a child process; the source writes 128 KiB
//! buffers to every connection as fast as the socket takes them, and the benchmark reads
//! them into a reused buffer, one thread per connection on each side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ChildGuard;

/// Serves raw TCP streams on `listen` until killed (`baton bench-source`).
pub fn run_source(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for s in l.incoming() {
        let mut s = s?;
        std::thread::spawn(move || {
            let buf = vec![0x5au8; 128 * 1024];
            // The reader closing the connection ends this stream.
            while s.write_all(&buf).is_ok() {}
        });
    }
    Ok(())
}

/// MB/s of `conns` raw TCP streams from a source process, read for `duration`.
pub fn measure(conns: usize, duration: Duration) -> anyhow::Result<f64> {
    let port = super::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = Command::new(std::env::current_exe()?)
        .args(["bench-source", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the TCP source")?;
    let _guard = ChildGuard(child);
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the TCP source did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<f64> {
                let mut s = TcpStream::connect(addr)?;
                let mut buf = vec![0u8; 128 * 1024];
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_millis(500) {
                    if s.read(&mut buf)? == 0 {
                        bail!("the TCP source closed the stream");
                    }
                }
                let t1 = Instant::now();
                let mut bytes = 0u64;
                while t1.elapsed() < duration {
                    bytes += s.read(&mut buf)? as u64;
                }
                Ok(bytes as f64 / t1.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        total += h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok(total / 1e6)
}
