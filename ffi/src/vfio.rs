//! VFIO: container (type1v2 IOMMU), group and device, BAR0 mapping, PCI command register,
//! reset, and DMA memory from hugepages mapped into the IOMMU.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::dma::{DmaBacking, DmaRegion, HUGEPAGE, HugePages};
use crate::generated::vfio as sys;
use crate::iomem::IoSlab;
use crate::mmio::{Mmio, MmioMapping};
use crate::{Error, PciDevice};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
fn req(n: u32) -> nix::libc::c_ulong {
    nix::request_code_none!(sys::VFIO_TYPE, sys::VFIO_BASE + n) as nix::libc::c_ulong
}

const GET_API_VERSION: u32 = 0;
const CHECK_EXTENSION: u32 = 1;
const SET_IOMMU: u32 = 2;
const GROUP_GET_STATUS: u32 = 3;
const GROUP_SET_CONTAINER: u32 = 4;
const GROUP_GET_DEVICE_FD: u32 = 6;
const DEVICE_GET_INFO: u32 = 7;
const DEVICE_GET_REGION_INFO: u32 = 8;
const DEVICE_RESET: u32 = 11;
const IOMMU_MAP_DMA: u32 = 13;
const IOMMU_UNMAP_DMA: u32 = 14;

fn argsz<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

/// `ioctl(fd, request, arg)` returning the result or the errno.
///
/// # Safety
///
/// `arg` must be what the request expects: a value or a pointer to a live, correctly laid
/// out structure the kernel may read and write.
unsafe fn ioctl(fd: &File, n: u32, arg: nix::libc::c_ulong) -> std::io::Result<i32> {
    // SAFETY: forwarded from the caller's contract.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), req(n), arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A PCI function bound to `vfio-pci`, with its own container and IOMMU domain.
#[derive(Debug)]
pub struct VfioPci {
    bdf: String,
    vfio: Arc<Container>,
    device: File,
    bar0: MmioMapping,
    config_offset: u64,
    next_iova: Mutex<u64>,
    /// I/O memory mapped for the device; unmapped when the device is dropped.
    slabs: Mutex<Vec<SlabMapped>>,
}

/// The container and its group. DMA mappings hold it: closing the group detaches the IOMMU
/// domain, after which unmapping fails, so it lives until the last mapping is gone.
#[derive(Debug)]
struct Container {
    fd: File,
    _group: File,
}

impl Container {
    /// Maps `size` bytes of this process's memory at `vaddr` for the device at `iova`.
    ///
    /// # Safety
    ///
    /// The memory must stay mapped in the process until [`Container::unmap`] of the same
    /// range succeeds (the kernel pins it; freeing it first would hand the device memory
    /// the process may reuse).
    unsafe fn map(&self, vaddr: u64, iova: u64, size: u64) -> std::io::Result<()> {
        let mut map = sys::vfio_iommu_type1_dma_map {
            argsz: argsz::<sys::vfio_iommu_type1_dma_map>(),
            flags: sys::VFIO_DMA_MAP_FLAG_READ | sys::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: a pointer to a live vfio_iommu_type1_dma_map; the memory it describes
        // outlives the mapping (the caller's contract).
        unsafe { ioctl(&self.fd, IOMMU_MAP_DMA, &raw mut map as nix::libc::c_ulong) }.map(drop)
    }

    /// Removes the mapping of `size` bytes at `iova`.
    fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        let mut unmap = sys::vfio_iommu_type1_dma_unmap {
            argsz: argsz::<sys::vfio_iommu_type1_dma_unmap>(),
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: a pointer to a live unmap request; removing a mapping touches no memory.
        unsafe {
            ioctl(
                &self.fd,
                IOMMU_UNMAP_DMA,
                &raw mut unmap as nix::libc::c_ulong,
            )
        }
        .map(drop)
    }
}

/// Hugepages mapped into the container's IOMMU at `iova`; unmapped from the IOMMU when the
/// last [`DmaRegion`] on them is dropped, before the pages themselves are released.
#[derive(Debug)]
struct IommuMapped {
    pages: std::mem::ManuallyDrop<HugePages>,
    iova: u64,
    vfio: Arc<Container>,
}

impl DmaBacking for IommuMapped {
    fn len(&self) -> usize {
        self.pages.len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.pages.read(offset, buf);
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        self.pages.write(offset, buf);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.pages.read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.pages.write_u32(offset, value);
    }
}

impl Drop for IommuMapped {
    fn drop(&mut self) {
        match self.vfio.unmap(self.iova, self.pages.len() as u64) {
            // SAFETY: the IOMMU no longer maps the pages and this is the only drop of them.
            Ok(_) => unsafe { std::mem::ManuallyDrop::drop(&mut self.pages) },
            // The device may still reach the pages: keep them rather than free them.
            Err(e) => tracing::error!(
                iova = self.iova,
                "VFIO_IOMMU_UNMAP_DMA failed, leaking the pages: {e}"
            ),
        }
    }
}

/// An [`IoSlab`] mapped into the container's IOMMU at `iova`, unmapped on drop; if the
/// unmap fails the slab is kept alive for good, since the device may still reach it.
#[derive(Debug)]
struct SlabMapped {
    slab: IoSlab,
    iova: u64,
    vfio: Arc<Container>,
}

impl Drop for SlabMapped {
    fn drop(&mut self) {
        if let Err(e) = self.vfio.unmap(self.iova, self.slab.len() as u64) {
            tracing::error!(
                iova = self.iova,
                "VFIO_IOMMU_UNMAP_DMA failed, keeping the I/O memory: {e}"
            );
            std::mem::forget(self.slab.clone());
        }
    }
}

/// The IOMMU group number of a PCI function, from sysfs.
pub fn iommu_group(bdf: &str) -> Result<u32, Error> {
    let link = Path::new("/sys/bus/pci/devices")
        .join(bdf)
        .join("iommu_group");
    let target = std::fs::read_link(&link).map_err(|e| {
        Error::Setup(format!(
            "{bdf}: no IOMMU group ({e}); is the IOMMU on (intel_iommu=on) and does the device exist?"
        ))
    })?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Error::Setup(format!(
                "{bdf}: unreadable IOMMU group link {}",
                target.display()
            ))
        })
}

