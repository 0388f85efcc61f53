//! Devices reached through a file descriptor: `file` (a file or block device) and `ram`
//! (a memfd). Every controller thread gets its own handle; positional I/O needs no locks.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use memmap2::MmapMut;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{Device, DeviceHandle};

/// Bounce buffer size for O_DIRECT handles; larger transfers loop.
const BOUNCE: usize = 1 << 20;
/// O_DIRECT alignment of offsets and lengths (the logical sector).
const DIRECT_ALIGN: u64 = 512;

/// A device backed by a file descriptor.
#[derive(Debug)]
pub struct FdDevice {
    name: String,
    file: Arc<File>,
    size: u64,
    direct: bool,
    read_rate: Option<u64>,
}

impl FdDevice {
    /// Caps every handle's reads at `rate` bytes per second (`None`: no cap).
    pub fn with_read_rate(mut self, rate: Option<u64>) -> Self {
        self.read_rate = rate.filter(|&r| r > 0);
        self
    }

    /// A RAM device of `size` bytes (an anonymous memfd; zero-filled, lost on exit).
    pub fn ram(name: &str, size: u64) -> io::Result<Self> {
        let fd = memfd_create(format!("baton-{name}").as_str(), MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(size)?;
        Ok(Self::new(name, file, size, false))
    }

    /// A file or block device at `path`; a missing regular file is created with `size`.
    /// Every error names the path.
    pub fn file(name: &str, path: &Path, size: Option<u64>, direct: bool) -> io::Result<Self> {
        check_file_path(path, size).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
        Self::open_file(name, path, size, direct).map_err(|e| {
            let m = e.to_string();
            if m.contains(&path.display().to_string()) {
                e
            } else {
                io::Error::new(e.kind(), format!("{}: {m}", path.display()))
            }
        })
    }

    fn open_file(name: &str, path: &Path, size: Option<u64>, direct: bool) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if size.is_some() {
            opts.create(true);
        }
        if direct {
            opts.custom_flags(nix::libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        let meta = file.metadata()?;
        let current = if meta.file_type().is_block_device() {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        let size = match size {
            Some(want) if !meta.file_type().is_block_device() && current < want => {
                file.set_len(want)?;
                want
            }
            Some(want) if current < want => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} has {current} bytes, config asks for {want}",
                        path.display()
                    ),
                ));
            }
            Some(want) => want,
            None => current,
        };
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is empty; give the device a size", path.display()),
            ));
        }
        Ok(Self::new(name, file, size, direct))
    }

    fn new(name: &str, file: File, size: u64, direct: bool) -> Self {
        Self {
            name: name.to_owned(),
            file: Arc::new(file),
            size,
            direct,
            read_rate: None,
        }
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    // Seeking to the end of a block device reports its size without an ioctl.
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::End(0))
}

impl Device for FdDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn open_handle(&self) -> io::Result<Box<dyn DeviceHandle>> {
        let bounce = if self.direct {
            Some(RefCell::new(MmapMut::map_anon(BOUNCE)?))
        } else {
            None
        };
        Ok(Box::new(FdHandle {
            file: Arc::clone(&self.file),
            bounce,
            limit: self.read_rate.map(|rate| {
                RefCell::new(RateLimit {
                    rate,
                    free_at: std::time::Instant::now(),
                })
            }),
        }))
    }
}

/// One controller thread's handle on an [`FdDevice`].
struct FdHandle {
    file: Arc<File>,
    /// Page-aligned bounce buffer for O_DIRECT (callers' buffers need not be aligned).
    bounce: Option<RefCell<MmapMut>>,
    /// Read rate cap: the handle behaves like a device that reads `rate` bytes per second.
    limit: Option<RefCell<RateLimit>>,
}

/// A serial device model: each read occupies the device for `len / rate` seconds.
struct RateLimit {
    rate: u64,
    free_at: std::time::Instant,
}

impl FdHandle {
    /// Blocks the calling controller thread as long as a device of the capped rate would.
    fn throttle(&self, len: usize) {
        let Some(limit) = &self.limit else { return };
        let mut l = limit.borrow_mut();
        let now = std::time::Instant::now();
        let done =
            l.free_at.max(now) + std::time::Duration::from_secs_f64(len as f64 / l.rate as f64);
        l.free_at = done;
        drop(l);
        std::thread::sleep(done.saturating_duration_since(now));
    }
}

fn check_direct(offset: u64, len: usize) -> io::Result<()> {
    if offset % DIRECT_ALIGN != 0 || len as u64 % DIRECT_ALIGN != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "O_DIRECT I/O must be sector aligned",
        ));
    }
    Ok(())
}

