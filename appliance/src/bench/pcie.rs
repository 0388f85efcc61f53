//! `baton bench-pcie`: 4 KiB random reads through the appliance's own nvme-pcie engine
//! ([`bdev::pcie`]: one queue pair, the thread's DMA-mapped buffer pool, completions polled
//! by the reactor), at a sweep of queue depths.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bdev::pcie::PcieNamespace;
use bdev::{BlockIo, BufPool, CompletionQueue, PoolClass, Request, Sink};
use ffi::PciDevice;

/// One depth's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthResult {
    /// Requests kept in flight.
    pub qd: u16,
    /// Reads completed per second.
    pub iops: f64,
    /// Reads completed with an error.
    pub errors: u64,
    /// Measured time in seconds.
    pub seconds: f64,
}

/// A bench that could not run.
#[derive(Debug, thiserror::Error)]
pub enum PcieBenchError {
    /// The engine or its memory could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// Runs 4 KiB random reads over the first `span` bytes of `ns` for `each` at every depth in
/// `depths`, on a runtime of its own (the calling thread's): the same engine a Baton
/// controller uses. The namespace's queue depth must exceed the largest depth.
pub fn sweep<D: PciDevice + Send + Sync + 'static>(
    ns: &PcieNamespace<D>,
    depths: &[u16],
    each: Duration,
    span: u64,
) -> Result<Vec<DepthResult>, PcieBenchError> {
    let setup = |e: &dyn std::fmt::Display| PcieBenchError::Setup(e.to_string());
    let max = usize::from(depths.iter().copied().max().unwrap_or(1).max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| setup(&e))?;
    let pool = BufPool::new(&[PoolClass {
        size: 4096,
        count: max,
    }])
    .map_err(|e| setup(&e))?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        let io: Rc<dyn BlockIo> = Rc::new(ns.open(0, &pool).map_err(|e| setup(&e))?);
        let blocks = (span.min(io.geometry().size) / 4096).max(1);
        let mut out = Vec::with_capacity(depths.len());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * 4096
        };
        for &qd in depths {
            let cq = Rc::new(CompletionQueue::with_capacity(usize::from(qd)));
            let sink: Rc<dyn Sink> = cq.clone();
            for tag in 0..u64::from(qd.max(1)) {
                let buf = pool.get(4096).ok_or_else(|| setup(&"no buffer"))?;
                io.submit(Request::read(next(), 4096, buf, tag), &sink);
            }
            let t = Instant::now();
            let (mut done, mut errors) = (0u64, 0u64);
            while t.elapsed() < each {
                let c = cq.next().await;
                done += 1;
                if c.result.is_err() {
                    errors += 1;
                }
                let Some(buf) = c.buf else {
                    return Err(setup(&"a read lost its buffer (timed out)"));
                };
                io.submit(Request::read(next(), 4096, buf, c.tag), &sink);
            }
            let seconds = t.elapsed().as_secs_f64();
            for _ in 0..qd.max(1) {
                cq.next().await;
            }
            out.push(DepthResult {
                qd,
                iops: done as f64 / seconds,
                errors,
                seconds,
            });
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use nvme_driver::sim::SimNvme;

    #[test]
    fn the_sweep_runs_every_depth_through_the_engine() {
        let sim = Arc::new(SimNvme::new(1, 16384, 5));
        let ns =
            PcieNamespace::new(vec![Arc::clone(&sim)], 1, 129, Duration::from_secs(10)).unwrap();
        let before = sim.commands();
        let r = sweep(&ns, &[1, 8, 128], Duration::from_millis(100), 8 << 20).unwrap();
        assert_eq!(r.iter().map(|d| d.qd).collect::<Vec<_>>(), vec![1, 8, 128]);
        assert!(r.iter().all(|d| d.errors == 0 && d.iops > 0.0), "{r:?}");
        let done: f64 = r.iter().map(|d| d.iops * d.seconds).sum();
        assert!(
            (sim.commands() - before) as f64 >= done,
            "every read was a command at the device"
        );
    }
}
