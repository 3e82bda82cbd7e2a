//! The node's side: connecting to the coordinator over QUIC, over TCP (directly or through an
//! HTTP proxy), or QUIC first and TCP when no QUIC handshake completes in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use medfed_certs::{TlsFiles, client_config};
use medfed_protocol::messages::ALPN;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::address::PeerAddress;
use crate::channel::{ChannelError, quic_client_endpoint};
use crate::connection::{Connection, ConnectionError, TransportKind};
use crate::tcp::{self, proxy::Proxy};

/// Which transports a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportMode {
    /// QUIC first; TCP when no QUIC handshake completes within the QUIC timeout.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TCP only (through the proxy, if one is set).
    Tcp,
}

/// Connects a node to its coordinator.
#[derive(Debug)]
pub struct Connector {
    mode: TransportMode,
    quic_timeout: Duration,
    /// The QUIC endpoint; none when the mode is TCP only.
    quic: Option<quinn::Endpoint>,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Proxy>,
    /// In auto mode, set once QUIC failed and TCP worked: later connections go straight to TCP.
    tcp_worked: AtomicBool,
}

impl Connector {
    /// A connector presenting this node's certificate and trusting only the consortium CA.
    pub fn new(
        files: &TlsFiles,
        mode: TransportMode,
        quic_timeout: Duration,
        proxy: Option<Proxy>,
    ) -> Result<Self, ChannelError> {
        let tls = client_config(files, &[ALPN])?;
        let quic = match mode {
            TransportMode::Tcp => None,
            TransportMode::Auto | TransportMode::Quic => {
                Some(quic_client_endpoint(Arc::new(tls.clone()))?)
            }
        };
        Ok(Self {
            mode,
            quic_timeout,
            quic,
            tls: Arc::new(tls),
            proxy,
            tcp_worked: AtomicBool::new(false),
        })
    }

    /// A connection to `address`, whose certificate must name `server_name`.
    pub async fn connect(
        &self,
        address: &PeerAddress,
        server_name: &str,
    ) -> Result<Connection, ConnectionError> {
        match (self.mode, &self.quic) {
            (TransportMode::Tcp, _) | (_, None) => self.connect_tcp(address, server_name).await,
            (TransportMode::Quic, Some(quic)) => {
                connect_quic(quic, address, server_name, None).await
            }
            (TransportMode::Auto, Some(quic)) => {
                if self.tcp_worked.load(Ordering::Relaxed) {
                    return self.connect_tcp(address, server_name).await;
                }
                let timeout = Some(self.quic_timeout);
                match connect_quic(quic, address, server_name, timeout).await {
                    Ok(connection) => Ok(connection),
                    // The coordinator answered and refused us: TCP would be refused too.
                    Err(
                        refused @ (ConnectionError::TlsAlert { .. }
                        | ConnectionError::ApplicationClosed { .. }),
                    ) => Err(refused),
                    Err(quic_error) => {
                        warn!(
                            error = %quic_error,
                            timeout = ?self.quic_timeout,
                            "no QUIC connection to the coordinator (is outbound UDP blocked?); trying TCP"
                        );
                        let connection = self.connect_tcp(address, server_name).await?;
                        self.tcp_worked.store(true, Ordering::Relaxed);
                        info!("connected over TCP; this node stays on TCP until it restarts");
                        Ok(connection)
                    }
                }
            }
        }
    }

    async fn connect_tcp(
        &self,
        address: &PeerAddress,
        server_name: &str,
    ) -> Result<Connection, ConnectionError> {
        let lost = |e: &dyn std::fmt::Display| ConnectionError::Lost(e.to_string());
        let (stream, remote) = match &self.proxy {
            Some(proxy) => {
                // A proxy that accepts and then says nothing must not hold the node for ever.
                let stream = tokio::time::timeout(tcp::HANDSHAKE_TIMEOUT, proxy.connect(address))
                    .await
                    .map_err(|_| {
                        ConnectionError::Lost(format!(
                            "proxy {proxy} did not answer in {:?}",
                            tcp::HANDSHAKE_TIMEOUT
                        ))
                    })?
                    .map_err(|e| lost(&e))?;
                let remote = stream.peer_addr().map_err(|e| lost(&e))?;
                (stream, remote)
            }
            None => {
                let remote = address.resolve().await.map_err(|e| lost(&e))?;
                let stream =
                    tokio::time::timeout(tcp::HANDSHAKE_TIMEOUT, TcpStream::connect(remote))
                        .await
                        .map_err(|_| ConnectionError::TimedOut)?
                        .map_err(|e| lost(&format!("TCP connection to {remote}: {e}")))?;
                (stream, remote)
            }
        };
        let connection = tcp::connect(stream, remote, server_name, self.tls.clone()).await?;
        Ok(connection.into())
    }

    /// The transport a fresh connection tries first now.
    pub fn preferred(&self) -> TransportKind {
        match self.mode {
            TransportMode::Tcp => TransportKind::Tcp,
            TransportMode::Quic => TransportKind::Quic,
            TransportMode::Auto if self.tcp_worked.load(Ordering::Relaxed) => TransportKind::Tcp,
            TransportMode::Auto => TransportKind::Quic,
        }
    }

    /// Closes the QUIC endpoint's connections with `code` and `reason` (a TCP connection is
    /// closed through its own handle).
    pub fn close(&self, code: u32, reason: &[u8]) {
        if let Some(quic) = &self.quic {
            quic.close(code.into(), reason);
        }
    }
}

async fn connect_quic(
    endpoint: &quinn::Endpoint,
    address: &PeerAddress,
    server_name: &str,
    timeout: Option<Duration>,
) -> Result<Connection, ConnectionError> {
    let remote = address
        .resolve()
        .await
        .map_err(|e| ConnectionError::Lost(e.to_string()))?;
    let connecting = endpoint
        .connect(remote, server_name)
        .map_err(|e| ConnectionError::Lost(e.to_string()))?;
    let connection = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectionError::TimedOut)??,
        None => connecting.await?,
    };
    Ok(connection.into())
}
