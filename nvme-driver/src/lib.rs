//! User-space NVMe PCIe driver: controller bring-up, admin and I/O queue pairs, polled
//! completions.
#![forbid(unsafe_code)]
