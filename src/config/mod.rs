//! smtpd.conf(5), as OpenSMTPD 7.x reads it, into an immutable [`Config`].
//!
//! `load` lexes (macros, includes), parses statements, then checks meaning: every table,
//! action, pki and ca used is defined; tables have the right kind; pki key files are not
//! readable by others. Every error names FILE:LINE of the file it is in and what was
//! expected. A loaded `Config` never changes: a reload builds a new one.

mod check;
pub use check::default_hostname;
pub mod expand;
mod lexer;
mod parser;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::table::Table;

/// OpenSMTPD's default `smtp max-message-size`: 35 MB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35 * 1024 * 1024;
/// OpenSMTPD's default `smtp limit max-rcpt`.
pub const DEFAULT_MAX_RCPT: usize = 1000;
/// OpenSMTPD's default `queue ttl`: 4 days.
pub const DEFAULT_QUEUE_TTL: Duration = Duration::from_secs(4 * 24 * 3600);
pub use crate::spool::DEFAULT_SPOOL;

#[derive(Debug)]
pub struct Config {
    /// The main configuration file.
    pub file: PathBuf,
    /// `hostname "NAME"`, else /etc/mail/mailname, else the system host name.
    pub hostname: String,
    /// `spool "DIR"`: queue, offline directory and sockets.
    pub spool: PathBuf,
    /// `threads N`: event loops (default: one per core).
    pub threads: Option<usize>,
    pub max_message_size: u64,
    pub max_rcpt: usize,
    pub sub_addr_delim: char,
    pub queue_ttl: Duration,
    pub tables: BTreeMap<String, Arc<Table>>,
    pub pkis: BTreeMap<String, Pki>,
    pub cas: BTreeMap<String, Ca>,
    pub listeners: Vec<Listener>,
    pub actions: BTreeMap<String, Action>,
    pub rules: Vec<Rule>,
}

/// Where a statement came from, for errors found after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u32,
}

#[derive(Clone, Debug)]
pub struct Pki {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub at: Origin,
}

#[derive(Clone, Debug)]
pub struct Ca {
    pub name: String,
    pub cert: PathBuf,
    pub at: Origin,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub at: Origin,
    pub kind: ListenKind,
    pub tls: TlsMode,
    pub pki: Option<String>,
    pub ca: Option<String>,
    pub hostname: Option<String>,
    /// `auth [<table>]` / `auth-optional`: parsed; mxd does not offer AUTH yet.
    pub auth: Option<ListenAuth>,
    pub tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenKind {
    /// `listen on socket`: the local submission socket in the spool.
    Socket,
    /// Addresses: one given, or every address of an interface.
    Inet { addrs: Vec<SocketAddr> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// No `tls` option: STARTTLS is offered only if the listener names a `pki`.
    Plain,
    /// `tls`: STARTTLS offered.
    StartTls,
    /// `tls-require [verify]`: MAIL refused before STARTTLS; `verify` wants a client
    /// certificate signed by the listener's `ca`.
    Require { verify: bool },
    /// `smtps`: TLS from the first byte.
    Smtps,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAuth {
    pub table: Option<String>,
    pub optional: bool,
}

#[derive(Clone, Debug)]
pub struct Action {
    pub name: String,
    pub at: Origin,
    pub method: Method,
    pub alias: Option<String>,
    pub virtual_: Option<String>,
    pub userbase: Option<String>,
    pub user: Option<String>,
    pub ttl: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `maildir [PATH] [junk]`: PATH is a template (default `~/Maildir`).
    Maildir {
        path: Option<String>,
        junk: bool,
    },
    /// `mbox`: /var/mail/USER.
    Mbox,
    /// `lmtp DEST [rcpt-to]`: parsed, not delivered by mxd yet.
    Lmtp {
        dest: String,
        rcpt_to: bool,
    },
    /// `mda "COMMAND"`: parsed, not delivered by mxd yet.
    Mda(String),
    ForwardOnly,
    ExpandOnly,
    Relay(Relay),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Relay {
    pub host: Option<RelayUrl>,
    /// `tls`: require TLS (STARTTLS) even for a plain `smtp://` host.
    pub tls: bool,
    /// `tls no-verify`: accept any server certificate.
    pub no_verify: bool,
    pub src: Option<String>,
    pub helo: Option<String>,
    pub auth: Option<String>,
    pub mail_from: Option<String>,
    /// `pki NAME`: the client certificate shown to the relay host.
    pub pki: Option<String>,
    /// `ca NAME`: verify the relay host against this CA instead of the system's bundle.
    pub ca: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `smtp://`: STARTTLS when offered.
    Smtp,
    /// `smtp+tls://`: STARTTLS required.
    SmtpTls,
    /// `smtp+notls://`: never TLS.
    SmtpNoTls,
    /// `smtps://`: TLS from the first byte (port 465).
    Smtps,
    /// `lmtp://`.
    Lmtp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    pub scheme: Scheme,
    /// `label@host`: the label names the credentials in the `auth` table.
    pub label: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl RelayUrl {
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Smtps => 465,
            Scheme::Lmtp => 24,
            _ => 25,
        })
    }
}

/// A `match` line: all conditions must hold; the first matching rule decides.
#[derive(Clone, Debug)]
pub struct Rule {
    pub at: Origin,
    pub conds: Vec<Cond>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Action(String),
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub negate: bool,
    pub kind: CondKind,
}

/// A value to match: a table or a literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    Table(String),
    Value(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CondKind {
    FromAny,
    /// Loopback peers and the local socket.
    FromLocal,
    FromSocket,
    FromSrc(Matcher),
    FromAuth(Option<Matcher>),
    FromRdns(Option<Matcher>),
    FromMailFrom(Matcher),
    ForAny,
    /// Recipient domain is empty, localhost, this host's names or addresses.
    ForLocal,
    ForDomain(Matcher),
    ForRcptTo(Matcher),
    Tls,
    Tag(String),
    Helo(Matcher),
}

impl CondKind {
    fn is_from(&self) -> bool {
        matches!(
            self,
            CondKind::FromAny
                | CondKind::FromLocal
                | CondKind::FromSocket
                | CondKind::FromSrc(_)
                | CondKind::FromAuth(_)
                | CondKind::FromRdns(_)
                | CondKind::FromMailFrom(_)
        )
    }

    fn is_for(&self) -> bool {
        matches!(self, CondKind::ForAny | CondKind::ForLocal | CondKind::ForDomain(_) | CondKind::ForRcptTo(_))
    }
}

/// One configuration error.
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub file: PathBuf,
    pub line: u32,
    pub kind: ErrorKind,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.kind)
    }
}

