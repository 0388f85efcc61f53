//! Test doubles: [`FakeVfio`], a scriptable [`VfioSys`] backed by heap memory, and
//! [`HeapDma`], heap "DMA" memory whose IOVAs a simulated device can resolve.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeMap;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::dma::DmaBuffer;
use crate::error::{Error, Result};
use crate::generated::vfio;
use crate::sys::{HostMapping, RegionInfo, VfioSys};

const PAGE: usize = 4096;

/// Zeroed, page-aligned heap memory.
#[derive(Debug)]
struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the block is plain heap memory reached only through raw pointers.
unsafe impl Send for HeapBlock {}
// SAFETY: see `Send`.
unsafe impl Sync for HeapBlock {}

impl HeapBlock {
    fn new(len: usize) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1), PAGE).map_err(|_| Error::IovaExhausted)?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::HugepagesUnavailable {
            len,
            source: io::ErrorKind::OutOfMemory.into(),
        })?;
        Ok(HeapBlock { ptr, layout })
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with `layout` in `new` and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Heap memory standing in for IOMMU-mapped DMA memory, with an IOVA table a simulated
/// device uses to reach it.
#[derive(Debug, Default)]
pub struct HeapDma {
    next_iova: AtomicU64,
    blocks: Mutex<BTreeMap<u64, Weak<HeapBlock>>>,
}

