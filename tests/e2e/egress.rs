//! The egress log accounts for everything a node sent.

use medfed_e2e::{Consortium, subscribe};
use medfed_node::egress::{EgressLog, EgressTotals};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn egress_logs_account_for_every_byte_the_coordinator_received() {
    subscribe();
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let consortium = Consortium::new(&names, 120);
    let (report, configs) = consortium
        .train(consortium.coordinator_config(2, 3), &names)
        .await;
    for (name, config) in names.iter().zip(&configs) {
        let entries = EgressLog::read(&config.state_dir).unwrap();
        let totals = EgressTotals::of(&entries);
        assert_eq!(
            Some(&totals.bytes),
            report.bytes_received.get(*name),
            "{name}: {totals:?}"
        );
        // Everything that left is one of the protocol's node-to-coordinator messages.
        let kinds: Vec<&str> = totals.by_kind.iter().map(|(k, _, _)| k.as_str()).collect();
        for kind in &kinds {
            assert!(
                [
                    "hello",
                    "model_received",
                    "secagg_keys",
                    "secagg_shares",
                    "secagg_input",
                    "secagg_signature",
                    "secagg_unmask_shares",
                    "finished"
                ]
                .contains(kind),
                "{name} sent {kind}"
            );
        }
        assert!(
            kinds.contains(&"secagg_input") && kinds.contains(&"hello"),
            "{kinds:?}"
        );
        assert!(entries.iter().all(|e| e.sha256.len() == 64));
    }
}
