//! smtpd-tables(7), protocol 0.1, as OpenSMTPD 7.x speaks it to a `proc-exec:` table: the
//! lines of the handshake, the requests and the parsing of the answers. No I/O here
//! (`proc_io.rs` runs the program).
//!
//! Handshake: we send `config|…` lines ending with `config|ready`; the table answers with
//! `register|SERVICE` lines ending with `register|ready`. Then each request is
//! `table|0.1|TIMESTAMP|TABLE|OP|SERVICE|ID[|KEY]` and each answer
//! `OP-result|ID|found[|VALUE]`, `…|not-found` or `…|error[|WHY]`.

use std::fmt;

pub const PROTOCOL: &str = "0.1";
/// The OpenSMTPD release whose protocol this is, sent as `smtpd-version`.
pub const SMTPD_VERSION: &str = "7.6.0";
/// A line longer than this from the table is a broken table (a credentials line or an
/// alias list fits many times over).
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableOp {
    Check,
    Lookup,
    Fetch,
}

impl TableOp {
    fn as_str(self) -> &'static str {
        match self {
            TableOp::Check => "check",
            TableOp::Lookup => "lookup",
            TableOp::Fetch => "fetch",
        }
    }
}

/// The services mxd asks a table process for (table(5) and smtpd-tables(7) names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableService {
    /// `check` of `user:password`: the table verifies the login itself.
    Auth,
    /// `user` → `user:hash` (listen auth) or `label` → `user:password` (relay auth).
    Credentials,
    /// `domain` → relay URL (relay `domain <t>`).
    Relayhost,
    /// `fetch`: the next source address (relay `src <t>`).
    Source,
    /// address → host name (relay `helo-src <t>`).
    Addrname,
    /// `alias <t>` and `virtual <t>`: a name or address → its expansion.
    Alias,
    /// `userbase <t>`: a user → `uid:gid:home`.
    Userinfo,
    /// `senders <t>`: a user → the addresses it may send as.
    Mailaddrmap,
    /// `match … for domain`, `rdns`, `helo`: `check` of a domain.
    Domain,
    /// `match from src`: `check` of an address.
    Netaddr,
    /// `match mail-from`, `rcpt-to`: `check` of an address.
    Mailaddr,
    /// `match tag`: `check` of a name.
    String,
    /// `match … regex <t>`: `check` of the subject.
    Regex,
}

impl TableService {
    pub fn as_str(self) -> &'static str {
        match self {
            TableService::Auth => "auth",
            TableService::Credentials => "credentials",
            TableService::Relayhost => "relayhost",
            TableService::Source => "source",
            TableService::Addrname => "addrname",
            TableService::Alias => "alias",
            TableService::Userinfo => "userinfo",
            TableService::Mailaddrmap => "mailaddrmap",
            TableService::Domain => "domain",
            TableService::Netaddr => "netaddr",
            TableService::Mailaddr => "mailaddr",
            TableService::String => "string",
            TableService::Regex => "regex",
        }
    }
}

/// What the table said to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableAnswer {
    /// `found`, with the value (empty for a check).
    Found(String),
    NotFound,
    /// `error`: the table could not answer (its database is down…), a temporary failure.
    Error(String),
}

/// A line from the table that is not the protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct TableProtocolError(pub String);

impl fmt::Display for TableProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table protocol error: {}", self.0)
    }
}

/// The lines that open the handshake.
pub fn handshake(table: &str) -> String {
    format!(
        "config|smtpd-version|{SMTPD_VERSION}\nconfig|protocol|{PROTOCOL}\nconfig|tablename|{table}\nconfig|ready\n"
    )
}

/// One line of the table's half of the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum TableRegister {
    Service(String),
    Ready,
}

pub fn parse_register(line: &str) -> Result<TableRegister, TableProtocolError> {
    match line.split_once('|') {
        Some(("register", "ready")) => Ok(TableRegister::Ready),
        Some(("register", s)) if !s.is_empty() && !s.contains('|') => Ok(TableRegister::Service(s.to_owned())),
        _ => {
            Err(TableProtocolError(format!("expected 'register|SERVICE' or 'register|ready', got '{}'", excerpt(line))))
        }
    }
}

/// A key the protocol cannot carry: a line break would split the request.
pub fn key_ok(key: &str) -> bool {
    !key.contains(['\n', '\r', '\0'])
}

