//! Issue 15: what operators and hospital teams read, from the real binaries run as they run them
//! (standard error a pipe, `NO_COLOR` unset).
//!
//! - Item 5: `--log-format json` writes one JSON object per line with the round and node spans
//!   as fields, and the text log carries no colour codes into a file or pipe.
//! - Item 8: a node says how many rounds it contributed to (and exits non-zero if none).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use medfed_e2e::process::{node_toml, workspace_binary};
use medfed_e2e::{Consortium, subscribe};
use serde_json::Value;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// Runs `binary` with `args` to its end (at most four minutes), with `NO_COLOR` unset and its
/// output piped.
async fn run_to_end(package: &str, args: Vec<std::ffi::OsString>) -> Output {
    let mut command = tokio::process::Command::new(workspace_binary(package, package).unwrap());
    command
        .args(args)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{package} did not finish"))
        .unwrap()
}

/// `--log-format FORMAT run --config CONFIG`.
fn run_args(format: &str, config: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--log-format".into(),
        format.into(),
        "run".into(),
        "--config".into(),
        config.into(),
    ]
}

/// Every line of a JSON log, parsed; fails on a line that is not a JSON object with a
/// timestamp, a level and a message.
fn json_lines(who: &str, stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who}: not a JSON line ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(value.get(key).is_some(), "{who}: no {key} in {line}");
            }
            assert!(
                value["fields"]["message"].is_string(),
                "{who}: no message in {line}"
            );
            value
        })
        .collect()
}

/// Whether an event was logged inside a span `name` whose field `field` is `value`.
fn in_span(event: &Value, name: &str, field: &str, value: &str) -> bool {
    event["spans"].as_array().is_some_and(|spans| {
        spans.iter().any(|span| {
            span["name"] == name
                && match &span[field] {
                    Value::String(s) => s == value,
                    Value::Number(n) => n.as_u64().is_some_and(|n| value.parse() == Ok(n)),
                    _ => false,
                }
        })
    })
}

// Flaky on the 2-core CI machine since 2026-12-04 (3 of that day's 5 fresh-clone runs, at three
// different commits, 5a95bab's tree among them): one node process is never admitted and keeps
// reconnecting. It passes alone and beside the other console tests; run it with
// `cargo test -p medfed-e2e --test e2e -- --ignored console::json_logs`. To be fixed, not kept.
#[ignore = "flaky on the CI machine: a node is sometimes never admitted (see the comment above)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_round_and_node_spans_and_text_logs_off_a_terminal_carry_no_colour() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let dir = consortium.dir.path();
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let coordinator_config = dir.join("coordinator.toml");
    std::fs::write(
        &coordinator_config,
        crate::crash::coordinator_toml(&consortium, Some(listen), None),
    )
    .unwrap();
    let coordinator = tokio::spawn(run_to_end(
        "medfed-coordinator",
        run_args("json", &coordinator_config),
    ));
    // hospital-a logs for machines, the others for people.
    let nodes: Vec<_> = NODES
        .iter()
        .map(|name| {
            let toml = dir.join(format!("{name}.toml"));
            std::fs::write(&toml, node_toml(&consortium.node_config(name, listen))).unwrap();
            let format = if *name == "hospital-a" {
                "json"
            } else {
                "text"
            };
            tokio::spawn(run_to_end("medfed-node", run_args(format, &toml)))
        })
        .collect();
    let coordinator = coordinator.await.unwrap();
    let mut node_outputs = Vec::new();
    for node in nodes {
        node_outputs.push(node.await.unwrap());
    }
    for (who, output) in std::iter::once(("coordinator", &coordinator))
        .chain(NODES.iter().copied().zip(&node_outputs))
    {
        assert!(
            output.status.success(),
            "{who} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // The coordinator's log: JSON lines, the round's events inside the round's span.
    let events = json_lines("coordinator", &coordinator.stderr);
    assert!(
        events
            .iter()
            .any(|e| in_span(e, "round", "round", "1") && e["level"] == "INFO"),
        "no event of round 1 in the coordinator's log"
    );
    // hospital-a's log: JSON lines, its round events inside its node and round spans.
    let events = json_lines("hospital-a", &node_outputs[0].stderr);
    assert!(
        events
            .iter()
            .any(|e| in_span(e, "node", "node", "hospital-a") && in_span(e, "round", "round", "1")),
        "no event of hospital-a's round 1 in its log"
    );
    // The text logs, written to a pipe: readable lines, no escape codes.
    for (name, output) in NODES.iter().zip(&node_outputs).skip(1) {
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(" INFO "), "{name}: {text}");
        assert!(
            !text.contains('\u{1b}'),
            "{name} wrote colour codes to a pipe: {text}"
        );
    }
}

