//! smtpd-filters(7), protocol 0.7, as OpenSMTPD 7.4+ speaks it: the lines mxd writes to a
//! filter process (config handshake, report events, filter requests) and a parser for the
//! lines a filter writes back (register, filter-result, filter-dataline, report).
//!
//! A filter's output is untrusted: `parse_output` never panics, bounds what it accepts
//! (`MAX_LINE`) and turns every malformed line into a typed [`LineError`].

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The protocol version mxd speaks, as OpenSMTPD 7.4 to 7.8 do.
pub const VERSION: &str = "0.7";
/// The `config|smtpd-version|` mxd announces: filters compare it, none requires more.
pub const SMTPD_VERSION: &str = "7.4.0";
/// The longest line accepted from a filter, newline excluded. OpenSMTPD reads filter
/// output with no limit of its own; a DKIM signature or a spam report fits easily.
pub const MAX_LINE: usize = 64 * 1024;

/// The filtering phases of smtp-in, in OpenSMTPD's order (`filter_execs[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Connect,
    Helo,
    Ehlo,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    DataLine,
    Rset,
    Quit,
    Noop,
    Help,
    Wiz,
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 15] = [
        Phase::Connect,
        Phase::Helo,
        Phase::Ehlo,
        Phase::StartTls,
        Phase::Auth,
        Phase::MailFrom,
        Phase::RcptTo,
        Phase::Data,
        Phase::DataLine,
        Phase::Rset,
        Phase::Quit,
        Phase::Noop,
        Phase::Help,
        Phase::Wiz,
        Phase::Commit,
    ];

    /// The name in `register|filter|smtp-in|NAME` and in filter requests.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Helo => "helo",
            Phase::Ehlo => "ehlo",
            Phase::StartTls => "starttls",
            Phase::Auth => "auth",
            Phase::MailFrom => "mail-from",
            Phase::RcptTo => "rcpt-to",
            Phase::Data => "data",
            Phase::DataLine => "data-line",
            Phase::Rset => "rset",
            Phase::Quit => "quit",
            Phase::Noop => "noop",
            Phase::Help => "help",
            Phase::Wiz => "wiz",
            Phase::Commit => "commit",
        }
    }

    /// The name in a `filter-response` report, which differs for two phases (lka_filter.c).
    pub fn response_name(self) -> &'static str {
        match self {
            Phase::Connect => "connected",
            Phase::StartTls => "tls",
            other => other.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A bit for sets of phases.
    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The report events of smtp-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    LinkConnect,
    LinkDisconnect,
    LinkGreeting,
    LinkIdentify,
    LinkTls,
    LinkAuth,
    TxReset,
    TxBegin,
    TxMail,
    TxRcpt,
    TxEnvelope,
    TxData,
    TxCommit,
    TxRollback,
    ProtocolClient,
    ProtocolServer,
    FilterReport,
    FilterResponse,
    Timeout,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::LinkConnect,
        EventKind::LinkDisconnect,
        EventKind::LinkGreeting,
        EventKind::LinkIdentify,
        EventKind::LinkTls,
        EventKind::LinkAuth,
        EventKind::TxReset,
        EventKind::TxBegin,
        EventKind::TxMail,
        EventKind::TxRcpt,
        EventKind::TxEnvelope,
        EventKind::TxData,
        EventKind::TxCommit,
        EventKind::TxRollback,
        EventKind::ProtocolClient,
        EventKind::ProtocolServer,
        EventKind::FilterReport,
        EventKind::FilterResponse,
        EventKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::LinkConnect => "link-connect",
            EventKind::LinkDisconnect => "link-disconnect",
            EventKind::LinkGreeting => "link-greeting",
            EventKind::LinkIdentify => "link-identify",
            EventKind::LinkTls => "link-tls",
            EventKind::LinkAuth => "link-auth",
            EventKind::TxReset => "tx-reset",
            EventKind::TxBegin => "tx-begin",
            EventKind::TxMail => "tx-mail",
            EventKind::TxRcpt => "tx-rcpt",
            EventKind::TxEnvelope => "tx-envelope",
            EventKind::TxData => "tx-data",
            EventKind::TxCommit => "tx-commit",
            EventKind::TxRollback => "tx-rollback",
            EventKind::ProtocolClient => "protocol-client",
            EventKind::ProtocolServer => "protocol-server",
            EventKind::FilterReport => "filter-report",
            EventKind::FilterResponse => "filter-response",
            EventKind::Timeout => "timeout",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|e| e.name() == name)
    }

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// One end of a connection as OpenSMTPD prints it: `1.2.3.4`, `[::1]`, or `local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Inet(SocketAddr),
    /// The local submission socket, with its path.
    Unix(String),
}

