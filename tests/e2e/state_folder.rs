//! Issue 12, attack 8: two processes, one hospital. The real `medfed-node` binary is started
//! twice on one state folder; the second must refuse to start, naming the lock and its holder,
//! before it contacts anyone, while the first trains on undisturbed.

use std::process::Command;
use std::time::Duration;

use medfed_e2e::process::{Process, node_toml, workspace_binary};
use medfed_e2e::{Consortium, subscribe};
use medfed_node::egress::{EgressLog, EgressTotals};
use medfed_node::state_lock::LOCK_FILE;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_process_on_the_same_state_folder_refuses_to_start() {
    subscribe();
    let consortium = Consortium::new(&NODES, 80);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(1, 3))
        .await;
    let addr = coordinator.local_addr();
    let config = consortium.node_config("hospital-a", addr);
    let toml = consortium.dir.path().join("hospital-a.toml");
    std::fs::write(&toml, node_toml(&config)).unwrap();
    let binary = workspace_binary("medfed-node", "medfed-node").unwrap();
    let run = || {
        let mut command = Command::new(&binary);
        command.args(["run", "--config"]).arg(&toml);
        command
    };

    // The first process is admitted, and waits for the others.
    let mut first = Process::spawn("hospital-a first", run()).unwrap();
    first
        .wait_for_line(STEP, |line| line.contains("admitted by the coordinator"))
        .await
        .unwrap();

    // The second, on the same folder, refuses to start.
    let mut second = Process::spawn("hospital-a second", run()).unwrap();
    let status = second.wait(STEP).await.unwrap();
    let output = second.output().join("\n");
    assert!(!status.success(), "the second process ran:\n{output}");
    let lock = config.state_dir.canonicalize().unwrap().join(LOCK_FILE);
    assert!(
        output.contains(&lock.display().to_string())
            && output.contains(&format!("pid {}", first.id())),
        "the refusal must name {} and pid {}:\n{output}",
        lock.display(),
        first.id()
    );
    assert!(first.is_running(), "the first process must be unaffected");

    // The first trains to the end with the other two hospitals.
    let others: Vec<_> = NODES[1..]
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    for round in &report.rounds {
        assert_eq!(round.participants, NODES.map(String::from));
    }
    for node in others {
        node.await.unwrap().expect("node finishes");
    }
    let status = first.wait(STEP).await.unwrap();
    assert!(status.success(), "{}", first.output().join("\n"));

    // One process spoke for hospital-a: one hello in its egress log, and every byte the
    // coordinator received from hospital-a is in it.
    let entries = EgressLog::read(&config.state_dir).unwrap();
    let hellos = entries.iter().filter(|e| e.kind == "hello").count();
    assert_eq!(hellos, 1, "{entries:?}");
    assert_eq!(
        Some(&EgressTotals::of(&entries).bytes),
        report.bytes_received.get("hospital-a")
    );
}
