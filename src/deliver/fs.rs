//! File-system primitives for writing into users' homes. Paths below the Maildir's parent
//! are opened relative to directory descriptors with O_NOFOLLOW, so a symlink planted in a
//! user's Maildir (Maildir itself, tmp/, new/, or a file name) is refused, never followed.
//! Files are created 0600 with O_EXCL, and chowned to their user when mxd runs as root.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};

use crate::envelope::Owner;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// True when files must be given to their user (only root can, and only root must).
pub(crate) fn running_as_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}

fn chown(fd: impl AsFd, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some(o) if running_as_root() => Ok(fchown(fd, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))?),
        _ => Ok(()),
    }
}

/// Opens (creating with 0700 if missing) the directory `name` inside `parent`, refusing a
/// symlink.
pub(crate) fn subdir(parent: impl AsFd, name: &str, owner: Option<Owner>) -> io::Result<OwnedFd> {
    match openat(parent.as_fd(), name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {
            match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let fd = openat(parent.as_fd(), name, dir_flags(), Mode::empty())?;
            chown(&fd, owner)?;
            Ok(fd)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the parent of a Maildir or mbox. Components above it belong to the administrator
/// (a home under a symlinked /home is fine); it is created when missing.
pub(crate) fn open_parent(path: &Path) -> io::Result<OwnedFd> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match File::open(parent) {
        Ok(f) => Ok(f.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent)?;
            Ok(File::open(parent)?.into())
        }
        Err(e) => Err(e),
    }
}

/// Creates a new file `name` in `dir`: O_EXCL (never an existing file, never through a
/// symlink), mode 0600, owned by `owner`.
pub(crate) fn create_file(dir: impl AsFd, name: &str, owner: Option<Owner>) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o600))?;
    chown(&fd, owner)?;
    Ok(File::from(fd))
}

/// Opens an existing regular file for appending (mbox), refusing a symlink; creates it
/// 0600 when missing.
pub(crate) fn open_append(dir: impl AsFd, name: &str, owner: Option<Owner>) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(nix::errno::Errno::ENOENT) => {
            let fd =
                openat(dir.as_fd(), name, flags | OFlag::O_CREAT | OFlag::O_EXCL, Mode::from_bits_truncate(0o600))?;
            chown(&fd, owner)?;
            Ok(File::from(fd))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn fsync(fd: impl AsFd) -> io::Result<()> {
    Ok(nix::unistd::fsync(fd)?)
}

pub(crate) fn rename(from_dir: impl AsFd, from: &str, to_dir: impl AsFd, to: &str) -> io::Result<()> {
    Ok(nix::fcntl::renameat(from_dir, from, to_dir, to)?)
}

pub(crate) fn unlink(dir: impl AsFd, name: &str) {
    let _ = nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
}
