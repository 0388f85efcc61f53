//! NVMe/TCP target library: PDU codec, connection state machine, Fabrics, admin and I/O
//! command handling against a [`BlockDevice`], a discovery controller, and a small NVMe/TCP
//! host used by tests and benchmarks.
//!
//! Threading model: a [`Target`] is shared (`Arc`) by all threads; each controller thread
//! owns a [`Port`] (not `Send`) whose connections run as local tasks and call the thread's
//! own block devices synchronously, like a polled user-space driver would.
#![forbid(unsafe_code)]

mod abort;
mod admin;
pub mod auth;
pub mod blockdev;
pub mod buf;
pub mod codec;
mod completion;
pub mod config;
mod conn;
mod ctrl;
mod fabrics;
pub mod host;
mod io;
pub mod metrics;
mod port;
mod r2t;
mod target;

pub use blockdev::BlockDevice;
pub use config::{
    ConfigError, HostAuthConfig, NamespaceConfig, PortConfig, SubsystemConfig, TargetConfig,
};
pub use metrics::{CommandKind, TargetMetrics};
pub use port::{Port, run_discovery};
pub use target::{ControllerInfo, SubsystemStatus, Target, TargetStatus};
