//! smtpd.conf(5), as OpenSMTPD 7.x reads it, into an immutable [`Config`].
//!
//! `load` lexes (macros, includes), parses statements, then checks meaning: every table,
//! action, pki and ca used is defined; tables have the right kind; pki key files are not
//! readable by others. Every error names FILE:LINE of the file it is in and what was
//! expected. A loaded `Config` never changes: a reload builds a new one.

mod check;
mod iface;

pub use check::default_hostname;

/// A relay URL as `relay host` takes it (for `relay domain <t>` values, read at relay time).
pub fn relay_url(s: &str) -> Result<RelayUrl, ErrorKind> {
    parser::relay_url(s)
}
pub mod expand;
pub mod filter_check;
mod lexer;
mod parser;
pub mod queue_key;

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
/// OpenSMTPD's default `smtp limit max-mails`: messages per session.
pub const DEFAULT_MAX_MAILS: u64 = 100;
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
    /// Statements parsed into typed values that mxd does not act on yet, or not at all.
    pub knobs: Knobs,
    /// What `mxd -n` says about statements that load but do less than in OpenSMTPD.
    pub notices: Vec<Notice>,
}

/// A statement that loads but has no effect, or no effect yet, in mxd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub at: ConfigLine,
    pub text: String,
    /// The daemon refuses to start with this statement (a filter it would not run, a match
    /// condition it cannot evaluate): never silently ignored.
    pub blocking: bool,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.at.file.display(), self.at.line, self.text)
    }
}

/// Top-level statements of OpenSMTPD that mxd parses into typed values for the parts of mxd
/// that honour them (SRS, delay warnings, queue compression and encryption, limits,
/// filters); until they do, each is named by a [`Notice`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    /// `srs key SECRET` then `srs key backup SECRET`: the first signs, all verify.
    pub srs_keys: Vec<String>,
    /// `srs ttl DURATION`.
    pub srs_ttl: Option<Duration>,
    /// `bounce warn-interval D[, D…]`: delay warnings after each of these ages.
    pub bounce_warn: Vec<Duration>,
    /// `queue compression`.
    pub queue_compression: bool,
    /// `queue encryption [KEY|stdin]`.
    pub queue_encryption: Option<QueueKey>,
    /// `smtp ciphers STRING`.
    pub smtp_ciphers: Option<String>,
    /// `smtp limit max-mails N`: messages per session ([`DEFAULT_MAX_MAILS`] if unset).
    pub max_mails: Option<u64>,
    /// `mta max-deferred N`.
    pub mta_max_deferred: Option<u64>,
    /// `mta limit [for domain D] …`, `mda limit …`, `scheduler limit …`.
    pub limits: Vec<Limit>,
    /// `admd NAME`: the authserv-id of Authentication-Results headers.
    pub admd: Option<String>,
    /// `mda wrapper NAME COMMAND`.
    pub mda_wrappers: BTreeMap<String, String>,
    /// `proc NAME COMMAND …`.
    pub procs: BTreeMap<String, Proc>,
    /// `filter NAME …`, and the anonymous chains of `listen … filter { … }`.
    pub filters: BTreeMap<String, Filter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueKey {
    /// `queue encryption`: asked for on the terminal at start.
    Ask,
    /// `queue encryption stdin` (or `-`): read from stdin at start.
    Stdin,
    /// `queue encryption KEY`.
    Key(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub at: ConfigLine,
    /// "mta", "mda" or "scheduler".
    pub scope: &'static str,
    /// `mta limit for domain D`.
    pub domain: Option<String>,
    /// `inet4` / `inet6` (mta only).
    pub family: Option<u8>,
    pub values: Vec<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub name: String,
    pub at: ConfigLine,
    pub command: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub at: ConfigLine,
    pub kind: FilterKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// `filter NAME proc PROC`.
    Proc(String),
    /// `filter NAME proc-exec COMMAND [user U] [group G] [chroot DIR]`.
    ProcExec(Proc),
    /// `filter NAME phase PHASE match CONDITIONS ACTION`.
    Builtin { phase: String, conds: Vec<FilterCond>, action: FilterAction },
    /// `filter NAME chain { A, B }`.
    Chain(Vec<String>),
}

/// One condition of a builtin filter: `[!] fcrdns|rdns|src|helo|auth|mail-from|rcpt-to
/// [regex] [<table>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterCond {
    pub negate: bool,
    pub what: String,
    pub regex: bool,
    pub table: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterAction {
    Bypass,
    Junk,
    Reject(String),
    Disconnect(String),
    Rewrite(String),
    Report(String),
}

/// Where a statement came from, for errors found after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLine {
    pub file: PathBuf,
    pub line: u32,
}

