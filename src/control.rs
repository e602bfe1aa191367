//! The control socket, `SPOOL/control.sock`: how mxctl (and mailq, newaliases) talks to the
//! running mxd. The daemon side is a trait, [`ControlHandler`], that the daemon implements
//! over its queue and tables; [`serve`] runs the socket on one thread, one request at a time.
//!
//! Protocol, line based, one request per connection (easy to drive with `nc -U`):
//! ```text
//! client: show queue\n
//! server:  <output line>\n      (zero or more, each prefixed with one space)
//! server: ok\n                   or:  error <denied|notfound|failed|usage> <message>\n
//! ```
//! Requests: `show queue`, `show stats`, `schedule all|ID`, `remove all|ID`, `reload`,
//! `update table NAME`, `update aliases` (what newaliases sends: re-read every table used
//! as an `alias` table). IDs are 1 to 16 hex digits (a message or an envelope id).
//!
//! Permissions come from the socket's peer credentials ([`peer_uid`]), never from what the
//! client says: see [`allowed`]. The request is bounded (1 KiB) and read with a timeout, so
//! a silent or hostile client cannot hold the thread or its memory. Never panics.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Mailbox;

pub use crate::spool::CONTROL_SOCKET;
/// Longest request line accepted.
const MAX_REQUEST: u64 = 1024;
/// Longest response line the client accepts.
const MAX_RESPONSE_LINE: u64 = 64 * 1024;
/// How long the daemon waits for a request, and the client for the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// What `schedule` and `remove` act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueSelection {
    All,
    /// A message id (8 hex digits) or an envelope id (16), lowercased.
    Id(String),
}

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    ShowQueue,
    ShowStats,
    Schedule(QueueSelection),
    Remove(QueueSelection),
    Reload,
    UpdateTable(String),
    /// newaliases: re-read the tables used by `alias` options.
    UpdateAliases,
}

/// A request line that is not a [`Verb`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerbError {
    /// Not one of the known requests.
    Unknown(String),
    /// `schedule`/`remove` with something that is neither `all` nor a hex id.
    BadId(String),
    /// A table name outside `[A-Za-z0-9_.-]{1,64}`.
    BadTable(String),
}

impl std::fmt::Display for VerbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerbError::Unknown(l) => write!(f, "unknown command {l:?}"),
            VerbError::BadId(id) => write!(f, "invalid id {id:?}: expected \"all\" or 1 to 16 hex digits"),
            VerbError::BadTable(t) => write!(f, "invalid table name {t:?}"),
        }
    }
}

impl std::error::Error for VerbError {}

impl Verb {
    /// Parses a request line (words separated by whitespace).
    pub fn parse(line: &str) -> Result<Verb, VerbError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["show", "queue"] => Ok(Verb::ShowQueue),
            ["show", "stats"] => Ok(Verb::ShowStats),
            ["schedule", t] => Ok(Verb::Schedule(parse_target(t)?)),
            ["remove", t] => Ok(Verb::Remove(parse_target(t)?)),
            ["reload"] => Ok(Verb::Reload),
            ["update", "aliases"] => Ok(Verb::UpdateAliases),
            ["update", "table", name] => {
                let ok = name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if ok {
                    Ok(Verb::UpdateTable(name.to_string()))
                } else {
                    Err(VerbError::BadTable(name.to_string()))
                }
            }
            _ => Err(VerbError::Unknown(line.chars().take(80).collect())),
        }
    }

    /// True for the requests that only read state.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Verb::ShowQueue | Verb::ShowStats)
    }
}

fn parse_target(word: &str) -> Result<QueueSelection, VerbError> {
    if word == "all" {
        return Ok(QueueSelection::All);
    }
    if (1..=16).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(QueueSelection::Id(word.to_ascii_lowercase()));
    }
    Err(VerbError::BadId(word.to_string()))
}

