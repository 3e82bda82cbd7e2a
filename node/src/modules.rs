//! The TorchScript modules a hospital approved (`[policy] approved_modules`): code the
//! consortium brings, which the node runs only if the hospital named the very file.
//!
//! A module is named by the SHA-256 of its file, computed here when the configuration is read;
//! the manifest names the module the same way, and a manifest whose module is not one of these
//! is refused ([`crate::manifest::check_manifest`]). The bytes the trainer loads are read again
//! and hashed again at each load, so a file changed after the node started is refused, never
//! run.

use std::path::{Path, PathBuf};

use medfed_certs::{BoundedFileError, read_regular_file};
use medfed_protocol::manifest::Digest32;
use medfed_protocol::torchscript::{MAX_MODULE_BYTES, module_digest};

/// One approved module file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedModule {
    /// The file.
    pub path: PathBuf,
    /// Its SHA-256 when the configuration was read.
    pub sha256: Digest32,
}

/// Every module the hospital approved; empty by default (no TorchScript model runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovedModules {
    modules: Vec<ApprovedModule>,
}

impl ApprovedModules {
    /// Reads and hashes each file.
    pub fn load(paths: Vec<PathBuf>) -> Result<Self, ModuleError> {
        let modules = paths
            .into_iter()
            .map(|path| {
                let sha256 = module_digest(&read_module(&path)?);
                Ok(ApprovedModule { path, sha256 })
            })
            .collect::<Result<_, ModuleError>>()?;
        Ok(Self { modules })
    }

    /// The approved modules.
    pub fn modules(&self) -> &[ApprovedModule] {
        &self.modules
    }

    /// The approved module of SHA-256 `sha256`, if any.
    pub fn find(&self, sha256: &Digest32) -> Option<&ApprovedModule> {
        self.modules.iter().find(|m| &m.sha256 == sha256)
    }

    /// The bytes of the approved module of SHA-256 `sha256`, read now and checked against it.
    pub fn bytes(&self, sha256: &Digest32) -> Result<Vec<u8>, ModuleError> {
        let module = self
            .find(sha256)
            .ok_or(ModuleError::NotApproved { sha256: *sha256 })?;
        let bytes = read_module(&module.path)?;
        if module_digest(&bytes) != *sha256 {
            return Err(ModuleError::Changed {
                path: module.path.clone(),
            });
        }
        Ok(bytes)
    }
}

/// A module file's bytes, at most [`MAX_MODULE_BYTES`].
fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    read_regular_file(path, MAX_MODULE_BYTES).map_err(|e| {
        let path = path.to_owned();
        match e {
            BoundedFileError::Read(source) => ModuleError::Read { path, source },
            BoundedFileError::NotAFile => ModuleError::NotAFile { path },
            BoundedFileError::TooLarge => ModuleError::TooLarge { path },
        }
    })
}

/// Why a module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file cannot be read.
    #[error("cannot read TorchScript module {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO or a device would block or never end).
    #[error("TorchScript module {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Larger than [`MAX_MODULE_BYTES`].
    #[error("TorchScript module {} is larger than {MAX_MODULE_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// No approved module has this digest.
    #[error(
        "the task's TorchScript module (SHA-256 {sha256}) is not one the hospital approved (policy.approved_modules)"
    )]
    NotApproved {
        /// The module the task names.
        sha256: Digest32,
    },
    /// The file's content changed since the configuration was read.
    #[error(
        "TorchScript module {} changed since the node read its configuration; restart the node to approve the new file",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_known_by_its_files_digest_and_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        std::fs::write(&path, b"module v1").unwrap();
        let modules = ApprovedModules::load(vec![path.clone()]).unwrap();
        let digest = module_digest(b"module v1");
        assert_eq!(modules.find(&digest).unwrap().path, path);
        assert_eq!(modules.bytes(&digest).unwrap(), b"module v1");
        let other = module_digest(b"module v2");
        assert!(matches!(
            modules.bytes(&other),
            Err(ModuleError::NotApproved { sha256 }) if sha256 == other
        ));
        std::fs::write(&path, b"module v2").unwrap();
        assert!(matches!(
            modules.bytes(&digest),
            Err(ModuleError::Changed { path: p }) if p == path
        ));
    }

    #[test]
    fn missing_files_and_folders_are_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.pt");
        let error = ApprovedModules::load(vec![missing.clone()]).unwrap_err();
        assert!(error.to_string().contains("absent.pt"), "{error}");
        assert!(matches!(
            ApprovedModules::load(vec![dir.path().to_owned()]),
            Err(ModuleError::NotAFile { .. })
        ));
        // A FIFO is refused, never opened for a read that would wait for a writer.
        let fifo = dir.path().join("fifo.pt");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert!(matches!(
                ApprovedModules::load(vec![fifo]),
                Err(ModuleError::NotAFile { .. })
            ));
        }
    }
}
