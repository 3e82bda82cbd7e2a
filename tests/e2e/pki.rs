//! Issue 12, "PKI": the real `medfed-coordinator` binary picks up a new CRL without a restart,
//! and its log names the certificate subject and the reason of every connection it refuses.
//! Nodes connect over QUIC with real consortium certificates: the real node, or a hand-driven
//! client where a node would never misbehave that way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use medfed_certs::{TlsFiles, revoke};
use medfed_e2e::process::{Process, toml_string, workspace_binary};
use medfed_e2e::{Consortium, subscribe};
use medfed_node::NodeError;
use medfed_protocol::codec::MAX_FRAME_LEN;
use medfed_protocol::messages::{Hello, Message, PROTOCOL_VERSION};
use medfed_protocol::schema::Schema;
use medfed_transport::{MessageReader, client_endpoint, send_message};

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_revoked_while_the_coordinator_runs_is_refused_at_its_next_connection() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let (mut coordinator, addr) = start_coordinator(&consortium).await;

    // hospital-a is admitted …
    let first = connect(&consortium.certs.node_tls("hospital-a").unwrap(), addr)
        .await
        .expect("a valid certificate is accepted");
    assert!(matches!(
        hello(&first, &consortium).await,
        Message::Welcome(_)
    ));
    first.close(0u32.into(), b"bye");

    // … then revoked, while the coordinator runs.
    let tls = consortium.certs.node_tls("hospital-a").unwrap();
    revoke(&consortium.certs.dir, &tls.cert).unwrap();

    // The real node's next connection is refused at the handshake.
    let node = consortium.spawn_node(consortium.node_config("hospital-a", addr));
    match node.await.unwrap() {
        Err(NodeError::TlsRefused { detail, .. }) => {
            assert!(detail.contains("Revoked"), "{detail}");
        }
        other => panic!("the revoked node must be refused at the handshake, got {other:?}"),
    }
    coordinator
        .wait_for_line(STEP, |line| line.contains("CRL reloaded"))
        .await
        .unwrap();
    coordinator
        .wait_for_line(STEP, |line| {
            line.contains("certificate refused")
                && line.contains("subject=hospital-a ")
                && line.contains("Revoked")
        })
        .await
        .unwrap();
    assert!(coordinator.is_running(), "no restart");

    // The others still get in.
    let other = connect(&consortium.certs.node_tls("hospital-b").unwrap(), addr)
        .await
        .expect("an unrevoked certificate is still accepted");
    assert!(matches!(
        hello(&other, &consortium).await,
        Message::Welcome(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_connection_is_logged_with_its_subject_and_reason() {
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let (mut coordinator, addr) = start_coordinator(&consortium).await;
    let tls = |name: &str| consortium.certs.node_tls(name).unwrap();

    // At the handshake: a certificate from another CA with our CA's name, …
    let foreign = consortium.dir.path().join("foreign");
    let other = medfed_certs::make_dev_consortium(&foreign, &["intruder".into()]).unwrap();
    let intruder = TlsFiles {
        ca_cert: consortium.certs.ca_cert.clone(),
        ..other.node_tls("intruder").unwrap()
    };
    refused(&intruder, addr).await;
    expect_logged(
        &mut coordinator,
        "certificate refused",
        "intruder",
        "BadSignature",
    )
    .await;
    // … and the coordinator's own certificate, which is not for clients.
    let coordinator_tls = consortium.certs.coordinator_tls();
    refused(&coordinator_tls, addr).await;
    expect_logged(
        &mut coordinator,
        "certificate refused",
        "coordinator",
        "client authentication",
    )
    .await;

    // After it: a Hello for another schema, …
    let connection = connect(&tls("hospital-b"), addr).await.unwrap();
    let (mut send, recv) = medfed_transport::Connection::from(connection.clone())
        .open_bi()
        .await
        .unwrap();
    let wrong = Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: [7; 32],
        model_hash: None,
        partial_model: None,
    };
    send_message(&mut send, &Message::Hello(wrong))
        .await
        .unwrap();
    send.finish().await;
    assert!(matches!(
        MessageReader::new(recv, MAX_FRAME_LEN).expect().await,
        Ok(Message::Refused(_))
    ));
    expect_logged(
        &mut coordinator,
        "node not admitted",
        "hospital-b",
        "schema",
    )
    .await;
    // … bytes that are no message, …
    let connection = connect(&tls("hospital-c"), addr).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    // The coordinator may stop the stream before all of it is written.
    let _ = send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let _ = send.finish();
    expect_logged(
        &mut coordinator,
        "node not admitted",
        "hospital-c",
        "bad hello",
    )
    .await;

    // … and a second connection under an identity already connected.
    let first = connect(&tls("hospital-a"), addr).await.unwrap();
    assert!(matches!(
        hello(&first, &consortium).await,
        Message::Welcome(_)
    ));
    let second = connect(&tls("hospital-a"), addr).await.unwrap();
    assert!(matches!(
        hello(&second, &consortium).await,
        Message::Welcome(_)
    ));
    coordinator
        .wait_for_line(STEP, |line| {
            line.contains("replaces the one connected") && line.contains("subject=hospital-a")
        })
        .await
        .unwrap();
}

/// Waits for the coordinator's `what` line naming `subject` with a reason containing `reason`.
async fn expect_logged(coordinator: &mut Process, what: &str, subject: &str, reason: &str) {
    let subject = format!("subject={subject} ");
    coordinator
        .wait_for_line(STEP, |line| {
            line.contains(what) && line.contains(&subject) && line.contains(reason)
        })
        .await
        .unwrap_or_else(|e| panic!("no {what:?} line for {subject}{reason}: {e}"));
}

/// Starts the real coordinator with the consortium's CRL, waiting for three nodes that never
/// all come (the tests only connect); returns it and its address.
async fn start_coordinator(consortium: &Consortium) -> (Process, SocketAddr) {
    let config = consortium.dir.path().join("coordinator.toml");
    std::fs::write(&config, coordinator_toml(consortium)).unwrap();
    let binary = workspace_binary("medfed-coordinator", "medfed-coordinator").unwrap();
    let mut command = Command::new(binary);
    command.args(["run", "--config"]).arg(&config);
    let mut coordinator = Process::spawn("coordinator", command).unwrap();
    let line = coordinator
        .wait_for_line(STEP, |line| line.contains("coordinator listening"))
        .await
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("local_addr="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (coordinator, addr)
}

fn coordinator_toml(consortium: &Consortium) -> String {
    let tls = consortium.certs.coordinator_tls();
    let path = |p: &Path| toml_string(&p.display().to_string());
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = {data_dir}
schema = {schema}
members = {members}

[tls]
ca_cert = {ca}
cert = {cert}
key = {key}
crl = {crl}

[task]
model = {{ kind = "mlp", hidden = [8] }}
rounds = 1
min_nodes = 3
seed = 11
round_deadline_secs = 60
wait_for_nodes_secs = 600
round_attempts = 1

[task.training]
local_epochs = 1
learning_rate = 0.1
batch_size = 16
"#,
        data_dir = path(&consortium.dir.path().join("coordinator")),
        schema = path(&consortium.schema),
        members = path(&consortium.certs.members),
        ca = path(&tls.ca_cert),
        cert = path(&tls.cert),
        key = path(&tls.key),
        crl = path(tls.crl.as_deref().expect("the dev consortium has a CRL")),
    )
}

/// A QUIC connection to the coordinator with `tls`'s certificate (the node reads no CRL).
async fn connect(tls: &TlsFiles, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let endpoint = client_endpoint(&TlsFiles {
        crl: None,
        ..tls.clone()
    })
    .map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

/// Checks that a connection with `tls`'s certificate is refused at the handshake (the refusal
/// may reach the client just after its side of the handshake is done).
async fn refused(tls: &TlsFiles, addr: SocketAddr) {
    if let Ok(connection) = connect(tls, addr).await {
        let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed())
            .await
            .expect("the coordinator closes the connection");
        assert!(
            matches!(closed, quinn::ConnectionError::ConnectionClosed(_)),
            "{closed}"
        );
    }
}

/// Says a correct `Hello`; returns the answer.
async fn hello(connection: &quinn::Connection, consortium: &Consortium) -> Message {
    let schema = Schema::parse(&std::fs::read_to_string(&consortium.schema).unwrap()).unwrap();
    let (mut send, recv) = medfed_transport::Connection::from(connection.clone())
        .open_bi()
        .await
        .unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: schema.digest(),
        model_hash: None,
        partial_model: None,
    };
    send_message(&mut send, &Message::Hello(hello))
        .await
        .unwrap();
    send.finish().await;
    MessageReader::new(recv, MAX_FRAME_LEN)
        .expect()
        .await
        .unwrap()
}

/// A node revoked while it has a TLS session with the coordinator cannot come back by resuming
/// that session: a resumed handshake would skip the certificate check, so the coordinator
/// offers none. The same connector (and so the same client session cache) reconnects, on each
/// transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_cannot_resume_its_tls_session_on_either_transport() {
    use medfed_e2e::network::coordinator_listener;
    use medfed_transport::{Connector, PeerAddress, TransportMode};
    subscribe();
    let consortium = Consortium::new(&NODES, 60);
    let server = coordinator_listener(&consortium.certs);
    let addr: PeerAddress = server.local_addr().unwrap().into();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.accept().await {
                    connection.closed().await;
                }
            });
        }
    });
    let tls = consortium.certs.node_tls("hospital-a").unwrap();
    let connectors: Vec<Connector> = [TransportMode::Quic, TransportMode::Tcp]
        .into_iter()
        .map(|mode| Connector::new(&tls, mode, STEP, None).unwrap())
        .collect();
    for connector in &connectors {
        let first = connector.connect(&addr, "localhost").await.unwrap();
        // Long enough for any session ticket to arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.close(0, b"bye");
    }
    revoke(&consortium.certs.dir, &tls.cert).unwrap();
    for connector in &connectors {
        // TCP fails the connect itself; QUIC's client finishes its handshake first and hears
        // of the refusal right after.
        let refusal = match connector.connect(&addr, "localhost").await {
            Err(refusal) => refusal,
            Ok(connection) => tokio::time::timeout(STEP, connection.closed())
                .await
                .expect("the connection is refused"),
        };
        match refusal {
            medfed_transport::ConnectionError::TlsAlert { alert, detail } => {
                assert_eq!(alert, 44, "certificate_revoked: {detail}");
            }
            other => panic!("the revoked node got {other:?}"),
        }
    }
}
