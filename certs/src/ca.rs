//! The consortium certificate authority: creating it, loading it, and issuing certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use crate::files::{self, Access, Rollback};
use crate::names::{self, check_ca_name, check_party_name};
use crate::{CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, CertError, crl};

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first moment the certificate is valid.
    pub not_before: OffsetDateTime,
    /// The last moment the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// How far back [`Validity::days_from_now`] starts, to tolerate clocks that lag a little.
    pub const CLOCK_SKEW: Duration = Duration::minutes(5);

    /// Valid from a few minutes ago ([`Validity::CLOCK_SKEW`]) until `days` days from now.
    ///
    /// `days` is a `u16` (at most about 179 years), so the end date can always be represented.
    pub fn days_from_now(days: u16) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Self::CLOCK_SKEW,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// Fails with [`CertError::InvalidValidity`] unless `not_before` comes before `not_after`.
    ///
    /// Periods wholly in the past or the future are allowed: tests need expired and not yet valid
    /// certificates.
    pub fn check(&self) -> Result<(), CertError> {
        if self.not_before < self.not_after {
            Ok(())
        } else {
            Err(CertError::InvalidValidity {
                not_before: self.not_before,
                not_after: self.not_after,
            })
        }
    }
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A hospital node: TLS client authentication (`clientAuth` extended key usage), no SANs.
    Node,
    /// The coordinator: TLS server authentication (`serverAuth` extended key usage) and subject
    /// alternative names (DNS names or IP addresses) the nodes connect to.
    Coordinator,
}

impl Role {
    /// SANs a coordinator certificate gets when none are given.
    pub const DEFAULT_COORDINATOR_SANS: [&'static str; 2] = ["localhost", "127.0.0.1"];
}

/// Creates a consortium CA in `dir`: `ca.key` (ECDSA P-256, mode 0600), the self-signed `ca.pem`,
/// and an empty CRL `crl.pem` (CRL number 1) signed by the CA.
///
/// `dir` is created if missing. Refuses with [`CertError::AlreadyExists`], writing nothing, if any
/// of the three files exists. If writing fails halfway, the files already written are removed.
pub fn init_ca(dir: &Path, name: &str, validity: Validity) -> Result<(), CertError> {
    let mut rollback = Rollback::default();
    create_ca(dir, name, validity, &mut rollback)?;
    rollback.commit();
    Ok(())
}

/// [`init_ca`], leaving the files it writes to `rollback`.
pub(crate) fn create_ca(
    dir: &Path,
    name: &str,
    validity: Validity,
    rollback: &mut Rollback,
) -> Result<(), CertError> {
    check_ca_name(name)?;
    validity.check()?;
    let (cert_path, key_path, crl_path) = ca_paths(dir);
    refuse_existing_ca(dir)?;

    let key = new_key_pair()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(name);
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate {
            what: "self-sign the CA certificate",
            source,
        })?;
    let issuer = Issuer::new(params, &key);
    let crl = crl::sign(&issuer, 1, Vec::new())?;

    files::ensure_dir(dir)?;
    rollback.write_new(&key_path, key.serialize_pem().as_bytes(), Access::Private)?;
    rollback.write_new(&cert_path, cert.pem().as_bytes(), Access::Public)?;
    rollback.write_new(&crl_path, crl.as_bytes(), Access::Public)
}

/// Signs the certificate signing request in `csr_pem_path` with the CA in `ca_dir`, writing the
/// certificate to `out_cert` (never replacing an existing file).
///
/// Only the request's public key and subject common name are used; whatever extensions it asks for
/// are ignored. The certificate gets a fresh random serial, the key usages of `role`, and for a
/// coordinator the subject alternative names `sans` (IP addresses or DNS names; when empty,
/// [`Role::DEFAULT_COORDINATOR_SANS`]). SANs for a node are an error. `validity` may lie in the
/// past or the future.
pub fn sign_request(
    ca_dir: &Path,
    csr_pem_path: &Path,
    out_cert: &Path,
    role: Role,
    validity: Validity,
    sans: &[String],
) -> Result<(), CertError> {
    validity.check()?;
    let sans = resolve_sans(role, sans)?;
    files::refuse_existing([out_cert])?;
    let ca = Ca::load(ca_dir)?;
    let csr = read_csr(csr_pem_path)?;
    let cert = ca.issue(&csr, role, validity, &sans)?;
    files::write_new(out_cert, cert.pem().as_bytes(), Access::Public)
}