/// The kernel driver a PCI function is bound to, if any.
pub fn bound_driver(bdf: &str) -> Option<String> {
    let link = Path::new("/sys/bus/pci/devices").join(bdf).join("driver");
    std::fs::read_link(link)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

impl VfioPci {
    /// Opens the function at `bdf` (e.g. `0000:00:04.0`), which must be bound to vfio-pci.
    pub fn open(bdf: &str) -> Result<Self, Error> {
        match bound_driver(bdf).as_deref() {
            Some("vfio-pci") => {}
            Some(d) => {
                return Err(Error::Setup(format!(
                    "{bdf} is bound to {d}, not vfio-pci: run `baton setup-pci`"
                )));
            }
            None => {
                return Err(Error::Setup(format!(
                    "{bdf} has no driver (or does not exist): run `baton setup-pci`"
                )));
            }
        }
        let group_no = iommu_group(bdf)?;
        let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
        let container = rw(Path::new("/dev/vfio/vfio")).map_err(|e| {
            Error::Setup(format!(
                "cannot open /dev/vfio/vfio ({e}): load the vfio and vfio_iommu_type1 modules"
            ))
        })?;
        // SAFETY: GET_API_VERSION takes no argument.
        let api = unsafe { ioctl(&container, GET_API_VERSION, 0) }
            .map_err(Error::sys("VFIO_GET_API_VERSION"))?;
        if u32::try_from(api).ok() != Some(sys::VFIO_API_VERSION) {
            return Err(Error::Setup(format!("unknown VFIO API version {api}")));
        }
        // SAFETY: CHECK_EXTENSION takes the extension number by value.
        let type1 = unsafe {
            ioctl(
                &container,
                CHECK_EXTENSION,
                nix::libc::c_ulong::from(sys::VFIO_TYPE1v2_IOMMU),
            )
        }
        .map_err(Error::sys("VFIO_CHECK_EXTENSION"))?;
        if type1 != 1 {
            return Err(Error::Setup(
                "the type1v2 IOMMU is not available: load vfio_iommu_type1".into(),
            ));
        }
        let group_path = PathBuf::from(format!("/dev/vfio/{group_no}"));
        let group = rw(&group_path)
            .map_err(|e| Error::Setup(format!("cannot open {} ({e})", group_path.display())))?;
        let mut status = sys::vfio_group_status {
            argsz: argsz::<sys::vfio_group_status>(),
            flags: 0,
        };
        // SAFETY: a pointer to a live vfio_group_status with argsz set.
        unsafe {
            ioctl(
                &group,
                GROUP_GET_STATUS,
                &raw mut status as nix::libc::c_ulong,
            )
        }
        .map_err(Error::sys("VFIO_GROUP_GET_STATUS"))?;
        if status.flags & sys::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Setup(format!(
                "IOMMU group {group_no} is not viable: bind every device in it to vfio-pci"
            )));
        }
        let cfd = container.as_raw_fd();
        // SAFETY: a pointer to a live int holding the container fd.
        unsafe {
            ioctl(
                &group,
                GROUP_SET_CONTAINER,
                &raw const cfd as nix::libc::c_ulong,
            )
        }
        .map_err(Error::sys("VFIO_GROUP_SET_CONTAINER"))?;
        // SAFETY: SET_IOMMU takes the IOMMU type by value.
        unsafe {
            ioctl(
                &container,
                SET_IOMMU,
                nix::libc::c_ulong::from(sys::VFIO_TYPE1v2_IOMMU),
            )
        }
        .map_err(Error::sys("VFIO_SET_IOMMU (is vfio_iommu_type1 loaded?)"))?;
        let name =
            std::ffi::CString::new(bdf).map_err(|_| Error::Setup("bad PCI address".into()))?;
        // SAFETY: a pointer to a live NUL-terminated device name.
        let dfd = unsafe {
            ioctl(
                &group,
                GROUP_GET_DEVICE_FD,
                name.as_ptr() as nix::libc::c_ulong,
            )
        }
        .map_err(Error::sys("VFIO_GROUP_GET_DEVICE_FD"))?;
        // SAFETY: the kernel just returned this new descriptor; the File owns it from here.
        let device = unsafe { File::from_raw_fd(dfd) };
        let mut info = sys::vfio_device_info {
            argsz: argsz::<sys::vfio_device_info>(),
            ..Default::default()
        };
        // SAFETY: a pointer to a live vfio_device_info with argsz set.
        unsafe {
            ioctl(
                &device,
                DEVICE_GET_INFO,
                &raw mut info as nix::libc::c_ulong,
            )
        }
        .map_err(Error::sys("VFIO_DEVICE_GET_INFO"))?;
        if info.flags & sys::VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(Error::Device(format!("{bdf} is not a PCI device")));
        }
        let bar = region(&device, sys::VFIO_PCI_BAR0_REGION_INDEX)?;
        if bar.flags & sys::VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size == 0 {
            return Err(Error::Device(format!("{bdf}: BAR0 cannot be mapped")));
        }
        let config = region(&device, sys::VFIO_PCI_CONFIG_REGION_INDEX)?;
        let len = usize::try_from(bar.size).map_err(|_| Error::Device("BAR0 too large".into()))?;
        let size =
            std::num::NonZeroUsize::new(len).ok_or_else(|| Error::Device("empty BAR0".into()))?;
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        // SAFETY: maps the BAR region of the device fd at the offset VFIO reported; the
        // mapping is owned by the MmioMapping below and never referenced by Rust references.
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &device,
                i64::try_from(bar.offset).unwrap_or(0),
            )
        }
        .map_err(|e| Error::Sys {
            what: "mmap BAR0".into(),
            source: e.into(),
        })?;
        // SAFETY: a live mapping of `len` bytes of device registers, owned from here on.
        let bar0 = unsafe { MmioMapping::new(base.cast(), len) };
        let dev = Self {
            bdf: bdf.to_owned(),
            vfio: Arc::new(Container {
                fd: container,
                _group: group,
            }),
            device,
            bar0,
            config_offset: config.offset,
            next_iova: Mutex::new(1 << 32),
            slabs: Mutex::new(Vec::new()),
        };
        dev.enable_bus_master()?;
        Ok(dev)
    }

    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Sets Memory Space and Bus Master in the PCI command register.
    fn enable_bus_master(&self) -> Result<(), Error> {
        let mut cmd = [0u8; 2];
        self.device
            .read_exact_at(&mut cmd, self.config_offset + 4)
            .map_err(Error::sys("read PCI command register"))?;
        let v = u16::from_le_bytes(cmd) | 0x6;
        self.device
            .write_all_at(&v.to_le_bytes(), self.config_offset + 4)
            .map_err(Error::sys("write PCI command register"))
    }
}

