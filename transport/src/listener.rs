//! The coordinator's side: one address, two transports. QUIC on the UDP port and TLS over TCP on
//! the TCP port of the same number, with the same certificates, client verifier and ALPN, so a
//! node behind a firewall that drops UDP reaches the same coordinator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use medfed_certs::{RefusedCertificateHook, TlsFiles, server_config_with_hook};
use medfed_protocol::messages::ALPN;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::channel::{ChannelError, quic_server_endpoint};
use crate::connection::{Connection, ConnectionError, TransportKind};
use crate::tcp::{self, Shared};

/// How many times a listener on port 0 tries for a port free on both UDP and TCP.
const PORT_ATTEMPTS: usize = 16;
/// TCP handshakes under way at once; connections beyond are closed at once, so that no one
/// without a certificate can hold more than this many sockets and tasks (each for at most the
/// handshake timeout).
const MAX_TCP_HANDSHAKES: usize = 256;

/// Accepts node connections on QUIC and on TCP.
#[derive(Debug)]
pub struct Listener {
    quic: quinn::Endpoint,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    /// Every accepted TCP connection, so that [`Listener::close`] reaches them as a QUIC
    /// endpoint's close reaches its connections.
    open: Arc<Mutex<Vec<Weak<Shared>>>>,
    /// Turns true when the listener is closed.
    closed: watch::Sender<bool>,
    /// Permits for TCP handshakes under way.
    handshakes: Arc<Semaphore>,
}

/// A connection attempt: the handshake has not run yet.
pub struct Incoming {
    inner: IncomingInner,
    remote: SocketAddr,
}

enum IncomingInner {
    Quic(Box<quinn::Incoming>),
    Tcp {
        stream: TcpStream,
        tls: Arc<rustls::ServerConfig>,
        open: Arc<Mutex<Vec<Weak<Shared>>>>,
        /// Held until the handshake ends.
        _permit: OwnedSemaphorePermit,
    },
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("transport", &self.transport())
            .field("remote", &self.remote)
            .finish()
    }
}

impl Incoming {
    /// Where the attempt comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// Which transport it came in on.
    pub fn transport(&self) -> TransportKind {
        match self.inner {
            IncomingInner::Quic(_) => TransportKind::Quic,
            IncomingInner::Tcp { .. } => TransportKind::Tcp,
        }
    }

    /// Runs the handshake: mutual TLS with the consortium's client verifier.
    pub async fn accept(self) -> Result<Connection, ConnectionError> {
        match self.inner {
            IncomingInner::Quic(incoming) => Ok((*incoming).await?.into()),
            IncomingInner::Tcp {
                stream, tls, open, ..
            } => {
                let connection = tcp::accept(stream, self.remote, tls).await?;
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|weak| weak.strong_count() > 0);
                open.push(connection.downgrade());
                Ok(connection.into())
            }
        }
    }
}

impl Listener {
    /// Listens on `listen` (UDP for QUIC and TCP, the same port number; a port of 0 gets one
    /// that is free on both), admitting only clients with a consortium certificate; tells
    /// `on_refused` of every client certificate the TLS handshake refuses.
    pub fn bind(
        files: &TlsFiles,
        listen: SocketAddr,
        on_refused: Option<RefusedCertificateHook>,
    ) -> Result<Self, ChannelError> {
        let tls = Arc::new(server_config_with_hook(files, &[ALPN], on_refused)?);
        let attempts = if listen.port() == 0 { PORT_ATTEMPTS } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let quic = quic_server_endpoint(files, listen, tls.clone())?;
            let port = quic
                .local_addr()
                .map_err(|source| ChannelError::Bind {
                    addr: listen,
                    source,
                })?
                .port();
            let tcp_addr = SocketAddr::new(listen.ip(), port);
            match bind_tcp(tcp_addr) {
                Ok(tcp) => {
                    let (closed, _) = watch::channel(false);
                    return Ok(Self {
                        quic,
                        tcp,
                        tls,
                        open: Arc::default(),
                        closed,
                        handshakes: Arc::new(Semaphore::new(MAX_TCP_HANDSHAKES)),
                    });
                }
                Err(source) => {
                    quic.close(0u32.into(), b"");
                    last = Some(ChannelError::BindTcp {
                        addr: tcp_addr,
                        source,
                    });
                }
            }
        }
        Err(last.unwrap_or(ChannelError::Setup("no port to listen on".into())))
    }

    /// The address it listens on (UDP and TCP alike).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// The next connection attempt on either transport; `None` once closed.
    pub async fn accept(&self) -> Option<Incoming> {
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                incoming = self.quic.accept() => {
                    let incoming = incoming?;
                    let remote = incoming.remote_address();
                    return Some(Incoming { inner: IncomingInner::Quic(Box::new(incoming)), remote });
                }
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                            tracing::warn!(%remote, "too many TCP handshakes under way; connection closed");
                            continue;
                        };
                        return Some(Incoming {
                            inner: IncomingInner::Tcp {
                                stream,
                                tls: self.tls.clone(),
                                open: self.open.clone(),
                                _permit: permit,
                            },
                            remote,
                        });
                    }
                    // A connection that went away before it was accepted, or no descriptors
                    // left for a moment: the listener itself is fine.
                    Err(e) => {
                        tracing::warn!(error = %e, "a TCP connection could not be accepted");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = async { let _ = closed.wait_for(|closed| *closed).await; } => return None,
            }
        }
    }

    /// Closes every connection on either transport with `code` and `reason`, and stops
    /// accepting.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.quic.close(code.into(), reason);
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        for weak in open {
            tcp::close_weak(&weak, code, reason);
        }
        self.closed.send_replace(true);
    }

    /// Waits until every QUIC connection has sent its close (TCP connections linger on their
    /// own tasks for at most a couple of seconds).
    pub async fn wait_idle(&self) {
        self.quic.wait_idle().await;
    }
}

/// A TCP listener on `addr` that a restarted coordinator can take over at once (no waiting for
/// its predecessor's connections in TIME_WAIT).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