/// The subject common name of a certificate (the node's identity).
///
/// Fails if the bytes are not a certificate, or the subject has no common name, more than one,
/// or one that is not a UTF-8 (or ASCII) string.
pub fn subject_common_name(cert: &CertificateDer<'_>) -> Result<String, CertError> {
    let (_, x509) =
        X509Certificate::from_der(cert).map_err(|e| CertError::MalformedCertificate {
            reason: e.to_string(),
        })?;
    common_name(x509.subject())
}

/// A CSR that parsed and whose signature verified, with its subject common name.
#[derive(Debug)]
pub(crate) struct Csr {
    /// What rcgen parsed (public key and requested parameters).
    params: CertificateSigningRequestParams,
    /// The subject common name, checked with [`check_party_name`].
    common_name: String,
}

impl Csr {
    /// Parses and verifies a DER CSR; `path` names it in errors.
    pub(crate) fn from_der(
        der: &CertificateSigningRequestDer<'_>,
        path: &Path,
    ) -> Result<Self, CertError> {
        let params = CertificateSigningRequestParams::from_der(der).map_err(|source| {
            CertError::InvalidCsr {
                path: path.to_owned(),
                source,
            }
        })?;
        // rcgen keeps one value per attribute type, so read the subject again to see every CN.
        let (_, parsed) =
            X509CertificationRequest::from_der(der).map_err(|_| CertError::InvalidCsr {
                path: path.to_owned(),
                source: rcgen::Error::CouldNotParseCertificationRequest,
            })?;
        let common_name = common_name(&parsed.certification_request_info.subject)?;
        check_party_name(&common_name)?;
        Ok(Self {
            params,
            common_name,
        })
    }
}

/// A loaded consortium CA, able to sign.
pub(crate) struct Ca {
    /// `ca.pem`.
    pub(crate) cert_path: PathBuf,
    /// `crl.pem`.
    pub(crate) crl_path: PathBuf,
    /// The CA certificate.
    pub(crate) cert_der: CertificateDer<'static>,
    /// Signs certificates and CRLs as the CA.
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `ca.pem` and `ca.key` from `dir` and checks that they belong together.
    pub(crate) fn load(dir: &Path) -> Result<Self, CertError> {
        let (cert_path, key_path, crl_path) = ca_paths(dir);
        let cert_der = files::load_cert(&cert_path)?;
        let key = load_key_pair(&key_path)?;
        let (_, x509) =
            X509Certificate::from_der(&cert_der).map_err(|e| CertError::InvalidCertificate {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CertError::CaKeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| {
            CertError::InvalidCertificate {
                path: cert_path.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            cert_path,
            crl_path,
            cert_der,
            issuer,
        })
    }

    /// The parsed CA certificate.
    pub(crate) fn parsed(&self) -> Result<X509Certificate<'_>, CertError> {
        X509Certificate::from_der(&self.cert_der)
            .map(|(_, cert)| cert)
            .map_err(|e| CertError::InvalidCertificate {
                path: self.cert_path.clone(),
                reason: e.to_string(),
            })
    }

    /// Issues a certificate for `csr`'s key and common name (see [`sign_request`]).
    pub(crate) fn issue(
        &self,
        csr: &Csr,
        role: Role,
        validity: Validity,
        sans: &[rcgen::SanType],
    ) -> Result<Certificate, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&csr.common_name);
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match role {
            Role::Node => ExtendedKeyUsagePurpose::ClientAuth,
            Role::Coordinator => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.subject_alt_names = sans.to_vec();
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.params.public_key.clone(),
        };
        request
            .signed_by(&self.issuer)
            .map_err(|source| CertError::Generate {
                what: "sign the certificate",
                source,
            })
    }
}

/// The paths of `ca.pem`, `ca.key` and `crl.pem` in `dir`.
pub(crate) fn ca_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(CA_CERT_FILE),
        dir.join(CA_KEY_FILE),
        dir.join(CRL_FILE),
    )
}

