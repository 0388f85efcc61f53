//! ANA in the admin endpoint: each group's state per controller in the status and the
//! Prometheus exposition, and the run-time change behind `baton ctl ana set`
//! (`POST /api/v1/controllers/{index}/ana/{group}/{state}`).

use nvme_target::AnaState;
use serde::{Deserialize, Serialize};

use super::exporter::{Families, labels};
use crate::block::BlockService;
use crate::config::NamespaceConfig;

/// One ANA group on one controller.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnaStatus {
    /// Baton controller index.
    pub controller: usize,
    /// Its NVMe/TCP port ID (PORTID in the discovery log).
    pub port: u16,
    /// ANA group ID.
    pub group: u32,
    /// State, as nvme-cli names it (`optimized`, `non-optimized`, ...).
    pub state: String,
    /// The ANA change count when this group last changed on this controller (0: never).
    pub chgcnt: u64,
    /// Namespaces in the group, as `nqn/nsid`.
    pub namespaces: Vec<String>,
}

/// Every group on every controller.
pub(super) fn status(block: &BlockService) -> Vec<AnaStatus> {
    let namespaces = block.namespaces();
    block
        .target()
        .ana()
        .entries()
        .into_iter()
        .map(|e| AnaStatus {
            controller: usize::from(e.port.saturating_sub(1)),
            port: e.port,
            group: e.group,
            state: e.state.name().to_owned(),
            chgcnt: e.chgcnt,
            namespaces: members(&namespaces, e.group),
        })
        .collect()
}

fn members(namespaces: &[(String, Vec<NamespaceConfig>)], group: u32) -> Vec<String> {
    namespaces
        .iter()
        .flat_map(|(nqn, list)| {
            list.iter()
                .filter(move |n| n.ana_group == group)
                .map(move |n| format!("{nqn}/{}", n.nsid))
        })
        .collect()
}

/// Sets group `group` of controller `controller` to `state`; says what happened.
pub(super) fn set(
    block: &BlockService,
    controller: usize,
    group: u32,
    state: &str,
) -> Result<String, String> {
    let state: AnaState = state.parse().map_err(|e| format!("{e}"))?;
    if controller >= block.ports().len() {
        return Err(format!("no controller {controller}"));
    }
    let port = u16::try_from(controller + 1).map_err(|_| format!("no controller {controller}"))?;
    let changed = block
        .target()
        .ana()
        .set(port, group, state)
        .map_err(|e| e.to_string())?;
    Ok(if changed {
        format!("controller {controller} group {group}: {state}\n")
    } else {
        format!("controller {controller} group {group}: already {state}\n")
    })
}

/// `Some((controller, group, state))` for `/api/v1/controllers/{i}/ana/{group}/{state}`;
/// `Some(Err)` when the numbers are not numbers.
pub(super) fn set_path(path: &str) -> Option<Result<(usize, u32, &str), String>> {
    let rest = path.strip_prefix("/api/v1/controllers/")?;
    let mut parts = rest.split('/');
    let (index, ana, group, state) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if ana != "ana" || parts.next().is_some() {
        return None;
    }
    let Ok(index) = index.parse() else {
        return Some(Err("controller index is not a number".into()));
    };
    let Ok(group) = group.parse() else {
        return Some(Err("ANA group is not a number".into()));
    };
    Some(Ok((index, group, state)))
}

/// The ANA families: a one-hot state per controller and group, and the change count.
pub(super) fn encode(block: &BlockService, f: &mut Families<'_>) -> Result<(), std::fmt::Error> {
    let ana = block.target().ana();
    let entries = ana.entries();
    f.gauge(
        "nvme_ana_state",
        "1 for the ANA state each group is in on each controller (port), 0 for the others.",
        entries.iter().flat_map(|e| {
            AnaState::ALL.into_iter().map(move |s| {
                (
                    labels([
                        (
                            "controller",
                            usize::from(e.port.saturating_sub(1)).to_string(),
                        ),
                        ("group", e.group.to_string()),
                        ("state", s.name().to_owned()),
                    ]),
                    i64::from(e.state == s),
                )
            })
        }),
    )?;
    f.counter(
        "nvme_ana_changes",
        "ANA state changes since start (the ANA log's change count).",
        [(labels([]), ana.chgcnt())],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_paths_parse() {
        assert_eq!(
            set_path("/api/v1/controllers/1/ana/2/inaccessible"),
            Some(Ok((1, 2, "inaccessible")))
        );
        assert!(matches!(
            set_path("/api/v1/controllers/x/ana/2/optimized"),
            Some(Err(_))
        ));
        assert!(matches!(
            set_path("/api/v1/controllers/0/ana/two/optimized"),
            Some(Err(_))
        ));
        assert_eq!(set_path("/api/v1/controllers/0/drop-connections"), None);
        assert_eq!(set_path("/api/v1/controllers/0/ana/1/optimized/x"), None);
    }
}
