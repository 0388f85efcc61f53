//! The backplane: devices every controller reaches (ram, file, nvme-pcie on the engines of
//! [`bdev`]), and the striped volumes on them.
//!
//! A [`Device`] is shared by all controller threads; each thread opens its own asynchronous
//! handle ([`bdev::BlockIo`]: its own io_uring, its own NVMe queue pair), so the I/O path
//! takes no locks.

mod fd;
mod metrics;
mod pcie;
mod volume;

use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bdev::{BlockIo, BufPool};

pub use fd::{FdDevice, check_file_path};
pub use metrics::DeviceMetrics;
pub use pcie::PcieDevice;
pub use volume::Volume;

/// A backplane device, shared by every controller.
pub trait Device: Send + Sync + std::fmt::Debug {
    /// The configured name.
    fn name(&self) -> &str;
    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// Logical block size in bytes.
    fn block_size(&self) -> u32 {
        fd::FD_BLOCK
    }
    /// Opens the calling controller thread's handle: `path` is the controller's index (it
    /// picks the PCIe controller of an nvme-pcie device), `pool` the thread's I/O buffers.
    fn open_io(&self, path: usize, pool: &BufPool) -> io::Result<Rc<dyn BlockIo>>;
    /// Hardware queue pairs the device's handles hold (nvme-pcie), if it has any.
    fn queue_pairs(&self) -> Option<u64> {
        None
    }
    /// Controller resets that brought a path of the device back (nvme-pcie), if it has any.
    fn resets(&self) -> Option<u64> {
        None
    }
    /// Whether a path of the device stays down after failed controller resets (nvme-pcie),
    /// if it has controllers.
    fn is_down(&self) -> Option<bool> {
        None
    }
}

/// A device with its counters.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// The device.
    pub device: Arc<dyn Device>,
    /// Its counters.
    pub metrics: Arc<DeviceMetrics>,
}

/// Every device and volume of the configuration, opened.
#[derive(Debug)]
pub struct Backplane {
    devices: Vec<DeviceEntry>,
    volumes: Vec<Arc<Volume>>,
}

/// A backplane that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// A device could not be opened.
    #[error("device `{name}`")]
    Device {
        /// Device name.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A volume's layout is impossible.
    #[error("volume `{name}`: {reason}")]
    Volume {
        /// Volume name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A device to open, as the configuration describes it (paths already resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Memory (lost on exit).
    Ram {
        /// Unique name volumes refer to.
        name: String,
        /// Capacity in bytes.
        size: u64,
        /// Read cap in bytes per second per controller.
        read_rate: Option<u64>,
    },
    /// A file or block device.
    File {
        /// Unique name volumes refer to.
        name: String,
        /// Path.
        path: std::path::PathBuf,
        /// Size to create a missing file with (and the capacity used).
        size: Option<u64>,
        /// Open with O_DIRECT.
        direct: bool,
        /// Read cap in bytes per second per controller.
        read_rate: Option<u64>,
    },
    /// A namespace of an NVMe subsystem through PCIe controllers (user-space driver).
    NvmePcie {
        /// Unique name volumes refer to.
        name: String,
        /// PCI addresses of the subsystem's controllers.
        controllers: Vec<String>,
        /// Namespace ID.
        nsid: u32,
        /// Entries per I/O queue pair.
        queue_depth: u16,
    },
}

impl DeviceSpec {
    /// The device's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Ram { name, .. } | Self::File { name, .. } | Self::NvmePcie { name, .. } => name,
        }
    }
}

/// A volume to assemble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Unique name.
    pub name: String,
    /// Device names, striped in this order.
    pub devices: Vec<String>,
    /// Stripe unit in bytes.
    pub stripe: u64,
    /// Logical block size exported.
    pub block_size: u32,
}

/// File devices whose paths cannot be opened as given, as (position in `devices`, message),
/// checked without opening or creating anything.
pub fn check_device_paths(devices: &[DeviceSpec]) -> Vec<(usize, String)> {
    devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            DeviceSpec::File { path, size, .. } => {
                check_file_path(path, *size).err().map(|m| (i, m))
            }
            _ => None,
        })
        .collect()
}

impl Backplane {
    /// Opens every device (creating missing files) and assembles the volumes; volumes name
    /// devices of `specs`.
    pub fn open(specs: &[DeviceSpec], vols: &[VolumeSpec]) -> Result<Self, BackplaneError> {
        let mut devices = Vec::with_capacity(specs.len());
        let mut by_name = HashMap::new();
        for dc in specs {
            let device = open_device(dc).map_err(|source| BackplaneError::Device {
                name: dc.name().to_owned(),
                source,
            })?;
            let entry = DeviceEntry {
                device,
                metrics: Arc::default(),
            };
            by_name.insert(dc.name().to_owned(), entry.clone());
            devices.push(entry);
        }
        let mut volumes = Vec::with_capacity(vols.len());
        for vc in vols {
            let members = vc
                .devices
                .iter()
                .map(|d| {
                    by_name
                        .get(d)
                        .cloned()
                        .ok_or_else(|| BackplaneError::Volume {
                            name: vc.name.clone(),
                            reason: format!("no device named `{d}`"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let volume =
                Volume::new(&vc.name, members, vc.stripe, vc.block_size).map_err(|reason| {
                    BackplaneError::Volume {
                        name: vc.name.clone(),
                        reason,
                    }
                })?;
            volumes.push(Arc::new(volume));
        }
        Ok(Self { devices, volumes })
    }

    /// Devices, in configuration order.
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.devices
    }

    /// Volumes, in configuration order.
    pub fn volumes(&self) -> &[Arc<Volume>] {
        &self.volumes
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Arc<Volume>> {
        self.volumes.iter().find(|v| v.name() == name)
    }
}

fn open_device(dc: &DeviceSpec) -> io::Result<Arc<dyn Device>> {
    Ok(match dc {
        DeviceSpec::Ram {
            name,
            size,
            read_rate,
        } => Arc::new(FdDevice::ram(name, *size)?.with_read_rate(*read_rate)),
        DeviceSpec::File {
            name,
            path,
            size,
            direct,
            read_rate,
        } => Arc::new(FdDevice::file(name, path, *size, *direct)?.with_read_rate(*read_rate)),
        DeviceSpec::NvmePcie {
            name,
            controllers,
            nsid,
            queue_depth,
        } => Arc::new(PcieDevice::open(name, controllers, *nsid, *queue_depth)?),
    })
}
