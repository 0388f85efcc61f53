//! Configuration reload (SIGHUP): the file is read and validated again, and what may change
//! at run time is applied, the file's becoming what is in force: its subsystems (one in
//! force but not in the file is removed, one new in the file is added with its hosts and
//! namespaces), each subsystem's `allow_any_host` and `allowed_hosts`, its namespaces (those
//! added or removed with `baton ctl` since are undone unless the file has them too; one
//! whose volume or ANA group changed is removed and added again), and the ANA states of
//! `nvme_tcp.ana` that differ from the file in force (states set with `baton ctl ana` since
//! are kept unless the file changes them). Any other difference (a kept subsystem's serial
//! or model included) refuses the whole reload, naming the first key that differs and its
//! line; nothing changes then. A change that fails while being applied (a device that does
//! not open) stops the reload there and says what was applied before it.

use std::path::Path;

use nvme_target::AnaState;

use crate::block::{BlockService, ChangeError};
use crate::config::{Config, ConfigError, NamespaceConfig, SubsystemConfig, line_of};

/// What a reload changed, one line each (empty: the file is the one in force).
pub type Applied = Vec<String>;

/// Reloads `path` over `running` (the configuration in force, updated on success).
pub fn reload(
    path: &Path,
    running: &mut Config,
    block: &BlockService,
) -> Result<Applied, ConfigError> {
    let target = block.target();
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        path: String::new(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let new = Config::parse(&text, &origin)?;
    let in_force = block.subsystems();
    if let Some(key) =
        fixed_difference(running, &new).or_else(|| identity_difference(&in_force, &new))
    {
        return Err(ConfigError {
            origin,
            line: line_of(&text, &key),
            path: key,
            message: "cannot change while running (only subsystems, allowed hosts, namespaces \
                      and ANA states can); restart to apply"
                .into(),
        });
    }
    let mut applied = Vec::new();
    let failed = |key: String, e: &dyn std::fmt::Display, applied: &Applied| ConfigError {
        origin: origin.clone(),
        line: line_of(&text, &key),
        path: key,
        message: format!(
            "{e} (applied before this: {})",
            if applied.is_empty() {
                "nothing".to_owned()
            } else {
                applied.join("; ")
            }
        ),
    };
    for gone in in_force
        .iter()
        .filter(|o| !new.subsystems.iter().any(|s| s.nqn == o.nqn))
    {
        block
            .remove_subsystem(&gone.nqn)
            .map_err(|e| failed("subsystems".into(), &e, &applied))?;
        applied.push(format!("{}: subsystem removed", gone.nqn));
    }
    for (i, s) in new.subsystems.iter().enumerate() {
        let Some(old) = in_force.iter().find(|o| o.nqn == s.nqn) else {
            block
                .add_subsystem(s.clone())
                .map_err(|e: ChangeError| failed(format!("subsystems[{i}]"), &e, &applied))?;
            applied.push(format!(
                "{}: subsystem added with {} namespaces",
                s.nqn,
                s.namespaces.len()
            ));
            continue;
        };
        let key = format!("subsystems[{i}].namespaces");
        let (gone, added) = namespace_changes(&old.namespaces, &s.namespaces);
        for nsid in gone {
            block
                .remove_namespace(&s.nqn, nsid)
                .map_err(|e| failed(key.clone(), &e, &applied))?;
            applied.push(format!("{}: namespace {nsid} removed", s.nqn));
        }
        for ns in added {
            let line = format!(
                "{}: namespace {} added (volume {})",
                s.nqn, ns.nsid, ns.volume
            );
            block
                .add_namespace(&s.nqn, ns.clone())
                .map_err(|e| failed(key.clone(), &e, &applied))?;
            applied.push(line);
        }
        // The lists in force, with the changes made by `baton ctl host` since.
        let hosts = target.access().get(&s.nqn).ok();
        if hosts != Some((s.allow_any_host, s.allowed_hosts.clone())) {
            target
                .access()
                .replace(&s.nqn, s.allow_any_host, &s.allowed_hosts)
                .map_err(|e| failed(format!("subsystems[{i}].allowed_hosts"), &e, &applied))?;
            applied.push(format!(
                "{}: allow_any_host {}, {} allowed hosts",
                s.nqn,
                s.allow_any_host,
                s.allowed_hosts.len()
            ));
        }
    }
    for (controller, group, state) in ana_changes(running, &new) {
        let port = u16::try_from(controller + 1).unwrap_or(u16::MAX);
        // The file was validated: its controllers and groups exist.
        if target.ana().set(port, group, state).unwrap_or(false) {
            applied.push(format!(
                "controller {controller} ANA group {group}: {state}"
            ));
        }
    }
    *running = new;
    Ok(applied)
}

/// The first key path whose value differs between `a` and `b`, leaving out what a reload
/// may change (the subsystems are compared by [`identity_difference`]).
fn fixed_difference(a: &Config, b: &Config) -> Option<String> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.nvme_tcp.ana.clear();
        c.subsystems.clear();
        serde_json::to_value(&c).unwrap_or(serde_json::Value::Null)
    };
    first_difference(&strip(a), &strip(b), "")
}

