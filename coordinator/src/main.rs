//! `medfed-coordinator`: runs a consortium's training.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medfed_coordinator::manifest::signed_manifest;
use medfed_coordinator::{CoordinatorConfig, start};
use medfed_protocol::schema::Schema;
use medfed_telemetry::LogFormat;
use tracing::info;

/// The medfed coordinator: admits consortium nodes, runs federated rounds, checkpoints the model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The log's format on standard error: `text` for people (coloured only on a terminal,
    /// and never with NO_COLOR set) or `json`, one object per line, for machines.
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
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
    /// Where the run stands: read from the state folder's `summary.json` and its SQLite state,
    /// while the coordinator runs or after. Exits 0 whether or not it runs.
    Status {
        /// The coordinator configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Builds and signs the task manifest the configuration describes, prints it (JSON) and,
    /// with --out, writes it; trains nothing. Hospitals check it with `medfed-node plan`.
    Manifest {
        /// The coordinator configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Also write the signed manifest to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    medfed_telemetry::init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-coordinator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status { config, json } => {
            let config = CoordinatorConfig::load(&config)?;
            let status = medfed_coordinator::status::read_status(&config.data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Manifest { config, out } => {
            let config = CoordinatorConfig::load(&config)?;
            let text = std::fs::read_to_string(&config.schema)
                .with_context(|| format!("cannot read schema {}", config.schema.display()))?;
            let schema = Schema::parse(&text)
                .with_context(|| format!("schema {}", config.schema.display()))?;
            let signed = signed_manifest(&config, &schema)?;
            let json = signed.to_json();
            println!("{json}");
            if let Some(out) = out {
                std::fs::write(&out, &json)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!(
                    "manifest {} written to {}",
                    signed.manifest.digest(),
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let config = CoordinatorConfig::load(&config)?;
            let dashboard = config.dashboard.is_some();
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let running = start(config).await?;
                let report = running.wait().await?;
                println!("training finished after round {}", report.last_round);
                if let Some(why) = &report.stopped_early {
                    println!("  {why}");
                }
                if report.earlier_rounds > 0 {
                    println!(
                        "  (not listed: the {} earlier rounds of this run; each round's evaluation is in its audit report)",
                        report.earlier_rounds
                    );
                }
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
                if let Some((path, round)) = &report.released {
                    println!(
                        "released model (round {round}, ready to score with `medfed-node predict`): {}",
                        path.display()
                    );
                }
                let received: u64 = report.bytes_received.values().sum();
                info!(
                    nodes = report.bytes_received.len(),
                    bytes = received,
                    "bytes received from the nodes in this run"
                );
                log_resource_usage();
                if dashboard {
                    // The dashboard's event streams carry the final summary before the
                    // process (and with it the dashboard) ends.
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// Logs this process's peak resident memory and CPU time (Linux only; elsewhere nothing is
/// logged). The load harness reads this line.
fn log_resource_usage() {
    let usage = medfed_coordinator::console::process::ProcessUsage::now();
    if let (Some(peak), Some(user), Some(system)) = (
        usage.peak_rss_bytes,
        usage.cpu_user_secs,
        usage.cpu_system_secs,
    ) {
        info!(
            peak_rss_kib = peak / 1024,
            cpu_user_secs = user,
            cpu_system_secs = system,
            "resource usage"
        );
    }
}
