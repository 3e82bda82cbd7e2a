//! The verifier of client certificates: the coordinator's TLS server and a node's checks of its
//! secure-aggregation peers both use it.
//!
//! A rustls verifier is immutable, so this one holds rustls's `WebPkiClientVerifier` and builds
//! a new one when the CRL file changes: at each verification it compares the file's stamp
//! (modification time, size, inode) with the one it last read, and reloads it if they differ. A
//! new CRL that cannot be used (unreadable, not signed by the CA, past its `nextUpdate`, or
//! older than the one in force) leaves the previous one in force, and the error is logged once,
//! naming the file. Every certificate it refuses is logged with its subject and the reason.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::revocation::{self, CrlPolicy, FileStamp, LoadedCrl};
use crate::{CertError, files, subject_common_name};

/// Verifies client certificates against the consortium CA and the CRL in force (see the
/// module documentation).
#[derive(Debug)]
pub(crate) struct ConsortiumClientVerifier {
    /// The trust anchors.
    roots: Arc<RootCertStore>,
    /// The CA certificates themselves, to check who signed a new CRL.
    ca: Vec<CertificateDer<'static>>,
    /// The provider the inner verifiers use.
    provider: Arc<CryptoProvider>,
    /// The CRL to honour, if any.
    crl: Option<CrlPolicy>,
    /// The CA subjects the server hints to clients; they do not change with the CRL.
    root_hints: Vec<DistinguishedName>,
    /// Whose certificates these are, for the log: "node" or "secure-aggregation peer".
    whose: &'static str,
    /// The verifier in force, and what it was built from.
    current: Mutex<Current>,
    /// Told of every refused certificate, after it is logged.
    on_refused: Option<Hook>,
}

/// A [`RefusedCertificateHook`] in a struct that is `Debug`.
struct Hook(RefusedCertificateHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusedCertificateHook")
    }
}

/// Called with the subject a refused client certificate claims (unverified) and the reason;
/// the coordinator shows these to its operator.
pub type RefusedCertificateHook = Arc<dyn Fn(&str, &rustls::Error) + Send + Sync>;

/// The verifier in force.
#[derive(Debug)]
struct Current {
    /// Built from the CA and the CRL in force.
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CRL in force.
    crl: Option<LoadedCrl>,
    /// The CRL file's stamp when it was last examined (`None`: it could not be read).
    seen: Option<FileStamp>,
}

impl ConsortiumClientVerifier {
    /// A verifier trusting the CA certificate(s) in `ca_cert` and honouring `crl`, whose
    /// refusals are logged as certificates of `whose`. The CRL must load now: an unusable one
    /// is an error here, not at the first handshake.
    pub(crate) fn new(
        ca_cert: &Path,
        crl: Option<CrlPolicy>,
        whose: &'static str,
    ) -> Result<Self, CertError> {
        let roots = crate::tls::load_roots(ca_cert)?;
        let ca = files::load_certs(ca_cert)?;
        let provider = crate::tls::provider();
        let (seen, loaded) = match &crl {
            Some(policy) => {
                let seen = FileStamp::of(&policy.path).ok();
                (seen, Some(revocation::load(policy, &ca, now())?))
            }
            None => (None, None),
        };
        let allow_expired = crl.as_ref().is_some_and(|p| p.allow_expired);
        let verifier = build(&roots, &provider, loaded.as_ref(), allow_expired)?;
        Ok(Self {
            root_hints: verifier.root_hint_subjects().to_vec(),
            roots,
            ca,
            provider,
            crl,
            whose,
            current: Mutex::new(Current {
                verifier,
                crl: loaded,
                seen,
            }),
            on_refused: None,
        })
    }

    /// The same verifier, telling `hook` of every certificate it refuses.
    pub(crate) fn with_hook(mut self, hook: Option<RefusedCertificateHook>) -> Self {
        self.on_refused = hook.map(Hook);
        self
    }

