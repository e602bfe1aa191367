//! Maildir (https://cr.yp.to/proto/maildir.html): a copy is written to tmp/ under a unique
//! name, made durable, then renamed into new/. Names: `<secs>.M<usecs>P<pid>Q<n>.<host>`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{fs, Cause};
use crate::envelope::Owner;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique file name: the counter makes it unique within the process, pid across
/// processes, time across restarts.
fn unique_name(host: &str) -> String {
    // Delivery threads start after the daemon has forked, so the pid is final by then.
    static PID: OnceLock<u32> = OnceLock::new();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{}.{}", now.as_secs(), now.subsec_micros(), PID.get_or_init(std::process::id), n, host)
}

/// The spec's escaping for '/' and ':' in the host part.
pub(crate) fn safe_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// A Maildir's tmp/ and new/, opened (and created when missing) once per batch.
struct Dirs {
    /// The Maildir's path, for error messages only: every access goes through the fds.
    path: PathBuf,
    tmp: OwnedFd,
    new: OwnedFd,
    /// Device of tmp/, where the copies' data is: one syncfs per device covers a batch
    /// (Linux only; elsewhere each file is fsynced).
    dev: u64,
    /// (device, inode) of new/, so each directory is fsynced once per batch.
    new_id: (u64, u64),
}

impl Dirs {
    fn open(dir: &Path, owner: Option<Owner>) -> Result<Dirs, Cause> {
        let parent = fs::open_parent(dir).map_err(|e| Cause::new("open", dir.parent().unwrap_or(dir), e))?;
        let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        let maildir = fs::subdir(&parent, leaf, owner).map_err(|e| Cause::new("open", dir, e))?;
        let tmp = fs::subdir(&maildir, "tmp", owner).map_err(|e| Cause::new("open", dir.join("tmp"), e))?;
        let new = fs::subdir(&maildir, "new", owner).map_err(|e| Cause::new("open", dir.join("new"), e))?;
        fs::subdir(&maildir, "cur", owner).map_err(|e| Cause::new("open", dir.join("cur"), e))?;
        let stat =
            |fd: &OwnedFd, name: &str| nix::sys::stat::fstat(fd).map_err(|e| Cause::new("stat", dir.join(name), e));
        // The files' data lives on tmp/'s device: that is the one to sync.
        let (tmp_st, new_st) = (stat(&tmp, "tmp")?, stat(&new, "new")?);
        #[allow(clippy::unnecessary_cast)]
        if sweep_due((tmp_st.st_dev as u64, tmp_st.st_ino as u64)) {
            sweep_tmp(&tmp, dir);
        }
        // dev_t and ino_t differ in width across systems (OpenBSD's dev_t is i32).
        #[allow(clippy::unnecessary_cast)]
        Ok(Dirs {
            path: dir.to_owned(),
            dev: tmp_st.st_dev as u64,
            new_id: (new_st.st_dev as u64, new_st.st_ino as u64),
            tmp,
            new,
        })
    }
}

/// The Maildir convention for files a crash left in tmp/: removed once 36 hours old.
const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);
/// How often one Maildir's tmp/ is looked at (the first delivery into it, then hourly).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Whether the tmp/ with this (device, inode) is due a sweep; marks it swept.
fn sweep_due(id: (u64, u64)) -> bool {
    static LAST: Mutex<Option<HashMap<(u64, u64), Instant>>> = Mutex::new(None);
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let last = last.get_or_insert_with(HashMap::new);
    if last.get(&id).is_some_and(|t| now.duration_since(*t) < SWEEP_EVERY) {
        return false;
    }
    last.insert(id, now);
    true
}

/// Removes what is older than `TMP_MAX_AGE` in tmp/ (never following a symlink: it is the
/// link that goes). Our own copies live there for milliseconds, so none is ever that old.
fn sweep_tmp(tmp: &OwnedFd, maildir: &Path) {
    use nix::fcntl::{AtFlags, OFlag};
    let Ok(mut entries) =
        nix::dir::Dir::openat(tmp, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty())
    else {
        return;
    };
    let cutoff = SystemTime::now().checked_sub(TMP_MAX_AGE).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let Some(cutoff) = cutoff else { return };
    for entry in entries.iter().flatten() {
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let Ok(st) = nix::sys::stat::fstatat(tmp, name, AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        #[allow(clippy::unnecessary_cast)]
        if is_dir || (st.st_mtime as i64) >= cutoff.as_secs() as i64 {
            continue;
        }
        match nix::unistd::unlinkat(tmp, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) => log::info!(
                "maildir {}: removed tmp/{} (older than 36 hours)",
                maildir.display(),
                name.to_string_lossy()
            ),
            Err(e) => log::warn!("maildir {}: cannot remove tmp/{}: {e}", maildir.display(), name.to_string_lossy()),
        }
    }
}

/// The Maildirs one batch writes into: a batch of messages for one user opens its
/// directories once, not once per message. It lives for one batch only, so a Maildir
/// that is moved or replaced is looked up afresh by the next.
#[derive(Default)]
pub(crate) struct Opened(HashMap<PathBuf, Rc<Dirs>>);

