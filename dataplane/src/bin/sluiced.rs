//! `sluiced`: the per-host Sluice daemon. See `sluice_dataplane::daemon`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice_dataplane::{config::Config, daemon};

#[derive(Parser)]
#[command(name = "sluiced", version, about = "Sluice XDP dataplane daemon")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// The YAML configuration to run with.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Remove the pinned links (detaching XDP) and maps of a stopped daemon.
    Teardown {
        /// The daemon's pin_dir.
        #[arg(long, value_name = "DIR")]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Teardown { pin_dir }), _) => daemon::teardown(&pin_dir),
        (None, Some(path)) => Config::from_file(&path)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
            .and_then(daemon::run),
        (None, None) => {
            eprintln!("sluiced: nothing to do: pass --config FILE, or `teardown --pin-dir DIR`");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluiced: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