/// Issue 15, item 8: `medfed-node run` ends by saying how many of the consortium's rounds the
/// hospital contributed figures to, counted from its egress log (a node that contributed to
/// none says so and exits with status 3; `medfed_node::egress::rounds_contributed` is
/// unit-tested on both sides). Here hospital-a's node joins two training rounds and the final
/// evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_says_how_many_rounds_it_contributed_to() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(2, 3))
        .await;
    let addr = coordinator.local_addr();
    let toml = consortium.dir.path().join("hospital-a.toml");
    std::fs::write(
        &toml,
        node_toml(&consortium.node_config("hospital-a", addr)),
    )
    .unwrap();
    let joiner = tokio::spawn(run_to_end("medfed-node", run_args("text", &toml)));
    let others: Vec<_> = NODES[1..]
        .iter()
        .map(|n| consortium.spawn_node(consortium.node_config(n, addr)))
        .collect();
    let report = coordinator.wait().await.expect("training completes");
    for node in others {
        node.await.unwrap().expect("the others finish");
    }
    assert_eq!(report.last_round, 2);
    let joiner = joiner.await.unwrap();
    let stdout = String::from_utf8_lossy(&joiner.stdout);
    assert!(joiner.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "hospital-a: training finished after round 2; this hospital contributed to 3 of its rounds"
        ),
        "{stdout}"
    );

    // `medfed-node status --json` says the same from the state folder, with the egress totals.
    let status = run_to_end(
        "medfed-node",
        vec![
            "status".into(),
            "--json".into(),
            "--config".into(),
            toml.into(),
        ],
    )
    .await;
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let state_dir = consortium.node_config("hospital-a", addr).state_dir;
    let egress = medfed_node::egress::EgressLog::read(&state_dir).unwrap();
    assert_eq!(status["rounds_contributed"], 3);
    assert_eq!(status["last_round_contributed"], 3);
    assert_eq!(status["messages_sent"], egress.len());
    assert_eq!(
        status["bytes_sent"],
        egress.iter().map(|e| e.bytes).sum::<u64>()
    );
    assert_eq!(status["budget"], Value::Null, "no [privacy]: no budget");
}

/// Item 7: a coordinator that gives up its task tells its nodes why as it closes, and they stop
/// with that reason at once instead of reconnecting for `reconnect_for` (300 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stop_with_the_reason_when_the_coordinator_gives_up_instead_of_reconnecting() {
    subscribe();
    let consortium = Consortium::new(&NODES, 40);
    // Three hospitals a round, two come: the statistics round fails, and with one attempt
    // the coordinator gives up.
    let mut config = consortium.coordinator_config(2, 3);
    config.task.wait_for_nodes_secs = 5.0;
    config.task.round_attempts = 1;
    let data_dir = config.data_dir.clone();
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    let nodes: Vec<_> = NODES[..2]
        .iter()
        .map(|name| consortium.spawn_node(consortium.node_config(name, addr)))
        .collect();
    let gave_up = coordinator.wait().await.unwrap_err().to_string();
    for node in nodes {
        let stopped = tokio::time::timeout(Duration::from_secs(30), node)
            .await
            .expect("the node stops within seconds, not after reconnect_for")
            .unwrap();
        match stopped {
            Err(medfed_node::NodeError::TaskStopped(reason)) => {
                assert_eq!(reason, gave_up);
            }
            other => panic!("expected the task-stopped error, got {other:?}"),
        }
    }
    let summary =
        medfed_coordinator::console::RunSummary::read(&data_dir.join("summary.json")).unwrap();
    assert_eq!(summary.state, medfed_coordinator::console::RunState::Failed);
    assert_eq!(summary.stopped.as_deref(), Some(gave_up.as_str()));
}
