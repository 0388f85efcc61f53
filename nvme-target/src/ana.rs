//! Asymmetric Namespace Access (Base 8.1): ANA groups, each group's state on each port, and
//! the change counts, shared by every port thread.
//!
//! A namespace belongs to one ANA group (group 1 unless configured otherwise); a group has a
//! state per port, so every controller of that port sees the group in that state. Reading a
//! state on the I/O path is one atomic load; changes (from the admin API) are serialized by
//! a mutex that readers never take, bump the change count and wake every admin queue, which
//! then owes its host an ANA Change notice (see [`crate::aen`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use nvme_spec::log::ana::state;
use tokio::sync::watch;

/// Largest ANA group ID (ANAGRPMAX, NANAGRPID).
pub const MAX_ANA_GROUPS: u32 = 32;
/// Most namespaces one subsystem may have (MNAN): with [`MAX_ANA_GROUPS`], the largest ANA
/// log a host sizes its buffer for stays within the smallest MDTS (4 KiB).
pub const MAX_NAMESPACES: u32 = 256;
/// Seconds a group may stay in the change state (ANATT).
pub const TRANSITION_TIME_SECS: u8 = 10;

/// The largest ANA log page: the header, every group descriptor and every namespace ID.
pub(crate) const LOG_MAX_LEN: usize =
    16 + MAX_ANA_GROUPS as usize * 32 + MAX_NAMESPACES as usize * 4;

/// An ANA state (Base 8.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnaState {
    /// Optimized: the preferred path.
    Optimized,
    /// Non-optimized: usable, but a host prefers an optimized path.
    NonOptimized,
    /// Inaccessible: I/O fails with Asymmetric Access Inaccessible; may come back.
    Inaccessible,
    /// Persistent loss: I/O fails with Asymmetric Access Persistent Loss.
    PersistentLoss,
    /// Change: in transition; I/O fails with Asymmetric Access Transition, to be retried.
    Change,
}

impl AnaState {
    /// Every state, in code order.
    pub const ALL: [Self; 5] = [
        Self::Optimized,
        Self::NonOptimized,
        Self::Inaccessible,
        Self::PersistentLoss,
        Self::Change,
    ];

    /// The state's code in the ANA log.
    pub fn code(self) -> u8 {
        match self {
            Self::Optimized => state::OPTIMIZED,
            Self::NonOptimized => state::NON_OPTIMIZED,
            Self::Inaccessible => state::INACCESSIBLE,
            Self::PersistentLoss => state::PERSISTENT_LOSS,
            Self::Change => state::CHANGE,
        }
    }

    /// The state with this log code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used in configuration, the admin API and metrics (as nvme-cli prints it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Optimized => "optimized",
            Self::NonOptimized => "non-optimized",
            Self::Inaccessible => "inaccessible",
            Self::PersistentLoss => "persistent-loss",
            Self::Change => "change",
        }
    }

    /// Whether I/O through a path in this state is served.
    pub fn serves_io(self) -> bool {
        matches!(self, Self::Optimized | Self::NonOptimized)
    }
}

impl std::fmt::Display for AnaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A state name that is not one of [`AnaState::name`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown ANA state `{0}` (optimized, non-optimized, inaccessible, persistent-loss, change)"
)]
pub struct UnknownState(pub String);

impl std::str::FromStr for AnaState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A group's state on one port, as configured at start or set at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnaSetting {
    /// Port ID.
    pub port: u16,
    /// ANA group ID.
    pub group: u32,
    /// State.
    pub state: AnaState,
}

/// One group on one port, as the status and metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnaEntry {
    /// Port ID.
    pub port: u16,
    /// ANA group ID.
    pub group: u32,
    /// State now.
    pub state: AnaState,
    /// The change count when this group last changed on this port (0: never).
    pub chgcnt: u64,
}

/// Why a state change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnaError {
    /// No port with this ID.
    #[error("no port {0}")]
    NoPort(u16),
    /// No ANA group with this ID.
    #[error("no ANA group {0} (groups: {1})")]
    NoGroup(u32, String),
}

/// ANA groups and their state on every port.
#[derive(Debug)]
pub struct Ana {
    /// Group IDs, ascending.
    groups: Vec<u32>,
    /// Port IDs, in configuration order (the ports' metrics indexes).
    ports: Vec<u16>,
    /// State codes, `[port index * groups + group index]`.
    states: Vec<AtomicU8>,
    /// Change count of each (port, group) at its last change.
    changed: Vec<AtomicU64>,
    /// The ANA change count: increments with every change.
    chgcnt: AtomicU64,
    /// Serializes changes (readers never take it).
    writer: Mutex<()>,
    /// Carries the change count to every admin queue.
    events: watch::Sender<u64>,
}

impl Ana {
    /// The groups `groups` (group 1 is always one of them) on `ports`, every state optimized
    /// except `initial`. Settings naming unknown ports or groups are errors.
    pub fn new(
        ports: &[u16],
        groups: impl IntoIterator<Item = u32>,
        initial: &[AnaSetting],
    ) -> Result<Self, AnaError> {
        let mut groups: Vec<u32> = groups.into_iter().chain([1]).collect();
        groups.sort_unstable();
        groups.dedup();
        let n = ports.len() * groups.len();
        let ana = Self {
            groups,
            ports: ports.to_vec(),
            states: (0..n)
                .map(|_| AtomicU8::new(AnaState::Optimized.code()))
                .collect(),
            changed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            chgcnt: AtomicU64::new(0),
            writer: Mutex::new(()),
            events: watch::channel(0).0,
        };
        for s in initial {
            let i = ana.slot(s.port, s.group)?;
            ana.states[i].store(s.state.code(), Ordering::Relaxed);
        }
        Ok(ana)
    }

