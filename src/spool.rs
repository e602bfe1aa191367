//! The spool's on-disk layout, defined once: every path under `SPOOL` and its mode. mxd
//! creates what is missing with these modes whatever the umask, and refuses to start
//! (clear message, exit 1) on a spool, queue or socket that another user owns or may write:
//! such a user could otherwise replace `mxd.sock` and receive what root's sendmail submits.
//!
//! ```text
//! SPOOL/            0711 root      users traverse to the sockets and offline/, list nothing
//!   mxd.lock        0600 root      the instance lock (flock), holds the parent's pid
//!   mxd.sock        0666 root      local submission (sendmail); the daemon checks each peer
//!   control.sock    0666 root      mxctl; privileged verbs are checked per peer uid
//!   offline/        1777 root      sendmail's drop while the daemon is down; files 0600 each
//!   queue/          0700 mxd       relay queue: written by delivery, read by the relay process
//!   mda/            0700 root      mda queue: written by delivery, run by the parent
//!     wake                         datagram socket: delivery wakes the relay process
//!   empty/          0755 root      the smtp process's chroot: an empty directory
//! ```
//! When mxd does not run as root, every owner above is the user running it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The spool when the configuration names none.
pub const DEFAULT_SPOOL: &str = "/var/spool/mxd";
/// Local submission socket (OpenSMTPD's smtpd.sock), always bound.
pub const SUBMIT_SOCKET: &str = "mxd.sock";
/// The control socket mxctl talks to.
pub const CONTROL_SOCKET: &str = "control.sock";
/// sendmail's drop directory while the daemon is down.
pub const OFFLINE_DIR: &str = "offline";
/// Where offline files the daemon cannot take are set aside (mode 0700): beside offline/,
/// not in it, where any user could plant a directory or symlink of that name.
pub const REJECTED_DIR: &str = "offline.rejected";
/// The relay queue.
pub const QUEUE_DIR: &str = "queue";
/// The queue of `mda` recipients, which only root reads.
pub const MDA_DIR: &str = "mda";
/// The smtp process's root directory.
pub const EMPTY_DIR: &str = "empty";
/// The instance lock.
pub const LOCK_FILE: &str = "mxd.lock";
/// The queue's list of finished recipients, beside the Maildir-style tmp/, new/ and cur/.
pub const QUEUE_STATE: &str = "state";
/// Datagram socket in the queue where delivery tells the relay process "something queued".
pub const QUEUE_WAKE: &str = "wake";

const SPOOL_MODE: u32 = 0o711;
const OFFLINE_MODE: u32 = 0o1777;
const QUEUE_MODE: u32 = 0o700;
const EMPTY_MODE: u32 = 0o755;

pub fn submit_socket(spool: &Path) -> PathBuf {
    spool.join(SUBMIT_SOCKET)
}

pub fn control_socket(spool: &Path) -> PathBuf {
    spool.join(CONTROL_SOCKET)
}

pub fn offline_dir(spool: &Path) -> PathBuf {
    spool.join(OFFLINE_DIR)
}

pub fn rejected_dir(spool: &Path) -> PathBuf {
    spool.join(REJECTED_DIR)
}

pub fn queue_dir(spool: &Path) -> PathBuf {
    spool.join(QUEUE_DIR)
}

pub fn mda_dir(spool: &Path) -> PathBuf {
    spool.join(MDA_DIR)
}

pub fn empty_dir(spool: &Path) -> PathBuf {
    spool.join(EMPTY_DIR)
}

/// Why the spool cannot be used.
#[derive(Debug)]
pub enum SpoolError {
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Owned by someone else than who must own it.
    Owner {
        path: PathBuf,
        uid: u32,
        want: u32,
    },
    /// Writable by group or others (or a symlink, or not a directory).
    Insecure {
        path: PathBuf,
        mode: u32,
    },
    /// Another mxd holds the lock.
    Locked {
        path: PathBuf,
        pid: String,
    },
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { op, path, source } => write!(f, "spool: {op} {}: {source}", path.display()),
            SpoolError::Owner { path, uid, want } => {
                write!(f, "spool: {} is owned by uid {uid}, expected uid {want}: refusing to start", path.display())
            }
            SpoolError::Insecure { path, mode } => write!(
                f,
                "spool: {} has insecure mode {mode:o} (writable by others, or not a directory): refusing to start",
                path.display()
            ),
            SpoolError::Locked { path, pid } => write!(
                f,
                "another mxd (pid {pid}) is running on this spool ({} is locked): refusing to start",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io { op, path: path.to_owned(), source }
}

/// The instance lock: held (flock) for the parent's lifetime, released by the kernel when it
/// exits, however it exits. Children do not inherit it (close-on-exec).
pub struct Lock {
    _file: Flock<File>,
}

/// Takes the instance lock, creating the spool directory itself if needed, before anything
/// else of the spool is touched: a second mxd stops here.
pub fn lock(spool: &Path) -> Result<Lock, SpoolError> {
    let euid = nix::unistd::geteuid().as_raw();
    ensure_dir(spool, SPOOL_MODE, euid, None)?;
    let path = spool.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err("open", &path))?;
    check_owner(&path, &file.metadata().map_err(io_err("stat", &path))?, euid)?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
            return Err(SpoolError::Locked { path, pid });
        }
        Err((_, e)) => return Err(io_err("flock", &path)(e.into())),
    };
    file.set_len(0).map_err(io_err("truncate", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("write", &path))?;
    Ok(Lock { _file: file })
}

