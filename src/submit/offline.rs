//! The offline directory, `SPOOL/offline/`: where sendmail(8) leaves a message when the
//! daemon is not running, and where mxd picks it up at its next start (Postfix's maildrop,
//! OpenSMTPD's offline/).
//!
//! Guarantees:
//! - [`write_offline`] returns only once the file is complete on disk: written to a dot-tmp
//!   name (O_EXCL, mode 0600), fsynced, renamed, and the directory fsynced. A crash leaves at
//!   most a dot-tmp file, which [`take_offline`] never reads.
//! - The directory is 1777 like /tmp (every user may drop, nobody may read or remove another
//!   user's 0600 file). Its files are untrusted: [`read_offline`] never follows a symlink,
//!   reads only regular files with one link, at most [`MAX_OFFLINE_FILE`] bytes, and refuses
//!   a file whose recorded uid is not its owner — the owner is the submitting user.
//!
//! File format (version 1), text header then the message, self-delimiting so a truncated
//! file is refused (after Postfix's END record):
//! ```text
//! mxd-offline 1
//! uid 1000
//! user joseph
//! sender joseph@devbox-ntp.home.lan
//! rcpt joseph@devbox-ntp.home.lan
//! size 123
//!
//! <size bytes: the prepared message, LF line endings>END
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

pub use crate::spool::OFFLINE_DIR;
/// Largest offline file read back: a bigger one is refused rather than loaded into memory.
pub const MAX_OFFLINE_FILE: u64 = 128 * 1024 * 1024;
const MAGIC: &str = "mxd-offline 1";
const TRAILER: &[u8] = b"END\n";

/// A message waiting in the offline directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// The submitting user's uid (checked against the file's owner when read back).
    pub uid: u32,
    /// The submitting user's login name.
    pub user: String,
    /// Envelope sender, qualified; empty for the null sender.
    pub sender: String,
    /// Envelope recipients, qualified.
    pub recipients: Vec<String>,
    /// The message, LF line endings, headers already added by sendmail.
    pub message: Vec<u8>,
}

/// What went wrong with an offline file.
#[derive(Debug)]
pub enum OfflineError {
    /// A system call failed; `op` says which, `path` on what.
    Io { op: &'static str, path: PathBuf, source: io::Error },
    /// Not a regular file with exactly one link (a symlink, fifo, hard link…): left alone.
    NotRegular(PathBuf),
    /// Larger than [`MAX_OFFLINE_FILE`].
    TooLarge(PathBuf),
    /// The uid recorded in the file is not the file's owner: someone forged a submission.
    OwnerMismatch { path: PathBuf, owner: u32, claimed: u32 },
    /// The content does not follow the format; the string says what was expected.
    Format(PathBuf, &'static str),
    /// A field holds a newline and cannot be written (only possible for a bad user name).
    BadField(&'static str),
}

impl std::fmt::Display for OfflineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            OfflineError::NotRegular(p) => write!(f, "{}: not a regular file", p.display()),
            OfflineError::TooLarge(p) => write!(f, "{}: file too large", p.display()),
            OfflineError::OwnerMismatch { path, owner, claimed } => {
                write!(f, "{}: owned by uid {owner} but claims uid {claimed}", path.display())
            }
            OfflineError::Format(p, what) => {
                write!(f, "{}: bad offline file: expected {what}", p.display())
            }
            OfflineError::BadField(name) => write!(f, "offline message: bad {name}"),
        }
    }
}

impl std::error::Error for OfflineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OfflineError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OfflineError + 'a {
    move |source| OfflineError::Io { op, path: path.to_path_buf(), source }
}

/// Creates `SPOOL/offline` (mode 1777) if it is missing and we are allowed to; returns it.
pub fn offline_dir(spool: &Path) -> Result<PathBuf, OfflineError> {
    let dir = crate::spool::offline_dir(spool);
    match fs::create_dir(&dir) {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod", &dir))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("mkdir", &dir)(e)),
    }
    Ok(dir)
}

/// Writes `msg` durably into the offline directory; returns the final path.
pub fn write_offline(spool: &Path, msg: &OfflineMessage) -> Result<PathBuf, OfflineError> {
    let bytes = encode(msg)?;
    let dir = offline_dir(spool)?;
    let name = format!("{}.{}.{:016x}", super::unix_now(), std::process::id(), super::random_u64());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let written = write_synced(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &path).map_err(io_err("rename", &tmp)));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)?;
    Ok(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OfflineError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), OfflineError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