    /// Group IDs, ascending.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// Position of group `grpid` among [`Ana::groups`].
    pub fn group_index(&self, grpid: u32) -> Option<usize> {
        self.groups.binary_search(&grpid).ok()
    }

    fn slot(&self, port: u16, group: u32) -> Result<usize, AnaError> {
        let p = self
            .ports
            .iter()
            .position(|&id| id == port)
            .ok_or(AnaError::NoPort(port))?;
        let g = self.group_index(group).ok_or_else(|| {
            let list: Vec<String> = self.groups.iter().map(ToString::to_string).collect();
            AnaError::NoGroup(group, list.join(", "))
        })?;
        Ok(p * self.groups.len() + g)
    }

    /// The state of group `group_index` on port `port_index` (metrics index): one atomic
    /// load, for the I/O path. Ports and groups outside the tables (the discovery port)
    /// have no state.
    pub fn state(&self, port_index: usize, group_index: usize) -> Option<AnaState> {
        if group_index >= self.groups.len() {
            return None;
        }
        let i = port_index
            .checked_mul(self.groups.len())?
            .checked_add(group_index)?;
        AnaState::from_code(self.states.get(i)?.load(Ordering::Relaxed))
    }

    /// The change count when group `group_index` last changed on port `port_index`.
    pub(crate) fn group_chgcnt(&self, port_index: usize, group_index: usize) -> u64 {
        self.changed
            .get(port_index * self.groups.len() + group_index)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The latest change count of any group on port `port_index` (0: none changed).
    pub(crate) fn port_chgcnt(&self, port_index: usize) -> u64 {
        let n = self.groups.len();
        self.changed
            .iter()
            .skip(port_index * n)
            .take(n)
            .map(|c| c.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// The ANA change count.
    pub fn chgcnt(&self) -> u64 {
        self.chgcnt.load(Ordering::Acquire)
    }

    /// Sets group `group`'s state on port `port`. Returns whether it changed; a change is
    /// announced to every controller of that port that enabled ANA change notices.
    pub fn set(&self, port: u16, group: u32, new: AnaState) -> Result<bool, AnaError> {
        let i = self.slot(port, group)?;
        let _serial = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.states[i].load(Ordering::Relaxed) == new.code() {
            return Ok(false);
        }
        let count = self.chgcnt.load(Ordering::Relaxed) + 1;
        self.states[i].store(new.code(), Ordering::Relaxed);
        self.changed[i].store(count, Ordering::Release);
        self.chgcnt.store(count, Ordering::Release);
        self.events.send_replace(count);
        tracing::info!(port, group, state = %new, chgcnt = count, "ANA state changed");
        Ok(true)
    }

    /// Every group on every port.
    pub fn entries(&self) -> Vec<AnaEntry> {
        let mut out = Vec::with_capacity(self.states.len());
        for (p, &port) in self.ports.iter().enumerate() {
            for (g, &group) in self.groups.iter().enumerate() {
                if let Some(state) = self.state(p, g) {
                    out.push(AnaEntry {
                        port,
                        group,
                        state,
                        chgcnt: self.group_chgcnt(p, g),
                    });
                }
            }
        }
        out
    }

    /// Wakes on every change from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_ports() -> Ana {
        Ana::new(
            &[1, 2],
            [3],
            &[AnaSetting {
                port: 2,
                group: 3,
                state: AnaState::NonOptimized,
            }],
        )
        .unwrap()
    }

    #[test]
    fn group_one_always_exists_and_initial_states_apply() {
        let a = two_ports();
        assert_eq!(a.groups(), &[1, 3]);
        assert_eq!(a.state(0, 0), Some(AnaState::Optimized));
        assert_eq!(a.state(1, 1), Some(AnaState::NonOptimized));
        // The discovery port (index past the ports) has no state.
        assert_eq!(a.state(2, 0), None);
        assert_eq!(a.chgcnt(), 0);
    }

    #[test]
    fn a_change_counts_once_and_wakes_subscribers() {
        let a = two_ports();
        let mut rx = a.subscribe();
        assert!(a.set(1, 1, AnaState::Inaccessible).unwrap());
        assert!(!a.set(1, 1, AnaState::Inaccessible).unwrap());
        assert_eq!(a.chgcnt(), 1);
        assert_eq!(a.port_chgcnt(0), 1);
        assert_eq!(a.port_chgcnt(1), 0);
        assert_eq!(a.group_chgcnt(0, 0), 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(a.state(0, 0), Some(AnaState::Inaccessible));
    }

    #[test]
    fn unknown_ports_and_groups_are_refused() {
        let a = two_ports();
        assert_eq!(a.set(9, 1, AnaState::Change), Err(AnaError::NoPort(9)));
        assert!(matches!(
            a.set(1, 2, AnaState::Change),
            Err(AnaError::NoGroup(2, _))
        ));
        let bad = AnaSetting {
            port: 1,
            group: 7,
            state: AnaState::Change,
        };
        assert!(Ana::new(&[1], [], &[bad]).is_err());
    }

    #[test]
    fn state_names_round_trip() {
        for s in AnaState::ALL {
            assert_eq!(s.name().parse::<AnaState>(), Ok(s));
            assert_eq!(AnaState::from_code(s.code()), Some(s));
        }
        assert!("fast".parse::<AnaState>().is_err());
        assert!(AnaState::NonOptimized.serves_io());
        assert!(!AnaState::Change.serves_io());
    }
}
