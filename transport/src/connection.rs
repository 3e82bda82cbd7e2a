//! One secure connection between a node and the coordinator, whichever transport carries it:
//! QUIC, or TLS 1.3 over TCP with the streams multiplexed on top (`tcp`). Both give the same
//! things: bidirectional streams either side may open, a close with an application code and a
//! reason, and the peer's consortium certificate.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::compat::Compat;

use crate::tcp::TcpConnection;

/// The transport a connection runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP, streams multiplexed with yamux.
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// An established, mutually authenticated connection. Cloning gives another handle to the same
/// connection.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Quic(quinn::Connection),
    Tcp(TcpConnection),
}

impl From<quinn::Connection> for Connection {
    fn from(connection: quinn::Connection) -> Self {
        Self {
            inner: Inner::Quic(connection),
        }
    }
}

impl From<TcpConnection> for Connection {
    fn from(connection: TcpConnection) -> Self {
        Self {
            inner: Inner::Tcp(connection),
        }
    }
}

impl Connection {
    /// The transport it runs over.
    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            Inner::Quic(_) => TransportKind::Quic,
            Inner::Tcp(_) => TransportKind::Tcp,
        }
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(ConnectionError::from)?;
                Ok((SendStream::Quic(send), RecvStream::Quic(recv)))
            }
            Inner::Tcp(c) => c.open_bi().await.map(split),
        }
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(ConnectionError::from)?;
                Ok((SendStream::Quic(send), RecvStream::Quic(recv)))
            }
            Inner::Tcp(c) => c.accept_bi().await.map(split),
        }
    }

    /// Closes the connection, telling the peer `code` and `reason` (at most a few hundred bytes
    /// are sent). Streams still open fail.
    pub fn close(&self, code: u32, reason: &[u8]) {
        match &self.inner {
            Inner::Quic(c) => c.close(code.into(), reason),
            Inner::Tcp(c) => c.close(code, reason),
        }
    }

    /// Waits until the connection is closed, and says why.
    pub async fn closed(&self) -> ConnectionError {
        match &self.inner {
            Inner::Quic(c) => c.closed().await.into(),
            Inner::Tcp(c) => c.closed().await,
        }
    }

    /// Why the connection is closed, if it is.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match &self.inner {
            Inner::Quic(c) => c.close_reason().map(ConnectionError::from),
            Inner::Tcp(c) => c.close_reason(),
        }
    }

    /// An identifier that tells this connection from every other one of the process.
    pub fn stable_id(&self) -> usize {
        match &self.inner {
            // Odd and even numbers keep the two kinds apart.
            Inner::Quic(c) => c.stable_id().wrapping_mul(2),
            Inner::Tcp(c) => c.stable_id().wrapping_mul(2).wrapping_add(1),
        }
    }

    /// The peer's address (for TCP through a proxy, the proxy's).
    pub fn remote_address(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(c) => c.remote_address(),
            Inner::Tcp(c) => c.remote_address(),
        }
    }

    /// The certificate chain the peer presented in the handshake, leaf first.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        match &self.inner {
            Inner::Quic(c) => c
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                .map(|certs| *certs),
            Inner::Tcp(c) => Some(c.peer_certificates().to_vec()),
        }
    }
}

fn split(stream: Compat<yamux::Stream>) -> (SendStream, RecvStream) {
    let (read, write) = tokio::io::split(stream);
    (SendStream::Tcp(write), RecvStream::Tcp(read))
}

/// The sending half of a bidirectional stream.
#[derive(Debug)]
pub enum SendStream {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A multiplexed stream on a TCP connection.
    Tcp(WriteHalf<Compat<yamux::Stream>>),
}

