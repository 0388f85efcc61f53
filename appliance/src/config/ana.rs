//! `nvme_tcp.ana` and `namespaces[].ana_group`: Asymmetric Namespace Access groups and the
//! states they start in. A namespace belongs to one ANA group (1 unless set); each
//! controller (port) reports every group in a state, optimized unless listed here or changed
//! at run time with `baton ctl ana set`.

use std::collections::HashSet;

use nvme_target::AnaState;
use nvme_target::ana::MAX_ANA_GROUPS;
use serde::{Deserialize, Serialize};

use super::Config;

/// An ANA state as the configuration spells it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AnaStateName {
    /// Optimized.
    Optimized,
    /// Non-optimized.
    NonOptimized,
    /// Inaccessible.
    Inaccessible,
    /// Persistent loss.
    PersistentLoss,
    /// Change (transition).
    Change,
}

impl From<AnaStateName> for AnaState {
    fn from(s: AnaStateName) -> Self {
        match s {
            AnaStateName::Optimized => Self::Optimized,
            AnaStateName::NonOptimized => Self::NonOptimized,
            AnaStateName::Inaccessible => Self::Inaccessible,
            AnaStateName::PersistentLoss => Self::PersistentLoss,
            AnaStateName::Change => Self::Change,
        }
    }
}

/// One group's state on one controller at start.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnaConfig {
    /// Controller index (0-based; its port ID is index + 1).
    pub controller: usize,
    /// ANA group ID: 1, or a group some namespace is in.
    #[serde(default = "one")]
    pub group: u32,
    /// The state.
    pub state: AnaStateName,
}

fn one() -> u32 {
    1
}

/// Checks namespace groups and the start states; errors name the key.
pub(super) fn validate(config: &Config) -> Result<(), (String, String)> {
    let mut groups = HashSet::from([1]);
    for (i, s) in config.subsystems.iter().enumerate() {
        for (j, ns) in s.namespaces.iter().enumerate() {
            if !(1..=MAX_ANA_GROUPS).contains(&ns.ana_group) {
                return Err((
                    format!("subsystems[{i}].namespaces[{j}].ana_group"),
                    format!("ana_group must be in 1..={MAX_ANA_GROUPS}"),
                ));
            }
            groups.insert(ns.ana_group);
        }
    }
    let count = config.controller_count();
    let mut seen = HashSet::new();
    for (i, a) in config.nvme_tcp.ana.iter().enumerate() {
        let at = |key: &str| format!("nvme_tcp.ana[{i}].{key}");
        if a.controller >= count {
            return Err((
                at("controller"),
                format!("no controller {} ({count} configured)", a.controller),
            ));
        }
        if !groups.contains(&a.group) {
            return Err((
                at("group"),
                format!(
                    "no namespace is in ANA group {} (group 1 always exists)",
                    a.group
                ),
            ));
        }
        if !seen.insert((a.controller, a.group)) {
            return Err((
                at("group"),
                format!(
                    "controller {} group {} is listed twice",
                    a.controller, a.group
                ),
            ));
        }
    }
    Ok(())
}
