//! NVMe/TCP target library: PDU codec, connection state machine, Fabrics, admin and I/O
//! command handling against the asynchronous block-I/O interface ([`bdev::BlockIo`]), a
//! discovery controller, and a small NVMe/TCP host used by tests and benchmarks.
//!
//! Threading model: a [`Target`] is shared (`Arc`) by all threads; each controller thread
//! owns a [`Port`] view (not `Send`) of every port of its [`PortGroup`]s; connections run on
//! the thread they were dealt to as local tasks, submit I/O to that thread's own device
//! handles and go on serving while it is at the devices; completions come back on the same
//! thread, in any order. The queues of one host controller may be on different threads:
//! the controller's state is shared, lock-free where the I/O path touches it.
#![forbid(unsafe_code)]

mod abort;
pub mod access;
mod admin;
mod aen;
pub mod ana;
pub mod auth;
pub mod buf;
mod cell;
pub mod codec;
mod compare;
mod completion;
pub mod config;
mod conn;
mod ctrl;
mod fabrics;
mod group;
pub mod host;
mod io;
mod land;
mod locks;
pub mod metrics;
pub mod namespaces;
mod port;
mod r2t;
mod resv;
mod signals;
pub mod subsystems;
mod target;

pub use ana::{AnaEntry, AnaError, AnaSetting, AnaState};
pub use config::{
    ConfigError, HostAuthConfig, NamespaceConfig, PortConfig, SubsystemConfig, TargetConfig,
};
pub use group::PortGroup;
pub use metrics::{CommandKind, TargetMetrics};
pub use namespaces::{NamespaceError, NsState};
pub use port::{Port, run_discovery};
pub use subsystems::{MAX_SUBSYSTEMS, SubsystemError};
pub use target::{ControllerInfo, SubsystemStatus, Target, TargetStatus};
