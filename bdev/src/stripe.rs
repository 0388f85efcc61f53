//! Stripes (RAID0) over member handles. A request spanning several stripe units becomes one
//! piece per unit, all in flight at once on their members; each piece reads into (or writes
//! from) its own part of the caller's buffer, split off and joined back, so nothing is
//! copied. The request completes when its last piece does, with the first error any piece
//! had.

use std::cell::RefCell;
use std::rc::Rc;

use crate::io::{check, finish};
use crate::slots::Slots;
use crate::{BlockIo, Completion, Extent, Geometry, IoBuf, IoError, Op, Request, Sink};

/// One request in pieces.
struct Parent {
    tag: u64,
    sink: Rc<dyn Sink>,
    left: usize,
    error: Option<IoError>,
    /// Buffer parts by piece index; all `Some` again when the last piece is back.
    parts: Vec<Option<IoBuf>>,
    lost: bool,
    len: usize,
}

struct Inner {
    members: Vec<Rc<dyn BlockIo>>,
    unit: u64,
    geometry: Geometry,
    parents: RefCell<Slots<Parent>>,
}

/// A striped handle.
pub struct Stripe {
    inner: Rc<Inner>,
}

/// Pieces of a request: (member, member offset, position in the request, length).
fn pieces(
    n: u64,
    unit: u64,
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (usize, u64, u64, u64)> {
    let mut pos = 0u64;
    std::iter::from_fn(move || {
        if pos >= len {
            return None;
        }
        let at = offset + pos;
        if n == 1 {
            let p = (0, at, pos, len - pos);
            pos = len;
            return Some(p);
        }
        let (no, within) = (at / unit, at % unit);
        let chunk = (unit - within).min(len - pos);
        let member = usize::try_from(no % n).unwrap_or(0);
        let p = (member, (no / n) * unit + within, pos, chunk);
        pos += chunk;
        Some(p)
    })
}

impl Stripe {
    /// Stripes over `members` in units of `unit` bytes (a multiple of the block size);
    /// the capacity is what the smallest member allows. With one member, requests pass
    /// straight through.
    pub fn new(members: Vec<Rc<dyn BlockIo>>, unit: u64) -> Result<Self, String> {
        let first = members
            .first()
            .ok_or("a stripe needs at least one member")?;
        let bs = first.geometry().block_size;
        if members.iter().any(|m| m.geometry().block_size != bs) {
            return Err("stripe members have different block sizes".into());
        }
        let n = members.len() as u64;
        let per_unit = if n == 1 { u64::from(bs) } else { unit };
        if per_unit == 0 || per_unit % u64::from(bs) != 0 {
            return Err(format!("stripe unit {unit} is not whole blocks of {bs}"));
        }
        let smallest = members.iter().map(|m| m.geometry().size).min().unwrap_or(0);
        let per_member = smallest - smallest % per_unit;
        let size = per_member.checked_mul(n).ok_or("stripe size overflows")?;
        if size == 0 {
            return Err("members are smaller than one stripe unit".into());
        }
        let geometry = Geometry {
            block_size: bs,
            size,
            optimal_boundary: if n == 1 { 0 } else { unit },
            volatile_cache: members.iter().any(|m| m.geometry().volatile_cache),
        };
        Ok(Self {
            inner: Rc::new(Inner {
                members,
                unit: per_unit,
                geometry,
                parents: RefCell::new(Slots::with_capacity(16)),
            }),
        })
    }

    fn n(&self) -> u64 {
        self.inner.members.len() as u64
    }
}

impl Inner {
    fn slot(&self, p: Parent) -> usize {
        self.parents.borrow_mut().insert(p)
    }
}

impl Sink for Inner {
    fn complete(&self, c: Completion) {
        let (i, k) = (
            usize::try_from(c.tag >> 16).unwrap_or(usize::MAX),
            (c.tag & 0xffff) as usize,
        );
        let done = {
            let mut ps = self.parents.borrow_mut();
            let Some(p) = ps.get_mut(i) else { return };
            if let Err(e) = c.result {
                p.error.get_or_insert(e);
            }
            match c.buf {
                Some(b) if k < p.parts.len() => p.parts[k] = Some(b),
                Some(_) => {}
                None => p.lost |= p.parts.get(k).is_some(),
            }
            p.left -= 1;
            if p.left > 0 {
                return;
            }
            ps.remove(i)
        };
        let Some(mut p) = done else { return };
        // Join the parts back into the caller's buffer, unless one may still be written by a
        // device (then none of it is reused).
        let buf = if p.lost || p.parts.is_empty() {
            None
        } else {
            let mut parts = p.parts.drain(..).map(|b| b.expect("every part is back"));
            let mut head = parts.next().expect("at least one part");
            let mut whole = true;
            for part in parts {
                if head.unsplit(part).is_err() {
                    whole = false;
                }
            }
            whole.then(|| {
                head.set_window(0, p.len);
                head
            })
        };
        let result = match p.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        p.sink.complete(Completion {
            tag: p.tag,
            result,
            buf,
        });
    }
}

impl BlockIo for Stripe {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn submit(&self, mut req: Request, sink: &Rc<dyn Sink>) {
        let g = self.inner.geometry;
        if req.op == Op::Flush {
            return self.flush(req, sink);
        }
        if let Err(e) = check(&req, &g) {
            return finish(req, Err(e), sink);
        }
        let all: Vec<_> = pieces(self.n(), self.inner.unit, req.offset, req.len).collect();
        if all.len() == 1 {
            let (m, at, _, _) = all[0];
            req.offset = at;
            return self.inner.members[m].submit(req, sink);
        }
        // Split the buffer into the pieces' parts, last first.
        let mut parts: Vec<Option<IoBuf>> = Vec::with_capacity(all.len());
        if let Some(buf) = req.buf.as_mut() {
            let mut tail = Vec::with_capacity(all.len());
            for &(_, _, pos, _) in all.iter().skip(1).rev() {
                tail.push(buf.split_off(usize::try_from(pos).unwrap_or(usize::MAX)));
            }
            parts.push(None); // the head stays in `req.buf` until submitted
            parts.extend(tail.into_iter().rev().map(Some));
        }
        let has_data = req.buf.is_some();
        let parent = self.inner.slot(Parent {
            tag: req.tag,
            sink: Rc::clone(sink),
            left: all.len(),
            error: None,
            parts: if has_data {
                (0..all.len()).map(|_| None).collect()
            } else {
                Vec::new()
            },
            lost: false,
            len: usize::try_from(req.len).unwrap_or(0),
        });
        let me: Rc<dyn Sink> = self.inner.clone();
        let mut head = req.buf.take();
        for (k, &(m, at, _, len)) in all.iter().enumerate() {
            let buf = if !has_data {
                None
            } else if k == 0 {
                head.take()
            } else {
                parts[k].take()
            };
            let piece = Request {
                op: req.op,
                offset: at,
                len,
                buf,
                tag: ((parent as u64) << 16) | k as u64,
            };
            self.inner.members[m].submit(piece, &me);
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.parents.borrow().len()
    }

    fn extents(&self, offset: u64, len: u64, files: bool, out: &mut Vec<Extent>) -> bool {
        self.gather(offset, len, out, |m, at, n, out| {
            m.extents(at, n, files, out)
        })
    }

    fn write_extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> bool {
        self.gather(offset, len, out, |m, at, n, out| {
            m.write_extents(at, n, out)
        })
    }
}

impl Stripe {
    /// The pieces of `len` bytes at `offset`, as `each` finds them on the members, appended
    /// to `out` in order; false (nothing appended) if the range is outside the stripe or any
    /// member has none.
    fn gather(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
        each: impl Fn(&dyn BlockIo, u64, u64, &mut Vec<Extent>) -> bool,
    ) -> bool {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.inner.geometry.size)
        {
            return false;
        }
        let start = out.len();
        for (m, at, _, piece) in pieces(self.n(), self.inner.unit, offset, len) {
            if !each(&*self.inner.members[m], at, piece, out) {
                out.truncate(start);
                return false;
            }
        }
        true
    }

    /// A flush goes to every member.
    fn flush(&self, req: Request, sink: &Rc<dyn Sink>) {
        let n = self.inner.members.len();
        let parent = self.inner.slot(Parent {
            tag: req.tag,
            sink: Rc::clone(sink),
            left: n,
            error: None,
            parts: Vec::new(),
            lost: false,
            len: 0,
        });
        let me: Rc<dyn Sink> = self.inner.clone();
        for (k, m) in self.inner.members.iter().enumerate() {
            m.submit(
                Request::bare(Op::Flush, 0, 0, ((parent as u64) << 16) | k as u64),
                &me,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDevice;
    use crate::testing::{Order, Scripted, local, read, run, write};
    use crate::{BufPool, CompletionQueue};

    fn members(n: usize) -> Vec<Rc<Scripted<crate::ram::RamIo>>> {
        (0..n)
            .map(|i| {
                Rc::new(Scripted::new(
                    RamDevice::new(&format!("m{i}"), 1 << 20, 512)
                        .unwrap()
                        .open(),
                ))
            })
            .collect()
    }

    fn stripe(ms: &[Rc<Scripted<crate::ram::RamIo>>], unit: u64) -> Stripe {
        let dyns = ms.iter().map(|m| Rc::clone(m) as Rc<dyn BlockIo>).collect();
        Stripe::new(dyns, unit).unwrap()
    }

    #[test]
    fn pieces_rotate_over_members() {
        let p: Vec<_> = pieces(2, 4096, 2048, 8192).collect();
        assert_eq!(
            p,
            vec![
                (0, 2048, 0, 2048),
                (1, 0, 2048, 4096),
                (0, 4096, 6144, 2048)
            ]
        );
    }

    #[test]
    fn pieces_are_in_flight_together_and_complete_in_any_order() {
        local(async {
            let ms = members(3);
            let s = stripe(&ms, 4096);
            let pool = BufPool::small(4).unwrap();
            let data: Vec<u8> = (0..100_352u32).map(|i| (i * 7 % 253) as u8).collect();
            write(&s, &pool, 1536, &data).await.unwrap();
            for m in &ms {
                m.hold();
            }
            let cq = Rc::new(CompletionQueue::default());
            let sink: Rc<dyn Sink> = cq.clone();
            let b = pool.get(data.len()).unwrap();
            s.submit(Request::read(1536, data.len() as u64, b, 42), &sink);
            // 25 stripe units touched: every piece is at its member, none finished.
            let held: usize = ms.iter().map(|m| m.held()).sum();
            assert_eq!((held, s.in_flight(), cq.len()), (25, 1, 0));
            ms[2].release(Order::Reverse);
            ms[0].release(Order::Fifo);
            assert!(cq.is_empty(), "member 1's pieces are still out");
            ms[1].release(Order::Reverse);
            let c = cq.pop().unwrap();
            assert_eq!(c.tag, 42);
            c.result.unwrap();
            let back = c.buf.unwrap();
            assert_eq!(back.as_slice(), &data[..]);
            assert_eq!(
                back.capacity(),
                1 << 20,
                "the parts joined back into one buffer"
            );
            drop(back);
            assert_eq!(pool.free(), 12, "every buffer went back whole");
            assert_eq!(s.in_flight(), 0);
        });
    }

    #[test]
    fn one_failed_piece_fails_the_request() {
        local(async {
            let ms = members(2);
            let s = stripe(&ms, 4096);
            let pool = BufPool::small(2).unwrap();
            ms[1].fail_next(1);
            assert!(read(&s, &pool, 0, 16384).await.is_err());
            assert_eq!(read(&s, &pool, 0, 16384).await.unwrap(), vec![0u8; 16384]);
            run(&s, Op::Discard, 0, 16384).await.unwrap();
            run(&s, Op::Flush, 0, 0).await.unwrap();
            assert!(read(&s, &pool, 2 << 20, 512).await.is_err(), "past the end");
        });
    }

    #[test]
    fn capacity_follows_the_smallest_member() {
        let a = Rc::new(RamDevice::new("a", 1 << 20, 512).unwrap().open()) as Rc<dyn BlockIo>;
        let b = Rc::new(RamDevice::new("b", 3 << 20, 512).unwrap().open()) as Rc<dyn BlockIo>;
        let s = Stripe::new(vec![a, b], 64 << 10).unwrap();
        assert_eq!(s.geometry().size, 2 << 20);
        assert_eq!(s.geometry().optimal_boundary, 64 << 10);
    }

    #[test]
    fn writes_land_in_the_members_mappings_across_units() {
        let ram = |n| Rc::new(RamDevice::new(n, 1 << 20, 512).unwrap().open()) as Rc<dyn BlockIo>;
        let s = Stripe::new(vec![ram("a"), ram("b")], 4096).unwrap();
        // 12 KiB from 2 KiB into the first unit: four pieces over the two members.
        let mut out = Vec::new();
        assert!(s.write_extents(2048, 12_288, &mut out));
        assert_eq!(
            out.iter().map(Extent::len).collect::<Vec<_>>(),
            [2048, 4096, 4096, 2048]
        );
        let data: Vec<u8> = (0..12_288u32).map(|i| (i % 251) as u8).collect();
        // Copied in two parts, the second starting inside the second piece.
        Extent::copy_in(&out, 0, &data[..3000]).unwrap();
        Extent::copy_in(&out, 3000, &data[3000..]).unwrap();
        let pool = BufPool::small(4).unwrap();
        local(async {
            assert_eq!(read(&s, &pool, 2048, 12_288).await.unwrap(), data);
        });
        // What the kernel would fill: bytes [1000, 11000) of the pieces, as four buffers.
        let mut iov = [const { ffi::IoVecMut::EMPTY }; 4];
        assert_eq!(Extent::iovecs_mut(&out, 1000, 11_000, &mut iov), 4);
        let lens: Vec<_> = iov.iter().map(ffi::IoVecMut::len).collect();
        assert_eq!(lens, [1048, 4096, 4096, 760]);
        // Only as many as fit; none past the end.
        assert_eq!(Extent::iovecs_mut(&out, 0, 12_288, &mut iov[..2]), 2);
        assert_eq!(Extent::iovecs_mut(&out, 12_288, 20_000, &mut iov), 0);
        // More data than the pieces hold, and pieces that are not the device's memory.
        assert!(Extent::copy_in(&out, 12_000, &[0u8; 512]).is_err());
        assert!(
            !s.write_extents((1 << 21) - 512, 1024, &mut out),
            "past the end"
        );
        let file = Extent::File {
            file: std::sync::Arc::new(tempfile::tempfile().unwrap()),
            offset: 0,
            len: 512,
        };
        assert!(Extent::copy_in(&[file], 0, &[0u8; 16]).is_err());
        // A capped member is never written behind its bucket's back.
        let capped = crate::throttle::Throttled::new(
            RamDevice::new("c", 1 << 20, 512).unwrap().open(),
            1 << 20,
        );
        assert!(!capped.write_extents(0, 4096, &mut Vec::new()));
    }
}
