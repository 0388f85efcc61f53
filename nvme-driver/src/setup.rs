//! Host preparation for the driver, like SPDK's `setup.sh`: hand NVMe PCI functions to
//! vfio-pci, load the IOMMU backend and reserve 2 MiB hugepages; and the reverse.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why host setup failed; each names the file or device involved.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A PCI address is malformed or names no device.
    #[error(transparent)]
    Device(#[from] ffi::Error),
    /// A sysfs/procfs file could not be read or written.
    #[error("{path}: {source} (setup needs root)")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `modprobe` failed.
    #[error("modprobe {module} failed: {detail}")]
    Modprobe {
        /// Kernel module.
        module: &'static str,
        /// Exit status or error.
        detail: String,
    },
    /// The device did not end up on the wanted driver.
    #[error("PCI device {bdf} is bound to {found} after setup, wanted {wanted}")]
    Bind {
        /// PCI address.
        bdf: String,
        /// Driver found.
        found: String,
        /// Driver wanted.
        wanted: &'static str,
    },
    /// The kernel reserved fewer hugepages than asked.
    #[error(
        "only {got} of {wanted} 2 MiB hugepages could be reserved (memory fragmented or too small)"
    )]
    Hugepages {
        /// Reserved.
        got: u64,
        /// Asked.
        wanted: u64,
    },
}

/// Result of setup operations.
pub type Result<T> = std::result::Result<T, SetupError>;

/// PCI class code of NVMe controllers (mass storage, non-volatile memory, NVMe).
const NVME_CLASS: &str = "0x010802";

/// Where the host's sysfs and procfs are (`/sys`, `/proc`; a temporary tree in tests).
#[derive(Debug, Clone)]
pub struct Host {
    sys: PathBuf,
    proc: PathBuf,
    load_modules: bool,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            load_modules: true,
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|source| SetupError::File {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| SetupError::File {
            path: path.to_owned(),
            source,
        })
}

impl Host {
    /// A host rooted at `sys` and `proc`, without loading kernel modules.
    pub fn at(sys: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        Host {
            sys: sys.into(),
            proc: proc.into(),
            load_modules: false,
        }
    }

    fn device(&self, bdf: &str) -> Result<PathBuf> {
        ffi::check_bdf(bdf)?;
        let dev = self.sys.join("bus/pci/devices").join(bdf);
        if dev.exists() {
            Ok(dev)
        } else {
            Err(ffi::Error::NoSuchDevice(bdf.to_owned()).into())
        }
    }

