//! The consortium's member list: each hospital's name and the SHA-256 fingerprint of its
//! certificate's public key.
//!
//! Every hospital holds the same file, as it holds the schema. A node refuses any sum that
//! includes someone not on it, and any certificate whose key is not the one pinned for its name:
//! an operator who also runs the CA can mint a certificate for a made-up hospital, or a second
//! certificate under a real hospital's name, but cannot make either match this file.
//!
//! ```toml
//! [[member]]
//! name = "hospital-a"
//! key_sha256 = "3f1c…"   # SHA-256 of the certificate's SubjectPublicKeyInfo (DER), hex
//! ```
//! `medfed-certs members` writes the file from the members' certificates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ring::digest;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::subject_common_name;

/// The pinned members of a consortium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberList {
    /// Fingerprint of each member's key, by name.
    members: BTreeMap<String, [u8; 32]>,
}

/// Why a member list cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberListError {
    /// The file cannot be read.
    #[error("cannot read the member list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a member list.
    #[error("member list {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        detail: String,
    },
}

/// Why a participant is not a pinned member.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The name is not on the list.
    #[error("{name} is not on the consortium's member list")]
    Unknown {
        /// The name.
        name: String,
    },
    /// The certificate's key is not the one pinned for the name.
    #[error("the certificate presented for {name} has key {found}, the member list pins {pinned}")]
    WrongKey {
        /// The name.
        name: String,
        /// Fingerprint found, hex.
        found: String,
        /// Fingerprint pinned, hex.
        pinned: String,
    },
    /// The certificate names someone else, or cannot be read.
    #[error("the certificate presented for {name} is not {name}'s: {detail}")]
    WrongCertificate {
        /// The name it was presented for.
        name: String,
        /// What is wrong.
        detail: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    #[serde(default)]
    member: Vec<RawMember>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: String,
    key_sha256: String,
}

