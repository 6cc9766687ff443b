//! A run directory belongs to one training process at a time: two processes saving checkpoints into the
//! same folder would delete each other's checkpoints and interleave their metrics. A run takes
//! `run_dir/.lock` (created atomically, holding its pid and host name) before it writes anything and
//! removes it when the [`RunLock`] is dropped: at the end of the run, on Ctrl-C (which ends the run
//! normally after a save), on an error, and on a panic's unwinding.
//!
//! A process that dies without dropping it (killed, power loss, a second Ctrl-C that exits at once)
//! leaves the file behind. Its pid is then no longer alive on this host, which the next run checks
//! (`/proc/<pid>` on Linux) before taking the lock over with a note. A lock written on another host
//! cannot be checked from here (a shared file system): it is reported, never broken.
use super::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file of a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Who holds a lock: the contents of the lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
}

impl LockOwner {
    /// This process on this host.
    pub fn current() -> LockOwner {
        LockOwner { pid: std::process::id(), host: host_name() }
    }
}

/// The held lock of a run directory; dropping it removes the lock file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// What happened to a stale lock found in its place, for the user.
    note: Option<String>,
}

impl RunLock {
    /// Takes the lock of `run_dir` (created if absent). A lock held by a live process, by a process of
    /// another host, or in a file that cannot be read is [`TrainError::Locked`]; a lock of a process of
    /// this host that is no longer alive is taken over (see [`RunLock::note`]).
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run_dir).map_err(TrainError::io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let me = LockOwner::current();
        // Two rounds: a stale lock moved aside in the first leaves the name free for the second.
        let mut note = None;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let lock = RunLock { path: path.clone(), note: note.take() };
                    // From here on, dropping `lock` removes the file, also when writing it fails.
                    let json = serde_json::to_vec(&me).map_err(|e| TrainError::Config(e.to_string()))?;
                    file.write_all(&json).and_then(|()| file.sync_all()).map_err(TrainError::io(&path))?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(TrainError::Io { path, source: e }),
            }
            let owner = read_owner(&path)?;
            if owner.host != me.host {
                return Err(locked(
                    &path,
                    &owner,
                    format!(
                        "a process of host {:?}; this is {:?}, which cannot tell whether it still runs",
                        owner.host, me.host
                    ),
                ));
            }
            if pid_alive(owner.pid) {
                return Err(locked(&path, &owner, "a process that is still running".into()));
            }
            take_over(&path, &owner)?;
            note = Some(format!(
                "took over the lock {} of process {} on {}, which is no longer running",
                path.display(),
                owner.pid,
                owner.host
            ));
        }
        Err(TrainError::Locked {
            path,
            reason: "another process took the lock while a stale one was being replaced".into(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A note saying that a stale lock was taken over, if one was.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }
}

impl Drop for RunLock {
    /// Failing to remove the file leaves a lock of a dead process, which the next run takes over.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn locked(path: &Path, owner: &LockOwner, by: String) -> TrainError {
    TrainError::Locked {
        path: path.to_path_buf(),
        reason: format!(
            "held by pid {} on {} ({by}). Wait for that run to end, train into another --out, or delete \
             the lock file if no run uses this directory",
            owner.pid, owner.host
        ),
    }
}

/// The owner recorded in the lock file at `path`. An unreadable file (one that another process has
/// created but not yet written, or garbage) is not ours to remove: it is reported.
fn read_owner(path: &Path) -> Result<LockOwner> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Locked {
        path: path.to_path_buf(),
        reason: format!(
            "the lock file does not name its owner ({e}); another run may be starting. Delete it if no \
             run uses this directory"
        ),
    })
}

/// Removes the stale lock of `owner` at `path`. It is first renamed to a name of this process, so that of
/// two processes replacing the same stale lock only one removes it; if what was moved is not the stale
/// lock (another process replaced it in between), it is put back and reported as held.
fn take_over(path: &Path, owner: &LockOwner) -> Result<()> {
    let aside = path.with_file_name(format!("{LOCK_FILE}.stale-{}", std::process::id()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::Io { path: path.to_path_buf(), source: e }),
    }
    let moved = read_owner(&aside);
    if moved.as_ref().ok() == Some(owner) {
        let _ = std::fs::remove_file(&aside);
        return Ok(());
    }
    // Not the stale lock: restore it unless yet another lock has appeared (then both stay reported).
    if std::fs::hard_link(&aside, path).is_ok() {
        let _ = std::fs::remove_file(&aside);
    }
    Err(match moved {
        Ok(live) => locked(path, &live, "a process that took it over first".into()),
        Err(error) => error,
    })
}

/// The host name, for telling locks of this machine from those of others on a shared file system.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Whether process `pid` of this host is alive. Without `/proc` (not Linux) it cannot be told, so the
/// process is assumed alive: a lock is then reported rather than broken.
pub fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}
