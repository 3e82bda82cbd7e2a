//! The coordinator's training loop: federated statistics, then training rounds, then a final
//! evaluation, each driven as parallel request/answer exchanges with the connected nodes.
//!
//! A round is applied whole or not at all: the new model's checkpoint is written atomically, and
//! only then is the round marked completed in SQLite, in one transaction with the optimiser
//! state. A coordinator restarted after a crash resumes after the last completed round.

mod apply;
mod driver;
mod error;
mod model_card;
mod release;
mod rounds;
mod site;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use medfed_audit::bias::AttributeAudit;
use medfed_audit::checkpoint::read_checkpoint;
use medfed_audit::model_file::Scoring;
use medfed_audit::reports::ReportWriter;
use medfed_certs::{ConsortiumVerifier, MemberList, load_report_signing_key};
use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::manifest::TaskManifest;
use medfed_protocol::messages::CLOSE_TASK_STOPPED;
use medfed_protocol::model::Model;
use medfed_protocol::report::NodePrivacy;
use medfed_protocol::round::{Exclusions, LeftOut};
use medfed_protocol::schema::Schema;
use medfed_transport::Listener;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

pub use error::CoordinatorError;
pub use release::RELEASED_MODEL_FILE;

use crate::config::CoordinatorConfig;
use crate::console::{Console, CoordinatorInfo, RunState, TaskInfo, tls_refusal_label};
use crate::listener::{self, Admission};
use crate::manifest::{ManifestBuildError, signed_manifest, write_manifest};
use crate::registry::Registry;
use crate::store::Store;
use crate::strategy::{ServerOptimizer, build_optimizer};
use crate::task_model::{TaskModel, task_model};

/// Key of the federated standardisation in the state store.
const STANDARDIZATION_KEY: &str = "standardization";
/// Key of the summary of the statistics round.
const SUMMARY_KEY: &str = "federated_summary";
/// State-store key of the hospitals whose statistics were summed, sorted.
const STATS_PARTICIPANTS_KEY: &str = "statistics_participants";
/// State-store key of the hospitals whose held-out counts were first summed, sorted.
const EVALUATION_PARTICIPANTS_KEY: &str = "evaluation_participants";
/// Key of the final evaluation.
const FINAL_EVALUATION_KEY: &str = "final_evaluation";

/// What one applied round did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoundReport {
    /// Round number, from 1.
    pub round: u64,
    /// Nodes whose contribution is in the sum.
    pub participants: Vec<String>,
    /// Nodes asked but left out, with the reason.
    pub dropped: Vec<(String, LeftOut)>,
    /// The (ε, δ) each node declared it has spent, this round included.
    pub privacy: Vec<NodePrivacy>,
    /// Bias audit of the model the round started from, per sensitive attribute.
    pub fairness: Vec<AttributeAudit>,
    /// Pooled held-out metrics of the model the round started from (the previous round's model).
    pub start_model_evaluation: Option<EvalMetrics>,
    /// Hash of the model after the round.
    pub model_hash: String,
    /// Wall-clock seconds the round took.
    pub seconds: f64,
}

/// The most rounds a [`TrainingReport`] holds: the latest. A run of days applies tens of
/// thousands of rounds, each report a few kilobytes with its bias audit; every round stays in
/// the state store and the audit reports.
pub const MAX_REPORTED_ROUNDS: usize = 100;