impl MemberList {
    /// Reads a member list file.
    pub fn load(path: &Path) -> Result<Self, MemberListError> {
        let text = std::fs::read_to_string(path).map_err(|source| MemberListError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|detail| MemberListError::Invalid {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses a member list; `Err` says what is wrong, naming the entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawList = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut members = BTreeMap::new();
        for (position, member) in raw.member.iter().enumerate() {
            let entry = position + 1;
            if member.name.trim().is_empty() {
                return Err(format!("member {entry} has an empty name"));
            }
            let mut fingerprint = [0u8; 32];
            hex::decode_to_slice(member.key_sha256.trim(), &mut fingerprint).map_err(|_| {
                format!(
                    "member {entry} ({}): key_sha256 must be 64 hexadecimal digits",
                    member.name
                )
            })?;
            if members.insert(member.name.clone(), fingerprint).is_some() {
                return Err(format!("member {entry} ({}) is listed twice", member.name));
            }
        }
        if members.is_empty() {
            return Err("the list has no [[member]] entries".into());
        }
        Ok(Self { members })
    }

    /// The list of the holders of `certificates`, each under its subject common name.
    pub fn from_certificates(
        certificates: &[CertificateDer<'_>],
    ) -> Result<Self, crate::CertError> {
        let mut members = BTreeMap::new();
        for certificate in certificates {
            let name = subject_common_name(certificate)?;
            members.insert(name, key_fingerprint(certificate)?);
        }
        Ok(Self { members })
    }

    /// Writes the list of the holders of the certificate files `certificates` (PEM) to `out`,
    /// which must not exist yet.
    pub fn write_from_files(
        certificates: &[PathBuf],
        out: &Path,
    ) -> Result<Self, crate::CertError> {
        let ders = certificates
            .iter()
            .map(|path| crate::files::load_cert(path))
            .collect::<Result<Vec<_>, _>>()?;
        let list = Self::from_certificates(&ders)?;
        crate::files::write_new(out, list.to_toml().as_bytes(), crate::files::Access::Public)?;
        Ok(list)
    }

    /// The file text of this list (what [`MemberList::parse`] reads back).
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# The consortium's members: each hospital's name and the SHA-256 of its\n\
             # certificate's public key (SubjectPublicKeyInfo, DER). Every hospital holds this file.\n",
        );
        for (name, fingerprint) in &self.members {
            let _ = write!(
                out,
                "\n[[member]]\nname = {name:?}\nkey_sha256 = \"{}\"\n",
                hex::encode(fingerprint)
            );
        }
        out
    }

    /// SHA-256 of the list in a canonical form (sorted by name), so that two hospitals can
    /// compare their copies by one figure.
    pub fn digest(&self) -> [u8; 32] {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"medfed-members-v1");
        for (name, fingerprint) in &self.members {
            context.update(&(name.len() as u64).to_be_bytes());
            context.update(name.as_bytes());
            context.update(fingerprint);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    /// Whether `name` is a member.
    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// The members' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Checks that `certificate` is member `name`'s: its subject is `name` and its key is the
    /// one pinned for `name`.
    pub fn check(&self, name: &str, certificate: &[u8]) -> Result<(), MembershipError> {
        let pinned = self
            .members
            .get(name)
            .ok_or_else(|| MembershipError::Unknown { name: name.into() })?;
        let certificate = CertificateDer::from(certificate);
        let wrong = |detail: String| MembershipError::WrongCertificate {
            name: name.into(),
            detail,
        };
        let subject = subject_common_name(&certificate).map_err(|e| wrong(e.to_string()))?;
        if subject != name {
            return Err(wrong(format!("its subject is {subject}")));
        }
        let found = key_fingerprint(&certificate).map_err(|e| wrong(e.to_string()))?;
        if found != *pinned {
            return Err(MembershipError::WrongKey {
                name: name.into(),
                found: hex::encode(found),
                pinned: hex::encode(pinned),
            });
        }
        Ok(())
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER): what the member list pins. It stays
/// the same when a certificate is renewed over the same key.
pub fn key_fingerprint(certificate: &CertificateDer<'_>) -> Result<[u8; 32], crate::CertError> {
    let (_, x509) = X509Certificate::from_der(certificate).map_err(|e| {
        crate::CertError::MalformedCertificate {
            reason: e.to_string(),
        }
    })?;
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, x509.public_key().raw).as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::make_dev_consortium;

    fn der(path: &Path) -> CertificateDer<'static> {
        crate::files::load_cert(path).unwrap()
    }

    #[test]
    fn a_list_pins_each_members_key_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["hospital-a".to_string(), "hospital-b".to_string()];
        let dev = make_dev_consortium(dir.path(), &names).unwrap();
        let certs: Vec<_> = dev.nodes.iter().map(|p| der(&p.cert)).collect();
        let list = MemberList::from_certificates(&certs).unwrap();
        assert_eq!(
            list.names().collect::<Vec<_>>(),
            ["hospital-a", "hospital-b"]
        );
        let again = MemberList::parse(&list.to_toml()).unwrap();
        assert_eq!(again, list);
        assert_eq!(again.digest(), list.digest());
        assert_eq!(list.check("hospital-a", &certs[0]), Ok(()));
        // b's certificate under a's name, a stranger, the coordinator's certificate.
        assert!(matches!(
            list.check("hospital-a", &certs[1]),
            Err(MembershipError::WrongCertificate { .. })
        ));
        assert!(matches!(
            list.check("hospital-c", &certs[0]),
            Err(MembershipError::Unknown { .. })
        ));
        let coordinator = der(&dev.coordinator.cert);
        assert!(list.check("coordinator", &coordinator).is_err());
    }

    #[test]
    fn a_second_certificate_under_a_members_name_is_refused() {
        // The operator runs the CA: it can issue "hospital-a" again, over a key of its own.
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["hospital-a".to_string()];
        let real = make_dev_consortium(&dir.path().join("real"), &names).unwrap();
        let forged = make_dev_consortium(&dir.path().join("forged"), &names).unwrap();
        let list = MemberList::from_certificates(&[der(&real.nodes[0].cert)]).unwrap();
        let err = list
            .check("hospital-a", &der(&forged.nodes[0].cert))
            .unwrap_err();
        assert!(
            matches!(&err, MembershipError::WrongKey { name, .. } if name == "hospital-a"),
            "{err}"
        );
    }

    #[test]
    fn bad_lists_name_the_entry() {
        let key = "ab".repeat(32);
        for (text, needle) in [
            ("", "no [[member]]"),
            (
                "[[member]]\nname = \"a\"\nkey_sha256 = \"zz\"\n",
                "member 1 (a)",
            ),
            (
                &format!(
                    "[[member]]\nname = \"a\"\nkey_sha256 = \"{key}\"\n[[member]]\nname = \"a\"\nkey_sha256 = \"{key}\"\n"
                ),
                "member 2 (a) is listed twice",
            ),
            ("[[member]]\nname = \"a\"\n", "key_sha256"),
            (
                &format!("[[member]]\nname = \" \"\nkey_sha256 = \"{key}\"\n"),
                "empty name",
            ),
        ] {
            let err = MemberList::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.toml");
        std::fs::write(&path, "[[member]]\n").unwrap();
        let err = MemberList::load(&path).unwrap_err().to_string();
        assert!(err.contains("members.toml"), "{err}");
    }
}
