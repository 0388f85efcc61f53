//! Helpers shared by the black-box tests of the `baton` binary.
#![allow(dead_code)]

use std::net::SocketAddr;

/// A loopback address with a port free right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A port free right now.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// A `baton serve` child process, killed when dropped (a failed test leaves nothing behind).
pub struct Serve(pub std::process::Child);

impl Serve {
    /// Starts `baton serve --config PATH` and waits until the admin API answers and every
    /// address in `also` accepts connections.
    pub fn start(config: &std::path::Path, admin: SocketAddr, also: &[SocketAddr]) -> Self {
        Self::start_with(config, admin, also, |_| {})
    }

    /// [`Serve::start`] with a hook to adjust the command (environment, output).
    pub fn start_with(
        config: &std::path::Path,
        admin: SocketAddr,
        also: &[SocketAddr],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        adjust(&mut cmd);
        let mut s = Self(cmd.spawn().unwrap());
        let t = std::time::Instant::now();
        while baton::admin::fetch_status(admin).is_err()
            || also
                .iter()
                .any(|a| std::net::TcpStream::connect(a).is_err())
        {
            if let Some(st) = s.0.try_wait().unwrap() {
                panic!("baton exited: {st}");
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(20),
                "baton did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        s
    }

    /// The process ID.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each controller's NVMe/TCP address, from the running appliance's status.
pub fn nvme_ports(admin: SocketAddr) -> Vec<SocketAddr> {
    baton::admin::fetch_status(admin)
        .unwrap()
        .controllers
        .iter()
        .map(|c| c.nvme_tcp.parse().unwrap())
        .collect()
}
