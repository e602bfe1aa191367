//! The key of `queue encryption stdin`: the parent reads it once at start, and each child
//! that seals or opens queue files (delivery, relay) gets it through a pipe it inherits and
//! reads once. The key is never on disk, in an argument or in the environment (only the
//! pipe's descriptor number is).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use zeroize::Zeroize;

const ENV: &str = "MXD_QUEUE_KEY_FD";

static PARENT_KEY: Mutex<Option<[u8; 32]>> = Mutex::new(None);

/// The parent, at start: one line of standard input is the key (32 characters or 64
/// hexadecimal digits).
pub fn read_from_stdin() -> Result<(), String> {
    let mut line = String::new();
    io::stdin().read_line(&mut line).map_err(|e| format!("queue encryption: cannot read the key on stdin: {e}"))?;
    let key = crate::queue::seal::parse_key(&line).map_err(|e| e.to_string());
    line.zeroize();
    if let Ok(mut k) = PARENT_KEY.lock() {
        *k = Some(key?);
    }
    Ok(())
}

/// For a child about to be started: a pipe already holding the key (its read end, to be
/// inherited), and the variable naming it; `None` when the parent has no such key.
pub(crate) fn pipe_for_child() -> io::Result<Option<(OwnedFd, (&'static str, String))>> {
    let Some(key) = PARENT_KEY.lock().ok().and_then(|k| *k) else {
        return Ok(None);
    };
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    // 32 bytes always fit in an empty pipe: this never blocks.
    std::fs::File::from(write).write_all(&key)?;
    let n = read.as_raw_fd().to_string();
    Ok(Some((read, (ENV, n))))
}

/// The parent's own copy, for the mda queue it opens.
pub(crate) fn parent_key() -> Option<[u8; 32]> {
    PARENT_KEY.lock().ok().and_then(|k| *k)
}

/// A child, at start: the key its parent passed, if any.
pub fn take() -> Option<[u8; 32]> {
    let fd: i32 = std::env::var(ENV).ok()?.parse().ok()?;
    let mut f = std::fs::File::from(crate::fds::adopt(fd).ok()?);
    let mut key = [0u8; 32];
    f.read_exact(&mut key).ok()?;
    Some(key)
}