/// One request line. `key` is the last field (it may hold `|`); `fetch` has none.
/// `now` is the time as seconds and microseconds since the epoch.
pub fn request(
    table: &str,
    op: TableOp,
    service: TableService,
    id: &str,
    key: Option<&str>,
    now: (u64, u32),
) -> String {
    let mut line = format!("table|{PROTOCOL}|{}.{:06}|{table}|{}|{}|{id}", now.0, now.1, op.as_str(), service.as_str());
    if let Some(k) = key {
        line.push('|');
        line.push_str(k);
    }
    line.push('\n');
    line
}

/// An answer line: the request id it answers and what it says. The man page's own fetch
/// example answers with `lookup-result`, so a fetch accepts both names.
pub fn parse_answer(op: TableOp, line: &str) -> Result<(String, TableAnswer), TableProtocolError> {
    let bad = || TableProtocolError(format!("expected '{}-result|ID|…', got '{}'", op.as_str(), excerpt(line)));
    let mut fields = line.splitn(4, '|');
    let kind = fields.next().unwrap_or("");
    let expected = match op {
        TableOp::Fetch => kind == "fetch-result" || kind == "lookup-result",
        _ => kind.strip_suffix("-result") == Some(op.as_str()),
    };
    if !expected {
        return Err(bad());
    }
    let id = fields.next().filter(|id| !id.is_empty()).ok_or_else(bad)?;
    let outcome = match (fields.next(), fields.next()) {
        (Some("found"), value) if op != TableOp::Check || value.is_none() => {
            TableAnswer::Found(value.unwrap_or("").to_owned())
        }
        (Some("not-found"), None) => TableAnswer::NotFound,
        (Some("error"), why) => TableAnswer::Error(why.unwrap_or("no reason given").to_owned()),
        _ => return Err(bad()),
    };
    Ok((id.to_owned(), outcome))
}

fn excerpt(line: &str) -> String {
    line.chars().take(80).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            handshake("devs"),
            "config|smtpd-version|7.6.0\nconfig|protocol|0.1\nconfig|tablename|devs\nconfig|ready\n"
        );
        assert_eq!(
            request("devs", TableOp::Lookup, TableService::Credentials, "1a", Some("op|x"), (1713795082, 354255)),
            "table|0.1|1713795082.354255|devs|lookup|credentials|1a|op|x\n"
        );
        assert_eq!(
            request("devs", TableOp::Fetch, TableService::Credentials, "2", None, (1, 5)),
            "table|0.1|1.000005|devs|fetch|credentials|2\n"
        );
        assert!(!key_ok("a\nb") && key_ok("a|b"));
    }

    #[test]
    fn answers() {
        assert_eq!(parse_register("register|alias"), Ok(TableRegister::Service("alias".into())));
        assert_eq!(parse_register("register|ready"), Ok(TableRegister::Ready));
        assert!(parse_register("config|ready").is_err() && parse_register("register|").is_err());
        assert_eq!(
            parse_answer(TableOp::Lookup, "lookup-result|f9|found|1000:1000:/home/op|x"),
            Ok(("f9".into(), TableAnswer::Found("1000:1000:/home/op|x".into())))
        );
        assert_eq!(parse_answer(TableOp::Check, "check-result|e5|not-found"), Ok(("e5".into(), TableAnswer::NotFound)));
        assert_eq!(
            parse_answer(TableOp::Check, "check-result|e5|found"),
            Ok(("e5".into(), TableAnswer::Found(String::new())))
        );
        assert_eq!(
            parse_answer(TableOp::Lookup, "lookup-result|7|error|db down"),
            Ok(("7".into(), TableAnswer::Error("db down".into())))
        );
        assert_eq!(
            parse_answer(TableOp::Fetch, "lookup-result|3|found|10.0.0.8").map(|a| a.1),
            Ok(TableAnswer::Found("10.0.0.8".into()))
        );
        for bad in [
            "",
            "lookup-result",
            "lookup-result||found|x",
            "check-result|1|found",
            "lookup-result|1|maybe",
            "lookup-result|1|not-found|x",
        ] {
            assert!(parse_answer(TableOp::Lookup, bad).is_err(), "{bad}");
        }
        assert!(parse_answer(TableOp::Check, "check-result|1|found|extra").is_err());
    }
}
