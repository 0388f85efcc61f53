//! An I/O queue pair with many commands in flight: submit returns at once, completions are
//! polled later and matched to their command by CID, in whatever order the controller
//! finishes them. Each CID slot has its own PRP list page (also the Dataset Management range
//! list), so data buffers are the caller's DMA memory and nothing is copied.
//!
//! A command that passes its deadline fails with [`DriverError::Timeout`] and breaks the
//! queue: its completion may still arrive, so its CID (and its buffer, which the caller
//! must not reuse) is never used again, and nothing more is submitted; commands already in
//! flight still complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ffi::{DmaRegion, PciDevice};
use nvme_spec::command::{DsmRange, Sqe, io_opcode};
use nvme_spec::{FromZeros, IntoBytes};

use crate::controller::set_prp;
use crate::queue::QueuePair;
use crate::{DriverError, NamespaceInfo, PAGE, prp};

/// What one command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCommand {
    /// Read `nlb` blocks at `slba` into `len` bytes of DMA memory at `iova`.
    Read {
        /// First block.
        slba: u64,
        /// Number of blocks.
        nlb: u32,
        /// Device address of the buffer.
        iova: u64,
    },
    /// Write `nlb` blocks at `slba` from DMA memory at `iova`.
    Write {
        /// First block.
        slba: u64,
        /// Number of blocks.
        nlb: u32,
        /// Device address of the buffer.
        iova: u64,
    },
    /// Flush.
    Flush,
    /// Write Zeroes over `nlb` (1..=65536) blocks at `slba`.
    WriteZeroes {
        /// First block.
        slba: u64,
        /// Number of blocks.
        nlb: u32,
    },
    /// Dataset Management, deallocate one range.
    Deallocate {
        /// First block.
        slba: u64,
        /// Number of blocks.
        nlb: u32,
    },
}

/// Why a command was not submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every CID is in flight: submit again after a completion.
    #[error("the queue is full")]
    Full,
    /// The command is malformed or cannot be described by PRPs.
    #[error(transparent)]
    Invalid(DriverError),
    /// The queue is unusable (see the module documentation).
    #[error(transparent)]
    Broken(DriverError),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    tag: u64,
    opcode: u8,
    deadline: Instant,
}

/// An I/O queue pair owned by one thread, commands in flight up to its depth minus one.
#[derive(Debug)]
pub struct IoQueue<D: PciDevice> {
    dev: Arc<D>,
    qp: QueuePair,
    lists: DmaRegion,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    mdts: usize,
    timeout: Duration,
    broken: bool,
    fatal: bool,
}

impl<D: PciDevice> IoQueue<D> {
    pub(crate) fn new(
        dev: Arc<D>,
        qp: QueuePair,
        lists: DmaRegion,
        mdts: usize,
        timeout: Duration,
    ) -> Self {
        // One CID stays unused: a full SQ would look empty (head == tail).
        let cids = qp.depth.saturating_sub(1).max(1);
        Self {
            dev,
            qp,
            lists,
            slots: vec![None; usize::from(cids)],
            free: (0..cids).rev().collect(),
            mdts,
            timeout,
            broken: false,
            fatal: false,
        }
    }

    /// Keeps the queue's rings and PRP lists allocated for good: for a queue the device
    /// may still use (it could not be deleted) whose owner is gone.
    pub fn leak(&self) {
        self.lists.leak();
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qp.qid
    }

    /// Largest transfer of one command, in bytes (MDTS).
    pub fn max_transfer(&self) -> usize {
        self.mdts
    }

    /// Most commands in flight at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Commands in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether another command can be submitted now.
    pub fn has_room(&self) -> bool {
        !self.broken && !self.free.is_empty()
    }

