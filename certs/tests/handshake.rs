//! In-memory mutual-TLS handshakes with `server_config` and `client_config`: who gets in.

use medfed_certs::{CertError, Role, TlsFiles, Validity};
use rustls::{AlertDescription, CertificateError, CipherSuite, Error, ProtocolVersion};

use crate::util::{ALPN, connect, days, dev, enrol, handshake};

/// The server refused the client's certificate with `expected`, and told the client so.
fn assert_client_refused(
    outcome: &crate::util::Outcome,
    expected: impl Fn(&CertificateError) -> bool,
) {
    match &outcome.server {
        Some(Error::InvalidCertificate(e)) if expected(e) => {}
        other => panic!(
            "unexpected server outcome {other:?}, client {:?}",
            outcome.client
        ),
    }
    assert!(
        matches!(outcome.client, Some(Error::AlertReceived(_))),
        "client saw {:?}",
        outcome.client
    );
}

#[test]
fn a_valid_node_is_accepted_and_named_by_its_certificate() {
    let (_dir, consortium) = dev(&["hospital-1", "hospital-2"]);
    let server = consortium.coordinator_tls();
    for name in ["hospital-1", "hospital-2"] {
        let outcome = connect(&consortium.node_tls(name).unwrap(), &server);
        assert!(
            outcome.succeeded(),
            "client {:?} server {:?}",
            outcome.client,
            outcome.server
        );
        assert_eq!(outcome.peer_name(), name);
        assert_eq!(outcome.server_conn.alpn_protocol(), Some(ALPN));
        assert_eq!(outcome.client_conn.alpn_protocol(), Some(ALPN));
        assert_eq!(
            outcome.server_conn.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
    }
}

#[test]
fn configs_offer_the_suite_quic_needs() {
    let (_dir, consortium) = dev(&["a"]);
    let client = medfed_certs::client_config(&consortium.node_tls("a").unwrap(), &[ALPN]).unwrap();
    let server = medfed_certs::server_config(&consortium.coordinator_tls(), &[ALPN]).unwrap();
    for provider in [client.crypto_provider(), server.crypto_provider()] {
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|s| s.suite() == CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
    // TLS 1.2 is not even compiled in (rustls without its `tls12` feature); the handshake test
    // above checks that 1.3 is what gets negotiated.
}

#[test]
fn a_node_certificate_from_a_foreign_ca_is_refused() {
    let (_dir, ours) = dev(&["hospital-1"]);
    // A foreign CA with another name, and one that copies our CA's name (an impersonation
    // attempt): webpki finds no issuer for the first and a bad signature for the second.
    for (ca_name, expected) in [
        ("other consortium", CertificateError::UnknownIssuer),
        (medfed_certs::DEV_CA_NAME, CertificateError::BadSignature),
    ] {
        let foreign = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(30);
        medfed_certs::init_ca(foreign.path(), ca_name, validity).unwrap();
        let theirs = enrol(
            foreign.path(),
            foreign.path(),
            "hospital-1",
            Role::Node,
            validity,
        );
        let intruder = TlsFiles {
            // It trusts our coordinator, so the handshake reaches client authentication.
            ca_cert: ours.ca_cert.clone(),
            crl: Some(ours.crl.clone()),
            ..theirs
        };
        let outcome = connect(&intruder, &ours.coordinator_tls());
        assert_client_refused(&outcome, |e| *e == expected);
    }
}

#[test]
fn a_node_refuses_a_coordinator_from_a_foreign_ca() {
    let (_dir, ours) = dev(&["hospital-1"]);
    let foreign = tempfile::tempdir().unwrap();
    let validity = Validity::days_from_now(30);
    medfed_certs::init_ca(foreign.path(), "other consortium", validity).unwrap();
    let theirs = enrol(
        foreign.path(),
        foreign.path(),
        "coordinator",
        Role::Coordinator,
        validity,
    );
    let outcome = connect(&ours.node_tls("hospital-1").unwrap(), &theirs);
    assert!(
        matches!(
            outcome.client,
            Some(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ),
        "{:?}",
        outcome.client
    );
    assert!(!outcome.succeeded());
}

#[test]
fn an_expired_node_certificate_is_refused() {
    let (dir, consortium) = dev(&["hospital-1"]);
    let node_dir = tempfile::tempdir().unwrap();
    let expired = enrol(
        dir.path(),
        node_dir.path(),
        "old",
        Role::Node,
        days(-30, -1),
    );
    let outcome = connect(&expired, &consortium.coordinator_tls());
    assert_client_refused(&outcome, |e| {
        matches!(
            e,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    });
}

#[test]
fn a_not_yet_valid_node_certificate_is_refused() {
    let (dir, consortium) = dev(&["hospital-1"]);
    let node_dir = tempfile::tempdir().unwrap();
    let early = enrol(
        dir.path(),
        node_dir.path(),
        "early",
        Role::Node,
        days(1, 30),
    );
    let outcome = connect(&early, &consortium.coordinator_tls());
    assert_client_refused(&outcome, |e| {
        matches!(
            e,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        )
    });
}

#[test]
fn a_revoked_node_is_refused_while_the_others_are_still_accepted() {
    let (dir, consortium) = dev(&["hospital-1", "hospital-2"]);
    let one = consortium.node_tls("hospital-1").unwrap();
    let two = consortium.node_tls("hospital-2").unwrap();
    assert!(connect(&one, &consortium.coordinator_tls()).succeeded());

    medfed_certs::revoke(dir.path(), &one.cert).unwrap();
    // The server reads the CRL when its config is built.
    let server = consortium.coordinator_tls();
    let outcome = connect(&one, &server);
    assert_client_refused(&outcome, |e| matches!(e, CertificateError::Revoked));
    let outcome = connect(&two, &server);
    assert!(
        outcome.succeeded(),
        "{:?} {:?}",
        outcome.client,
        outcome.server
    );
    assert_eq!(outcome.peer_name(), "hospital-2");
}

#[test]
fn a_server_config_in_use_picks_up_a_revocation_without_being_rebuilt() {
    let (dir, consortium) = dev(&["hospital-1", "hospital-2"]);
    let one = consortium.node_tls("hospital-1").unwrap();
    let two = consortium.node_tls("hospital-2").unwrap();
    // One server configuration for the whole test, as a running coordinator has.
    let server = medfed_certs::server_config(&consortium.coordinator_tls(), &[ALPN]).unwrap();
    // The nodes do not read the CRL here: the test is about the server's.
    let client = |files: &TlsFiles| {
        let files = TlsFiles {
            crl: None,
            ..files.clone()
        };
        medfed_certs::client_config(&files, &[ALPN]).unwrap()
    };
    assert!(handshake(client(&one), server.clone()).succeeded());

    medfed_certs::revoke(dir.path(), &one.cert).unwrap();
    let outcome = handshake(client(&one), server.clone());
    assert_client_refused(&outcome, |e| matches!(e, CertificateError::Revoked));
    assert!(handshake(client(&two), server.clone()).succeeded());

    // A CRL file that cannot be used leaves the one in force: hospital-1 stays out.
    std::fs::write(&consortium.crl, b"not a CRL").unwrap();
    let outcome = handshake(client(&one), server.clone());
    assert_client_refused(&outcome, |e| matches!(e, CertificateError::Revoked));
    assert!(handshake(client(&two), server).succeeded());
}

#[test]
fn a_revoked_coordinator_is_refused_by_the_nodes() {
    let (dir, consortium) = dev(&["hospital-1"]);
    medfed_certs::revoke(dir.path(), &consortium.coordinator.cert).unwrap();
    let outcome = connect(
        &consortium.node_tls("hospital-1").unwrap(),
        &consortium.coordinator_tls(),
    );
    assert!(
        matches!(
            outcome.client,
            Some(Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{:?}",
        outcome.client
    );
}

#[test]
fn roles_cannot_stand_in_for_each_other() {
    let (_dir, consortium) = dev(&["hospital-1"]);
    let node = consortium.node_tls("hospital-1").unwrap();
    let coordinator = consortium.coordinator_tls();

    // The coordinator's certificate (serverAuth only) cannot authenticate a client.
    let outcome = connect(&coordinator, &coordinator);
    assert!(
        matches!(outcome.server, Some(Error::InvalidCertificate(_))),
        "{:?}",
        outcome.server
    );
    // A node's certificate (clientAuth only, no SANs) cannot act as the coordinator.
    let outcome = connect(&node, &node);
    assert!(
        matches!(outcome.client, Some(Error::InvalidCertificate(_))),
        "{:?}",
        outcome.client
    );
}

#[test]
fn a_client_with_another_alpn_gets_no_application_protocol() {
    let (_dir, consortium) = dev(&["hospital-1"]);
    let client =
        medfed_certs::client_config(&consortium.node_tls("hospital-1").unwrap(), &[b"medfed/0"])
            .unwrap();
    let server = medfed_certs::server_config(&consortium.coordinator_tls(), &[ALPN]).unwrap();
    let outcome = handshake(client, server);
    assert!(
        matches!(outcome.server, Some(Error::NoApplicationProtocol)),
        "{:?}",
        outcome.server
    );
    assert!(
        matches!(
            outcome.client,
            Some(Error::AlertReceived(
                AlertDescription::NoApplicationProtocol
            ))
        ),
        "{:?}",
        outcome.client
    );
}

#[test]
fn a_named_crl_must_exist() {
    let (dir, consortium) = dev(&["hospital-1"]);
    std::fs::remove_file(&consortium.crl).unwrap();
    let err = medfed_certs::server_config(&consortium.coordinator_tls(), &[ALPN]).unwrap_err();
    assert!(matches!(err, CertError::ReadFile { path, .. } if path == dir.path().join("crl.pem")));
    let err = medfed_certs::client_config(&consortium.node_tls("hospital-1").unwrap(), &[ALPN])
        .unwrap_err();
    assert!(matches!(err, CertError::ReadFile { .. }));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let (_dir, consortium) = dev(&["hospital-1", "hospital-2"]);
    let mixed = TlsFiles {
        key: consortium.node("hospital-2").unwrap().key.clone(),
        ..consortium.node_tls("hospital-1").unwrap()
    };
    let err = medfed_certs::client_config(&mixed, &[ALPN]).unwrap_err();
    assert!(matches!(err, CertError::Identity { .. }), "{err}");
}

#[test]
fn tls_files_in_dir_match_the_dev_layout() {
    let (dir, consortium) = dev(&["hospital-1"]);
    assert_eq!(
        TlsFiles::in_dir(dir.path(), "hospital-1"),
        consortium.node_tls("hospital-1").unwrap()
    );
    assert_eq!(
        TlsFiles::in_dir(dir.path(), "coordinator"),
        consortium.coordinator_tls()
    );
    assert!(consortium.node_tls("nobody").is_none());
}
