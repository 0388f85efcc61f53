//! `baton`: the appliance daemon and its command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use baton::config::Config;

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
    /// Serve raw TCP streams (the benchmark's reference; started by `baton bench`).
    #[command(hide = true)]
    BenchSource {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Act on a running appliance.
    Ctl {
        /// The appliance's admin address.
        #[arg(long, default_value = "127.0.0.1:9440", global = true)]
        admin: SocketAddr,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Debug, Subcommand)]
enum CtlAction {
    /// Close every NVMe/TCP connection of one controller (its port keeps listening, so
    /// hosts reconnect; multipath hosts carry on over the other controllers).
    DropConnections {
        /// Controller index (0-based).
        #[arg(long)]
        controller: usize,
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
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::embedded_default(),
            };
            baton::logging::init(&config.logging);
            baton::serve::run(config).context("serve")
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
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
        Command::BenchSource { listen } => baton::bench::run_source(listen),
        Command::Ctl { admin, action } => match action {
            CtlAction::DropConnections { controller } => {
                let path = format!("/api/v1/controllers/{controller}/drop-connections");
                baton::admin::call(admin, hyper::Method::POST, &path)?;
                println!("controller {controller}: connections dropped");
                Ok(())
            }
        },
        Command::DefaultConfig => {
            print!("{}", baton::config::EMBEDDED_DEFAULT);
            Ok(())
        }
    }
}