    /// The verifier in force, after picking up a changed CRL file.
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(policy) = &self.crl {
            self.refresh(policy, &mut current);
        }
        current.verifier.clone()
    }

    /// Reloads the CRL if its file changed since it was last examined.
    fn refresh(&self, policy: &CrlPolicy, current: &mut Current) {
        let path = policy.path.display();
        let stamp = match FileStamp::of(&policy.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                if current.seen.take().is_some() {
                    error!(crl = %path, error = %e, "cannot read the CRL file; the CRL loaded before stays in force");
                }
                return;
            }
        };
        if current.seen.as_ref() == Some(&stamp) {
            return;
        }
        current.seen = Some(stamp);
        let loaded = match revocation::load(policy, &self.ca, now()) {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(crl = %path, error = %chain(&e), "the changed CRL cannot be used; the CRL loaded before stays in force");
                return;
            }
        };
        if let Some(old) = &current.crl {
            if loaded.digest == old.digest {
                return;
            }
            if loaded.is_older_than(old) {
                error!(
                    crl = %path,
                    number = %loaded.number_text(),
                    in_force = %old.number_text(),
                    "the changed CRL is older than the one in force (a lower CRL number); the CRL in force stays"
                );
                return;
            }
        }
        match build(
            &self.roots,
            &self.provider,
            Some(&loaded),
            policy.allow_expired,
        ) {
            Ok(verifier) => {
                info!(crl = %path, number = %loaded.number_text(), "CRL reloaded");
                current.verifier = verifier;
                current.crl = Some(loaded);
            }
            Err(e) => {
                error!(crl = %path, error = %chain(&e), "the changed CRL cannot be used; the CRL loaded before stays in force");
            }
        }
    }

    /// The verifier in force, without looking at the CRL file.
    fn in_force(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .verifier
            .clone()
    }

    /// Logs a refused certificate with its subject and the reason.
    fn refused(&self, cert: &CertificateDer<'_>, reason: &rustls::Error) {
        let subject = claimed_subject(cert);
        warn!(
            %subject,
            %reason,
            whose = self.whose,
            "certificate refused"
        );
        if let Some(Hook(hook)) = &self.on_refused {
            hook(&subject, reason);
        }
    }

    /// Passes `result` on, logging it if it is a refusal.
    fn logged<T>(
        &self,
        cert: &CertificateDer<'_>,
        result: Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        if let Err(e) = &result {
            self.refused(cert, e);
        }
        result
    }
}

impl ClientCertVerifier for ConsortiumClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .verifier()
            .verify_client_cert(end_entity, intermediates, now);
        self.logged(end_entity, result)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let result = self.in_force().verify_tls12_signature(message, cert, dss);
        self.logged(cert, result)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let result = self.in_force().verify_tls13_signature(message, cert, dss);
        self.logged(cert, result)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.in_force().supported_verify_schemes()
    }
}

/// The subject common name a certificate claims, escaped for a log line, whether or not the
/// certificate is trusted.
pub(crate) fn claimed_subject(cert: &CertificateDer<'_>) -> String {
    match subject_common_name(cert) {
        Ok(name) => name.escape_debug().to_string(),
        Err(e) => format!("(none: {e})"),
    }
}

/// A rustls verifier for the CA `roots` and `crl`, refusing a CRL past its `nextUpdate` at
/// verification time unless `allow_expired`.
fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crl: Option<&LoadedCrl>,
    allow_expired: bool,
) -> Result<Arc<dyn ClientCertVerifier>, CertError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if let Some(crl) = crl {
        builder = builder
            .with_crls(crl.ders.iter().cloned())
            .only_check_end_entity_revocation();
        if !allow_expired {
            builder = builder.enforce_revocation_expiration();
        }
    }
    builder
        .build()
        .map_err(|source| CertError::Verifier { source })
}

