//! The consortium CRL as the verifiers use it: read from its file, checked (signed by the
//! consortium CA, not past its `nextUpdate` unless allowed), and recognised when the file
//! changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::{CertError, files};

/// Which CRL to honour, and whether one past its `nextUpdate` may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CrlPolicy {
    /// The CRL file, PEM.
    pub(crate) path: PathBuf,
    /// Accept a CRL past its `nextUpdate` (`allow_expired_crl` in `[tls]`).
    pub(crate) allow_expired: bool,
}

/// A CRL file that passed [`load`].
#[derive(Debug)]
pub(crate) struct LoadedCrl {
    /// Its CRLs, for rustls.
    pub(crate) ders: Vec<CertificateRevocationListDer<'static>>,
    /// The highest CRL number in it (big-endian, no leading zeros; empty if none has one).
    pub(crate) number: Vec<u8>,
    /// Its bytes' SHA-256, to tell a rewrite with the same content from a new CRL.
    pub(crate) digest: [u8; 32],
}

impl LoadedCrl {
    /// Whether this CRL is older than `other` (a lower CRL number): putting it in force would
    /// bring revoked certificates back.
    pub(crate) fn is_older_than(&self, other: &Self) -> bool {
        (self.number.len(), &self.number) < (other.number.len(), &other.number)
    }

    /// The CRL number as decimal text (hex when it does not fit 128 bits), for logs.
    pub(crate) fn number_text(&self) -> String {
        if self.number.len() <= 16 {
            let n = self
                .number
                .iter()
                .fold(0u128, |n, b| (n << 8) | u128::from(*b));
            n.to_string()
        } else {
            crate::crl::hex(&self.number)
        }
    }
}

/// Reads the CRL file of `policy` and checks every CRL in it: signed by one of the CA
/// certificates `ca`, and not past its `nextUpdate` at `now` unless the policy allows it.
pub(crate) fn load(
    policy: &CrlPolicy,
    ca: &[CertificateDer<'_>],
    now: OffsetDateTime,
) -> Result<LoadedCrl, CertError> {
    let path = &policy.path;
    let bytes = files::read(path)?;
    let ders = files::parse_crls(path, &bytes)?;
    let invalid = |reason: String| CertError::InvalidCrl {
        path: path.clone(),
        reason,
    };
    let cas = ca
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, cert)| cert))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("a CA certificate does not parse: {e}")))?;
    let mut number = Vec::new();
    for der in &ders {
        let (_, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| invalid(e.to_string()))?;
        let signed_by_ca = cas.iter().any(|ca| {
            crl.issuer().as_raw() == ca.subject().as_raw()
                && crl.verify_signature(ca.public_key()).is_ok()
        });
        if !signed_by_ca {
            return Err(invalid("not signed by the consortium CA".to_owned()));
        }
        if let Some(next_update) = crl.next_update().map(|t| t.to_datetime())
            && next_update < now
            && !policy.allow_expired
        {
            return Err(CertError::ExpiredCrl {
                path: path.clone(),
                next_update,
            });
        }
        if let Some(n) = crl.crl_number() {
            let n = n.to_bytes_be();
            let n = n.iter().position(|b| *b != 0).map_or(&[][..], |i| &n[i..]);
            if (n.len(), n) > (number.len(), &number[..]) {
                number = n.to_vec();
            }
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(digest.as_ref());
    Ok(LoadedCrl {
        ders,
        number,
        digest: sha,
    })
}

/// What a file's metadata says about its identity and content: a rewrite (`medfed-certs` writes
/// a new file and renames it into place) changes at least one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// Device and inode, where there are such things.
    node: Option<(u64, u64)>,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let node = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let node = None;
        Ok(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            node,
        })
    }
}
