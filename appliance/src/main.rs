//! `baton`: the appliance daemon and its command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use baton::config::Config;

mod content;

/// Baton storage appliance: NVMe/TCP block service and striped stream service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance (the embedded default config without --config).
    Serve {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// YAML configuration file.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Show controllers, subsystems and hosts, volumes, devices and stream sessions of a
    /// running appliance.
    Status {
        /// The appliance's admin address.
        #[arg(long, default_value = "127.0.0.1:9440")]
        admin: SocketAddr,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the NVMe/TCP block service against a raw TCP stream (starts its own
    /// appliance on a RAM volume unless --target is given).
    Bench(baton::bench::BenchArgs),
    /// Benchmark the stream service: one stream vs raw TCP, scaling with controllers when
    /// device reads are capped, many paced streams.
    BenchStream(baton::bench::stream::StreamBenchArgs),
    /// Serve raw TCP streams (the benchmark's reference; started by `baton bench`).
    #[command(hide = true)]
    BenchSource {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Store a file (or standard input with `-`) in the content store.
    Put {
        /// File to store, or `-` for standard input.
        file: PathBuf,
        /// Name to store it under (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Replace an item of that name (atomically; without it an existing name is refused).
        #[arg(long)]
        replace: bool,
        /// The stream service's control address.
        #[arg(long, default_value = "127.0.0.1:9450")]
        stream: SocketAddr,
    },
    /// List stored content.
    Ls {
        /// The stream service's control address.
        #[arg(long, default_value = "127.0.0.1:9450")]
        stream: SocketAddr,
    },
    /// Remove stored content.
    Rm {
        /// Name.
        name: String,
        /// The stream service's control address.
        #[arg(long, default_value = "127.0.0.1:9450")]
        stream: SocketAddr,
    },
    /// Stream stored content through the controllers (the baton-passing stream).
    Fetch {
        /// Name.
        name: String,
        /// Output file, or `-` for standard output (the default).
        #[arg(long, short, default_value = "-")]
        output: PathBuf,
        /// First byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes (default: to the end).
        #[arg(long)]
        length: Option<u64>,
        /// Pacing in bits per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// The stream service's control address.
        #[arg(long, default_value = "127.0.0.1:9450")]
        stream: SocketAddr,
    },
    /// Prepare NVMe PCIe functions for the user-space driver (bind to vfio-pci, load the
    /// VFIO modules, reserve hugepages), or give them back to the kernel with --reset.
    SetupPci {
        /// PCI addresses (default: the nvme-pcie devices of --config, else every NVMe function).
        devices: Vec<String>,
        /// Give the devices back to the kernel's nvme driver.
        #[arg(long)]
        reset: bool,
        /// 2 MiB hugepages to reserve.
        #[arg(long, default_value_t = 256)]
        hugepages: u32,
        /// Configuration whose nvme-pcie devices to prepare.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Benchmark the nvme-pcie engine (the user-space driver as the appliance uses it):
    /// 4 KiB random reads at each queue depth on one PCIe function bound to vfio-pci.
    BenchPcie {
        /// PCI address.
        device: String,
        /// Namespace ID.
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        /// Commands in flight: one run per depth (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        qd: Vec<u16>,
        /// Seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Act on a running appliance.
    Ctl {
        /// The appliance's admin address.
        #[arg(long, default_value = "127.0.0.1:9440", global = true)]
        admin: SocketAddr,
        /// File holding the admin token (default: the running config's token, else
        /// `baton-data/admin.token`, the embedded default's generated token). The
        /// `BATON_ADMIN_TOKEN` environment variable overrides both.
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// The appliance's configuration, to find its admin token.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Debug, Subcommand)]
enum CtlAction {
    /// Stop one controller's stream worker: its sessions are re-planned over the others.
    StopStreams {
        /// Controller index (0-based).
        #[arg(long)]
        controller: usize,
    },
    /// Close every NVMe/TCP connection of one controller (its port keeps listening, so
    /// hosts reconnect; multipath hosts carry on over the other controllers).
    DropConnections {
        /// Controller index (0-based).
        #[arg(long)]
        controller: usize,
    },
    /// Asymmetric Namespace Access: show or set ANA group states.
    Ana {
        #[command(subcommand)]
        action: AnaAction,
    },
    /// Allow a host to connect to a subsystem, or stop allowing it (it is refused on its next
    /// connect; associations it has stay up).
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Add a namespace to a subsystem or remove one while hosts are connected (they get a
    /// Namespace Attribute Changed notice and rescan; a SIGHUP reload makes the file's
    /// namespaces the ones in force again).
    Namespace {
        #[command(subcommand)]
        action: NamespaceAction,
    },
    /// Add a subsystem or remove one while the appliance runs (a removed subsystem's
    /// controllers are torn down; a SIGHUP reload makes the file's subsystems the ones in
    /// force again).
    Subsystem {
        #[command(subcommand)]
        action: SubsystemAction,
    },
}

#[derive(Debug, Subcommand)]
enum SubsystemAction {
    /// Create a subsystem without namespaces (add them with `baton ctl namespace add`).
    Add {
        /// Subsystem NQN.
        nqn: String,
        /// Let any host connect (otherwise add hosts with `baton ctl host add`).
        #[arg(long)]
        allow_any_host: bool,
        /// Serial number (default: derived from the NQN).
        #[arg(long)]
        serial: Option<String>,
        /// Model number.
        #[arg(long)]
        model: Option<String>,
    },
    /// Remove a subsystem: its hosts are disconnected, its volumes are no longer exported.
    Remove {
        /// Subsystem NQN.
        nqn: String,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceAction {
    /// Export a volume as a new namespace.
    Add {
        /// Subsystem NQN.
        #[arg(long)]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
        /// The volume to export (not exported yet, not the content store).
        #[arg(long)]
        volume: String,
        /// ANA group.
        #[arg(long, default_value_t = 1)]
        ana_group: u32,
    },
    /// Remove a namespace (commands already at its devices finish; the devices are
    /// flushed).
    Remove {
        /// Subsystem NQN.
        #[arg(long)]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
    },
}

#[derive(Debug, Subcommand)]
enum HostAction {
    /// Add a host NQN to a subsystem's allowed hosts.
    Add {
        /// Subsystem NQN.
        #[arg(long)]
        subsystem: String,
        /// Host NQN.
        host: String,
    },
    /// Remove a host NQN from a subsystem's allowed hosts.
    Remove {
        /// Subsystem NQN.
        #[arg(long)]
        subsystem: String,
        /// Host NQN.
        host: String,
    },
}

#[derive(Debug, Subcommand)]
enum AnaAction {
    /// Every ANA group's state on every controller.
    Show,
    /// Set one group's state on one controller (port); connected hosts that enabled ANA
    /// change notices get one and re-read the ANA log.
    Set {
        /// Controller index (0-based).
        #[arg(long, conflicts_with = "port", required_unless_present = "port")]
        controller: Option<usize>,
        /// Port ID instead of the controller index (PORTID in the discovery log: index + 1).
        #[arg(long)]
        port: Option<u16>,
        /// ANA group ID.
        #[arg(long, default_value_t = 1)]
        group: u32,
        /// optimized, non-optimized, inaccessible, persistent-loss or change.
        state: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let (loaded, warnings) = match &config {
                Some(path) => Config::load_with_warnings(path)?,
                None => (Config::embedded_default(), Vec::new()),
            };
            baton::logging::init(&loaded.logging);
            for w in &warnings {
                tracing::warn!("{w}");
            }
            baton::serve::run(loaded, config.as_deref()).context("serve")
        }
        Command::CheckConfig { file } => {
            let (config, warnings) = Config::load_with_warnings(&file)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let bad = config.check_device_paths();
            if !bad.is_empty() {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for (path, message) in &bad {
                    let e = baton::config::ConfigError {
                        origin: file.display().to_string(),
                        line: baton::config::line_of(&text, path),
                        path: path.clone(),
                        message: message.clone(),
                    };
                    eprintln!("{e}");
                }
                anyhow::bail!("{} device path(s) cannot be used", bad.len());
            }
            println!(
                "{}: ok ({} devices, {} volumes, {} subsystems, {} controllers)",
                file.display(),
                config.devices.len(),
                config.volumes.len(),
                config.subsystems.len(),
                config.controller_count()
            );
            Ok(())
        }
        Command::Status { admin, json } => {
            let status = baton::admin::fetch_status(admin)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.to_table());
            }
            Ok(())
        }
        Command::Bench(args) => baton::bench::run(args),
        Command::BenchPcie {
            device,
            nsid,
            qd,
            seconds,
        } => {
            let dev = std::sync::Arc::new(ffi::vfio::VfioPci::open(&device)?);
            let depth = qd.iter().copied().max().unwrap_or(1).saturating_add(1);
            let ns = bdev::pcie::PcieNamespace::new(
                vec![dev],
                nsid,
                depth,
                std::time::Duration::from_secs(10),
            )?;
            let each = std::time::Duration::from_secs(seconds);
            for r in baton::bench::pcie::sweep(&ns, &qd, each, 64 << 20)? {
                println!(
                    "user-space driver {device}: 4KiB random read QD {}: {:.0} IOPS ({} errors) over {:.1} s",
                    r.qd, r.iops, r.errors, r.seconds
                );
            }
            Ok(())
        }
        Command::SetupPci {
            devices,
            reset,
            hugepages,
            config,
        } => {
            let mut devices = devices;
            if devices.is_empty() {
                if let Some(path) = config {
                    devices = Config::load(&path)?.pci_functions();
                }
            }
            if devices.is_empty() {
                devices = ffi::setup::nvme_functions();
            }
            if devices.is_empty() {
                anyhow::bail!("no NVMe PCI functions found");
            }
            if reset {
                ffi::setup::reset(&devices)?;
                println!("returned to the kernel: {}", devices.join(" "));
            } else {
                ffi::setup::setup(&devices, hugepages)?;
                println!(
                    "bound to vfio-pci: {} ({hugepages} hugepages reserved)",
                    devices.join(" ")
                );
            }
            Ok(())
        }
        Command::BenchStream(args) => baton::bench::stream::run(args),
        Command::Put {
            file,
            name,
            replace,
            stream,
        } => content::put(stream, &file, name, replace),
        Command::Ls { stream } => content::ls(stream),
        Command::Rm { name, stream } => content::rm(stream, &name),
        Command::Fetch {
            name,
            output,
            offset,
            length,
            rate,
            stream,
        } => content::fetch(stream, &name, &output, offset, length, rate),
        Command::BenchSource { listen } => baton::bench::run_source(listen),
        Command::Ctl {
            admin,
            token_file,
            config,
            action,
        } => {
            // Showing needs no token; every action does.
            let read_only = matches!(
                action,
                CtlAction::Ana {
                    action: AnaAction::Show
                }
            );
            let token = if read_only {
                None
            } else {
                Some(ctl_token(token_file, config)?)
            };
            let call = |method: hyper::Method, path: &str| {
                baton::admin::call_with_token(admin, method, path, token.as_deref())
            };
            let act = |path: &str| call(hyper::Method::POST, path);
            match action {
                CtlAction::StopStreams { controller } => {
                    act(&format!("/api/v1/controllers/{controller}/stop-streams"))?;
                    println!("controller {controller}: stream worker stopped");
                }
                CtlAction::DropConnections { controller } => {
                    act(&format!(
                        "/api/v1/controllers/{controller}/drop-connections"
                    ))?;
                    println!("controller {controller}: connections dropped");
                }
                CtlAction::Ana {
                    action: AnaAction::Show,
                } => {
                    let body = baton::admin::call(admin, hyper::Method::GET, "/api/v1/ana")?;
                    let groups: Vec<baton::admin::ana::AnaStatus> = serde_json::from_slice(&body)?;
                    println!("GROUP  CTRL  PORT  STATE            CHGCNT  NAMESPACES");
                    for g in groups {
                        println!(
                            "{:<5}  {:>4}  {:>4}  {:<15}  {:>6}  {}",
                            g.group,
                            g.controller,
                            g.port,
                            g.state,
                            g.chgcnt,
                            g.namespaces.join(", ")
                        );
                    }
                }
                CtlAction::Ana {
                    action:
                        AnaAction::Set {
                            controller,
                            port,
                            group,
                            state,
                        },
                } => {
                    let controller = match (controller, port) {
                        (Some(c), _) => c,
                        (None, Some(0)) => anyhow::bail!("port IDs start at 1"),
                        (None, Some(p)) => usize::from(p - 1),
                        (None, None) => anyhow::bail!("give --controller or --port"),
                    };
                    let body = act(&format!(
                        "/api/v1/controllers/{controller}/ana/{group}/{state}"
                    ))?;
                    print!("{}", String::from_utf8_lossy(&body));
                }
                CtlAction::Host { action } => {
                    let (method, subsystem, host) = match action {
                        HostAction::Add { subsystem, host } => {
                            (hyper::Method::POST, subsystem, host)
                        }
                        HostAction::Remove { subsystem, host } => {
                            (hyper::Method::DELETE, subsystem, host)
                        }
                    };
                    path_segments(&[&subsystem, &host])?;
                    let body = call(
                        method,
                        &format!("/api/v1/subsystems/{subsystem}/hosts/{host}"),
                    )?;
                    print!("{}", String::from_utf8_lossy(&body));
                }
                CtlAction::Subsystem { action } => {
                    let plain = |v: &str| {
                        !v.is_empty()
                            && v.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    };
                    let (method, path) = match action {
                        SubsystemAction::Add {
                            nqn,
                            allow_any_host,
                            serial,
                            model,
                        } => {
                            let mut q = format!("allow_any_host={allow_any_host}");
                            for (k, v) in [("serial", serial), ("model", model)] {
                                if let Some(v) = v {
                                    if !plain(&v) {
                                        anyhow::bail!(
                                            "--{k}: letters, digits, '.', '_' and '-' only"
                                        );
                                    }
                                    q.push_str(&format!("&{k}={v}"));
                                }
                            }
                            path_segments(&[&nqn])?;
                            (hyper::Method::POST, format!("/api/v1/subsystems/{nqn}?{q}"))
                        }
                        SubsystemAction::Remove { nqn } => {
                            path_segments(&[&nqn])?;
                            (hyper::Method::DELETE, format!("/api/v1/subsystems/{nqn}"))
                        }
                    };
                    let body = call(method, &path)?;
                    print!("{}", String::from_utf8_lossy(&body));
                }
                CtlAction::Namespace { action } => {
                    let (method, path) = match action {
                        NamespaceAction::Add {
                            subsystem,
                            nsid,
                            volume,
                            ana_group,
                        } => {
                            path_segments(&[&subsystem])?;
                            if volume.contains(['&', '=', '/', '?', '%', '#']) {
                                anyhow::bail!("volume names contain none of & = / ? % #");
                            }
                            (
                                hyper::Method::POST,
                                format!(
                                    "/api/v1/subsystems/{subsystem}/namespaces/{nsid}\
                                     ?volume={volume}&ana_group={ana_group}"
                                ),
                            )
                        }
                        NamespaceAction::Remove { subsystem, nsid } => {
                            path_segments(&[&subsystem])?;
                            (
                                hyper::Method::DELETE,
                                format!("/api/v1/subsystems/{subsystem}/namespaces/{nsid}"),
                            )
                        }
                    };
                    let body = call(method, &path)?;
                    print!("{}", String::from_utf8_lossy(&body));
                }
            }
            Ok(())
        }
        Command::DefaultConfig => {
            print!("{}", baton::config::EMBEDDED_DEFAULT);
            Ok(())
        }
    }
}

/// Checks that NQNs can stand in an admin API path as they are (the API reads them without
/// percent-decoding).
fn path_segments(nqns: &[&str]) -> anyhow::Result<()> {
    if nqns.iter().any(|n| n.contains(['/', '?', '#', '%'])) {
        anyhow::bail!("NQNs contain none of / ? # %");
    }
    Ok(())
}

/// The admin token for `baton ctl`: `BATON_ADMIN_TOKEN`, `--token-file`, the token of
/// `--config`, or the embedded default's generated token under `./baton-data`.
fn ctl_token(token_file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<String> {
    use baton::admin::auth;
    if let Ok(t) = std::env::var("BATON_ADMIN_TOKEN") {
        return Ok(t);
    }
    let path = match (token_file, config) {
        (Some(f), _) => f,
        (None, Some(c)) => {
            let config = Config::load(&c)?;
            if let Some(t) = &config.admin.token {
                return Ok(t.clone());
            }
            auth::token_path(&config)
        }
        (None, None) => auth::token_path(&Config::embedded_default()),
    };
    auth::read_token_file(&path).with_context(|| {
        format!(
            "reading the admin token from {} (give --token-file, --config or BATON_ADMIN_TOKEN)",
            path.display()
        )
    })
}