/// The key of the first subsystem of `new` that is also in force with another serial or
/// model (what its controllers already reported to hosts).
fn identity_difference(in_force: &[SubsystemConfig], new: &Config) -> Option<String> {
    new.subsystems.iter().enumerate().find_map(|(i, s)| {
        let old = in_force.iter().find(|o| o.nqn == s.nqn)?;
        if old.serial != s.serial {
            Some(format!("subsystems[{i}].serial"))
        } else if old.model != s.model {
            Some(format!("subsystems[{i}].model"))
        } else {
            None
        }
    })
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let key = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(k, v)| first_difference(v, y.get(k).unwrap_or(&Value::Null), &key(k)))
            .or_else(|| y.keys().find(|k| !x.contains_key(*k)).map(|k| key(k))),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}[{i}]")))
            .or_else(|| (x.len() != y.len()).then(|| at.to_owned())),
        _ => (a != b).then(|| at.to_owned()),
    }
}

/// The namespace IDs to remove from `old` and the namespaces to add to reach `new`: one that
/// changed (volume, ANA group) is in both.
fn namespace_changes<'a>(
    old: &[NamespaceConfig],
    new: &'a [NamespaceConfig],
) -> (Vec<u32>, Vec<&'a NamespaceConfig>) {
    let gone = old
        .iter()
        .filter(|o| !new.contains(o))
        .map(|o| o.nsid)
        .collect();
    let added = new.iter().filter(|n| !old.contains(n)).collect();
    (gone, added)
}

/// The (controller, group, state) settings whose state differs between the two files
/// (absent means optimized).
fn ana_changes(old: &Config, new: &Config) -> Vec<(usize, u32, AnaState)> {
    let state = |c: &Config, controller: usize, group: u32| {
        c.nvme_tcp
            .ana
            .iter()
            .find(|a| a.controller == controller && a.group == group)
            .map_or(AnaState::Optimized, |a| a.state.into())
    };
    let mut keys: Vec<(usize, u32)> = old
        .nvme_tcp
        .ana
        .iter()
        .chain(&new.nvme_tcp.ana)
        .map(|a| (a.controller, a.group))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|(c, g)| {
            let s = state(new, c, g);
            (s != state(old, c, g)).then_some((c, g, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "controllers: {count: 2}\nnvme_tcp:\n  ana: []\ndevices:\n  - {name: d0, kind: ram, size: 1MiB}\nvolumes:\n  - {name: v0, devices: [d0]}\nsubsystems:\n  - nqn: nqn.2026-11.io.baton:t\n    allowed_hosts: [nqn.host:1]\n    namespaces:\n      - {nsid: 1, volume: v0}\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, "test.yaml").unwrap()
    }

    #[test]
    fn namespace_changes_remove_then_add() {
        let ns = |nsid, volume: &str, ana_group| NamespaceConfig {
            nsid,
            volume: volume.into(),
            ana_group,
        };
        let old = [ns(1, "a", 1), ns(2, "b", 1), ns(3, "c", 1)];
        let new = [ns(1, "a", 1), ns(3, "c", 2), ns(4, "d", 1)];
        let (gone, added) = namespace_changes(&old, &new);
        assert_eq!(gone, [2, 3]);
        let added: Vec<u32> = added.iter().map(|n| n.nsid).collect();
        assert_eq!(added, [3, 4]);
        assert_eq!(namespace_changes(&old, &old), (Vec::new(), Vec::new()));
    }

    #[test]
    fn only_subsystems_hosts_namespaces_and_ana_may_differ() {
        let a = parse(BASE);
        let hosts = parse(&BASE.replace("[nqn.host:1]", "[nqn.host:1, nqn.host:2]"));
        assert_eq!(fixed_difference(&a, &hosts), None);
        let ana = parse(&BASE.replace("ana: []", "ana: [{controller: 1, state: inaccessible}]"));
        assert_eq!(fixed_difference(&a, &ana), None);
        assert_eq!(ana_changes(&a, &ana), vec![(1, 1, AnaState::Inaccessible)]);
        assert_eq!(ana_changes(&ana, &a), vec![(1, 1, AnaState::Optimized)]);
        let nsid = parse(&BASE.replace("nsid: 1", "nsid: 2"));
        assert_eq!(
            fixed_difference(&a, &nsid),
            None,
            "namespaces change at run time"
        );
        let model = parse(&BASE.replace("allowed_hosts:", "model: other\n    allowed_hosts:"));
        assert_eq!(fixed_difference(&a, &model), None);
        assert_eq!(
            identity_difference(&a.subsystems, &model).as_deref(),
            Some("subsystems[0].model")
        );
        let other = parse(&BASE.replace("baton:t", "baton:u"));
        assert_eq!(
            identity_difference(&a.subsystems, &other),
            None,
            "a new subsystem"
        );
        let count = parse(&BASE.replace("count: 2", "count: 3"));
        assert_eq!(
            fixed_difference(&a, &count).as_deref(),
            Some("controllers.count")
        );
    }
}