#[derive(Clone, Debug)]
pub struct Pki {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub at: ConfigLine,
}

#[derive(Clone, Debug)]
pub struct Ca {
    pub name: String,
    pub cert: PathBuf,
    pub at: ConfigLine,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub at: ConfigLine,
    pub kind: ListenKind,
    pub tls: TlsMode,
    pub pki: Option<String>,
    pub ca: Option<String>,
    pub hostname: Option<String>,
    /// `auth [<table>]` / `auth-optional`: parsed; mxd does not offer AUTH yet.
    pub auth: Option<ListenAuth>,
    pub tag: Option<String>,
    /// Every `pki` named on the listener, in order; `pki` above is the first, the default
    /// when the client's SNI names none of them (as OpenSMTPD).
    pub pkis: Vec<String>,
    pub options: ListenOptions,
}

/// Listen options parsed for the parts of mxd that honour them (each has its own issue).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// `mask-src`: the Received header omits the client's address and name.
    pub mask_src: bool,
    /// `received-auth`: the Received header names the authenticated user.
    pub received_auth: bool,
    /// `hostnames <t>`: local address → greeting name.
    pub hostnames: Option<String>,
    /// `no-dsn`: DSN is not offered.
    pub no_dsn: bool,
    /// `proxy-v2`: a PROXY protocol v2 header comes first.
    pub proxy_v2: bool,
    /// `ciphers STRING`, `protocols STRING` (libtls forms).
    pub ciphers: Option<String>,
    pub protocols: Option<String>,
    /// `senders <t> [masquerade]`: who an authenticated user may send as.
    pub senders: Option<String>,
    pub masquerade: bool,
    /// `filter NAME` or `filter { … }` (an anonymous chain in `Knobs::filters`).
    pub filter: Option<String>,
    /// `smtps verify`: the TLS handshake wants a client certificate signed by the `ca`.
    pub smtps_verify: bool,
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
    pub at: ConfigLine,
    pub method: Method,
    pub alias: Option<String>,
    pub virtual_: Option<String>,
    pub userbase: Option<String>,
    pub user: Option<String>,
    pub ttl: Option<Duration>,
    /// `wrapper NAME`: an `mda wrapper` around the delivery command.
    pub wrapper: Option<String>,
}

