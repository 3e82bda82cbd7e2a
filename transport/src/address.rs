//! Where a node finds its coordinator: a host, an IP address or a DNS name, and a UDP port,
//! written `host:port` (`[v6]:port` for an IPv6 address), as in `coordinator =
//! "coordinator.consortium.example:7400"`.
//!
//! A DNS name is resolved at every connection attempt, not once at start, so a coordinator that
//! moves to another address (a restarted cloud machine, a failover) is found again by its name.
//! The node's QUIC endpoint is an IPv4 socket, so the first IPv4 address the name resolves to
//! is used.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// The coordinator's address as configured. Build it by parsing `host:port`, or from a socket
/// address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why `host:port` is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `:port` at the end.
    #[error("\"{0}\" has no port: write host:port, for example coordinator.example.org:7400")]
    NoPort(String),
    /// The port is not a number in 1..=65535.
    #[error("\"{address}\": port \"{port}\" is not a number in 1..=65535")]
    BadPort {
        /// The address as written.
        address: String,
        /// The port as written.
        port: String,
    },
    /// The host is neither an IP address nor a DNS name (letters, digits, `-` and `.`).
    #[error("\"{address}\": \"{host}\" is neither an IP address nor a host name")]
    BadHost {
        /// The address as written.
        address: String,
        /// The host as written.
        host: String,
    },
}

/// Why the address could not be turned into a socket address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name did not resolve.
    #[error("cannot resolve \"{host}\": {source}")]
    Lookup {
        /// The host name.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The name (or the address) has no IPv4 address, which the node's endpoint needs.
    #[error("\"{host}\" has no IPv4 address (it resolves to {found}); the node connects over IPv4")]
    NoIpv4 {
        /// The host as configured.
        host: String,
        /// The addresses it resolved to.
        found: String,
    },
}

impl PeerAddress {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's DNS name, if it is one rather than an IP address.
    pub fn host_name(&self) -> Option<&str> {
        match &self.host {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }

    /// The host to hand to a resolver or a proxy: the name, or the IP address (without
    /// brackets).
    pub fn host_text(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// The socket address to connect to: the IP address as written, or the first IPv4 address
    /// the name resolves to now.
    pub async fn resolve(&self) -> Result<SocketAddr, ResolveError> {
        let candidates: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: name.clone(),
                    source,
                })?
                .collect(),
        };
        candidates
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .ok_or_else(|| ResolveError::NoIpv4 {
                host: self.host.to_string(),
                found: candidates
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl From<SocketAddr> for PeerAddress {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl FromStr for PeerAddress {
    type Err = AddressError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = address.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| AddressError::NoPort(address.to_owned()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AddressError::BadPort {
                address: address.to_owned(),
                port: port.to_owned(),
            })?;
        let bad_host = || AddressError::BadHost {
            address: address.to_owned(),
            host: host.to_owned(),
        };
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            // An IP address with a port that did not parse above: `[v6]` written without
            // brackets, say. Not a name either.
            return Err(bad_host());
        }
        if !is_host_name(host) {
            return Err(bad_host());
        }
        Ok(Self {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// Whether `host` is a DNS name: dot-separated labels of 1 to 63 letters, digits and hyphens,
/// not starting or ending with a hyphen, 253 characters at most (RFC 1123).
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_written_and_print_back() {
        for text in [
            "127.0.0.1:7400",
            "[::1]:7400",
            "coordinator.consortium.example:7400",
            "localhost:1",
        ] {
            let address: PeerAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        let named: PeerAddress = "Coordinator.Example.ORG:7400".parse().unwrap();
        assert_eq!(named.host_name(), Some("coordinator.example.org"));
        assert_eq!(named.port(), 7400);
        let ip: PeerAddress = "10.0.0.5:7400".parse().unwrap();
        assert_eq!(ip.host_name(), None);
        assert_eq!(
            ip,
            PeerAddress::from(SocketAddr::from(([10, 0, 0, 5], 7400)))
        );
    }

    #[test]
    fn bad_addresses_are_refused_naming_the_part_at_fault() {
        assert_eq!(
            "coordinator.example.org".parse::<PeerAddress>(),
            Err(AddressError::NoPort("coordinator.example.org".into()))
        );
        for port in ["0", "65536", "http", ""] {
            let text = format!("coordinator.example.org:{port}");
            assert_eq!(
                text.parse::<PeerAddress>(),
                Err(AddressError::BadPort {
                    address: text.clone(),
                    port: port.into()
                })
            );
        }
        for host in ["", "-coordinator", "coord_inator", "a..b", "::1", "[::1"] {
            let text = format!("{host}:7400");
            assert!(
                matches!(
                    text.parse::<PeerAddress>(),
                    Err(AddressError::BadHost { .. })
                ),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_resolves_to_its_ipv4_address_and_an_unknown_one_is_named_in_the_error() {
        let local: PeerAddress = "localhost:7400".parse().unwrap();
        let resolved = local.resolve().await.unwrap();
        assert!(
            resolved.ip().is_loopback() && resolved.is_ipv4(),
            "{resolved}"
        );
        assert_eq!(resolved.port(), 7400);
        // `.invalid` never resolves (RFC 2606).
        let unknown: PeerAddress = "coordinator.invalid:7400".parse().unwrap();
        let error = unknown.resolve().await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot resolve \"coordinator.invalid\""),
            "{error}"
        );
        let v6: PeerAddress = "[::1]:7400".parse().unwrap();
        assert!(matches!(
            v6.resolve().await,
            Err(ResolveError::NoIpv4 { .. })
        ));
    }
}