impl std::fmt::Display for Verb {
    /// The request line, as [`Verb::parse`] reads it back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = |t: &QueueSelection| match t {
            QueueSelection::All => "all".to_string(),
            QueueSelection::Id(id) => id.clone(),
        };
        match self {
            Verb::ShowQueue => f.write_str("show queue"),
            Verb::ShowStats => f.write_str("show stats"),
            Verb::Schedule(t) => write!(f, "schedule {}", target(t)),
            Verb::Remove(t) => write!(f, "remove {}", target(t)),
            Verb::Reload => f.write_str("reload"),
            Verb::UpdateTable(name) => write!(f, "update table {name}"),
            Verb::UpdateAliases => f.write_str("update aliases"),
        }
    }
}

/// Who may do what. Reading the queue and the counters is open to every local user, as
/// Postfix's mailq is (OpenSMTPD restricts it to root); everything that changes the daemon's
/// state — schedule, remove, reload, update table, newaliases — needs root or the daemon's
/// own uid (an unprivileged test instance is run by its owner).
pub fn allowed(peer_uid: u32, daemon_uid: u32, verb: &Verb) -> bool {
    peer_uid == 0 || peer_uid == daemon_uid || verb.is_read_only()
}

/// The category of a refusal, sent on the wire so that clients can branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The peer's uid may not make this request ([`allowed`]).
    Denied,
    /// No such message, envelope or table.
    NotFound,
    /// The daemon tried and failed (e.g. a table file with an error: the old one stays).
    Failed,
    /// The request line was not understood.
    Usage,
}

impl RefusalKind {
    fn word(self) -> &'static str {
        match self {
            RefusalKind::Denied => "denied",
            RefusalKind::NotFound => "notfound",
            RefusalKind::Failed => "failed",
            RefusalKind::Usage => "usage",
        }
    }

    fn from_word(word: &str) -> Option<RefusalKind> {
        [RefusalKind::Denied, RefusalKind::NotFound, RefusalKind::Failed, RefusalKind::Usage]
            .into_iter()
            .find(|k| k.word() == word)
    }
}

/// A handler's refusal: its kind and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    pub kind: RefusalKind,
    pub message: String,
}

impl HandlerError {
    pub fn not_found(message: impl Into<String>) -> Self {
        HandlerError { kind: RefusalKind::NotFound, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError { kind: RefusalKind::Failed, message: message.into() }
    }
}

/// The daemon's side of the protocol. Output strings may hold several lines.
pub trait ControlHandler: Send + Sync {
    /// One line per queued envelope (mailq).
    fn show_queue(&self) -> String;
    /// mailq for an unprivileged user: only the envelopes whose sender is that user (a
    /// local part equal to the login name); others' queued mail stays private.
    fn show_queue_for(&self, user: &str) -> String {
        own_lines(&self.show_queue(), user, None)
    }
    /// Counters, one `name=value` per line.
    fn show_stats(&self) -> String;
    /// Retry now the given message/envelope, or everything.
    fn schedule(&self, target: &QueueSelection) -> Result<String, HandlerError>;
    /// Remove from the queue without a bounce.
    fn remove(&self, target: &QueueSelection) -> Result<String, HandlerError>;
    /// Re-read the configuration (as SIGHUP): a bad new one is refused, the old one stays.
    fn reload(&self) -> Result<String, HandlerError>;
    /// Re-read one table.
    fn update_table(&self, name: &str) -> Result<String, HandlerError>;
    /// Re-read every table used as an `alias` table (newaliases).
    fn update_aliases(&self) -> Result<String, HandlerError>;
}

/// The lines of a `show queue` listing (`ID <sender> <rcpt> …`) whose sender is `user`'s:
/// its local part is the login name, and its domain `domain` when one is given.
pub fn own_lines(listing: &str, user: &str, domain: Option<&str>) -> String {
    let mine = |line: &&str| {
        let sender = line.split(' ').nth(1).unwrap_or("").trim_start_matches('<').trim_end_matches('>');
        let Mailbox { local, domain: dom } = Mailbox::split(sender);
        local == user && domain.is_none_or(|d| dom.eq_ignore_ascii_case(d))
    };
    listing.lines().filter(mine).collect::<Vec<_>>().join("\n")
}

/// Runs `verb` against `handler` for a peer whose permission check has passed; `viewer` is
/// the login name of an unprivileged peer, who sees only their own queued mail.
fn dispatch(handler: &dyn ControlHandler, verb: &Verb, viewer: Option<&str>) -> Result<String, HandlerError> {
    match verb {
        Verb::ShowQueue => Ok(match viewer {
            Some(user) => handler.show_queue_for(user),
            None => handler.show_queue(),
        }),
        Verb::ShowStats => Ok(handler.show_stats()),
        Verb::Schedule(t) => handler.schedule(t),
        Verb::Remove(t) => handler.remove(t),
        Verb::Reload => handler.reload(),
        Verb::UpdateTable(name) => handler.update_table(name),
        Verb::UpdateAliases => handler.update_aliases(),
    }
}

/// The uid of the process at the other end of a unix socket, from the kernel.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_uid(stream: &impl std::os::fd::AsFd) -> io::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials).map(|c| c.uid()).map_err(io::Error::from)
}

