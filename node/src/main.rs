//! `medfed-node`: a hospital's node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use medfed_audit::checkpoint::read_model_file;
use medfed_certs::{MemberList, coordinator_report_key};
use medfed_node::check::{CheckReport, schema_differences};
use medfed_node::config::PrivacyMode;
use medfed_node::data::{Holdout, LabelColumn, ReadOptions, load_split, read_rows};
use medfed_node::egress::{EgressLog, EgressTotals};
use medfed_node::ledger::{LedgerEntry, PrivacyLedger, Release, epsilon_of, local_epsilon_of};
use medfed_node::plan::forecast;
use medfed_node::policy::PolicyGate;
use medfed_node::predict;
use medfed_node::releases::ReleaseRecord;
use medfed_node::trainer::{NoTrainer, Trainer};
#[cfg(feature = "torch")]
use medfed_node::trainer::{TchTrainer, set_torch_threads};
use medfed_node::validation::{self, SiteValidation};
use medfed_node::{NodeConfig, StateLock, load_schema, prepare, prepare_node, run};
use medfed_protocol::accounting::{self, Accountant, Mechanism};
use medfed_protocol::evaluation::EvalCounts;
use medfed_protocol::manifest::SignedManifest;
use medfed_protocol::model::ModelKind;
use medfed_protocol::schema::Schema;
use medfed_protocol::task::TrainingPlan;
use medfed_telemetry::LogFormat;

