//! Making and managing consortium material: files, modes, refusals, issuance, revocation.

use std::fs;
use std::path::Path;

use medfed_certs::{CertError, Role, Validity};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::util::dev;

#[cfg(unix)]
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// The CRL number and revoked serials (raw DER bytes) of a PEM CRL.
fn crl_state(path: &Path) -> (u64, Vec<Vec<u8>>) {
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_file(path).unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    let number = crl.crl_number().unwrap().to_u64_digits();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    (number.first().copied().unwrap_or(0), serials)
}

#[test]
fn init_writes_a_private_ca_key_and_refuses_a_second_init() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    medfed_certs::init_ca(&ca, "test consortium", Validity::days_from_now(30)).unwrap();
    let key = ca.join("ca.key");
    let cert = ca.join("ca.pem");
    let crl = ca.join("crl.pem");
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let before: Vec<Vec<u8>> = [&key, &cert, &crl].map(|p| fs::read(p).unwrap()).into();

    let der = cert_der(&cert);
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    assert!(parsed.is_ca());
    assert_eq!(
        medfed_certs::subject_common_name(&der).unwrap(),
        "test consortium"
    );
    assert_eq!(crl_state(&crl), (1, vec![]));

    let err = medfed_certs::init_ca(&ca, "other", Validity::days_from_now(30)).unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { .. }), "{err}");
    let after: Vec<Vec<u8>> = [&key, &cert, &crl].map(|p| fs::read(p).unwrap()).into();
    assert_eq!(before, after);
    assert_eq!(fs::read_dir(&ca).unwrap().count(), 3);

    // A lone certificate is enough to refuse: the key must never be silently replaced.
    fs::remove_file(&key).unwrap();
    let err = medfed_certs::init_ca(&ca, "other", Validity::days_from_now(30)).unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { path } if path == cert));
    assert!(!key.exists());
}

#[test]
fn request_and_sign_make_a_node_certificate_issued_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, node) = (dir.path().join("ca"), dir.path().join("node"));
    medfed_certs::init_ca(&ca, "test consortium", Validity::days_from_now(30)).unwrap();

    let csr = medfed_certs::make_request(&node, "st-marys").unwrap();
    assert_eq!(csr, node.join("st-marys.csr.pem"));
    let key = node.join("st-marys.key");
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let key_bytes = fs::read(&key).unwrap();
    let err = medfed_certs::make_request(&node, "st-marys").unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { path } if path == key));
    assert_eq!(fs::read(&key).unwrap(), key_bytes);

    let out = node.join("st-marys.pem");
    let validity = Validity::days_from_now(10);
    medfed_certs::sign_request(&ca, &csr, &out, Role::Node, validity, &[]).unwrap();
    let der = cert_der(&out);
    assert_eq!(medfed_certs::subject_common_name(&der).unwrap(), "st-marys");

    let ca_der = cert_der(&ca.join("ca.pem"));
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        validity.not_after.unix_timestamp()
    );

    let summary = medfed_certs::describe_certificate(&out).unwrap();
    assert_eq!(summary.common_name.as_deref(), Some("st-marys"));
    assert_eq!(summary.role, Some(Role::Node));
    assert_eq!(summary.issuer, "CN=test consortium");

    // The certificate is never overwritten.
    let err = medfed_certs::sign_request(&ca, &csr, &out, Role::Node, validity, &[]).unwrap_err();
    assert!(matches!(err, CertError::AlreadyExists { .. }));
    assert_eq!(cert_der(&out), der);
}

#[test]
fn serials_are_unique() {
    let (_dir, consortium) = dev(&["a", "b", "c"]);
    let mut serials: Vec<String> = std::iter::once(&consortium.coordinator)
        .chain(&consortium.nodes)
        .map(|p| medfed_certs::describe_certificate(&p.cert).unwrap().serial)
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 4);
}

#[test]
fn coordinator_certificates_carry_server_auth_and_the_sans_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    medfed_certs::init_ca(&ca, "test consortium", Validity::days_from_now(30)).unwrap();
    let csr = medfed_certs::make_request(dir.path(), "coord").unwrap();
    let out = dir.path().join("coord.pem");
    let sans = ["coord.example.org".to_owned(), "10.1.2.3".to_owned()];
    let validity = Validity::days_from_now(10);

    let err = medfed_certs::sign_request(&ca, &csr, &out, Role::Node, validity, &sans).unwrap_err();
    assert!(matches!(err, CertError::SanForNode));
    let bad = ["not a name".to_owned()];
    let err =
        medfed_certs::sign_request(&ca, &csr, &out, Role::Coordinator, validity, &bad).unwrap_err();
    assert!(matches!(err, CertError::InvalidSan { .. }));
    assert!(!out.exists());

    medfed_certs::sign_request(&ca, &csr, &out, Role::Coordinator, validity, &sans).unwrap();
    let der = cert_der(&out);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(names.contains(&GeneralName::DNSName("coord.example.org")));
    assert!(names.contains(&GeneralName::IPAddress(&[10, 1, 2, 3])));
    assert_eq!(names.len(), 2);
}