impl Endpoint {
    /// The address alone, as in the `connect` request and the `src` builtin condition.
    pub fn addr_text(&self) -> String {
        match self {
            Endpoint::Inet(sa) => ip_text(sa.ip()),
            Endpoint::Unix(_) => "local".into(),
        }
    }

    /// `ADDR:PORT` or `unix:PATH`, as in `link-connect`.
    fn link_text(&self) -> String {
        match self {
            Endpoint::Inet(sa) => format!("{}:{}", ip_text(sa.ip()), sa.port()),
            Endpoint::Unix(path) => format!("unix:{path}"),
        }
    }
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `pass`, `fail` or `error` in `link-connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fcrdns {
    Pass,
    Fail,
    Error,
}

/// `ok`, `permfail` or `tempfail` in the tx-* events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxResult {
    Ok,
    PermFail,
    TempFail,
}

/// `pass`, `fail` or `error` in `link-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAuthResult {
    Pass,
    Fail,
    Error,
}

/// Who produced a `filter-report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReporterKind {
    Builtin,
    Proc,
}

/// The decision names of `filter-response` reports and `filter-result` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseKind {
    Proceed,
    Report,
    Junk,
    Rewrite,
    Reject,
    Disconnect,
}

impl ResponseKind {
    pub fn name(self) -> &'static str {
        match self {
            ResponseKind::Proceed => "proceed",
            ResponseKind::Report => "report",
            ResponseKind::Junk => "junk",
            ResponseKind::Rewrite => "rewrite",
            ResponseKind::Reject => "reject",
            ResponseKind::Disconnect => "disconnect",
        }
    }
}