impl HeapDma {
    /// An empty IOVA space; the first buffer is placed at 1 MiB.
    pub fn new() -> Self {
        HeapDma {
            next_iova: AtomicU64::new(1 << 20),
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Weak<HeapBlock>>> {
        self.blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Allocates zeroed memory of `len` bytes (rounded up to 4 KiB) at a fresh IOVA.
    pub fn alloc(&self, len: usize) -> Result<DmaBuffer> {
        let len = len.max(1).div_ceil(PAGE) * PAGE;
        let block = Arc::new(HeapBlock::new(len)?);
        // Leave an unmapped guard page between buffers so overruns do not resolve.
        let iova = self
            .next_iova
            .fetch_add((len + PAGE) as u64, Ordering::Relaxed);
        self.table().insert(iova, Arc::downgrade(&block));
        let ptr = block.ptr;
        // SAFETY: `ptr..ptr+len` is a live, page-aligned heap block kept alive by the owner.
        Ok(unsafe { DmaBuffer::new(ptr, len, iova, Box::new(block)) })
    }

    /// Resolves `iova..iova+len` to a view of a live buffer and the offset inside it, like
    /// an IOMMU lookup; `None` is an IOMMU fault.
    pub fn resolve(&self, iova: u64, len: usize) -> Option<(DmaBuffer, usize)> {
        let table = self.table();
        let (&base, weak) = table.range(..=iova).next_back()?;
        let block = weak.upgrade()?;
        let offset = usize::try_from(iova - base).ok()?;
        if offset.checked_add(len)? > block.layout.size() {
            return None;
        }
        let (ptr, size) = (block.ptr, block.layout.size());
        // SAFETY: a second view of a live block; the `Arc` keeps it allocated; no references.
        Some((
            unsafe { DmaBuffer::new(ptr, size, base, Box::new(block)) },
            offset,
        ))
    }

    /// Copies device-side memory at `iova` into `dst`; false on an IOMMU fault.
    pub fn read(&self, iova: u64, dst: &mut [u8]) -> bool {
        self.resolve(iova, dst.len())
            .is_some_and(|(b, off)| b.read_bytes(off, dst).is_ok())
    }

    /// Copies `src` to device-side memory at `iova`; false on an IOMMU fault.
    pub fn write(&self, iova: u64, src: &[u8]) -> bool {
        self.resolve(iova, src.len())
            .is_some_and(|(b, off)| b.write_bytes(off, src).is_ok())
    }

    /// Number of live buffers.
    pub fn live_buffers(&self) -> usize {
        self.table()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// State and call log of a [`FakeVfio`].
#[derive(Debug)]
pub struct FakeState {
    /// Driver bound to the device; `None` for no driver.
    pub driver: Option<String>,
    /// Whether the device exists.
    pub exists: bool,
    /// IOMMU group of the device.
    pub group: Option<u32>,
    /// Whether `/dev/vfio/vfio` exists.
    pub vfio_present: bool,
    /// Whether the group is viable.
    pub viable: bool,
    /// Whether hugepages can be allocated.
    pub hugepages: bool,
    /// Size of BAR 0.
    pub bar0_size: u64,
    /// PCI config space.
    pub config: [u8; 256],
    /// Active DMA mappings: iova -> length.
    pub dma: BTreeMap<u64, usize>,
    /// Number of device resets.
    pub resets: u32,
    /// Live host mappings.
    pub mappings: usize,
    /// IOMMU type set on the container.
    pub iommu: Option<u32>,
}

/// A scriptable double of the VFIO system-call layer.
#[derive(Debug)]
pub struct FakeVfio {
    /// The scripted state, inspected by tests.
    pub state: Mutex<FakeState>,
    next_fd: AtomicU64,
}

impl Default for FakeVfio {
    fn default() -> Self {
        FakeVfio {
            state: Mutex::new(FakeState {
                driver: Some("vfio-pci".to_owned()),
                exists: true,
                group: Some(7),
                vfio_present: true,
                viable: true,
                hugepages: true,
                bar0_size: 0x4000,
                config: [0; 256],
                dma: BTreeMap::new(),
                resets: 0,
                mappings: 0,
                iommu: None,
            }),
            next_fd: AtomicU64::new(3),
        }
    }
}

impl FakeVfio {
    /// Locks the scripted state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fd(&self) -> u64 {
        self.next_fd.fetch_add(1, Ordering::Relaxed)
    }

    fn map_heap(&self, len: usize) -> Result<HostMapping> {
        let block = HeapBlock::new(len)?;
        let ptr = block.ptr;
        std::mem::forget(block);
        self.state().mappings += 1;
        Ok(HostMapping { ptr, len })
    }
}

/// Offset of the config region in the fake device fd.
const CONFIG_OFFSET: u64 = 0x7_0000_0000;

impl VfioSys for FakeVfio {
    type Fd = u64;

    fn pci_driver(&self, bdf: &str) -> Result<Option<String>> {
        let s = self.state();
        if s.exists {
            Ok(s.driver.clone())
        } else {
            Err(Error::NoSuchDevice(bdf.to_owned()))
        }
    }

    fn iommu_group(&self, _bdf: &str) -> Result<Option<u32>> {
        Ok(self.state().group)
    }

    fn open_container(&self) -> Result<u64> {
        if self.state().vfio_present {
            Ok(self.fd())
        } else {
            Err(Error::VfioAbsent(io::ErrorKind::NotFound.into()))
        }
    }

    fn open_group(&self, _group: u32) -> Result<u64> {
        Ok(self.fd())
    }

    fn api_version(&self, _container: &u64) -> Result<u32> {
        Ok(vfio::VFIO_API_VERSION)
    }

    fn check_extension(&self, _container: &u64, ext: u32) -> Result<bool> {
        Ok(ext == vfio::VFIO_TYPE1v2_IOMMU)
    }

    fn group_flags(&self, _group: &u64) -> Result<u32> {
        Ok(if self.state().viable {
            vfio::VFIO_GROUP_FLAGS_VIABLE
        } else {
            0
        })
    }

    fn group_set_container(&self, _group: &u64, _container: &u64) -> Result<()> {
        Ok(())
    }

    fn set_iommu(&self, _container: &u64, iommu: u32) -> Result<()> {
        self.state().iommu = Some(iommu);
        Ok(())
    }

    fn device_fd(&self, _group: &u64, _bdf: &str) -> Result<u64> {
        Ok(self.fd())
    }

    fn region_info(&self, _device: &u64, index: u32) -> Result<RegionInfo> {
        match index {
            vfio::VFIO_PCI_BAR0_REGION_INDEX => Ok(RegionInfo {
                flags: vfio::VFIO_REGION_INFO_FLAG_READ
                    | vfio::VFIO_REGION_INFO_FLAG_WRITE
                    | vfio::VFIO_REGION_INFO_FLAG_MMAP,
                size: self.state().bar0_size,
                offset: 0,
            }),
            vfio::VFIO_PCI_CONFIG_REGION_INDEX => Ok(RegionInfo {
                flags: vfio::VFIO_REGION_INFO_FLAG_READ | vfio::VFIO_REGION_INFO_FLAG_WRITE,
                size: 256,
                offset: CONFIG_OFFSET,
            }),
            _ => Err(Error::sys(
                "VFIO_DEVICE_GET_REGION_INFO",
                io::ErrorKind::InvalidInput,
            )),
        }
    }

    fn device_reset(&self, _device: &u64) -> Result<()> {
        self.state().resets += 1;
        Ok(())
    }

    fn read_at(&self, _device: &u64, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = self.state();
        let start = offset
            .checked_sub(CONFIG_OFFSET)
            .and_then(|o| usize::try_from(o).ok());
        let src = start
            .and_then(|o| s.config.get(o..o + buf.len()))
            .ok_or(Error::sys("pread", io::ErrorKind::InvalidInput))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, _device: &u64, buf: &[u8], offset: u64) -> Result<()> {
        let mut s = self.state();
        let start = offset
            .checked_sub(CONFIG_OFFSET)
            .and_then(|o| usize::try_from(o).ok());
        let dst = start
            .and_then(|o| s.config.get_mut(o..o + buf.len()))
            .ok_or(Error::sys("pwrite", io::ErrorKind::InvalidInput))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn mmap_region(&self, _device: &u64, _offset: u64, len: usize) -> Result<HostMapping> {
        self.map_heap(len)
    }

    fn alloc_hugepages(&self, len: usize) -> Result<HostMapping> {
        if !self.state().hugepages {
            return Err(Error::HugepagesUnavailable {
                len,
                source: io::Error::from_raw_os_error(12),
            });
        }
        self.map_heap(len)
    }

    fn unmap(&self, mapping: &HostMapping) {
        let layout =
            Layout::from_size_align(mapping.len.max(1), PAGE).unwrap_or(Layout::new::<u8>());
        // SAFETY: `mapping` came from `map_heap`, which allocated it with this layout and
        // forgot its block; it is released once, by its owner's drop.
        unsafe { dealloc(mapping.ptr.as_ptr(), layout) };
        self.state().mappings -= 1;
    }

    fn dma_map(&self, _container: &u64, mapping: &HostMapping, iova: u64) -> Result<()> {
        self.state().dma.insert(iova, mapping.len);
        Ok(())
    }

    fn dma_unmap(&self, _container: &u64, iova: u64, _len: usize) -> Result<()> {
        self.state()
            .dma
            .remove(&iova)
            .map(drop)
            .ok_or(Error::sys("VFIO_IOMMU_UNMAP_DMA", io::ErrorKind::NotFound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PciFunction, RegisterIo, VfioPci};

    const BDF: &str = "0000:00:04.0";

    fn open(f: impl FnOnce(&mut FakeState)) -> (Arc<FakeVfio>, Result<VfioPci<FakeVfio>>) {
        let sys = Arc::new(FakeVfio::default());
        f(&mut sys.state());
        let dev = VfioPci::open_with(Arc::clone(&sys), BDF);
        (sys, dev)
    }

    #[test]
    fn open_enables_bus_master_and_maps_bar0() {
        let (sys, dev) = open(|_| {});
        let dev = dev.unwrap();
        assert_eq!(sys.state().config[4] & 0b110, 0b110);
        assert_eq!(sys.state().iommu, Some(vfio::VFIO_TYPE1v2_IOMMU));
        assert_eq!(dev.bar0().len(), 0x4000);
        dev.bar0().write32(0x1000, 0xdead_beef);
        assert_eq!(dev.bar0().read32(0x1000), 0xdead_beef);
        dev.bar0().write64(0x28, 0x1122_3344_5566_7788);
        assert_eq!(dev.bar0().read32(0x2c), 0x1122_3344);
        assert_eq!(dev.bar0().read64(0x28), 0x1122_3344_5566_7788);
        dev.reset().unwrap();
        assert_eq!(sys.state().resets, 1);
        drop(dev);
        assert_eq!(sys.state().mappings, 0);
    }

    #[test]
    fn clear_errors_for_host_setup_problems() {
        assert!(matches!(
            VfioPci::open_with(Arc::new(FakeVfio::default()), "00:04.0"),
            Err(Error::InvalidBdf(_))
        ));
        let (_, e) = open(|s| s.exists = false);
        assert!(matches!(e, Err(Error::NoSuchDevice(_))));
        let (_, e) = open(|s| s.driver = Some("nvme".into()));
        let msg = e.err().unwrap().to_string();
        assert!(
            msg.contains("bound to nvme") && msg.contains("vfio-pci"),
            "{msg}"
        );
        let (_, e) = open(|s| s.driver = None);
        assert!(e.err().unwrap().to_string().contains("no driver"));
        let (_, e) = open(|s| s.group = None);
        assert!(matches!(e, Err(Error::NoIommuGroup(_))));
        let (_, e) = open(|s| s.vfio_present = false);
        assert!(matches!(e, Err(Error::VfioAbsent(_))));
        let (_, e) = open(|s| s.viable = false);
        assert!(matches!(e, Err(Error::GroupNotViable(7))));
        let (_, e) = open(|s| s.bar0_size = 0x100);
        assert!(matches!(e, Err(Error::BarNotMappable(_))));
    }

    #[test]
    fn dma_is_iommu_mapped_in_hugepages_and_unmapped_on_drop() {
        let (sys, dev) = open(|_| {});
        let dev = dev.unwrap();
        let a = dev.alloc_dma(4096).unwrap();
        let b = dev.alloc_dma(3 << 20).unwrap();
        assert_eq!(a.len(), 2 << 20);
        assert_eq!(b.len(), 4 << 20);
        assert_eq!(b.iova(), a.iova() + (2 << 20));
        assert_eq!(sys.state().dma.get(&b.iova()), Some(&(4 << 20)));
        a.write_u64(8, 0x0102_0304_0506_0708);
        let mut bytes = [0u8; 8];
        a.read_bytes(8, &mut bytes).unwrap();
        assert_eq!(bytes, [8, 7, 6, 5, 4, 3, 2, 1]);
        assert!(matches!(
            a.write_bytes((2 << 20) - 4, &[0; 8]),
            Err(Error::OutOfBounds { .. })
        ));
        drop(a);
        assert_eq!(sys.state().dma.len(), 1);
        sys.state().hugepages = false;
        let e = dev.alloc_dma(1).unwrap_err();
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
        drop((b, dev));
        assert_eq!(sys.state().mappings, 0);
        assert!(sys.state().dma.is_empty());
    }

    #[test]
    fn heap_dma_resolves_iovas_like_an_iommu() {
        let dma = HeapDma::new();
        let a = dma.alloc(100).unwrap();
        assert_eq!(a.len(), 4096);
        assert!(dma.write(a.iova() + 10, b"hello"));
        let mut out = [0u8; 5];
        a.read_bytes(10, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert!(!dma.write(a.iova() + 4094, b"hello"), "overrun must fault");
        assert!(
            !dma.read(a.iova() - 1, &mut out),
            "below the buffer must fault"
        );
        let iova = a.iova();
        drop(a);
        assert!(!dma.read(iova, &mut out), "freed buffer must fault");
        assert_eq!(dma.live_buffers(), 0);
    }

    #[test]
    fn bdf_syntax() {
        assert!(check_bdf_ok("0000:00:04.0"));
        assert!(check_bdf_ok("0000:af:1f.7"));
        assert!(!check_bdf_ok("0000:00:04.8"));
        assert!(!check_bdf_ok("0000:00:04"));
        assert!(!check_bdf_ok("0000:0G:04.0"));
        assert!(!check_bdf_ok("0000-00:04.0"));
    }

    fn check_bdf_ok(s: &str) -> bool {
        crate::check_bdf(s).is_ok()
    }
}