/// The uid of the process at the other end of a unix socket, from the kernel.
#[cfg(any(
    target_os = "openbsd",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "dragonfly",
    target_os = "macos",
    target_os = "ios"
))]
pub fn peer_uid(stream: &impl std::os::fd::AsFd) -> io::Result<u32> {
    nix::unistd::getpeereid(stream.as_fd()).map(|(uid, _)| uid.as_raw()).map_err(io::Error::from)
}

/// Without a way to learn the peer's uid, nobody is trusted (every privileged verb refused).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "openbsd",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "dragonfly",
    target_os = "macos",
    target_os = "ios"
)))]
pub fn peer_uid(_stream: &impl std::os::fd::AsFd) -> io::Result<u32> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "peer credentials not supported on this system"))
}

/// Binds `SPOOL/control.sock`, mode 0666 (permissions are checked per request). A stale
/// socket left by a dead daemon is replaced; a live one means another mxd: `AddrInUse`.
pub fn bind(spool: &Path) -> io::Result<UnixListener> {
    let path = spool.join(CONTROL_SOCKET);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use: is mxd already running?", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves control requests on `listener`, one at a time, until accepting fails for good;
/// returns that error. Meant for a thread of its own in the daemon.
pub fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>) -> io::Error {
    let daemon_uid = nix::unistd::geteuid().as_raw();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle_connection(stream, handler.as_ref(), daemon_uid) {
                    log::debug!("control: request failed: {e}");
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e)
                if e.raw_os_error().is_some_and(|c| {
                    c == nix::errno::Errno::EMFILE as i32 || c == nix::errno::Errno::ENFILE as i32
                }) =>
            {
                // Out of descriptors: back off instead of spinning; they come back.
                log::warn!("control: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return e,
        }
    }
}

/// Answers the one request of a connection, with the permission check.
pub fn handle_connection(stream: UnixStream, handler: &dyn ControlHandler, daemon_uid: u32) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let uid = peer_uid(&stream);
    let mut line = Vec::new();
    BufReader::new(&stream).take(MAX_REQUEST).read_until(b'\n', &mut line)?;
    let text = String::from_utf8_lossy(&line);
    let result = match Verb::parse(text.trim_end_matches(['\r', '\n'])) {
        Err(e) => Err(HandlerError { kind: RefusalKind::Usage, message: e.to_string() }),
        Ok(verb) => match uid {
            Ok(uid) if allowed(uid, daemon_uid, &verb) => {
                let privileged = uid == 0 || uid == daemon_uid;
                // The name comes from the password database by the kernel's uid, never
                // from the client; an unknown uid sees nothing of the queue.
                let name = (!privileged).then(|| login_name(uid));
                log::info!("control: uid={uid} {verb}");
                dispatch(handler, &verb, name.as_deref())
            }
            Ok(uid) => {
                log::warn!("control: denied uid={uid} {verb}");
                Err(HandlerError { kind: RefusalKind::Denied, message: format!("{verb}: need root privileges") })
            }
            Err(e) => {
                log::warn!("control: denied {verb}: no peer credentials: {e}");
                Err(HandlerError { kind: RefusalKind::Denied, message: format!("{verb}: need root privileges") })
            }
        },
    };
    write_response(&mut &stream, result)
}