// One per action, built once per load: boxing the relay would only complicate its users.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `maildir [PATH] [junk]`: PATH is a template (default `~/Maildir`).
    Maildir {
        path: Option<String>,
        junk: bool,
    },
    /// `mbox`: /var/mail/USER.
    Mbox,
    /// `lmtp DEST [rcpt-to]`: DEST a unix socket path or host:port; queued, then sent by
    /// the relay process.
    Lmtp {
        dest: String,
        rcpt_to: bool,
    },
    /// `mda "COMMAND"`: queued in the mda queue, run by the parent as the user.
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
    /// `host <table>` (a list of URLs): `host` is its first entry.
    pub host_table: Option<String>,
    /// `backup [mx NAME]`: relay as a backup MX (only MXs preferred over NAME, or over
    /// this host).
    pub backup: bool,
    pub backup_mx: Option<String>,
    /// `helo-src <t>`: source address → HELO name.
    pub helo_src: Option<String>,
    /// `domain <t>`: recipient domain → relay host.
    pub domain: Option<String>,
    /// `srs`: rewrite the sender of forwarded mail (SRS).
    pub srs: bool,
    pub ciphers: Option<String>,
    pub protocols: Option<String>,
    /// `filter NAME` / `filter { … }` on outgoing sessions.
    pub filter: Option<String>,
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
    pub at: ConfigLine,
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
    /// `regex <t>` / `regex "RE"`: the table's entries are regular expressions (an inline
    /// value becomes a one-entry table).
    Regex(String),
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
    Tag(Matcher),
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
    /// A statement that `mxd -n` accepts but the daemon will not start with.
    NotRun(String),
    /// A `match` option given twice in one rule.
    AlreadySpecified(String),
    /// A filter statement the daemon cannot run (its program missing, a table unknown).
    Filter(String),
    BadRegex {
        pattern: String,
        error: String,
    },
    /// A proc table where it would be consulted without waiting (filter conditions, relay host).
    ProcTableUse(String),
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
                "no interface or address '{n}' on this host (expected an interface, an interface group, an address, a host name of this host, or 'socket')"
            ),
            ErrorKind::BadValue { what, value, expected } => write!(f, "invalid {what} '{value}': expected {expected}"),
            ErrorKind::File { path, error } => write!(f, "{}: {error}", path.display()),
            ErrorKind::Unsupported(what) => write!(f, "{what} is not supported by mxd"),
            ErrorKind::ProcTableUse(name) => write!(
                f,
                "table '{name}' is a proc table: a relay's host <{name}> is read once, when the configuration loads, and a table process cannot list its entries; table processes serve logins, relays' auth, src, helo-src and domain, listen hostnames and senders, builtin filter conditions, and match, alias, virtual and userbase lookups (expected a file:, db:, passwd: or inline table here)"
            ),
            ErrorKind::BadRegex { pattern, error } => {
                write!(f, "invalid regular expression '{pattern}': {error} (expected an extended regular expression)")
            }
            ErrorKind::AlreadySpecified(what) => {
                write!(f, "'{what}' already specified for this rule (expected each option once)")
            }
            ErrorKind::NotRun(what) => write!(f, "{what}: mxd refuses to start rather than ignore it"),
            ErrorKind::Filter(what) => f.write_str(what),
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

/// Loads and checks `path` for the daemon; `defines` are `-D name=value` macros. A
/// configuration with a blocking [`Notice`] (a filter mxd would not run) is refused here,
/// at start and at reload.
pub fn load(path: &Path, defines: &[(String, String)]) -> Result<Config, Errors> {
    let config = check(path, defines)?;
    let blocking: Vec<Error> = config
        .notices
        .iter()
        .filter(|n| n.blocking)
        .map(|n| Error { file: n.at.file.clone(), line: n.at.line, kind: ErrorKind::NotRun(n.text.clone()) })
        .collect();
    if blocking.is_empty() {
        Ok(config)
    } else {
        Err(Errors(blocking))
    }
}

/// Loads and checks `path` as `mxd -n` does: statements mxd parses but does not run are
/// [`Notice`]s, not errors.
pub fn check(path: &Path, defines: &[(String, String)]) -> Result<Config, Errors> {
    let parsed = parser::parse_file(path, defines)?;
    check::finish(parsed)
}

/// The top-level `spool` and `hostname` of the configuration at `path`, read by the same
/// lexer and parser as the daemon's (macros, includes) but with nothing loaded: no tables,
/// no keys or certificates, so a user who cannot read those still gets the values. A
/// statement with an error is skipped and the rest still read; an unreadable file gives
/// `None` for both. What sendmail and mxctl use to find the spool.
pub fn spool_and_hostname(path: &Path) -> (Option<PathBuf>, Option<String>) {
    match parser::parse_file(path, &[]) {
        Ok(p) => (p.spool, p.hostname),
        Err(_) => (None, None),
    }
}

impl Config {
    /// True when a table is a process (a process may need to start one).
    pub fn has_proc_tables(&self) -> bool {
        self.tables.values().any(|t| t.is_proc())
    }

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
            knobs: self.knobs.clone(),
            notices: self.notices.clone(),
        })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name).map(|t| t.as_ref())
    }
}

#[cfg(test)]
mod tests;