fn encode(msg: &OfflineMessage) -> Result<Vec<u8>, OfflineError> {
    let clean = |name: &'static str, v: &str| {
        if v.contains(['\n', '\r']) {
            Err(OfflineError::BadField(name))
        } else {
            Ok(())
        }
    };
    clean("user", &msg.user)?;
    clean("sender", &msg.sender)?;
    let mut head = format!("{MAGIC}\nuid {}\nuser {}\nsender {}\n", msg.uid, msg.user, msg.sender);
    for rcpt in &msg.recipients {
        clean("recipient", rcpt)?;
        head.push_str(&format!("rcpt {rcpt}\n"));
    }
    head.push_str(&format!("size {}\n\n", msg.message.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(&msg.message);
    out.extend_from_slice(TRAILER);
    Ok(out)
}

/// The offline files waiting, oldest first (names start with the submission time); dot
/// files (writes in progress) are skipped. A missing directory means none.
pub fn list_offline(spool: &Path) -> Result<Vec<PathBuf>, OfflineError> {
    let dir = spool.join(OFFLINE_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("readdir", &dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("readdir", &dir))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// One offline file and what reading it gave.
pub type Waiting = (PathBuf, Result<OfflineMessage, OfflineError>);

/// Every waiting offline message, each with its path so the daemon can remove it
/// ([`remove_offline`]) once the message is durably queued. Files that cannot be read
/// come back as errors, to be logged and left for the administrator.
pub fn take_offline(spool: &Path) -> Result<Vec<Waiting>, OfflineError> {
    Ok(list_offline(spool)?
        .into_iter()
        .map(|p| {
            let m = read_offline(&p);
            (p, m)
        })
        .collect())
}

/// Reads one offline file with the checks described in the module doc.
pub fn read_offline(path: &Path) -> Result<OfflineMessage, OfflineError> {
    // O_NONBLOCK: opening a fifo planted here must not hang the daemon.
    let mut file =
        OpenOptions::new().read(true).custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits()).open(path).map_err(
            |e| match e.raw_os_error() {
                Some(code) if code == nix::errno::Errno::ELOOP as i32 => OfflineError::NotRegular(path.to_path_buf()),
                _ => io_err("open", path)(e),
            },
        )?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(OfflineError::NotRegular(path.to_path_buf()));
    }
    if meta.len() > MAX_OFFLINE_FILE {
        return Err(OfflineError::TooLarge(path.to_path_buf()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    Read::by_ref(&mut file).take(MAX_OFFLINE_FILE + 1).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    let msg = decode(&bytes).map_err(|what| OfflineError::Format(path.to_path_buf(), what))?;
    if msg.uid != meta.uid() {
        return Err(OfflineError::OwnerMismatch { path: path.to_path_buf(), owner: meta.uid(), claimed: msg.uid });
    }
    Ok(msg)
}

/// Parses the format in the module doc; the error says what was expected.
fn decode(bytes: &[u8]) -> Result<OfflineMessage, &'static str> {
    let split = memchr::memmem::find(bytes, b"\n\n").ok_or("a blank line after the header")?;
    let head = std::str::from_utf8(bytes.get(..split).ok_or("a header")?).map_err(|_| "a UTF-8 header")?;
    let rest = bytes.get(split + 2..).ok_or("a message")?;
    let mut lines = head.lines();
    if lines.next() != Some(MAGIC) {
        return Err("\"mxd-offline 1\"");
    }
    let mut msg = OfflineMessage {
        uid: u32::MAX,
        user: String::new(),
        sender: String::new(),
        recipients: Vec::new(),
        message: Vec::new(),
    };
    let mut size = None;
    for line in lines {
        match line.split_once(' ').unwrap_or((line, "")) {
            ("uid", v) => msg.uid = v.parse().map_err(|_| "a numeric uid")?,
            ("user", v) => msg.user = v.to_string(),
            ("sender", v) => msg.sender = v.to_string(),
            ("rcpt", v) => msg.recipients.push(v.to_string()),
            ("size", v) => size = Some(v.parse::<usize>().map_err(|_| "a numeric size")?),
            _ => return Err("uid, user, sender, rcpt or size"),
        }
    }
    let size = size.ok_or("a size line")?;
    if msg.uid == u32::MAX || msg.user.is_empty() || msg.recipients.is_empty() {
        return Err("uid, user and at least one rcpt");
    }
    let (message, trailer) = (rest.get(..size), rest.get(size..));
    if trailer != Some(TRAILER) {
        return Err("the message followed by END (file truncated?)");
    }
    msg.message = message.unwrap_or_default().to_vec();
    Ok(msg)
}

impl OfflineError {
    /// The file itself is bad (forged, truncated, not a regular file…): reading it again
    /// will not help. I/O errors may pass.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, OfflineError::Io { .. } | OfflineError::BadField(_))
    }
}

/// Moves a file the daemon will never take out of offline/ into `SPOOL/offline.rejected/`,
/// so it is reported once rather than at every pass. Returns where it went.
pub fn set_aside(spool: &Path, path: &Path) -> Result<PathBuf, OfflineError> {
    let dir = crate::spool::rejected_dir(spool);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("mkdir", &dir)(e)),
    }
    let meta = fs::symlink_metadata(&dir).map_err(io_err("stat", &dir))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(OfflineError::NotRegular(dir));
    }
    let to = dir.join(path.file_name().unwrap_or_default());
    // rename(2) moves a symlink or fifo itself, never what it points to.
    fs::rename(path, &to).map_err(io_err("rename", path))?;
    Ok(to)
}

