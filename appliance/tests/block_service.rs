//! The real `baton` binary serving NVMe/TCP: data through two controllers, status, metrics,
//! dropping one controller's connections, graceful shutdown.
// An integration test crate: every function in it is a test.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvme_target::host::{HostController, HostOptions};

use common::free_port;

const NQN: &str = "nqn.2026-11.io.baton:test";

/// Runs blocking CLI/HTTP helpers from inside the async test body.
fn off_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

struct Baton {
    child: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Baton {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "data_dir: {data}\ncontrollers: {{count: 2}}\nnvme_tcp: {{base_port: 0, discovery_port: 0}}\n\
             admin: {{address: \"{admin}\"}}\n\
             devices:\n  - {{name: r0, kind: ram, size: 32MiB}}\n  - {{name: f0, kind: file, path: f0.img, size: 32MiB}}\n\
             volumes:\n  - {{name: v0, devices: [r0, f0], stripe_size: 64KiB, block_size: 512}}\n\
             subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n",
            data = dir.path().display()
        );
        let path = dir.path().join("baton.yaml");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Self {
            child,
            admin,
            _dir: dir,
        };
        let t = Instant::now();
        while baton::admin::fetch_status(admin).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "baton did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .args(["--admin", &self.admin.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ports(&self) -> Vec<SocketAddr> {
        let st = baton::admin::fetch_status(self.admin).unwrap();
        st.controllers
            .iter()
            .map(|c| c.nvme_tcp.parse().unwrap())
            .collect()
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "baton exited with {st}");
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "baton did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        // Only if a test failed before stop(): do not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_a_striped_volume_through_two_controllers() {
    let b = Baton::start();
    let ports = b.ports();
    assert_eq!(ports.len(), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut a = HostController::connect(ports[0], HostOptions::new(NQN))
            .await
            .unwrap();
        let mut c = HostController::connect(ports[1], HostOptions::new(NQN))
            .await
            .unwrap();
        a.set_num_queues(1).await.unwrap();
        c.set_num_queues(1).await.unwrap();
        let mut qa = a.connect_io_queue(1).await.unwrap();
        let mut qc = c.connect_io_queue(1).await.unwrap();
        let ns = a.namespace(1).await.unwrap();
        assert_eq!(ns.blocks * 512, 64 << 20);
        let id = a.identify_namespace(1).await.unwrap();
        assert_eq!(id.noiob.get(), 128, "NOIOB is the stripe size in blocks");
        // Across the stripe boundary and both members.
        let data: Vec<u8> = (0..256 * 1024u32)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        qa.write(&ns, 100, &data).await.unwrap();
        assert!(qc.read(&ns, 100, data.len()).await.unwrap() == data);

        let status = off_thread(|| b.cli(&["status"]));
        assert!(status.contains(NQN), "{status}");
        assert!(
            status.contains("nqn.2014-08.org.nvmexpress:uuid:"),
            "hosts listed: {status}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&off_thread(|| b.cli(&["status", "--json"]))).unwrap();
        assert_eq!(json["subsystems"][0]["hosts"].as_array().unwrap().len(), 2);

        let metrics =
            off_thread(|| baton::admin::call(b.admin, hyper::Method::GET, "/metrics").unwrap());
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        let value = |prefix: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} missing"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(value("baton_nvme_bytes_total{controller=\"0\",direction=\"write\"}") >= 262_144.0);
        assert!(value("baton_nvme_bytes_total{controller=\"1\",direction=\"read\"}") >= 262_144.0);
        assert_eq!(
            value(&format!(
                "baton_subsystem_connected_hosts{{subsystem=\"{NQN}\"}}"
            )),
            2.0
        );
        assert_eq!(value("baton_controller_up{controller=\"1\"}"), 1.0);

        // Dropping controller 0's connections leaves controller 1's path working.
        let token = b._dir.path().join("admin.token");
        let token = token.to_str().unwrap();
        off_thread(|| {
            b.cli(&[
                "ctl",
                "drop-connections",
                "--controller",
                "0",
                "--token-file",
                token,
            ])
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(qa.read(&ns, 100, 512).await.is_err());
        assert!(qc.read(&ns, 100, 512).await.unwrap() == data[..512]);
    });
    b.stop();
}