/// A report event with its parameters. Values that came from the network (HELO names,
/// addresses, commands) are written as they are: the protocol has no escaping, and `|` is
/// allowed in the last field only, which is where OpenSMTPD puts them too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report<'a> {
    LinkConnect { rdns: &'a str, fcrdns: Fcrdns, src: &'a Endpoint, dest: &'a Endpoint },
    LinkDisconnect,
    LinkGreeting { hostname: &'a str },
    LinkIdentify { ehlo: bool, identity: &'a str },
    LinkTls { tls: &'a str },
    LinkAuth { result: LinkAuthResult, username: &'a str },
    TxReset { msgid: u32 },
    TxBegin { msgid: u32 },
    TxMail { msgid: u32, result: TxResult, address: &'a str },
    TxRcpt { msgid: u32, result: TxResult, address: &'a str },
    TxEnvelope { msgid: u32, envelope_id: u64 },
    TxData { msgid: u32, result: TxResult },
    TxCommit { msgid: u32, size: usize },
    TxRollback { msgid: u32 },
    ProtocolClient { command: &'a str },
    ProtocolServer { response: &'a str },
    FilterReport { kind: ReporterKind, name: &'a str, message: &'a str },
    FilterResponse { phase: Phase, response: ResponseKind, param: Option<&'a str> },
    Timeout,
}

impl Report<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Report::LinkConnect { .. } => EventKind::LinkConnect,
            Report::LinkDisconnect => EventKind::LinkDisconnect,
            Report::LinkGreeting { .. } => EventKind::LinkGreeting,
            Report::LinkIdentify { .. } => EventKind::LinkIdentify,
            Report::LinkTls { .. } => EventKind::LinkTls,
            Report::LinkAuth { .. } => EventKind::LinkAuth,
            Report::TxReset { .. } => EventKind::TxReset,
            Report::TxBegin { .. } => EventKind::TxBegin,
            Report::TxMail { .. } => EventKind::TxMail,
            Report::TxRcpt { .. } => EventKind::TxRcpt,
            Report::TxEnvelope { .. } => EventKind::TxEnvelope,
            Report::TxData { .. } => EventKind::TxData,
            Report::TxCommit { .. } => EventKind::TxCommit,
            Report::TxRollback { .. } => EventKind::TxRollback,
            Report::ProtocolClient { .. } => EventKind::ProtocolClient,
            Report::ProtocolServer { .. } => EventKind::ProtocolServer,
            Report::FilterReport { .. } => EventKind::FilterReport,
            Report::FilterResponse { .. } => EventKind::FilterResponse,
            Report::Timeout => EventKind::Timeout,
        }
    }

    /// The parameters after the session id, each preceded by `|` (none for
    /// link-disconnect and timeout, as OpenSMTPD writes them).
    fn write_params(&self, out: &mut String) {
        let tx = |r: TxResult| match r {
            TxResult::Ok => "ok",
            TxResult::PermFail => "permfail",
            TxResult::TempFail => "tempfail",
        };
        let _ = match self {
            Report::LinkConnect { rdns, fcrdns, src, dest } => {
                let f = match fcrdns {
                    Fcrdns::Pass => "pass",
                    Fcrdns::Fail => "fail",
                    Fcrdns::Error => "error",
                };
                write!(out, "|{rdns}|{f}|{}|{}", src.link_text(), dest.link_text())
            }
            Report::LinkDisconnect | Report::Timeout => Ok(()),
            Report::LinkGreeting { hostname } => write!(out, "|{hostname}"),
            Report::LinkIdentify { ehlo, identity } => {
                write!(out, "|{}|{identity}", if *ehlo { "EHLO" } else { "HELO" })
            }
            Report::LinkTls { tls } => write!(out, "|{tls}"),
            Report::LinkAuth { result, username } => {
                let r = match result {
                    LinkAuthResult::Pass => "pass",
                    LinkAuthResult::Fail => "fail",
                    LinkAuthResult::Error => "error",
                };
                write!(out, "|{r}|{username}")
            }
            Report::TxReset { msgid } | Report::TxBegin { msgid } | Report::TxRollback { msgid } => {
                write!(out, "|{msgid:08x}")
            }
            Report::TxMail { msgid, result, address } | Report::TxRcpt { msgid, result, address } => {
                write!(out, "|{msgid:08x}|{}|{address}", tx(*result))
            }
            Report::TxEnvelope { msgid, envelope_id } => write!(out, "|{msgid:08x}|{envelope_id:016x}"),
            Report::TxData { msgid, result } => write!(out, "|{msgid:08x}|{}", tx(*result)),
            Report::TxCommit { msgid, size } => write!(out, "|{msgid:08x}|{size}"),
            Report::ProtocolClient { command } => write!(out, "|{command}"),
            Report::ProtocolServer { response } => write!(out, "|{response}"),
            Report::FilterReport { kind, name, message } => {
                let k = match kind {
                    ReporterKind::Builtin => "builtin",
                    ReporterKind::Proc => "proc",
                };
                write!(out, "|{k}|{name}|{message}")
            }
            Report::FilterResponse { phase, response, param } => {
                let _ = write!(out, "|{}|{}", phase.response_name(), response.name());
                match param {
                    Some(p) => write!(out, "|{p}"),
                    None => Ok(()),
                }
            }
        };
    }
}

/// Wall-clock time as the protocol prints it: `SECONDS.MICROSECONDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp(pub Duration);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0.as_secs(), self.0.subsec_micros())
    }
}

/// A 64-bit session id or token, printed as OpenSMTPD's `%016llx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The handshake mxd writes to a filter when it starts (lka_proc_config). `admd` is the
/// authserv-id OpenSMTPD 7.5+ announces (its host name by default); filters that do not
/// know the key ignore it, as smtpd-filters(7) requires.
pub fn handshake(session_timeout_secs: u64, admd: &str) -> String {
    format!(
        "config|smtpd-version|{SMTPD_VERSION}\nconfig|protocol|{VERSION}\n\
         config|smtp-session-timeout|{session_timeout_secs}\nconfig|subsystem|smtp-in\n\
         config|admd|{admd}\nconfig|ready\n"
    )
}

/// Appends one report line, newline included.
pub fn write_report(out: &mut String, ts: Timestamp, session: Id, report: &Report<'_>) {
    let _ = write!(out, "report|{VERSION}|{ts}|smtp-in|{}|{session}", report.kind().name());
    report.write_params(out);
    out.push('\n');
}

/// Appends one data-line request, newline included: `line` is one line of the message,
/// dot-stuffed, as the client sent its bytes (OpenSMTPD passes 8-bit text through as is).
pub fn write_dataline(out: &mut Vec<u8>, ts: Timestamp, session: Id, token: Id, line: &[u8]) {
    write_dataline_head(out, ts, session, token);
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// What comes before the line in a data-line request (the same for a batch of lines).
pub fn write_dataline_head(out: &mut Vec<u8>, ts: Timestamp, session: Id, token: Id) {
    let _ = write!(out, "filter|{VERSION}|{ts}|smtp-in|data-line|{session}|{token}|");
}

/// Appends one filter request, newline included. `param` is the phase's parameter as
/// OpenSMTPD sends it (for connect: `RDNS|SRC`; mail-from and rcpt-to: the address without
/// angle brackets; data and commit: empty).
pub fn write_request(out: &mut String, ts: Timestamp, phase: Phase, session: Id, token: Id, param: &str) {
    let _ = writeln!(out, "filter|{VERSION}|{ts}|smtp-in|{}|{session}|{token}|{param}", phase.name());
}

/// A filter's answer in a `filter-result` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    Proceed,
    Junk,
    Reject(&'a str),
    Disconnect(&'a str),
    Rewrite(&'a str),
    Report(&'a str),
}

/// What a filter registers during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Report(EventKind),
    Filter(Phase),
    Ready,
}

/// One line of a filter's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<'a> {
    Register(Register),
    Result {
        session: Id,
        token: Id,
        response: Response<'a>,
    },
    /// A line of the message as the filter wrote it: bytes, as OpenSMTPD passes them.
    DataLine {
        session: Id,
        token: Id,
        line: &'a [u8],
    },
    /// `report|TIMESTAMP|smtp-in|SESSION|MESSAGE`: a filter's own report, relayed to the
    /// others as `filter-report`.
    Report {
        session: Id,
        message: &'a str,
    },
}

/// Why a line from a filter was refused. Each one means the filter is misbehaving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_LINE`].
    TooLong,
    /// Not UTF-8, in a line other than a data line (those carry the message's bytes).
    NotUtf8,
    /// A CR inside the line, or a NUL outside a data line.
    ControlByte,
    /// The first field is none of register, filter-result, filter-dataline, report.
    UnknownKind,
    /// `register|…` naming something that is not a stream, subsystem, phase or event.
    BadRegister,
    /// A session id or token that is not 1 to 16 hex digits.
    BadId,
    /// A filter-result decision that is not one of the six, or lacks its parameter.
    BadDecision,
    /// A report line whose timestamp or subsystem is malformed.
    BadReport,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineError::TooLong => "line too long",
            LineError::NotUtf8 => "line is not UTF-8",
            LineError::ControlByte => "NUL or CR in line",
            LineError::UnknownKind => "invalid filter message type",
            LineError::BadRegister => "invalid register line",
            LineError::BadId => "invalid session id or token",
            LineError::BadDecision => "invalid filter-result decision",
            LineError::BadReport => "invalid report line",
        })
    }
}

impl std::error::Error for LineError {}

/// Parses one line of filter output (without its newline).
pub fn parse_output(line: &[u8]) -> Result<Output<'_>, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    if let Some(rest) = line.strip_prefix(b"filter-dataline|") {
        // The message's own bytes: 8-bit text and NULs pass, as the client sent them; a CR
        // cannot (the session never sends one inside a line).
        if memchr::memchr(b'\r', rest).is_some() {
            return Err(LineError::ControlByte);
        }
        let (session, token, line) = ids(rest)?;
        return Ok(Output::DataLine { session, token, line });
    }
    if memchr::memchr2(0, b'\r', line).is_some() {
        return Err(LineError::ControlByte);
    }
    let line = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let (kind, rest) = line.split_once('|').ok_or(LineError::UnknownKind)?;
    match kind {
        "register" => parse_register(rest).map(Output::Register),
        "filter-result" => {
            let (session, token, rest) = ids(rest.as_bytes())?;
            // `rest` ends on a field boundary of a str, so it is UTF-8 too.
            let rest = std::str::from_utf8(rest).map_err(|_| LineError::NotUtf8)?;
            Ok(Output::Result { session, token, response: parse_response(rest)? })
        }
        "report" => parse_report(rest),
        _ => Err(LineError::UnknownKind),
    }
}

