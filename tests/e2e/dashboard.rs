//! Issue 15: the operator's dashboard and Prometheus metrics, served by a real coordinator
//! training real nodes over QUIC, read with a real HTTP client (plain on loopback, TLS with a
//! token otherwise), and `medfed-coordinator status` read while the run is under way.

use std::time::{Duration, Instant};

use medfed_coordinator::config::{DashboardConfig, PausePhase, PausePoint};
use medfed_coordinator::console::RunSummary;
use medfed_e2e::http::{Client, metric};
use medfed_e2e::process::workspace_binary;
use medfed_e2e::{Consortium, subscribe};
use serde_json::Value;

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const ROUNDS: u64 = 3;

fn dashboard_on_loopback() -> DashboardConfig {
    DashboardConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        token_file: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_during_a_run_agree_with_its_summary_and_its_status() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut config = consortium.coordinator_config(ROUNDS, 3);
    config.dashboard = Some(dashboard_on_loopback());
    // The coordinator stops once the last round is completed, so the counters can be compared
    // with the summary at rest while the run is still live.
    config.danger_pause_at = Some(PausePoint {
        round: ROUNDS,
        phase: PausePhase::RoundCompleted,
    });
    let data_dir = config.data_dir.clone();
    let coordinator = consortium.start_coordinator(config).await;
    let client = Client::plain(coordinator.dashboard_addr().expect("the dashboard is on"));

    // The page and its files come from the binary, under a policy that loads nothing else.
    let page = client.get("/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    for asset in ["/assets/app.js", "/assets/app.css"] {
        assert_eq!(client.get(asset).await.unwrap().status, 200, "{asset}");
    }
    // Read-only, and nothing outside the reports folder.
    assert_eq!(
        client
            .request("POST", "/api/summary", &[])
            .await
            .unwrap()
            .status,
        405
    );
    for path in [
        "/reports/../state.sqlite",
        "/reports/round-1/../../state.sqlite",
        "/x",
    ] {
        assert_eq!(client.get(path).await.unwrap().status, 404, "{path}");
    }
    // A web page that rebinds its own name to 127.0.0.1 cannot read the loopback dashboard
    // from the operator's browser: its requests carry its name as Host.
    for host in ["attacker.example", "attacker.example:9464"] {
        let rebound = client
            .request("GET", "/api/summary", &[("Host", host)])
            .await
            .unwrap();
        assert_eq!(rebound.status, 421, "{host}");
    }
    for host in ["localhost:9464", "[::1]:9464"] {
        let local = client
            .request("GET", "/healthz", &[("Host", host)])
            .await
            .unwrap();
        assert_eq!(local.status, 200, "{host}");
    }
    // The event stream starts with the whole summary.
    let event = client.first_event("/events").await.unwrap();
    assert_eq!(event.header("content-type"), Some("text/event-stream"));
    let data = event
        .body
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("a data line");
    let first: Value = serde_json::from_str(data).unwrap();
    assert_eq!(first["task"]["rounds_planned"], ROUNDS);
    assert_eq!(
        first["task"]["members"].as_array().unwrap().len(),
        NODES.len()
    );

    let nodes: Vec<_> = NODES
        .iter()
        .map(|name| consortium.spawn_node(consortium.node_config(name, coordinator.local_addr())))
        .collect();
    // Scrape as the run goes: the round counter never goes back.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut completed = 0.0;
    let mut scrapes = 0;
    while completed < ROUNDS as f64 {
        assert!(
            Instant::now() < deadline,
            "the run did not reach round {ROUNDS}"
        );
        let exposition = client.get("/metrics").await.unwrap().body;
        let now = metric(&exposition, "medfed_rounds_completed_total").unwrap();
        assert!(
            now >= completed,
            "rounds completed went from {completed} to {now}"
        );
        completed = now;
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(scrapes > 1);
    // The coordinator pauses right after recording the last round; let it get there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exposition = client.get("/metrics").await.unwrap().body;
    let summary = RunSummary::read(&data_dir.join("summary.json")).unwrap();
    let value = |name: &str| {
        metric(&exposition, name).unwrap_or_else(|| panic!("no {name} in\n{exposition}"))
    };
    let totals = &summary.totals;
    assert_eq!(totals.rounds_completed, ROUNDS);
    assert_eq!(summary.rounds.len() as u64, ROUNDS);
    assert_eq!(value("medfed_rounds_completed_total"), ROUNDS as f64);
    assert_eq!(
        value("medfed_round_attempts_failed_total"),
        totals.attempts_failed as f64
    );
    assert!(totals.bytes_received > 0);
    assert_eq!(
        value("medfed_bytes_received_total"),
        totals.bytes_received as f64
    );
    assert_eq!(value("medfed_round_duration_seconds_count"), ROUNDS as f64);
    let seconds: f64 = summary.rounds.iter().map(|r| r.seconds).sum();
    assert!((value("medfed_round_duration_seconds_sum") - seconds).abs() < 1e-6);
    assert_eq!(
        value("medfed_checkpoint_duration_seconds_count"),
        ROUNDS as f64
    );
    // Every attempt's request phase is timed: the statistics round's and each round's.
    assert_eq!(
        value("medfed_round_phase_duration_seconds_count{phase=\"request\"}"),
        (ROUNDS + 1 + totals.attempts_failed) as f64
    );
    for (reason, count) in &totals.dropouts {
        assert_eq!(
            value(&format!(
                "medfed_node_dropouts_total{{reason=\"{reason}\"}}"
            )),
            *count as f64
        );
    }
    assert_eq!(value("medfed_nodes_connected"), NODES.len() as f64);
    let last_auc = summary.evaluations().last().and_then(|e| e.auc).unwrap();
    assert!((value("medfed_pooled_auc") - last_auc).abs() < 1e-9);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") > 0.0);

    // The summary: every hospital by name, in every round; a pooled evaluation per round.
    let names: Vec<&str> = summary.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, NODES);
    for node in &summary.nodes {
        assert_eq!(node.rounds_joined, ROUNDS, "{}", node.name);
        assert!(node.bytes_in > 0);
    }
    for (i, round) in summary.rounds.iter().enumerate() {
        assert_eq!(round.round, i as u64 + 1);
        assert_eq!(round.participants, NODES);
        assert_eq!(round.evaluation.as_ref().unwrap().model_round, i as u64);
        // Each round's report is linked and served.
        let report = round
            .report
            .as_deref()
            .expect("an audited round has a report");
        let served = client.get(&format!("/{report}")).await.unwrap();
        assert_eq!(served.status, 200, "{report}");
        assert!(served.body.contains("\"signature\""));
    }
    let reports_page = client.get("/reports/").await.unwrap();
    assert_eq!(reports_page.status, 200);
    assert!(
        reports_page
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );

    // `status` from another process, while the run is live, agrees.
    let toml = consortium.dir.path().join("coordinator.toml");
    std::fs::write(
        &toml,
        crate::crash::coordinator_toml(&consortium, None, None),
    )
    .unwrap();
    let status = |json: bool| {
        let mut command = std::process::Command::new(
            workspace_binary("medfed-coordinator", "medfed-coordinator").unwrap(),
        );
        command.args(["status", "--config"]).arg(&toml);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(json["running"], true);
    assert_eq!(json["summary"]["totals"]["rounds_completed"], ROUNDS);
    assert_eq!(json["store"]["rounds_completed"], ROUNDS);
    assert_eq!(
        json["store"]["nodes"].as_array().unwrap().len(),
        NODES.len()
    );
    let text = status(false);
    assert!(text.contains("coordinator: running (pid"), "{text}");
    for name in NODES {
        assert!(text.contains(name), "{text}");
    }

    coordinator.abort();
    for node in nodes {
        node.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_dashboard_answers_only_over_tls_and_only_with_its_token() {
    subscribe();
    let consortium = Consortium::new(&NODES, 20);
    let token = "6d656466656420646173686226f61726420746f6b656e20666f722074657374";
    let token_file = consortium.dir.path().join("dashboard.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut config = consortium.coordinator_config(1, 3);
    config.dashboard = Some(DashboardConfig {
        tls: true,
        token_file: Some(token_file),
        ..dashboard_on_loopback()
    });
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.dashboard_addr().unwrap();
    // Any client that trusts the consortium CA (here a node's TLS files).
    let tls = medfed_certs::client_config(
        &consortium.certs.node_tls("hospital-a").unwrap(),
        &[b"http/1.1"],
    )
    .unwrap();
    let client = Client::tls(addr, tls);

    let refused = client.get("/metrics").await.unwrap();
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(!refused.body.contains("medfed_"));
    let wrong = format!("Bearer {}", token.replace('6', "7"));
    let refused = client
        .request("GET", "/api/summary", &[("Authorization", &wrong)])
        .await
        .unwrap();
    assert_eq!(refused.status, 401);

    let bearer = format!("Bearer {token}");
    let metrics = client
        .request("GET", "/metrics", &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("medfed_rounds_completed_total 0"));

    // A browser opens `/?token=…` once: a secure cookie, and the token leaves the address.
    let opened = client.get(&format!("/?token={token}")).await.unwrap();
    assert_eq!(opened.status, 303);
    assert_eq!(opened.header("location"), Some("/"));
    let cookie = opened.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // The cookie is a session value, not the token Prometheus also holds.
    assert!(!cookie.contains(token), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let summary = client
        .request("GET", "/api/summary", &[("Cookie", pair)])
        .await
        .unwrap();
    assert_eq!(summary.status, 200);
    let summary: Value = serde_json::from_str(&summary.body).unwrap();
    assert_eq!(summary["format"], "medfed-run-summary/1");

    // Plain HTTP to the TLS listener gets no answer.
    assert!(Client::plain(addr).get("/metrics").await.is_err());
    coordinator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_refused_at_the_handshake_is_shown_by_its_subject_and_reason() {
    subscribe();
    let consortium = Consortium::new(&NODES, 20);
    let mut config = consortium.coordinator_config(1, 3);
    config.dashboard = Some(dashboard_on_loopback());
    let coordinator = consortium.start_coordinator(config).await;
    let client = Client::plain(coordinator.dashboard_addr().unwrap());

    // A node whose certificate another CA issued; it trusts the consortium's CA, so it gets as
    // far as presenting its certificate, which the coordinator's handshake refuses.
    let outsiders = Consortium::new(&["intruder"], 20);
    let mut intruder = outsiders.node_config("intruder", coordinator.local_addr());
    intruder.tls.ca_cert = consortium.certs.coordinator_tls().ca_cert;
    intruder.tls.crl = None;
    let outcome = tokio::time::timeout(Duration::from_secs(60), outsiders.spawn_node(intruder))
        .await
        .expect("a refused node stops")
        .unwrap();
    assert!(
        matches!(outcome, Err(medfed_node::NodeError::TlsRefused { .. })),
        "{outcome:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let summary: Value =
            serde_json::from_str(&client.get("/api/summary").await.unwrap().body).unwrap();
        if let Some(first) = summary["refused"].as_array().and_then(|r| r.first()) {
            break first.clone();
        }
        assert!(Instant::now() < deadline, "no refusal shown: {summary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["subject"], "intruder");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.starts_with("certificate_"), "{reason}");
    let exposition = client.get("/metrics").await.unwrap().body;
    let count = metric(
        &exposition,
        &format!("medfed_connections_refused_total{{reason=\"{reason}\"}}"),
    )
    .unwrap();
    assert!(count >= 1.0, "{exposition}");
    coordinator.abort();
}
