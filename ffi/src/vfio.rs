//! A PCI function owned through VFIO: container (type1v2 IOMMU), group, device, BAR 0,
//! config space and IOMMU-mapped hugepage DMA memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dma::{DmaBuffer, HUGEPAGE_SIZE};
use crate::error::{Error, Result};
use crate::generated::vfio;
use crate::mmio::Mmio;
use crate::sys::{HostMapping, RealSys, VfioSys};

/// What a device driver needs from a PCI function.
pub trait PciFunction: Send + Sync + 'static {
    /// Register window type of BAR 0.
    type Regs: crate::RegisterIo;
    /// The function's name (PCI address).
    fn name(&self) -> &str;
    /// BAR 0 registers.
    fn bar0(&self) -> &Self::Regs;
    /// Allocates zeroed DMA memory of at least `len` bytes, 4 KiB aligned.
    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer>;
    /// Resets the function (function-level reset).
    fn reset(&self) -> Result<()>;
}

/// Offset of the PCI command register in config space.
const PCI_COMMAND: u64 = 0x04;
/// Command register: memory space enable.
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// First IOVA handed out (keeps 0 unused so a zero address is always a bug).
const IOVA_BASE: u64 = 1 << 32;
/// End of the IOVA range handed out (a 48-bit IOMMU address width is assumed).
const IOVA_END: u64 = 1 << 47;

/// Checks a PCI address of the form `dddd:bb:dd.f` (lowercase hex).
pub fn check_bdf(bdf: &str) -> Result<()> {
    let b = bdf.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let ok = b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && (b'0'..=b'7').contains(&b[11]);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidBdf(bdf.to_owned()))
    }
}

/// The container with its group: DMA buffers keep both alive, since closing the group
/// detaches the IOMMU and makes their unmapping fail.
struct Container<S: VfioSys> {
    _group: S::Fd,
    fd: S::Fd,
    sys: Arc<S>,
}

/// A PCI function bound to vfio-pci, with its own VFIO container.
pub struct VfioPci<S: VfioSys = RealSys> {
    name: String,
    container: Arc<Container<S>>,
    device: S::Fd,
    bar0: Mmio,
    next_iova: AtomicU64,
}

struct MmioOwner<S: VfioSys> {
    sys: Arc<S>,
    mapping: HostMapping,
}

impl<S: VfioSys> Drop for MmioOwner<S> {
    fn drop(&mut self) {
        self.sys.unmap(&self.mapping);
    }
}

struct DmaOwner<S: VfioSys> {
    container: Arc<Container<S>>,
    mapping: HostMapping,
    iova: u64,
}

impl<S: VfioSys> Drop for DmaOwner<S> {
    fn drop(&mut self) {
        let c = &self.container;
        if let Err(e) = c.sys.dma_unmap(&c.fd, self.iova, self.mapping.len) {
            // The pages stay pinned by the IOMMU; leaking them is the only safe choice.
            tracing::warn!(
                "VFIO DMA unmap of iova {:#x} failed, leaking its memory: {e}",
                self.iova
            );
            return;
        }
        c.sys.unmap(&self.mapping);
    }
}

impl VfioPci<RealSys> {
    /// Opens PCI function `bdf` (e.g. `0000:00:04.0`) through the real kernel.
    pub fn open(bdf: &str) -> Result<Self> {
        Self::open_with(Arc::new(RealSys), bdf)
    }
}

