use super::*;

fn err(text: &str) -> ConfigError {
    Config::parse(text, "test.yaml").expect_err("config should be refused")
}

#[test]
fn embedded_default_is_valid() {
    let config = Config::embedded_default();
    assert_eq!(config.devices.len(), 3);
    assert_eq!(config.subsystems[0].namespaces[0].volume, "vol0");
    assert_eq!(
        config.stream.as_ref().map(|s| s.volume.as_str()),
        Some("content")
    );
    assert!(config.controller_count() >= 1);
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn unknown_key_names_path_and_line() {
    let e = err("devices:\n  - name: d0\n    kind: ram\n    size: 1GiB\n    colour: red\n");
    assert_eq!(e.path, "devices[0].colour");
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.starts_with("unknown field"), "{e}");
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn unknown_top_level_key() {
    let e = err("data_dir: x\nvolumez: []\n");
    assert!(e.message.contains("volumez"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn bad_size_names_key() {
    let e = err("devices:\n  - {name: d0, kind: ram, size: 12XB}\n");
    assert!(e.message.contains("unknown size unit"), "{e}");
    assert!(e.path.starts_with("devices[0]"), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn bad_type_names_key_and_line() {
    let e = err("nvme_tcp:\n  base_port: many\n");
    assert_eq!(e.path, "nvme_tcp.base_port");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.yaml:2: `nvme_tcp.base_port`: invalid type"),
        "{e}"
    );
}

#[test]
fn unknown_device_reference_names_item_line() {
    let text = "devices:\n  - {name: d0, kind: ram, size: 1MiB}\nvolumes:\n  - name: v\n    devices: [d0, nope]\n";
    let e = err(text);
    assert_eq!(e.path, "volumes[0].devices[1]");
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.contains("nope"));
}

#[test]
fn refuses_duplicates_and_bad_values() {
    let base =
        "devices:\n  - {name: d0, kind: ram, size: 1MiB}\n  - {name: d1, kind: ram, size: 1MiB}\n";
    let e = err(&format!("{base}  - {{name: d0, kind: ram, size: 1MiB}}\n"));
    assert_eq!(e.path, "devices[2].name");
    let e = err(&format!(
        "{base}volumes:\n  - {{name: v, devices: [d0], stripe_size: 3000}}\n"
    ));
    assert_eq!(e.path, "volumes[0].stripe_size");
    let e = err(&format!(
        "{base}volumes:\n  - {{name: v, devices: [d0], block_size: 1000}}\n"
    ));
    assert_eq!(e.path, "volumes[0].block_size");
    let e = err(&format!(
        "{base}volumes:\n  - {{name: v, devices: [d0]}}\n  - {{name: w, devices: [d0]}}\n"
    ));
    assert_eq!(e.path, "volumes[1].devices[0]");
    let e = err(&format!(
        "{base}volumes:\n  - {{name: v, devices: [d0]}}\nsubsystems:\n  - nqn: bad\n"
    ));
    assert_eq!(e.path, "subsystems[0].nqn");
    let e = err(&format!(
        "{base}volumes:\n  - {{name: v, devices: [d0]}}\nsubsystems:\n  - nqn: nqn.x:y\n    namespaces: [{{nsid: 1, volume: v}}, {{nsid: 1, volume: v}}]\n"
    ));
    assert_eq!(e.path, "subsystems[0].namespaces[1].nsid");
}

#[test]
fn refuses_bad_transport_settings() {
    assert_eq!(
        err("nvme_tcp: {max_transfer: 3000}").path,
        "nvme_tcp.max_transfer"
    );
    assert_eq!(err("nvme_tcp: {address: 0.0.0.0}").path, "nvme_tcp.address");
    assert_eq!(
        err("controllers: {count: 2}\nnvme_tcp: {base_port: 4420, discovery_port: 4421}").path,
        "nvme_tcp.discovery_port"
    );
    assert_eq!(err("logging: {format: xml}").path, "logging.format");
}

#[test]
fn syntax_error_has_line() {
    let e = err("devices:\n  - name: [unclosed\n");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn content_volume_cannot_be_exported() {
    let e = err(
        "devices: [{name: d, kind: ram, size: 64MiB}]\nvolumes: [{name: v, devices: [d]}]\n\
                 subsystems: [{nqn: nqn.2026-11.io.baton:x, namespaces: [{nsid: 1, volume: v}]}]\n\
                 stream: {volume: v}\n",
    );
    assert!(
        e.to_string().contains("subsystems[0].namespaces[0].volume"),
        "{e}"
    );
    let e = err(
        "devices: [{name: d, kind: ram, size: 64MiB}]\nvolumes: [{name: v, devices: [d]}]\n\
                 stream: {volume: v, window: 0}\n",
    );
    assert!(e.to_string().contains("stream.window"), "{e}");
    let e = err("stream: {volume: nope}\n");
    assert!(e.to_string().contains("stream.volume"), "{e}");
}

#[test]
fn transport_limits_are_the_targets_own() {
    // check-config used to accept what serve then refused (issue: one source of limits).
    for (yaml, key) in [
        ("nvme_tcp: {queue_entries: 2048}", "nvme_tcp.queue_entries"),
        ("nvme_tcp: {io_queues: 129}", "nvme_tcp.io_queues"),
        ("nvme_tcp: {io_queues: 0}", "nvme_tcp.io_queues"),
        ("nvme_tcp: {max_transfer: 32MiB}", "nvme_tcp.max_transfer"),
        ("nvme_tcp: {max_h2c_data: 32MiB}", "nvme_tcp.max_h2c_data"),
    ] {
        assert_eq!(err(yaml).path, key, "{yaml}");
    }
    let max = nvme_target::config::Limits::QUEUE_ENTRIES.end();
    Config::parse(&format!("nvme_tcp: {{queue_entries: {max}}}"), "t").unwrap();
}

#[test]
fn limits_are_checked_and_reach_the_listeners() {
    assert_eq!(
        err("limits: {nvme_tcp_connections: 0}").path,
        "limits.nvme_tcp_connections"
    );
    assert_eq!(
        err("limits: {send_timeout_ms: 5}").path,
        "limits.send_timeout_ms"
    );
    assert_eq!(err("limits: {bogus: 1}").path, "limits.bogus");
    let c = Config::parse(
        "limits: {stream_connections: 7, handshake_timeout_ms: 1500}",
        "t",
    )
    .unwrap();
    let l = c.limits.stream();
    assert_eq!(l.max_connections, 7);
    assert_eq!(l.handshake_timeout, std::time::Duration::from_millis(1500));
    assert_eq!(c.limits.nvme_tcp().max_connections, 1024);
}

#[test]
fn hostile_config_text_is_refused_quickly() {
    let n = 100_000;
    let e = err(&format!("a: {}{}\n", "[".repeat(n), "]".repeat(n)));
    assert!(e.message.contains("nested deeper"), "{e}");
    assert_eq!(e.line, Some(1));
    let e = err(&"#".repeat(MAX_CONFIG_BYTES + 1));
    assert!(e.message.contains("larger than"), "{e}");
    // Not a regular file: refused without reading (a FIFO would block, /dev/zero never ends).
    let e = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = Config::load(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn stream_ports_must_fit() {
    let base = "devices: [{name: d, kind: ram, size: 64MiB}]\nvolumes: [{name: v, devices: [d]}]\n\
                controllers: {count: 2}\n";
    let e = err(&format!(
        "{base}stream: {{volume: v, data_port_base: 65535}}\n"
    ));
    assert_eq!(e.path, "stream.data_port_base");
    Config::parse(
        &format!("{base}stream: {{volume: v, data_port_base: 65534}}\n"),
        "t",
    )
    .unwrap();
}

#[test]
fn admin_token_settings() {
    assert_eq!(err("admin: {token: short}").path, "admin.token");
    assert_eq!(
        err("admin: {token: 0123456789abcdef, token_file: t}").path,
        "admin.token_file"
    );
    let (_, w) = Config::parse_with_warnings("admin: {address: 0.0.0.0:9440}", "t").unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].path, "admin.address");
    assert_eq!(w[0].line, Some(1));
    let (_, w) = Config::parse_with_warnings(
        "admin: {address: 0.0.0.0:9440, token: 0123456789abcdef}",
        "t",
    )
    .unwrap();
    assert!(w.is_empty());
    let (_, w) = Config::parse_with_warnings("", "t").unwrap();
    assert!(w.is_empty(), "the loopback default warns of nothing");
}

/// Keys as `nvme gen-dhchap-key -n HOSTNQN` prints them (none and SHA-256 transformation).
const KEY: &str = "DHHC-1:00:+i8he+u4frQ6re8iiOLzxPi2JhdoRRAqhfb9rO6Jm4SRqbWy:";
const CTRL_KEY: &str = "DHHC-1:01:FavwTE3hcZcb6D04KYSyd2qq6AndgJIv+7zOU8jy14NRyDzw:";

fn with_hosts(hosts: &str) -> String {
    format!("nvme_tcp:\n  hosts:\n{hosts}")
}

#[test]
fn dhchap_hosts_parse_and_reach_the_target() {
    let text = with_hosts(&format!(
        "    - nqn: nqn.2014-08.org.nvmexpress:uuid:a\n      dhchap_key: \"{KEY}\"\n      dhchap_ctrl_key: \"{CTRL_KEY}\"\n      dhchap_hash: sha384\n      dhchap_dhgroup: ffdhe4096\n    - nqn: nqn.2014-08.org.nvmexpress:uuid:b\n      dhchap_key: \"{KEY}\"\n"
    ));
    let config = Config::parse(&text, "test.yaml").unwrap();
    let hosts = hosts_auth(&config.nvme_tcp.hosts).unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].hash, nvme_target::auth::HashFn::Sha384);
    assert_eq!(hosts[0].dh_group.map(|g| g.bits), Some(4096));
    assert!(hosts[0].ctrl_key.is_some());
    // Defaults: SHA-256, no DH exchange, no controller key.
    assert_eq!(hosts[1].hash, nvme_target::auth::HashFn::Sha256);
    assert!(hosts[1].dh_group.is_none() && hosts[1].ctrl_key.is_none());
}

#[test]
fn dhchap_errors_name_the_key_and_line() {
    let host = |extra: &str| {
        with_hosts(&format!(
            "    - nqn: nqn.2014-08.org.nvmexpress:uuid:a\n      dhchap_key: \"{KEY}\"\n{extra}"
        ))
    };
    let bad_key = with_hosts(
        "    - nqn: nqn.2014-08.org.nvmexpress:uuid:a\n      dhchap_key: \"DHHC-1:00:AAAA:\"\n",
    );
    let e = err(&bad_key);
    assert_eq!(e.path, "nvme_tcp.hosts[0].dhchap_key");
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("byte key"), "{}", e.message);
    // One character changed: the CRC no longer matches.
    let typo = KEY.replacen('+', "-", 1).replacen("-i8", "+i9", 1);
    let e = err(&with_hosts(&format!(
        "    - nqn: nqn.2014-08.org.nvmexpress:uuid:a\n      dhchap_key: \"{typo}\"\n"
    )));
    assert_eq!(e.path, "nvme_tcp.hosts[0].dhchap_key");
    let e = err(&host("      dhchap_hash: md5\n"));
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.hosts[0].dhchap_hash", Some(5))
    );
    let e = err(&host("      dhchap_dhgroup: ffdhe1024\n"));
    assert_eq!(e.path, "nvme_tcp.hosts[0].dhchap_dhgroup");
    let e = err(&host(&format!("      dhchap_ctrl_key: \"{KEY}\"\n")));
    assert_eq!(e.path, "nvme_tcp.hosts[0].dhchap_ctrl_key");
    let e = err(&format!(
        "{}    - nqn: nqn.2014-08.org.nvmexpress:uuid:a\n      dhchap_key: \"{KEY}\"\n",
        host("")
    ));
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.hosts[1].nqn", Some(5))
    );
    let e = err(&host("      secret: x\n"));
    assert!(e.path.starts_with("nvme_tcp.hosts[0]"), "{}", e.path);
}

