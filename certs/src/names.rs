//! Rules for names: node and coordinator names (which become file names and identities), the
//! consortium name, and subject alternative names.

use std::net::IpAddr;

use rcgen::SanType;

use crate::CertError;

/// The longest name accepted (the X.509 upper bound for a common name).
const MAX_NAME_LEN: usize = 64;

/// Names a development consortium uses for its own files, so no node may take them.
pub(crate) const RESERVED_NAMES: [&str; 3] = ["ca", "crl", "coordinator"];

/// Checks a node or coordinator name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting
/// with a letter or digit. Such a name is a safe file name and an unambiguous identity.
pub(crate) fn check_party_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with an ASCII letter or digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// Checks the consortium (CA) name: 1 to 64 characters, no control characters.
pub(crate) fn check_ca_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.trim().is_empty() {
        return Err(invalid("empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

/// Parses a subject alternative name: an IP address, else a DNS name.
pub(crate) fn parse_san(san: &str) -> Result<SanType, CertError> {
    let invalid = || CertError::InvalidSan {
        san: san.to_owned(),
    };
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // Validate with the same rules the verifying side (webpki) applies.
    rustls_pki_types::DnsName::try_from(san).map_err(|_| invalid())?;
    let ia5 = san.try_into().map_err(|_| invalid())?;
    Ok(SanType::DnsName(ia5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn party_names() {
        for ok in ["hospital-1", "a", "St.Marys_2", &"x".repeat(64)] {
            assert!(check_party_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(check_party_name(bad), Err(CertError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ca_names() {
        assert!(check_ca_name("medfed consortium").is_ok());
        assert!(check_ca_name("  ").is_err());
        assert!(check_ca_name("a\nb").is_err());
    }

    #[test]
    fn sans() {
        assert!(matches!(parse_san("127.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(parse_san("::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(parse_san("localhost"), Ok(SanType::DnsName(_))));
        assert!(matches!(
            parse_san("coord.example.org"),
            Ok(SanType::DnsName(_))
        ));
        for bad in ["", "a b", "x..y", "é.org"] {
            assert!(
                matches!(parse_san(bad), Err(CertError::InvalidSan { .. })),
                "{bad}"
            );
        }
    }
}
