//! Hospital networks in miniature, on 127.0.0.1: a firewall that lets only TCP through, and an
//! HTTP `CONNECT` proxy. Each runs on tokio tasks and counts what it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// A listener on an ephemeral loopback port (QUIC and TCP) with the consortium's coordinator
/// certificate, for tests that play the coordinator's transport alone.
pub fn coordinator_listener(certs: &medfed_certs::DevConsortium) -> medfed_transport::Listener {
    medfed_transport::Listener::bind(
        &certs.coordinator_tls(),
        "127.0.0.1:0".parse().expect("an address"),
        None,
    )
    .expect("a loopback listener")
}

/// Accepts every connection `server` gets and passes each one whose handshake succeeds on.
pub fn accept_all(
    server: medfed_transport::Listener,
) -> mpsc::UnboundedReceiver<medfed_transport::Connection> {
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            if let Ok(connection) = incoming.accept().await {
                let _ = accepted_tx.send(connection);
            }
        }
    });
    accepted
}

/// A firewall in front of `back`: TCP connections to its front address are forwarded to
/// `back`, UDP datagrams to it are counted and dropped.
pub struct TcpOnlyFirewall {
    /// Where nodes connect.
    pub front: SocketAddr,
    dropped: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl TcpOnlyFirewall {
    /// Starts forwarding to `back`.
    pub async fn start(back: SocketAddr) -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP port");
        let front = udp.local_addr().expect("a bound socket");
        let tcp = TcpListener::bind(front)
            .await
            .expect("the TCP port of the same number");
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            while udp.recv_from(&mut buffer).await.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let counter = forwarded.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = tcp.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(back).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            front,
            dropped,
            forwarded,
        }
    }

    /// UDP datagrams dropped so far.
    pub fn udp_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// TCP connections forwarded so far.
    pub fn tcp_forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

/// A minimal HTTP `CONNECT` proxy: wants `credentials` (Basic `user:password`) when given,
/// answers 407 without them, and sends the header of every request it gets to
/// [`ConnectProxy::requests`].
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Each request's header, as received.
    pub requests: mpsc::UnboundedReceiver<String>,
}

impl ConnectProxy {
    /// Starts the proxy.
    pub async fn start(credentials: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a TCP port");
        let addr = listener.local_addr().expect("a bound listener");
        let (seen, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, credentials, seen.clone()));
            }
        });
        Self { addr, requests }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves one `CONNECT` request and then relays bytes both ways.
async fn tunnel(
    mut client: TcpStream,
    credentials: Option<&'static str>,
    seen: mpsc::UnboundedSender<String>,
) {
    let mut header = Vec::new();
    let mut byte = [0u8];
    while !header.ends_with(b"\r\n\r\n") {
        if client.read_exact(&mut byte).await.is_err() || header.len() > 16 * 1024 {
            return;
        }
        header.push(byte[0]);
    }
    let header = String::from_utf8_lossy(&header).into_owned();
    let _ = seen.send(header.clone());
    if let Some(credentials) = credentials {
        let expected = format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        if !header.contains(&expected) {
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
            return;
        }
    }
    let target = match header.strip_prefix("CONNECT ") {
        Some(rest) => rest.split(' ').next().unwrap_or_default().to_owned(),
        None => {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// A TCP forwarder to `back` that cuts its first connection once `cut_after` bytes have gone
/// from `back` to the node (as a VPN that drops in the middle of a model download), and counts
/// every byte it passes that way.
pub struct CuttingRelay {
    /// Where the node connects.
    pub front: SocketAddr,
    downstream: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingRelay {
    /// Starts forwarding to `back`.
    pub async fn start(back: SocketAddr, cut_after: u64) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a TCP port");
        let front = tcp.local_addr().expect("a bound listener");
        let downstream = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (bytes, cut_count, freeze) = (downstream.clone(), cuts.clone(), frozen.clone());
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((inbound, _)) = tcp.accept().await {
                let Ok(outbound) = TcpStream::connect(back).await else {
                    continue;
                };
                let limit = if first { Some(cut_after) } else { None };
                first = false;
                let counters = (bytes.clone(), cut_count.clone(), freeze.clone());
                tokio::spawn(relay(inbound, outbound, limit, counters));
            }
        });
        Self {
            front,
            downstream,
            cuts,
            frozen,
        }
    }

    /// From now on passes nothing either way, and keeps every socket open: a proxy whose far
    /// side died without a word.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }

    /// Bytes passed from `back` to the node so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.downstream.load(Ordering::Relaxed)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

/// Copies both ways; stops both once `limit` bytes went downstream, if there is a limit, and
/// holds everything (sockets open, nothing passed) once frozen.
async fn relay(
    node: TcpStream,
    coordinator: TcpStream,
    limit: Option<u64>,
    (downstream, cuts, frozen): (
        Arc<AtomicU64>,
        Arc<AtomicU64>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
) {
    let (mut node_read, mut node_write) = node.into_split();
    let (mut coordinator_read, mut coordinator_write) = coordinator.into_split();
    let hold = || async {
        // Frozen: keep the sockets, pass nothing, for good.
        std::future::pending::<()>().await;
    };
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let Ok(n) = node_read.read(&mut buffer).await else {
                return;
            };
            if frozen.load(Ordering::Relaxed) {
                hold().await;
            }
            if n == 0 || coordinator_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut passed = 0u64;
        loop {
            let room = limit.map_or(buffer.len() as u64, |l| {
                (l - passed).min(buffer.len() as u64)
            });
            if room == 0 {
                cuts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Ok(n) = coordinator_read.read(&mut buffer[..room as usize]).await else {
                return;
            };
            if frozen.load(Ordering::Relaxed) {
                hold().await;
            }
            if n == 0 || node_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            passed += n as u64;
            downstream.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    // Whichever way ends first ends the connection: both sockets drop here.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
