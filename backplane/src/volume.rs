//! Volumes: RAID0 stripes over one or more backplane devices.

use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bdev::blocking::Blocking;
use bdev::stripe::Stripe;
use bdev::{BlockIo, BufPool};

use super::DeviceEntry;
use super::metrics::Counted;

/// A volume striped over devices, shared by every controller.
#[derive(Debug)]
pub struct Volume {
    name: String,
    members: Vec<DeviceEntry>,
    stripe: u64,
    block_size: u32,
    size: u64,
}

impl Volume {
    /// Lays `members` out in stripes of `stripe` bytes; the capacity is what the smallest
    /// member allows.
    pub fn new(
        name: &str,
        members: Vec<DeviceEntry>,
        stripe: u64,
        block_size: u32,
    ) -> Result<Self, String> {
        let smallest = members
            .iter()
            .map(|m| m.device.size())
            .min()
            .ok_or("a volume needs at least one device")?;
        if let Some(m) = members
            .iter()
            .find(|m| block_size % m.device.block_size() != 0)
        {
            return Err(format!(
                "device `{}` has {}-byte blocks: the volume's block_size ({block_size}) must be a multiple",
                m.device.name(),
                m.device.block_size()
            ));
        }
        let unit = if members.len() == 1 {
            u64::from(block_size)
        } else {
            stripe
        };
        let per_device = smallest - smallest % unit;
        let size = per_device
            .checked_mul(members.len() as u64)
            .ok_or("volume size overflows")?;
        if size == 0 {
            return Err(format!(
                "devices are smaller than one {} unit",
                if members.len() == 1 {
                    "block"
                } else {
                    "stripe"
                }
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            members,
            stripe,
            block_size,
            size,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Stripe unit in bytes.
    pub fn stripe_size(&self) -> u64 {
        self.stripe
    }

    /// Member devices in stripe order.
    pub fn members(&self) -> &[DeviceEntry] {
        &self.members
    }

    /// Opens the calling controller thread's handle: each member through path `path` (the
    /// controller's index) with buffers from `pool`, counted in the member's metrics, and
    /// striped (pieces of one request in flight on their members together).
    pub fn open_io(&self, path: usize, pool: &BufPool) -> io::Result<Rc<dyn BlockIo>> {
        let members = self
            .members
            .iter()
            .map(|m| {
                let io = m.device.open_io(path, pool)?;
                Ok(Rc::new(Counted::new(io, Arc::clone(&m.metrics))) as Rc<dyn BlockIo>)
            })
            .collect::<io::Result<Vec<_>>>()?;
        if members.len() == 1 {
            return Ok(members.into_iter().next().expect("one member"));
        }
        let s = Stripe::new(members, self.stripe)
            .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
        Ok(Rc::new(s))
    }

    /// A blocking client of the volume on an I/O thread of its own named `thread` (for the
    /// content store's control path), reaching nvme-pcie members through path `path`.
    pub fn open_blocking(self: &Arc<Self>, thread: &str, path: usize) -> io::Result<Blocking> {
        let me = Arc::clone(self);
        Blocking::start(thread, Box::new(move |pool| me.open_io(path, pool)))
    }

    /// The NVMe namespace's optimal I/O boundary in logical blocks (the stripe), or 0.
    pub fn optimal_io_boundary(&self) -> u32 {
        if self.members.len() == 1 {
            return 0;
        }
        u32::try_from(self.stripe / u64::from(self.block_size)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FdDevice;
    use bdev::Op;
    use bdev::testing::{local, read, run, write};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn volume(sizes: &[u64], stripe: u64) -> Arc<Volume> {
        let members = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| DeviceEntry {
                device: Arc::new(FdDevice::ram(&format!("r{i}"), s).unwrap()),
                metrics: Arc::default(),
            })
            .collect();
        Arc::new(Volume::new("v", members, stripe, 512).unwrap())
    }

    #[test]
    fn capacity_follows_smallest_member() {
        let v = volume(&[1 << 20, (1 << 20) + 4096, 3 << 20], 64 << 10);
        assert_eq!(v.size(), 3 << 20);
        let single = volume(&[(1 << 20) + 4096], 64 << 10);
        assert_eq!(single.size(), (1 << 20) + 4096);
    }

    #[test]
    fn data_lands_on_the_right_member_and_reads_back() {
        let v = volume(&[1 << 20, 1 << 20, 1 << 20], 4096);
        local(async {
            let pool = BufPool::small(4).unwrap();
            let h = v.open_io(0, &pool).unwrap();
            let data: Vec<u8> = (0..100_352u32).map(|i| (i * 7 % 253) as u8).collect();
            write(&*h, &pool, 1536, &data).await.unwrap();
            assert_eq!(read(&*h, &pool, 1536, data.len()).await.unwrap(), data);
            // Stripe 1 (bytes 4096..8192 of the volume) lives at offset 0 of member 1.
            let raw = v.members()[1].device.open_io(0, &pool).unwrap();
            let first = read(&*raw, &pool, 0, 512).await.unwrap();
            assert_eq!(first[..16], data[4096 - 1536..4096 - 1536 + 16]);
            // 25 stripes are touched; member 1 holds stripes 1, 4, ..., 22, 25 - 1.
            assert_eq!(load(&v.members()[1].metrics.writes), 8);
            assert_eq!(load(&v.members()[1].metrics.in_flight), 0);
            run(&*h, Op::Discard, 0, 16384).await.unwrap();
            run(&*h, Op::Flush, 0, 0).await.unwrap();
            assert_eq!(load(&v.members()[0].metrics.flushes), 1);
            assert!(
                read(&*h, &pool, (3 << 20) - 512, 1024).await.is_err(),
                "past the end"
            );
            assert_eq!(
                load(&v.members()[0].metrics.errors),
                0,
                "refused before any member"
            );
        });
        assert_eq!(v.optimal_io_boundary(), 8);
    }
}
