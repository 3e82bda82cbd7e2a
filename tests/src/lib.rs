//! Fixtures for medfed's end-to-end tests: a development consortium (real certificates from
//! `medfed-certs`), synthetic hospital CSVs with a known signal, and helpers that start a real
//! coordinator and real nodes — with the libtorch trainer — talking QUIC on 127.0.0.1.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attacker;
pub mod http;
pub mod images;
pub mod load;
pub mod network;
pub mod process;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medfed_certs::{DevConsortium, TlsFiles, make_dev_consortium};
use medfed_coordinator::config::{SecureAggregationConfig, TaskConfig, TrainingConfig};
use medfed_coordinator::strategy::StrategyConfig;
use medfed_coordinator::{CoordinatorConfig, RunningCoordinator, TrainingReport};
use medfed_node::config::DataConfig;
use medfed_node::data::Holdout;
use medfed_node::policy::{Fraction, NodePolicy};
use medfed_node::trainer::{ComputeDevice, TchTrainer};
use medfed_node::{NodeConfig, NodeError, NodeOutcome};
use medfed_protocol::evaluation::ScoreBins;
use medfed_protocol::manifest::SignedManifest;
use medfed_protocol::messages::RoundStart;
use medfed_protocol::model::{Model, ModelConfig, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::Standardization;
use tempfile::TempDir;

/// The schema of the synthetic hospital files.
pub const SCHEMA: &str = r#"
drop = ["patient_id"]
sensitive = ["sex", "age"]

[label]
column = "outcome"
positive = ["1"]
negative = ["0"]

[[columns]]
name = "age"
type = "numeric"
range = [20, 90]

[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]

[[columns]]
name = "blood_pressure"
type = "numeric"
range = [80, 200]

[[columns]]
name = "smoker"
type = "categorical"
levels = ["no", "yes"]

[bands]
age = [45, 55]
"#;

/// A consortium laid out in a temporary folder.
pub struct Consortium {
    /// Holds every file; removed on drop.
    pub dir: TempDir,
    /// The certificates.
    pub certs: DevConsortium,
    /// The schema file.
    pub schema: PathBuf,
}

impl Consortium {
    /// Certificates for `nodes` and a synthetic CSV of `rows` patients for each.
    pub fn new(nodes: &[&str], rows: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        let certs = make_dev_consortium(&dir.path().join("certs"), &names).expect("dev consortium");
        let schema = dir.path().join("schema.toml");
        std::fs::write(&schema, SCHEMA).expect("schema");
        for (i, name) in nodes.iter().enumerate() {
            std::fs::write(
                csv_path(dir.path(), name),
                synthetic_csv(rows, i as u64 + 1),
            )
            .expect("csv");
        }
        Self { dir, certs, schema }
    }

    /// Rewrites the schema to declare missing values — blood pressure imputed, smoking with a
    /// missing level, `NA` a missing-value token — and blanks cells of `names`' CSVs to match
    /// (every 7th row's blood pressure; every 10th row's smoking, blank or `NA`). Returns how
    /// many blood-pressure cells were blanked.
    pub fn declare_and_blank_missing_values(&self, names: &[&str]) -> usize {
        let schema = SCHEMA
            .replace(
                "drop = [\"patient_id\"]",
                "drop = [\"patient_id\"]\nmissing_values = [\"NA\"]",
            )
            .replace(
                "range = [80, 200]",
                "range = [80, 200]\nmissing = \"impute\"",
            )
            .replace(
                "levels = [\"no\", \"yes\"]",
                "levels = [\"no\", \"yes\"]\nmissing = \"level\"",
            );
        std::fs::write(&self.schema, &schema).expect("schema");
        let mut blanks = 0;
        for name in names {
            let csv = std::fs::read_to_string(self.csv(name)).expect("csv");
            let mut out = String::new();
            for (i, line) in csv.lines().enumerate() {
                // patient_id,age,sex,blood_pressure,smoker,outcome
                let mut cells: Vec<&str> = line.split(',').collect();
                if i > 0 && i % 7 == 3 {
                    cells[3] = "";
                    blanks += 1;
                }
                if i > 0 && i % 10 == 5 {
                    cells[4] = if i % 20 == 5 { "NA" } else { "" };
                }
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            std::fs::write(self.csv(name), out).expect("csv");
        }
        blanks
    }

    /// Rewrites the schema to [`images::IMAGE_SCHEMA`] and replaces `names`' CSVs with image
    /// cohorts of `rows` patients each ([`images::write_image_cohort`], seeded by each name's
    /// position in `names`).
    pub fn declare_image_cohort(&self, names: &[&str], rows: usize) {
        std::fs::write(&self.schema, images::IMAGE_SCHEMA).expect("schema");
        for (i, name) in names.iter().enumerate() {
            images::write_image_cohort(self.dir.path(), name, rows, i as u64 + 1)
                .expect("image cohort");
        }
    }

    /// Where node `name`'s CSV is.
    pub fn csv(&self, name: &str) -> PathBuf {
        csv_path(self.dir.path(), name)
    }

    /// A coordinator configuration listening on an ephemeral loopback port.
    pub fn coordinator_config(&self, rounds: u64, min_nodes: usize) -> CoordinatorConfig {
        CoordinatorConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: self.dir.path().join("coordinator"),
            schema: self.schema.clone(),
            members: self.certs.members.clone(),
            tls: self.certs.coordinator_tls(),
            task: TaskConfig {
                model: ModelConfig::Mlp { hidden: vec![8] },
                rounds,
                min_nodes,
                seed: 11,
                training: TrainingConfig {
                    local_epochs: 2,
                    learning_rate: 0.1,
                    batch_size: 16,
                    pos_weight: 1.0,
                },
                round_deadline_secs: 60.0,
                wait_for_nodes_secs: 60.0,
                round_attempts: 3,
                start_nodes: None,
                evaluate_every: 1,
                score_bins: Default::default(),
                decision_threshold: Default::default(),
                release: Default::default(),
                site_figures: Vec::new(),
                distributed_dp: None,
            },
            strategy: StrategyConfig::default(),
            secure_aggregation: SecureAggregationConfig::default(),
            fairness: Default::default(),
            model_card: Default::default(),
            dashboard: None,
            danger_pause_at: None,
        }
    }

    /// Node `name`'s configuration, with its own certificate.
    pub fn node_config(&self, name: &str, coordinator: SocketAddr) -> NodeConfig {
        let tls = self.certs.node_tls(name).expect("known node");
        self.node_config_with_tls(name, coordinator, tls)
    }

    /// Node `name`'s configuration with the given TLS material (a foreign or revoked one, say).
    pub fn node_config_with_tls(
        &self,
        name: &str,
        coordinator: SocketAddr,
        tls: TlsFiles,
    ) -> NodeConfig {
        NodeConfig {
            coordinator: coordinator.into(),
            server_name: "localhost".into(),
            tls: TlsFiles { crl: None, ..tls },
            data: DataConfig {
                csv: self.csv(name),
                schema: self.schema.clone(),
                holdout: Holdout::Fraction {
                    fraction: 0.25,
                    seed: 5,
                },
            },
            device: ComputeDevice::Cpu,
            state_dir: self.dir.path().join("nodes").join(name),
            reconnect_for: Duration::from_secs(20),
            network: medfed_node::config::NetworkConfig::default(),
            threads: std::num::NonZeroUsize::MIN,
            danger_crash_after: None,
            danger_stall: None,
            privacy: None,
            policy: NodePolicy {
                members: Some(self.certs.members.clone()),
                ..NodePolicy::default()
            },
        }
    }

    /// The signed task manifest a coordinator started with `config` sends in its `Welcome`
    /// (signed with the consortium coordinator's key), for tests that play the coordinator.
    pub fn signed_manifest(&self, config: &CoordinatorConfig) -> SignedManifest {
        let schema = Schema::parse(SCHEMA).expect("schema");
        medfed_coordinator::manifest::signed_manifest(config, &schema).expect("a signed manifest")
    }

    /// Starts a coordinator.
    pub async fn start_coordinator(&self, config: CoordinatorConfig) -> RunningCoordinator {
        medfed_coordinator::start(config)
            .await
            .expect("coordinator starts")
    }

    /// Trains with a coordinator configured by `config` and honest nodes `names` (each with its
    /// own certificate); waits for the coordinator and for every node to finish successfully.
    /// Returns the coordinator's report and the nodes' configurations.
    pub async fn train(
        &self,
        config: CoordinatorConfig,
        names: &[&str],
    ) -> (TrainingReport, Vec<NodeConfig>) {
        self.train_with(config, names, |_| {}).await
    }

    /// [`Consortium::train`], with each node's configuration changed by `adjust` first.
    pub async fn train_with(
        &self,
        config: CoordinatorConfig,
        names: &[&str],
        adjust: impl Fn(&mut NodeConfig),
    ) -> (TrainingReport, Vec<NodeConfig>) {
        let coordinator = self.start_coordinator(config).await;
        let addr = coordinator.local_addr();
        let configs: Vec<NodeConfig> = names
            .iter()
            .map(|n| {
                let mut config = self.node_config(n, addr);
                adjust(&mut config);
                config
            })
            .collect();
        let nodes: Vec<_> = configs.iter().map(|c| self.spawn_node(c.clone())).collect();
        let report = coordinator.wait().await.expect("training completes");
        for node in nodes {
            node.await.expect("node task").expect("node finishes");
        }
        (report, configs)
    }

    /// Starts a node with the libtorch trainer, as a task.
    pub fn spawn_node(
        &self,
        config: NodeConfig,
    ) -> tokio::task::JoinHandle<Result<NodeOutcome, NodeError>> {
        medfed_node::trainer::set_torch_threads(config.threads);
        let trainer = TchTrainer::new(ComputeDevice::Cpu).expect("libtorch");
        let hospital =
            medfed_node::prepare_node(&config, Box::new(trainer)).expect("a node ready to run");
        tokio::spawn(async move { medfed_node::run(&config, hospital).await })
    }
}

/// A hospital's DP-SGD policy within `target_epsilon` (δ = 10⁻⁵, RDP accountant): σ = 1 and
/// C = 1 in every training round, the statistics and the evaluation counts released exact, so
/// that the budget pays for training alone and pooled figures can be compared exactly.
pub fn dp_sgd_policy(target_epsilon: f64) -> medfed_node::config::PrivacyConfig {
    use medfed_node::config::{
        EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode, StatisticsNoiseConfig,
    };
    PrivacyConfig {
        target_epsilon,
        delta: 1e-5,
        noise_multiplier: NoiseMultiplier::Fixed(1.0),
        max_grad_norm: 1.0,
        accountant: medfed_protocol::accounting::Accountant::Rdp,
        evaluation: EvaluationNoiseConfig::exact(),
        statistics: StatisticsNoiseConfig::exact(),
        mode: PrivacyMode::Local,
        max_local_epsilon: None,
    }
}

/// Lets a hospital send its figures in the clear and alone, as the tests that drive one node by
/// hand, or compute the plain sums secure aggregation must reproduce, need. Never a default.
pub fn allow_plaintext(config: &mut NodeConfig) {
    config.policy.require_secure_aggregation = false;
    config.policy.min_other_hospitals = 0;
}

/// Drives `hospital` by hand into round 1 of session 5 of `task` (the test schema's six
/// features): it enters the session as `identity` and holds the initial model; the request
/// returned asks it, in the clear, to evaluate and train that model.
pub fn round_one_by_hand(
    hospital: &mut medfed_node::Hospital,
    task: &TaskConfig,
    identity: &str,
) -> RoundStart {
    let spec = ModelSpec::from_config(task.model.clone(), 6).expect("the task's model");
    let model = Model::new(spec.clone(), spec.initial_parameters(1)).expect("an initial model");
    hospital.enter_session(5, identity);
    hospital.accept_model(model.clone(), 5, 1);
    RoundStart {
        session: 5,
        round: 1,
        attempt: 1,
        model_hash: model.hash(),
        train: true,
        evaluate: true,
        score_bins: ScoreBins::FINE,
        decision_threshold: Default::default(),
        plan: task.plan(1),
        standardization: Standardization::identity(6),
        secure_aggregation: None,
    }
}

/// Lets a hospital of a small test consortium go on when nodes drop out: sums over two
/// hospitals, and any threshold the protocol allows (the default policy needs two other
/// hospitals in every sum and a threshold above 2/3 of the share holders, which leaves no
/// room for a dropout among three).
pub fn tolerate_dropouts(config: &mut NodeConfig) {
    config.policy.min_other_hospitals = 1;
    config.policy.threshold_floor = Fraction {
        numerator: 0,
        denominator: 1,
    };
}

fn csv_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.csv"))
}

