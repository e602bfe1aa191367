//! Local submission: what `sendmail` (mxctl under that name) does with a message.
//!
//! 1. [`args`] parses the sendmail flags; [`conf`] finds the spool and the mail name.
//! 2. [`headers::prepare`] adds From:, Date:, Message-ID: and computes the envelope.
//! 3. [`client::submit`] hands it to the daemon on `SPOOL/mxd.sock`; success means the
//!    daemon answered 250 to the final dot, i.e. it holds the message durably.
//! 4. If the daemon cannot be reached, defers the message (4xx), or the connection breaks
//!    before that 250, the message goes to `SPOOL/offline/` ([`offline`]), which mxd reads
//!    when it starts and every minute after.
//!
//! Either way the message is on disk before [`sendmail`] returns `Ok`: nothing is lost.
//! A 5xx refusal is an error, reported with the daemon's reply.

pub mod addrlist;
pub mod args;
pub mod client;
pub mod conf;
pub mod headers;
pub mod offline;

use std::io::{self, Read, Write};
use std::path::PathBuf;

pub use client::{SubmitError, SUBMIT_SOCKET};
pub use headers::{prepare, Options, PrepareError, Prepared};
pub use offline::{take_offline, write_offline, OfflineError, OfflineMessage, Waiting};

/// sysexits(3) codes, the exit statuses sendmail's callers understand.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
}

/// Largest message sendmail reads from stdin (OpenSMTPD's default max-message-size is 35M);
/// a bigger one is refused before anything is sent.
pub const MAX_INPUT: u64 = 40 * 1024 * 1024;

/// Where the message went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submission {
    /// The daemon accepted it (final 250).
    Submitted,
    /// The daemon was unreachable; the message waits in this offline file.
    Offline(PathBuf),
}

/// Why sendmail failed; [`SendmailError::exit_code`] gives its sysexits status.
#[derive(Debug)]
pub enum SendmailError {
    /// Reading stdin failed.
    Read(io::Error),
    /// The message is larger than [`MAX_INPUT`].
    TooLarge,
    /// The message or an address cannot be submitted.
    Prepare(PrepareError),
    /// The daemon refused the message.
    Refused(SubmitError),
    /// The daemon was unreachable and the offline directory could not take the message.
    Offline { submit: SubmitError, offline: OfflineError },
}

impl SendmailError {
    /// 4xx and unwritable offline files are temporary (75), 5xx unavailable (69).
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::Read(_) => exit::IOERR,
            SendmailError::TooLarge | SendmailError::Prepare(_) => exit::DATAERR,
            SendmailError::Refused(SubmitError::Refused { reply, .. }) if reply.code >= 500 => exit::UNAVAILABLE,
            SendmailError::Refused(_) | SendmailError::Offline { .. } => exit::TEMPFAIL,
        }
    }
}

impl std::fmt::Display for SendmailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendmailError::Read(e) => write!(f, "reading the message: {e}"),
            SendmailError::TooLarge => write!(f, "message larger than {MAX_INPUT} bytes"),
            SendmailError::Prepare(e) => e.fmt(f),
            SendmailError::Refused(e) => e.fmt(f),
            SendmailError::Offline { submit, offline } => {
                write!(f, "{submit}; and offline: {offline}")
            }
        }
    }
}

impl std::error::Error for SendmailError {}

/// The submitting user: from the password database entry of the real uid.
#[derive(Clone, Debug)]
pub struct Submitter {
    pub uid: u32,
    pub user: String,
    pub gecos: Option<String>,
}

impl Submitter {
    /// The real uid's passwd entry; "anonymous" when it has none (as enqueue does).
    pub fn current() -> Submitter {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => {
                let gecos = u.gecos.into_string().ok();
                Submitter { uid: uid.as_raw(), user: u.name, gecos }
            }
            _ => Submitter { uid: uid.as_raw(), user: "anonymous".to_string(), gecos: None },
        }
    }
}

/// Runs sendmail: reads the message from `input`, submits it or leaves it offline.
/// `trace` receives the SMTP dialog (`-v`).
pub fn sendmail(
    a: &args::SendmailArgs,
    who: &Submitter,
    input: &mut dyn Read,
    trace: Option<&mut dyn Write>,
) -> Result<Submission, SendmailError> {
    let local = conf::load_local_conf(&conf::conf_path(a.conf.clone()));
    let mut raw = Vec::new();
    input.take(MAX_INPUT + 1).read_to_end(&mut raw).map_err(SendmailError::Read)?;
    if raw.len() as u64 > MAX_INPUT {
        return Err(SendmailError::TooLarge);
    }
    let opts = Options {
        hostname: conf::mail_name(&local),
        user: who.user.clone(),
        gecos: who.gecos.clone(),
        sender: a.sender.clone(),
        fullname: a.fullname.clone(),
        extract: a.extract,
        recipients: a.recipients.clone(),
        now: unix_now(),
        unique: random_u64(),
    };
    let prepared = prepare(&raw, &opts).map_err(SendmailError::Prepare)?;
    drop(raw);
    match client::submit(&local.spool.join(SUBMIT_SOCKET), &prepared, trace) {
        Ok(()) => Ok(Submission::Submitted),
        Err(e) if e.goes_offline() => {
            let msg = OfflineMessage {
                uid: who.uid,
                user: who.user.clone(),
                sender: prepared.sender,
                recipients: prepared.recipients,
                message: prepared.message,
            };
            match write_offline(&local.spool, &msg) {
                Ok(path) => Ok(Submission::Offline(path)),
                Err(offline) => Err(SendmailError::Offline { submit: e, offline }),
            }
        }
        Err(e) => Err(SendmailError::Refused(e)),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 64 random bits from the kernel, for Message-ID and offline file names; falls back to
/// clock and pid mixed together, which is unique enough for names that are also O_EXCL.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_ok() {
        return u64::from_ne_bytes(buf);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
