//! What the threads serving one namespace share: the LBA range locks of fused operations
//! and the reservations. Everything else about a namespace is per thread (see `port`).

use std::sync::Arc;

use crate::locks::RangeLocks;
use crate::resv::state::Reservations;

/// The shared state of one namespace.
#[derive(Debug, Default)]
pub(crate) struct NsState {
    /// Range locks (fused Compare and Write).
    pub locks: Arc<RangeLocks>,
    /// Registrants and the reservation.
    pub resv: Reservations,
}
