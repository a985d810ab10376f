//! `sluicectl`: the operator CLI for a running `sluiced`, speaking its HTTP API.

mod table;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_dataplane::{
    api::{StatsJson, StatusJson},
    client::{self, ApiAddr},
    config::DEFAULT_API,
};

#[derive(Parser)]
#[command(name = "sluicectl", version, about = "Inspect a running sluiced")]
struct Cli {
    /// The daemon's API: unix:/path/to/api.sock or host:port.
    #[arg(long, global = true, env = "SLUICE_API", default_value = DEFAULT_API)]
    api: ApiAddr,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Version, pin directory, uptime and attached interfaces.
    Status,
    /// Packet and byte counters by reason.
    Stats,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicectl: error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluicectl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<String> {
    let path = match cli.command {
        Command::Status => "/v1/status",
        Command::Stats => "/v1/stats",
    };
    if cli.output == Output::Json {
        // The daemon's JSON as is, pretty-printed.
        let value: serde_json::Value = client::get_json(&cli.api, path).await?;
        return Ok(format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    Ok(match cli.command {
        Command::Status => table::status(&client::get_json::<StatusJson>(&cli.api, path).await?),
        Command::Stats => table::stats(&client::get_json::<StatsJson>(&cli.api, path).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn api_and_output_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "sluicectl",
            "stats",
            "--api",
            "unix:/run/sluice/a/api.sock",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.api, ApiAddr::Unix("/run/sluice/a/api.sock".into()));
        assert!(cli.output == Output::Json);
        assert!(matches!(cli.command, Command::Stats));
    }

    #[test]
    fn bad_api_is_a_usage_error_naming_it() {
        let e = Cli::try_parse_from(["sluicectl", "--api", "nonsense", "status"])
            .err()
            .expect("rejected")
            .to_string();
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn unreachable_daemon_error_names_the_address() {
        let cli = Cli::try_parse_from([
            "sluicectl",
            "--api",
            "unix:/nonexistent/sluicectl-test.sock",
            "status",
        ])
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = format!("{:#}", rt.block_on(run(&cli)).unwrap_err());
        assert!(e.contains("unix:/nonexistent/sluicectl-test.sock"), "{e}");
    }
}
