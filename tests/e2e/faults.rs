//! Node faults end to end: a node killed mid-round and restarted, a straggler past the round
//! deadline, a node cut off by a network partition, and nodes whose privacy budgets run out.
//! (A node that stops for good after sharing its keys is in `secure_aggregation.rs`; one that
//! stops right after its masked update left, in `privacy.rs`.)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use medfed_coordinator::CoordinatorError;
use medfed_coordinator::store::{RoundStatus, Store};
use medfed_e2e::{Consortium, subscribe, synthetic_csv, tolerate_dropouts};
use medfed_node::config::{
    CrashPoint, EvaluationNoiseConfig, NoiseMultiplier, PrivacyConfig, PrivacyMode, StallPoint,
    StatisticsNoiseConfig,
};
use medfed_node::egress::EgressLog;
use medfed_node::ledger::PrivacyLedger;
use medfed_node::{NodeConfig, NodeError};
use medfed_protocol::accounting::Accountant;
use medfed_protocol::privacy::epsilon;
use medfed_protocol::round::LeftOut;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// DP-SGD at σ = 1 within `target_epsilon`. The statistics leave exact: these tests count the
/// training releases (`crash.rs` follows noised statistics through restarts).
fn policy(target_epsilon: f64) -> PrivacyConfig {
    PrivacyConfig {
        target_epsilon,
        delta: 1e-5,
        noise_multiplier: NoiseMultiplier::Fixed(1.0),
        max_grad_norm: 1.0,
        accountant: Accountant::Rdp,
        evaluation: EvaluationNoiseConfig::exact(),
        statistics: StatisticsNoiseConfig::exact(),
        mode: PrivacyMode::Local,
        max_local_epsilon: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_round_and_restarted_rejoins_the_next_round_with_its_ledger() {
    subscribe();
    let consortium = Consortium::new(&NODES, 80);
    // Every round needs all three nodes, so round 2 waits for the restarted one.
    let mut config = consortium.coordinator_config(3, 3);
    config.secure_aggregation.threshold = Some(2);
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let configs: Vec<NodeConfig> = NODES
        .iter()
        .map(|name| {
            let mut config = consortium.node_config(name, addr);
            tolerate_dropouts(&mut config);
            config.privacy = Some(policy(50.0));
            config
        })
        .collect();
    let mut nodes: Vec<_> = configs[..2]
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    // hospital-c dies right after its masked update of round 1 left.
    let mut crashing = configs[2].clone();
    crashing.danger_crash_after = Some(CrashPoint {
        round: 1,
        after: "secagg_input",
    });
    let crashed = consortium.spawn_node(crashing).await.expect("node task");
    assert!(
        matches!(crashed, Err(NodeError::Crashed { round: 1, .. })),
        "{crashed:?}"
    );
    let before = PrivacyLedger::read(&configs[2].state_dir).expect("ledger");
    assert_eq!(before.len(), 1, "{before:?}");

    // Restarted with the same state folder.
    nodes.push(consortium.spawn_node(configs[2].clone()));
    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.last_round, 3);
    for round in &report.rounds {
        // Its round-1 update left before it died, so round 1 counts it too.
        assert_eq!(
            round.participants,
            NODES.map(String::from).to_vec(),
            "round {}",
            round.round
        );
    }
    for node in nodes {
        node.await.unwrap().expect("node finishes");
    }
    let after = PrivacyLedger::read(&configs[2].state_dir).expect("ledger");
    assert_eq!(
        after[0], before[0],
        "the entry made before the crash is intact"
    );
    assert_eq!(after.iter().map(|e| e.round).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        after
            .windows(2)
            .all(|w| w[1].epsilon_after > w[0].epsilon_after)
    );
    for config in &configs {
        check_ledger_matches_egress(&config.state_dir, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggler_past_the_deadline_is_a_dropout_whose_masks_are_removed() {
    subscribe();
    let consortium = Consortium::new(&NODES, 80);
    let mut config = consortium.coordinator_config(2, 2);
    config.secure_aggregation.threshold = Some(2);
    config.task.round_deadline_secs = 4.0;
    // All three must be in round 1, however slowly each connects on a loaded machine.
    config.task.start_nodes = Some(3);
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let mut nodes = Vec::new();
    for name in NODES {
        let mut node = consortium.node_config(name, addr);
        tolerate_dropouts(&mut node);
        if name == "hospital-c" {
            // Its keys and shares are in, then its masked update of round 1 comes late.
            node.danger_stall = Some(StallPoint {
                round: 1,
                before: "secagg_input",
                hold: Duration::from_secs(5),
            });
        }
        nodes.push(consortium.spawn_node(node));
    }
    let report = coordinator.wait().await.expect("training completes");
    let first = &report.rounds[0];
    assert_eq!(first.participants, ["hospital-a", "hospital-b"]);
    let (_, why) = first
        .dropped
        .iter()
        .find(|(who, _)| who == "hospital-c")
        .expect("the straggler is a dropout");
    assert_eq!(*why, LeftOut::Deadline);
    // The straggler's pairwise masks were in a's and b's inputs: any left in the sum would turn
    // the exactly counted held-out examples (20 per node) into noise.
    let evaluation = first
        .start_model_evaluation
        .as_ref()
        .expect("round 1 evaluated");
    assert_eq!(evaluation.examples, 40);
    assert!(
        report.final_model.params.iter().all(|p| p.abs() < 10.0),
        "unmasked model is garbage"
    );
    // Once done with its late answer, it is back for the next round.
    assert_eq!(
        report.rounds[1].participants,
        NODES.map(String::from).to_vec()
    );
    for node in nodes {
        node.await.unwrap().expect("node finishes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_left_out_and_rejoins_when_the_network_heals() {
    subscribe();
    let consortium = Consortium::new(&NODES, 80);
    let mut config = consortium.coordinator_config(5, 2);
    config.secure_aggregation.threshold = Some(2);
    config.task.round_deadline_secs = 5.0;
    // All three must be in round 1, however slowly each connects on a loaded machine.
    config.task.start_nodes = Some(3);
    let state = config.data_dir.join("state.sqlite");
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    // hospital-c reaches the coordinator through a relay that the test can cut.
    let link = Link::to(addr).await;
    let mut nodes: Vec<_> = NODES[..2]
        .iter()
        .map(|n| {
            let mut config = consortium.node_config(n, addr);
            tolerate_dropouts(&mut config);
            consortium.spawn_node(config)
        })
        .collect();
    let mut c = consortium.node_config("hospital-c", link.addr);
    tolerate_dropouts(&mut c);
    c.privacy = Some(policy(50.0));
    c.reconnect_for = Duration::from_secs(60);
    // hospital-c holds its round-1 unmasking shares back, so that the test can cut the link at a
    // known point: after its masked update of round 1 reached the coordinator (it signed the
    // survivor set, which the coordinator asks for only once the inputs are in), and before
    // anything of round 2 can have reached it.
    c.danger_stall = Some(StallPoint {
        round: 1,
        before: "secagg_unmask_shares",
        hold: Duration::from_secs(2),
    });
    nodes.push(consortium.spawn_node(c.clone()));

    wait_for_egress(&c.state_dir, "secagg_signature", 1).await;
    link.cut(true);
    wait_for_completed(&state, 2).await;
    link.cut(false);
    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.last_round, 5);
    let round = |r: u64| &report.rounds[r as usize - 1];
    assert_eq!(round(1).participants, NODES.map(String::from).to_vec());
    assert_eq!(round(2).participants, ["hospital-a", "hospital-b"]);
    let (_, why) = round(2)
        .dropped
        .iter()
        .find(|(who, _)| who == "hospital-c")
        .expect("the partitioned node is a dropout");
    assert_eq!(*why, LeftOut::Deadline);
    assert!(
        report.rounds[2..]
            .iter()
            .any(|r| r.participants.contains(&"hospital-c".to_owned())),
        "hospital-c did not come back: {:?}",
        report.rounds
    );
    for node in nodes {
        node.await.unwrap().expect("node finishes");
    }
    check_ledger_matches_egress(&c.state_dir, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_stops_cleanly_when_every_node_has_spent_its_budget() {
    subscribe();
    let consortium = Consortium::new(&NODES, 120);
    let mut config = consortium.coordinator_config(5, 2);
    config.secure_aggregation.threshold = Some(2);
    let data_dir = config.data_dir.clone();
    // 90 training rows, batches of 16, 2 epochs: q = 16/90 and 12 noisy steps a round. Each
    // budget fits one round at σ = 1, not two.
    let one_round = epsilon(16.0 / 90.0, 1.0, 12, 1e-5).unwrap().0;
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let configs: Vec<NodeConfig> = NODES
        .iter()
        .map(|name| {
            let mut config = consortium.node_config(name, addr);
            tolerate_dropouts(&mut config);
            config.privacy = Some(policy(1.1 * one_round));
            config
        })
        .collect();
    let nodes: Vec<_> = configs
        .iter()
        .map(|c| consortium.spawn_node(c.clone()))
        .collect();
    let started = Instant::now();
    let report = coordinator
        .wait()
        .await
        .expect("the coordinator ends cleanly");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.last_round, 1);
    assert_eq!(report.rounds.len(), 1);
    let why = report
        .stopped_early
        .as_deref()
        .expect("says why it stopped");
    assert!(why.contains("privacy budget"), "{why}");
    // Not a round retried with pauses until the attempts ran out.
    assert!(seconds < 30.0, "took {seconds}s");
    // The final model is still evaluated, audited and checkpointed.
    assert!(report.final_evaluation.is_some());
    assert!(report.checkpoint.as_ref().is_some_and(|p| p.is_file()));
    for round in [0, 1] {
        assert!(
            data_dir
                .join("reports")
                .join(format!("round-{round:05}.json"))
                .is_file(),
            "report of round {round}"
        );
    }
    let store = Store::open(&data_dir.join("state.sqlite")).unwrap();
    let rows = store.rounds().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].status, RoundStatus::Completed);
    assert_eq!(rows[1].status, RoundStatus::Aborted);
    assert!(
        rows[1]
            .abort_reason
            .as_deref()
            .is_some_and(|r| r.contains("privacy budget")),
        "{:?}",
        rows[1]
    );
    for node in nodes {
        let outcome = node.await.unwrap().expect("node finishes");
        assert_eq!(outcome.last_round, 1);
    }
    for config in &configs {
        assert_eq!(PrivacyLedger::read(&config.state_dir).unwrap().len(), 1);
    }
}

/// One privacy-ledger entry per masked update the node's egress log says it sent in a training
/// round (1..=`rounds`; the statistics round and the final evaluation carry no noised update).
fn check_ledger_matches_egress(state_dir: &Path, rounds: u64) {
    let ledger = PrivacyLedger::read(state_dir).expect("ledger");
    let egress = EgressLog::read(state_dir).expect("egress log");
    let sent: Vec<u64> = egress
        .iter()
        .filter(|e| e.kind == "secagg_input")
        .filter_map(|e| e.round)
        .filter(|round| (1..=rounds).contains(round))
        .collect();
    let paid: Vec<u64> = ledger.iter().map(|e| e.round).collect();
    assert_eq!(paid, sent, "{}", state_dir.display());
}

/// Polls a node's egress log until it shows a message of `kind` for `round`.
async fn wait_for_egress(state_dir: &Path, kind: &str, round: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logged = EgressLog::read(state_dir).is_ok_and(|entries| {
            entries
                .iter()
                .any(|e| e.kind == kind && e.round == Some(round))
        });
        if logged {
            return;
        }
        assert!(Instant::now() < deadline, "no {kind} of round {round}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the coordinator's state until round `round` is completed.
async fn wait_for_completed(state: &Path, round: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = Store::open(state)
            .and_then(|store| store.rounds())
            .is_ok_and(|rows| {
                rows.iter()
                    .any(|r| r.round == round && r.status == RoundStatus::Completed)
            });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "round {round} never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A UDP relay between one node and the coordinator that can be cut, as a network partition
/// would: while cut, every datagram either way is lost.
struct Link {
    /// Where the node sends its datagrams.
    addr: SocketAddr,
    /// Whether datagrams are dropped.
    cut: Arc<AtomicBool>,
    /// The relay.
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    async fn to(coordinator: SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(coordinator).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                let mut node = None;
                let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
                loop {
                    tokio::select! {
                        received = front.recv_from(&mut up) => {
                            let Ok((len, from)) = received else { continue };
                            node = Some(from);
                            if !cut.load(Ordering::SeqCst) {
                                let _ = back.send(&up[..len]).await;
                            }
                        }
                        received = back.recv(&mut down) => {
                            let Ok(len) = received else { continue };
                            if let Some(to) = node.filter(|_| !cut.load(Ordering::SeqCst)) {
                                let _ = front.send_to(&down[..len], to).await;
                            }
                        }
                    }
                }
            }
        });
        Self { addr, cut, task }
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A round's hospitals declare, as their update's weight, how many training examples they used;
/// when they are exactly the hospitals of the statistics round, that must be what their
/// statistics counted. Here one hospital's data grew between the statistics round and training
/// (a malicious one would inflate its n to weigh more in the average): the round fails, naming
/// both counts, rather than being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_whose_example_count_differs_from_the_statistics_is_not_applied() {
    subscribe();
    let consortium = Consortium::new(&NODES, 80);
    // First run: the statistics round and no training round.
    let (first, _) = consortium
        .train(consortium.coordinator_config(0, 3), &NODES)
        .await;
    assert_eq!(first.last_round, 0);

    // hospital-c's file grows by 40 patients; the next run reuses the stored statistics.
    std::fs::write(consortium.csv("hospital-c"), synthetic_csv(120, 3)).expect("csv");
    let mut config = consortium.coordinator_config(1, 3);
    config.task.round_attempts = 1;
    let data_dir = config.data_dir.clone();
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let _nodes: Vec<_> = NODES
        .iter()
        .map(|name| consortium.spawn_node(consortium.node_config(name, addr)))
        .collect();
    let outcome = coordinator.wait().await;
    assert!(
        matches!(outcome, Err(CoordinatorError::GaveUp { round: 1 })),
        "{outcome:?}"
    );
    let store = Store::open(&data_dir.join("state.sqlite")).expect("state opens");
    let rounds = store.rounds().expect("rounds");
    let round = rounds.iter().find(|r| r.round == 1).expect("round 1 begun");
    assert_eq!(round.status, RoundStatus::Aborted, "{round:?}");
    let reason = round.abort_reason.as_deref().unwrap_or_default();
    // 3 × 60 training rows counted; 60 + 60 + 90 declared.
    assert!(
        reason.contains("declare 210 training examples, their statistics counted 180"),
        "{reason}"
    );
    assert!(round.model_hash_after.is_none());
}
