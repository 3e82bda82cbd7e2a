//! The secure channel of medfed: connections over the consortium's mutual TLS — QUIC, or TLS 1.3
//! over TCP (directly or through an HTTP proxy) where UDP is blocked — and framed message
//! streams on top of them.
//!
//! ```text
//!   medfed-certs: server_config / client_config (rustls, TLS 1.3, consortium CA, CRL)
//!        │
//!   Listener::bind(files, addr) ◀── QUIC, or TCP + TLS 1.3 ──▶ Connector (auto | quic | tcp,
//!        │      (same port, same ALPN, same certificates)              optional CONNECT proxy)
//!        │                                                          │
//!   peer_identity(connection) = the node's certificate name         │
//!        │                                                          │
//!   MessageReader::next ◀── length-prefixed frames (codec) ─── send_message
//! ```
//!
//! This is the only code that turns protocol frames into QUIC stream bytes and back; the
//! coordinator and the node both drive it. Every frame is decoded with the protocol's capped
//! [`FrameDecoder`](medfed_protocol::codec::FrameDecoder), so a hostile peer cannot make either
//! side buffer more than one frame's cap.
//!
//! What this crate does *not* do: no protocol logic (that is `medfed-protocol`: which message
//! may follow which, and what one means), no certificate handling beyond asking `medfed-certs`
//! for the rustls configurations and reading the peer's name from its certificate, no retries or
//! reconnection (the node's client does that), and no choice of async runtime beyond quinn's
//! default (tokio).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
mod channel;
mod connection;
mod connector;
mod listener;
mod tcp;

pub use address::{AddressError, PeerAddress, ResolveError};
pub use channel::{
    ChannelError, MessageReader, client_endpoint, peer_identity, send_frame, send_message,
    send_shared_frames, server_endpoint,
};
pub use connection::{
    Connection, ConnectionError, RecvStream, SendStream, StreamError, TransportKind,
};
pub use connector::{Connector, TransportMode};
pub use listener::{Incoming, Listener};
pub use tcp::TcpConnection;
pub use tcp::proxy::{Proxy, ProxyError};
