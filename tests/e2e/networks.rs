//! Hospital networks (issue 18): a node whose firewall drops UDP falls back to TCP, and a node
//! behind an HTTP proxy reaches the coordinator through `CONNECT`; both train with secure
//! aggregation beside nodes on QUIC, and the coordinator's console says which transport each
//! node is on; a model push cut in the middle resumes after the reconnect.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use medfed_e2e::network::{
    ConnectProxy, CuttingRelay, TcpOnlyFirewall, accept_all, coordinator_listener,
};
use medfed_e2e::{Consortium, subscribe};
use medfed_node::config::NetworkConfig;
use medfed_node::egress::EgressLog;
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::messages::{Hello, Message, PROTOCOL_VERSION};
use medfed_transport::{
    Connector, MessageReader, PeerAddress, Proxy, TransportKind, TransportMode, peer_identity,
    send_message,
};

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// Rounds in which the node with `state_dir` sent a masked input, from its egress log.
fn rounds_with_inputs(state_dir: &std::path::Path) -> Vec<u64> {
    let mut rounds: Vec<u64> = EgressLog::read(state_dir)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "secagg_input")
        .filter_map(|e| e.round)
        .collect();
    rounds.dedup();
    rounds
}

/// Trains 2 rounds with secure aggregation; hospital-a's network is set by `network` and it
/// connects to `front(coordinator address)`. Returns hospital-a's state folder and the
/// coordinator's last summary.
async fn train_with_a_behind(
    consortium: &Consortium,
    front: impl AsyncFnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
    network: NetworkConfig,
) -> (std::path::PathBuf, medfed_coordinator::console::RunSummary) {
    let coordinator = consortium
        .start_coordinator(consortium.coordinator_config(2, 3))
        .await;
    let addr = coordinator.local_addr();
    let mut behind = consortium.node_config("hospital-a", front(addr).await);
    behind.network = network;
    let state_dir = behind.state_dir.clone();
    let mut nodes = vec![consortium.spawn_node(behind)];
    for name in &NODES[1..] {
        nodes.push(consortium.spawn_node(consortium.node_config(name, addr)));
    }
    let console = coordinator.console().clone();
    let report = coordinator.wait().await.expect("training completes");
    assert_eq!(report.last_round, 2);
    for node in nodes {
        node.await.unwrap().expect("every node finishes");
    }
    (state_dir, console.summary())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_firewall_drops_udp_trains_over_tcp() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut firewall = None;
    let network = NetworkConfig {
        transport: TransportMode::Auto,
        quic_timeout: Duration::from_secs(1),
        proxy: None,
    };
    let (state_dir, summary) = train_with_a_behind(
        &consortium,
        async |addr| {
            let wall = TcpOnlyFirewall::start(addr).await;
            let front = wall.front;
            firewall = Some(wall);
            front
        },
        network,
    )
    .await;
    let firewall = firewall.unwrap();
    // QUIC was tried (its datagrams were dropped), then TCP carried the whole run.
    assert!(firewall.udp_dropped() > 0);
    assert!(firewall.tcp_forwarded() >= 1);
    // hospital-a put its masked input into the statistics round (0), both training rounds and
    // the final evaluation (3).
    assert_eq!(rounds_with_inputs(&state_dir), [0, 1, 2, 3]);
    let transports: Vec<_> = summary
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.transport, n.rounds_joined))
        .collect();
    assert_eq!(
        transports,
        [
            ("hospital-a", Some(TransportKind::Tcp), 2),
            ("hospital-b", Some(TransportKind::Quic), 2),
            ("hospital-c", Some(TransportKind::Quic), 2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_an_http_proxy_trains_through_connect() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut proxy = ConnectProxy::start(Some("hospital-a:proxy-secret")).await;
    let credentials = consortium.dir.path().join("proxy-credentials");
    std::fs::write(&credentials, "hospital-a:proxy-secret\n").unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let network = NetworkConfig {
        transport: TransportMode::Tcp,
        quic_timeout: Duration::from_secs(5),
        proxy: Some(Proxy::new(&proxy.url(), Some(&credentials)).unwrap()),
    };
    let mut coordinator_addr = None;
    let (state_dir, summary) = train_with_a_behind(
        &consortium,
        async |addr| {
            coordinator_addr = Some(addr);
            addr
        },
        network,
    )
    .await;
    let request = proxy
        .requests
        .recv()
        .await
        .expect("the node asked the proxy");
    assert!(
        request.starts_with(&format!(
            "CONNECT {} HTTP/1.1\r\n",
            coordinator_addr.unwrap()
        )),
        "{request}"
    );
    assert_eq!(rounds_with_inputs(&state_dir), [0, 1, 2, 3]);
    let a = &summary.nodes[0];
    assert_eq!(
        (a.name.as_str(), a.transport),
        ("hospital-a", Some(TransportKind::Tcp))
    );
    assert_eq!(a.rounds_joined, 2);
}

/// The connector alone, against a listener behind the firewall: `auto` gives QUIC its timeout,
/// then connects over TCP, and goes straight to TCP from then on.
#[tokio::test]
async fn auto_falls_back_to_tcp_once_and_stays_there() {
    let consortium = Consortium::new(&NODES[..1], 60);
    let server = coordinator_listener(&consortium.certs);
    let firewall = TcpOnlyFirewall::start(server.local_addr().unwrap()).await;
    let mut accepted = accept_all(server);
    let connector = Connector::new(
        &consortium.certs.node_tls("hospital-a").unwrap(),
        TransportMode::Auto,
        Duration::from_millis(500),
        None,
    )
    .unwrap();
    let front: PeerAddress = firewall.front.into();
    let started = Instant::now();
    let node = connector.connect(&front, "localhost").await.unwrap();
    assert_eq!(node.kind(), TransportKind::Tcp);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "QUIC was tried first"
    );
    let coordinator = accepted.recv().await.unwrap();
    assert_eq!(coordinator.kind(), TransportKind::Tcp);
    assert_eq!(peer_identity(&coordinator).unwrap().0, "hospital-a");
    assert_eq!(connector.preferred(), TransportKind::Tcp);
    let started = Instant::now();
    let again = connector.connect(&front, "localhost").await.unwrap();
    assert_eq!(again.kind(), TransportKind::Tcp);
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// A proxy that wants credentials answers 407 without them, and the error says what to set;
/// with them, the tunnel carries TLS end to end (the node sees the coordinator's certificate).
#[tokio::test]
async fn a_proxy_that_wants_credentials_is_answered_with_them() {
    let consortium = Consortium::new(&NODES[..1], 60);
    let server = coordinator_listener(&consortium.certs);
    let coordinator_addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(connection) = incoming.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut send, recv) = connection.accept_bi().await.unwrap();
                let hello = MessageReader::new(recv, MAX_FRAME_LEN)
                    .expect()
                    .await
                    .unwrap();
                send_message(&mut send, &hello).await.unwrap();
                send.finish().await;
                connection.closed().await;
            });
        }
    });
    let mut proxy = ConnectProxy::start(Some("alice:s3cret")).await;
    let node_tls = consortium.certs.node_tls("hospital-a").unwrap();
    let target: PeerAddress = coordinator_addr.into();
    let tcp_via = |proxy: Proxy| {
        Connector::new(
            &node_tls,
            TransportMode::Tcp,
            Duration::from_secs(5),
            Some(proxy),
        )
        .unwrap()
    };

    let without = tcp_via(Proxy::new(&proxy.url(), None).unwrap());
    let error = without.connect(&target, "localhost").await.unwrap_err();
    assert!(error.to_string().contains("407"), "{error}");
    assert!(
        error.to_string().contains("proxy_credentials_file"),
        "{error}"
    );
    assert!(
        !proxy
            .requests
            .recv()
            .await
            .unwrap()
            .contains("Proxy-Authorization")
    );

    let credentials = consortium.dir.path().join("proxy-credentials");
    std::fs::write(&credentials, "alice:s3cret\n").unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with = tcp_via(Proxy::new(&proxy.url(), Some(&credentials)).unwrap());
    let node = with.connect(&target, "localhost").await.unwrap();
    assert_eq!(node.remote_address(), proxy.addr);
    assert_eq!(
        peer_identity(&node).unwrap().0,
        medfed_certs::COORDINATOR_NAME
    );
    let hello = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: [3; 32],
        model_hash: None,
        partial_model: None,
    });
    let (mut send, recv) = node.open_bi().await.unwrap();
    send_message(&mut send, &hello).await.unwrap();
    send.finish().await;
    assert_eq!(
        MessageReader::new(recv, MAX_FRAME_LEN)
            .expect()
            .await
            .unwrap(),
        hello
    );
    assert!(
        proxy
            .requests
            .recv()
            .await
            .unwrap()
            .contains("Proxy-Authorization: Basic ")
    );
}

