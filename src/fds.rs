//! Descriptors handed from the parent to a child across exec: the parent clears
//! close-on-exec on exactly the ones a child must have, and the child takes ownership of
//! the numbers its arguments name, once each.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// Lets `fd` survive the next exec (or not).
pub fn inherit(fd: BorrowedFd<'_>, yes: bool) -> io::Result<()> {
    let flags = if yes { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(drop).map_err(io::Error::from)
}

static TAKEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Held while descriptors are inheritable for a child, and by any other exec in the same
/// process (the parent's mda commands), which must never inherit them.
pub static EXEC_LOCK: Mutex<()> = Mutex::new(());

/// Takes ownership of descriptor `fd`, inherited from the parent: it must be open, above
/// stderr, and not taken before (so no two owners ever close it).
#[allow(unsafe_code)] // the one place a number becomes an OwnedFd; checked as said above.
pub fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    let mut taken = TAKEN.lock().map_err(|_| io::Error::other("fd registry poisoned"))?;
    if fd <= 2 || taken.contains(&fd) {
        return Err(io::Error::other(format!("descriptor {fd} is not ours to take")));
    }
    fcntl(
        // SAFETY: borrowed only for this call, to check that the number is open.
        unsafe { BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_GETFD,
    )
    .map_err(io::Error::from)?;
    taken.insert(fd);
    // SAFETY: open (checked), inherited for us by the parent, and adopted exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    inherit(owned.as_fd(), false)?;
    Ok(owned)
}