fn region(device: &File, index: u32) -> Result<sys::vfio_region_info, Error> {
    let mut r = sys::vfio_region_info {
        argsz: argsz::<sys::vfio_region_info>(),
        index,
        ..Default::default()
    };
    // SAFETY: a pointer to a live vfio_region_info with argsz and index set.
    unsafe {
        ioctl(
            device,
            DEVICE_GET_REGION_INFO,
            &raw mut r as nix::libc::c_ulong,
        )
    }
    .map_err(Error::sys(format!("VFIO_DEVICE_GET_REGION_INFO {index}")))?;
    Ok(r)
}

impl VfioPci {
    /// The next free device address range of `size` bytes (hugepage aligned).
    fn next_iova(&self, size: u64) -> u64 {
        let mut next = self
            .next_iova
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let iova = *next;
        *next += size.div_ceil(HUGEPAGE as u64) * HUGEPAGE as u64;
        iova
    }
}

impl PciDevice for VfioPci {
    fn bar0(&self) -> &dyn Mmio {
        &self.bar0
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaRegion, Error> {
        let pages = HugePages::new(len.max(1))?;
        let size = pages.len() as u64;
        let iova = self.next_iova(size);
        // SAFETY: the hugepages stay mapped until IommuMapped has unmapped them.
        unsafe { self.vfio.map(pages.vaddr(), iova, size) }
            .map_err(Error::sys("VFIO_IOMMU_MAP_DMA"))?;
        let mapped = Arc::new(IommuMapped {
            pages: std::mem::ManuallyDrop::new(pages),
            iova,
            vfio: Arc::clone(&self.vfio),
        });
        Ok(DmaRegion::new(mapped, 0, len, iova))
    }

    fn map_slab(&self, slab: &IoSlab) -> Result<u64, Error> {
        let size = slab.len() as u64;
        let iova = self.next_iova(size);
        // SAFETY: the SlabMapped record below keeps the slab alive until it is unmapped.
        unsafe { self.vfio.map(slab.vaddr(), iova, size) }
            .map_err(Error::sys("VFIO_IOMMU_MAP_DMA of I/O memory"))?;
        self.slabs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(SlabMapped {
                slab: slab.clone(),
                iova,
                vfio: Arc::clone(&self.vfio),
            });
        Ok(iova)
    }

    fn reset(&self) -> Result<(), Error> {
        // SAFETY: DEVICE_RESET takes no argument.
        unsafe { ioctl(&self.device, DEVICE_RESET, 0) }.map_err(Error::sys("VFIO_DEVICE_RESET"))?;
        self.enable_bus_master()
    }
}
