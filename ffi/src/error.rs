//! Errors of the device layer, each naming what to fix on the host.

use std::io;

/// Why a VFIO device or DMA memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PCI address is not of the form `dddd:bb:dd.f`.
    #[error("invalid PCI address {0:?}: expected domain:bus:device.function like 0000:00:04.0")]
    InvalidBdf(String),
    /// No PCI device has this address.
    #[error("no PCI device {0} (see /sys/bus/pci/devices)")]
    NoSuchDevice(String),
    /// The device is bound to another driver (or none).
    #[error(
        "PCI device {bdf} is bound to {}, not vfio-pci (run `baton setup-pci`)",
        driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToVfio {
        /// PCI address.
        bdf: String,
        /// Driver currently bound, if any.
        driver: Option<String>,
    },
    /// The device has no IOMMU group: the IOMMU is off (boot with intel_iommu=on / amd_iommu=on).
    #[error(
        "PCI device {0} has no IOMMU group: enable the IOMMU (intel_iommu=on) in the kernel command line"
    )]
    NoIommuGroup(String),
    /// `/dev/vfio/vfio` is missing or cannot be opened.
    #[error("VFIO is not available ({0}): load vfio-pci and vfio_iommu_type1")]
    VfioAbsent(#[source] io::Error),
    /// The kernel VFIO lacks something the driver needs.
    #[error("VFIO does not support {0}")]
    Unsupported(&'static str),
    /// Another device of the IOMMU group is still bound to a host driver.
    #[error(
        "IOMMU group {0} is not viable: bind every device of /sys/kernel/iommu_groups/{0}/devices to vfio-pci"
    )]
    GroupNotViable(u32),
    /// No 2 MiB hugepages are free.
    #[error(
        "cannot allocate {len} bytes of 2 MiB hugepages ({source}): reserve more in /proc/sys/vm/nr_hugepages (`baton setup-pci`)"
    )]
    HugepagesUnavailable {
        /// Requested size in bytes.
        len: usize,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// The device's BAR 0 cannot be memory-mapped.
    #[error("BAR 0 of {0} is not a mappable memory region")]
    BarNotMappable(String),
    /// The IOVA space of the driver is exhausted.
    #[error("IOVA space exhausted")]
    IovaExhausted,
    /// An access lies outside a DMA buffer.
    #[error("access of {len} bytes at offset {offset} outside a DMA buffer of {size} bytes")]
    OutOfBounds {
        /// Start offset.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the buffer.
        size: usize,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an OS error of operation `op`.
    pub fn sys(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            op,
            source: source.into(),
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