/// A medfed hospital node: trains on local patient data and sends only aggregate-ready figures.
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
        /// Hidden layer widths, comma-separated; empty (`--hidden ""`) for logistic regression.
        #[arg(long, default_value = "32,16", value_parser = parse_widths)]
        hidden: Widths,
        /// Seed of the initial model and batch order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Prints the privacy ledger (every private release and the ε spent), or plans a budget.
    Privacy {
        /// The node configuration (TOML), to print its ledger.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Plan a budget instead.
        #[command(subcommand)]
        action: Option<PrivacyAction>,
    },
    /// Where this hospital stands, from its state folder (works while the node runs): privacy
    /// budget spent and left, rounds contributed to, when it last sent anything, egress totals.
    Status {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Prints the egress log: every message that left this node, with totals.
    Egress {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Prints, before joining, what this node would release under a task manifest and its own
    /// policy: the figures and bytes of every round, the ε each would cost, and whether the
    /// policy accepts the manifest (exit status 2 if it does not). Sends nothing.
    Plan {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The signed task manifest (`medfed-coordinator manifest`, or the coordinator's
        /// `manifest.json`).
        #[arg(long)]
        manifest: PathBuf,
        /// The coordinator's certificate: check the manifest's signature with its key (the
        /// certificate is checked against the consortium CA of the node's configuration).
        #[arg(long)]
        coordinator_cert: Option<PathBuf>,
        /// Print JSON, for machines.
        #[arg(long)]
        json: bool,
    },
    /// Scores patients with a consortium model file (the released `model.safetensors`, or a
    /// round's checkpoint): reads them with the model's schema, encodes and standardises them
    /// as training did, and writes each row's score and class at the model's threshold; rows
    /// that cannot be encoded go to an errors file with the reason. Sends nothing.
    Predict {
        /// The model file (safetensors, as the coordinator writes it).
        #[arg(long)]
        model: PathBuf,
        /// The patients to score: a CSV with the schema's columns (the label is optional; when
        /// present, the metrics against it are printed).
        #[arg(long, required_unless_present = "held_out")]
        csv: Option<PathBuf>,
        /// Score this node's own held-out patients instead, exactly those its evaluation uses
        /// (`[data]` of `--config`: the random fraction, the rows its split column names, or
        /// its held-out file).
        #[arg(long, conflicts_with = "csv", requires = "config")]
        held_out: bool,
        /// The node configuration (TOML): required with `--held-out`; with `--csv`, its device,
        /// threads and approved TorchScript modules (a TorchScript model needs it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write the scores (CSV: row, id, score, class[, label]).
        #[arg(long)]
        out: PathBuf,
        /// Where to write the rows not scored, with why (default: next to `--out`, ending in
        /// `.errors.csv`).
        #[arg(long)]
        errors: Option<PathBuf>,
        /// A column copied into the scores as each row's identifier (default: the schema's
        /// first `drop` column, when the file has it).
        #[arg(long)]
        id: Option<String>,
    },
    /// Writes a model file as ONNX with the preprocessing inside (one input per schema column,
    /// `[N, 1]`: float for a numeric column, NaN when missing; string for a categorical one),
    /// so that a hospital's own tooling can score with it; its output `score` is the
    /// probability of the positive class. Sends nothing.
    Export {
        /// The model file (safetensors, as the coordinator writes it).
        #[arg(long)]
        model: PathBuf,
        /// Where to write the ONNX model.
        #[arg(long)]
        onnx: PathBuf,
    },
    /// Prints the hospital's own validation record: every model the consortium sent, scored on
    /// this site's held-out patients (exact figures, kept on site, never sent). Given several
    /// nodes' configurations — an operator simulating a consortium holds them all — it also
    /// prints their pooled figures, which no real coordinator can compute.
    Validation {
        /// A node configuration (TOML); repeat for several nodes.
        #[arg(long, required = true)]
        config: Vec<PathBuf>,
        /// Only the latest model of each record (the final model, once training is over).
        #[arg(long)]
        latest: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Checks the data against the schema and lists every problem at once (up to --limit, all
    /// counted per column and reason), then the rows read and kept, the prevalence of the
    /// positive label, the rows and positives of each audit group and the schema's digest.
    /// Exit status 1 if any problem is found (or the compared schema differs). Sends nothing.
    Check {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Another schema (the consortium's, say) to compare with this node's: prints which
        /// parts differ.
        #[arg(long, value_name = "OTHER.toml")]
        compare_schema: Option<PathBuf>,
        /// How many problems to list (all are counted).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyAction {
    /// ε for a DP-SGD plan (or, with --target-epsilon, the noise multiplier it needs). The last
    /// line printed is the bare number.
    Estimate {
        /// Poisson sampling rate q (batch size / examples).
        #[arg(long)]
        sample_rate: f64,
        /// Noise multiplier σ.
        #[arg(
            long,
            conflicts_with = "target_epsilon",
            required_unless_present = "target_epsilon"
        )]
        noise_multiplier: Option<f64>,
        /// Target ε: print the σ needed instead.
        #[arg(long)]
        target_epsilon: Option<f64>,
        /// Number of DP-SGD steps.
        #[arg(long)]
        steps: u64,
        /// δ.
        #[arg(long)]
        delta: f64,
        /// The accountant: `rdp` (Rényi DP, the figure Opacus reports) or `pld` (privacy loss
        /// distributions, as dp_accounting: a tighter figure).
        #[arg(long, default_value = "rdp")]
        accountant: Accountant,
    },
}

/// Exit status of `run` when the consortium finished but this hospital contributed to none of
/// its rounds (every request declined, say, for the hospital's privacy budget or policy).
const NO_ROUND_JOINED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    medfed_telemetry::init_logging(cli.log_format);
    match run_cli(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medfed-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = NodeConfig::load(&config)?;
            // One process per hospital: before anything else, and held until this process exits.
            let _state_lock = StateLock::acquire(&config.state_dir)?;
            let trainer = libtorch_trainer(&config, "run")?;
            let hospital = prepare_node(&config, trainer)?;
            match (&config.privacy, hospital.privacy_spent()) {
                (Some(privacy), Some(spent)) => tracing::info!(
                    target_epsilon = privacy.target_epsilon,
                    delta = privacy.delta,
                    spent = spent.epsilon,
                    statistics_noise = privacy.statistics.noise,
                    "DP-SGD on"
                ),
                _ => tracing::warn!("no [privacy] section: training is NOT differentially private"),
            }
            let (train, held_out) = hospital.sizes();
            tracing::info!(train, held_out, csv = %config.data.csv.display(), "data validated");
            // For the hospital's eyes only: what the statistics round will clip (never sent).
            for clipped in hospital.clipped_values()?.iter().filter(|c| c.total() > 0) {
                tracing::info!(
                    column = %clipped.column,
                    below = clipped.below,
                    above = clipped.above,
                    "training values outside the schema's range: the statistics clip them (these counts are not sent)"
                );
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let started_ms = medfed_node::egress::now_ms();
            let outcome = runtime.block_on(run(&config, hospital))?;
            let egress = EgressLog::read(&config.state_dir).with_context(|| {
                format!(
                    "cannot read the egress log in {}",
                    config.state_dir.display()
                )
            })?;
            let joined = medfed_node::egress::rounds_contributed(&egress, started_ms);
            if joined.is_empty() {
                println!(
                    "{}: the consortium finished after round {}, but this hospital contributed to no round in this run (each request was declined or never came: see the log); final model {}",
                    outcome.identity, outcome.last_round, outcome.model_hash
                );
                return Ok(ExitCode::from(NO_ROUND_JOINED));
            }
            println!(
                "{}: training finished after round {}; this hospital contributed to {} of its rounds; final model {}",
                outcome.identity,
                outcome.last_round,
                joined.len(),
                outcome.model_hash
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
            let trainer = libtorch_trainer(&config, "local")?;
            let mut hospital = prepare(&config, trainer)?;
            let Widths(hidden) = hidden;
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
                pos_weight: 1.0,
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
        Command::Privacy { config, action } => {
            match (action, config) {
                (
                    Some(PrivacyAction::Estimate {
                        accountant,
                        sample_rate,
                        noise_multiplier,
                        target_epsilon,
                        steps,
                        delta,
                    }),
                    _,
                ) => estimate(
                    accountant,
                    sample_rate,
                    noise_multiplier,
                    target_epsilon,
                    steps,
                    delta,
                )?,
                (None, Some(config)) => print_ledger(&NodeConfig::load(&config)?)?,
                (None, None) => {
                    anyhow::bail!("give --config to print the ledger, or use `privacy estimate`")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let config = NodeConfig::load(&config)?;
            let status = medfed_node::status::NodeStatus::read(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Egress { config } => {
            let config = NodeConfig::load(&config)?;
            let entries = EgressLog::read(&config.state_dir)?;
            println!(
                "{:<24} {:>6} {:<22} {:>10}  sha256",
                "time (unix ms)", "round", "kind", "bytes"
            );
            for e in &entries {
                let round = e.round.map_or_else(|| "-".to_owned(), |r| r.to_string());
                println!(
                    "{:<24} {:>6} {:<22} {:>10}  {}",
                    e.time_ms, round, e.kind, e.bytes, e.sha256
                );
            }
            let totals = EgressTotals::of(&entries);
            println!();
            for (kind, messages, bytes) in &totals.by_kind {
                println!("{kind:<22} {messages:>6} messages {bytes:>12} bytes");
            }
            println!(
                "{:<22} {:>6} messages {:>12} bytes",
                "total", totals.messages, totals.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            config,
            manifest,
            coordinator_cert,
            json,
        } => {
            let config = NodeConfig::load(&config)?;
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let signed = SignedManifest::from_json(&text)
                .with_context(|| format!("{}", manifest.display()))?;
            if let Some(cert) = &coordinator_cert {
                let key = coordinator_report_key(cert, &config.tls.ca_cert)?;
                signed
                    .verify(&key)
                    .with_context(|| format!("{}", manifest.display()))?;
            }
            // Read only: the state folder is neither created nor locked, so a running node's
            // operator can plan its next task.
            let members = config
                .policy
                .members
                .as_deref()
                .map(MemberList::load)
                .transpose()?;
            let gate = PolicyGate::new(config.policy.clone(), members, HashMap::new());
            // A forecast computes nothing on the data: no libtorch.
            let hospital = prepare(&config, Box::new(NoTrainer))?
                .with_policy(gate, ReleaseRecord::in_memory());
            let entries = match &config.privacy {
                Some(_) => PrivacyLedger::read(&config.state_dir)?,
                None => Vec::new(),
            };
            let privacy = config.privacy.as_ref().map(|p| (p, entries.as_slice()));
            let forecast = forecast(
                &hospital,
                &signed.manifest,
                privacy,
                coordinator_cert.is_some(),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&forecast)?);
            } else {
                print!("{}", forecast.to_text());
            }
            Ok(if forecast.accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Predict {
            model,
            csv,
            held_out: _,
            config,
            out,
            errors,
            id,
        } => {
            let errors = errors.unwrap_or_else(|| out.with_extension("errors.csv"));
            predict_patients(&model, csv.as_deref(), config.as_deref(), &out, &errors, id)
        }
        Command::Export { model, onnx } => {
            let file = read_model_file(&model)
                .with_context(|| format!("cannot read model file {}", model.display()))?;
            let bytes = medfed_audit::onnx::to_onnx(&file)
                .with_context(|| format!("cannot export {}", model.display()))?;
            std::fs::write(&onnx, bytes)
                .with_context(|| format!("cannot write {}", onnx.display()))?;
            println!(
                "{}: the model of round {} as ONNX (opset {}), preprocessing inside; output `{}`",
                onnx.display(),
                file.round,
                medfed_audit::onnx::OPSET,
                medfed_audit::onnx::OUTPUT
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validation {
            config,
            latest,
            json,
        } => {
            print_validation(&config, latest, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            compare_schema,
            limit,
        } => check(
            &NodeConfig::load(&config)?,
            compare_schema.as_deref(),
            limit,
        ),
    }
}

/// `medfed-node predict`: scores the patients of `csv`, or the held-out patients of the node
/// configured in `config`, with the model file `model`.
fn predict_patients(
    model: &Path,
    csv: Option<&Path>,
    config: Option<&Path>,
    out: &Path,
    errors: &Path,
    id: Option<String>,
) -> anyhow::Result<ExitCode> {
    let file = read_model_file(model)
        .with_context(|| format!("cannot read model file {}", model.display()))?;
    let scoring = predict::scoring_of(&file, model)?;
    let schema = &scoring.schema;
    let options = |source: &Path, label| -> anyhow::Result<ReadOptions> {
        let id_column = match id.clone() {
            Some(id) => Some(id),
            None => first_dropped_column_in(source, schema)?,
        };
        Ok(ReadOptions {
            label,
            id_column,
            ..ReadOptions::default()
        })
    };
    let (dataset, problems, mut trainer, source, id_column) = match (csv, config) {
        (Some(csv), config) => {
            let options = options(csv, LabelColumn::Optional)?;
            let (dataset, problems) = read_rows(csv, schema, &options)?;
            // With `--config`, its device, threads and approved TorchScript modules: a
            // TorchScript model scores only through a module the hospital approved.
            let config = config.map(NodeConfig::load).transpose()?;
            let trainer = scoring_trainer(config.as_ref())?;
            (
                dataset,
                problems,
                trainer,
                csv.to_owned(),
                options.id_column,
            )
        }
        (None, Some(config)) => {
            let config = NodeConfig::load(config)?;
            let own = load_schema(&config.data.schema)?;
            anyhow::ensure!(
                own.digest() == schema.digest(),
                "this node's schema {} differs from the schema model file {} was trained with",
                config.data.schema.display(),
                model.display()
            );
            // The rows scored come from the held-out file when there is one; the id column
            // is looked for there.
            let source = match &config.data.holdout {
                Holdout::File(path) => path.clone(),
                _ => config.data.csv.clone(),
            };
            let options = options(&source, LabelColumn::Required)?;
            // The very split training uses, read as strictly: a valid file only.
            let (_, held_out) =
                load_split(&config.data.csv, &config.data.holdout, schema, &options)?;
            let trainer = scoring_trainer(Some(&config))?;
            (held_out, Vec::new(), trainer, source, options.id_column)
        }
        (None, None) => anyhow::bail!("give --csv, or --held-out with --config"),
    };
    let scored = predict::score(&file.model, scoring, &dataset, trainer.as_mut())?;
    predict::write_scores(out, &dataset, &scored, scoring, id_column.as_deref())?;
    predict::write_problems(errors, &problems)?;
    println!(
        "{}: scored {} rows with the model of round {} (decision threshold {}): {} flagged positive; {} rows not scored",
        source.display(),
        scored.scores.len(),
        file.round,
        scoring.decision_threshold,
        scored.flagged,
        problems.len(),
    );
    if let Some(m) = &scored.metrics {
        println!(
            "  against the file's labels: AUC {:.4}  accuracy {:.4}  loss {:.4}  ({} patients)",
            m.auc.unwrap_or(f64::NAN),
            m.accuracy,
            m.loss,
            m.examples
        );
    }
    match &file.audit {
        Some(audit) => println!(
            "  audited: report {} ({})",
            audit.report_sha256,
            if audit.approved {
                "APPROVED"
            } else {
                "NOT APPROVED"
            }
        ),
        None => println!(
            "  this file names no audit report (a round's checkpoint: its report names it)"
        ),
    }
    println!(
        "scores: {}  rows not scored: {}",
        out.display(),
        errors.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The first of the schema's `drop` columns that the header of `csv` names, if any.
fn first_dropped_column_in(csv: &Path, schema: &Schema) -> anyhow::Result<Option<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(csv)
        .with_context(|| format!("cannot read {}", csv.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("cannot read the header of {}", csv.display()))?;
    Ok(schema
        .dropped()
        .iter()
        .find(|d| header.iter().any(|h| h == d.as_str()))
        .cloned())
}

/// The trainer that scores: libtorch's forward pass (on the node's device, with `config`), the
/// one the node's evaluation uses; without libtorch, [`NoTrainer`], and `predict` falls back to
/// the model's own forward pass.
fn scoring_trainer(config: Option<&NodeConfig>) -> anyhow::Result<Box<dyn Trainer>> {
    #[cfg(feature = "torch")]
    {
        if let Some(config) = config {
            let mut trainer = libtorch_trainer(config, "predict")?;
            trainer.approve_modules(config.policy.approved_modules.clone());
            return Ok(trainer);
        }
        let trainer = TchTrainer::new(medfed_node::trainer::ComputeDevice::Cpu)
            .context("cannot start libtorch")?;
        Ok(Box::new(trainer))
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = config;
        Ok(Box::new(NoTrainer))
    }
}

/// `medfed-node check`: every problem of the node's CSV on stderr (up to `limit`), the report on
/// stdout, and the differences from the schema at `compare`; success only when there is no
/// problem and no difference. Checking trains nothing: no libtorch.
fn check(config: &NodeConfig, compare: Option<&Path>, limit: usize) -> anyhow::Result<ExitCode> {
    let schema = load_schema(&config.data.schema)?;
    let holdout = &config.data.holdout;
    holdout.check_schema(&schema)?;
    let options = holdout.read_options(&ReadOptions::default());
    let (dataset, problems) = read_rows(&config.data.csv, &schema, &options)?;
    // Under a held-out file, that file is checked too, with its own report.
    let held_out_file = match holdout {
        Holdout::File(path) => Some((path.clone(), read_rows(path, &schema, &options)?)),
        _ => None,
    };
    // The split of the rows kept, by the one function training and `predict` use. A split
    // refused (no training or no held-out row) may come of rows left out for their problems:
    // those are listed first.
    let split = holdout.split(
        &config.data.csv,
        dataset.clone(),
        held_out_file.as_ref().map(|(_, (rows, _))| rows.clone()),
    );
    let (train, held_out) = match split {
        Ok(split) => split,
        Err(error) => {
            let files = std::iter::once((&config.data.csv, &problems)).chain(
                held_out_file
                    .as_ref()
                    .map(|(path, (_, problems))| (path, problems)),
            );
            for (path, problems) in files {
                for problem in problems.iter().take(limit) {
                    eprintln!("{}: {problem}", path.display());
                }
            }
            return Err(error.into());
        }
    };
    let mut reports = Vec::new();
    match held_out_file {
        Some((path, (rows, problems_there))) => {
            reports.push(CheckReport::new(
                &config.data.csv,
                &schema,
                &dataset,
                problems,
                (train.len(), 0),
            ));
            reports.push(CheckReport::new(
                &path,
                &schema,
                &rows,
                problems_there,
                (0, held_out.len()),
            ));
        }
        None => reports.push(CheckReport::new(
            &config.data.csv,
            &schema,
            &dataset,
            problems,
            (train.len(), held_out.len()),
        )),
    }
    let mut clean = true;
    for report in &reports {
        for line in report.problem_lines(limit) {
            eprintln!("{line}");
        }
        print!("{}", report.to_text());
        clean &= report.is_clean();
    }
    println!(
        "split: {} training and {} held-out rows; held out: {holdout}",
        train.len(),
        held_out.len()
    );
    if let Some(path) = compare {
        let other = load_schema(path)?;
        println!(
            "compared with {}: schema digest {}",
            path.display(),
            hex::encode(other.digest())
        );
        let differences = schema_differences(&schema, &other);
        if differences.is_empty() {
            println!("  the same schema");
        }
        for difference in &differences {
            println!("  differs: {difference}");
        }
        clean &= differences.is_empty();
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The libtorch trainer that `command` needs, with the configuration's threads and device.
#[cfg(feature = "torch")]
fn libtorch_trainer(config: &NodeConfig, _command: &str) -> anyhow::Result<Box<dyn Trainer>> {
    set_torch_threads(config.threads);
    let trainer = TchTrainer::new(config.device).context("cannot start libtorch")?;
    Ok(Box::new(trainer))
}

/// A build without the `torch` feature has no libtorch: `command`, which trains, is refused.
#[cfg(not(feature = "torch"))]
fn libtorch_trainer(_config: &NodeConfig, command: &str) -> anyhow::Result<Box<dyn Trainer>> {
    anyhow::bail!(
        "`medfed-node {command}` trains models, but this build has no libtorch (built without the `torch` feature); rebuild medfed-node with its default features"
    )
}

/// Hidden layer widths from the command line.
#[derive(Clone, Debug)]
struct Widths(Vec<usize>);

/// `--hidden`: comma-separated widths, or nothing at all for no hidden layer.
fn parse_widths(text: &str) -> Result<Widths, String> {
    if text.trim().is_empty() {
        return Ok(Widths(Vec::new()));
    }
    text.split(',')
        .map(|width| match width.trim().parse::<usize>() {
            Ok(width) if width > 0 => Ok(width),
            _ => Err(format!("{width:?} is not a positive layer width")),
        })
        .collect::<Result<_, _>>()
        .map(Widths)
}

/// Prints ε (or the σ needed for a target ε) for a DP-SGD plan under `accountant`; the last line
/// is the bare number.
fn estimate(
    accountant: Accountant,
    sample_rate: f64,
    noise_multiplier: Option<f64>,
    target_epsilon: Option<f64>,
    steps: u64,
    delta: f64,
) -> anyhow::Result<()> {
    match (noise_multiplier, target_epsilon) {
        (Some(sigma), _) => {
            let plan = Mechanism::SubsampledGaussian {
                sample_rate,
                noise_multiplier: sigma,
                steps,
            };
            let epsilon = accounting::epsilon(accountant, &[plan], delta)?;
            println!(
                "q = {sample_rate}, σ = {sigma}, {steps} steps, δ = {delta}: ε = {epsilon:.6} ({accountant} accountant)"
            );
            println!("{epsilon}");
        }
        (None, Some(target)) => {
            let sigma = accounting::noise_multiplier_for(
                accountant,
                target,
                delta,
                &[],
                sample_rate,
                steps,
            )?;
            println!(
                "q = {sample_rate}, {steps} steps, δ = {delta}: ε ≤ {target} needs σ = {sigma:.6} ({accountant} accountant)"
            );
            println!("{sigma}");
        }
        (None, None) => anyhow::bail!("give --noise-multiplier or --target-epsilon"),
    }
    Ok(())
}

/// Prints the node's privacy ledger and the ε spent.
fn print_ledger(config: &NodeConfig) -> anyhow::Result<()> {
    let entries = PrivacyLedger::read(&config.state_dir)?;
    println!(
        "{:<16} {:>6} {:<17} {:>7} {:>9} {:>8} {:>9} {:>10} {:>4}",
        "time (unix ms)", "round", "release", "steps", "q", "sigma", "delta", "eps after", "acct"
    );
    for e in &entries {
        println!(
            "{:<16} {:>6} {:<17} {:>7} {:>9.5} {:>8.4} {:>9.1e} {:>10.4} {:>4}",
            e.time_ms,
            e.round,
            e.release.as_str(),
            e.steps,
            e.sample_rate,
            e.noise_multiplier,
            e.delta,
            e.epsilon_after,
            e.accountant
        );
    }
    match &config.privacy {
        Some(policy) => {
            let accountant = policy.accountant;
            // Each kind of release alone, then all of them composed (ε does not add up).
            for release in Release::ALL {
                let of_kind: Vec<LedgerEntry> = entries
                    .iter()
                    .filter(|e| e.release == release)
                    .cloned()
                    .collect();
                if !of_kind.is_empty() {
                    let alone = epsilon_of(&of_kind, &[], accountant, policy.delta)?;
                    println!(
                        "{:<17} {:>3} releases: ε = {alone:.4} alone",
                        release.as_str(),
                        of_kind.len()
                    );
                }
            }
            let spent = epsilon_of(&entries, &[], accountant, policy.delta)?;
            let distributed = policy.mode == PrivacyMode::Distributed
                || entries.iter().any(|e| !e.local_mechanisms.is_empty());
            println!(
                "spent{}: ε = {spent:.4} of {} at δ = {} ({accountant} accountant, every entry composed)",
                if distributed { " (central)" } else { "" },
                policy.target_epsilon,
                policy.delta
            );
            if distributed {
                // The same entries with each distributed round's own noise share in place of
                // the sum's: the guarantee against the other hospitals colluding with the
                // coordinator.
                let local = local_epsilon_of(&entries, &[], accountant, policy.delta)?;
                println!(
                    "spent (local): ε = {local:.4}{} at δ = {} (this node's noise shares alone)",
                    policy
                        .max_local_epsilon
                        .map_or_else(String::new, |cap| format!(" of {cap}")),
                    policy.delta
                );
            }
        }
        None => println!(
            "this node has no [privacy] policy: its training is not differentially private"
        ),
    }
    Ok(())
}

/// Prints the validation records of the nodes configured in `configs` (with `latest`, only each
/// record's last model) and, for several, their pooled figures.
fn print_validation(configs: &[PathBuf], latest: bool, json: bool) -> anyhow::Result<()> {
    let mut records = Vec::with_capacity(configs.len());
    for path in configs {
        let config = NodeConfig::load(path)?;
        let mut entries = SiteValidation::read(&config.state_dir)
            .with_context(|| format!("the validation record of {}", path.display()))?;
        if latest {
            entries = entries.split_off(entries.len().saturating_sub(1));
        }
        records.push(entries);
    }
    let pooled = if records.len() > 1 {
        validation::pooled(&records)
    } else {
        Vec::new()
    };
    if json {
        let row = |round: u64, model: &str, counts: Option<EvalCounts>| {
            serde_json::json!({
                "round": round,
                "model": model,
                "metrics": counts.as_ref().and_then(EvalCounts::metrics),
            })
        };
        let sites: Vec<_> = configs
            .iter()
            .zip(&records)
            .map(|(path, entries)| {
                serde_json::json!({
                    "config": path,
                    "models": entries
                        .iter()
                        .map(|e| row(e.round, &e.model, e.counts()))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let pooled: Vec<_> = pooled
            .iter()
            .map(|p| row(p.round, &p.model, Some(p.counts.clone())))
            .collect();
        let out = serde_json::json!({ "sites": sites, "pooled": pooled });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("each model on this site's held-out patients (exact; kept on site, never sent)");
    for (path, entries) in configs.iter().zip(&records) {
        println!("{}", path.display());
        print_validation_rows(
            entries
                .iter()
                .map(|e| (e.round, e.model.as_str(), e.counts())),
        );
    }
    if records.len() > 1 {
        println!(
            "pooled over these {} sites' records (a simulation: no coordinator can compute this)",
            records.len()
        );
        print_validation_rows(
            pooled
                .iter()
                .map(|p| (p.round, p.model.as_str(), Some(p.counts.clone()))),
        );
    }
    Ok(())
}

/// One table of validation figures: a row per model.
fn print_validation_rows<'a>(rows: impl Iterator<Item = (u64, &'a str, Option<EvalCounts>)>) {
    println!(
        "  {:>6}  {:<12}  {:>8}  {:>7}  {:>7}  {:>8}",
        "round", "model", "patients", "AUC", "loss", "accuracy"
    );
    for (round, model, counts) in rows {
        let short = model.get(..12).unwrap_or(model);
        match counts.as_ref().and_then(EvalCounts::metrics) {
            Some(m) => println!(
                "  {round:>6}  {short:<12}  {:>8}  {:>7.4}  {:>7.4}  {:>8.4}",
                m.examples,
                m.auc.unwrap_or(f64::NAN),
                m.loss,
                m.accuracy
            ),
            None => println!("  {round:>6}  {short:<12}  no held-out patients"),
        }
    }
}
