//! `medfed-node`: a hospital's node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medfed_node::trainer::{TchTrainer, set_torch_threads};
use medfed_node::{NodeConfig, credentials, prepare, run};
use medfed_protocol::model::ModelKind;
use medfed_protocol::task::TrainingPlan;

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
    /// Trains on this hospital's data alone and prints the held-out metrics, for comparison with
    /// the consortium's model; sends nothing.
    Local {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Rounds of local training (each `--local-epochs` epochs).
        #[arg(long, default_value_t = 15)]
        rounds: u64,
        /// Epochs per round.
        #[arg(long, default_value_t = 2)]
        local_epochs: u32,
        /// SGD step size.
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f64,
        /// Mini-batch size.
        #[arg(long, default_value_t = 32)]
        batch_size: u32,
        /// Hidden layer widths, comma-separated; empty for logistic regression.
        #[arg(long, value_delimiter = ',', default_value = "32,16")]
        hidden: Vec<usize>,
        /// Seed of the initial model and batch order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
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
            set_torch_threads(config.threads);
            let trainer = TchTrainer::new(config.device).context("cannot start libtorch")?;
            let hospital =
                prepare(&config, Box::new(trainer))?.with_credentials(credentials(&config)?);
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
        Command::Local {
            config,
            rounds,
            local_epochs,
            learning_rate,
            batch_size,
            hidden,
            seed,
        } => {
            let config = NodeConfig::load(&config)?;
            set_torch_threads(config.threads);
            let trainer = TchTrainer::new(config.device).context("cannot start libtorch")?;
            let mut hospital = prepare(&config, Box::new(trainer))?;
            let kind = if hidden.is_empty() {
                ModelKind::LogisticRegression
            } else {
                ModelKind::Mlp { hidden }
            };
            let plan = TrainingPlan {
                local_epochs,
                learning_rate,
                batch_size,
                seed,
            };
            match hospital.local_only(kind, &plan, rounds, seed)? {
                Some(m) => println!(
                    "{}: local-only held-out AUC {:.4}  accuracy {:.4}  loss {:.4}  ({} examples)",
                    config.data.csv.display(),
                    m.auc.unwrap_or(f64::NAN),
                    m.accuracy,
                    m.loss,
                    m.examples
                ),
                None => println!("{}: no held-out examples", config.data.csv.display()),
            }
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