impl<S: VfioSys> VfioPci<S> {
    /// Opens PCI function `bdf` through the system-call layer `sys`: checks the binding
    /// and IOMMU group, sets up a type1v2 container, enables memory space and bus
    /// mastering, and maps BAR 0.
    pub fn open_with(sys: Arc<S>, bdf: &str) -> Result<Self> {
        check_bdf(bdf)?;
        let driver = sys.pci_driver(bdf)?;
        if driver.as_deref() != Some("vfio-pci") {
            return Err(Error::NotBoundToVfio {
                bdf: bdf.to_owned(),
                driver,
            });
        }
        let group_no = sys
            .iommu_group(bdf)?
            .ok_or_else(|| Error::NoIommuGroup(bdf.to_owned()))?;
        let container = sys.open_container()?;
        if sys.api_version(&container)? != vfio::VFIO_API_VERSION {
            return Err(Error::Unsupported("VFIO API version 0"));
        }
        if !sys.check_extension(&container, vfio::VFIO_TYPE1v2_IOMMU)? {
            return Err(Error::Unsupported("the type1v2 IOMMU"));
        }
        let group = sys.open_group(group_no)?;
        if sys.group_flags(&group)? & vfio::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::GroupNotViable(group_no));
        }
        sys.group_set_container(&group, &container)?;
        sys.set_iommu(&container, vfio::VFIO_TYPE1v2_IOMMU)?;
        let device = sys.device_fd(&group, bdf)?;

        let config = sys.region_info(&device, vfio::VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut cmd = [0u8; 2];
        sys.read_at(&device, &mut cmd, config.offset + PCI_COMMAND)?;
        let cmd = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        sys.write_at(&device, &cmd.to_le_bytes(), config.offset + PCI_COMMAND)?;

        let bar = sys.region_info(&device, vfio::VFIO_PCI_BAR0_REGION_INDEX)?;
        let bar_len =
            usize::try_from(bar.size).map_err(|_| Error::BarNotMappable(bdf.to_owned()))?;
        if !bar.mappable() || bar_len < 0x1000 {
            return Err(Error::BarNotMappable(bdf.to_owned()));
        }
        let mapping = sys.mmap_region(&device, bar.offset, bar_len)?;
        let ptr = mapping.ptr;
        let owner = Box::new(MmioOwner {
            sys: Arc::clone(&sys),
            mapping,
        });
        // SAFETY: `ptr..ptr+bar_len` is the fresh shared mapping of BAR 0, page aligned,
        // unmapped only when `owner` drops; no reference into it is created.
        let bar0 = unsafe { Mmio::new(ptr, bar_len, owner) };
        Ok(VfioPci {
            name: bdf.to_owned(),
            container: Arc::new(Container {
                _group: group,
                fd: container,
                sys,
            }),
            device,
            bar0,
            next_iova: AtomicU64::new(IOVA_BASE),
        })
    }
}

impl<S: VfioSys> PciFunction for VfioPci<S> {
    type Regs = Mmio;

    fn name(&self) -> &str {
        &self.name
    }

    fn bar0(&self) -> &Mmio {
        &self.bar0
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer> {
        let len = len
            .max(1)
            .div_ceil(HUGEPAGE_SIZE)
            .checked_mul(HUGEPAGE_SIZE)
            .ok_or(Error::IovaExhausted)?;
        let len64 = len as u64;
        let iova = self
            .next_iova
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                next.checked_add(len64).filter(|end| *end <= IOVA_END)
            })
            .map_err(|_| Error::IovaExhausted)?;
        let c = &self.container;
        let mapping = c.sys.alloc_hugepages(len)?;
        if let Err(e) = c.sys.dma_map(&c.fd, &mapping, iova) {
            c.sys.unmap(&mapping);
            return Err(e);
        }
        let ptr = mapping.ptr;
        let owner = Box::new(DmaOwner {
            container: Arc::clone(c),
            mapping,
            iova,
        });
        // SAFETY: `ptr..ptr+len` is a fresh anonymous (zeroed) hugepage mapping, 2 MiB
        // aligned, mapped for DMA at `iova`; `owner` unmaps both on drop; no reference into
        // it exists.
        Ok(unsafe { DmaBuffer::new(ptr, len, iova, owner) })
    }

    fn reset(&self) -> Result<()> {
        self.container.sys.device_reset(&self.device)
    }
}
