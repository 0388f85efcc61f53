//! Devices reached through a file descriptor: `file` (a file or block device, served by the
//! file engine: io_uring, or a thread pool where the kernel has none) and `ram` (a memfd,
//! completed at once). Every controller thread gets its own handle; no locks per I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;

use bdev::file::{Engine, FileDevice};
use bdev::ram::RamDevice;
use bdev::throttle::Throttled;
use bdev::{BlockIo, BufPool};

use super::Device;

/// Requests in flight per thread on a file device's io_uring.
const FILE_DEPTH: u32 = 128;
/// Block size of file and RAM devices (O_DIRECT's logical sector).
pub const FD_BLOCK: u32 = 512;

/// A device backed by a file descriptor.
#[derive(Debug)]
pub struct FdDevice {
    name: String,
    kind: Kind,
    size: u64,
    read_rate: Option<u64>,
}

#[derive(Debug)]
enum Kind {
    Ram(RamDevice),
    File(FileDevice),
}

impl FdDevice {
    /// Caps every handle's reads at `rate` bytes per second (`None`: no cap).
    pub fn with_read_rate(mut self, rate: Option<u64>) -> Self {
        self.read_rate = rate.filter(|&r| r > 0);
        self
    }

    /// A RAM device of `size` bytes (an anonymous memfd; zero-filled, lost on exit).
    pub fn ram(name: &str, size: u64) -> io::Result<Self> {
        let ram = RamDevice::new(name, size, FD_BLOCK)?;
        Ok(Self {
            name: name.to_owned(),
            size: ram.geometry().size,
            kind: Kind::Ram(ram),
            read_rate: None,
        })
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
        if size < u64::from(FD_BLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is empty; give the device a size", path.display()),
            ));
        }
        let dev = FileDevice::new(file, size, FD_BLOCK, direct);
        Ok(Self {
            name: name.to_owned(),
            size: dev.geometry().size,
            kind: Kind::File(dev),
            read_rate: None,
        })
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

    fn open_io(&self, _path: usize, _pool: &BufPool) -> io::Result<Rc<dyn BlockIo>> {
        let rate = self.read_rate;
        Ok(match &self.kind {
            Kind::Ram(r) => match rate {
                Some(rate) => Rc::new(Throttled::new(r.open(), rate)),
                None => Rc::new(r.open()),
            },
            Kind::File(f) => {
                let io = f.open(Engine::Auto, FILE_DEPTH)?;
                match rate {
                    Some(rate) => Rc::new(Throttled::new(io, rate)),
                    None => Rc::new(io),
                }
            }
        })
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
    use bdev::Op;
    use bdev::testing::{local, read, run, write};

    fn roundtrip(dev: &FdDevice) {
        local(async {
            let pool = BufPool::small(4).unwrap();
            let h = dev.open_io(0, &pool).unwrap();
            let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            write(&*h, &pool, 4096, &data).await.unwrap();
            assert_eq!(read(&*h, &pool, 4096, 8192).await.unwrap(), data);
            run(&*h, Op::Discard, 4096, 4096).await.unwrap();
            let back = read(&*h, &pool, 4096, 8192).await.unwrap();
            assert!(back[..4096].iter().all(|&b| b == 0));
            assert_eq!(&back[4096..], &data[4096..]);
            run(&*h, Op::WriteZeroes, 8192, 4096).await.unwrap();
            let back = read(&*h, &pool, 8192, 4096).await.unwrap();
            assert!(back.iter().all(|&b| b == 0));
            run(&*h, Op::Flush, 0, 0).await.unwrap();
        });
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
    fn direct_file_device_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        match FdDevice::file("d", &path, Some(4 << 20), true) {
            Ok(dev) => roundtrip(&dev),
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
