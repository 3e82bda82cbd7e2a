//! The secure channel on 127.0.0.1, over QUIC and over TCP alike: a consortium node reaches the
//! coordinator, each side learns who the other is from its certificate, messages cross as
//! frames, a frame over the reader's cap is refused rather than buffered, and a close carries
//! its code and reason; a QUIC connection survives the node's address changing under it (NAT
//! rebinding).

use std::net::SocketAddr;
use std::time::Duration;

use medfed_certs::{COORDINATOR_NAME, DevConsortium};
use medfed_protocol::codec::{CodecError, MAX_FRAME_LEN};
use medfed_protocol::messages::{Hello, Message, PROTOCOL_VERSION};
use medfed_transport::{
    ChannelError, Connection, ConnectionError, Connector, Listener, MessageReader, PeerAddress,
    TransportMode, client_endpoint, peer_identity, send_message, server_endpoint,
};

const BOTH: [TransportMode; 2] = [TransportMode::Quic, TransportMode::Tcp];

/// A development consortium with nodes `names` in a fresh temporary directory.
fn consortium(names: &[&str]) -> (tempfile::TempDir, DevConsortium) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let consortium = medfed_certs::make_dev_consortium(dir.path(), &names).unwrap();
    (dir, consortium)
}

fn hello(byte: u8) -> Message {
    Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        schema_digest: [byte; 32],
        model_hash: None,
        partial_model: None,
    })
}

/// The coordinator's listener and node `name`'s connection to it over `mode`, both ends
/// established.
async fn connect(
    consortium: &DevConsortium,
    name: &str,
    mode: TransportMode,
) -> (Listener, Connection, Connection) {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = Listener::bind(&consortium.coordinator_tls(), listen, None).unwrap();
    let addr = server.local_addr().unwrap();
    let connector = Connector::new(
        &consortium.node_tls(name).unwrap(),
        mode,
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let accepted = async { server.accept().await.unwrap().accept().await };
    let target: PeerAddress = addr.into();
    let (client_side, server_side) =
        tokio::join!(connector.connect(&target, "localhost"), accepted);
    (server, client_side.unwrap(), server_side.unwrap())
}

#[tokio::test]
async fn each_side_is_named_by_its_certificate_and_messages_arrive_in_order() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    for mode in BOTH {
        let (_server, node, coordinator) = connect(&consortium, "hospital-a", mode).await;

        let (node_name, _) = peer_identity(&coordinator).unwrap();
        assert_eq!(node_name, "hospital-a");
        let (coordinator_name, _) = peer_identity(&node).unwrap();
        assert_eq!(coordinator_name, COORDINATOR_NAME);

        let (mut send, _recv) = node.open_bi().await.unwrap();
        let mut sent = 0;
        for byte in [1, 2, 3] {
            sent += send_message(&mut send, &hello(byte)).await.unwrap();
        }
        send.finish().await;
        let (_send, recv) = coordinator.accept_bi().await.unwrap();
        let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
        for byte in [1, 2, 3] {
            assert_eq!(reader.expect().await.unwrap(), hello(byte));
        }
        // The stream ended cleanly between frames: no message, no error.
        assert!(reader.next().await.unwrap().is_none());
        assert_eq!(reader.bytes_received(), sent as u64);
    }
}

