//! mbox delivery: append to /var/mail/USER under both locks mail readers take: the
//! `USER.lock` dot-lock file (OpenBSD's lockspool(1), Debian's liblockfile) and an exclusive
//! flock(2) on the mailbox; then a "From " separator line, mboxrd
//! quoting (">From " for any line matching ^>*From ), a blank line at the end, fsync.
//! A failure truncates the file back to where it was: nothing half-written remains.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{fs, Cause};
use crate::envelope::Owner;
use crate::headers::rfc5322_date;

/// An appended, fsynced copy that can still be rolled back.
pub(crate) struct Appended {
    path: PathBuf,
    file: Flock<File>,
    start: u64,
}

/// The body with mboxrd quoting and a "From " line.
fn render(sender: &str, pieces: &[&[u8]]) -> Vec<u8> {
    let sender = if sender.is_empty() { "MAILER-DAEMON" } else { sender };
    let date = rfc5322_date(std::time::SystemTime::now());
    let mut out = format!("From {sender} {date}\n").into_bytes();
    for piece in pieces {
        for line in piece.split_inclusive(|b| *b == b'\n') {
            let unquoted = line.iter().position(|b| *b != b'>').map_or(line, |i| &line[i..]);
            if unquoted.starts_with(b"From ") {
                out.push(b'>');
            }
            out.extend_from_slice(line);
        }
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// How long to wait for another program's dot-lock, and when a lock counts as stale
/// (lockspool(1) breaks locks older than 5 minutes too).
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_STALE: Duration = Duration::from_secs(300);

/// The `NAME.lock` file, removed on drop.
struct DotLock<'a> {
    dir: &'a OwnedFd,
    name: String,
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        fs::unlink(self.dir, &self.name);
    }
}

fn dot_lock<'a>(dir: &'a OwnedFd, mbox: &str, path: &Path) -> Result<DotLock<'a>, Cause> {
    let name = format!("{mbox}.lock");
    let lock_path = path.with_file_name(&name);
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match fs::create_file(dir, &name, None) {
            Ok(_) => return Ok(DotLock { dir, name }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::symlink_metadata(&lock_path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > LOCK_STALE));
                if stale {
                    fs::unlink(dir, &name);
                    continue;
                }
                if Instant::now() > deadline {
                    return Err(Cause::new("lock", lock_path, e));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(Cause::new("lock", lock_path, e)),
        }
    }
}

pub(crate) fn append(path: &Path, owner: Option<Owner>, sender: &str, pieces: &[&[u8]]) -> Result<Appended, Cause> {
    let parent = fs::open_parent(path).map_err(|e| Cause::new("open", path, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("mbox");
    let _dot = dot_lock(&parent, name, path)?;
    let file = fs::open_append(&parent, name, owner).map_err(|e| Cause::new("open", path, e))?;
    let file = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Cause::new("lock", path, e))?;
    let start = file.metadata().map_err(|e| Cause::new("stat", path, e))?.len();
    let data = render(sender, pieces);
    let mut appended = Appended { path: path.to_owned(), file, start };
    match appended.file.write_all(&data).and_then(|()| appended.file.sync_all()) {
        Ok(()) => Ok(appended),
        Err(e) => {
            appended.rollback();
            Err(Cause::new("write", path, e))
        }
    }
}

impl Appended {
    /// Cuts the file back to its length before this copy.
    pub(crate) fn rollback(&mut self) {
        if self.file.set_len(self.start).is_ok() {
            let _ = self.file.sync_all();
        } else {
            log::error!("mbox {}: cannot roll back a failed append", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_quoting() {
        let out = render("a@b", &[b"Subject: x\n\nFrom here\n>From there\nnot From\n"]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("From a@b "));
        assert!(text.ends_with("\n\n>From here\n>>From there\nnot From\n\n"), "{text}");
    }
}
