use std::sync::Arc;
use std::time::Duration;

use medfed_protocol::messages::DeclineReason;
use medfed_protocol::round::LeftOut;

use super::*;

fn console(dir: Option<&Path>) -> Console {
    Console::new(
        dir,
        Arc::new(Registry::default()),
        CoordinatorInfo {
            pid: 1,
            ..CoordinatorInfo::default()
        },
        TaskInfo {
            rounds_planned: 3,
            members: vec!["a".into(), "b".into()],
            ..TaskInfo::default()
        },
    )
}

fn completed(round: u64, participants: &[&str]) -> CompletedRound {
    CompletedRound {
        round,
        participants: participants.iter().map(|p| (*p).to_owned()).collect(),
        dropped: vec![("c".into(), LeftOut::Deadline)],
        privacy: vec![("a".into(), 1.5, 1e-5)],
        evaluation: Some(PooledEvaluation {
            model_round: round - 1,
            examples: 100,
            auc: Some(0.75),
            accuracy: 0.7,
            loss: 0.5,
        }),
        fairness: None,
        report: Some(format!("reports/round-{round:05}.json")),
        seconds: 0.4,
        checkpoint_seconds: 0.01,
    }
}

#[test]
fn a_round_moves_nodes_through_their_states_and_is_recorded_once_completed() {
    let console = console(None);
    console.admitted("a", TransportKind::Quic);
    console.admitted("b", TransportKind::Quic);
    console.admitted("c", TransportKind::Quic);
    console.attempt_started(1, 1);
    console.phase(RoundPhase::Request, Some(Duration::from_secs(60)));
    console.asked(["a", "b", "c"]);
    let during = console.summary();
    let current = during.current.clone().unwrap();
    assert_eq!((current.round, current.attempt), (1, 1));
    assert_eq!(current.phase, RoundPhase::Request);
    assert!(current.deadline_at_ms.unwrap() >= current.phase_started_at_ms + 60_000);
    assert!(during.nodes.iter().all(|n| n.state == NodeState::Training));

    console.answered("a", None);
    console.answered("b", None);
    console.answered(
        "c",
        Some(&LeftOut::Declined {
            reason: DeclineReason::BudgetSpent,
        }),
    );
    let answered = console.summary();
    assert_eq!(answered.nodes[0].state, NodeState::Answered);
    assert_eq!(answered.nodes[2].state, NodeState::Dropped);
    assert!(
        answered.nodes[2]
            .reason
            .as_deref()
            .unwrap()
            .contains("declined")
    );
    assert_eq!(answered.totals.dropouts["declined"], 1);

    console.phase(RoundPhase::Shares, Some(Duration::from_secs(60)));
    console.round_completed(completed(1, &["a", "b"]));
    let after = console.summary();
    assert_eq!(after.current, None);
    assert_eq!(after.totals.rounds_completed, 1);
    let round = &after.rounds[0];
    assert_eq!(round.participants, ["a", "b"]);
    assert_eq!(round.dropped[0].reason, "deadline");
    assert!(round.phase_seconds.contains_key("request"));
    assert!(round.phase_seconds.contains_key("shares"));
    assert!(!round.phase_seconds.contains_key("inputs"));
    let a = &after.nodes[0];
    assert_eq!(
        (a.rounds_joined, a.epsilon, a.state),
        (1, Some(1.5), NodeState::Connected)
    );
    assert_eq!(after.nodes[1].epsilon, None);
    assert_eq!(after.nodes[2].rounds_joined, 0);
    assert_eq!(after.evaluations().count(), 1);
}

#[test]
fn refusals_are_counted_by_subject_and_reason() {
    let console = console(None);
    console.refused(Some("intruder"), "not_a_member", "first");
    console.refused(Some("intruder"), "not_a_member", "second");
    console.refused(None, "handshake", "bad certificate");
    let summary = console.summary();
    assert_eq!(summary.refused.len(), 2);
    assert_eq!(summary.refused[0].count, 2);
    assert_eq!(summary.refused[0].detail, "second");
    assert_eq!(summary.refused[1].subject, "unknown");
    assert_eq!(summary.totals.refusals["not_a_member"], 2);
}