    /// Whether the queue is unusable (a command timed out or the controller is fatal).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the controller reported a fatal status (only a reset recovers it).
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// Submits `cmd` to namespace `ns`; its completion carries `tag`.
    pub fn submit(
        &mut self,
        ns: &NamespaceInfo,
        cmd: IoCommand,
        tag: u64,
    ) -> Result<(), SubmitError> {
        if self.broken {
            return Err(SubmitError::Broken(if self.fatal {
                DriverError::Fatal
            } else {
                DriverError::QueueBroken(self.qp.qid)
            }));
        }
        let Some(&cid) = self.free.last() else {
            return Err(SubmitError::Full);
        };
        let list = self.lists.sub(usize::from(cid) * PAGE, PAGE);
        let bs = ns.block_size as usize;
        let mut sqe = Sqe::new_zeroed();
        sqe.nsid.set(ns.nsid);
        match cmd {
            IoCommand::Read { slba, nlb, iova } | IoCommand::Write { slba, nlb, iova } => {
                let len = nlb as usize * bs;
                if nlb == 0 || len > self.mdts {
                    return Err(SubmitError::Invalid(DriverError::Invalid(format!(
                        "{nlb} blocks is not 1..=MDTS ({} bytes)",
                        self.mdts
                    ))));
                }
                let (p1, p2) = prp::build(iova, len, &list).map_err(SubmitError::Invalid)?;
                set_prp(&mut sqe, p1, p2);
                sqe.opcode = if matches!(cmd, IoCommand::Read { .. }) {
                    io_opcode::READ
                } else {
                    io_opcode::WRITE
                };
                sqe.set_lba_range(slba, nlb);
            }
            IoCommand::Flush => sqe.opcode = io_opcode::FLUSH,
            IoCommand::WriteZeroes { slba, nlb } => {
                if !(1..=65536).contains(&nlb) {
                    return Err(SubmitError::Invalid(DriverError::Invalid(format!(
                        "Write Zeroes of {nlb} blocks: one command covers 1..=65536"
                    ))));
                }
                sqe.opcode = io_opcode::WRITE_ZEROES;
                sqe.set_lba_range(slba, nlb);
            }
            IoCommand::Deallocate { slba, nlb } => {
                if nlb == 0 {
                    return Err(SubmitError::Invalid(DriverError::Invalid(
                        "a deallocate range of 0 blocks".into(),
                    )));
                }
                let mut r = DsmRange::new_zeroed();
                r.slba.set(slba);
                r.nlb.set(nlb);
                list.write(0, r.as_bytes());
                sqe.opcode = io_opcode::DSM;
                sqe.cdw11.set(nvme_spec::command::DSM_ATTR_DEALLOCATE);
                set_prp(&mut sqe, list.iova(), 0);
            }
        }
        self.free.pop();
        self.slots[usize::from(cid)] = Some(Slot {
            tag,
            opcode: sqe.opcode,
            deadline: Instant::now() + self.timeout,
        });
        self.qp.submit_cid(self.dev.bar0(), sqe, cid);
        Ok(())
    }

    /// Takes every completion the controller has posted, calling `f(tag, result)` for each,
    /// and fails commands past their deadline. Returns how many commands finished.
    pub fn poll(&mut self, mut f: impl FnMut(u64, Result<(), DriverError>)) -> usize {
        let bar = self.dev.bar0();
        let mut n = 0;
        while let Some(c) = self.qp.poll(bar) {
            let cid = c.cid.get();
            let Some(slot) = self.slots.get_mut(usize::from(cid)).and_then(Option::take) else {
                // A completion for no command (a late one of a timed-out command).
                continue;
            };
            self.free.push(cid);
            n += 1;
            let st = c.status_field();
            f(
                slot.tag,
                match st & 0x7ff {
                    0 => Ok(()),
                    _ => Err(DriverError::status(st, slot.opcode)),
                },
            );
        }
        if self.in_flight() > 0 {
            n += self.expire(&mut f);
        }
        n
    }

