//! The consortium's own TorchScript module (`[task.model] kind = "torchscript"`) end to end:
//! the manifest names the module by its file's SHA-256, each hospital runs it only if it
//! approved that very file (`[policy] approved_modules`), and the coordinator aggregates it
//! knowing only its parameters' names and shapes, without libtorch.
//!
//! The module and its parameters are committed (`tests/fixtures/torchscript`, written by
//! `scripts/torchscript_model.py`): a gated unit, `out(tanh(a(x)) ⊙ σ(g(x)))`, and a second
//! module of the same parameters with another forward pass.

use std::path::PathBuf;
use std::time::Duration;

use medfed_e2e::{Consortium, dp_sgd_policy, subscribe};
use medfed_node::NodeError;
use medfed_node::config::NodeConfig;
use medfed_node::egress::EgressLog;
use medfed_node::ledger::{PrivacyLedger, Release};
use medfed_node::manifest::ManifestRefusal;
use medfed_node::modules::ApprovedModules;
use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::model::{ModelConfig, ModelKind};
use medfed_protocol::torchscript::module_digest;

use crate::model_file::{assert_predict_reproduces, medfed_node};

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/torchscript")).join(name)
}

/// The task's model: the module file `module` with the committed parameters.
fn torchscript_task(module: &str) -> ModelConfig {
    ModelConfig::TorchScript {
        module: fixture(module),
        parameters: fixture("risk_model.safetensors"),
    }
}

/// Each hospital approves the committed v1 module, and no other.
fn approve_v1(node: &mut NodeConfig) {
    node.policy.approved_modules = ApprovedModules::load(vec![fixture("risk_model.pt")]).unwrap();
}

/// The committed module trains across three hospitals with DP-SGD (per-example gradients by
/// one pass per example) under secure aggregation: the pooled held-out AUC rises above the
/// initial model's (about 0.76 to 0.85), the released model is the module's parameters under the manifest's
/// SHA-256, and each hospital's `medfed-node predict` (running its approved module) scores its
/// held-out rows as the final evaluation did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consortiums_torchscript_module_trains_under_dp_and_secure_aggregation() {
    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let mut config = consortium.coordinator_config(4, 3);
    config.task.model = torchscript_task("risk_model.pt");
    config.task.training.learning_rate = 0.5;
    assert!(config.secure_aggregation.enabled);
    let (report, nodes) = consortium
        .train_with(config, &NODES, |node| {
            approve_v1(node);
            node.privacy = Some(dp_sgd_policy(50.0));
        })
        .await;

    let ModelKind::TorchScript(module) = &report.final_model.spec.kind else {
        panic!("not the TorchScript model: {:?}", report.final_model.spec);
    };
    let file = std::fs::read(fixture("risk_model.pt")).unwrap();
    assert_eq!(module.sha256, module_digest(&file));
    assert_eq!(report.last_round, 4);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("the initial model evaluated");
    let last = report.final_evaluation.clone().expect("final evaluation");
    let (auc0, auc1) = (first.auc.unwrap(), last.auc.unwrap());
    // The synthetic outcome is drawn from a logistic model of age, blood pressure and smoking,
    // so no model separates it perfectly; the MLP's test asks the same rise.
    assert!(
        auc1 > 0.8 && auc1 > auc0 + 0.05,
        "pooled AUC {auc0} → {auc1}"
    );

    // Scoring releases nothing: the hospitals' configurations without their privacy sections.
    let nodes: Vec<_> = nodes
        .into_iter()
        .map(|node| NodeConfig {
            privacy: None,
            ..node
        })
        .collect();
    assert_predict_reproduces(&consortium, &nodes, &report, DecisionThreshold::default()).await;

    // A file of patients (here hospital-a's own CSV) scores with `--csv` and the node's
    // configuration, whose approved module the model needs.
    let (released, _) = report.released.clone().expect("a released model");
    let scores = consortium.dir.path().join("hospital-a-csv-scores.csv");
    let output = medfed_node(&[
        "predict".as_ref(),
        "--model".as_ref(),
        released.as_os_str(),
        "--csv".as_ref(),
        nodes[0].data.csv.as_os_str(),
        "--config".as_ref(),
        consortium.dir.path().join("hospital-a.toml").as_os_str(),
        "--out".as_ref(),
        scores.as_os_str(),
    ])
    .await;
    assert!(
        output.contains("scored 200 rows") && output.contains("0 rows not scored"),
        "{output}"
    );
}

/// A coordinator that names another module (the v2 file: the same parameters, another forward
/// pass) is refused by a hospital that approved v1 only, before anything but its hello left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_a_module_whose_hash_is_not_the_one_it_approved() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut config = consortium.coordinator_config(1, 3);
    config.task.model = torchscript_task("risk_model_v2.pt");
    let coordinator = consortium.start_coordinator(config).await;
    let mut node = consortium.node_config("hospital-a", coordinator.local_addr());
    approve_v1(&mut node);
    let result = tokio::time::timeout(Duration::from_secs(60), consortium.spawn_node(node.clone()))
        .await
        .expect("the node stops")
        .unwrap();
    let v2 = module_digest(&std::fs::read(fixture("risk_model_v2.pt")).unwrap());
    match result {
        Err(NodeError::ManifestRefused(ManifestRefusal::ModuleNotApproved { sha256 }))
            if sha256 == v2 => {}
        other => panic!("expected the module to be refused, got {other:?}"),
    }
    let kinds: Vec<String> = EgressLog::read(&node.state_dir)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["hello"]);
    coordinator.abort();
}

/// Distributed DP with the module: each hospital's noised integer sum of per-example gradients
/// (one pass per example through the module) under secure aggregation, every round charged to
/// each ledger, and the model moves and its pooled loss falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_torchscript_module_trains_under_distributed_dp() {
    subscribe();
    let consortium = Consortium::new(&NODES, 200);
    let rounds = 12;
    let mut config = consortium.coordinator_config(rounds, 3);
    config.task.model = torchscript_task("risk_model.pt");
    config.task.distributed_dp = Some(crate::distributed::plan(3));
    config.task.training.learning_rate = 0.5;
    let (report, nodes) = consortium
        .train_with(config, &NODES, |node| {
            approve_v1(node);
            node.privacy = Some(crate::distributed::distributed_policy());
        })
        .await;
    assert_eq!(report.rounds.len() as u64, rounds);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("round 1 evaluates the initial model");
    let last = report.final_evaluation.clone().expect("final evaluation");
    assert!(last.loss < first.loss, "{first:?} then {last:?}");
    for node in &nodes {
        let ledger = PrivacyLedger::read(&node.state_dir).unwrap();
        let charged: Vec<u64> = ledger
            .iter()
            .filter(|e| e.release == Release::DistributedTraining)
            .map(|e| e.round)
            .collect();
        assert_eq!(charged, (1..=rounds).collect::<Vec<_>>());
    }
}