/// Creates or checks the spool's directories. `queue_owner` is the unprivileged user's
/// (uid, gid) when running as root: the relay process reads and removes queue files.
pub fn prepare(spool: &Path, queue_owner: Option<(u32, u32)>) -> Result<(), SpoolError> {
    let euid = nix::unistd::geteuid().as_raw();
    ensure_dir(spool, SPOOL_MODE, euid, None)?;
    ensure_dir(&offline_dir(spool), OFFLINE_MODE, euid, None)?;
    ensure_dir(&empty_dir(spool), EMPTY_MODE, euid, None)?;
    let queue = queue_dir(spool);
    ensure_dir(&queue, QUEUE_MODE, queue_owner.map_or(euid, |o| o.0), queue_owner)?;
    for sub in ["tmp", "new", "cur", QUEUE_STATE] {
        ensure_dir(&queue.join(sub), QUEUE_MODE, queue_owner.map_or(euid, |o| o.0), queue_owner)?;
        if let Some(owner) = queue_owner {
            hand_over_files(&queue.join(sub), euid, owner)?;
        }
    }
    let mda = mda_dir(spool);
    ensure_dir(&mda, QUEUE_MODE, euid, None)?;
    for sub in ["tmp", "new", "cur", QUEUE_STATE] {
        ensure_dir(&mda.join(sub), QUEUE_MODE, euid, None)?;
    }
    for socket in [submit_socket(spool), control_socket(spool)] {
        match fs::symlink_metadata(&socket) {
            Ok(meta) => check_owner(&socket, &meta, euid)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &socket)(e)),
        }
    }
    Ok(())
}

/// Makes `path` a directory with exactly `mode`, owned by `owner`; an existing one must
/// already be owned by `owner` (or by us, then it is handed over) and not writable by others.
fn ensure_dir(path: &Path, mode: u32, owner: u32, chown: Option<(u32, u32)>) -> Result<(), SpoolError> {
    let euid = nix::unistd::geteuid().as_raw();
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            if let Some((uid, gid)) = chown {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
            }
            // Explicitly: mkdir's mode went through the umask.
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))?;
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("mkdir", path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if !meta.is_dir() {
        return Err(SpoolError::Insecure { path: path.to_owned(), mode: meta.mode() });
    }
    if meta.uid() == euid && owner != euid {
        // Made by an older mxd, or by us before the unprivileged user existed: hand it over.
        if let Some((uid, gid)) = chown {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
        }
    } else {
        check_owner(path, &meta, owner)?;
    }
    let allowed_write = if mode & 0o1000 != 0 { 0o1777 } else { 0o755 };
    if meta.mode() & 0o7777 & !allowed_write & 0o022 != 0 {
        return Err(SpoolError::Insecure { path: path.to_owned(), mode: meta.mode() & 0o7777 });
    }
    if mode & 0o1000 != 0 && meta.mode() & 0o1000 == 0 && meta.mode() & 0o002 != 0 {
        // World-writable without the sticky bit: anyone could remove anyone's file.
        return Err(SpoolError::Insecure { path: path.to_owned(), mode: meta.mode() & 0o7777 });
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Queue files an mxd without privilege separation left as root go to the relay's user, who
/// must read and remove them. Regular files only; a symlink is never followed.
fn hand_over_files(dir: &Path, from: u32, (uid, gid): (u32, u32)) -> Result<(), SpoolError> {
    let rd = fs::read_dir(dir).map_err(io_err("read", dir))?;
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_file() && meta.uid() == from && from != uid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err("chown", &path))?;
        }
    }
    Ok(())
}

fn check_owner(path: &Path, meta: &fs::Metadata, want: u32) -> Result<(), SpoolError> {
    if meta.uid() != want {
        return Err(SpoolError::Owner { path: path.to_owned(), uid: meta.uid(), want });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_spool_gets_fixed_modes_under_any_umask() {
        let t = tempfile::tempdir().unwrap();
        let spool = t.path().join("spool");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let made = lock(&spool).and_then(|l| prepare(&spool, None).map(|()| l));
        nix::sys::stat::umask(old);
        let _lock = made.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&spool), 0o711);
        assert_eq!(mode(&offline_dir(&spool)), 0o1777);
        assert_eq!(mode(&queue_dir(&spool)), 0o700);
        assert_eq!(mode(&queue_dir(&spool).join("state")), 0o700);
        assert_eq!(mode(&spool.join(LOCK_FILE)), 0o600);
        // A second instance on the same spool is refused.
        assert!(matches!(lock(&spool), Err(SpoolError::Locked { .. })));
    }

    #[test]
    fn writable_spool_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let spool = t.path().join("spool");
        fs::create_dir(&spool).unwrap();
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&spool, None).unwrap_err();
        assert!(matches!(err, SpoolError::Insecure { .. }), "{err}");
        assert!(err.to_string().contains("refusing to start"));
    }
}