/// Deletes an offline file once its message is safely queued, and syncs the directory so
/// the deletion is not undone by a crash (which would only cause a duplicate).
pub fn remove_offline(path: &Path) -> Result<(), OfflineError> {
    fs::remove_file(path).map_err(io_err("unlink", path))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OfflineMessage {
        OfflineMessage {
            uid: nix::unistd::getuid().as_raw(),
            user: "joseph".into(),
            sender: "joseph@h.lan".into(),
            recipients: vec!["a@h.lan".into(), "b@x.org".into()],
            message: b"Subject: x\n\nbody\n\nEND\n.\n".to_vec(),
        }
    }

    #[test]
    fn round_trip_and_permissions() {
        let spool = tempfile::tempdir().unwrap();
        let path = write_offline(spool.path(), &sample()).unwrap();
        let dir_mode = fs::metadata(spool.path().join(OFFLINE_DIR)).unwrap().mode() & 0o7777;
        assert_eq!(dir_mode, 0o1777);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let taken = take_offline(spool.path()).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, path);
        assert_eq!(taken[0].1.as_ref().unwrap(), &sample());
        remove_offline(&path).unwrap();
        assert!(take_offline(spool.path()).unwrap().is_empty());
    }

    #[test]
    fn decode_refusals() {
        let good = encode(&sample()).unwrap();
        assert_eq!(decode(&good), Ok(sample()));
        let truncated = &good[..good.len() - 2];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (truncated.to_vec(), "the message followed by END (file truncated?)"),
            (b"mxd-offline 2\nuid 1\n\nx".to_vec(), "\"mxd-offline 1\""),
            (b"mxd-offline 1\nuid x\n\n".to_vec(), "a numeric uid"),
            (b"mxd-offline 1\nuid 1\nuser u\nsize 1\n\nxEND\n".to_vec(), "uid, user and at least one rcpt"),
            (b"mxd-offline 1\nbogus\n\n".to_vec(), "uid, user, sender, rcpt or size"),
            (
                b"mxd-offline 1\nuid 1\nuser u\nrcpt r\nsize 99\n\nxEND\n".to_vec(),
                "the message followed by END (file truncated?)",
            ),
            (b"no header".to_vec(), "a blank line after the header"),
        ];
        for (input, want) in cases {
            assert_eq!(decode(&input), Err(want), "input {:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn untrusted_files_are_refused() {
        let spool = tempfile::tempdir().unwrap();
        let dir = offline_dir(spool.path()).unwrap();
        let mut forged = sample();
        forged.uid = forged.uid.wrapping_add(1);
        fs::write(dir.join("1.forged"), encode(&forged).unwrap()).unwrap();
        std::os::unix::fs::symlink(dir.join("1.forged"), dir.join("2.link")).unwrap();
        fs::write(dir.join(".3.tmp"), b"partial").unwrap();
        let taken = take_offline(spool.path()).unwrap();
        assert_eq!(taken.len(), 2, "dot files are skipped");
        assert!(matches!(taken[0].1, Err(OfflineError::OwnerMismatch { .. })));
        assert!(matches!(taken[1].1, Err(OfflineError::NotRegular(_))));
        let bad = OfflineMessage { user: "a\nuid 0".into(), ..sample() };
        assert!(matches!(write_offline(spool.path(), &bad), Err(OfflineError::BadField("user"))));
    }
}
