//! A whole consortium in one directory, in one step, for local runs and tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::ca::{self, Ca, Csr, Role, Validity};
use crate::files::{self, Access, Rollback};
use crate::names::{RESERVED_NAMES, check_party_name};
use crate::request::csr_for;
use crate::{CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, CertError, MEMBERS_FILE, MemberList, TlsFiles};

/// The CA name of a development consortium.
pub const DEV_CA_NAME: &str = "medfed dev consortium";
/// The coordinator's name (certificate common name and file stem) in a development consortium.
pub const COORDINATOR_NAME: &str = "coordinator";
/// Days the development CA is valid.
pub const DEV_CA_DAYS: u16 = 3650;
/// Days the development coordinator and node certificates are valid.
pub const DEV_CERT_DAYS: u16 = 365;

/// One party's certificate and key in a development consortium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// The subject common name, also the file stem.
    pub name: String,
    /// `NAME.pem`.
    pub cert: PathBuf,
    /// `NAME.key` (mode 0600).
    pub key: PathBuf,
}

/// The paths of everything [`make_dev_consortium`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevConsortium {
    /// The directory holding it all.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key` (mode 0600).
    pub ca_key: PathBuf,
    /// `crl.pem`, empty until something is revoked.
    pub crl: PathBuf,
    /// The coordinator (`coordinator.pem`, `coordinator.key`).
    pub coordinator: Party,
    /// The nodes, in the order their names were given.
    pub nodes: Vec<Party>,
    /// `members.toml`: the nodes' names and key fingerprints, which every node pins
    /// ([`crate::MemberList`]).
    pub members: PathBuf,
}

impl DevConsortium {
    /// The coordinator's TLS files, CRL included.
    pub fn coordinator_tls(&self) -> TlsFiles {
        self.tls_for(&self.coordinator)
    }

    /// Node `name`'s TLS files, CRL included; `None` if there is no such node.
    pub fn node_tls(&self, name: &str) -> Option<TlsFiles> {
        self.node(name).map(|party| self.tls_for(party))
    }

    /// Node `name`; `None` if there is no such node.
    pub fn node(&self, name: &str) -> Option<&Party> {
        self.nodes.iter().find(|party| party.name == name)
    }

    fn tls_for(&self, party: &Party) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: party.cert.clone(),
            key: party.key.clone(),
            crl: Some(self.crl.clone()),
            allow_expired_crl: false,
        }
    }
}

/// The node names for `dev --nodes N [--names a,b,c]`: `names` if given (their count must be
/// `nodes`), else `hospital-1` … `hospital-N`.
pub fn dev_node_names(nodes: usize, names: Option<&[String]>) -> Result<Vec<String>, CertError> {
    match names {
        Some(names) if names.len() != nodes => Err(CertError::NodeCountMismatch {
            nodes,
            names: names.len(),
        }),
        Some(names) => Ok(names.to_vec()),
        None => Ok((1..=nodes).map(|i| format!("hospital-{i}")).collect()),
    }
}

/// Creates a development consortium in `out_dir`: a CA (`ca.pem`, `ca.key`, `crl.pem`), the
/// coordinator (`coordinator.pem`, `coordinator.key`; SANs `localhost` and `127.0.0.1`) and one
/// certificate and key per node (`NAME.pem`, `NAME.key`), and the nodes' member list
/// (`members.toml`). Keys are mode 0600.
///
/// Refuses with [`CertError::AlreadyExists`], writing nothing, if any of these files exists; the
/// names must be valid, distinct, and not `ca`, `crl` or `coordinator`. On failure, files already
/// written are removed.
pub fn make_dev_consortium(
    out_dir: &Path,
    node_names: &[String],
) -> Result<DevConsortium, CertError> {
    if node_names.is_empty() {
        return Err(CertError::NoNodes);
    }
    let mut seen = HashSet::new();
    for name in node_names {
        check_party_name(name)?;
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(CertError::InvalidName {
                name: name.clone(),
                reason: "reserved for the CA, the CRL or the coordinator",
            });
        }
        if !seen.insert(name.as_str()) {
            return Err(CertError::DuplicateName { name: name.clone() });
        }
    }
    let party = |name: &str| Party {
        name: name.to_owned(),
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    let consortium = DevConsortium {
        dir: out_dir.to_owned(),
        ca_cert: out_dir.join(CA_CERT_FILE),
        ca_key: out_dir.join(CA_KEY_FILE),
        crl: out_dir.join(CRL_FILE),
        coordinator: party(COORDINATOR_NAME),
        nodes: node_names.iter().map(|name| party(name)).collect(),
        members: out_dir.join(MEMBERS_FILE),
    };
    ca::refuse_existing_ca(out_dir)?;
    let parties = || std::iter::once(&consortium.coordinator).chain(&consortium.nodes);
    files::refuse_existing(
        parties()
            .flat_map(|p| [p.key.as_path(), p.cert.as_path()])
            .chain([consortium.members.as_path()]),
    )?;

    let mut rollback = Rollback::default();
    ca::create_ca(
        out_dir,
        DEV_CA_NAME,
        Validity::days_from_now(DEV_CA_DAYS),
        &mut rollback,
    )?;
    let ca = Ca::load(out_dir)?;
    let validity = Validity::days_from_now(DEV_CERT_DAYS);
    let coordinator_sans = ca::resolve_sans(Role::Coordinator, &[])?;
    let mut node_certs = Vec::with_capacity(consortium.nodes.len());
    for party in parties() {
        let (role, sans) = if party.name == COORDINATOR_NAME {
            (Role::Coordinator, coordinator_sans.as_slice())
        } else {
            (Role::Node, &[][..])
        };
        let kind = if role == Role::Coordinator {
            ca::KeyKind::Ed25519
        } else {
            ca::KeyKind::EcdsaP256
        };
        let key = ca::new_key_pair_of(kind)?;
        let csr = Csr::from_der(csr_for(&key, &party.name)?.der(), &party.key)?;
        let cert = ca.issue(&csr, role, validity, sans)?;
        rollback.write_new(&party.key, key.serialize_pem().as_bytes(), Access::Private)?;
        rollback.write_new(&party.cert, cert.pem().as_bytes(), Access::Public)?;
        if role == Role::Node {
            node_certs.push(cert.der().clone());
        }
    }
    let members = MemberList::from_certificates(&node_certs)?;
    rollback.write_new(
        &consortium.members,
        members.to_toml().as_bytes(),
        Access::Public,
    )?;
    rollback.commit();
    Ok(consortium)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_explicit_names() {
        assert_eq!(
            dev_node_names(2, None).unwrap(),
            ["hospital-1", "hospital-2"]
        );
        let names = ["a".to_owned(), "b".to_owned()];
        assert_eq!(dev_node_names(2, Some(&names)).unwrap(), names);
        assert!(matches!(
            dev_node_names(3, Some(&names)),
            Err(CertError::NodeCountMismatch { nodes: 3, names: 2 })
        ));
    }

    #[test]
    fn bad_name_lists_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for names in [
            vec![],
            vec!["a".to_owned(), "a".to_owned()],
            vec!["coordinator".to_owned()],
            vec!["../escape".to_owned()],
        ] {
            assert!(make_dev_consortium(dir.path(), &names).is_err());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn an_existing_node_file_stops_everything_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.key"), b"mine").unwrap();
        let err = make_dev_consortium(dir.path(), &["a".to_owned(), "b".to_owned()]).unwrap_err();
        assert!(matches!(err, CertError::AlreadyExists { path } if path.ends_with("b.key")));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