/// A CSV of `rows` synthetic patients whose outcome follows a logistic model of age, blood
/// pressure and smoking, with a hospital-specific shift in age (`site` varies it).
pub fn synthetic_csv(rows: usize, site: u64) -> String {
    biased_csv(rows, site, 0.0)
}

/// As [`synthetic_csv`], with a planted bias: each woman's positive outcome is recorded as
/// negative with probability `flip_female_positives` (under-diagnosis of one group).
pub fn biased_csv(rows: usize, site: u64, flip_female_positives: f64) -> String {
    let mut rng = SplitMix(site.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = String::from("patient_id,age,sex,blood_pressure,smoker,outcome\n");
    for i in 0..rows {
        let age = 40.0 + 5.0 * site as f64 + 12.0 * rng.normal();
        let sex = if rng.uniform() < 0.5 { "F" } else { "M" };
        let bp = 130.0 + 15.0 * rng.normal();
        let smoker = rng.uniform() < 0.3;
        let logit = 0.08 * (age - 55.0) + 0.05 * (bp - 130.0) + if smoker { 1.2 } else { -0.4 };
        let mut outcome = u8::from(rng.uniform() < 1.0 / (1.0 + (-logit).exp()));
        if sex == "F" && outcome == 1 && rng.uniform() < flip_female_positives {
            outcome = 0;
        }
        let _ = writeln!(
            out,
            "{site}-{i},{age:.1},{sex},{bp:.0},{},{outcome}",
            if smoker { "yes" } else { "no" }
        );
    }
    out
}

/// A small deterministic generator for test data (not for anything secret).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `line` without its terminal colour codes (`ESC [ … m`), for reading a child process's log.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `tracing` output to the test's captured output.
pub fn subscribe() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
