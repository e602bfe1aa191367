//! Delivery threads: write each message's copies to Maildir (or mbox) durably, in batches,
//! and report the verdict through the job's `done` callback. The only code that writes into
//! users' homes lives here (`fs.rs`).
//!
//! Guarantees: `done(DeliveryResult::Ok)` is called only once every copy of the message is in its
//! `new/` (file fsynced, renamed, directory fsynced) or appended and fsynced to its mbox. A
//! failure while writing or syncing the copies (disk full, permission, a symlink) leaves no copy
//! in any `new/` and reports `TempFail`. A rename or `new/` fsync that fails after the data is
//! durable (practically never on one file system) also reports `TempFail`, but copies already
//! renamed stay: the client's retry may then deliver those twice; nothing is lost.

mod fs;
mod maildir;
mod mbox;
mod pool;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use pool::{Pool, QueueHook};

/// Appends `message` to the mbox file `path` with the locks and quoting of mbox delivery,
/// with the caller's own rights (`mxd --append-mbox`, run as the user of a ~/.forward or
/// alias `/file`); fsynced before it returns.
pub fn append_file(path: &std::path::Path, sender: &str, message: &[u8]) -> io::Result<()> {
    mbox::append(path, None, sender, &[message]).map(drop).map_err(|c| io::Error::new(c.error.kind(), c.to_string()))
}

use crate::envelope::{MsgId, Target};

/// A message as the delivery threads write it: the pieces are written one after the other,
/// so the body is never copied per recipient.
#[derive(Debug)]
pub struct Mail {
    pub id: MsgId,
    /// Reverse path, without brackets ("" for the null sender).
    pub return_path: String,
    /// This hop's Received header, LF-terminated.
    pub received: Vec<u8>,
    /// Headers and body as received, LF line endings.
    pub body: Vec<u8>,
    /// The free list `body` goes back to once every job holding it is done, if any.
    pub recycle: Option<crate::buffers::Buffers>,
}

impl Drop for Mail {
    /// Every job holding this message is done: its buffer serves the next DATA.
    fn drop(&mut self) {
        if let Some(list) = &self.recycle {
            list.give(std::mem::take(&mut self.body));
        }
    }
}

/// One message and the places it must land; `done` receives the verdict on a delivery thread.
pub struct Job {
    pub mail: Arc<Mail>,
    pub targets: Vec<Target>,
    pub done: Box<dyn FnOnce(DeliveryResult) + Send>,
    /// Told once per batch, after the `done` of every job of the batch that shares it: a
    /// receiver that holds verdicts sends them then, in one write.
    pub batch_end: Option<Arc<dyn BatchEnd>>,
}

/// See [`Job::batch_end`].
pub trait BatchEnd: Send + Sync {
    fn batch_end(&self);
}

/// A delivery verdict; mirrors the log's `result=Ok|TempFail|PermFail`.
#[derive(Debug)]
pub enum DeliveryResult {
    Ok,
    TempFail(Cause),
    PermFail(Cause),
}

/// What failed, where, and the system's error.
#[derive(Debug)]
pub struct Cause {
    pub op: &'static str,
    pub path: PathBuf,
    pub error: io::Error,
}

impl Cause {
    fn new(op: &'static str, path: impl Into<PathBuf>, error: impl Into<io::Error>) -> Cause {
        Cause { op, path: path.into(), error: error.into() }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.error)
    }
}

/// Delivery threads: enough to overlap one batch's fsyncs with the next batch's writes.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4)
}
