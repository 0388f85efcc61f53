//! Configuration reload (SIGHUP): the file is read and validated again, and what may change
//! at run time is applied: each subsystem's `allow_any_host` and `allowed_hosts`, and the ANA
//! states of `nvme_tcp.ana` that differ from the file in force (states set with `baton ctl
//! ana` since are kept unless the file changes them). Any other difference refuses the whole
//! reload, naming the first key that differs and its line; nothing changes then.

use std::path::Path;

use nvme_target::{AnaState, Target};

use crate::config::{Config, ConfigError, line_of};

/// What a reload changed, one line each (empty: the file is the one in force).
pub type Applied = Vec<String>;

/// Reloads `path` over `running` (the configuration in force, updated on success).
pub fn reload(path: &Path, running: &mut Config, target: &Target) -> Result<Applied, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        path: String::new(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let new = Config::parse(&text, &origin)?;
    if let Some(key) = fixed_difference(running, &new) {
        return Err(ConfigError {
            origin,
            line: line_of(&text, &key),
            path: key,
            message: "cannot change while running (only allowed hosts and ANA states can); \
                      restart to apply"
                .into(),
        });
    }
    let mut applied = Vec::new();
    for (old, s) in running.subsystems.iter().zip(&new.subsystems) {
        if old.allow_any_host != s.allow_any_host || old.allowed_hosts != s.allowed_hosts {
            target
                .access()
                .replace(&s.nqn, s.allow_any_host, &s.allowed_hosts)
                .map_err(|e| ConfigError {
                    origin: origin.clone(),
                    path: "subsystems".into(),
                    line: None,
                    message: e.to_string(),
                })?;
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
/// may change.
fn fixed_difference(a: &Config, b: &Config) -> Option<String> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.nvme_tcp.ana.clear();
        for s in &mut c.subsystems {
            s.allow_any_host = false;
            s.allowed_hosts.clear();
        }
        serde_json::to_value(&c).unwrap_or(serde_json::Value::Null)
    };
    first_difference(&strip(a), &strip(b), "")
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
    fn only_hosts_and_ana_may_differ() {
        let a = parse(BASE);
        let hosts = parse(&BASE.replace("[nqn.host:1]", "[nqn.host:1, nqn.host:2]"));
        assert_eq!(fixed_difference(&a, &hosts), None);
        let ana = parse(&BASE.replace("ana: []", "ana: [{controller: 1, state: inaccessible}]"));
        assert_eq!(fixed_difference(&a, &ana), None);
        assert_eq!(ana_changes(&a, &ana), vec![(1, 1, AnaState::Inaccessible)]);
        assert_eq!(ana_changes(&ana, &a), vec![(1, 1, AnaState::Optimized)]);
        let nsid = parse(&BASE.replace("nsid: 1", "nsid: 2"));
        assert_eq!(
            fixed_difference(&a, &nsid).as_deref(),
            Some("subsystems[0].namespaces[0].nsid")
        );
        let count = parse(&BASE.replace("count: 2", "count: 3"));
        assert_eq!(
            fixed_difference(&a, &count).as_deref(),
            Some("controllers.count")
        );
    }
}
