//! File handling: reading with named errors, private (0600) and public files written atomically,
//! PEM parsing, and rolling back a half-written set of files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::CertError;

/// Who may read a file we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Owner only (0600): private keys. The mode is set when the file is created, never afterwards.
    Private,
    /// World-readable (0644): certificates, CSRs, CRLs.
    Public,
}

impl Access {
    #[cfg(unix)]
    fn mode(self) -> u32 {
        match self {
            Self::Private => 0o600,
            Self::Public => 0o644,
        }
    }
}

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Creates a directory (and its parents) if it is not there yet.
pub(crate) fn ensure_dir(path: &Path) -> Result<(), CertError> {
    fs::create_dir_all(path).map_err(|source| CertError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// Fails with [`CertError::AlreadyExists`] naming the first of `paths` that exists (as a file, a
/// directory, or even a dangling symbolic link).
pub(crate) fn refuse_existing<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<(), CertError> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(CertError::AlreadyExists {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertError::ReadFile {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Writes a new file atomically, never replacing an existing one.
///
/// The contents go to a temporary sibling created with the final mode, are synced, and the
/// temporary is then hard-linked to `path` (which fails if `path` exists) and removed. Readers see
/// either no file or the complete file, and a private key is never readable by others, not even
/// for a moment.
pub(crate) fn write_new(path: &Path, contents: &[u8], access: Access) -> Result<(), CertError> {
    let write_err = |source| CertError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let tmp = write_temp(path, |out| out.write_all(contents), access).map_err(write_err)?;
    let linked = fs::hard_link(&tmp, path);
    // The temporary is only a staging name; failing to remove it loses nothing.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_parent(path).map_err(write_err),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CertError::AlreadyExists {
            path: path.to_owned(),
        }),
        Err(source) => Err(CertError::WriteFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file atomically, replacing any existing one (temporary sibling, sync, rename).
pub(crate) fn write_replace(path: &Path, contents: &[u8], access: Access) -> Result<(), CertError> {
    replace_with_access(path, |out| out.write_all(contents), access).map_err(|source| {
        CertError::WriteFile {
            path: path.to_owned(),
            source,
        }
    })
}

/// Writes a world-readable file durably and atomically, replacing any existing one: readers,
/// and a process restarted after a crash or a power cut, see the old file or the new one whole,
/// never a mix. The contents go to a uniquely named temporary sibling (removed on any failure),
/// are synced, renamed over `path`, and the folder is synced. medfed's one way to replace a
/// file: checkpoints, audit reports and their page, the task manifest, certificates.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace_with_access(path, |out| out.write_all(contents), Access::Public)
}

/// [`replace_file`] with contents written by `write` as they are made (through a buffer), so
/// that a large file (a model checkpoint) never has to be held whole in memory first.
pub fn replace_file_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    replace_with_access(path, write, Access::Public)
}

fn replace_with_access(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    access: Access,
) -> io::Result<()> {
    let tmp = write_temp(path, write, access)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Parses every `CERTIFICATE` block of a PEM file; at least one must be there.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first certificate of a PEM file.
pub(crate) fn load_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    let mut certs = load_certs(path)?;
    // `load_certs` never returns an empty list.
    Ok(certs.swap_remove(0))
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
///
/// The file must be private to its owner: one that group or others may read or write is
/// refused with [`CertError::KeyPermissions`] before it is read.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read_private(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => bad_pem(path, e),
    })
}

/// Parses every `X509 CRL` block of a PEM file; at least one must be there.
pub(crate) fn load_crls(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    parse_crls(path, &read(path)?)
}

/// Parses every `X509 CRL` block of the PEM `bytes` read from `path`; at least one must be there.
pub(crate) fn parse_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if crls.is_empty() {
        return Err(CertError::NoCrl {
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

/// Files created so far by a multi-file operation; dropped without [`Rollback::commit`], it removes
/// them, so a failed `init` or `dev` leaves nothing half-made behind.
#[derive(Debug, Default)]
pub(crate) struct Rollback {
    /// Files this operation created, in order.
    created: Vec<PathBuf>,
}

impl Rollback {
    /// [`write_new`], remembering the file for rollback.
    pub(crate) fn write_new(
        &mut self,
        path: &Path,
        contents: &[u8],
        access: Access,
    ) -> Result<(), CertError> {
        write_new(path, contents, access)?;
        self.created.push(path.to_owned());
        Ok(())
    }

    /// Keeps every file written.
    pub(crate) fn commit(mut self) {
        self.created.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        for path in self.created.iter().rev() {
            // Best effort: the operation has already failed with a more useful error.
            let _ = fs::remove_file(path);
        }
    }
}

/// Why a file that must be private to its owner was not read.
#[derive(Debug)]
pub enum PrivateFileError {
    /// It could not be opened or read.
    Read(io::Error),
    /// Group or others have a permission bit on it: its mode.
    Exposed(u32),
}

/// Why [`read_regular_file`] read nothing.
#[derive(Debug)]
pub enum BoundedFileError {
    /// It could not be opened or read.
    Read(io::Error),
    /// Not a regular file (a FIFO or a device would block or never end).
    NotAFile,
    /// Larger than the caller's bound.
    TooLarge,
}

/// Reads a whole regular file of at most `max_bytes`: a FIFO, a device or a folder is refused
/// before it is opened (and the file is opened without blocking, should it become one in
/// between), and a file that grows past the bound is refused without reading more than one
/// byte beyond it. Each caller words the error for what the file is.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, BoundedFileError> {
    if !fs::metadata(path)
        .map_err(BoundedFileError::Read)?
        .is_file()
    {
        return Err(BoundedFileError::NotAFile);
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(BoundedFileError::Read)?;
    if !file.metadata().map_err(BoundedFileError::Read)?.is_file() {
        return Err(BoundedFileError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(BoundedFileError::Read)?;
    if bytes.len() as u64 > max_bytes {
        return Err(BoundedFileError::TooLarge);
    }
    Ok(bytes)
}

/// Reads a whole file that must be private to its owner (no permission bit for group or
/// others): keys, tokens, credentials. Each caller words the error for what the file is.
///
/// The mode is checked on the open file, so the file checked is the file read.
pub fn read_owner_only(path: &Path) -> Result<Vec<u8>, PrivateFileError> {
    let mut file = File::open(path).map_err(PrivateFileError::Read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(PrivateFileError::Read)?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::Exposed(mode));
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(PrivateFileError::Read)?;
    Ok(bytes)
}

/// [`read_owner_only`] for a private key.
fn read_private(path: &Path) -> Result<Vec<u8>, CertError> {
    read_owner_only(path).map_err(|e| match e {
        PrivateFileError::Read(source) => CertError::ReadFile {
            path: path.to_owned(),
            source,
        },
        PrivateFileError::Exposed(mode) => CertError::KeyPermissions {
            path: path.to_owned(),
            mode,
        },
    })
}

fn bad_pem(path: &Path, e: rustls_pki_types::pem::Error) -> CertError {
    CertError::BadPem {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Writes `contents` to a fresh temporary file next to `path`, created with the final mode.
fn write_temp(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    access: Access,
) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(access.mode());
    }
    #[cfg(not(unix))]
    let _ = access;
    let file = options.open(&tmp)?;
    let mut out = io::BufWriter::with_capacity(1 << 16, file);
    let written = write(&mut out)
        .and_then(|()| out.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|file| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Syncs the directory holding `path`, so that a rename or link survives a crash.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent).and_then(|dir| dir.sync_all())?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_new_refuses_to_replace_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        write_new(&path, b"first", Access::Private).unwrap();
        let err = write_new(&path, b"second", Access::Private).unwrap_err();
        assert!(matches!(err, CertError::AlreadyExists { path: p } if p == path));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn write_replace_replaces_with_public_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        write_replace(&path, b"one", Access::Public).unwrap();
        write_replace(&path, b"two", Access::Public).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn replace_file_leaves_the_new_file_whole_and_no_temporary_even_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        replace_file(&path, b"old").unwrap();
        replace_file(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        // A target that cannot be replaced (a folder) keeps the folder and leaves nothing else.
        let blocked = dir.path().join("folder");
        fs::create_dir(&blocked).unwrap();
        assert!(replace_file(&blocked, b"x").is_err());
        assert!(blocked.is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn rollback_removes_files_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        {
            let mut rollback = Rollback::default();
            rollback.write_new(&a, b"a", Access::Public).unwrap();
        }
        assert!(!a.exists());
        let mut rollback = Rollback::default();
        rollback.write_new(&b, b"b", Access::Public).unwrap();
        rollback.commit();
        assert!(b.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_others_may_read_or_write_is_refused_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = rcgen::KeyPair::generate().unwrap();
        write_new(&path, key.serialize_pem().as_bytes(), Access::Private).unwrap();
        assert!(load_key(&path).is_ok());
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_key(&path).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(&err, CertError::KeyPermissions { path: p, mode: m } if *p == path && *m == mode),
                "{err:?}"
            );
            assert!(
                message.contains(&path.display().to_string())
                    && message.contains(&format!("{mode:04o}"))
                    && message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
        }
        // Owner-only modes are fine, read-only included.
        for mode in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(load_key(&path).is_ok(), "{mode:o}");
        }
    }

    #[test]
    fn pem_loaders_reject_garbage_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.pem");
        fs::write(&path, b"\xff\x00 not pem at all").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load_certs(&path),
            Err(CertError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_key(&path),
            Err(CertError::NoPrivateKey { .. })
        ));
        assert!(matches!(load_crls(&path), Err(CertError::NoCrl { .. })));
        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(load_certs(&path), Err(CertError::BadPem { .. })));
        assert!(matches!(
            load_certs(&dir.path().join("missing.pem")),
            Err(CertError::ReadFile { .. })
        ));
    }
}