#[test]
fn a_flood_of_made_up_subjects_keeps_the_refusal_list_bounded_and_counts_them_all() {
    let console = console(None);
    console.refused(Some("the-first"), "certificate_unknown_issuer", "");
    for i in 0..MAX_REFUSED_SUBJECTS + 100 {
        console.refused(
            Some(&format!("forged-{i}")),
            "certificate_unknown_issuer",
            "",
        );
    }
    let summary = console.summary();
    assert_eq!(summary.refused.len(), MAX_REFUSED_SUBJECTS);
    assert_eq!(
        summary.totals.refusals["certificate_unknown_issuer"],
        MAX_REFUSED_SUBJECTS as u64 + 101
    );
    // The latest subject is there; the first, seen least recently, made room.
    let last = format!("forged-{}", MAX_REFUSED_SUBJECTS + 99);
    assert!(summary.refused.iter().any(|r| r.subject == last));
    assert!(!summary.refused.iter().any(|r| r.subject == "the-first"));
}

#[test]
fn the_summary_file_follows_the_run_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let console = console(Some(dir.path()));
    let path = dir.path().join(SUMMARY_FILE);
    assert_eq!(
        RunSummary::read(&path).unwrap().state,
        RunState::WaitingForNodes
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "summary.json is readable by others: {mode:o}"
        );
    }
    console.set_state(RunState::Training);
    console.attempt_started(1, 1);
    console.round_completed(completed(1, &["a", "b"]));
    let read = RunSummary::read(&path).unwrap();
    assert_eq!(read.totals.rounds_completed, 1);
    assert_eq!(read, console.summary());
    console.ended(RunState::Finished, None);
    assert_eq!(RunSummary::read(&path).unwrap().state, RunState::Finished);
}

#[test]
fn a_summary_of_another_format_or_not_json_is_refused_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SUMMARY_FILE);
    std::fs::write(&path, r#"{"format": "medfed-run-summary/99"}"#).unwrap();
    let error = RunSummary::read(&path).unwrap_err().to_string();
    assert!(error.contains("medfed-run-summary/99") && error.contains("summary.json"));
    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(
        RunSummary::read(&path),
        Err(summary::SummaryError::Parse { .. })
    ));
}

#[test]
fn subscribers_see_each_change() {
    let console = console(None);
    let mut changes = console.subscribe();
    changes.borrow_and_update();
    console.admitted("a", TransportKind::Quic);
    assert!(changes.has_changed().unwrap());
}

#[test]
fn variant_labels_are_snake_case_variant_names() {
    use medfed_protocol::messages::RefusalReason;
    assert_eq!(variant_label(&RefusalReason::Replay { round: 1 }), "replay");
    assert_eq!(
        variant_label(&RefusalReason::ProtocolVersion { theirs: 1, ours: 2 }),
        "protocol_version"
    );
    assert_eq!(variant_label(&DeclineReason::BudgetSpent), "budget_spent");
}

#[test]
fn outside_text_is_kept_short_and_without_control_characters() {
    let console = console(None);
    let hostile = format!("\u{1b}]52;c;cm0gLXJmIH4=\u{7}{}", "x".repeat(10_000));
    console.refused(None, "handshake", &hostile);
    console.disconnected("a", &hostile);
    let summary = console.summary();
    for text in [
        &summary.refused[0].detail,
        summary.nodes[0].reason.as_ref().unwrap(),
    ] {
        assert!(
            text.chars().count() <= MAX_TEXT_CHARS + 1,
            "{} chars",
            text.len()
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.ends_with('…'));
    }
    assert_eq!(clean("plain words"), "plain words");
}

#[test]
fn the_live_summary_keeps_the_latest_rounds_and_counts_them_all() {
    let console = console(None);
    for round in 1..=(MAX_ROUNDS_KEPT as u64 + 5) {
        console.attempt_started(round, 1);
        console.round_completed(completed(round, &["a"]));
    }
    let summary = console.summary();
    assert_eq!(summary.rounds.len(), MAX_ROUNDS_KEPT);
    assert_eq!(summary.rounds[0].round, 6);
    assert_eq!(summary.totals.rounds_completed, MAX_ROUNDS_KEPT as u64 + 5);
}
