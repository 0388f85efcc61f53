//! Volumes: RAID0 stripes over one or more backplane devices.

use std::io;
use std::sync::Arc;

use super::{DeviceEntry, DeviceHandle, DeviceMetrics};

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

    /// Opens a handle for the calling controller thread.
    pub fn open_handle(self: &Arc<Self>) -> io::Result<VolumeHandle> {
        let handles = self
            .members
            .iter()
            .map(|m| Ok((m.device.open_handle()?, Arc::clone(&m.metrics))))
            .collect::<io::Result<_>>()?;
        Ok(VolumeHandle {
            volume: Arc::clone(self),
            handles,
        })
    }

    /// Splits `[offset, offset + len)` into per-device pieces:
    /// `(member index, device offset, position in the request, length)`.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, u64, u64, u64)> + '_ {
        let n = self.members.len() as u64;
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let at = offset + pos;
            if n == 1 {
                let piece = (0, at, pos, len - pos);
                pos = len;
                return Some(piece);
            }
            let stripe_no = at / self.stripe;
            let within = at % self.stripe;
            let chunk = (self.stripe - within).min(len - pos);
            let member = usize::try_from(stripe_no % n).unwrap_or(0);
            let dev_off = (stripe_no / n) * self.stripe + within;
            let piece = (member, dev_off, pos, chunk);
            pos += chunk;
            Some(piece)
        })
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is past the end of volume `{}`",
                    self.name
                ),
            )),
        }
    }
}

/// One controller thread's access to a volume; serves it as an NVMe namespace.
pub struct VolumeHandle {
    volume: Arc<Volume>,
    handles: Vec<(Box<dyn DeviceHandle>, Arc<DeviceMetrics>)>,
}

impl VolumeHandle {
    /// The volume this handle reaches.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.volume.check(offset, buf.len() as u64)?;
        for (m, dev_off, pos, len) in self.volume.pieces(offset, buf.len() as u64) {
            let (h, metrics) = &self.handles[m];
            let range = to_range(pos, len)?;
            let r = h.read_at(dev_off, &mut buf[range]);
            metrics.count(&metrics.reads, Some((&metrics.read_bytes, len)), &r);
            r?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.volume.check(offset, buf.len() as u64)?;
        for (m, dev_off, pos, len) in self.volume.pieces(offset, buf.len() as u64) {
            let (h, metrics) = &self.handles[m];
            let r = h.write_at(dev_off, &buf[to_range(pos, len)?]);
            metrics.count(&metrics.writes, Some((&metrics.write_bytes, len)), &r);
            r?;
        }
        Ok(())
    }

    /// Flushes every member.
    pub fn flush(&self) -> io::Result<()> {
        for (h, metrics) in &self.handles {
            let r = h.flush();
            metrics.count(&metrics.flushes, None, &r);
            r?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, zero: bool) -> io::Result<()> {
        self.volume.check(offset, len)?;
        for (m, dev_off, _, piece) in self.volume.pieces(offset, len) {
            let (h, metrics) = &self.handles[m];
            let r = if zero {
                h.write_zeroes(dev_off, piece)
            } else {
                h.discard(dev_off, piece)
            };
            metrics.count(&metrics.trims, None, &r);
            r?;
        }
        Ok(())
    }
}

fn to_range(pos: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    Ok(start..start + len)
}

impl nvme_target::BlockDevice for VolumeHandle {
    fn block_size(&self) -> u32 {
        self.volume.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.volume.size / u64::from(self.volume.block_size)
    }

    fn optimal_io_boundary(&self) -> u32 {
        if self.volume.members.len() == 1 {
            return 0;
        }
        u32::try_from(self.volume.stripe / u64::from(self.volume.block_size)).unwrap_or(0)
    }

    fn volatile_write_cache(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        VolumeHandle::read_at(self, offset, buf)
    }

    fn file_extents(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<nvme_target::blockdev::FileExtent>,
    ) -> bool {
        if self.volume.check(offset, len).is_err() {
            return false;
        }
        let start = out.len();
        for (m, dev_off, _, piece) in self.volume.pieces(offset, len) {
            match self.handles[m].0.file_extent(dev_off, piece) {
                Some(e) => out.push(e),
                None => {
                    out.truncate(start);
                    return false;
                }
            }
        }
        for (m, _, _, piece) in self.volume.pieces(offset, len) {
            let metrics = &self.handles[m].1;
            metrics.count(&metrics.reads, Some((&metrics.read_bytes, piece)), &Ok(()));
        }
        true
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        VolumeHandle::write_at(self, offset, buf)
    }

    fn flush(&self) -> io::Result<()> {
        VolumeHandle::flush(self)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.trim(offset, len, true)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.trim(offset, len, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::FdDevice;
    use nvme_target::BlockDevice;
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
    fn stripes_rotate_over_members() {
        let v = volume(&[1 << 20, 1 << 20], 4096);
        let pieces: Vec<_> = v.pieces(2048, 8192).collect();
        assert_eq!(
            pieces,
            vec![
                (0, 2048, 0, 2048),
                (1, 0, 2048, 4096),
                (0, 4096, 6144, 2048)
            ]
        );
    }

    #[test]
    fn data_lands_on_the_right_member_and_reads_back() {
        let v = volume(&[1 << 20, 1 << 20, 1 << 20], 4096);
        let h = v.open_handle().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
        h.write_at(1536, &data).unwrap();
        let mut back = vec![0; data.len()];
        h.read_at(1536, &mut back).unwrap();
        assert_eq!(back, data);
        // Stripe 1 (bytes 4096..8192 of the volume) lives at offset 0 of member 1.
        let raw = v.members()[1].device.open_handle().unwrap();
        let mut first = [0u8; 16];
        raw.read_at(0, &mut first).unwrap();
        assert_eq!(first[..], data[4096 - 1536..4096 - 1536 + 16]);
        // 25 stripes are touched; member 1 holds stripes 1, 4, ..., 22.
        assert_eq!(load(&v.members()[1].metrics.writes), 8);
    }

    #[test]
    fn out_of_range_is_refused() {
        let v = volume(&[1 << 20], 4096);
        let h = v.open_handle().unwrap();
        let mut buf = [0u8; 1024];
        assert!(h.read_at((1 << 20) - 512, &mut buf).is_err());
        assert!(h.write_at(u64::MAX - 10, &buf).is_err());
        assert!(BlockDevice::discard(&h, 0, 2 << 20).is_err());
    }

    #[test]
    fn trims_zero_across_stripes() {
        let v = volume(&[1 << 20, 1 << 20], 4096);
        let h = v.open_handle().unwrap();
        h.write_at(0, &[0xab; 16384]).unwrap();
        BlockDevice::discard(&h, 2048, 8192).unwrap();
        BlockDevice::write_zeroes(&h, 12288, 2048).unwrap();
        let mut back = vec![0u8; 16384];
        h.read_at(0, &mut back).unwrap();
        assert!(back[..2048].iter().all(|&b| b == 0xab));
        assert!(back[2048..10240].iter().all(|&b| b == 0));
        assert!(back[10240..12288].iter().all(|&b| b == 0xab));
        assert!(back[12288..14336].iter().all(|&b| b == 0));
        assert!(back[14336..].iter().all(|&b| b == 0xab));
        assert_eq!(h.optimal_io_boundary(), 8);
    }
}
