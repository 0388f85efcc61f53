//! The target's subsystems. They may be added and removed while hosts are connected (as
//! SPDK's `nvmf_create_subsystem`/`nvmf_delete_subsystem` and nvmet's configfs do). A
//! subsystem lives in one of a fixed number of slots (SPDK's `max_subsystems`), so its index,
//! which every per-subsystem table is keyed by, never moves; discovery controllers have the
//! index past the last slot. A new subsystem is first pending (its namespaces being opened on
//! every thread), then live (hosts may connect and discover it); a removed one's slot is
//! taken again only once none of its controllers is left.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cell::lock;
use crate::config::SubsystemConfig;

/// Subsystems a target can have at once.
pub const MAX_SUBSYSTEMS: usize = 128;

/// What Identify reports of a subsystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemInfo {
    /// NQN.
    pub nqn: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
}

impl SubsystemInfo {
    pub(crate) fn of(s: &SubsystemConfig) -> Self {
        Self {
            nqn: s.nqn.clone(),
            serial: s.serial.clone(),
            model: s.model.clone(),
        }
    }
}

/// Why a subsystem could not be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubsystemError {
    /// The NQN is taken.
    #[error("subsystem {0} exists")]
    Exists(String),
    /// No subsystem has that NQN.
    #[error("no subsystem {0}")]
    Unknown(String),
    /// Every slot is taken.
    #[error("the target has the most subsystems it can ({MAX_SUBSYSTEMS})")]
    Full,
    /// The subsystem's configuration is invalid.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
enum Slot {
    Free,
    Pending(Arc<SubsystemInfo>),
    Live(Arc<SubsystemInfo>),
}

/// The subsystem slots.
#[derive(Debug)]
pub(crate) struct Subsystems {
    slots: Mutex<Vec<Slot>>,
    /// Subsystems added and removed so far (each changes discovery logs).
    changes: watch::Sender<u64>,
}

impl Subsystems {
    /// The configured subsystems, live in the first slots.
    pub fn new(subsystems: &[SubsystemConfig]) -> Self {
        let mut slots = vec![Slot::Free; MAX_SUBSYSTEMS];
        for (slot, s) in slots.iter_mut().zip(subsystems) {
            *slot = Slot::Live(Arc::new(SubsystemInfo::of(s)));
        }
        Self {
            slots: Mutex::new(slots),
            changes: watch::channel(0).0,
        }
    }

    /// The live subsystem at `index`.
    pub fn get(&self, index: usize) -> Option<Arc<SubsystemInfo>> {
        match lock(&self.slots).get(index)? {
            Slot::Live(s) => Some(Arc::clone(s)),
            _ => None,
        }
    }

    /// The index of live subsystem `nqn`.
    pub fn position(&self, nqn: &str) -> Option<usize> {
        lock(&self.slots)
            .iter()
            .position(|s| matches!(s, Slot::Live(i) if i.nqn == nqn))
    }

    /// Every live subsystem with its index, in slot order.
    pub fn live(&self) -> Vec<(usize, Arc<SubsystemInfo>)> {
        lock(&self.slots)
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Live(info) => Some((i, Arc::clone(info))),
                _ => None,
            })
            .collect()
    }

    /// Takes a free slot for a new subsystem, pending until [`Subsystems::publish`]; `busy`
    /// tells which free slots still have controllers.
    pub fn reserve(
        &self,
        info: SubsystemInfo,
        busy: impl Fn(usize) -> bool,
    ) -> Result<usize, SubsystemError> {
        let mut slots = lock(&self.slots);
        if slots.iter().any(|s| match s {
            Slot::Pending(i) | Slot::Live(i) => i.nqn == info.nqn,
            Slot::Free => false,
        }) {
            return Err(SubsystemError::Exists(info.nqn));
        }
        let at = slots
            .iter()
            .enumerate()
            .position(|(i, s)| matches!(s, Slot::Free) && !busy(i))
            .ok_or(SubsystemError::Full)?;
        slots[at] = Slot::Pending(Arc::new(info));
        Ok(at)
    }

    /// Makes the pending subsystem at `index` live.
    pub fn publish(&self, index: usize) {
        {
            let mut slots = lock(&self.slots);
            if let Some(Slot::Pending(info)) = slots.get(index).cloned() {
                slots[index] = Slot::Live(info);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Frees slot `index` (a pending subsystem given up, or one removed).
    pub fn release(&self, index: usize) {
        let was_live = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.get_mut(index) else {
                return;
            };
            let live = matches!(slot, Slot::Live(_));
            *slot = Slot::Free;
            live
        };
        if was_live {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The index of subsystem `nqn`, live or pending.
    pub fn find(&self, nqn: &str) -> Option<usize> {
        lock(&self.slots).iter().position(|s| match s {
            Slot::Pending(i) | Slot::Live(i) => i.nqn == nqn,
            Slot::Free => false,
        })
    }

    /// Subsystems added and removed so far.
    pub fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Watches for subsystems added and removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(nqn: &str) -> SubsystemInfo {
        SubsystemInfo {
            nqn: nqn.into(),
            serial: "s".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn slots_are_reserved_published_and_freed() {
        let s = Subsystems::new(&[]);
        let a = s.reserve(info("nqn.a:a"), |_| false).unwrap();
        assert_eq!(a, 0);
        // Pending: not connectable, but its NQN is taken.
        assert_eq!(s.position("nqn.a:a"), None);
        assert_eq!(s.find("nqn.a:a"), Some(0));
        assert_eq!(
            s.reserve(info("nqn.a:a"), |_| false),
            Err(SubsystemError::Exists("nqn.a:a".into()))
        );
        s.publish(a);
        assert_eq!(s.position("nqn.a:a"), Some(0));
        assert_eq!(s.changes(), 1);
        // A slot with controllers left is not taken again.
        s.release(a);
        assert_eq!(s.changes(), 2);
        assert_eq!(s.get(0), None);
        assert_eq!(s.reserve(info("nqn.a:b"), |i| i == 0), Ok(1));
        assert_eq!(s.reserve(info("nqn.a:c"), |_| false), Ok(0));
        let live: Vec<usize> = s.live().iter().map(|(i, _)| *i).collect();
        assert!(live.is_empty(), "reserved slots are not live");
    }

    #[test]
    fn the_slots_fill_up() {
        let s = Subsystems::new(&[]);
        for i in 0..MAX_SUBSYSTEMS {
            s.reserve(info(&format!("nqn.a:{i}")), |_| false).unwrap();
        }
        assert_eq!(
            s.reserve(info("nqn.a:x"), |_| false),
            Err(SubsystemError::Full)
        );
    }
}
