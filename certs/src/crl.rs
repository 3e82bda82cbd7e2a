//! The certificate revocation list: signing it and adding revocations.
//!
//! `crl.pem` is the only record of revocations: `revoke` reads it back (after checking the CA
//! signed it), adds one entry, and writes a new CRL with the next CRL number in its place.

use std::fmt::Write as _;
use std::path::Path;

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
    SigningKey,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::CertError;
use crate::ca::Ca;
use crate::files::{self, Access};

/// How long after issue a CRL says the next one is due (its `nextUpdate`).
///
/// The coordinator and the nodes refuse a CRL past its `nextUpdate` (unless their `[tls]`
/// configuration sets `allow_expired_crl = true`), so the operator reissues the CRL before then:
/// [`reissue_crl`] (`medfed-certs crl`), or any [`revoke`].
pub const CRL_LIFETIME: Duration = Duration::days(365);

/// Revokes the certificate in `cert_pem_path`: adds its serial to the CRL of the CA in `ca_dir`
/// and atomically rewrites `crl.pem` with the next CRL number.
///
/// Fails with [`CertError::NotIssuedByConsortium`] if the CA did not sign the certificate,
/// [`CertError::AlreadyRevoked`] if it is on the CRL already, and [`CertError::InvalidCrl`] if the
/// current `crl.pem` is unreadable or was not signed by the CA.
pub fn revoke(ca_dir: &Path, cert_pem_path: &Path) -> Result<(), CertError> {
    let ca = Ca::load(ca_dir)?;
    let ca_cert = ca.parsed()?;
    let der = files::load_cert(cert_pem_path)?;
    if der == ca.cert_der {
        return Err(CertError::RevokeCa {
            path: cert_pem_path.to_owned(),
        });
    }
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::InvalidCertificate {
        path: cert_pem_path.to_owned(),
        reason: e.to_string(),
    })?;
    let issued_by_ca = cert.issuer().as_raw() == ca_cert.subject().as_raw()
        && cert.verify_signature(Some(ca_cert.public_key())).is_ok();
    if !issued_by_ca {
        return Err(CertError::NotIssuedByConsortium {
            path: cert_pem_path.to_owned(),
        });
    }

    let (number, mut revoked) = read_current(&ca, &ca_cert)?;
    let serial = cert.raw_serial();
    if revoked.iter().any(|r| r.serial_number.as_ref() == serial) {
        return Err(CertError::AlreadyRevoked {
            path: cert_pem_path.to_owned(),
            serial: hex(serial),
        });
    }
    revoked.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(serial),
        revocation_time: OffsetDateTime::now_utc(),
        reason_code: None,
        invalidity_date: None,
    });
    write_next(&ca, number, revoked)
}

/// Reissues the CRL of the CA in `ca_dir` with the same revocations, the next CRL number and a
/// fresh validity ([`CRL_LIFETIME`] from now), atomically replacing `crl.pem`: what the operator
/// does before the CRL in force reaches its `nextUpdate`.
///
/// Fails with [`CertError::InvalidCrl`] if the current `crl.pem` is unreadable or was not signed
/// by the CA.
pub fn reissue_crl(ca_dir: &Path) -> Result<(), CertError> {
    let ca = Ca::load(ca_dir)?;
    let ca_cert = ca.parsed()?;
    let (number, revoked) = read_current(&ca, &ca_cert)?;
    write_next(&ca, number, revoked)
}

/// Signs the CRL that follows number `number`, listing `revoked`, and atomically replaces the CA's
/// `crl.pem` with it.
fn write_next(ca: &Ca, number: u64, revoked: Vec<RevokedCertParams>) -> Result<(), CertError> {
    let next = number.checked_add(1).ok_or_else(|| CertError::InvalidCrl {
        path: ca.crl_path.clone(),
        reason: "CRL number cannot grow any further".to_owned(),
    })?;
    let pem = sign(&ca.issuer, next, revoked)?;
    files::write_replace(&ca.crl_path, pem.as_bytes(), Access::Public)
}

/// Signs a CRL with CRL number `number` listing `revoked`, valid from now for [`CRL_LIFETIME`];
/// returns it as PEM.
pub(crate) fn sign(
    issuer: &Issuer<'_, impl SigningKey>,
    number: u64,
    revoked: Vec<RevokedCertParams>,
) -> Result<String, CertError> {
    let now = OffsetDateTime::now_utc();
    sign_for(issuer, number, revoked, now, now + CRL_LIFETIME)
}

/// Signs a CRL with CRL number `number` listing `revoked`, issued at `this_update` and due to
/// be replaced at `next_update`; returns it as PEM.
pub(crate) fn sign_for(
    issuer: &Issuer<'_, impl SigningKey>,
    number: u64,
    revoked: Vec<RevokedCertParams>,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<String, CertError> {
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let generate = |source| CertError::Generate {
        what: "sign the CRL",
        source,
    };
    params
        .signed_by(issuer)
        .map_err(generate)?
        .pem()
        .map_err(generate)
}

/// Lower-case hex of `bytes`, as serial numbers are shown.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The CRL number and entries of the CA's current CRL, after checking the CA signed it.
fn read_current(
    ca: &Ca,
    ca_cert: &X509Certificate<'_>,
) -> Result<(u64, Vec<RevokedCertParams>), CertError> {
    let path = &ca.crl_path;
    let invalid = |reason: String| CertError::InvalidCrl {
        path: path.clone(),
        reason,
    };
    let ders = files::load_crls(path)?;
    if ders.len() != 1 {
        return Err(invalid(format!("holds {} CRLs, expected one", ders.len())));
    }
    let (_, crl) =
        CertificateRevocationList::from_der(&ders[0]).map_err(|e| invalid(e.to_string()))?;
    if crl.issuer().as_raw() != ca_cert.subject().as_raw()
        || crl.verify_signature(ca_cert.public_key()).is_err()
    {
        return Err(invalid("not signed by the consortium CA".to_owned()));
    }
    let number = crl
        .crl_number()
        .ok_or_else(|| invalid("has no CRL number".to_owned()))?
        .to_bytes_be();
    if number.len() > 8 {
        return Err(invalid("CRL number too large".to_owned()));
    }
    let number = number.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok((number, revoked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x4a, 0xff]), "004aff");
    }
}
