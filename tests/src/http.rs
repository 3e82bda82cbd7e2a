//! A small HTTP/1.1 client for the tests of the coordinator's dashboard: one request per
//! connection (`Connection: close`), plain or over TLS, with the response read whole, or an
//! event stream read until a first event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to reach the dashboard.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
}

impl Client {
    /// Plain HTTP to `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// HTTPS to `addr` with `config` (its roots decide what is trusted).
    pub fn tls(addr: SocketAddr, config: ClientConfig) -> Self {
        Self {
            addr,
            tls: Some(Arc::new(config)),
        }
    }

    /// Sends `method path` with `headers` and reads the whole response (at most 30 s).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let text = tokio::time::timeout(Duration::from_secs(30), async {
            let mut stream = self.connect().await?;
            write_request(&mut stream, self.addr, method, path, headers).await?;
            let mut bytes = Vec::new();
            stream
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| format!("reading the response: {e}"))?;
            Ok::<_, String>(String::from_utf8_lossy(&bytes).into_owned())
        })
        .await
        .map_err(|_| format!("{method} {path}: no response within 30 s"))??;
        parse(&text)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Response, String> {
        self.request("GET", path, &[]).await
    }

    /// Opens `path` as an event stream and returns the head and the bytes up to the end of the
    /// first event (a blank line), read within 30 s.
    pub async fn first_event(&self, path: &str) -> Result<Response, String> {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut stream = self.connect().await?;
            write_request(&mut stream, self.addr, "GET", path, &[]).await?;
            let mut bytes = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let n = stream
                    .read(&mut buffer)
                    .await
                    .map_err(|e| format!("reading the stream: {e}"))?;
                if n == 0 {
                    return Err("the stream ended before a first event".to_owned());
                }
                bytes.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&bytes);
                if let Some((_, body)) = text.split_once("\r\n\r\n")
                    && body.contains("\n\n")
                {
                    return parse(&text);
                }
            }
        })
        .await
        .map_err(|_| format!("GET {path}: no event within 30 s"))?
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(config) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// A byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Writes the request; its `Host` is `addr` unless `headers` name one.
async fn write_request(
    stream: &mut Box<dyn Stream>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(), String> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending {method} {path}: {e}"))
}

/// Parses a response; a chunked body is decoded.
fn parse(text: &str) -> Result<Response, String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The data of a chunked body (as far as it goes).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            body.push_str(&after[..size.min(after.len())]);
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The value of the sample `name` (with its labels, as written) in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}
