//! Declared architectures (`[task.model] kind = "layers"`) end to end: the model travels in the
//! manifest and the pushes, the nodes train it with libtorch, the coordinator aggregates it
//! knowing only its tensors' names and shapes.

use medfed_audit::checkpoint::read_checkpoint;
use medfed_e2e::{Consortium, subscribe};
use medfed_protocol::architecture::{LayerSpec, Shape};
use medfed_protocol::model::{ModelConfig, ModelKind};

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