impl SendStream {
    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        match self {
            Self::Quic(s) => s
                .write_all(bytes)
                .await
                .map_err(|e| StreamError(e.to_string())),
            Self::Tcp(s) => s.write_all(bytes).await.map_err(StreamError::io),
        }
    }

    /// Writes all of `bytes`, shared rather than copied: a QUIC stream keeps a reference to
    /// them until the peer acknowledges them, so streams that send slices of one buffer hold it
    /// once between them (a TCP stream copies as [`Self::write_all`] does).
    pub async fn write_shared(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        match self {
            Self::Quic(s) => s
                .write_chunk(bytes)
                .await
                .map_err(|e| StreamError(e.to_string())),
            Self::Tcp(s) => s.write_all(&bytes).await.map_err(StreamError::io),
        }
    }

    /// Ends the stream: the peer reads its end after the bytes written. Errors are ignored (a
    /// peer that already reset the stream needs no end).
    pub async fn finish(&mut self) {
        match self {
            Self::Quic(s) => {
                let _ = s.finish();
            }
            Self::Tcp(s) => {
                let _ = s.shutdown().await;
            }
        }
    }

    /// Waits until the peer has the stream's bytes (QUIC: acknowledged; TCP: handed to the
    /// connection, which delivers them in order before any close).
    pub async fn stopped(&mut self) {
        match self {
            Self::Quic(s) => {
                let _ = s.stopped().await;
            }
            Self::Tcp(s) => {
                let _ = s.flush().await;
            }
        }
    }
}

/// The receiving half of a bidirectional stream.
#[derive(Debug)]
pub enum RecvStream {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A multiplexed stream on a TCP connection.
    Tcp(ReadHalf<Compat<yamux::Stream>>),
}

impl RecvStream {
    /// Up to `max` bytes as they come; `None` at the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        match self {
            Self::Quic(s) => match s.read_chunk(max, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(StreamError(e.to_string())),
            },
            Self::Tcp(s) => {
                let mut buffer = bytes::BytesMut::with_capacity(max.min(64 * 1024));
                match s.read_buf(&mut buffer).await.map_err(StreamError::io)? {
                    0 => Ok(None),
                    _ => Ok(Some(buffer.freeze())),
                }
            }
        }
    }
}

impl From<quinn::RecvStream> for RecvStream {
    fn from(stream: quinn::RecvStream) -> Self {
        Self::Quic(stream)
    }
}

impl From<quinn::SendStream> for SendStream {
    fn from(stream: quinn::SendStream) -> Self {
        Self::Quic(stream)
    }
}

/// A stream read or write that failed; says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(pub String);

impl StreamError {
    fn io(error: std::io::Error) -> Self {
        Self(error.to_string())
    }
}

/// Why a connection ended or could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed the connection with an application code and reason.
    #[error("closed by the peer (code {code}): {reason}")]
    ApplicationClosed {
        /// The peer's code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// The peer refused the TLS handshake, or ended the connection, with a TLS alert.
    #[error("TLS alert {alert} from the peer: {detail}")]
    TlsAlert {
        /// The alert's code (RFC 8446, 6).
        alert: u8,
        /// What the transport said.
        detail: String,
    },
    /// This side closed it.
    #[error("closed by this side")]
    LocallyClosed,
    /// Nothing was heard from the peer for the idle timeout.
    #[error("timed out")]
    TimedOut,
    /// Anything else: a reset, a transport or protocol error, a handshake that failed.
    #[error("{0}")]
    Lost(String),
}

impl From<quinn::ConnectionError> for ConnectionError {
    fn from(error: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        let detail = error.to_string();
        // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100 + alert (RFC 9001, 4.8).
        let alert = |code: u64| (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8);
        match error {
            E::ApplicationClosed(close) => Self::ApplicationClosed {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            E::ConnectionClosed(close) => match alert(u64::from(close.error_code)) {
                Some(alert) => Self::TlsAlert { alert, detail },
                None => Self::Lost(detail),
            },
            E::TransportError(e) => match alert(u64::from(e.code)) {
                Some(alert) => Self::TlsAlert { alert, detail },
                None => Self::Lost(detail),
            },
            E::LocallyClosed => Self::LocallyClosed,
            E::TimedOut => Self::TimedOut,
            _ => Self::Lost(detail),
        }
    }
}
