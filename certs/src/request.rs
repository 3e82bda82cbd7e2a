//! The hospital's side of enrolment: a key pair that never leaves, and a signing request.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, CertificateSigningRequest, KeyPair};

use crate::CertError;
use crate::ca::{KeyKind, common_name_dn, new_key_pair_of};
use crate::files::{self, Access};
use crate::names::check_party_name;

/// Makes a node key pair (ECDSA P-256) and a certificate signing request with subject
/// `CN=node_name`: writes `out_dir/NODE.key` (mode 0600) and `out_dir/NODE.csr.pem`, and returns
/// the CSR's path.
///
/// `out_dir` is created if missing. Refuses with [`CertError::AlreadyExists`] if the key file
/// exists; an old CSR without its key is replaced. The name must be 1 to 64 ASCII letters, digits,
/// `.`, `_` or `-`, starting with a letter or digit.
pub fn make_request(out_dir: &Path, node_name: &str) -> Result<PathBuf, CertError> {
    make_request_with(out_dir, node_name, KeyKind::EcdsaP256)
}

/// As [`make_request`], with a key of `kind` (the coordinator uses [`KeyKind::Ed25519`], whose
/// key also signs the audit reports).
pub fn make_request_with(
    out_dir: &Path,
    node_name: &str,
    kind: KeyKind,
) -> Result<PathBuf, CertError> {
    check_party_name(node_name)?;
    let key_path = out_dir.join(format!("{node_name}.key"));
    let csr_path = out_dir.join(format!("{node_name}.csr.pem"));
    files::refuse_existing([key_path.as_path()])?;

    let key = new_key_pair_of(kind)?;
    let csr_pem = csr_for(&key, node_name)?
        .pem()
        .map_err(|source| CertError::Generate {
            what: "encode the certificate signing request",
            source,
        })?;
    files::ensure_dir(out_dir)?;
    files::write_new(&key_path, key.serialize_pem().as_bytes(), Access::Private)?;
    if let Err(e) = files::write_replace(&csr_path, csr_pem.as_bytes(), Access::Public) {
        // A key without its request is useless and would block a retry.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(csr_path)
}

/// A certificate signing request for `key` with subject `CN=name`.
pub(crate) fn csr_for(key: &KeyPair, name: &str) -> Result<CertificateSigningRequest, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(name);
    params
        .serialize_request(key)
        .map_err(|source| CertError::Generate {
            what: "make the certificate signing request",
            source,
        })
}
