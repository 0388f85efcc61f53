//! A blocking client of a device handle, for control-plane code that is synchronous (the
//! content store's catalog and ingest): the handle lives on an I/O thread of its own, with
//! its own runtime, buffer pool and completion poller, and each call waits for its answer.
//! Any offset and length work: reads cover whole blocks and keep the bytes asked for,
//! writes read the partial blocks at their edges first (the caller owns the range, so no
//! other writer races the read-modify-write).
//!
//! Never call it from a controller thread: it blocks its caller.

use std::rc::Rc;
use std::sync::mpsc as smpsc;

use tokio::sync::mpsc;

use crate::span::Span;
use crate::{BlockIo, BufPool, CompletionQueue, Geometry, IoError, Op, PoolClass, Request, Sink};

/// Opens the handle on the I/O thread, with that thread's pool.
pub type Opener = Box<dyn FnOnce(&BufPool) -> std::io::Result<Rc<dyn BlockIo>> + Send>;

enum Job {
    Read(u64, usize, smpsc::Sender<Result<Vec<u8>, IoError>>),
    Write(u64, Vec<u8>, smpsc::Sender<Result<Vec<u8>, IoError>>),
    Flush(smpsc::Sender<Result<Vec<u8>, IoError>>),
}

/// A device handle on its own I/O thread.
#[derive(Debug)]
pub struct Blocking {
    tx: mpsc::UnboundedSender<Job>,
    geometry: Geometry,
}

/// Bytes per device request: larger calls are split.
const PIECE: usize = 1 << 20;

impl Blocking {
    /// Starts the I/O thread `name` and opens the handle there.
    pub fn start(name: &str, open: Opener) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = smpsc::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                tokio::task::LocalSet::new().block_on(&rt, async move {
                    let pool = match BufPool::new(&[
                        PoolClass {
                            size: 4096,
                            count: 4,
                        },
                        PoolClass {
                            size: PIECE,
                            count: 2,
                        },
                    ]) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(std::io::Error::other(e.to_string())));
                            return;
                        }
                    };
                    let io = match open(&pool) {
                        Ok(io) => io,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(io.geometry()));
                    let client = Client {
                        io,
                        pool,
                        cq: Rc::new(CompletionQueue::default()),
                    };
                    while let Some(job) = rx.recv().await {
                        match job {
                            Job::Read(offset, len, reply) => {
                                let _ = reply.send(client.read(offset, len).await);
                            }
                            Job::Write(offset, data, reply) => {
                                let r = client.write(offset, &data).await.map(|()| Vec::new());
                                let _ = reply.send(r);
                            }
                            Job::Flush(reply) => {
                                let r = client.one(Op::Flush, 0, 0).await.map(|()| Vec::new());
                                let _ = reply.send(r);
                            }
                        }
                    }
                });
            })?;
        let geometry = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the I/O thread ended"))??;
        Ok(Self { tx, geometry })
    }

    /// The device's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn call(
        &self,
        job: impl FnOnce(smpsc::Sender<Result<Vec<u8>, IoError>>) -> Job,
    ) -> Result<Vec<u8>, IoError> {
        let (tx, rx) = smpsc::channel();
        self.tx
            .send(job(tx))
            .map_err(|_| IoError::PathDown("the I/O thread ended".into()))?;
        rx.recv()
            .map_err(|_| IoError::PathDown("the I/O thread ended".into()))?
    }

    /// Reads `buf.len()` bytes at any `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let data = self.call(|r| Job::Read(offset, buf.len(), r))?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Writes `data` at any `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.call(|r| Job::Write(offset, data.to_vec(), r))
            .map(drop)
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> Result<(), IoError> {
        self.call(Job::Flush).map(drop)
    }
}

/// The I/O thread's side.
struct Client {
    io: Rc<dyn BlockIo>,
    pool: BufPool,
    cq: Rc<CompletionQueue>,
}

impl Client {
    fn sink(&self) -> Rc<dyn Sink> {
        self.cq.clone()
    }

