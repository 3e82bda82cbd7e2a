//! Append-only JSON-lines files, each entry flushed to disk (fsync) before `append` returns: the
//! storage of the node's egress log and privacy ledger, which must never lose or rewrite a line.
//!
//! A journal is opened for appending only under the state folder's [`StateLock`], so one process
//! at a time writes a node's journals. Creating a journal (and its folder) syncs the folder that
//! holds it, so the file's existence survives a crash as surely as its lines do.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_lock::{StateLock, StateLockError};

/// An append-only file of `T`, one JSON object per line.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    file: File,
    /// The state folder's lock, held as long as the journal can be written.
    _lock: Arc<StateLock>,
    entries: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating it and its folder if needed) the journal `dir/name` for appending, after
    /// locking `dir` for this process ([`StateLock::acquire`]).
    pub fn open(dir: &Path, name: &str) -> Result<Self, JournalError> {
        let lock = StateLock::acquire(dir)?;
        let path = dir.join(name);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let file = match OpenOptions::new().append(true).create_new(true).open(&path) {
            // A new file: its directory entry is made durable before anything relies on it.
            Ok(file) => {
                sync_dir(dir).map_err(io)?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().append(true).open(&path).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path,
            file,
            _lock: lock,
            entries: PhantomData,
        })
    }

    /// Appends an entry; returns only once it is on disk.
    pub fn append(&mut self, entry: &T) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry).map_err(|e| JournalError::Corrupt {
            path: self.path.clone(),
            line: 0,
            detail: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Every entry of the journal `dir/name` (none if it does not exist yet); a line that is not
    /// an entry is an error naming it, never skipped.
    pub fn read(dir: &Path, name: &str) -> Result<Vec<T>, JournalError> {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        let mut entries = Vec::new();
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&line).map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                line: number + 1,
                detail: e.to_string(),
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// Creates `dir` and any missing parents, syncing the folder that holds each one created, so
/// that the new folders survive a crash.
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(folder) = next.filter(|f| !f.as_os_str().is_empty()) {
        if folder.try_exists()? {
            break;
        }
        missing.push(folder);
        next = folder.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Flushes a folder's entries (the names of the files in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The folder holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A journal could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Another process holds the state folder, or it could not be locked.
    #[error("cannot be opened: {0}")]
    Locked(#[from] StateLockError),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A line is not an entry: the file must be repaired by hand, never reset.
    #[error("{} line {line}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Entry {
        n: u32,
    }

    #[test]
    fn open_creates_missing_folders_and_appends_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("site").join("state");
        let mut journal = Journal::<Entry>::open(&state, "log.jsonl").unwrap();
        journal.append(&Entry { n: 1 }).unwrap();
        drop(journal);
        // Reopening keeps what is there and appends after it.
        let mut journal = Journal::<Entry>::open(&state, "log.jsonl").unwrap();
        journal.append(&Entry { n: 2 }).unwrap();
        assert_eq!(
            Journal::<Entry>::read(&state, "log.jsonl").unwrap(),
            [Entry { n: 1 }, Entry { n: 2 }]
        );
        assert!(state.join(crate::state_lock::LOCK_FILE).is_file());
    }

    #[test]
    fn a_missing_journal_reads_as_empty_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Journal::<Entry>::read(dir.path(), "none.jsonl")
                .unwrap()
                .is_empty()
        );
        std::fs::write(dir.path().join("bad.jsonl"), "{\"n\":1}\nnot json\n").unwrap();
        match Journal::<Entry>::read(dir.path(), "bad.jsonl") {
            Err(JournalError::Corrupt { line: 2, .. }) => {}
            other => panic!("expected line 2 to be named, got {other:?}"),
        }
    }

    #[test]
    fn open_is_refused_while_another_process_holds_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        // Another process's lock: a separate open of the lock file, locked.
        let other = File::create(dir.path().join(crate::state_lock::LOCK_FILE)).unwrap();
        other.try_lock().unwrap();
        match Journal::<Entry>::open(dir.path(), "log.jsonl") {
            Err(JournalError::Locked(StateLockError::Held { .. })) => {}
            other => panic!("expected the lock to refuse, got {other:?}"),
        }
        assert!(
            !dir.path().join("log.jsonl").exists(),
            "nothing was created"
        );
    }
}