/// Two controllers, namespace 2 in ANA group 2, with `ana` as the `nvme_tcp.ana` items and
/// `group2` as namespace 2's `ana_group`.
fn with_ana(ana: &str, group2: &str) -> String {
    format!(
        "controllers: {{count: 2}}\nnvme_tcp:\n  ana:\n{ana}devices:\n  - {{name: d0, kind: ram, size: 1MiB}}\n  - {{name: d1, kind: ram, size: 1MiB}}\nvolumes:\n  - {{name: v0, devices: [d0]}}\n  - {{name: v1, devices: [d1]}}\nsubsystems:\n  - nqn: nqn.2026-11.io.baton:t\n    namespaces:\n      - {{nsid: 1, volume: v0}}\n      - nsid: 2\n        volume: v1\n        ana_group: {group2}\n"
    )
}

#[test]
fn ana_groups_and_start_states_parse() {
    let text = with_ana(
        "    - controller: 1\n      group: 2\n      state: non-optimized\n    - controller: 0\n      state: inaccessible\n",
        "2",
    );
    let config = Config::parse(&text, "test.yaml").unwrap();
    assert_eq!(
        config.subsystems[0].namespaces[0].ana_group, 1,
        "default group"
    );
    assert_eq!(config.subsystems[0].namespaces[1].ana_group, 2);
    let ana = &config.nvme_tcp.ana;
    assert_eq!((ana[0].controller, ana[0].group), (1, 2));
    assert_eq!(ana[0].state, AnaStateName::NonOptimized);
    assert_eq!(ana[1].group, 1, "default group");
    assert_eq!(
        nvme_target::AnaState::from(ana[1].state),
        nvme_target::AnaState::Inaccessible
    );
}

