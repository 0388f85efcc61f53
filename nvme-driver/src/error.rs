//! Driver errors, carrying the NVMe status of failed commands.

use crate::cmd::Status;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// VFIO, BAR or DMA memory setup failed.
    #[error(transparent)]
    Device(#[from] ffi::Error),
    /// The controller completed a command with an error status.
    #[error("NVMe command {opcode:#04x} on queue {qid} failed: {status}")]
    Status {
        /// Queue the command ran on (0 = admin).
        qid: u16,
        /// Opcode of the command.
        opcode: u8,
        /// The completion status.
        status: Status,
    },
    /// The controller did not answer in time.
    #[error("NVMe {what} timed out after {ms} ms")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        ms: u64,
    },
    /// The controller reports a fatal error (CSTS.CFS): call `Controller::reset`.
    #[error("NVMe controller fatal status (CSTS.CFS): the controller must be reset")]
    ControllerFatal,
    /// The queue pair belongs to a controller that was reset since it was created.
    #[error("I/O queue pair {0} was lost in a controller reset: create a new one")]
    QueueLost(u16),
    /// A previous command on this queue pair timed out; the queue cannot be reused.
    #[error("I/O queue pair {0} is unusable after a timed out command")]
    QueueBroken(u16),
    /// The controller lacks something the driver needs.
    #[error("unsupported controller: {0}")]
    Unsupported(String),
    /// All I/O queues the controller granted are in use.
    #[error("no free I/O queue (the controller granted {0})")]
    NoFreeQueue(u16),
    /// The namespace does not exist or is inactive.
    #[error("namespace {0} does not exist or is inactive")]
    NoSuchNamespace(u32),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The NVMe status of a failed command, if this is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result of the driver.
pub type Result<T> = std::result::Result<T, Error>;