fn login_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("#{uid}"), |u| u.name)
}

fn write_response(out: &mut impl Write, result: Result<String, HandlerError>) -> io::Result<()> {
    let mut buf = Vec::new();
    match result {
        Ok(text) => {
            for line in text.lines() {
                buf.push(b' ');
                buf.extend_from_slice(line.trim_end_matches('\r').as_bytes());
                buf.push(b'\n');
            }
            buf.extend_from_slice(b"ok\n");
        }
        Err(e) => {
            let message = e.message.replace(['\r', '\n'], " ");
            buf.extend_from_slice(format!("error {} {message}\n", e.kind.word()).as_bytes());
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

/// Why a control request did not succeed (client side).
#[derive(Debug)]
pub enum ControlError {
    /// The socket could not be reached: mxd is not running (or not with this spool).
    Unreachable { path: PathBuf, source: io::Error },
    /// The connection failed mid-way.
    Io(io::Error),
    /// The daemon's answer did not follow the protocol.
    Protocol(String),
    /// The daemon refused.
    Refused { kind: RefusalKind, message: String },
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Unreachable { path, source } => {
                write!(f, "mxd doesn't seem to be running ({}: {source})", path.display())
            }
            ControlError::Io(e) => write!(f, "control connection: {e}"),
            ControlError::Protocol(s) => write!(f, "bad answer from mxd: {s}"),
            ControlError::Refused { message, .. } => write!(f, "command failed: {message}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Sends `verb` to the daemon whose spool is `spool`; returns its output lines.
pub fn request(spool: &Path, verb: &Verb) -> Result<Vec<String>, ControlError> {
    let path = spool.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&path).map_err(|source| ControlError::Unreachable { path, source })?;
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(ControlError::Io)?;
    (&stream).write_all(format!("{verb}\n").as_bytes()).map_err(ControlError::Io)?;
    read_response(&mut BufReader::new(&stream))
}

/// Reads output lines up to the final `ok` or `error …` line.
fn read_response(reader: &mut impl BufRead) -> Result<Vec<String>, ControlError> {
    let mut output = Vec::new();
    loop {
        let mut raw = Vec::new();
        reader.by_ref().take(MAX_RESPONSE_LINE).read_until(b'\n', &mut raw).map_err(ControlError::Io)?;
        if raw.last() != Some(&b'\n') {
            return Err(ControlError::Protocol("answer truncated".into()));
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\n');
        if let Some(data) = line.strip_prefix(' ') {
            output.push(data.to_string());
        } else if line == "ok" {
            return Ok(output);
        } else if let Some(rest) = line.strip_prefix("error ") {
            let (word, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = RefusalKind::from_word(word).ok_or_else(|| ControlError::Protocol(line.to_string()))?;
            return Err(ControlError::Refused { kind, message: message.to_string() });
        } else {
            return Err(ControlError::Protocol(line.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_parse_and_print_back() {
        let cases = [
            ("show queue", Verb::ShowQueue),
            ("show  stats", Verb::ShowStats),
            ("schedule all", Verb::Schedule(QueueSelection::All)),
            ("schedule 64F3EAB9", Verb::Schedule(QueueSelection::Id("64f3eab9".into()))),
            ("remove 64f3eab9deadbeef", Verb::Remove(QueueSelection::Id("64f3eab9deadbeef".into()))),
            ("reload", Verb::Reload),
            ("update table aliases", Verb::UpdateTable("aliases".into())),
            ("update aliases", Verb::UpdateAliases),
        ];
        for (line, verb) in cases {
            assert_eq!(Verb::parse(line), Ok(verb.clone()), "{line}");
            assert_eq!(Verb::parse(&verb.to_string()), Ok(verb), "{line}");
        }
    }

    #[test]
    fn bad_verbs() {
        let cases = [
            ("", VerbError::Unknown(String::new())),
            ("show", VerbError::Unknown("show".into())),
            ("reload now", VerbError::Unknown("reload now".into())),
            ("schedule xyz", VerbError::BadId("xyz".into())),
            ("remove 0123456789abcdef0", VerbError::BadId("0123456789abcdef0".into())),
            ("update table a/b", VerbError::BadTable("a/b".into())),
        ];
        for (line, err) in cases {
            assert_eq!(Verb::parse(line), Err(err), "{line}");
        }
    }

    #[test]
    fn permissions() {
        let all = [
            Verb::ShowQueue,
            Verb::ShowStats,
            Verb::Schedule(QueueSelection::All),
            Verb::Remove(QueueSelection::All),
            Verb::Reload,
            Verb::UpdateTable("t".into()),
            Verb::UpdateAliases,
        ];
        for verb in &all {
            assert!(allowed(0, 0, verb), "root: {verb}");
            assert!(allowed(1000, 1000, verb), "daemon's own uid: {verb}");
            assert_eq!(allowed(1001, 0, verb), verb.is_read_only(), "other user: {verb}");
        }
        assert!(allowed(1001, 0, &Verb::ShowQueue));
        assert!(!allowed(1001, 0, &Verb::UpdateAliases));
    }

    #[test]
    fn unprivileged_show_queue_holds_only_own_mail() {
        let listing = "aa <joseph@mx.test> <x@far> action=out size=1 age=1s\n\
                       bb <alice@mx.test> <y@far> action=out size=1 age=1s\n\
                       cc <joseph@other.test> <z@far> action=out size=1 age=1s\n\
                       dd <> <w@far> action=out size=1 age=1s\n\
                       ee <joseph.x@mx.test> <v@far> action=out size=1 age=1s";
        let ids = |text: String| text.lines().map(|l| l[..2].to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(own_lines(listing, "joseph", Some("mx.test"))), ["aa"]);
        assert_eq!(ids(own_lines(listing, "joseph", Some("MX.TEST"))), ["aa"]);
        assert_eq!(ids(own_lines(listing, "joseph", None)), ["aa", "cc"]);
        assert!(own_lines(listing, "", Some("mx.test")).is_empty(), "the null sender is nobody's");
        assert!(own_lines(listing, "#1001", Some("mx.test")).is_empty());
    }

    #[test]
    fn responses_round_trip() {
        type Case = (Result<String, HandlerError>, Result<Vec<String>, (RefusalKind, &'static str)>);
        let cases: [Case; 4] = [
            (Ok("a\nb c\n\nok".into()), Ok(vec!["a".into(), "b c".into(), String::new(), "ok".into()])),
            (Ok(String::new()), Ok(vec![])),
            (
                Err(HandlerError::not_found("no such message\n64f3eab9")),
                Err((RefusalKind::NotFound, "no such message 64f3eab9")),
            ),
            (Err(HandlerError::failed("aliases:3: bad line")), Err((RefusalKind::Failed, "aliases:3: bad line"))),
        ];
        for (sent, want) in cases {
            let mut wire = Vec::new();
            write_response(&mut wire, sent).unwrap();
            let got = read_response(&mut wire.as_slice()).map_err(|e| match e {
                ControlError::Refused { kind, message } => (kind, message),
                other => (RefusalKind::Usage, other.to_string()),
            });
            let want = want.map_err(|(k, m)| (k, m.to_string()));
            assert_eq!(got, want);
        }
        for junk in ["", "hello\n", " partial", "error bogus x\n"] {
            assert!(matches!(read_response(&mut junk.as_bytes()), Err(ControlError::Protocol(_))), "{junk:?}");
        }
    }
}
