//! What the stream service is told to do: the daemon turns its configuration into these.

use std::net::IpAddr;
use std::time::Duration;

/// The stream service's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Volume holding the content store.
    pub volume: String,
    /// Address of the control, HTTP and data ports.
    pub address: IpAddr,
    /// Coordinator control port; 0 picks a free port.
    pub control_port: u16,
    /// HTTP face; `None` for none, 0 picks a free port.
    pub http_port: Option<u16>,
    /// Controller i's data port is `data_port_base + i`; 0 picks free ports.
    pub data_port_base: u16,
    /// Content block size in bytes: the unit a controller reads and sends.
    pub block_size: u64,
    /// Read-ahead window: blocks requested ahead of the baton.
    pub window: u32,
    /// Sessions each controller serves at once (admission control).
    pub send_budget: u32,
    /// Catalog entries (content items the store can hold).
    pub catalog_entries: u32,
    /// A session whose baton has not moved for this long is re-planned.
    pub sync_timeout: Duration,
    /// Connection limits and timeouts of every stream listener.
    pub limits: listener::Limits,
}
