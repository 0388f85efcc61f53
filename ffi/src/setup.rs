//! Preparing a machine for the user-space driver, like SPDK's `setup.sh`: bind NVMe
//! functions to `vfio-pci`, load the VFIO modules, reserve hugepages; and giving the devices
//! back to the kernel's `nvme` driver.

use std::path::Path;
use std::process::Command;

use crate::Error;

const PCI: &str = "/sys/bus/pci";

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value)
        .map_err(Error::sys(format!("write {value:?} to {}", path.display())))
}

fn modprobe(m: &str) -> Result<(), Error> {
    let st = Command::new("modprobe")
        .arg(m)
        .status()
        .map_err(Error::sys("run modprobe"))?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::Setup(format!("modprobe {m} failed")))
    }
}

/// Binds `bdf` to `driver` (unbinding it from its current driver first).
pub fn bind(bdf: &str, driver: &str) -> Result<(), Error> {
    let dev = Path::new(PCI).join("devices").join(bdf);
    if !dev.exists() {
        return Err(Error::Setup(format!("no PCI device {bdf}")));
    }
    if crate::vfio::bound_driver(bdf).as_deref() == Some(driver) {
        return Ok(());
    }
    if dev.join("driver").exists() {
        write(&dev.join("driver/unbind"), bdf)?;
    }
    write(&dev.join("driver_override"), driver)?;
    write(&Path::new(PCI).join("drivers_probe"), bdf)?;
    match crate::vfio::bound_driver(bdf) {
        Some(d) if d == driver => Ok(()),
        other => Err(Error::Setup(format!(
            "{bdf} did not bind to {driver} (now: {other:?})"
        ))),
    }
}

/// Prepares `devices` for VFIO and reserves `hugepages` 2 MiB pages.
pub fn setup(devices: &[String], hugepages: u32) -> Result<(), Error> {
    modprobe("vfio-pci")?;
    // vfio-pci does not pull in the type1 IOMMU backend; VFIO_SET_IOMMU fails without it.
    modprobe("vfio_iommu_type1")?;
    for d in devices {
        bind(d, "vfio-pci")?;
    }
    let nr = Path::new("/proc/sys/vm/nr_hugepages");
    let current: u32 = std::fs::read_to_string(nr)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if current < hugepages {
        write(nr, &hugepages.to_string())?;
        let now: u32 = std::fs::read_to_string(nr)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now < hugepages {
            return Err(Error::Setup(format!(
                "asked for {hugepages} hugepages, the kernel gave {now}"
            )));
        }
    }
    Ok(())
}

/// Gives `devices` back to the kernel's `nvme` driver.
pub fn reset(devices: &[String]) -> Result<(), Error> {
    for d in devices {
        let dev = Path::new(PCI).join("devices").join(d);
        if dev.join("driver").exists() {
            write(&dev.join("driver/unbind"), d)?;
        }
        // An empty override lets the normal driver match again.
        write(&dev.join("driver_override"), "\n")?;
        write(&Path::new(PCI).join("drivers_probe"), d)?;
    }
    Ok(())
}

/// NVMe functions on the PCI bus (class 01:08:02), by address.
pub fn nvme_functions() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(Path::new(PCI).join("devices"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("class"))
                .is_ok_and(|c| c.trim().starts_with("0x010802"))
        })
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}