/// Every kind of configuration error, each saying what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unexpected token: what was expected and what was found.
    Syntax {
        expected: String,
        found: String,
    },
    UnterminatedString,
    UndefinedMacro(String),
    Undefined {
        what: &'static str,
        name: String,
    },
    Duplicate {
        what: &'static str,
        name: String,
    },
    /// A list where a mapping is needed, or the reverse.
    WrongTableKind {
        name: String,
        expected: &'static str,
    },
    PkiIncomplete {
        name: String,
        missing: &'static str,
    },
    InsecureKey {
        path: PathBuf,
        mode: u32,
    },
    NoSuchInterface(String),
    BadValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    File {
        path: PathBuf,
        error: String,
    },
    Unsupported(String),
    IncludeDepth,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Syntax { expected, found } => write!(f, "syntax error: expected {expected}, found {found}"),
            ErrorKind::UnterminatedString => {
                write!(f, "unterminated quoted string (expected a closing quote on the same line)")
            }
            ErrorKind::UndefinedMacro(n) => {
                write!(f, "macro '{n}' not defined (expected 'name = value' before use, or -D {n}=value)")
            }
            ErrorKind::Undefined { what, name } => {
                write!(f, "{what} '{name}' is not defined (expected a '{what}' statement for it)")
            }
            ErrorKind::Duplicate { what, name } => write!(f, "{what} '{name}' is already defined"),
            ErrorKind::WrongTableKind { name, expected } => {
                write!(f, "table '{name}' is of the wrong kind: expected a {expected}")
            }
            ErrorKind::PkiIncomplete { name, missing } => write!(
                f,
                "pki '{name}' has no {missing} (expected both 'pki {name} cert FILE' and 'pki {name} key FILE')"
            ),
            ErrorKind::InsecureKey { path, mode } => {
                write!(f, "{}: insecure permissions {:04o} on key file (expected at most 0640)", path.display(), mode)
            }
            ErrorKind::NoSuchInterface(n) => write!(
                f,
                "no interface or address '{n}' on this host (expected an interface name, an address or 'socket')"
            ),
            ErrorKind::BadValue { what, value, expected } => write!(f, "invalid {what} '{value}': expected {expected}"),
            ErrorKind::File { path, error } => write!(f, "{}: {error}", path.display()),
            ErrorKind::Unsupported(what) => write!(f, "{what} is not supported by mxd"),
            ErrorKind::IncludeDepth => write!(f, "includes nested too deeply (expected at most 8 levels)"),
        }
    }
}

/// All the errors of one load, displayed one per line.
#[derive(Debug)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// Loads and checks `path`; `defines` are `-D name=value` macros.
pub fn load(path: &Path, defines: &[(String, String)]) -> Result<Config, Errors> {
    let parsed = parser::parse_file(path, defines)?;
    check::finish(parsed)
}

impl Config {
    /// A copy of this configuration with table `name` re-read from its file (for
    /// `mxctl update table` and `newaliases`).
    pub fn reload_table(&self, name: &str) -> Result<Config, Errors> {
        let at = |kind| Errors(vec![Error { file: self.file.clone(), line: 0, kind }]);
        let old =
            self.tables.get(name).ok_or_else(|| at(ErrorKind::Undefined { what: "table", name: name.to_owned() }))?;
        let fresh = old.reload().map_err(|e| {
            at(ErrorKind::File { path: old.path().unwrap_or(&self.file).to_owned(), error: e.to_string() })
        })?;
        let mut tables = self.tables.clone();
        tables.insert(name.to_owned(), Arc::new(fresh));
        Ok(Config {
            file: self.file.clone(),
            hostname: self.hostname.clone(),
            spool: self.spool.clone(),
            threads: self.threads,
            max_message_size: self.max_message_size,
            max_rcpt: self.max_rcpt,
            sub_addr_delim: self.sub_addr_delim,
            queue_ttl: self.queue_ttl,
            tables,
            pkis: self.pkis.clone(),
            cas: self.cas.clone(),
            listeners: self.listeners.clone(),
            actions: self.actions.clone(),
            rules: self.rules.clone(),
        })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name).map(|t| t.as_ref())
    }
}

#[cfg(test)]
mod tests;
