//! The system-call layer under VFIO: one trait, the real implementation ([`RealSys`]) and,
//! in [`crate::testing`], a double, so the layers above are tested without hardware.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;

use nix::fcntl::{OFlag, open};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};
use nix::sys::stat::Mode;
use nix::sys::uio::{pread, pwrite};

use crate::error::{Error, Result};
use crate::generated::vfio;

/// A host memory mapping made by [`VfioSys::mmap_region`] or [`VfioSys::alloc_hugepages`].
#[derive(Debug)]
pub struct HostMapping {
    /// Start of the mapping.
    pub ptr: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a mapping is plain address-space bookkeeping; the memory is reached only through
// raw pointers by its owner.
unsafe impl Send for HostMapping {}
// SAFETY: see `Send`.
unsafe impl Sync for HostMapping {}

/// Information about one device region (`VFIO_DEVICE_GET_REGION_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

impl RegionInfo {
    /// Whether the region may be mmap()ed.
    pub fn mappable(&self) -> bool {
        self.flags & vfio::VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// Every kernel call VFIO needs.
pub trait VfioSys: Send + Sync + 'static {
    /// A file descriptor (real) or handle (double).
    type Fd: Send + Sync + 'static;

    /// Driver bound to PCI device `bdf`; `Err(NoSuchDevice)` if there is no such device.
    fn pci_driver(&self, bdf: &str) -> Result<Option<String>>;
    /// IOMMU group number of `bdf`, `None` when the IOMMU is off.
    fn iommu_group(&self, bdf: &str) -> Result<Option<u32>>;
    /// Opens `/dev/vfio/vfio`.
    fn open_container(&self) -> Result<Self::Fd>;
    /// Opens `/dev/vfio/<group>`.
    fn open_group(&self, group: u32) -> Result<Self::Fd>;
    /// `VFIO_GET_API_VERSION`.
    fn api_version(&self, container: &Self::Fd) -> Result<u32>;
    /// `VFIO_CHECK_EXTENSION`.
    fn check_extension(&self, container: &Self::Fd, ext: u32) -> Result<bool>;
    /// `VFIO_GROUP_GET_STATUS`: `VFIO_GROUP_FLAGS_*`.
    fn group_flags(&self, group: &Self::Fd) -> Result<u32>;
    /// `VFIO_GROUP_SET_CONTAINER`.
    fn group_set_container(&self, group: &Self::Fd, container: &Self::Fd) -> Result<()>;
    /// `VFIO_SET_IOMMU`.
    fn set_iommu(&self, container: &Self::Fd, iommu: u32) -> Result<()>;
    /// `VFIO_GROUP_GET_DEVICE_FD`.
    fn device_fd(&self, group: &Self::Fd, bdf: &str) -> Result<Self::Fd>;
    /// `VFIO_DEVICE_GET_REGION_INFO`.
    fn region_info(&self, device: &Self::Fd, index: u32) -> Result<RegionInfo>;
    /// `VFIO_DEVICE_RESET`.
    fn device_reset(&self, device: &Self::Fd) -> Result<()>;
    /// Reads device-fd bytes at `offset` (config space).
    fn read_at(&self, device: &Self::Fd, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes device-fd bytes at `offset` (config space).
    fn write_at(&self, device: &Self::Fd, buf: &[u8], offset: u64) -> Result<()>;
    /// Maps `len` bytes of the device fd at `offset`, shared, read/write.
    fn mmap_region(&self, device: &Self::Fd, offset: u64, len: usize) -> Result<HostMapping>;
    /// Maps `len` bytes (a multiple of 2 MiB) of anonymous hugepage memory.
    fn alloc_hugepages(&self, len: usize) -> Result<HostMapping>;
    /// Releases a mapping from [`VfioSys::mmap_region`] or [`VfioSys::alloc_hugepages`].
    fn unmap(&self, mapping: &HostMapping);
    /// `VFIO_IOMMU_MAP_DMA` of `mapping` at `iova`, readable and writable by the device.
    fn dma_map(&self, container: &Self::Fd, mapping: &HostMapping, iova: u64) -> Result<()>;
    /// `VFIO_IOMMU_UNMAP_DMA`.
    fn dma_unmap(&self, container: &Self::Fd, iova: u64, len: usize) -> Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

const fn vfio_io(nr: u32) -> nix::sys::ioctl::ioctl_num_type {
    // VFIO ioctls are `_IO(VFIO_TYPE, VFIO_BASE + nr)`: direction and size bits are zero.
    (((vfio::VFIO_TYPE as u32) << 8) | (vfio::VFIO_BASE + nr)) as nix::sys::ioctl::ioctl_num_type
}

const GET_API_VERSION: u32 = 0;
const CHECK_EXTENSION: u32 = 1;
const SET_IOMMU: u32 = 2;
const GROUP_GET_STATUS: u32 = 3;
const GROUP_SET_CONTAINER: u32 = 4;
const GROUP_GET_DEVICE_FD: u32 = 6;
const DEVICE_GET_REGION_INFO: u32 = 8;
const DEVICE_RESET: u32 = 11;
const IOMMU_MAP_DMA: u32 = 13;
const IOMMU_UNMAP_DMA: u32 = 14;

fn ioctl_ret(op: &'static str, ret: i32) -> Result<i32> {
    if ret < 0 {
        Err(Error::sys(op, io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

fn argsz<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

fn pci_sysfs(bdf: &str) -> std::path::PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

fn open_dev(path: &str) -> nix::Result<OwnedFd> {
    open(path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
}

impl VfioSys for RealSys {
    type Fd = OwnedFd;

    fn pci_driver(&self, bdf: &str) -> Result<Option<String>> {
        let dev = pci_sysfs(bdf);
        if !dev.exists() {
            return Err(Error::NoSuchDevice(bdf.to_owned()));
        }
        match fs::read_link(dev.join("driver")) {
            Ok(link) => Ok(link.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::sys("reading the PCI driver link", e)),
        }
    }

    fn iommu_group(&self, bdf: &str) -> Result<Option<u32>> {
        match fs::read_link(pci_sysfs(bdf).join("iommu_group")) {
            Ok(link) => Ok(link
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::sys("reading the iommu_group link", e)),
        }
    }

    fn open_container(&self) -> Result<OwnedFd> {
        open_dev("/dev/vfio/vfio").map_err(|e| Error::VfioAbsent(e.into()))
    }

    fn open_group(&self, group: u32) -> Result<OwnedFd> {
        open_dev(&format!("/dev/vfio/{group}")).map_err(|e| Error::sys("opening the VFIO group", e))
    }

    fn api_version(&self, container: &OwnedFd) -> Result<u32> {
        // SAFETY: VFIO_GET_API_VERSION takes no argument and touches no memory.
        let ret = unsafe { nix::libc::ioctl(container.as_raw_fd(), vfio_io(GET_API_VERSION)) };
        ioctl_ret("VFIO_GET_API_VERSION", ret).map(|v| v.unsigned_abs())
    }

    fn check_extension(&self, container: &OwnedFd, ext: u32) -> Result<bool> {
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument and touches no memory.
        let ret = unsafe {
            nix::libc::ioctl(
                container.as_raw_fd(),
                vfio_io(CHECK_EXTENSION),
                nix::libc::c_ulong::from(ext),
            )
        };
        Ok(ioctl_ret("VFIO_CHECK_EXTENSION", ret)? > 0)
    }

    fn group_flags(&self, group: &OwnedFd) -> Result<u32> {
        let mut status = vfio::vfio_group_status {
            argsz: argsz::<vfio::vfio_group_status>(),
            flags: 0,
        };
        // SAFETY: the kernel writes at most `argsz` bytes into `status`, which lives across the call.
        let ret = unsafe {
            nix::libc::ioctl(
                group.as_raw_fd(),
                vfio_io(GROUP_GET_STATUS),
                &raw mut status,
            )
        };
        ioctl_ret("VFIO_GROUP_GET_STATUS", ret)?;
        Ok(status.flags)
    }

    fn group_set_container(&self, group: &OwnedFd, container: &OwnedFd) -> Result<()> {
        let fd: nix::libc::c_int = container.as_raw_fd();
        // SAFETY: the kernel reads one int from `&fd`, which lives across the call.
        let ret = unsafe {
            nix::libc::ioctl(
                group.as_raw_fd(),
                vfio_io(GROUP_SET_CONTAINER),
                &raw const fd,
            )
        };
        ioctl_ret("VFIO_GROUP_SET_CONTAINER", ret).map(drop)
    }

    fn set_iommu(&self, container: &OwnedFd, iommu: u32) -> Result<()> {
        // SAFETY: VFIO_SET_IOMMU takes an integer argument and touches no memory.
        let ret = unsafe {
            nix::libc::ioctl(
                container.as_raw_fd(),
                vfio_io(SET_IOMMU),
                nix::libc::c_ulong::from(iommu),
            )
        };
        ioctl_ret("VFIO_SET_IOMMU", ret).map(drop)
    }

    fn device_fd(&self, group: &OwnedFd, bdf: &str) -> Result<OwnedFd> {
        let name = CString::new(bdf).map_err(|_| Error::InvalidBdf(bdf.to_owned()))?;
        // SAFETY: the kernel reads the NUL-terminated name, which lives across the call.
        let ret = unsafe {
            nix::libc::ioctl(
                group.as_raw_fd(),
                vfio_io(GROUP_GET_DEVICE_FD),
                name.as_ptr(),
            )
        };
        let fd = ioctl_ret("VFIO_GROUP_GET_DEVICE_FD", ret)?;
        // SAFETY: on success the ioctl returns a new file descriptor that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn region_info(&self, device: &OwnedFd, index: u32) -> Result<RegionInfo> {
        let mut info = vfio::vfio_region_info {
            argsz: argsz::<vfio::vfio_region_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `argsz` bytes into `info`, which lives across the call.
        let ret = unsafe {
            nix::libc::ioctl(
                device.as_raw_fd(),
                vfio_io(DEVICE_GET_REGION_INFO),
                &raw mut info,
            )
        };
        ioctl_ret("VFIO_DEVICE_GET_REGION_INFO", ret)?;
        Ok(RegionInfo {
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    fn device_reset(&self, device: &OwnedFd) -> Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no memory.
        let ret = unsafe { nix::libc::ioctl(device.as_raw_fd(), vfio_io(DEVICE_RESET)) };
        ioctl_ret("VFIO_DEVICE_RESET", ret).map(drop)
    }

    fn read_at(&self, device: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<()> {
        let off =
            i64::try_from(offset).map_err(|_| Error::sys("pread", io::ErrorKind::InvalidInput))?;
        let n = pread(device, buf, off).map_err(|e| Error::sys("pread of the device", e))?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(Error::sys(
                "pread of the device",
                io::ErrorKind::UnexpectedEof,
            ))
        }
    }

    fn write_at(&self, device: &OwnedFd, buf: &[u8], offset: u64) -> Result<()> {
        let off =
            i64::try_from(offset).map_err(|_| Error::sys("pwrite", io::ErrorKind::InvalidInput))?;
        let n = pwrite(device, buf, off).map_err(|e| Error::sys("pwrite of the device", e))?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(Error::sys("pwrite of the device", io::ErrorKind::WriteZero))
        }
    }

    fn mmap_region(&self, device: &OwnedFd, offset: u64, len: usize) -> Result<HostMapping> {
        let size = std::num::NonZeroUsize::new(len)
            .ok_or(Error::sys("mmap", io::ErrorKind::InvalidInput))?;
        let off =
            i64::try_from(offset).map_err(|_| Error::sys("mmap", io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh shared mapping of the device fd at a kernel-chosen address; it
        // overlaps no existing Rust object.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                device,
                off,
            )
        }
        .map_err(|e| Error::sys("mmap of a device region", e))?;
        Ok(HostMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn alloc_hugepages(&self, len: usize) -> Result<HostMapping> {
        let size = std::num::NonZeroUsize::new(len)
            .ok_or(Error::sys("mmap", io::ErrorKind::InvalidInput))?;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_HUGETLB | MapFlags::MAP_POPULATE;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address; it overlaps no
        // existing Rust object.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
            )
        }
        .map_err(|e| Error::HugepagesUnavailable {
            len,
            source: e.into(),
        })?;
        Ok(HostMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn unmap(&self, mapping: &HostMapping) {
        // SAFETY: `mapping` came from mmap in this type and its owner is being dropped, so no
        // pointer into it is used afterwards.
        if let Err(e) = unsafe { munmap(mapping.ptr.cast(), mapping.len) } {
            tracing::warn!("munmap of {} bytes failed: {e}", mapping.len);
        }
    }

    fn dma_map(&self, container: &OwnedFd, mapping: &HostMapping, iova: u64) -> Result<()> {
        let map = vfio::vfio_iommu_type1_dma_map {
            argsz: argsz::<vfio::vfio_iommu_type1_dma_map>(),
            flags: vfio::VFIO_DMA_MAP_FLAG_READ | vfio::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: mapping.ptr.as_ptr() as u64,
            iova,
            size: mapping.len as u64,
        };
        // SAFETY: the kernel reads `map`, which lives across the call; it pins the pages of
        // `mapping`, which stays mapped until `dma_unmap` (the DMA buffer owner's drop).
        let ret = unsafe {
            nix::libc::ioctl(
                container.as_raw_fd(),
                vfio_io(IOMMU_MAP_DMA),
                &raw const map,
            )
        };
        ioctl_ret("VFIO_IOMMU_MAP_DMA", ret).map(drop)
    }

    fn dma_unmap(&self, container: &OwnedFd, iova: u64, len: usize) -> Result<()> {
        let mut unmap = vfio::vfio_iommu_type1_dma_unmap {
            argsz: argsz::<vfio::vfio_iommu_type1_dma_unmap>(),
            iova,
            size: len as u64,
            ..Default::default()
        };
        // SAFETY: the kernel reads and updates `unmap`, which lives across the call.
        let ret = unsafe {
            nix::libc::ioctl(
                container.as_raw_fd(),
                vfio_io(IOMMU_UNMAP_DMA),
                &raw mut unmap,
            )
        };
        ioctl_ret("VFIO_IOMMU_UNMAP_DMA", ret).map(drop)
    }
}
