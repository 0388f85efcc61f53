//! `baton bench`: NVMe/TCP workloads through the host library against a Baton appliance,
//! with a raw TCP stream between two processes on the same loopback as the reference.
//!
//! Without `--target`, the benchmark starts its own appliance process (`baton serve` on a
//! RAM volume, ephemeral ports) and a raw TCP source process, so the Baton numbers and the
//! reference come from the same machine in the same run.

mod nvme;
pub mod pcie;
pub mod stream;
mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

pub use tcp::run_source;

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 4 KiB random reads.
    Randread4k,
    /// 4 KiB random writes.
    Randwrite4k,
    /// 128 KiB sequential reads.
    Seqread128k,
    /// 128 KiB sequential writes.
    Seqwrite128k,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [
        Self::Randread4k,
        Self::Randwrite4k,
        Self::Seqread128k,
        Self::Seqwrite128k,
    ];

    fn io_size(self) -> usize {
        match self {
            Self::Randread4k | Self::Randwrite4k => 4096,
            Self::Seqread128k | Self::Seqwrite128k => 128 * 1024,
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Self::Randwrite4k | Self::Seqwrite128k)
    }

    fn is_random(self) -> bool {
        matches!(self, Self::Randread4k | Self::Randwrite4k)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Randread4k => "randread 4KiB",
            Self::Randwrite4k => "randwrite 4KiB",
            Self::Seqread128k => "seqread 128KiB",
            Self::Seqwrite128k => "seqwrite 128KiB",
        }
    }
}

/// `baton bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// NVMe/TCP ports of a running appliance (one per controller); default: start one.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<SocketAddr>,
    /// Subsystem NQN to use with --target.
    #[arg(long, default_value = "nqn.2026-11.io.baton:vol0")]
    pub nqn: String,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<Workload>,
    /// Commands in flight per job.
    #[arg(long, default_value_t = 32)]
    pub qd: u16,
    /// Jobs (one I/O queue and one client thread each); default: one per controller.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Controllers of the appliance the benchmark starts.
    #[arg(long, default_value_t = 2)]
    pub controllers: usize,
    /// Seconds per workload (after a short warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes of the namespace the workloads touch.
    #[arg(long, default_value_t = 256 << 20)]
    pub span: u64,
    /// Ask for header and data digests.
    #[arg(long)]
    pub digests: bool,
    /// Skip the raw TCP reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One workload's result.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Workload.
    pub workload: Workload,
    /// Commands per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Latency percentiles in microseconds: p50, p99, p99.9.
    pub latency_us: [f64; 3],
    /// Commands that failed.
    pub errors: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Controllers (ports) used.
    pub controllers: usize,
    /// Jobs.
    pub jobs: usize,
    /// Queue depth per job.
    pub qd: u16,
    /// Seconds per workload.
    pub seconds: u64,
    /// Digests on.
    pub digests: bool,
    /// Results.
    pub results: Vec<Measurement>,
    /// Raw TCP stream MB/s with one connection per job, between two processes.
    pub raw_tcp_mb_per_s: Option<f64>,
    /// 128 KiB sequential read MB/s divided by the raw TCP stream.
    pub seqread_ratio: Option<f64>,
}

/// A child process ended (SIGTERM, then wait) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // Already gone is fine.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `baton serve` on a RAM volume; returns the process and its ports.
fn start_appliance(
    args: &BenchArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(ChildGuard, Vec<SocketAddr>)> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let size = args.span.next_power_of_two().max(64 << 20);
    let cfg = format!(
        "data_dir: {dir}\ncontrollers: {{count: {n}}}\nnvme_tcp: {{base_port: 0, discovery_port: null}}\n\
         admin: {{address: \"{admin}\"}}\nlogging: {{level: warn}}\n\
         devices:\n  - {{name: r0, kind: ram, size: {size}}}\n\
         volumes:\n  - {{name: v0, devices: [r0], block_size: 512}}\n\
         subsystems:\n  - nqn: {nqn}\n    allow_any_host: true\n    namespaces: [{{nsid: 1, volume: v0}}]\n",
        dir = dir.display(),
        n = args.controllers,
        nqn = args.nqn,
    );
    let path: PathBuf = dir.join("bench.yaml");
    std::fs::write(&path, cfg)?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the appliance")?;
    let guard = ChildGuard(child);
    let t = Instant::now();
    loop {
        if let Ok(st) = crate::admin::fetch_status(admin) {
            let ports = st
                .controllers
                .iter()
                .map(|c| c.nvme_tcp.parse())
                .collect::<Result<Vec<SocketAddr>, _>>()?;
            return Ok((guard, ports));
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the appliance did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the benchmark and prints the report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("baton-bench").tempdir()?;
    let (_appliance, ports) = if args.target.is_empty() {
        let (g, p) = start_appliance(&args, dir.path())?;
        (Some(g), p)
    } else {
        (None, args.target.clone())
    };
    let jobs = args.jobs.unwrap_or(ports.len()).max(1);
    let workloads = if args.workload.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workload.clone()
    };
    let opts = nvme::JobOptions {
        nqn: args.nqn.clone(),
        qd: args.qd,
        span: args.span,
        digests: args.digests,
        duration: Duration::from_secs(args.seconds),
    };
    nvme::prefill(&ports[0], &opts)?;
    let mut results = Vec::new();
    for w in workloads {
        let m = nvme::measure(&ports, jobs, w, &opts)?;
        if !args.json {
            eprintln!("{}: {:.0} IOPS, {:.1} MB/s", w.label(), m.iops, m.mb_per_s);
        }
        results.push(m);
    }
    let raw = if args.no_reference {
        None
    } else {
        Some(tcp::measure(jobs, Duration::from_secs(args.seconds))?)
    };
    let seq = results.iter().find(|m| m.workload == Workload::Seqread128k);
    let report = Report {
        controllers: ports.len(),
        jobs,
        qd: args.qd,
        seconds: args.seconds,
        digests: args.digests,
        seqread_ratio: raw.zip(seq).map(|(r, s)| s.mb_per_s / r),
        raw_tcp_mb_per_s: raw,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The human-readable report.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Baton NVMe/TCP benchmark: {} controller(s), {} job(s), QD {}, {} s per workload, digests {}",
        r.controllers,
        r.jobs,
        r.qd,
        r.seconds,
        if r.digests { "on" } else { "off" }
    );
    let _ = writeln!(
        s,
        "{:<18} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "WORKLOAD", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "ERRORS"
    );
    for m in &r.results {
        let _ = writeln!(
            s,
            "{:<18} {:>10.0} {:>10.1} {:>9.0} {:>9.0} {:>9.0} {:>7}",
            m.workload.label(),
            m.iops,
            m.mb_per_s,
            m.latency_us[0],
            m.latency_us[1],
            m.latency_us[2],
            m.errors
        );
    }
    if let Some(raw) = r.raw_tcp_mb_per_s {
        let _ = writeln!(
            s,
            "raw TCP stream, {} connection(s) between two processes: {raw:.1} MB/s",
            r.jobs
        );
    }
    if let Some(ratio) = r.seqread_ratio {
        let _ = writeln!(s, "seqread 128KiB / raw TCP stream: {ratio:.2}");
    }
    s
}
