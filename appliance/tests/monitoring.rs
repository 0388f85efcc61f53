//! Monitoring as an admin runs it: promtool checks the shipped Prometheus configuration and
//! runs the alert rules' unit tests (every alert fires on synthetic series and resolves); a
//! real Prometheus scrapes an appliance under block and stream load, and every dashboard
//! panel query and every alert expression, evaluated through its HTTP API, returns series
//! with the labels the panel or alert names.
//!
//! Both need Debian's `prometheus` package, which `tests/run unit` installs before it runs
//! the ignored tests (`--include-ignored`); run alone without it, they fail with a message
//! that names the package.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prometheus_dir() -> PathBuf {
    repo().join("config/prometheus")
}

/// Runs promtool, failing with its output.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool (Debian package prometheus; tests/install-packages prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The alert rules: `(name, expr)`, in file order.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs Debian's prometheus package (tests/run installs it and runs ignored tests)"]
fn every_alert_fires_and_resolves_in_its_promtool_unit_test() {
    promtool(&["check", "config", "prometheus.yml"]);
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let names: BTreeSet<String> = alerts().into_iter().map(|(n, _)| n).collect();
    assert!(
        checked.contains(&format!("{} rules found", names.len())),
        "{checked}"
    );
    promtool(&["test", "rules", "alerts.test.yml"]);
    // Every alert has a test that expects it firing and one that expects it resolved.
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.test.yml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let mut fires = BTreeSet::new();
    let mut resolves = BTreeSet::new();
    for t in doc["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_owned();
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fires.insert(name);
            } else {
                resolves.insert(name);
            }
        }
    }
    assert_eq!(fires, names, "alerts with a firing test");
    assert_eq!(resolves, names, "alerts with a resolving test");
}
