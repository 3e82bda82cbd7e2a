//! The exclusive lock on a node's state folder: one process per hospital.
//!
//! The privacy ledger and the egress log are the node's memory of what it released. Two
//! processes on one folder would each keep their own running ε over the same ledger, and
//! together spend more than the policy allows. So every process that appends to either file
//! first takes an exclusive advisory lock on `node.lock` in the folder ([`File::try_lock`]) and
//! holds it until it exits; a second process is refused with [`StateLockError::Held`], which
//! names the lock file and the process holding it.
//!
//! The operating system releases the lock when its holder exits, however it exits, so a crashed
//! node never leaves a stale lock behind; the file itself stays (it only records the last
//! holder's pid, for the message). Within one process the lock is shared: every journal of the
//! folder holds the same [`StateLock`], and the lock is released when the last one is dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::journal;

/// File name of the lock inside the node's state folder.
pub const LOCK_FILE: &str = "node.lock";

/// An exclusive lock on one state folder, held by this process while the value lives.
#[derive(Debug)]
pub struct StateLock {
    /// The state folder, canonical.
    dir: PathBuf,
    /// `node.lock`, which holds the lock (and this process's pid).
    path: PathBuf,
    /// The open lock file; closing it releases the lock.
    _file: File,
}

impl StateLock {
    /// Locks `state_dir` (creating it, durably, if needed) for this process, or fails with
    /// [`StateLockError::Held`] if another process holds it. Taking it again in the same
    /// process returns the lock already held.
    pub fn acquire(state_dir: &Path) -> Result<Arc<Self>, StateLockError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateLockError::Io { path, source }
        };
        journal::create_dir_durably(state_dir).map_err(io(state_dir))?;
        let dir = state_dir.canonicalize().map_err(io(state_dir))?;
        // Held across the whole acquisition, so two threads cannot both open the file.
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|(_, lock)| lock.strong_count() > 0);
        if let Some(lock) = held
            .iter()
            .find(|(held_dir, _)| *held_dir == dir)
            .and_then(|(_, lock)| lock.upgrade())
        {
            return Ok(lock);
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = holder_pid(&mut file);
                return Err(StateLockError::Held {
                    dir,
                    lock_file: path,
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateLockError::Io { path, source });
            }
        }
        // Record who holds it, for the message a second process prints.
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io(&path))?;
        let lock = Arc::new(Self {
            dir: dir.clone(),
            path,
            _file: file,
        });
        held.push((dir, Arc::downgrade(&lock)));
        Ok(lock)
    }

    /// The state folder it locks (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file, `node.lock` in the state folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the state folder could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateLockError {
    /// Another process holds the lock: it runs a node on this folder.
    #[error(
        "state folder {} is in use: {} is locked by another medfed-node process ({}); \
         a hospital runs one node at a time, so stop that one first",
        dir.display(),
        lock_file.display(),
        describe_holder(*pid)
    )]
    Held {
        /// The state folder.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// The holder's pid, as it recorded it (`None` if unreadable).
        pid: Option<u32>,
    },
    /// The folder or the lock file could not be created, opened or locked.
    #[error("cannot lock the state folder at {}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The state folders this process has locked. Locks are per open file, so a second
/// [`StateLock::acquire`] of a folder in this process must share the first one's lock
/// rather than open the file again (which would be refused).
static HELD: Mutex<Vec<(PathBuf, Weak<StateLock>)>> = Mutex::new(Vec::new());

/// The pid the holder wrote into the lock file, if it is there and readable.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn describe_holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `dir`'s lock the way another process would: its own open file, locked.
    fn foreign_holder(dir: &Path, pid: &str) -> File {
        std::fs::create_dir_all(dir).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(LOCK_FILE))
            .unwrap();
        file.try_lock().unwrap();
        file.write_all(pid.as_bytes()).unwrap();
        file
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_lock_file_and_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let other = foreign_holder(&state, "4242\n");
        let err = StateLock::acquire(&state).unwrap_err();
        let message = err.to_string();
        match err {
            StateLockError::Held { lock_file, pid, .. } => {
                assert_eq!(lock_file, state.canonicalize().unwrap().join(LOCK_FILE));
                assert_eq!(pid, Some(4242));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(
            message.contains("node.lock") && message.contains("pid 4242"),
            "{message}"
        );
        // Once the other holder is gone, the folder is ours, and the file names us.
        drop(other);
        let lock = StateLock::acquire(&state).unwrap();
        let recorded = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(recorded.trim(), std::process::id().to_string());
    }

    #[test]
    fn the_lock_is_shared_within_a_process_and_released_with_its_last_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a").join("b");
        let first = StateLock::acquire(&state).unwrap();
        assert!(state.join(LOCK_FILE).is_file());
        // The same folder, named another way, is the same lock.
        let second = StateLock::acquire(&state.join("..").join("b")).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        // While it is held, another open of the file cannot lock it.
        let probe = File::open(state.join(LOCK_FILE)).unwrap();
        assert!(matches!(
            probe.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        assert!(probe.try_lock().is_err(), "still held by the second");
        drop(second);
        probe.try_lock().expect("released with the last holder");
    }

    #[test]
    fn an_unreadable_pid_still_names_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _other = foreign_holder(dir.path(), "");
        let message = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("node.lock") && message.contains("pid unknown"),
            "{message}"
        );
    }
}