    /// Fails the commands past their deadline (and everything, if the controller is fatal).
    fn expire(&mut self, f: &mut impl FnMut(u64, Result<(), DriverError>)) -> usize {
        let now = Instant::now();
        let fatal = nvme_spec::regs::Csts(
            self.dev
                .bar0()
                .read32(nvme_spec::regs::offset::CSTS as usize),
        )
        .cfs();
        let mut n = 0;
        for slot in &mut self.slots {
            let late = slot.is_some_and(|s| fatal || now >= s.deadline);
            if !late {
                continue;
            }
            // The CID is not given back: a late completion must not match a new command.
            let s = slot.take().expect("checked");
            self.broken = true;
            self.fatal |= fatal;
            n += 1;
            f(
                s.tag,
                Err(if fatal {
                    DriverError::Fatal
                } else {
                    DriverError::Timeout("an I/O command completion")
                }),
            );
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Controller;
    use crate::sim::SimNvme;

    struct Rig {
        dev: Arc<SimNvme>,
        q: IoQueue<SimNvme>,
        ns: NamespaceInfo,
        data: DmaRegion,
    }

    fn queue(depth: u16, timeout: Duration) -> Rig {
        let dev = Arc::new(SimNvme::new(1, 4096, 5));
        let mut c = Controller::new(Arc::clone(&dev)).unwrap();
        let ns = c.namespace(1).unwrap();
        let q = c.create_io_queue(depth, timeout).unwrap();
        let data = dev.alloc_dma(64 * PAGE).unwrap();
        Rig { dev, q, ns, data }
    }

    fn drain(q: &mut IoQueue<SimNvme>) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let t = Instant::now();
        while q.in_flight() > 0 && t.elapsed() < Duration::from_secs(10) {
            q.poll(|tag, r| out.push((tag, r.is_ok())));
        }
        out
    }

    #[test]
    fn commands_in_flight_complete_out_of_order_by_cid() {
        let Rig {
            dev,
            mut q,
            ns,
            data,
        } = queue(8, Duration::from_secs(10));
        for i in 0..4u64 {
            data.write(
                usize::try_from(i).unwrap() * PAGE,
                &[u8::try_from(i + 1).unwrap(); PAGE],
            );
        }
        dev.hold_io(true);
        for i in 0..4u64 {
            let cmd = IoCommand::Write {
                slba: i * 8,
                nlb: 8,
                iova: data.iova() + i * PAGE as u64,
            };
            q.submit(&ns, cmd, 100 + i).unwrap();
        }
        assert_eq!((q.in_flight(), dev.held()), (4, 4));
        assert!(
            drain_once(&mut q).is_empty(),
            "nothing completes while held"
        );
        dev.release(true);
        let done = drain(&mut q);
        assert_eq!(
            done,
            vec![(103, true), (102, true), (101, true), (100, true)],
            "completions in the controller's order, matched by CID"
        );
        assert_eq!(dev.media(1, 3 * 8 * 512, 4), vec![4; 4]);
    }

    fn drain_once(q: &mut IoQueue<SimNvme>) -> Vec<u64> {
        let mut out = Vec::new();
        q.poll(|tag, _| out.push(tag));
        out
    }

    #[test]
    fn a_full_queue_refuses_until_a_completion() {
        let Rig {
            dev,
            mut q,
            ns,
            data,
        } = queue(4, Duration::from_secs(10));
        dev.hold_io(true);
        let read = |i: u64| IoCommand::Read {
            slba: i,
            nlb: 1,
            iova: data.iova() + i * PAGE as u64,
        };
        for i in 0..3 {
            q.submit(&ns, read(i), i).unwrap();
        }
        assert!(matches!(q.submit(&ns, read(3), 3), Err(SubmitError::Full)));
        assert!(!q.has_room());
        dev.release(false);
        assert_eq!(drain(&mut q).len(), 3);
        q.submit(&ns, read(3), 3).unwrap();
        assert_eq!(drain(&mut q), vec![(3, true)]);
    }

    #[test]
    fn a_late_command_times_out_and_breaks_the_queue() {
        let Rig {
            dev,
            mut q,
            ns,
            data,
        } = queue(8, Duration::from_millis(50));
        dev.hold_io(true);
        let cmd = IoCommand::Read {
            slba: 0,
            nlb: 8,
            iova: data.iova(),
        };
        q.submit(&ns, cmd, 7).unwrap();
        assert_eq!(drain(&mut q), vec![(7, false)]);
        assert!(q.is_broken());
        assert!(matches!(q.submit(&ns, cmd, 8), Err(SubmitError::Broken(_))));
        // The late completion arrives and matches nothing.
        dev.release(false);
        assert!(drain_once(&mut q).is_empty());
    }

    #[test]
    fn device_errors_and_bad_commands() {
        let Rig {
            mut q, ns, data, ..
        } = queue(8, Duration::from_secs(10));
        let past = IoCommand::Read {
            slba: 4095,
            nlb: 2,
            iova: data.iova(),
        };
        // The controller checks the range: its status comes back with the completion.
        q.submit(&ns, past, 1).unwrap();
        let mut got = Vec::new();
        let t = Instant::now();
        while got.is_empty() && t.elapsed() < Duration::from_secs(10) {
            q.poll(|tag, r| got.push((tag, r)));
        }
        assert!(
            matches!(got[..], [(1, Err(DriverError::Status { sc: 0x80, .. }))]),
            "{got:?}"
        );
        let big = IoCommand::Read {
            slba: 0,
            nlb: 512,
            iova: data.iova(),
        };
        assert!(
            matches!(q.submit(&ns, big, 1), Err(SubmitError::Invalid(_))),
            "past MDTS"
        );
        q.submit(&ns, IoCommand::Deallocate { slba: 0, nlb: 8 }, 2)
            .unwrap();
        q.submit(&ns, IoCommand::WriteZeroes { slba: 8, nlb: 8 }, 3)
            .unwrap();
        q.submit(&ns, IoCommand::Flush, 4).unwrap();
        let mut done = drain(&mut q);
        done.sort_unstable();
        assert_eq!(done, vec![(2, true), (3, true), (4, true)]);
    }
}
