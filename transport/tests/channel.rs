//! The secure channel on 127.0.0.1: a consortium node reaches the coordinator, each side learns
//! who the other is from its certificate, messages cross as frames, and a frame over the
//! reader's cap is refused rather than buffered; a connection survives the node's address
//! changing under it (NAT rebinding).

use std::net::SocketAddr;

use medfed_certs::{COORDINATOR_NAME, DevConsortium};
use medfed_protocol::codec::{CodecError, MAX_FRAME_LEN};
use medfed_protocol::messages::{Hello, Message, PROTOCOL_VERSION};
use medfed_transport::{
    ChannelError, MessageReader, client_endpoint, peer_identity, send_message, server_endpoint,
};

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
    })
}

/// The coordinator's endpoint and node `name`'s connection to it, both established.
async fn connect(
    consortium: &DevConsortium,
    name: &str,
) -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = server_endpoint(&consortium.coordinator_tls(), listen).unwrap();
    let addr = server.local_addr().unwrap();
    let client = client_endpoint(&consortium.node_tls(name).unwrap()).unwrap();
    let connecting = client.connect(addr, "localhost").unwrap();
    let incoming = server.accept().await.expect("a connection attempt");
    let (client_side, server_side) = tokio::join!(connecting, incoming);
    (server, client_side.unwrap(), server_side.unwrap())
}

#[tokio::test]
async fn each_side_is_named_by_its_certificate_and_messages_arrive_in_order() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let (_server, node, coordinator) = connect(&consortium, "hospital-a").await;

    let (node_name, _) = peer_identity(&coordinator).unwrap();
    assert_eq!(node_name, "hospital-a");
    let (coordinator_name, _) = peer_identity(&node).unwrap();
    assert_eq!(coordinator_name, COORDINATOR_NAME);

    let (mut send, _recv) = node.open_bi().await.unwrap();
    let mut sent = 0;
    for byte in [1, 2, 3] {
        sent += send_message(&mut send, &hello(byte)).await.unwrap();
    }
    send.finish().unwrap();
    let (_send, recv) = coordinator.accept_bi().await.unwrap();
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    for byte in [1, 2, 3] {
        assert_eq!(reader.expect().await.unwrap(), hello(byte));
    }
    // The stream ended cleanly between frames: no message, no error.
    assert!(reader.next().await.unwrap().is_none());
    assert_eq!(reader.bytes_received(), sent as u64);
}

#[tokio::test]
async fn a_frame_over_the_readers_cap_is_refused() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let (_server, node, coordinator) = connect(&consortium, "hospital-a").await;

    let (mut send, _recv) = node.open_bi().await.unwrap();
    let written = send_message(&mut send, &hello(7)).await.unwrap();
    send.finish().unwrap();
    let (_send, recv) = coordinator.accept_bi().await.unwrap();
    // A reader capped below the frame's length refuses it from its length prefix.
    let mut reader = MessageReader::new(recv, written - 5);
    match reader.next().await {
        Err(ChannelError::Codec(CodecError::FrameTooLarge { .. })) => {}
        other => panic!("expected a refused frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_that_ends_mid_frame_is_an_error_not_a_message() {
    let (_dir, consortium) = consortium(&["hospital-a"]);
    let (_server, node, coordinator) = connect(&consortium, "hospital-a").await;

    let frame = medfed_protocol::codec::frame(&hello(9)).unwrap();
    let (mut send, _recv) = node.open_bi().await.unwrap();
    medfed_transport::send_frame(&mut send, &frame[..frame.len() - 1])
        .await
        .unwrap();
    send.finish().unwrap();
    let (_send, recv) = coordinator.accept_bi().await.unwrap();
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    match reader.next().await {
        Err(ChannelError::Codec(CodecError::Truncated { buffered })) => {
            assert_eq!(buffered, frame.len() - 1);
        }
        other => panic!("expected a truncated frame, got {other:?}"),
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
    let (node, coordinator) = (node.unwrap(), coordinator.unwrap());
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
    back.finish().unwrap();
    let mut reader = MessageReader::new(recv, MAX_FRAME_LEN);
    assert_eq!(reader.expect().await.unwrap(), hello(2));
    send.finish().unwrap();
    assert_eq!(node.close_reason(), None);
    assert_eq!(coordinator.close_reason(), None);
}