/// A model push cut in the middle resumes, after the node reconnects, from the chunks it had
/// checked: hospital-a's VPN drops 2.5 MB into the first download of a 4 MB model, and the
/// bytes it receives over the whole run come to the two models it needs (the round's and the
/// final one), not to them plus the lost part again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_push_cut_in_the_middle_resumes_after_the_reconnect() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let mut config = consortium.coordinator_config(1, 3);
    // About 1.06 million parameters: 4.2 MB, five chunks of 1 MiB.
    config.task.model = medfed_protocol::model::ModelConfig::Mlp {
        hidden: vec![1024, 1024],
    };
    let coordinator = consortium.start_coordinator(config).await;
    let addr = coordinator.local_addr();
    const CUT_AFTER: u64 = 2_500_000;
    let relay = CuttingRelay::start(addr, CUT_AFTER).await;
    let mut behind = consortium.node_config("hospital-a", relay.front);
    behind.network = NetworkConfig {
        transport: TransportMode::Tcp,
        quic_timeout: Duration::from_secs(5),
        proxy: None,
    };
    let state_dir = behind.state_dir.clone();
    let mut nodes = vec![consortium.spawn_node(behind)];
    for name in &NODES[1..] {
        nodes.push(consortium.spawn_node(consortium.node_config(name, addr)));
    }
    let report = coordinator.wait().await.expect("training completes");
    for node in nodes {
        node.await.unwrap().expect("every node finishes");
    }
    assert_eq!(report.last_round, 1);
    assert_eq!(relay.cuts(), 1, "the first connection was cut");
    // hospital-a joined the statistics round, round 1 and the final evaluation all the same.
    assert_eq!(rounds_with_inputs(&state_dir), [0, 1, 2]);
    // Two pushes of ~4.2 MB each; a push started over would add the 2.5 MB cut again.
    let model_bytes = 4 * medfed_protocol::model::ModelSpec {
        kind: medfed_protocol::model::ModelKind::Mlp {
            hidden: vec![1024, 1024],
        },
        input_dim: medfed_protocol::schema::Schema::parse(
            &std::fs::read_to_string(&consortium.schema).unwrap(),
        )
        .unwrap()
        .num_features(),
    }
    .layout()
    .len() as u64;
    let received = relay.downstream_bytes();
    assert!(
        received < 2 * model_bytes + CUT_AFTER / 2,
        "hospital-a received {received} bytes for two models of {model_bytes}"
    );
    assert!(received > 2 * model_bytes, "{received}");
}

