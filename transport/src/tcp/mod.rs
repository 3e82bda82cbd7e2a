//! The TCP fallback: the same mutual TLS 1.3 and ALPN as QUIC, over TCP, with the streams
//! multiplexed on top ([`mux`]). For hospitals whose firewalls drop outbound UDP.
//!
//! ```text
//!   node ── TCP (direct, or through an HTTP CONNECT proxy) ──▶ coordinator (same port as QUIC)
//!         TLS 1.3, consortium certificates both ways, ALPN medfed/N
//!         coordinator ─▶ node: one byte, "admitted by TLS"   (so a refused certificate fails
//!                                                              the node's connect, as in QUIC)
//!         yamux streams ◀──▶ the same framed messages as on QUIC streams
//! ```

mod mux;
pub(crate) mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use mux::TcpConnection;
pub(crate) use mux::{Shared, Side, close_weak};

use crate::connection::ConnectionError;
use medfed_protocol::messages::ALPN;

/// The byte the coordinator sends first once the TLS handshake accepted the node's
/// certificate. In TLS 1.3 the client finishes its handshake before the server has checked the
/// client's certificate; waiting for this byte makes a refusal fail the node's connect.
const ACCEPTED: u8 = 0x06;
/// How long a TCP handshake (TCP, then TLS, then the accepted byte) may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive probes on an idle TCP connection: the first after this long...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ... then every this long ...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ... and a connection whose probes go unanswered this many times is dead (about 30 s, as the
/// QUIC idle timeout).
const KEEPALIVE_RETRIES: u32 = 4;

/// Sets keep-alives (so that a peer gone without a word is noticed in about 30 s, as with
/// QUIC) and turns off Nagle's algorithm (requests and answers are small and waited on).
pub(crate) fn tune(stream: &TcpStream) {
    let socket = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket.set_tcp_keepalive(&keepalive);
    let _ = socket.set_tcp_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(KEEPALIVE_IDLE * 3));
}

/// The server's half: the TLS handshake on an accepted TCP stream, then the multiplexer.
pub(crate) async fn accept(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<TcpConnection, ConnectionError> {
    tune(&stream);
    let handshake = async {
        let mut tls_stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(stream)
            .await
            .map_err(|e| io_error(&e))?;
        let (_, session) = tls_stream.get_ref();
        if session.alpn_protocol() != Some(ALPN) {
            return Err(ConnectionError::Lost(
                "the peer did not ask for medfed's application protocol".into(),
            ));
        }
        let certificates = owned_certificates(session.peer_certificates());
        tls_stream
            .write_all(&[ACCEPTED])
            .await
            .map_err(|e| io_error(&e))?;
        Ok((tls_stream, certificates))
    };
    let (tls_stream, certificates) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectionError::TimedOut)??;
    Ok(TcpConnection::start(
        tls_stream,
        Side::Server,
        remote,
        certificates,
    ))
}

/// The client's half over an open TCP stream (direct or through a proxy): the TLS handshake
/// for `server_name`, the coordinator's accepted byte, then the multiplexer.
pub(crate) async fn connect(
    stream: TcpStream,
    remote: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TcpConnection, ConnectionError> {
    tune(&stream);
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| ConnectionError::Lost(format!("bad server name \"{server_name}\": {e}")))?;
    let handshake = async {
        // An alert before the handshake is authenticated can come from anyone on the path (a
        // proxy, say): it is a lost connection, retried, not the coordinator's refusal. The
        // coordinator's refusal of our certificate comes encrypted, before the accepted byte.
        let mut tls_stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|e| match io_error(&e) {
                ConnectionError::TlsAlert { detail, .. } => ConnectionError::Lost(format!(
                    "TLS alert before the coordinator was authenticated: {detail}"
                )),
                other => other,
            })?;
        let mut accepted = [0u8];
        tls_stream
            .read_exact(&mut accepted)
            .await
            .map_err(|e| io_error(&e))?;
        if accepted[0] != ACCEPTED {
            return Err(ConnectionError::Lost(
                "the coordinator's first byte is not medfed's".into(),
            ));
        }
        let certificates = owned_certificates(tls_stream.get_ref().1.peer_certificates());
        Ok((tls_stream, certificates))
    };
    let (tls_stream, certificates) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectionError::TimedOut)??;
    Ok(TcpConnection::start(
        tls_stream,
        Side::Client,
        remote,
        certificates,
    ))
}

/// The peer's certificate chain, as the connection keeps it.
fn owned_certificates(chain: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    chain
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// An I/O error of a TLS stream as a connection error: a TLS alert (the peer refused our
/// certificate, say) keeps its code.
pub(crate) fn io_error(error: &std::io::Error) -> ConnectionError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::AlertReceived(alert)) => ConnectionError::TlsAlert {
            alert: u8::from(*alert),
            detail: error.to_string(),
        },
        // This side refused the peer's certificate, and told it so with this alert.
        Some(rustls::Error::InvalidCertificate(refusal)) => ConnectionError::TlsAlert {
            alert: u8::from(rustls::AlertDescription::from(refusal.clone())),
            detail: error.to_string(),
        },
        _ if error.kind() == std::io::ErrorKind::TimedOut => ConnectionError::TimedOut,
        _ => ConnectionError::Lost(error.to_string()),
    }
}