fn parse_register(rest: &str) -> Result<Register, LineError> {
    if rest == "ready" {
        return Ok(Register::Ready);
    }
    let mut it = rest.splitn(3, '|');
    let (stream, subsystem, name) = (it.next(), it.next(), it.next());
    // OpenSMTPD compares the subsystem without case for filters; smtp-out has no filters.
    if !subsystem.is_some_and(|s| s.eq_ignore_ascii_case("smtp-in")) {
        return Err(LineError::BadRegister);
    }
    let name = name.ok_or(LineError::BadRegister)?;
    match stream {
        Some("report") => EventKind::from_name(name).map(Register::Report),
        Some("filter") => Phase::from_name(name).map(Register::Filter),
        _ => None,
    }
    .ok_or(LineError::BadRegister)
}

fn parse_id(s: &[u8]) -> Result<Id, LineError> {
    if s.is_empty() || s.len() > 16 {
        return Err(LineError::BadId);
    }
    s.iter().try_fold(0u64, |n, &b| Ok((n << 4) | u64::from(hex_digit(b)?))).map(Id)
}

fn hex_digit(b: u8) -> Result<u8, LineError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(LineError::BadId),
    }
}

/// `SESSION|TOKEN|REST`.
fn ids(rest: &[u8]) -> Result<(Id, Id, &[u8]), LineError> {
    let mut it = rest.splitn(3, |b| *b == b'|');
    let session = parse_id(it.next().unwrap_or_default())?;
    let token = parse_id(it.next().unwrap_or_default())?;
    let rest = it.next().ok_or(LineError::BadId)?;
    Ok((session, token, rest))
}