impl Opened {
    /// Writes one copy into `dir`/tmp, creating the Maildir when missing.
    pub(crate) fn stage(
        &mut self,
        dir: &Path,
        owner: Option<Owner>,
        pieces: &[&[u8]],
        host: &str,
    ) -> Result<Staged, Cause> {
        let dirs = match self.0.get(dir) {
            Some(d) => Rc::clone(d),
            None => {
                let d = Rc::new(Dirs::open(dir, owner)?);
                self.0.insert(dir.to_owned(), Rc::clone(&d));
                d
            }
        };
        let name = unique_name(host);
        let file = match fs::create_file(&dirs.tmp, &name, owner) {
            Ok(f) => f,
            Err(e) => return Err(Cause::new("create", dir.join("tmp").join(&name), e)),
        };
        let mut staged = Staged { dirs, name, file };
        if let Err(e) = write_pieces(&mut staged.file, pieces) {
            let cause = Cause::new("write", staged.path(), e);
            staged.discard();
            return Err(cause);
        }
        Ok(staged)
    }
}

/// Writes every piece, in one writev(2) when the kernel takes it all.
fn write_pieces(file: &mut File, pieces: &[&[u8]]) -> io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < pieces.len() {
        let slices: Vec<IoSlice<'_>> =
            std::iter::once(&pieces[i][off..]).chain(pieces[i + 1..].iter().copied()).map(IoSlice::new).collect();
        let mut n = file.write_vectored(&slices)?;
        if n == 0 && slices.iter().any(|s| !s.is_empty()) {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while i < pieces.len() && n >= pieces[i].len() - off {
            n -= pieces[i].len() - off;
            (i, off) = (i + 1, 0);
        }
        off += n;
    }
    Ok(())
}

/// A copy written to tmp/, not yet durable or visible.
pub(crate) struct Staged {
    dirs: Rc<Dirs>,
    name: String,
    file: File,
}

impl Staged {
    /// Where the copy is now (tmp/), for error messages; built only when one is needed.
    pub(crate) fn path(&self) -> PathBuf {
        self.dirs.path.join("tmp").join(&self.name)
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn dev(&self) -> u64 {
        self.dirs.dev
    }

    pub(crate) fn new_id(&self) -> (u64, u64) {
        self.dirs.new_id
    }

    /// Makes the copy visible: tmp/NAME → new/NAME.
    pub(crate) fn publish(&self) -> Result<(), Cause> {
        fs::rename(&self.dirs.tmp, &self.name, &self.dirs.new, &self.name)
            .map_err(|e| Cause::new("rename", self.path(), e))
    }

    #[cfg_attr(target_os = "linux", allow(dead_code))] // Linux syncs the batch with syncfs
    pub(crate) fn fsync_file(&self) -> Result<(), Cause> {
        fs::fsync(&self.file).map_err(|e| Cause::new("fsync", self.path(), e))
    }

    pub(crate) fn fsync_new_dir(&self) -> Result<(), Cause> {
        fs::fsync(&self.dirs.new).map_err(|e| Cause::new("fsync", self.dirs.path.join("new"), e))
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn syncfs(&self) -> Result<(), Cause> {
        nix::unistd::syncfs(&self.file).map_err(|e| Cause::new("syncfs", self.path(), e))
    }

    /// Removes the unpublished copy.
    pub(crate) fn discard(self) {
        fs::unlink(&self.dirs.tmp, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_written_whole_and_in_order() {
        let t = tempfile::tempdir().unwrap();
        let mut f = File::create(t.path().join("f")).unwrap();
        let big = vec![b'b'; 300_000];
        write_pieces(&mut f, &[b"a", b"", &big, b"c"]).unwrap();
        let got = std::fs::read(t.path().join("f")).unwrap();
        assert_eq!(got.len(), 300_002);
        assert!(got.starts_with(b"ab") && got.ends_with(b"bc"));
    }

    #[test]
    fn names_are_unique_and_escaped() {
        let a = unique_name("h");
        let b = unique_name("h");
        assert_ne!(a, b);
        assert_eq!(safe_host("a/b:c"), "a\\057b\\072c");
    }

    #[test]
    fn files_a_crash_left_in_tmp_go_after_36_hours() {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        let outside = t.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::fs::create_dir_all(md.join("tmp")).unwrap();
        let two_days_ago = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 48 * 3600;
        let old = TimeSpec::new(two_days_ago, 0);
        let age = |p: &Path| utimensat(nix::fcntl::AT_FDCWD, p, &old, &old, UtimensatFlags::NoFollowSymlink).unwrap();
        for name in ["stale", "recent"] {
            std::fs::write(md.join("tmp").join(name), name).unwrap();
        }
        age(&md.join("tmp/stale"));
        std::os::unix::fs::symlink(&outside, md.join("tmp/link")).unwrap();
        age(&md.join("tmp/link"));
        age(&outside);
        let staged = Opened::default().stage(&md, None, &[b"x"], "h").unwrap();
        staged.publish().unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(md.join("tmp")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["recent"]);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep", "the symlink's target is not touched");
    }
}