#[test]
fn dev_coordinator_defaults_to_localhost_sans() {
    let (_dir, consortium) = dev(&["a"]);
    let der = cert_der(&consortium.coordinator.cert);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(names.contains(&GeneralName::DNSName("localhost")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    assert_eq!(
        medfed_certs::subject_common_name(&der).unwrap(),
        "coordinator"
    );
}

#[test]
fn empty_validity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let empty = Validity {
        not_before: now,
        not_after: now,
    };
    let err = medfed_certs::init_ca(dir.path(), "x", empty).unwrap_err();
    assert!(matches!(err, CertError::InvalidValidity { .. }));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn revoke_adds_the_serial_and_bumps_the_crl_number() {
    let (dir, consortium) = dev(&["a", "b"]);
    let a = &consortium.node("a").unwrap().cert;
    let b = &consortium.node("b").unwrap().cert;
    let serial = |p: &Path| {
        let der = cert_der(p);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.raw_serial().to_vec()
    };
    assert_eq!(crl_state(&consortium.crl), (1, vec![]));

    medfed_certs::revoke(dir.path(), a).unwrap();
    assert_eq!(crl_state(&consortium.crl), (2, vec![serial(a)]));
    let err = medfed_certs::revoke(dir.path(), a).unwrap_err();
    assert!(matches!(err, CertError::AlreadyRevoked { .. }), "{err}");
    assert_eq!(crl_state(&consortium.crl).0, 2);

    medfed_certs::revoke(dir.path(), b).unwrap();
    assert_eq!(crl_state(&consortium.crl), (3, vec![serial(a), serial(b)]));
    // Only crl.pem changed; no temporary files are left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 10);

    let err = medfed_certs::revoke(dir.path(), &consortium.ca_cert).unwrap_err();
    assert!(matches!(err, CertError::RevokeCa { .. }));
}

#[test]
fn reissuing_the_crl_keeps_its_revocations_and_moves_its_next_update() {
    let (dir, consortium) = dev(&["a"]);
    let a = &consortium.node("a").unwrap().cert;
    medfed_certs::revoke(dir.path(), a).unwrap();
    let before = crl_state(&consortium.crl);
    let next_update = |path: &Path| {
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_file(path).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        crl.next_update().unwrap().timestamp()
    };
    let due = next_update(&consortium.crl);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    medfed_certs::reissue_crl(dir.path()).unwrap();
    let after = crl_state(&consortium.crl);
    assert_eq!(after, (before.0 + 1, before.1));
    assert!(next_update(&consortium.crl) > due);
}

#[test]
fn revoke_refuses_certificates_from_another_ca() {
    let (dir, _ours) = dev(&["a"]);
    let (_other_dir, theirs) = dev(&["a"]);
    let crl_before = fs::read(dir.path().join("crl.pem")).unwrap();
    let err = medfed_certs::revoke(dir.path(), &theirs.node("a").unwrap().cert).unwrap_err();
    assert!(
        matches!(err, CertError::NotIssuedByConsortium { .. }),
        "{err}"
    );
    assert_eq!(fs::read(dir.path().join("crl.pem")).unwrap(), crl_before);
}

#[test]
fn a_ca_key_from_another_ca_is_detected() {
    let (dir, ours) = dev(&["a"]);
    let (_other_dir, theirs) = dev(&["a"]);
    fs::remove_file(&ours.ca_key).unwrap();
    fs::copy(&theirs.ca_key, &ours.ca_key).unwrap();
    let err = medfed_certs::revoke(dir.path(), &ours.node("a").unwrap().cert).unwrap_err();
    assert!(matches!(err, CertError::CaKeyMismatch { .. }), "{err}");
}

#[test]
fn bad_input_files_are_errors_not_panics() {
    let (dir, consortium) = dev(&["a"]);
    let junk = dir.path().join("junk.pem");
    fs::write(
        &junk,
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let out = dir.path().join("x.pem");
    let v = Validity::days_from_now(1);
    let err = medfed_certs::sign_request(dir.path(), &junk, &out, Role::Node, v, &[]).unwrap_err();
    assert!(matches!(err, CertError::InvalidCsr { .. }), "{err}");
    let err = medfed_certs::revoke(dir.path(), &junk).unwrap_err();
    assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
    assert!(medfed_certs::describe_certificate(&junk).is_err());
    let missing = dir.path().join("missing.pem");
    let err = medfed_certs::revoke(dir.path(), &missing).unwrap_err();
    assert!(matches!(err, CertError::ReadFile { path, .. } if path == missing));

    // A corrupted CRL stops revocation instead of being replaced by a fresh, empty one.
    fs::write(&consortium.crl, b"garbage").unwrap();
    let err = medfed_certs::revoke(dir.path(), &consortium.node("a").unwrap().cert).unwrap_err();
    assert!(matches!(err, CertError::NoCrl { .. }), "{err}");
    assert_eq!(fs::read(&consortium.crl).unwrap(), b"garbage");

    // A CA certificate file that holds a key instead.
    fs::copy(&consortium.ca_key, &consortium.ca_cert).unwrap();
    let err = medfed_certs::sign_request(dir.path(), &junk, &out, Role::Node, v, &[]).unwrap_err();
    assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
}
