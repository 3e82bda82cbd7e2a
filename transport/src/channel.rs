//! The secure channel: QUIC endpoints over the consortium's mutual TLS, and framed message
//! streams on top of either transport's streams.
//!
//! Every frame is decoded with the protocol's capped [`FrameDecoder`], so a hostile peer cannot
//! make us buffer more than one frame's cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medfed_certs::{
    CertError, TlsFiles, client_config, server_config_with_hook, subject_common_name,
};
use medfed_protocol::codec::{self, CodecError, FrameDecoder};
use medfed_protocol::messages::{ALPN, Message};
use rustls_pki_types::CertificateDer;

use crate::connection::{Connection, RecvStream, SendStream};

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

/// A QUIC server endpoint that admits only clients with a consortium certificate (QUIC only:
/// the coordinator listens with [`Listener`](crate::Listener), which adds TCP).
pub fn server_endpoint(
    files: &TlsFiles,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, ChannelError> {
    let tls = server_config_with_hook(files, &[ALPN], None)?;
    quic_server_endpoint(files, listen, Arc::new(tls))
}

/// A QUIC server endpoint on `listen` with the rustls configuration `tls`.
pub(crate) fn quic_server_endpoint(
    files: &TlsFiles,
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<quinn::Endpoint, ChannelError> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ChannelError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    let key = std::fs::read(&files.key)
        .map_err(|e| ChannelError::Setup(format!("cannot read {}: {e}", files.key.display())))?;
    let bind = |source| ChannelError::Bind {
        addr: listen,
        source,
    };
    let socket = bind_udp(listen, SERVER_RECEIVE_BUFFER).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ChannelError::Setup("no async runtime to drive QUIC".into()))?;
    quinn::Endpoint::new(restartable(&key), Some(config), socket, runtime).map_err(bind)
}

/// Endpoint settings that let a restarted server on the same address reset its predecessor's
/// connections at once.
///
/// QUIC's stateless reset (RFC 9000, 10.3) lets a server that lost a connection's state tell
/// the peer so; the peer believes it only if the reset carries the token the server issued,
/// which quinn derives from the endpoint's reset key and the connection ID. A random key per
/// process would make a restarted coordinator's resets unrecognisable, and its nodes would
/// wait out the idle timeout. The key is therefore derived from the server's private key
/// (which only the server holds), and connection IDs are accepted whatever their origin.
fn restartable(private_key_file: &[u8]) -> quinn::EndpointConfig {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"medfed quic stateless reset key v1\0");
    context.update(private_key_file);
    let secret = context.finish();
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(|| Box::new(RandomCids));
    config
}

/// Connection IDs of 8 random bytes. Unlike quinn's default generator, which signs its IDs
/// with a per-process key, it accepts any ID as possibly its own, so a restarted server answers
/// packets of its predecessor's connections with a stateless reset instead of ignoring them.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // The OS CSPRNG failing leaves no good source; a clock-derived ID is still unique
            // enough to route packets, which is all a connection ID does here.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = nanos.to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A QUIC client endpoint that presents this node's certificate and trusts only the consortium
/// CA (QUIC only: a node connects with [`Connector`](crate::Connector), which adds TCP).
pub fn client_endpoint(files: &TlsFiles) -> Result<quinn::Endpoint, ChannelError> {
    quic_client_endpoint(Arc::new(client_config(files, &[ALPN])?))
}

