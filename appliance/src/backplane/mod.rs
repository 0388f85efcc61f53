//! The backplane: devices every controller reaches, and the striped volumes on them.
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

use crate::config::{Config, DeviceConfig};

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

/// File devices whose paths cannot be opened as configured, as (key path, message):
/// `check-config` reports them without opening or creating anything.
pub fn check_device_paths(config: &Config) -> Vec<(String, String)> {
    config
        .devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            DeviceConfig::File { path, size, .. } => {
                check_file_path(&config.resolve(path), size.map(|s| s.bytes()))
                    .err()
                    .map(|m| (format!("devices[{i}].path"), m))
            }
            _ => None,
        })
        .collect()
}

impl Backplane {
    /// Opens every device (creating missing files) and assembles the volumes.
    pub fn open(config: &Config) -> Result<Self, BackplaneError> {
        let mut devices = Vec::with_capacity(config.devices.len());
        let mut by_name = HashMap::new();
        for dc in &config.devices {
            let device = open_device(config, dc).map_err(|source| BackplaneError::Device {
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
        let mut volumes = Vec::with_capacity(config.volumes.len());
        for vc in &config.volumes {
            let members = vc.devices.iter().map(|d| by_name[d].clone()).collect();
            let volume = Volume::new(&vc.name, members, vc.stripe_size.bytes(), vc.block_size)
                .map_err(|reason| BackplaneError::Volume {
                    name: vc.name.clone(),
                    reason,
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

fn open_device(config: &Config, dc: &DeviceConfig) -> io::Result<Arc<dyn Device>> {
    Ok(match dc {
        DeviceConfig::Ram {
            name,
            size,
            read_rate,
        } => Arc::new(
            FdDevice::ram(name, size.bytes())?.with_read_rate(read_rate.map(|r| r.bytes())),
        ),
        DeviceConfig::File {
            name,
            path,
            size,
            direct,
            read_rate,
        } => Arc::new(
            FdDevice::file(
                name,
                &config.resolve(path),
                size.map(|s| s.bytes()),
                *direct,
            )?
            .with_read_rate(read_rate.map(|r| r.bytes())),
        ),
        DeviceConfig::NvmePcie {
            name,
            controllers,
            nsid,
            queue_depth,
        } => Arc::new(PcieDevice::open(name, controllers, *nsid, *queue_depth)?),
    })
}