#[tokio::test]
async fn a_frame_over_the_readers_cap_is_refused() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    for mode in BOTH {
        let (_server, node, coordinator) = connect(&consortium, "hospital-a", mode).await;

        let (mut send, _recv) = node.open_bi().await.unwrap();
        let written = send_message(&mut send, &hello(7)).await.unwrap();
        send.finish().await;
        let (_send, recv) = coordinator.accept_bi().await.unwrap();
        // A reader capped below the frame's length refuses it from its length prefix.
        let mut reader = MessageReader::new(recv, written - 5);
        match reader.next().await {
            Err(ChannelError::Codec(CodecError::FrameTooLarge { .. })) => {}
            other => panic!("expected a refused frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stream_that_ends_mid_frame_is_an_error_not_a_message() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    for mode in BOTH {
        let (_server, node, coordinator) = connect(&consortium, "hospital-a", mode).await;

        let frame = medfed_protocol::codec::frame(&hello(9)).unwrap();
        let (mut send, _recv) = node.open_bi().await.unwrap();
        medfed_transport::send_frame(&mut send, &frame[..frame.len() - 1])
            .await
            .unwrap();
        send.finish().await;
        let (_send, recv) = coordinator.accept_bi().await.unwrap();
        let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
        match reader.next().await {
            Err(ChannelError::Codec(CodecError::Truncated { buffered })) => {
                assert_eq!(buffered, frame.len() - 1);
            }
            other => panic!("expected a truncated frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_close_tells_the_peer_its_code_and_reason() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    for mode in BOTH {
        let (_server, node, coordinator) = connect(&consortium, "hospital-a", mode).await;
        assert_eq!(node.kind(), coordinator.kind());
        coordinator.close(4, b"task stopped: the budget ran out");
        let reason = tokio::time::timeout(Duration::from_secs(10), node.closed())
            .await
            .expect("the node hears of the close");
        assert_eq!(
            reason,
            ConnectionError::ApplicationClosed {
                code: 4,
                reason: "task stopped: the budget ran out".into()
            },
            "{mode:?}"
        );
        assert_eq!(
            coordinator.close_reason(),
            Some(ConnectionError::LocallyClosed)
        );
        assert!(
            node.open_bi().await.is_err(),
            "{mode:?}: a closed connection opens nothing"
        );
    }
}

#[tokio::test]
async fn streams_in_both_directions_carry_large_messages_at_once() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let (_server, node, coordinator) = connect(&consortium, "hospital-a", TransportMode::Tcp).await;
    // 24 MiB each way on three streams at once: more than any flow-control window, so the
    // streams only finish if each one's window is reopened as it is read.
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let send_all = |connection: Connection, payload: Vec<u8>| async move {
        let mut sends = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            let payload = payload.clone();
            sends.push(tokio::spawn(async move {
                send.write_all(&payload).await.unwrap();
                send.finish().await;
                recv
            }));
        }
        sends
    };
    let read_all = |connection: Connection, expected: Vec<u8>| async move {
        for _ in 0..3 {
            let (_send, mut recv) = connection.accept_bi().await.unwrap();
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(bytes) = recv.read_chunk(1 << 16).await.unwrap() {
                    got.extend_from_slice(&bytes);
                }
                assert!(
                    got == expected,
                    "{} bytes, not the {} sent",
                    got.len(),
                    expected.len()
                );
            })
            .await
            .unwrap();
        }
    };
    let (up, down) = tokio::join!(
        async {
            let sends = send_all(node.clone(), payload.clone()).await;
            read_all(coordinator.clone(), payload.clone()).await;
            sends
        },
        async {
            let sends = send_all(coordinator.clone(), payload.clone()).await;
            read_all(node.clone(), payload.clone()).await;
            sends
        }
    );
    for send in up.into_iter().chain(down) {
        send.await.unwrap();
    }
}

#[tokio::test]
async fn a_certificate_the_coordinator_refuses_fails_the_tcp_connect_with_its_alert() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let (_other_dir, foreign) = self::consortium(&["hospital-a"]);
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = Listener::bind(&consortium.coordinator_tls(), listen, None).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.accept().await;
        }
    });
    // A node certificate from another CA, trusting this consortium's CA.
    let mut tls = foreign.node_tls("hospital-a").unwrap();
    tls.ca_cert = consortium.ca_cert.clone();
    tls.crl = None;
    let connector = Connector::new(&tls, TransportMode::Tcp, Duration::from_secs(5), None).unwrap();
    match connector.connect(&addr.into(), "localhost").await {
        Err(ConnectionError::TlsAlert { alert, .. }) => {
            // unknown_ca (48), bad_certificate (42) or decrypt_error (51), as rustls words it.
            assert!([42, 48, 51].contains(&alert), "alert {alert}");
        }
        other => panic!("expected a TLS alert, got {other:?}"),
    }
}

/// NAT rebinding: the node's packets start coming from another address (its router gave it a
/// new port, or its VPN came back on another address) in the middle of a connection. The
/// coordinator validates the new path and the connection goes on, both ways, without a new
/// handshake.
#[tokio::test]
async fn a_connection_survives_the_node_s_address_changing_under_it() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = server_endpoint(&consortium.coordinator_tls(), listen).unwrap();
    let client = client_endpoint(&consortium.node_tls("hospital-a").unwrap()).unwrap();
    let connecting = client
        .connect(server.local_addr().unwrap(), "localhost")
        .unwrap();
    let incoming = server.accept().await.expect("a connection attempt");
    let (node, coordinator) = tokio::join!(connecting, incoming);
    let (node, coordinator) = (
        Connection::from(node.unwrap()),
        Connection::from(coordinator.unwrap()),
    );
    let before = coordinator.remote_address();

    client
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let moved_to = client.local_addr().unwrap();
    assert_ne!(moved_to.port(), before.port());

    // Node to coordinator, on the new path.
    let (mut send, recv) = node.open_bi().await.unwrap();
    send_message(&mut send, &hello(1)).await.unwrap();
    let (mut back, from_node) = coordinator.accept_bi().await.unwrap();
    let mut reader = MessageReader::new(from_node, MAX_FRAME_LEN);
    assert_eq!(reader.expect().await.unwrap(), hello(1));
    assert_eq!(coordinator.remote_address().port(), moved_to.port());
    // And back.
    send_message(&mut back, &hello(2)).await.unwrap();
    back.finish().await;
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    assert_eq!(reader.expect().await.unwrap(), hello(2));
    send.finish().await;
    assert_eq!(node.close_reason(), None);
    assert_eq!(coordinator.close_reason(), None);
}