/// A QUIC client endpoint with the rustls configuration `tls`.
pub(crate) fn quic_client_endpoint(
    tls: Arc<rustls::ClientConfig>,
) -> Result<quinn::Endpoint, ChannelError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ChannelError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    let any: SocketAddr = ([0, 0, 0, 0], 0).into();
    let bind = |source| ChannelError::Bind { addr: any, source };
    let socket = bind_udp(any, CLIENT_RECEIVE_BUFFER).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ChannelError::Setup("no async runtime to drive QUIC".into()))?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(bind)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Receive buffer asked for on the coordinator's UDP socket. Every node's masked input (about
/// 0.7 MB each for a 10^5-parameter model) arrives at once; with Linux's default buffer (208 KiB)
/// the socket overflows, QUIC takes the drops for congestion, and a 100-node round spends
/// seconds waiting on loss recovery. The kernel caps the size at `net.core.rmem_max`.
const SERVER_RECEIVE_BUFFER: usize = 8 << 20;
/// Receive buffer asked for on a node's UDP socket, which takes in the model.
const CLIENT_RECEIVE_BUFFER: usize = 2 << 20;

/// A UDP socket bound to `addr` with a receive buffer of `receive_buffer` bytes where the
/// kernel allows it (a smaller one only costs speed, so a refusal is ignored).
fn bind_udp(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(receive_buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The consortium identity of the peer of an established connection — the subject common name
/// of the certificate it presented — and that certificate (DER).
pub fn peer_identity(
    connection: &Connection,
) -> Result<(String, CertificateDer<'static>), ChannelError> {
    let certs = connection
        .peer_certificates()
        .ok_or(ChannelError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(ChannelError::NoPeerCertificate)?;
    Ok((subject_common_name(leaf)?, leaf.clone()))
}

/// Writes bytes already framed with [`codec::frame`].
pub async fn send_frame(stream: &mut SendStream, frame: &[u8]) -> Result<(), ChannelError> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| ChannelError::Write(e.to_string()))
}

/// Writes frames already encoded, shared with other streams rather than copied
/// ([`SendStream::write_shared`]).
pub async fn send_shared_frames(
    stream: &mut SendStream,
    frames: Bytes,
) -> Result<(), ChannelError> {
    stream
        .write_shared(frames)
        .await
        .map_err(|e| ChannelError::Write(e.to_string()))
}

/// Writes one message as a frame; returns the number of bytes put on the stream.
pub async fn send_message(
    stream: &mut SendStream,
    message: &Message,
) -> Result<usize, ChannelError> {
    let bytes = codec::frame(message)?;
    send_frame(stream, &bytes).await?;
    Ok(bytes.len())
}

/// Reads framed messages from a stream.
#[derive(Debug)]
pub struct MessageReader {
    stream: RecvStream,
    decoder: FrameDecoder,
    /// Bytes received so far, for accounting.
    received: u64,
}

impl MessageReader {
    /// Wraps a stream; frames over `max_frame_len` are refused.
    pub fn new(stream: impl Into<RecvStream>, max_frame_len: usize) -> Self {
        Self {
            stream: stream.into(),
            decoder: FrameDecoder::new(max_frame_len),
            received: 0,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, ChannelError> {
        match self.next_frame().await? {
            Some(body) => Ok(Some(codec::decode_body(&body)?)),
            None => Ok(None),
        }
    }

    /// The next frame's body, undecoded (for a reader that decodes some frames in place, see
    /// [`codec::InputPieceFrame`]); `Ok(None)` when the peer finished the stream cleanly between
    /// frames. The frame cap holds as for [`Self::next`].
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, ChannelError> {
        loop {
            if let Some(body) = self.decoder.next_frame()? {
                return Ok(Some(body));
            }
            if !self.read_more().await? {
                self.decoder.finish()?;
                return Ok(None);
            }
        }
    }

    /// Waits until the next frame's header is buffered, reading it in, and returns the body
    /// length it declares; `None` if the stream ends first (the next read sees the end again).
    /// A reader that takes a scarce slot before reading a frame whole (a masked input's piece)
    /// takes it only once the frame is coming, not while the peer is still computing, and can
    /// refuse a frame too long for the slot before reading it.
    pub async fn next_frame_len(&mut self) -> Result<Option<usize>, ChannelError> {
        loop {
            if let Some(len) = self.decoder.declared_len() {
                return Ok(Some(len));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads the next chunk of the stream into the decoder, counting its bytes; `false` at the
    /// end of the stream.
    async fn read_more(&mut self) -> Result<bool, ChannelError> {
        match self.stream.read_chunk(READ_CHUNK).await {
            Ok(Some(bytes)) => {
                self.received += bytes.len() as u64;
                self.decoder.feed(&bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(ChannelError::Read(e.to_string())),
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
    /// The TCP listener could not be bound.
    #[error("cannot listen on TCP {addr}: {source}")]
    BindTcp {
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