/// What a whole run did.
#[derive(Clone, Debug)]
pub struct TrainingReport {
    /// The latest rounds applied in this run, at most [`MAX_REPORTED_ROUNDS`] (earlier runs'
    /// rounds, and this run's older ones, are in the state store).
    pub rounds: Vec<RoundReport>,
    /// Rounds applied in this run before those in `rounds`.
    pub earlier_rounds: u64,
    /// Pooled held-out metrics of the final model.
    pub final_evaluation: Option<EvalMetrics>,
    /// Bias audit of the final model, per sensitive attribute.
    pub final_fairness: Vec<AttributeAudit>,
    /// The final model.
    pub final_model: Model,
    /// Path of the final model's checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// Path of the released model (`model.safetensors` in the state folder, see
    /// [`crate::config::ReleaseRule`]) and the round whose model it is.
    pub released: Option<(PathBuf, u64)>,
    /// The last completed round.
    pub last_round: u64,
    /// Bytes received from each node during this run (the nodes' egress logs should agree).
    pub bytes_received: BTreeMap<String, u64>,
    /// Why training stopped before the planned rounds, if it did: too few nodes had privacy
    /// budget left for another round.
    pub stopped_early: Option<String>,
}

/// A coordinator serving on its endpoint and training in the background.
#[derive(Debug)]
pub struct RunningCoordinator {
    local_addr: SocketAddr,
    dashboard_addr: Option<SocketAddr>,
    console: Arc<Console>,
    training: tokio::task::JoinHandle<Result<TrainingReport, CoordinatorError>>,
}

impl RunningCoordinator {
    /// The address the coordinator listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the dashboard listens on, when `[dashboard]` is configured.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard_addr
    }

    /// The run's live state (what the dashboard and `summary.json` show).
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Waits for training to finish.
    pub async fn wait(self) -> Result<TrainingReport, CoordinatorError> {
        self.training
            .await
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?
    }

    /// Stops the coordinator now, as a crash would (nothing is flushed that was not already).
    pub fn abort(&self) {
        self.training.abort();
    }
}