    async fn one(&self, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
        self.io
            .submit(Request::bare(op, offset, len, 0), &self.sink());
        self.cq.next().await.result
    }

    /// Reads whole blocks covering `[offset, offset + len)` into `out`.
    async fn read_into(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<(), IoError> {
        let bs = self.io.geometry().block_size;
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(PIECE - 2 * bs as usize);
            let s = Span::cover(offset + done as u64, want, bs)
                .ok_or_else(|| IoError::Invalid("range overflows".into()))?;
            let buf = self
                .pool
                .get(usize::try_from(s.len).unwrap_or(usize::MAX))
                .ok_or_else(|| IoError::Invalid("no I/O buffer".into()))?;
            self.io
                .submit(Request::read(s.offset, s.len, buf, 0), &self.sink());
            let c = self.cq.next().await;
            c.result?;
            let mut b = c
                .buf
                .ok_or_else(|| IoError::Invalid("the read lost its buffer".into()))?;
            s.trim(&mut b);
            out.extend_from_slice(b.as_slice());
            done += want;
        }
        Ok(())
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        let mut out = Vec::with_capacity(len);
        self.read_into(offset, len, &mut out).await?;
        Ok(out)
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let block = self.io.geometry().block_size;
        let bs = block as usize;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let want = (data.len() - done).min(PIECE - 2 * bs);
            let s = Span::cover(at, want, block)
                .ok_or_else(|| IoError::Invalid("range overflows".into()))?;
            let total = usize::try_from(s.len).unwrap_or(usize::MAX);
            let mut buf = self
                .pool
                .get(total)
                .ok_or_else(|| IoError::Invalid("no I/O buffer".into()))?;
            buf.set_window(0, total);
            // The partial blocks at the edges keep their other bytes.
            if s.head != 0 {
                let mut edge = Vec::with_capacity(bs);
                self.read_into(s.offset, bs, &mut edge).await?;
                buf.as_mut_slice()[..bs].copy_from_slice(&edge);
            }
            let tail = (s.head + want) % bs;
            if tail != 0 && (s.head == 0 || total > bs) {
                let last = s.offset + s.len - bs as u64;
                let mut edge = Vec::with_capacity(bs);
                self.read_into(last, bs, &mut edge).await?;
                buf.as_mut_slice()[total - bs..].copy_from_slice(&edge);
            }
            buf.as_mut_slice()[s.head..s.head + want].copy_from_slice(&data[done..done + want]);
            self.io
                .submit(Request::write(s.offset, s.len, buf, 0), &self.sink());
            self.cq.next().await.result?;
            done += want;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDevice;

    #[test]
    fn any_range_reads_and_writes_through_the_io_thread() {
        let dev = RamDevice::new("b", 4 << 20, 4096).unwrap();
        let d = dev.clone();
        let b = Blocking::start(
            "test-io",
            Box::new(move |_| Ok(Rc::new(d.open()) as Rc<dyn BlockIo>)),
        )
        .unwrap();
        assert_eq!(b.geometry().size, 4 << 20);
        b.write_at(0, &[1u8; 8192]).unwrap();
        // Inside one block, across blocks, and longer than one device request.
        b.write_at(100, b"hello").unwrap();
        b.write_at(4090, &[2u8; 12]).unwrap();
        let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
        b.write_at(10_001, &big[..]).unwrap();
        let mut back = vec![0u8; 8192];
        b.read_at(0, &mut back).unwrap();
        assert_eq!(&back[..100], &[1u8; 100][..]);
        assert_eq!(&back[100..105], b"hello");
        assert_eq!(&back[105..4090], &[1u8; 3985][..]);
        assert_eq!(&back[4090..4102], &[2u8; 12]);
        assert_eq!(&back[4102..], &[1u8; 4090][..]);
        let mut again = vec![0u8; big.len()];
        b.read_at(10_001, &mut again).unwrap();
        assert!(again == big);
        b.flush().unwrap();
        let mut past = [0u8; 10];
        assert!(b.read_at((4 << 20) - 5, &mut past).is_err());
    }
}
