//! `medfed-coordinator`: runs a consortium's training.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medfed_coordinator::{CoordinatorConfig, start};

/// The medfed coordinator: admits consortium nodes, runs federated rounds, checkpoints the model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs (or resumes) training as the configuration describes.
    Run {
        /// The coordinator configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-coordinator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let config = CoordinatorConfig::load(&config)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let running = start(config).await?;
                let report = running.wait().await?;
                println!("training finished after round {}", report.last_round);
                for round in &report.rounds {
                    if let Some(m) = &round.start_model_evaluation {
                        println!(
                            "  model of round {:>3}: held-out AUC {:.4}  accuracy {:.4}  loss {:.4}  ({} examples, {} nodes)",
                            round.round - 1,
                            m.auc.unwrap_or(f64::NAN),
                            m.accuracy,
                            m.loss,
                            m.examples,
                            round.participants.len()
                        );
                    }
                }
                if let Some(m) = &report.final_evaluation {
                    println!(
                        "  model of round {:>3}: held-out AUC {:.4}  accuracy {:.4}  loss {:.4}  ({} examples)  [final]",
                        report.last_round,
                        m.auc.unwrap_or(f64::NAN),
                        m.accuracy,
                        m.loss,
                        m.examples
                    );
                }
                if let Some(path) = &report.checkpoint {
                    println!("final model: {}", path.display());
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
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
