//! Declared architectures (`[task.model] kind = "layers"`) end to end: the model travels in the
//! manifest and the pushes, the nodes train it with libtorch, the coordinator aggregates it
//! knowing only its tensors' names and shapes.

use medfed_audit::checkpoint::read_checkpoint;
use medfed_e2e::{Consortium, dp_sgd_policy, subscribe};
use medfed_node::config::NodeConfig;
use medfed_protocol::architecture::{LayerSpec, Shape};
use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::model::{ModelConfig, ModelKind};

use crate::model_file::assert_predict_reproduces;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// The test schema's MLP (six encoded features, a hidden layer of 8) written layer by layer
/// trains exactly as `{ kind = "mlp", hidden = [8] }` does: same initial parameters, same
/// secure sums, same pooled figures, to float rounding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mlp_declared_layer_by_layer_trains_as_the_mlp_does() {
    subscribe();
    let run = |model: Option<ModelConfig>| async move {
        let consortium = Consortium::new(&NODES, 160);
        let mut config = consortium.coordinator_config(3, 3);
        if let Some(model) = model {
            config.task.model = model;
        }
        let (report, _) = consortium.train(config, &NODES).await;
        let (_, checkpoint) = read_checkpoint(report.checkpoint.as_ref().unwrap()).unwrap();
        (report, checkpoint)
    };
    let declared = ModelConfig::Layers {
        input: Shape::Features { features: 6 },
        layers: vec![
            LayerSpec::Linear { out: 8 },
            LayerSpec::Relu,
            LayerSpec::Linear { out: 1 },
        ],
    };
    let (mlp, _) = run(None).await;
    let (layers, checkpoint) = run(Some(declared)).await;

    assert!(matches!(layers.final_model.spec.kind, ModelKind::Layers(_)));
    // The checkpoint reads back as the declared model, hash and all.
    assert_eq!(checkpoint, layers.final_model);
    assert_ne!(layers.final_model.hash(), mlp.final_model.hash());
    assert_eq!(layers.last_round, 3);
    assert!(layers.rounds.iter().all(|r| r.participants.len() == 3));
    let largest_difference = mlp
        .final_model
        .params
        .iter()
        .zip(&layers.final_model.params)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        largest_difference < 1e-4,
        "the two models differ by {largest_difference}"
    );
    let (a, b) = (
        mlp.final_evaluation.unwrap(),
        layers.final_evaluation.unwrap(),
    );
    assert_eq!(a.examples, b.examples);
    assert!(
        (a.auc.unwrap() - b.auc.unwrap()).abs() < 1e-3 && (a.loss - b.loss).abs() < 1e-4,
        "MLP {a:?}, declared {b:?}"
    );
}

/// A declared CNN learns what a scan shows (a bar's direction, anywhere on a noisy 28×28 grey
/// image) across three hospitals, each training with DP-SGD on its own PNG files, every figure
/// under secure aggregation; each hospital's `medfed-node predict` then scores its held-out
/// scans with the released model as the consortium's final evaluation did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_cnn_learns_the_pattern_in_the_hospitals_scans_under_dp_and_secure_aggregation()
{
    subscribe();
    let consortium = Consortium::new(&NODES, 1);
    consortium.declare_image_cohort(&NODES, 240);
    let mut config = consortium.coordinator_config(4, 3);
    config.task.model = ModelConfig::Layers {
        input: Shape::Image {
            channels: 1,
            height: 28,
            width: 28,
        },
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 6,
                kernel: 5,
                stride: 1,
                padding: 0,
            },
            LayerSpec::GroupNorm { groups: 2 },
            LayerSpec::Relu,
            LayerSpec::MaxPool2d {
                kernel: 4,
                stride: None,
            },
            LayerSpec::Flatten,
            LayerSpec::Linear { out: 1 },
        ],
    };
    config.task.training.learning_rate = 0.5;
    config.task.training.batch_size = 32;
    assert!(config.secure_aggregation.enabled);
    let (report, nodes) = consortium
        .train_with(config, &NODES, |node| {
            node.privacy = Some(dp_sgd_policy(50.0));
        })
        .await;

    assert!(matches!(report.final_model.spec.kind, ModelKind::Layers(_)));
    assert_eq!(report.last_round, 4);
    assert!(report.rounds.iter().all(|r| r.participants.len() == 3));
    let first = report.rounds[0]
        .start_model_evaluation
        .clone()
        .expect("the initial model evaluated");
    let last = report.final_evaluation.clone().expect("final evaluation");
    // A quarter of 3 × 240 scans held out.
    assert_eq!(last.examples, 180);
    let (auc0, auc1) = (first.auc.unwrap(), last.auc.unwrap());
    assert!(
        auc1 > 0.85 && auc1 > auc0 + 0.2,
        "pooled AUC {auc0} → {auc1}"
    );
    // The audit covers the audit-only attributes of the scans' patients.
    let audited: Vec<&str> = report
        .final_fairness
        .iter()
        .map(|a| a.attribute.as_str())
        .collect();
    assert!(
        audited.contains(&"sex") && audited.contains(&"age"),
        "{audited:?}"
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
}