/// The time now, for the CRL checks.
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// An error with its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration as StdDuration;

    use rustls::CertificateError;
    use time::Duration;

    use super::*;
    use crate::ca::Ca;
    use crate::files::Access;
    use crate::{DevConsortium, Role, TlsFiles, Validity, crl, make_dev_consortium};

    /// A dev consortium of two nodes in a fresh folder.
    fn consortium() -> (tempfile::TempDir, DevConsortium) {
        let dir = tempfile::tempdir().unwrap();
        let names = ["hospital-1".to_owned(), "hospital-2".to_owned()];
        let consortium = make_dev_consortium(dir.path(), &names).unwrap();
        (dir, consortium)
    }

    /// Replaces the consortium's CRL with an empty one numbered `number`, issued at
    /// `this_update` and due at `next_update`.
    fn write_crl(
        consortium: &DevConsortium,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) {
        let ca = Ca::load(&consortium.dir).unwrap();
        let pem = crl::sign_for(&ca.issuer, number, Vec::new(), this_update, next_update).unwrap();
        files::write_replace(&consortium.crl, pem.as_bytes(), Access::Public).unwrap();
    }

    fn policy(consortium: &DevConsortium, allow_expired: bool) -> Option<CrlPolicy> {
        Some(CrlPolicy {
            path: consortium.crl.clone(),
            allow_expired,
        })
    }

    fn verifier(consortium: &DevConsortium, allow_expired: bool) -> ConsortiumClientVerifier {
        ConsortiumClientVerifier::new(
            &consortium.ca_cert,
            policy(consortium, allow_expired),
            "node",
        )
        .unwrap()
    }

    fn cert(consortium: &DevConsortium, name: &str) -> CertificateDer<'static> {
        let party = consortium.node(name).unwrap_or(&consortium.coordinator);
        files::load_cert(&party.cert).unwrap()
    }

    fn at(time: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(StdDuration::from_secs(time.unix_timestamp() as u64))
    }

    /// Runs `f` with `tracing` output captured; returns its result and the log text.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (result, text)
    }

    #[test]
    fn an_expired_crl_is_refused_at_start_unless_allowed() {
        let (_dir, consortium) = consortium();
        let now = OffsetDateTime::now_utc();
        write_crl(
            &consortium,
            2,
            now - Duration::days(30),
            now - Duration::days(1),
        );
        let coordinator = consortium.coordinator_tls();
        let node = consortium.node_tls("hospital-1").unwrap();
        let expired = |err: CertError| {
            let message = err.to_string();
            assert!(
                matches!(&err, CertError::ExpiredCrl { path, .. } if *path == consortium.crl),
                "{err:?}"
            );
            assert!(
                message.contains("allow_expired_crl") && message.contains("medfed-certs crl"),
                "{message}"
            );
        };
        expired(crate::server_config(&coordinator, &[b"x"]).unwrap_err());
        expired(crate::client_config(&node, &[b"x"]).unwrap_err());
        expired(crate::ConsortiumVerifier::new(&node).err().unwrap());
        let allow = |files: TlsFiles| TlsFiles {
            allow_expired_crl: true,
            ..files
        };
        crate::server_config(&allow(coordinator), &[b"x"]).unwrap();
        crate::client_config(&allow(node.clone()), &[b"x"]).unwrap();
        crate::ConsortiumVerifier::new(&allow(node)).unwrap();
    }

    #[test]
    fn a_crl_that_expires_while_in_force_refuses_every_certificate_unless_allowed() {
        let (_dir, consortium) = consortium();
        let now = OffsetDateTime::now_utc();
        write_crl(
            &consortium,
            2,
            now - Duration::hours(1),
            now + Duration::hours(1),
        );
        let node = cert(&consortium, "hospital-1");
        let later = at(now + Duration::hours(2));
        let strict = verifier(&consortium, false);
        assert!(strict.verify_client_cert(&node, &[], at(now)).is_ok());
        let (result, log) = logged(|| strict.verify_client_cert(&node, &[], later));
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ExpiredRevocationListContext { .. }
                ))
            ),
            "{result:?}"
        );
        assert!(
            log.contains("certificate refused") && log.contains("subject=hospital-1"),
            "{log}"
        );
        let lenient = verifier(&consortium, true);
        assert!(lenient.verify_client_cert(&node, &[], later).is_ok());
    }

    #[test]
    fn a_changed_crl_is_picked_up_and_an_unusable_one_leaves_the_one_in_force() {
        let (dir, consortium) = consortium();
        let verifier = verifier(&consortium, false);
        let (one, two) = (
            cert(&consortium, "hospital-1"),
            cert(&consortium, "hospital-2"),
        );
        let now = || UnixTime::now();
        assert!(verifier.verify_client_cert(&one, &[], now()).is_ok());
        let first_crl = std::fs::read(&consortium.crl).unwrap();

        // Revoked on disk: refused at the next verification, without a new verifier.
        let node = consortium.node("hospital-1").unwrap();
        crate::revoke(&consortium.dir, &node.cert).unwrap();
        let (result, log) = logged(|| verifier.verify_client_cert(&one, &[], now()));
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{result:?}"
        );
        assert!(log.contains("CRL reloaded"), "{log}");
        assert!(
            log.contains("subject=hospital-1") && log.contains("Revoked"),
            "{log}"
        );
        assert!(verifier.verify_client_cert(&two, &[], now()).is_ok());

        // Garbage, a CRL from another CA, an older CRL of ours (which would un-revoke
        // hospital-1), and an expired one: each is logged, naming the file, and the CRL in
        // force stays.
        let foreign = make_dev_consortium(&dir.path().join("foreign"), &["x".into()]).unwrap();
        let past = OffsetDateTime::now_utc() - Duration::days(2);
        let ca = Ca::load(&consortium.dir).unwrap();
        let expired = crl::sign_for(&ca.issuer, 9, Vec::new(), past, past + Duration::days(1));
        let unusable: [(&str, Vec<u8>); 4] = [
            ("not valid PEM", b"-----BEGIN X509 CRL-----\n!!\n".to_vec()),
            (
                "not signed by the consortium CA",
                std::fs::read(&foreign.crl).unwrap(),
            ),
            ("older than the one in force", first_crl),
            ("expired", expired.unwrap().into_bytes()),
        ];
        for (what, bytes) in unusable {
            files::write_replace(&consortium.crl, &bytes, Access::Public).unwrap();
            let (result, log) = logged(|| verifier.verify_client_cert(&one, &[], now()));
            assert!(result.is_err(), "{what}: hospital-1 must stay revoked");
            assert!(
                log.contains(&consortium.crl.display().to_string())
                    && log.contains("stays")
                    && log.contains(what),
                "{what}: {log}"
            );
            // Logged once per change of the file, not at every handshake.
            let (_, log) = logged(|| verifier.verify_client_cert(&two, &[], now()));
            assert!(!log.contains("stays"), "{what}: {log}");
        }
        assert!(verifier.verify_client_cert(&two, &[], now()).is_ok());
    }

    #[test]
    fn refusals_are_logged_with_the_subject_and_the_reason() {
        let (dir, consortium) = consortium();
        let verifier = verifier(&consortium, false);
        // Another CA, same name: a bad signature.
        let foreign =
            make_dev_consortium(&dir.path().join("foreign"), &["intruder".into()]).unwrap();
        let intruder = files::load_cert(&foreign.node("intruder").unwrap().cert).unwrap();
        // The coordinator's certificate is for servers only.
        let coordinator = cert(&consortium, "coordinator");
        // Expired.
        let site = dir.path().join("site");
        let csr = crate::make_request(&site, "old-timer").unwrap();
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        };
        let old = site.join("old-timer.pem");
        crate::sign_request(&consortium.dir, &csr, &old, Role::Node, validity, &[]).unwrap();
        let old = files::load_cert(&old).unwrap();
        for (cert, subject, reason) in [
            (&intruder, "intruder", "BadSignature"),
            (&coordinator, "coordinator", "client authentication"),
            (&old, "old-timer", "expired"),
        ] {
            let (result, log) = logged(|| verifier.verify_client_cert(cert, &[], UnixTime::now()));
            assert!(result.is_err(), "{subject}");
            assert!(
                log.contains("WARN")
                    && log.contains("certificate refused")
                    && log.contains(&format!("subject={subject} "))
                    && log.contains(reason)
                    && log.contains("whose=\"node\""),
                "{subject}: {log}"
            );
        }
        // An accepted certificate logs nothing.
        let (result, log) = logged(|| {
            verifier.verify_client_cert(&cert(&consortium, "hospital-2"), &[], UnixTime::now())
        });
        assert!(result.is_ok() && log.is_empty(), "{log}");
    }
}