fn parse_response(s: &str) -> Result<Response<'_>, LineError> {
    match s {
        "proceed" => return Ok(Response::Proceed),
        "junk" => return Ok(Response::Junk),
        _ => {}
    }
    let (decision, param) = s.split_once('|').ok_or(LineError::BadDecision)?;
    match decision {
        "reject" => Ok(Response::Reject(param)),
        "disconnect" => Ok(Response::Disconnect(param)),
        "rewrite" => Ok(Response::Rewrite(param)),
        "report" => Ok(Response::Report(param)),
        _ => Err(LineError::BadDecision),
    }
}

/// `report|SECONDS.MICROS|smtp-in|SESSION|MESSAGE` (lka_report_proc: six digits of
/// microseconds, smtp-in only).
fn parse_report(rest: &str) -> Result<Output<'_>, LineError> {
    let mut it = rest.splitn(4, '|');
    let ts = it.next().unwrap_or("");
    let (secs, micros) = ts.split_once('.').ok_or(LineError::BadReport)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || secs.len() > 19 || micros.len() != 6 || !digits(micros) {
        return Err(LineError::BadReport);
    }
    if it.next() != Some("smtp-in") {
        return Err(LineError::BadReport);
    }
    let session = parse_id(it.next().unwrap_or("").as_bytes())?;
    let message = it.next().ok_or(LineError::BadReport)?;
    Ok(Output::Report { session, message })
}

/// Whether `reply` is what OpenSMTPD accepts from a reject or disconnect decision
/// (valid_smtp_response, then a 4xx or 5xx): three digits, a space, some text.
pub fn valid_refusal(reply: &str) -> bool {
    let b = reply.as_bytes();
    b.len() >= 5
        && (b[0] == b'4' || b[0] == b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b' '
        && !reply.bytes().any(|c| c.is_ascii_control())
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
