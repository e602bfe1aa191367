//! Maildir (https://cr.yp.to/proto/maildir.html): a copy is written to tmp/ under a unique
//! name, made durable, then renamed into new/. Names: `<secs>.M<usecs>P<pid>Q<n>.<host>`.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{fs, Cause};
use crate::envelope::Owner;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique file name: the counter makes it unique within the process, pid across
/// processes, time across restarts.
fn unique_name(host: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{}.{}", now.as_secs(), now.subsec_micros(), std::process::id(), n, host)
}

/// The spec's escaping for '/' and ':' in the host part.
pub(crate) fn safe_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// A copy written to tmp/, not yet durable or visible.
pub(crate) struct Staged {
    pub(crate) path: PathBuf,
    tmp: OwnedFd,
    new: OwnedFd,
    name: String,
    pub(crate) file: File,
    /// Device of the Maildir: one syncfs per device covers a batch (Linux only; elsewhere
    /// each file is fsynced).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) dev: u64,
    /// (device, inode) of new/, so each directory is fsynced once per batch.
    pub(crate) new_id: (u64, u64),
}

/// Writes one copy into `dir`/tmp, creating the Maildir when missing.
pub(crate) fn stage(dir: &Path, owner: Option<Owner>, pieces: &[&[u8]], host: &str) -> Result<Staged, Cause> {
    let parent = fs::open_parent(dir).map_err(|e| Cause::new("open", dir.parent().unwrap_or(dir), e))?;
    let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    let maildir = fs::subdir(&parent, leaf, owner).map_err(|e| Cause::new("open", dir, e))?;
    let tmp = fs::subdir(&maildir, "tmp", owner).map_err(|e| Cause::new("open", dir.join("tmp"), e))?;
    let new = fs::subdir(&maildir, "new", owner).map_err(|e| Cause::new("open", dir.join("new"), e))?;
    fs::subdir(&maildir, "cur", owner).map_err(|e| Cause::new("open", dir.join("cur"), e))?;
    let name = unique_name(host);
    let path = dir.join("tmp").join(&name);
    let mut file = fs::create_file(&tmp, &name, owner).map_err(|e| Cause::new("create", &path, e))?;
    let written = pieces.iter().try_for_each(|p| file.write_all(p));
    let meta = written.and_then(|()| file.metadata()).and_then(|m| Ok((m, File::from(new.try_clone()?).metadata()?)));
    match meta {
        Ok((m, nm)) => Ok(Staged { path, tmp, new, name, file, dev: m.dev(), new_id: (nm.dev(), nm.ino()) }),
        Err(e) => {
            fs::unlink(&tmp, &name);
            Err(Cause::new("write", path, e))
        }
    }
}

impl Staged {
    /// Makes the copy visible: tmp/NAME → new/NAME.
    pub(crate) fn publish(&self) -> Result<(), Cause> {
        fs::rename(&self.tmp, &self.name, &self.new, &self.name).map_err(|e| Cause::new("rename", &self.path, e))
    }

    #[cfg_attr(target_os = "linux", allow(dead_code))] // Linux syncs the batch with syncfs
    pub(crate) fn fsync_file(&self) -> Result<(), Cause> {
        fs::fsync(&self.file).map_err(|e| Cause::new("fsync", &self.path, e))
    }

    pub(crate) fn fsync_new_dir(&self) -> Result<(), Cause> {
        fs::fsync(&self.new).map_err(|e| Cause::new("fsync", self.path.parent().unwrap_or(&self.path), e))
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn syncfs(&self) -> Result<(), Cause> {
        nix::unistd::syncfs(&self.file).map_err(|e| Cause::new("syncfs", &self.path, e))
    }

    /// Removes the unpublished copy.
    pub(crate) fn discard(self) {
        fs::unlink(&self.tmp, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_escaped() {
        let a = unique_name("h");
        let b = unique_name("h");
        assert_ne!(a, b);
        assert_eq!(safe_host("a/b:c"), "a\\057b\\072c");
    }
}