#[test]
fn ana_errors_name_the_key_and_line() {
    let one = |item: &str, group2: &str| err(&with_ana(item, group2));
    let e = one("    - controller: 1\n      state: fast\n", "2");
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.ana[0].state", Some(5))
    );
    let e = one("    - controller: 2\n      state: change\n", "2");
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.ana[0].controller", Some(4)),
        "{e}"
    );
    let e = one(
        "    - controller: 0\n      group: 3\n      state: change\n",
        "2",
    );
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.ana[0].group", Some(5)),
        "{e}"
    );
    assert!(e.message.contains("ANA group 3"), "{e}");
    let e = one(
        "    - controller: 0\n      state: change\n    - controller: 0\n      group: 1\n      state: optimized\n",
        "2",
    );
    assert_eq!(e.path, "nvme_tcp.ana[1].group", "{e}");
    let e = one("    - controller: 0\n      state: change\n", "33");
    assert_eq!(
        (e.path.as_str(), e.line),
        ("subsystems[0].namespaces[1].ana_group", Some(18)),
        "{e}"
    );
    let e = one("    - controller: 0\n      state: change\n", "0");
    assert_eq!(e.path, "subsystems[0].namespaces[1].ana_group");
}

#[test]
fn referrals_parse_and_a_bad_one_names_its_key_and_line() {
    let c = Config::parse(
        "nvme_tcp:\n  referrals:\n    - {address: 192.0.2.7}\n    - {address: \"2001:db8::1\", port: 4430}\n",
        "test.yaml",
    )
    .unwrap();
    let r = &c.nvme_tcp.referrals;
    assert_eq!(
        (r[0].address.to_string(), r[0].port),
        ("192.0.2.7".into(), 8009)
    );
    assert_eq!(
        (r[1].address.to_string(), r[1].port),
        ("2001:db8::1".into(), 4430)
    );
    let e = err("nvme_tcp:\n  referrals:\n    - {address: 192.0.2.7, port: 0}\n");
    assert_eq!(
        (e.path.as_str(), e.line),
        ("nvme_tcp.referrals[0].port", Some(3))
    );
    let e = err("nvme_tcp:\n  referrals:\n    - {address: nowhere}\n");
    assert!(e.path.starts_with("nvme_tcp.referrals[0]"), "{}", e.path);
    assert_eq!(e.line, Some(3));
}