impl DeviceHandle for FdHandle {
    fn file_extent(&self, offset: u64, len: u64) -> Option<nvme_target::blockdev::FileExtent> {
        // O_DIRECT files must not be read through the page cache behind their back, and a
        // rate-capped device must not be bypassed.
        if self.bounce.is_some() || self.limit.is_some() {
            return None;
        }
        Some(nvme_target::blockdev::FileExtent {
            file: Arc::clone(&self.file),
            offset,
            len: usize::try_from(len).ok()?,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.throttle(buf.len());
        let Some(bounce) = &self.bounce else {
            return self.file.read_exact_at(buf, offset);
        };
        check_direct(offset, buf.len())?;
        let mut bounce = bounce.borrow_mut();
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(BOUNCE);
            self.file
                .read_exact_at(&mut bounce[..n], offset + done as u64)?;
            buf[done..done + n].copy_from_slice(&bounce[..n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let Some(bounce) = &self.bounce else {
            return self.file.write_all_at(buf, offset);
        };
        check_direct(offset, buf.len())?;
        let mut bounce = bounce.borrow_mut();
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(BOUNCE);
            bounce[..n].copy_from_slice(&buf[done..done + n]);
            self.file.write_all_at(&bounce[..n], offset + done as u64)?;
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let keep = FallocateFlags::FALLOC_FL_KEEP_SIZE;
        for mode in [
            keep | FallocateFlags::FALLOC_FL_ZERO_RANGE,
            keep | FallocateFlags::FALLOC_FL_PUNCH_HOLE,
        ] {
            if self.fallocate(mode, offset, len).is_ok() {
                return Ok(());
            }
        }
        self.write_zero_pages(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = FallocateFlags::FALLOC_FL_KEEP_SIZE | FallocateFlags::FALLOC_FL_PUNCH_HOLE;
        // Deallocated blocks must read back as zeroes (DLFEAT); where holes are not
        // supported, writing zeroes keeps that promise.
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            Err(_) => self.write_zeroes(offset, len),
        }
    }
}

impl FdHandle {
    fn fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        let offset = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        fallocate(self.file.as_fd(), mode, offset, len).map_err(io::Error::from)
    }

    fn write_zero_pages(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = MmapMut::map_anon(BOUNCE)?;
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(BOUNCE as u64))
                .map_err(|_| io::ErrorKind::InvalidInput)?;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Why `path` cannot be a file device, checked before anything is opened or created (also by
/// `check-config`): it must be a regular file or a block device, not on a pseudo file system
/// (`/proc/version` is a "regular file" of size 0), and a missing or empty file needs a size.
pub fn check_file_path(path: &Path, size: Option<u64>) -> Result<(), String> {
    use nix::sys::statfs::{
        CGROUP_SUPER_MAGIC, DEBUGFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC,
        TRACEFS_MAGIC, statfs,
    };
    let p = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match size {
                Some(_) => Ok(()),
                None => Err(format!(
                    "{p} does not exist; give the device a size to create it"
                )),
            };
        }
        Err(e) => return Err(format!("{p}: {e}")),
    };
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(format!("{p} is not a regular file or a block device"));
    }
    let fs = statfs(path).map_err(|e| format!("{p}: {e}"))?;
    let pseudo = [
        PROC_SUPER_MAGIC,
        SYSFS_MAGIC,
        DEBUGFS_MAGIC,
        TRACEFS_MAGIC,
        SECURITYFS_MAGIC,
        CGROUP_SUPER_MAGIC,
    ];
    if pseudo.contains(&fs.filesystem_type()) {
        return Err(format!(
            "{p} is on a kernel pseudo file system, not storage"
        ));
    }
    if ft.is_file() && meta.len() == 0 && size.is_none() {
        return Err(format!("{p} is empty; give the device a size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(dev: &FdDevice) {
        let h = dev.open_handle().unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        h.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; 8192];
        h.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
        h.discard(4096, 4096).unwrap();
        h.read_at(4096, &mut back).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4096..], &data[4096..]);
        h.write_zeroes(8192, 4096).unwrap();
        h.read_at(8192, &mut back[..4096]).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        h.flush().unwrap();
    }

    #[test]
    fn ram_device_roundtrip() {
        roundtrip(&FdDevice::ram("r", 1 << 20).unwrap());
    }

    #[test]
    fn file_device_creates_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/d.img");
        let dev = FdDevice::file("d", &path, Some(1 << 20), false).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        roundtrip(&dev);
        // Reopening without a size uses the file's size.
        let again = FdDevice::file("d", &path, None, false).unwrap();
        assert_eq!(again.size(), 1 << 20);
    }

    #[test]
    fn direct_file_device_uses_bounce_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        match FdDevice::file("d", &path, Some(4 << 20), true) {
            Ok(dev) => {
                roundtrip(&dev);
                let h = dev.open_handle().unwrap();
                let mut odd = vec![0u8; 100];
                assert!(h.read_at(3, &mut odd).is_err());
            }
            // tmpfs refuses O_DIRECT; nothing to test there.
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EINVAL), "{e}"),
        }
    }

    #[test]
    fn missing_file_without_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FdDevice::file("d", &dir.path().join("none.img"), None, false).unwrap_err();
        assert!(err.to_string().contains("none.img"), "{err}");
    }

    #[test]
    fn pseudo_files_and_character_devices_are_not_devices() {
        for (path, why) in [
            ("/proc/version", "pseudo file system"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "pseudo file system",
            ),
            ("/dev/zero", "not a regular file"),
            ("/dev", "not a regular file"),
        ] {
            let path = Path::new(path);
            if !path.exists() {
                continue;
            }
            let err = FdDevice::file("d", path, Some(1 << 20), false).unwrap_err();
            let m = err.to_string();
            assert!(
                m.contains(why) && m.contains(&path.display().to_string()),
                "{m}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        let m = check_file_path(&empty, None).unwrap_err();
        assert!(m.contains("empty") && m.contains("empty.img"), "{m}");
        check_file_path(&empty, Some(4096)).unwrap();
    }
}
