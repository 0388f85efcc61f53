//! NVMe/TCP jobs: one client thread and one I/O queue each, `qd` commands in flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use nvme_target::host::{Digests, HostController, HostOptions, Namespace, Queue};

use super::{Measurement, Workload};

/// Options shared by every job.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Subsystem.
    pub nqn: String,
    /// Commands in flight per job.
    pub qd: u16,
    /// Bytes of the namespace touched.
    pub span: u64,
    /// Digests on.
    pub digests: bool,
    /// Measured time.
    pub duration: Duration,
}

/// Warm-up before measuring.
const WARMUP: Duration = Duration::from_millis(500);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn open(
    addr: SocketAddr,
    opts: &JobOptions,
) -> anyhow::Result<(HostController, Queue, Namespace)> {
    let mut o = HostOptions::new(&opts.nqn);
    o.queue_size = opts.qd.max(1) + 1;
    o.digests = Digests {
        header: opts.digests,
        data: opts.digests,
    };
    let mut c = HostController::connect(addr, o)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    c.set_num_queues(1).await?;
    let q = c.connect_io_queue(1).await?;
    let ns = c.namespace(1).await?;
    if ns.blocks * u64::from(ns.block_size) < opts.span {
        bail!("namespace 1 is smaller than the benchmark span");
    }
    Ok((c, q, ns))
}

/// Writes the span once so reads return real data.
pub fn prefill(addr: &SocketAddr, opts: &JobOptions) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (_c, mut q, ns) = open(*addr, opts).await?;
        let chunk = vec![0xa5u8; 1 << 20];
        let bs = u64::from(ns.block_size);
        let mut off = 0;
        while off < opts.span {
            q.write(&ns, off / bs, &chunk).await?;
            off += chunk.len() as u64;
        }
        Ok(())
    })
}

/// A small, fast PRNG for offsets (xorshift64*); quality is irrelevant here.
struct Offsets(u64);

impl Offsets {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct JobResult {
    ops: u64,
    bytes: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn job(
    addr: SocketAddr,
    index: usize,
    w: Workload,
    opts: JobOptions,
) -> anyhow::Result<JobResult> {
    let (_c, mut q, ns) = open(addr, &opts).await?;
    let size = w.io_size();
    let bs = u64::from(ns.block_size);
    let slots = opts.span / size as u64;
    let data = vec![0x5au8; size];
    let mut rng = Offsets(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let mut seq = (index as u64 * slots / 4) % slots.max(1);
    let mut started = vec![Instant::now(); usize::from(opts.qd) + 2];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut submit = |q: &mut Queue, started: &mut Vec<Instant>| -> anyhow::Result<()> {
        let slot = if w.is_random() {
            rng.next() % slots
        } else {
            seq = (seq + 1) % slots;
            seq
        };
        let lba = slot * size as u64 / bs;
        let cid = if w.is_write() {
            q.submit_write(&ns, lba, &data)?
        } else {
            q.submit_read(&ns, lba, size)?
        };
        started[usize::from(cid)] = Instant::now();
        Ok(())
    };
    for _ in 0..opts.qd {
        submit(&mut q, &mut started)?;
    }
    let t0 = Instant::now();
    let mut measuring = false;
    let mut t_measure = t0;
    let (mut ops, mut errors) = (0u64, 0u64);
    loop {
        let c = q.next().await?;
        let now = Instant::now();
        if !measuring && now - t0 >= WARMUP {
            measuring = true;
            t_measure = now;
        }
        if measuring {
            ops += 1;
            if c.status() != 0 {
                errors += 1;
            }
            let us = (now - started[usize::from(c.cid)]).as_micros();
            latency.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
        q.release(c.cid);
        if measuring && now - t_measure >= opts.duration {
            break;
        }
        submit(&mut q, &mut started)?;
    }
    let elapsed = t_measure.elapsed();
    // Drain what is still in flight so the target sees an orderly end.
    while q.free_slots() < usize::from(opts.qd) + 1 {
        let c = q.next().await?;
        q.release(c.cid);
    }
    Ok(JobResult {
        ops,
        bytes: ops * size as u64,
        errors,
        elapsed,
        latency,
    })
}

/// Runs `jobs` client threads against the ports (job i on port i mod n).
pub fn measure(
    ports: &[SocketAddr],
    jobs: usize,
    w: Workload,
    opts: &JobOptions,
) -> anyhow::Result<Measurement> {
    let handles: Vec<_> = (0..jobs)
        .map(|i| {
            let addr = ports[i % ports.len()];
            let opts = opts.clone();
            std::thread::spawn(move || runtime()?.block_on(job(addr, i, w, opts)))
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut iops, mut bytes_per_s, mut errors) = (0.0, 0.0, 0);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a job thread panicked"))??;
        let secs = r.elapsed.as_secs_f64();
        iops += r.ops as f64 / secs;
        bytes_per_s += r.bytes as f64 / secs;
        errors += r.errors;
        latency.add(&r.latency)?;
    }
    Ok(Measurement {
        workload: w,
        iops,
        mb_per_s: bytes_per_s / 1e6,
        latency_us: [
            latency.value_at_quantile(0.5) as f64,
            latency.value_at_quantile(0.99) as f64,
            latency.value_at_quantile(0.999) as f64,
        ],
        errors,
    })
}
