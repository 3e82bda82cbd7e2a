//! `medfed-node`: a hospital's node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medfed_node::trainer::TchTrainer;
use medfed_node::{NodeConfig, prepare, run};

/// A medfed hospital node: trains on local patient data and sends only aggregate-ready figures.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates the data, then joins the consortium's training until it finishes.
    Run {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validates the data against the schema and prints its size; sends nothing.
    Check {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    match run_cli() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run { config } => {
            let config = NodeConfig::load(&config)?;
            let trainer = TchTrainer::new(config.device).context("cannot start libtorch")?;
            let hospital = prepare(&config, Box::new(trainer))?;
            let (train, held_out) = hospital.sizes();
            tracing::info!(train, held_out, csv = %config.data.csv.display(), "data validated");
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let outcome = runtime.block_on(run(&config, hospital))?;
            println!(
                "{}: training finished after round {}; final model {}",
                outcome.identity, outcome.last_round, outcome.model_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = NodeConfig::load(&config)?;
            let trainer = TchTrainer::new(medfed_node::trainer::ComputeDevice::Cpu)?;
            let hospital = prepare(&config, Box::new(trainer))?;
            let (train, held_out) = hospital.sizes();
            println!(
                "{}: valid; {train} training and {held_out} held-out rows",
                config.data.csv.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