/// Through a proxy, TCP's own keep-alives reach only the proxy. A proxy whose far side dies
/// without a word (it keeps the node's socket open and passes nothing) is noticed by medfed's
/// own keep-alives within the idle timeout, on both ends, as QUIC would.
#[tokio::test]
async fn a_connection_whose_path_goes_silent_is_lost_within_the_idle_timeout() {
    let consortium = Consortium::new(&NODES[..1], 60);
    let server = coordinator_listener(&consortium.certs);
    let relay = CuttingRelay::start(server.local_addr().unwrap(), u64::MAX).await;
    let mut accepted = accept_all(server);
    let connector = Connector::new(
        &consortium.certs.node_tls("hospital-a").unwrap(),
        TransportMode::Tcp,
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let node = connector
        .connect(&relay.front.into(), "localhost")
        .await
        .unwrap();
    let coordinator = accepted.recv().await.unwrap();
    // Alive across several keep-alive periods while the path works.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(node.close_reason(), None);
    relay.freeze();
    let frozen_at = Instant::now();
    let wait = Duration::from_secs(45);
    let (node_end, coordinator_end) = tokio::join!(
        tokio::time::timeout(wait, node.closed()),
        tokio::time::timeout(wait, coordinator.closed())
    );
    assert_eq!(
        node_end.expect("the node notices"),
        medfed_transport::ConnectionError::TimedOut
    );
    assert_eq!(
        coordinator_end.expect("the coordinator notices"),
        medfed_transport::ConnectionError::TimedOut
    );
    assert!(
        frozen_at.elapsed() >= Duration::from_secs(20),
        "{:?}",
        frozen_at.elapsed()
    );
}
