//! Reaching the coordinator through a hospital's HTTP proxy with `CONNECT` (RFC 9110, 9.3.6):
//! the proxy opens a TCP tunnel to `host:port` and the node speaks TLS through it, so the proxy
//! sees the coordinator's name and the bytes' count, never their content.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use medfed_certs::{PrivateFileError, read_owner_only};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::address::PeerAddress;

/// Longest proxy answer header read, in bytes.
const MAX_ANSWER: usize = 16 * 1024;

/// An HTTP proxy: `http://host:port`, with optional Basic credentials.
#[derive(Clone)]
pub struct Proxy {
    address: PeerAddress,
    /// `user:password`, read from the credentials file.
    credentials: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credentials stay out of logs.
        f.debug_struct("Proxy")
            .field("address", &self.address)
            .field("credentials", &self.credentials.as_ref().map(|_| "…"))
            .finish()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.address)
    }
}

/// Why a proxy could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The URL is not `http://host:port`.
    #[error("proxy \"{url}\": {why}")]
    Url {
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The credentials file could not be used.
    #[error("proxy credentials file {}: {why}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The proxy could not be reached.
    #[error("cannot reach proxy {proxy}: {source}")]
    Unreachable {
        /// The proxy.
        proxy: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The proxy wants credentials (407) that were not given or were refused.
    #[error("proxy {proxy} wants credentials (407): set or check proxy_credentials_file")]
    AuthenticationRequired {
        /// The proxy.
        proxy: String,
    },
    /// The proxy answered something other than 2xx.
    #[error("proxy {proxy} refused the tunnel to {target}: \"{status_line}\"")]
    Refused {
        /// The proxy.
        proxy: String,
        /// Where the tunnel was to go.
        target: String,
        /// Its status line.
        status_line: String,
    },
    /// The proxy's answer is not HTTP, or too long.
    #[error("proxy {proxy} answered something that is not an HTTP response: {why}")]
    BadAnswer {
        /// The proxy.
        proxy: String,
        /// What was wrong.
        why: String,
    },
}

impl Proxy {
    /// Parses `http://host:port` and reads `user:password` from `credentials`, a file no one but
    /// its owner may read.
    pub fn new(url: &str, credentials: Option<&Path>) -> Result<Self, ProxyError> {
        let bad = |why: &str| ProxyError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// proxies are supported (the tunnel carries TLS)"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(bad(
                "credentials do not belong in the URL: put user:password in proxy_credentials_file",
            ));
        }
        let address: PeerAddress = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        let credentials = credentials.map(read_credentials).transpose()?;
        Ok(Self {
            address,
            credentials,
        })
    }

    /// A TCP stream tunnelled through the proxy to `target`.
    pub async fn connect(&self, target: &PeerAddress) -> Result<TcpStream, ProxyError> {
        let proxy = self.to_string();
        let unreachable = |source| ProxyError::Unreachable {
            proxy: proxy.clone(),
            source,
        };
        let host = self.address.host_text();
        let mut stream = TcpStream::connect((host.as_str(), self.address.port()))
            .await
            .map_err(unreachable)?;
        let target_text = target.to_string();
        let mut request = format!(
            "CONNECT {target_text} HTTP/1.1\r\nHost: {target_text}\r\nUser-Agent: medfed-node\r\n"
        );
        if let Some(credentials) = &self.credentials {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(unreachable)?;
        let header = read_header(&mut stream, &proxy).await?;
        let status_line = header.lines().next().unwrap_or_default().to_owned();
        match parse_status(&status_line) {
            Some(status) if (200..300).contains(&status) => Ok(stream),
            Some(407) => Err(ProxyError::AuthenticationRequired { proxy }),
            Some(_) => Err(ProxyError::Refused {
                proxy,
                target: target_text,
                status_line: clean(&status_line),
            }),
            None => Err(ProxyError::BadAnswer {
                proxy,
                why: format!("status line \"{}\"", clean(&status_line)),
            }),
        }
    }
}

/// Reads the proxy's answer up to the blank line, a byte at a time: nothing after it may be
/// consumed, since it belongs to the tunnel.
async fn read_header(stream: &mut TcpStream, proxy: &str) -> Result<String, ProxyError> {
    let mut header = Vec::with_capacity(256);
    let mut byte = [0u8];
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_ANSWER {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.to_owned(),
                why: format!("no end of header in {MAX_ANSWER} bytes"),
            });
        }
        match stream.read(&mut byte).await {
            Ok(0) => {
                return Err(ProxyError::BadAnswer {
                    proxy: proxy.to_owned(),
                    why: "the proxy closed the connection before answering".into(),
                });
            }
            Ok(_) => header.push(byte[0]),
            Err(source) => {
                return Err(ProxyError::Unreachable {
                    proxy: proxy.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(String::from_utf8_lossy(&header).into_owned())
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Text from the proxy, made safe to log: printable ASCII only, at most 200 characters.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// Reads `user:password` from `path`, which must be readable by its owner only.
fn read_credentials(path: &Path) -> Result<String, ProxyError> {
    let bad = |why: String| ProxyError::Credentials {
        path: path.to_owned(),
        why,
    };
    let bytes = read_owner_only(path).map_err(|e| match e {
        PrivateFileError::Read(source) => bad(source.to_string()),
        PrivateFileError::Exposed(mode) => bad(format!(
            "mode {:o} lets others read it: chmod 600 it",
            mode & 0o777
        )),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    let line = text.trim_end_matches(['\r', '\n']);
    if line.contains(['\r', '\n']) || !line.contains(':') || line.starts_with(':') {
        return Err(bad("it must hold one line, user:password".into()));
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed_strictly() {
        assert_eq!(
            parse_status("HTTP/1.1 200 Connection established"),
            Some(200)
        );
        assert_eq!(parse_status("HTTP/1.0 407 Proxy Auth"), Some(407));
        assert_eq!(parse_status("HTTP/2 200"), None);
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 20 short"), None);
    }

    #[test]
    fn urls_other_than_http_host_port_are_refused() {
        assert!(Proxy::new("http://proxy.hospital.example:3128", None).is_ok());
        assert!(Proxy::new("http://10.0.0.1:8080/", None).is_ok());
        for bad in [
            "https://proxy:3128",
            "proxy:3128",
            "http://user:pw@proxy:3128",
            "http://proxy",
        ] {
            assert!(
                matches!(Proxy::new(bad, None), Err(ProxyError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_must_be_private_and_one_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-credentials");
        std::fs::write(&path, "alice:s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Proxy::new("http://p:1", Some(&path)).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let proxy = Proxy::new("http://p:1", Some(&path)).unwrap();
        assert_eq!(proxy.credentials.as_deref(), Some("alice:s3cret"));
        assert!(!format!("{proxy:?}").contains("s3cret"));
        std::fs::write(&path, "no colon\n").unwrap();
        assert!(matches!(
            Proxy::new("http://p:1", Some(&path)),
            Err(ProxyError::Credentials { .. })
        ));
    }

    #[test]
    fn proxy_text_is_cleaned_before_it_is_logged() {
        assert_eq!(clean("HTTP/1.1 403 \u{1b}[31mno\r"), "HTTP/1.1 403 [31mno");
    }
}