    /// Driver bound to `bdf`, if any.
    pub fn driver(&self, bdf: &str) -> Result<Option<String>> {
        let link = self.device(bdf)?.join("driver");
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SetupError::File { path: link, source }),
        }
    }

    /// PCI addresses of all NVMe controllers, sorted.
    pub fn nvme_devices(&self) -> Result<Vec<String>> {
        let dir = self.sys.join("bus/pci/devices");
        let entries = fs::read_dir(&dir).map_err(|source| SetupError::File {
            path: dir.clone(),
            source,
        })?;
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| read(&e.path().join("class")).is_ok_and(|c| c == NVME_CLASS))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    fn modprobe(&self, module: &'static str) -> Result<()> {
        if !self.load_modules
            || self
                .sys
                .join("module")
                .join(module.replace('-', "_"))
                .exists()
        {
            return Ok(());
        }
        let status =
            Command::new("modprobe")
                .arg(module)
                .status()
                .map_err(|e| SetupError::Modprobe {
                    module,
                    detail: e.to_string(),
                })?;
        if status.success() {
            Ok(())
        } else {
            Err(SetupError::Modprobe {
                module,
                detail: status.to_string(),
            })
        }
    }

    fn rebind(&self, bdf: &str, driver: &'static str, override_value: &str) -> Result<()> {
        let dev = self.device(bdf)?;
        if let Some(current) = self.driver(bdf)? {
            if current == driver {
                return Ok(());
            }
            write(&dev.join("driver/unbind"), bdf)?;
        }
        write(&dev.join("driver_override"), override_value)?;
        write(&self.sys.join("bus/pci/drivers_probe"), bdf)?;
        match self.driver(bdf)? {
            Some(found) if found == driver => Ok(()),
            found => Err(SetupError::Bind {
                bdf: bdf.to_owned(),
                found: found.unwrap_or_else(|| "no driver".into()),
                wanted: driver,
            }),
        }
    }

    /// Loads vfio-pci and vfio_iommu_type1, moves `devices` to vfio-pci and reserves
    /// `hugepages` 2 MiB pages (a total; never lowers an existing larger reservation).
    pub fn setup(&self, devices: &[String], hugepages: u64) -> Result<()> {
        for bdf in devices {
            self.device(bdf)?;
        }
        self.modprobe("vfio-pci")?;
        self.modprobe("vfio_iommu_type1")?;
        for bdf in devices {
            self.rebind(bdf, "vfio-pci", "vfio-pci")?;
        }
        self.reserve_hugepages(hugepages)
    }

    /// Reserves at least `count` 2 MiB hugepages via `vm/nr_hugepages`.
    pub fn reserve_hugepages(&self, count: u64) -> Result<()> {
        let path = self.proc.join("sys/vm/nr_hugepages");
        let current: u64 = read(&path)?.parse().unwrap_or(0);
        if current >= count {
            return Ok(());
        }
        write(&path, &count.to_string())?;
        let got: u64 = read(&path)?.parse().unwrap_or(0);
        if got < count {
            Err(SetupError::Hugepages { got, wanted: count })
        } else {
            Ok(())
        }
    }

    /// Gives `devices` back to the kernel `nvme` driver (clears driver_override).
    pub fn reset(&self, devices: &[String]) -> Result<()> {
        for bdf in devices {
            self.device(bdf)?;
        }
        self.modprobe("nvme")?;
        for bdf in devices {
            self.rebind(bdf, "nvme", "\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (bdf, class, driver) in [
            ("0000:00:04.0", NVME_CLASS, Some("nvme")),
            ("0000:00:05.0", NVME_CLASS, Some("vfio-pci")),
            ("0000:00:02.0", "0x030000", None),
        ] {
            let dev = sys.join("bus/pci/devices").join(bdf);
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("class"), format!("{class}\n")).unwrap();
            fs::write(dev.join("driver_override"), "(null)\n").unwrap();
            if let Some(d) = driver {
                let drv = sys.join("bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
            }
        }
        fs::create_dir_all(dir.path().join("proc/sys/vm")).unwrap();
        fs::write(dir.path().join("proc/sys/vm/nr_hugepages"), "0\n").unwrap();
        let host = Host::at(sys, dir.path().join("proc"));
        (dir, host)
    }

    #[test]
    fn finds_nvme_devices_by_class() {
        let (_d, host) = fake_host();
        assert_eq!(
            host.nvme_devices().unwrap(),
            ["0000:00:04.0", "0000:00:05.0"]
        );
        assert_eq!(
            host.driver("0000:00:04.0").unwrap().as_deref(),
            Some("nvme")
        );
    }

    #[test]
    fn setup_unbinds_overrides_and_probes() {
        let (d, host) = fake_host();
        // The fake kernel does not rebind, so the final check reports the device still on nvme.
        let err = host.setup(&["0000:00:04.0".into()], 4).unwrap_err();
        assert!(
            err.to_string()
                .contains("bound to nvme after setup, wanted vfio-pci"),
            "{err}"
        );
        let sys = d.path().join("sys");
        assert_eq!(
            fs::read_to_string(sys.join("bus/pci/drivers/nvme/unbind")).unwrap(),
            "0000:00:04.0"
        );
        assert_eq!(
            fs::read_to_string(sys.join("bus/pci/devices/0000:00:04.0/driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            fs::read_to_string(sys.join("bus/pci/drivers_probe")).unwrap(),
            "0000:00:04.0"
        );
    }

    #[test]
    fn setup_of_bound_device_reserves_hugepages() {
        let (d, host) = fake_host();
        host.setup(&["0000:00:05.0".into()], 8).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("proc/sys/vm/nr_hugepages")).unwrap(),
            "8"
        );
        host.reserve_hugepages(2).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("proc/sys/vm/nr_hugepages")).unwrap(),
            "8",
            "never lowers"
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let (_d, host) = fake_host();
        let err = host.setup(&["0000:00:09.0".into()], 1).unwrap_err();
        assert!(err.to_string().contains("0000:00:09.0"), "{err}");
        assert!(matches!(
            host.reset(&["junk".into()]),
            Err(SetupError::Device(ffi::Error::InvalidBdf(_)))
        ));
    }

    #[test]
    fn reset_clears_override() {
        let (d, host) = fake_host();
        let err = host.reset(&["0000:00:05.0".into()]).unwrap_err();
        assert!(matches!(err, SetupError::Bind { wanted: "nvme", .. }));
        let dev = d.path().join("sys/bus/pci/devices/0000:00:05.0");
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "\n"
        );
        host.reset(&["0000:00:04.0".into()]).unwrap();
    }
}
