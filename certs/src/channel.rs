//! The secure channel: QUIC endpoints over the consortium's mutual TLS, and framed message
//! streams on top of them.
//!
//! This is the only code that turns protocol frames into QUIC stream bytes and back; the
//! coordinator and the node drive it. Every frame is decoded with the protocol's capped
//! [`FrameDecoder`], so a hostile peer cannot make us buffer more than one frame's cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use medfed_protocol::codec::{self, CodecError, FrameDecoder};
use medfed_protocol::messages::{ALPN, Message};
use rustls_pki_types::CertificateDer;

use crate::{CertError, TlsFiles, client_config, server_config, subject_common_name};

/// How long a silent connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well inside the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Largest read from a stream at once.
const READ_CHUNK: usize = 256 * 1024;

/// Transport settings shared by both sides.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // IDLE_TIMEOUT is a few seconds, far inside QUIC's 2^62 ms bound.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(64u32.into());
    Arc::new(transport)
}

/// A QUIC server endpoint that admits only clients with a consortium certificate.
pub fn server_endpoint(
    files: &TlsFiles,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, ChannelError> {
    let tls = server_config(files, &[ALPN])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ChannelError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    quinn::Endpoint::server(config, listen).map_err(|source| ChannelError::Bind {
        addr: listen,
        source,
    })
}

/// A QUIC client endpoint that presents this node's certificate and trusts only the consortium CA.
pub fn client_endpoint(files: &TlsFiles) -> Result<quinn::Endpoint, ChannelError> {
    let tls = client_config(files, &[ALPN])?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ChannelError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let any: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint =
        quinn::Endpoint::client(any).map_err(|source| ChannelError::Bind { addr: any, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The consortium identity of the peer of an established connection — the subject common name
/// of the certificate it presented — and that certificate (DER).
pub fn peer_identity(
    connection: &quinn::Connection,
) -> Result<(String, CertificateDer<'static>), ChannelError> {
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(ChannelError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(ChannelError::NoPeerCertificate)?;
    Ok((subject_common_name(leaf)?, leaf.clone()))
}

/// Writes bytes already framed with [`codec::frame`].
pub async fn send_frame(stream: &mut quinn::SendStream, frame: &[u8]) -> Result<(), ChannelError> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| ChannelError::Write(e.to_string()))
}

/// Writes one message as a frame; returns the number of bytes put on the stream.
pub async fn send_message(
    stream: &mut quinn::SendStream,
    message: &Message,
) -> Result<usize, ChannelError> {
    let bytes = codec::frame(message)?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| ChannelError::Write(e.to_string()))?;
    Ok(bytes.len())
}

/// Reads framed messages from a stream.
#[derive(Debug)]
pub struct MessageReader {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    /// Bytes received so far, for accounting.
    received: u64,
}

impl MessageReader {
    /// Wraps a stream; frames over `max_frame_len` are refused.
    pub fn new(stream: quinn::RecvStream, max_frame_len: usize) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max_frame_len),
            received: 0,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, ChannelError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            match self.stream.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    self.received += chunk.bytes.len() as u64;
                    self.decoder.feed(&chunk.bytes);
                }
                Ok(None) => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Err(e) => return Err(ChannelError::Read(e.to_string())),
            }
        }
    }

    /// The next message, which must be there.
    pub async fn expect(&mut self) -> Result<Message, ChannelError> {
        self.next().await?.ok_or(ChannelError::StreamEnded)
    }

    /// Bytes read from the stream so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }
}

/// Why the secure channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The TLS configuration does not suit QUIC.
    #[error("QUIC setup failed: {0}")]
    Setup(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// Bytes that are not a valid frame.
    #[error("bad frame from peer: {0}")]
    Codec(#[from] CodecError),
    /// Writing to the stream failed.
    #[error("stream write failed: {0}")]
    Write(String),
    /// Reading from the stream failed.
    #[error("stream read failed: {0}")]
    Read(String),
    /// The stream ended where a message was required.
    #[error("the peer closed the stream before sending a message")]
    StreamEnded,
}
