//! Coordinator crashes end to end: the real `medfed-coordinator` binary, configured to pause at
//! one point of a round (`danger_pause_at`), is killed there with SIGKILL and restarted on the
//! same port from its state folder, while three real nodes (libtorch, DP-SGD, secure
//! aggregation) reconnect on their own. Training must then finish with every round applied
//! exactly once, the audit chain whole, and every node's privacy ledger matching what it sent.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medfed_audit::checkpoint::{checkpoint_file_name, read_checkpoint};
use medfed_coordinator::config::{PausePhase, PausePoint};
use medfed_coordinator::store::{RoundStatus, Store};
use medfed_e2e::process::workspace_binary;
use medfed_e2e::{Consortium, strip_ansi, subscribe};
use medfed_node::NodeConfig;
use medfed_node::config::{EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode};
use medfed_node::egress::EgressLog;
use medfed_node::ledger::{PrivacyLedger, Release, epsilon_of};
use medfed_protocol::accounting::Accountant;
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::report::{SignedReport, verify_chain, verify_checkpoint, verify_model};
use tokio::sync::mpsc;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
/// Training rounds of every run here; round `ROUNDS + 1` is the final evaluation.
const ROUNDS: u64 = 2;
/// How long any one step (a pause reached, a run finished) may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn at(round: u64, phase: PausePhase) -> PausePoint {
    PausePoint { round, phase }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_in_the_statistics_round_restarts_it() {
    crash_and_recover(&[
        at(0, PausePhase::RoundStarted),
        at(0, PausePhase::MaskedInputs),
        at(0, PausePhase::RoundCompleted),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_round_2_started() {
    crash_and_recover(&[at(2, PausePhase::RoundStarted)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_pushing_the_model_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::ModelPushed)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_collecting_the_keys_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::KeysCollected)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_relaying_the_shares_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::SharesRelayed)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_while_collecting_the_masked_inputs_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::MaskedInputs)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_unmasking_the_sum_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::Unmasked)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_writing_the_checkpoint_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::CheckpointWritten)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_writing_the_report_of_round_2() {
    crash_and_recover(&[at(2, PausePhase::ReportWritten)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_completing_round_2() {
    crash_and_recover(&[at(2, PausePhase::RoundCompleted)]).await;
}

/// Round 1 is special: no round is completed yet, so the restart begins from the initial model
/// (whose checkpoint and audit report were written by the killed run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_twice_in_round_1() {
    crash_and_recover(&[
        at(1, PausePhase::ReportWritten),
        at(1, PausePhase::MaskedInputs),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_in_the_final_evaluation() {
    crash_and_recover(&[
        at(ROUNDS + 1, PausePhase::KeysCollected),
        at(ROUNDS + 1, PausePhase::ReportWritten),
    ])
    .await;
}

/// Runs a consortium of three private nodes with a coordinator process killed at each of
/// `points` in turn (each restart pauses at the next point), then checks everything the runs
/// left behind.
async fn crash_and_recover(points: &[PausePoint]) {
    subscribe();
    let started = Instant::now();
    let consortium = Consortium::new(&NODES, 80);
    let data_dir = consortium.dir.path().join("coordinator");
    let mut coordinator = CoordinatorProcess::start(&consortium, None, points.first().copied())
        .await
        .expect("coordinator starts");
    let addr = coordinator.addr;
    let configs: Vec<NodeConfig> = NODES
        .iter()
        .map(|name| {
            let mut config = consortium.node_config(name, addr);
            config.privacy = Some(PrivacyConfig {
                target_epsilon: 50.0,
                delta: 1e-5,
                noise_multiplier: NoiseMultiplier::Fixed(1.0),
                max_grad_norm: 1.0,
                accountant: Accountant::Rdp,
                evaluation: EvaluationNoiseConfig::exact(),
                // Noised statistics, charged in round 0 (the default).
                statistics: Default::default(),
                mode: PrivacyMode::Local,
                max_local_epsilon: None,
            });
            config.reconnect_for = Duration::from_secs(90);
            config
        })
        .collect();
    let nodes: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();

    for (i, point) in points.iter().enumerate() {
        coordinator
            .wait_for_pause(*point)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        coordinator.kill();
        coordinator =
            CoordinatorProcess::start(&consortium, Some(addr), points.get(i + 1).copied())
                .await
                .expect("coordinator restarts on the same port");
    }
    let stdout = coordinator
        .wait_for_success()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stdout.contains(&format!("training finished after round {ROUNDS}")),
        "{stdout}"
    );
    let mut outcomes = Vec::new();
    for node in nodes {
        outcomes.push(
            node.await
                .expect("node task")
                .expect("node rejoins and finishes"),
        );
    }

    let models = check_rounds(&consortium, &data_dir);
    for outcome in &outcomes {
        assert_eq!(outcome.last_round, ROUNDS);
        assert_eq!(outcome.model_hash, models[ROUNDS as usize].hash().to_hex());
    }
    check_reports(&consortium, &data_dir, &models);
    for config in &configs {
        check_ledger(config, points);
    }
    eprintln!(
        "crash test at {points:?} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Every round 1..=ROUNDS is completed exactly once and the rounds chain by model hash; the
/// checkpoints hold those models. Returns the model of each round, 0 (initial) first.
fn check_rounds(consortium: &Consortium, data_dir: &Path) -> Vec<Model> {
    let store = Store::open(&data_dir.join("state.sqlite")).expect("state opens");
    let rows = store.rounds().expect("rounds");
    let numbers: Vec<u64> = rows.iter().map(|r| r.round).collect();
    assert_eq!(numbers, (1..=ROUNDS).collect::<Vec<_>>(), "{rows:?}");
    let (initial_round, initial) =
        read_checkpoint(&data_dir.join("checkpoints").join(checkpoint_file_name(0)))
            .expect("initial checkpoint");
    assert_eq!(initial_round, 0);
    let task = consortium.coordinator_config(ROUNDS, 3).task;
    let spec =
        ModelSpec::from_config(task.model, initial.spec.input_dim).expect("the task's model");
    assert_eq!(initial.params, spec.initial_parameters(task.seed));
    let mut models = vec![initial];
    let mut joined = std::collections::BTreeMap::<String, u64>::new();
    for row in &rows {
        assert_eq!(row.status, RoundStatus::Completed, "{row:?}");
        let previous = models.last().expect("at least the initial model");
        assert_eq!(
            row.model_hash_before,
            previous.hash(),
            "round {} did not start from round {}'s model",
            row.round,
            row.round - 1
        );
        let path = row.checkpoint_path.as_ref().expect("checkpoint path");
        let (round, model) = read_checkpoint(path).expect("checkpoint loads");
        assert_eq!(round, row.round);
        assert_eq!(Some(model.hash()), row.model_hash_after);
        assert_ne!(
            model.params, previous.params,
            "round {} changed nothing",
            row.round
        );
        assert_eq!(row.participants, NODES.map(String::from).to_vec());
        for node in &row.participants {
            *joined.entry(node.clone()).or_default() += 1;
        }
        models.push(model);
    }
    // No round was counted twice for any node, restarts or not.
    for node in store.nodes().expect("nodes") {
        assert_eq!(
            Some(&node.rounds_joined),
            joined.get(&node.identity),
            "{node:?}"
        );
    }
    models
}

/// One report per model round 0..=ROUNDS, chained and signed, each naming its model and its
/// checkpoint file.
fn check_reports(consortium: &Consortium, data_dir: &Path, models: &[Model]) {
    let dir = data_dir.join("reports");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("reports folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("round-") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let key = medfed_certs::coordinator_report_key(
        &consortium.certs.coordinator_tls().cert,
        &consortium.certs.ca_cert,
    )
    .expect("report key");
    let summary = verify_chain(&files, &key).expect("the report chain verifies");
    assert_eq!(
        (summary.reports, summary.first_round, summary.last_round),
        (ROUNDS as usize + 1, 0, ROUNDS),
        "{paths:?}"
    );
    for (round, bytes) in files.iter().enumerate() {
        let report = SignedReport::from_json(bytes).expect("report").report;
        assert_eq!(report.round, round as u64);
        verify_model(&report, &models[round].hash().to_hex()).expect("report names its model");
        let checkpoint = std::fs::read(
            data_dir
                .join("checkpoints")
                .join(checkpoint_file_name(round as u64)),
        )
        .expect("checkpoint");
        verify_checkpoint(&report, &checkpoint).expect("report names its checkpoint file");
        assert_eq!(report.participants, NODES.map(String::from).to_vec());
    }
}

/// The node's ledger holds exactly one entry per masked update it sent in a training round
/// (its egress log says which), each entry's ε composes all the entries before it, and a round
/// restarted after the updates left is paid for twice.
fn check_ledger(config: &NodeConfig, points: &[PausePoint]) {
    let ledger = PrivacyLedger::read(&config.state_dir).expect("ledger");
    let egress = EgressLog::read(&config.state_dir).expect("egress log");
    // Round 0 is the statistics round: its noised statistics are charged like an update.
    for round in 0..=ROUNDS {
        let sent = egress
            .iter()
            .filter(|e| e.kind == "secagg_input" && e.round == Some(round))
            .count();
        let paid = ledger.iter().filter(|e| e.round == round).count();
        assert_eq!(
            paid,
            sent,
            "{}: round {round}: {paid} ledger entries for {sent} masked inputs sent",
            config.state_dir.display()
        );
        let kind = if round == 0 {
            Release::Statistics
        } else {
            Release::Training
        };
        assert!(
            ledger
                .iter()
                .filter(|e| e.round == round)
                .all(|e| e.release == kind),
            "round {round}"
        );
        // Each kill after the masked inputs left and before the round completed restarts the
        // round: the figures went out once more.
        let released_then_killed = points
            .iter()
            .filter(|p| {
                p.round == round
                    && matches!(
                        p.phase,
                        PausePhase::MaskedInputs
                            | PausePhase::Unmasked
                            | PausePhase::CheckpointWritten
                            | PausePhase::ReportWritten
                    )
            })
            .count();
        assert_eq!(sent, 1 + released_then_killed, "round {round}");
    }
    assert!(ledger.iter().all(|e| (0..=ROUNDS).contains(&e.round)));
    for (i, entry) in ledger.iter().enumerate() {
        let epsilon = epsilon_of(
            &ledger[..i],
            &entry.mechanisms(),
            entry.accountant,
            entry.delta,
        )
        .expect("accountant");
        assert!(
            (epsilon - entry.epsilon_after).abs() < 1e-9,
            "entry {i}: recorded ε {} but the entries before it compose to {epsilon}",
            entry.epsilon_after
        );
    }
}

/// A `medfed-coordinator` process, its output read line by line.
struct CoordinatorProcess {
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
    /// Its standard error and output, line by line.
    lines: mpsc::UnboundedReceiver<(bool, String)>,
    /// Standard output so far.
    stdout: String,
}

impl CoordinatorProcess {
    /// Writes the configuration (listening on `listen`, or an ephemeral port) and starts the
    /// binary; returns once it listens.
    async fn start(
        consortium: &Consortium,
        listen: Option<SocketAddr>,
        pause: Option<PausePoint>,
    ) -> Result<Self, String> {
        let config = consortium.dir.path().join("coordinator.toml");
        std::fs::write(&config, coordinator_toml(consortium, listen, pause))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(coordinator_binary()?)
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start medfed-coordinator: {e}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let pid = child.id();
        for (is_stdout, stream) in [
            (
                true,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ),
            (
                false,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let (tx, stream) = (tx.clone(), stream.ok_or("no pipe")?);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[coordinator {pid}] {line}");
                    let _ = tx.send((is_stdout, strip_ansi(&line)));
                }
            });
        }
        let mut process = Self {
            child,
            addr: listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            lines,
            stdout: String::new(),
        };
        let line = process
            .wait_for_line(|line| line.contains("coordinator listening"))
            .await?;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("local_addr="))
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("no address in {line:?}"))?;
        process.addr = addr;
        Ok(process)
    }

    /// Waits until the process says it paused at `point`.
    async fn wait_for_pause(&mut self, point: PausePoint) -> Result<(), String> {
        let marker = format!(
            "DANGER: paused at round {} phase {}",
            point.round, point.phase
        );
        self.wait_for_line(|line| line.contains(&marker))
            .await
            .map(drop)
    }

    /// Kills the process with SIGKILL and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit successfully; returns its standard output.
    async fn wait_for_success(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            while let Ok((is_stdout, line)) = self.lines.try_recv() {
                if is_stdout {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                }
            }
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    // Let the reader threads drain the pipes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while let Ok((is_stdout, line)) = self.lines.try_recv() {
                        if is_stdout {
                            self.stdout.push_str(&line);
                            self.stdout.push('\n');
                        }
                    }
                    return Ok(std::mem::take(&mut self.stdout));
                }
                Ok(Some(status)) => return Err(format!("coordinator failed: {status}")),
                Ok(None) if Instant::now() > deadline => {
                    return Err("coordinator did not finish in time".into());
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits for an output line that `wanted` accepts.
    async fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((is_stdout, line))) => {
                    if is_stdout {
                        self.stdout.push_str(&line);
                        self.stdout.push('\n');
                    }
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Ok(None) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!(
                        "coordinator exited ({status}) before the awaited line"
                    ));
                }
                Err(_) => return Err("timed out waiting for the coordinator".into()),
            }
        }
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration file of the coordinator of `consortium`: three nodes needed, small and
/// quick rounds, and the pause point if any.
pub(crate) fn coordinator_toml(
    consortium: &Consortium,
    listen: Option<SocketAddr>,
    pause: Option<PausePoint>,
) -> String {
    let tls = consortium.certs.coordinator_tls();
    let path = |p: &Path| toml_string(&p.display().to_string());
    let mut text = format!(
        r#"listen = "{listen}"
data_dir = {data_dir}
schema = {schema}
members = {members}

[tls]
ca_cert = {ca}
cert = {cert}
key = {key}

[task]
model = {{ kind = "mlp", hidden = [8] }}
rounds = {ROUNDS}
min_nodes = 3
seed = 11
round_deadline_secs = 60
wait_for_nodes_secs = 90
round_attempts = 3

[task.training]
local_epochs = 1
learning_rate = 0.1
batch_size = 16
"#,
        listen = listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
        data_dir = path(&consortium.dir.path().join("coordinator")),
        schema = path(&consortium.schema),
        members = path(&consortium.certs.members),
        ca = path(&tls.ca_cert),
        cert = path(&tls.cert),
        key = path(&tls.key),
    );
    if let Some(crl) = &tls.crl {
        text = text.replace("[task]", &format!("crl = {}\n\n[task]", path(crl)));
    }
    if let Some(point) = pause {
        text.push_str(&format!(
            "\n[danger_pause_at]\nround = {}\nphase = \"{}\"\n",
            point.round, point.phase
        ));
    }
    text
}

/// A TOML literal string (paths here hold no `'`).
fn toml_string(s: &str) -> String {
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}

/// The `medfed-coordinator` binary of this build, brought up to date first.
fn coordinator_binary() -> Result<PathBuf, String> {
    workspace_binary("medfed-coordinator", "medfed-coordinator")
}
