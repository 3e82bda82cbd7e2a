//! The coordinator's side: one address, two transports. QUIC on the UDP port and TLS over TCP on
//! the TCP port of the same number, with the same certificates, client verifier and ALPN, so a
//! node behind a firewall that drops UDP reaches the same coordinator.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
/// TCP handshakes under way at once from one address: one address cannot take every slot
/// (nodes behind one hospital proxy share an address, so this leaves room for a site).
const MAX_TCP_HANDSHAKES_PER_ADDRESS: usize = 16;

/// Accepts node connections on QUIC and on TCP.
#[derive(Debug)]
pub struct Listener {
    quic: quinn::Endpoint,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    /// Every accepted TCP connection, so that [`Listener::close`] reaches them as a QUIC
    /// endpoint's close reaches its connections.
    open: Arc<Mutex<OpenTcp>>,
    /// Turns true when the listener is closed.
    closed: watch::Sender<bool>,
    /// Permits for TCP handshakes under way.
    handshakes: Arc<Semaphore>,
    /// TCP handshakes under way, by source address.
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A TCP handshake's place among those under way; given back when dropped.
struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl HandshakeSlot {
    /// A slot for a handshake from `address`, if neither limit is reached.
    fn take(
        handshakes: &Arc<Semaphore>,
        per_address: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        address: IpAddr,
    ) -> Option<Self> {
        let permit = handshakes.clone().try_acquire_owned().ok()?;
        let mut counts = per_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= MAX_TCP_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Self {
            _permit: permit,
            per_address: per_address.clone(),
            address,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The TCP connections a listener accepted, and its close once it is closed.
#[derive(Debug, Default)]
struct OpenTcp {
    /// Each connection, and what says when its socket is gone.
    connections: Vec<(Weak<Shared>, watch::Receiver<()>)>,
    /// The code and reason the listener closed with: a handshake that ends after the close
    /// gets them at once.
    closed: Option<(u32, Vec<u8>)>,
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
        open: Arc<Mutex<OpenTcp>>,
        /// Held until the handshake ends.
        _slot: HandshakeSlot,
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
                if let Some((code, reason)) = &open.closed {
                    connection.close(*code, reason);
                    return Err(ConnectionError::LocallyClosed);
                }
                // Connections whose socket is gone need no close and no wait.
                open.connections
                    .retain(|(_, done)| done.has_changed().is_ok());
                open.connections
                    .push((connection.downgrade(), connection.driver_done()));
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
                        per_address: Arc::default(),
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
                        let slot = HandshakeSlot::take(&self.handshakes, &self.per_address, remote.ip());
                        let Some(slot) = slot else {
                            // Debug, not warn: a flood would flood the log too.
                            tracing::debug!(%remote, "too many TCP handshakes under way; connection closed");
                            continue;
                        };
                        return Some(Incoming {
                            inner: IncomingInner::Tcp {
                                stream,
                                tls: self.tls.clone(),
                                open: self.open.clone(),
                                _slot: slot,
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
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.closed = Some((code, reason.to_vec()));
        for (weak, _) in &open.connections {
            tcp::close_weak(weak, code, reason);
        }
        drop(open);
        self.closed.send_replace(true);
    }

    /// Waits until every connection on either transport has ended after a close, so that the
    /// process does not exit before its close reached the nodes (a TCP connection takes at
    /// most a few seconds).
    pub async fn wait_idle(&self) {
        let waits: Vec<watch::Receiver<()>> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connections
            .iter()
            .map(|(_, done)| done.clone())
            .collect();
        self.quic.wait_idle().await;
        for mut done in waits {
            // Returns once the driver has dropped its sender.
            while done.changed().await.is_ok() {}
        }
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