/// Opens the state, binds the endpoint and starts training.
pub async fn start(config: CoordinatorConfig) -> Result<RunningCoordinator, CoordinatorError> {
    config.check_fault_injection()?;
    let schema_text =
        std::fs::read_to_string(&config.schema).map_err(|source| CoordinatorError::Io {
            path: config.schema.clone(),
            source,
        })?;
    let schema = Schema::parse(&schema_text).map_err(|source| CoordinatorError::Schema {
        path: config.schema.clone(),
        source,
    })?;
    std::fs::create_dir_all(config.data_dir.join("checkpoints")).map_err(|source| {
        CoordinatorError::Io {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let store = Store::open(&config.data_dir.join("state.sqlite"))?;
    let TaskModel { spec, initial } =
        task_model(&config.task.model, schema.num_features(), config.task.seed)?;

    let resumed = store.last_completed_round()?;
    let (round, model) = match &resumed {
        Some(done) => {
            let (round, model) = read_checkpoint(&done.checkpoint_path)?;
            if round != done.round || model.spec != spec {
                return Err(CoordinatorError::StateMismatch(format!(
                    "checkpoint {} holds round {round} of {:?}, the state says round {} of {:?}",
                    done.checkpoint_path.display(),
                    model.spec,
                    done.round,
                    spec
                )));
            }
            info!(round, hash = %model.hash(), "resuming after the last completed round");
            (round, model)
        }
        None => {
            // Its checkpoint is written once the statistics round has given the
            // standardisation that the file carries (`Trainer::checkpoint_initial_model`).
            let initial = Model::new(spec.clone(), initial)?;
            (0, initial)
        }
    };
    let optimizer = build_optimizer(
        &config.strategy,
        model.params.len(),
        resumed
            .as_ref()
            .and_then(|done| done.optimizer_state.clone()),
    )?;

    // Certificates the TLS handshake refuses reach the console (made below, once the address
    // it shows is known).
    let console_slot: Arc<std::sync::OnceLock<Arc<Console>>> = Arc::default();
    let on_refused: medfed_certs::RefusedCertificateHook = {
        let console_slot = console_slot.clone();
        Arc::new(move |subject: &str, reason: &rustls::Error| {
            if let Some(console) = console_slot.get() {
                console.refused(
                    Some(subject),
                    &tls_refusal_label(reason),
                    &reason.to_string(),
                );
            }
        })
    };
    let endpoint = Arc::new(Listener::bind(
        &config.tls,
        config.listen,
        Some(on_refused),
    )?);
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| CoordinatorError::Io {
            path: "socket".into(),
            source,
        })?;
    let signed = signed_manifest(&config, &schema)?;
    let members: Vec<String> = MemberList::load(&config.members)
        .map_err(ManifestBuildError::from)?
        .names()
        .map(str::to_owned)
        .collect();
    let manifest_path = write_manifest(&config.data_dir, &signed)?;
    info!(
        manifest = %signed.manifest.digest(),
        file = %manifest_path.display(),
        "task manifest signed"
    );
    let manifest = signed.manifest.clone();
    if manifest.model != spec {
        return Err(CoordinatorError::Internal(
            "the manifest's model differs from the configured one".into(),
        ));
    }
    let session = random_session();
    let admission = Arc::new(Admission {
        session,
        schema_digest: schema.digest(),
        manifest: signed,
    });
    let registry = Arc::new(Registry::default());
    let console = Arc::new(Console::new(
        Some(&config.data_dir),
        registry.clone(),
        CoordinatorInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: local_addr.to_string(),
            started_at_ms: now_ms(),
            resumed_after_round: round,
            dashboard: None,
        },
        TaskInfo {
            manifest_digest: manifest.digest().to_string(),
            model: describe_model(&spec.kind),
            parameters: model.params.len(),
            rounds_planned: config.task.rounds,
            min_nodes: config.task.min_nodes,
            secure_aggregation: manifest.secure_aggregation.is_some(),
            members: members.clone(),
        },
    ));
    // The store serialises its own calls on its one connection: shared, not locked again.
    let store = Arc::new(store);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let on_admit: listener::OnAdmit = {
        let store = store.clone();
        Arc::new(move |identity: &str| {
            if let Err(e) = store.node_seen(identity, now_ms()) {
                warn!(error = %e, "cannot record node in state");
            }
        })
    };
    let _ = console_slot.set(console.clone());
    let dashboard_addr = match &config.dashboard {
        Some(dashboard) => Some(
            crate::dashboard::start(
                dashboard,
                &config.tls,
                console.clone(),
                config.data_dir.join("reports"),
            )
            .await?,
        ),
        None => None,
    };
    if let (Some(addr), Some(dashboard)) = (dashboard_addr, &config.dashboard) {
        let scheme = if dashboard.tls { "https" } else { "http" };
        console.set_dashboard(format!("{scheme}://{addr}/"));
    }
    tokio::spawn(listener::serve(
        endpoint.clone(),
        admission,
        registry.clone(),
        on_admit,
        console.clone(),
        shutdown_rx,
    ));
    info!(%local_addr, session = format_args!("{session:016x}"), "coordinator listening");

    let optimizer = Mutex::new(optimizer);
    let peer_verifier = ConsortiumVerifier::new(&config.tls)
        .map_err(|source| CoordinatorError::PeerVerifier { source })?;
    let signing_key = load_report_signing_key(&config.tls.key)?;
    let reports = ReportWriter::open(&config.data_dir.join("reports"), signing_key)?;
    let trainer = Trainer {
        config,
        manifest,
        schema,
        schema_text,
        scoring: None,
        store,
        registry,
        session,
        model,
        optimizer,
        round,
        reports,
        members,
        exclusions: Exclusions::default(),
        peer_verifier: Arc::new(peer_verifier),
        distributed: None,
        console: console.clone(),
    };
    let training_console = console.clone();
    /// Longest wait for the nodes' connections to close at the end.
    const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
    let training = tokio::spawn(async move {
        let result = trainer.run().await;
        let _ = shutdown_tx.send(true);
        match &result {
            Ok(_) => endpoint.close(0, b"training finished"),
            Err(e) => {
                training_console.ended(RunState::Failed, Some(e.to_string()));
                // The nodes stop with the reason rather than reconnect for nothing.
                let reason: String = e
                    .to_string()
                    .char_indices()
                    .take_while(|(at, _)| *at < 512)
                    .map(|(_, c)| c)
                    .collect();
                endpoint.close(CLOSE_TASK_STOPPED, reason.as_bytes());
            }
        }
        // Let the close reach every node before the process may exit (a node told why stops
        // instead of reconnecting for nothing); bounded, for a node that no longer answers.
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        result
    });
    Ok(RunningCoordinator {
        local_addr,
        dashboard_addr,
        console,
        training,
    })
}

/// The training loop's state.
pub(crate) struct Trainer {
    config: CoordinatorConfig,
    /// The signed plan every node approved: each round's plan, threshold and update encoding
    /// come from it.
    manifest: TaskManifest,
    schema: Schema,
    /// The schema file's text, which every model file carries.
    schema_text: String,
    /// What every model file carries to score a patient; set once the statistics round has
    /// given the standardisation.
    scoring: Option<Scoring>,
    store: Arc<Store>,
    registry: Arc<Registry>,
    session: u64,
    model: Model,
    /// The server optimiser, behind a mutex only so the trainer is `Sync` (its methods hold
    /// `&self` across awaits); it is never contended.
    optimizer: Mutex<Box<dyn ServerOptimizer>>,
    /// Last completed round.
    round: u64,
    /// The signed, chained audit reports.
    reports: ReportWriter,
    /// The consortium's members (the manifest's member list), for the reports' absent members.
    members: Vec<String>,
    /// Nodes left out of the remaining attempts of a round, with why.
    exclusions: Exclusions,
    /// Checks the nodes' signatures on the survivor set against their certificates, so that a
    /// bad one is left out rather than relayed (every node would then refuse to unmask).
    peer_verifier: Arc<ConsortiumVerifier>,
    /// Under distributed DP (`[task.distributed_dp]`), what decodes each round's sum; set once
    /// the statistics round has given the public denominator.
    distributed: Option<DistributedDecoder>,
    /// The run's live state, for the operator.
    console: Arc<Console>,
}

impl Trainer {
    /// `path` relative to the state folder, with `/` separators (as the dashboard links it).
    fn relative_to_state(&self, path: &std::path::Path) -> Option<String> {
        let relative = path.strip_prefix(&self.config.data_dir).ok()?;
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Some(parts.join("/"))
    }
}

/// The model in words: `logistic regression` or `mlp 32-16`.
fn describe_model(kind: &medfed_protocol::model::ModelKind) -> String {
    use medfed_protocol::model::ModelKind;
    match kind {
        ModelKind::LogisticRegression => "logistic regression".to_owned(),
        ModelKind::Mlp { hidden } if hidden.is_empty() => "logistic regression".to_owned(),
        ModelKind::Mlp { hidden } => {
            let widths: Vec<String> = hidden.iter().map(usize::to_string).collect();
            format!("mlp {}", widths.join("-"))
        }
        ModelKind::Layers(architecture) => format!(
            "{} declared layers on {}",
            architecture.layers().len(),
            architecture.architecture().input
        ),
        ModelKind::TorchScript(module) => module.describe(),
    }
}

/// How the coordinator reads a distributed-DP update block: the parameters every node built
/// from the manifest, and the public denominator `q·N` (`N` the pooled noised example count of
/// the statistics round), never a figure a node reports about its batch.
pub(crate) struct DistributedDecoder {
    params: DdpParams,
    denominator: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Public randomness from the OS CSPRNG (the neighbour graph's seed).
fn random_bytes() -> [u8; 32] {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // Only the graph's shape depends on it; a fixed graph is still correct and private.
        bytes = [7; 32];
    }
    bytes
}

/// A random session identifier from the OS CSPRNG.
fn random_session() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // The OS CSPRNG failing is unrecoverable; fall back to the clock only to stay distinct.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return now_ms() as u64;
    }
    u64::from_le_bytes(bytes)
}
