//! A readable summary of a certificate, for `medfed-certs show`.

use std::fmt;
use std::path::Path;

use time::{OffsetDateTime, UtcOffset};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ca::{Role, common_name};
use crate::crl::hex;
use crate::{CertError, files};

/// What `show` prints about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject common name; `None` if there is none, several, or one that is not text.
    pub common_name: Option<String>,
    /// The whole subject, as `CN=…`.
    pub subject: String,
    /// The issuer, as `CN=…`.
    pub issuer: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Whether this is a CA certificate.
    pub is_ca: bool,
    /// The medfed role its extended key usage grants, if exactly one.
    pub role: Option<Role>,
    /// The subject alternative names (DNS names and IP addresses), as written in the
    /// certificate: the names a coordinator may be reached by.
    pub alternative_names: Vec<String>,
}

/// Summarises the first certificate in the PEM file `path`.
pub fn describe_certificate(path: &Path) -> Result<CertSummary, CertError> {
    let der = files::load_cert(path)?;
    let invalid = |reason: String| CertError::InvalidCertificate {
        path: path.to_owned(),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| invalid(e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    let eku = cert
        .extended_key_usage()
        .map_err(|e| invalid(e.to_string()))?;
    let role = eku.and_then(|eku| match (eku.value.client_auth, eku.value.server_auth) {
        (true, false) => Some(Role::Node),
        (false, true) => Some(Role::Coordinator),
        _ => None,
    });
    let alternative_names = cert
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => (*dns).to_owned(),
                    GeneralName::IPAddress(bytes) => ip_text(bytes),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertSummary {
        alternative_names,
        common_name: common_name(cert.subject()).ok(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca,
        role,
    })
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.is_ca, self.role) {
            (true, _) => "certificate authority",
            (false, Some(Role::Node)) => "node (clientAuth)",
            (false, Some(Role::Coordinator)) => "coordinator (serverAuth)",
            (false, None) => "other",
        };
        writeln!(
            f,
            "subject CN: {}",
            self.common_name.as_deref().unwrap_or("(none)")
        )?;
        writeln!(f, "subject:    {}", self.subject)?;
        writeln!(f, "kind:       {kind}")?;
        if !self.alternative_names.is_empty() {
            writeln!(f, "names:      {}", self.alternative_names.join(", "))?;
        }
        writeln!(f, "serial:     {}", self.serial)?;
        writeln!(f, "not before: {}", Utc(self.not_before))?;
        writeln!(f, "not after:  {}", Utc(self.not_after))?;
        write!(f, "issuer:     {}", self.issuer)
    }
}

/// An IP address SAN's bytes as text (4 bytes IPv4, 16 IPv6; anything else in hex).
fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex(bytes),
    }
}

/// Shows a time as `YYYY-MM-DD HH:MM:SS UTC`.
struct Utc(OffsetDateTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.to_offset(UtcOffset::UTC);
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}