/// Fails with [`CertError::AlreadyExists`] if `dir` holds any CA file.
pub(crate) fn refuse_existing_ca(dir: &Path) -> Result<(), CertError> {
    let (cert, key, crl) = ca_paths(dir);
    files::refuse_existing([key.as_path(), cert.as_path(), crl.as_path()])
}

/// A fresh ECDSA P-256 key pair.
pub(crate) fn new_key_pair() -> Result<KeyPair, CertError> {
    new_key_pair_of(KeyKind::EcdsaP256)
}

/// The kind of a party's key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA on P-256: nodes (it also signs their secure-aggregation keys).
    #[default]
    EcdsaP256,
    /// Ed25519: the coordinator, whose key also signs the audit reports.
    Ed25519,
}

/// A fresh key pair of `kind`.
pub(crate) fn new_key_pair_of(kind: KeyKind) -> Result<KeyPair, CertError> {
    let (algorithm, what) = match kind {
        KeyKind::EcdsaP256 => (&PKCS_ECDSA_P256_SHA256, "generate an ECDSA P-256 key pair"),
        KeyKind::Ed25519 => (&PKCS_ED25519, "generate an Ed25519 key pair"),
    };
    KeyPair::generate_for(algorithm).map_err(|source| CertError::Generate { what, source })
}

/// A subject holding only `CN=name`.
pub(crate) fn common_name_dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// The single common name of an X.509 name.
pub(crate) fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Result<String, CertError> {
    let mut names = name.iter_common_name();
    let first = names.next().ok_or(CertError::NoCommonName)?;
    if names.next().is_some() {
        return Err(CertError::AmbiguousCommonName);
    }
    first
        .as_str()
        .map(str::to_owned)
        .map_err(|_| CertError::CommonNameNotUtf8)
}

/// Checks the SANs against the role and parses them, applying the coordinator defaults.
pub(crate) fn resolve_sans(role: Role, sans: &[String]) -> Result<Vec<rcgen::SanType>, CertError> {
    match role {
        Role::Node if sans.is_empty() => Ok(Vec::new()),
        Role::Node => Err(CertError::SanForNode),
        Role::Coordinator if sans.is_empty() => Role::DEFAULT_COORDINATOR_SANS
            .iter()
            .map(|san| names::parse_san(san))
            .collect(),
        Role::Coordinator => sans.iter().map(|san| names::parse_san(san)).collect(),
    }
}

/// Reads, parses and verifies a PEM CSR.
fn read_csr(path: &Path) -> Result<Csr, CertError> {
    let bytes = files::read(path)?;
    let der = CertificateSigningRequestDer::from_pem_slice(&bytes).map_err(|_| {
        CertError::InvalidCsr {
            path: path.to_owned(),
            source: rcgen::Error::CouldNotParseCertificationRequest,
        }
    })?;
    Csr::from_der(&der, path)
}

/// Loads a PEM private key for signing.
fn load_key_pair(path: &Path) -> Result<KeyPair, CertError> {
    let key = files::load_key(path)?;
    KeyPair::try_from(&key).map_err(|e| CertError::InvalidPrivateKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A random positive 16-byte serial number.
///
/// The top bit is cleared (positive) and the next set (no leading zero octet), so the DER encoding
/// is exactly these 16 bytes and a CRL entry matches the certificate byte for byte.
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_must_not_be_empty() {
        let v = Validity::days_from_now(1);
        assert!(v.check().is_ok());
        let backwards = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert!(matches!(
            backwards.check(),
            Err(CertError::InvalidValidity { .. })
        ));
        assert!(Validity::days_from_now(u16::MAX).check().is_ok());
    }

    #[test]
    fn serials_are_positive_distinct_and_sixteen_bytes() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a.as_ref()[0] & 0xc0, 0x40);
    }

    #[test]
    fn sans_follow_the_role() {
        assert!(resolve_sans(Role::Node, &[]).unwrap().is_empty());
        assert!(matches!(
            resolve_sans(Role::Node, &["x".to_owned()]),
            Err(CertError::SanForNode)
        ));
        assert_eq!(resolve_sans(Role::Coordinator, &[]).unwrap().len(), 2);
        assert!(resolve_sans(Role::Coordinator, &["bad name".to_owned()]).is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            subject_common_name(&der),
            Err(CertError::MalformedCertificate { .. })
        ));
    }
}
