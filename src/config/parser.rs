//! Statements of smtpd.conf(5) into a `Parsed` value; meaning is checked afterwards
//! (check.rs). On a syntax error the parser records FILE:LINE and skips to the next line,
//! so one run reports every broken line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lexer::{lex, Tok, Token};
use super::{
    Action, Cond, CondKind, Error, ErrorKind, Errors, ListenAuth, Matcher, Method, Origin, Relay, RelayUrl, Rule,
    Scheme, TlsMode, Verdict,
};

const MAX_INCLUDE_DEPTH: usize = 8;

/// A `table` statement, not yet loaded.
#[derive(Debug)]
pub(crate) enum TableDef {
    List(Vec<String>),
    Mapping(Vec<(String, String)>),
    File(PathBuf),
}

#[derive(Debug)]
pub(crate) struct ListenSpec {
    pub(crate) at: Origin,
    /// "socket", an interface name or an address.
    pub(crate) on: String,
    pub(crate) port: Option<u16>,
    pub(crate) family: Option<u8>,
    pub(crate) tls: TlsMode,
    pub(crate) pki: Option<String>,
    pub(crate) ca: Option<String>,
    pub(crate) hostname: Option<String>,
    pub(crate) auth: Option<ListenAuth>,
    pub(crate) tag: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct PkiParts {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<(PathBuf, Origin)>,
}

/// Everything the statements said, in order, with where they said it.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) file: PathBuf,
    pub(crate) hostname: Option<String>,
    pub(crate) spool: Option<PathBuf>,
    pub(crate) threads: Option<usize>,
    pub(crate) max_message_size: Option<u64>,
    pub(crate) max_rcpt: Option<usize>,
    pub(crate) sub_addr_delim: Option<char>,
    pub(crate) queue_ttl: Option<Duration>,
    pub(crate) tables: Vec<(Origin, String, TableDef)>,
    pub(crate) pkis: BTreeMap<String, (Origin, PkiParts)>,
    pub(crate) cas: Vec<(Origin, String, PathBuf)>,
    pub(crate) listeners: Vec<ListenSpec>,
    pub(crate) actions: Vec<Action>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) errors: Vec<Error>,
}

pub(crate) fn parse_file(path: &Path, defines: &[(String, String)]) -> Result<Parsed, Errors> {
    let mut macros: BTreeMap<String, String> = defines.iter().cloned().collect();
    let fixed: BTreeSet<String> = defines.iter().map(|(k, _)| k.clone()).collect();
    let mut out = Parsed { file: path.to_owned(), ..Parsed::default() };
    include(path, &mut macros, &fixed, &mut out, 0, None);
    Ok(out)
}

fn include(
    path: &Path,
    macros: &mut BTreeMap<String, String>,
    fixed: &BTreeSet<String>,
    out: &mut Parsed,
    depth: usize,
    from: Option<&Origin>,
) {
    let fail = |out: &mut Parsed, kind| {
        let (file, line) = from.map_or((path.to_owned(), 0), |o| (o.file.clone(), o.line));
        out.errors.push(Error { file, line, kind });
    };
    if depth > MAX_INCLUDE_DEPTH {
        return fail(out, ErrorKind::IncludeDepth);
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(out, ErrorKind::File { path: path.to_owned(), error: e.to_string() }),
    };
    let tokens = match lex(&text, macros, fixed) {
        Ok(t) => t,
        Err((line, kind)) => return out.errors.push(Error { file: path.to_owned(), line, kind }),
    };
    let mut p = Parser { toks: &tokens, pos: 0, file: path };
    while p.pos < tokens.len() {
        if p.peek() == &Tok::Newline {
            p.pos += 1;
            continue;
        }
        let line = p.line();
        match statement(&mut p, out) {
            Ok(Some(inc)) => {
                let at = Origin { file: path.to_owned(), line };
                include(&inc, macros, fixed, out, depth + 1, Some(&at));
            }
            Ok(None) => {}
            Err(kind) => {
                out.errors.push(Error { file: path.to_owned(), line: p.line(), kind });
                p.skip_line();
            }
        }
    }
}

struct Parser<'a> {
    toks: &'a [Token],
    pos: usize,
    file: &'a Path,
}

type R<T> = Result<T, ErrorKind>;

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Punct(c) => format!("'{c}'"),
        Tok::Newline => "end of line".to_owned(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::Newline, |t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks.get(self.pos).or(self.toks.last()).map_or(1, |t| t.line)
    }

    fn origin(&self) -> Origin {
        Origin { file: self.file.to_owned(), line: self.line() }
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn err<T>(&self, expected: &str) -> R<T> {
        Err(ErrorKind::Syntax { expected: expected.to_owned(), found: describe(self.peek()) })
    }

    /// A word or a quoted string.
    fn value(&mut self, expected: &str) -> R<String> {
        match self.peek() {
            Tok::Word(_) | Tok::Str(_) => match self.bump() {
                Tok::Word(w) | Tok::Str(w) => Ok(w),
                _ => unreachable!("peeked a word"),
            },
            _ => self.err(expected),
        }
    }

    /// The next unquoted word, if it is one of `words` (keywords are never quoted).
    fn keyword(&mut self, words: &[&str]) -> Option<String> {
        if let Tok::Word(w) = self.peek() {
            if words.contains(&w.as_str()) {
                let w = w.clone();
                self.pos += 1;
                return Some(w);
            }
        }
        None
    }

    fn expect_word(&mut self, word: &str) -> R<()> {
        match self.keyword(&[word]) {
            Some(_) => Ok(()),
            None => self.err(&format!("'{word}'")),
        }
    }

    fn punct(&mut self, c: char) -> bool {
        if self.peek() == &Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn end(&mut self) -> R<()> {
        if self.peek() == &Tok::Newline {
            self.pos += 1;
            Ok(())
        } else {
            self.err("end of line")
        }
    }

    fn skip_line(&mut self) {
        while self.pos < self.toks.len() && self.bump() != Tok::Newline {}
    }

    /// `<name>`
    fn table_ref(&mut self) -> R<String> {
        if !self.punct('<') {
            return self.err("a table reference <name>");
        }
        let name = self.value("a table name")?;
        if !self.punct('>') {
            return self.err("'>' closing the table reference");
        }
        Ok(name)
    }

    fn opt_table_ref(&mut self) -> R<Option<String>> {
        if self.peek() == &Tok::Punct('<') {
            self.table_ref().map(Some)
        } else {
            Ok(None)
        }
    }

    fn matcher(&mut self) -> R<Matcher> {
        if self.peek() == &Tok::Punct('<') {
            self.table_ref().map(Matcher::Table)
        } else {
            self.value("a table <name> or a value").map(Matcher::Value)
        }
    }

    fn skip_newlines(&mut self) {
        while self.peek() == &Tok::Newline && self.pos < self.toks.len() {
            self.pos += 1;
        }
    }

    /// `{ a, b }` or `{ k = v, … }`.
    fn inline_table(&mut self) -> R<TableDef> {
        let (mut list, mut map) = (Vec::new(), Vec::new());
        loop {
            self.skip_newlines();
            if self.punct('}') {
                break;
            }
            let key = self.value("a table entry or '}'")?;
            if self.punct('=') {
                map.push((key, self.value("a value after '='")?));
            } else {
                list.push(key);
            }
            self.skip_newlines();
            if !self.punct(',') {
                self.skip_newlines();
                if self.punct('}') {
                    break;
                }
                return self.err("',' or '}'");
            }
        }
        match (list.is_empty(), map.is_empty()) {
            (_, true) => Ok(TableDef::List(list)),
            (true, false) => Ok(TableDef::Mapping(map)),
            (false, false) => self.err("entries of one kind (all 'key = value' or all plain values)"),
        }
    }
}

/// One statement; returns a file to include, if the statement is `include`.
fn statement(p: &mut Parser<'_>, out: &mut Parsed) -> R<Option<PathBuf>> {
    // `name = value` lines were taken by the lexer as macro definitions.
    if matches!(p.toks.get(p.pos + 1).map(|t| &t.tok), Some(Tok::Punct('='))) {
        p.skip_line();
        return Ok(None);
    }
    let Tok::Word(word) = p.peek().clone() else {
        return p.err("a statement keyword");
    };
    p.pos += 1;
    match word.as_str() {
        "include" => {
            let file = p.value("a file name")?;
            p.end()?;
            return Ok(Some(PathBuf::from(file)));
        }
        "table" => table(p, out)?,
        "pki" => pki(p, out)?,
        "ca" => {
            let at = p.origin();
            let name = p.value("a ca name")?;
            p.expect_word("cert")?;
            out.cas.push((at, name, PathBuf::from(p.value("a certificate file")?)));
        }
        "listen" => listen(p, out)?,
        "action" => action(p, out)?,
        "match" => rule(p, out)?,
        "smtp" => smtp(p, out)?,
        "queue" => {
            p.expect_word("ttl")?;
            out.queue_ttl = Some(duration(&p.value("a duration")?)?);
        }
        "spool" => out.spool = Some(PathBuf::from(p.value("a directory")?)),
        "hostname" => out.hostname = Some(p.value("a host name")?),
        "threads" => {
            let v = p.value("a number of threads")?;
            let n = v.parse::<usize>().ok().filter(|n| (1..=1024).contains(n));
            out.threads = Some(n.ok_or(ErrorKind::BadValue {
                what: "threads",
                value: v,
                expected: "a number from 1 to 1024",
            })?);
        }
        "srs" | "mta" | "proc" | "proc-exec" | "filter" | "bounce" => {
            return Err(ErrorKind::Unsupported(format!("'{word}'")))
        }
        _ => {
            p.pos -= 1;
            return p.err("a statement (include, table, pki, ca, listen, action, match, smtp, queue, spool, threads, hostname or name = value)");
        }
    }
    p.end()?;
    Ok(None)
}

fn table(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("a table name")?;
    let def = if p.punct('{') {
        p.inline_table()?
    } else {
        let spec = p.value("'{', or a table source such as file:/path")?;
        match spec.split_once(':') {
            Some(("file", path)) => TableDef::File(PathBuf::from(path)),
            Some((kind, _)) if !kind.contains('/') => {
                return Err(ErrorKind::Unsupported(format!("table backend '{kind}'")))
            }
            _ => TableDef::File(PathBuf::from(spec)),
        }
    };
    out.tables.push((at, name, def));
    Ok(())
}

fn pki(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("a pki name")?;
    let what = p.keyword(&["cert", "key", "dhe"]).map_or_else(|| p.err("'cert' or 'key'"), Ok)?;
    let file = p.value("a file name")?;
    let entry = out.pkis.entry(name).or_insert_with(|| (at.clone(), PkiParts::default()));
    match what.as_str() {
        "cert" => entry.1.cert = Some(PathBuf::from(file)),
        "key" => entry.1.key = Some((PathBuf::from(file), at)),
        _ => {} // dhe: rustls picks its own key exchange
    }
    Ok(())
}

fn port(v: &str) -> R<u16> {
    v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| ErrorKind::BadValue {
        what: "port",
        value: v.to_owned(),
        expected: "a number from 1 to 65535",
    })
}

fn listen(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    p.expect_word("on")?;
    let on = p.value("an interface, an address or 'socket'")?;
    let mut l = ListenSpec {
        at,
        on,
        port: None,
        family: None,
        tls: TlsMode::Plain,
        pki: None,
        ca: None,
        hostname: None,
        auth: None,
        tag: None,
    };
    while p.peek() != &Tok::Newline {
        let Some(opt) = p.keyword(&[
            "port",
            "tls",
            "tls-require",
            "smtps",
            "pki",
            "ca",
            "hostname",
            "auth",
            "auth-optional",
            "tag",
            "inet4",
            "inet6",
            "family",
        ]) else {
            return p.err(
                "a listen option (port, tls, tls-require, smtps, pki, ca, hostname, auth, auth-optional, tag, family)",
            );
        };
        match opt.as_str() {
            "port" => l.port = Some(port(&p.value("a port")?)?),
            "tls" => l.tls = TlsMode::StartTls,
            "tls-require" => l.tls = TlsMode::Require { verify: p.keyword(&["verify"]).is_some() },
            "smtps" => {
                p.keyword(&["verify"]);
                l.tls = TlsMode::Smtps;
            }
            "pki" => l.pki = Some(p.value("a pki name")?),
            "ca" => l.ca = Some(p.value("a ca name")?),
            "hostname" => l.hostname = Some(p.value("a host name")?),
            "auth" | "auth-optional" => {
                l.auth = Some(ListenAuth { table: p.opt_table_ref()?, optional: opt == "auth-optional" })
            }
            "tag" => l.tag = Some(p.value("a tag")?),
            "inet4" => l.family = Some(4),
            "inet6" => l.family = Some(6),
            _ => {
                l.family = match p.keyword(&["inet4", "inet6"]).as_deref() {
                    Some("inet4") => Some(4),
                    Some(_) => Some(6),
                    None => return p.err("'inet4' or 'inet6'"),
                }
            }
        }
    }
    out.listeners.push(l);
    Ok(())
}

const ACTION_OPTIONS: &[&str] = &["alias", "virtual", "userbase", "user", "ttl", "junk", "wrapper"];

fn action(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("an action name")?;
    let Some(kind) = p.keyword(&["maildir", "mbox", "lmtp", "mda", "forward-only", "expand-only", "relay"]) else {
        return p.err("a delivery method (maildir, mbox, lmtp, mda, forward-only, expand-only, relay)");
    };
    let method = match kind.as_str() {
        "maildir" => {
            let path = match p.peek() {
                Tok::Str(_) => Some(p.value("a path")?),
                Tok::Word(w) if !ACTION_OPTIONS.contains(&w.as_str()) => Some(p.value("a path")?),
                _ => None,
            };
            Method::Maildir { path, junk: p.keyword(&["junk"]).is_some() }
        }
        "mbox" => Method::Mbox,
        "lmtp" => Method::Lmtp { dest: p.value("an LMTP destination")?, rcpt_to: p.keyword(&["rcpt-to"]).is_some() },
        "mda" => Method::Mda(p.value("a command")?),
        "forward-only" => Method::ForwardOnly,
        "expand-only" => Method::ExpandOnly,
        _ => Method::Relay(relay(p)?),
    };
    let mut a = Action { name, at, method, alias: None, virtual_: None, userbase: None, user: None, ttl: None };
    while p.peek() != &Tok::Newline {
        let Some(opt) = p.keyword(ACTION_OPTIONS) else {
            return p.err("an action option (alias, virtual, userbase, user, ttl)");
        };
        match opt.as_str() {
            "alias" => a.alias = Some(p.table_ref()?),
            "virtual" => a.virtual_ = Some(p.table_ref()?),
            "userbase" => a.userbase = Some(p.table_ref()?),
            "user" => a.user = Some(p.value("a user name")?),
            "ttl" => a.ttl = Some(duration(&p.value("a duration")?)?),
            "junk" => {}
            _ => return Err(ErrorKind::Unsupported("'wrapper'".into())),
        }
    }
    if a.alias.is_some() && a.virtual_.is_some() {
        return Err(ErrorKind::Syntax { expected: "either alias or virtual, not both".into(), found: "both".into() });
    }
    out.actions.push(a);
    Ok(())
}

fn relay(p: &mut Parser<'_>) -> R<Relay> {
    let mut r = Relay::default();
    loop {
        let Some(opt) = p.keyword(&[
            "host",
            "backup",
            "tls",
            "src",
            "helo",
            "helo-src",
            "auth",
            "mail-from",
            "pki",
            "ca",
            "srs",
            "domain",
        ]) else {
            return Ok(r);
        };
        match opt.as_str() {
            "host" => r.host = Some(relay_url(&p.value("a relay URL")?)?),
            "tls" => {
                r.tls = true;
                r.no_verify = p.keyword(&["no-verify"]).is_some();
            }
            "src" => r.src = Some(p.table_ref()?),
            "helo" => r.helo = Some(p.value("a HELO name")?),
            "auth" => r.auth = Some(p.table_ref()?),
            "mail-from" => r.mail_from = Some(p.value("an address")?),
            "pki" => r.pki = Some(p.value("a pki name")?),
            "ca" => r.ca = Some(p.value("a ca name")?),
            other => return Err(ErrorKind::Unsupported(format!("relay option '{other}'"))),
        }
    }
}

/// `smtp://`, `smtp+tls://`, `smtp+notls://`, `smtps://`, `lmtp://`, with `label@host` and
/// `:port`; a bare host means `smtp://host`.
pub(crate) fn relay_url(s: &str) -> R<RelayUrl> {
    let bad = || ErrorKind::BadValue {
        what: "relay URL",
        value: s.to_owned(),
        expected: "[smtp|smtp+tls|smtp+notls|smtps|lmtp]://[label@]host[:port]",
    };
    let (scheme, rest) = match s.split_once("://") {
        Some(("smtp", r)) => (Scheme::Smtp, r),
        Some(("smtp+tls", r)) => (Scheme::SmtpTls, r),
        Some(("smtp+notls", r)) => (Scheme::SmtpNoTls, r),
        Some(("smtps", r) | ("smtp+ssl", r)) => (Scheme::Smtps, r),
        Some(("lmtp", r)) => (Scheme::Lmtp, r),
        Some(_) => return Err(bad()),
        None => (Scheme::Smtp, s),
    };
    let (label, hostport) = match rest.rsplit_once('@') {
        Some((l, h)) => (Some(l.to_owned()), h),
        None => (None, rest),
    };
    let (host, port_text) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let valid_host = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    if !valid_host || label.as_deref() == Some("") {
        return Err(bad());
    }
    let port = port_text.map(|p| port(p).map_err(|_| bad())).transpose()?;
    Ok(RelayUrl { scheme, label, host: host.to_owned(), port })
}

fn rule(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let mut conds = Vec::new();
    let verdict = loop {
        let negate = p.punct('!');
        let Some(word) =
            p.keyword(&["from", "for", "tls", "auth", "mail-from", "rcpt-to", "helo", "tag", "action", "reject"])
        else {
            return p.err(
                "a match option (from, for, tls, auth, mail-from, rcpt-to, helo, tag) or 'action NAME' or 'reject'",
            );
        };
        let kind = match word.as_str() {
            "action" if !negate => break Verdict::Action(p.value("an action name")?),
            "reject" if !negate => break Verdict::Reject,
            "from" => from_cond(p)?,
            "for" => for_cond(p)?,
            "tls" => CondKind::Tls,
            "auth" => CondKind::FromAuth(p.opt_table_ref()?.map(Matcher::Table)),
            "mail-from" => CondKind::FromMailFrom(p.matcher()?),
            "rcpt-to" => CondKind::ForRcptTo(p.matcher()?),
            "helo" => return Err(ErrorKind::Unsupported("match option 'helo'".into())),
            "tag" => CondKind::Tag(p.value("a tag")?),
            _ => return p.err("a condition after '!'"),
        };
        conds.push(Cond { negate, kind });
    };
    // OpenSMTPD: no `from` means `from local`, no `for` means `for local`.
    if !conds.iter().any(|c| c.kind.is_from()) {
        conds.push(Cond { negate: false, kind: CondKind::FromLocal });
    }
    if !conds.iter().any(|c| c.kind.is_for()) {
        conds.push(Cond { negate: false, kind: CondKind::ForLocal });
    }
    out.rules.push(Rule { at, conds, verdict });
    Ok(())
}

fn from_cond(p: &mut Parser<'_>) -> R<CondKind> {
    let Some(w) = p.keyword(&["any", "local", "socket", "src", "auth", "rdns", "mail-from"]) else {
        return p.err("any, local, socket, src, auth, rdns or mail-from after 'from'");
    };
    Ok(match w.as_str() {
        "any" => CondKind::FromAny,
        "local" => CondKind::FromLocal,
        "socket" => CondKind::FromSocket,
        "src" => CondKind::FromSrc(p.matcher()?),
        "auth" => CondKind::FromAuth(p.opt_table_ref()?.map(Matcher::Table)),
        "rdns" => CondKind::FromRdns(p.opt_table_ref()?.map(Matcher::Table)),
        _ => CondKind::FromMailFrom(p.matcher()?),
    })
}

fn for_cond(p: &mut Parser<'_>) -> R<CondKind> {
    let Some(w) = p.keyword(&["any", "local", "domain", "rcpt-to"]) else {
        return p.err("any, local, domain or rcpt-to after 'for'");
    };
    Ok(match w.as_str() {
        "any" => CondKind::ForAny,
        "local" => CondKind::ForLocal,
        "domain" => CondKind::ForDomain(p.matcher()?),
        _ => CondKind::ForRcptTo(p.matcher()?),
    })
}

fn smtp(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let Some(w) = p.keyword(&["max-message-size", "sub-addr-delim", "limit"]) else {
        return p.err("max-message-size, sub-addr-delim or limit after 'smtp'");
    };
    match w.as_str() {
        "max-message-size" => out.max_message_size = Some(size(&p.value("a size")?)?),
        "sub-addr-delim" => {
            let v = p.value("one character")?;
            let mut chars = v.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii_punctuation() => out.sub_addr_delim = Some(c),
                _ => {
                    return Err(ErrorKind::BadValue {
                        what: "sub-addr-delim",
                        value: v,
                        expected: "one punctuation character",
                    })
                }
            }
        }
        _ => {
            while p.peek() != &Tok::Newline {
                let Some(limit) = p.keyword(&["max-rcpt", "max-mails"]) else {
                    return p.err("max-rcpt or max-mails");
                };
                let v = p.value("a number")?;
                let n = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(ErrorKind::BadValue {
                    what: "limit",
                    value: v,
                    expected: "a positive number",
                })?;
                if limit == "max-rcpt" {
                    out.max_rcpt = Some(n);
                }
            }
        }
    }
    Ok(())
}

/// "35M", "10K", "1G", "512" (bytes); an optional "B" after the unit.
pub(crate) fn size(v: &str) -> R<u64> {
    let bad = || ErrorKind::BadValue {
        what: "size",
        value: v.to_owned(),
        expected: "a number with an optional K, M or G suffix",
    };
    let s = v.trim_end_matches(['b', 'B']);
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).filter(|n| *n > 0).ok_or_else(bad)
}

/// "4d", "3h", "30m", "60s", "120" (seconds).
pub(crate) fn duration(v: &str) -> R<Duration> {
    let bad = || ErrorKind::BadValue {
        what: "duration",
        value: v.to_owned(),
        expected: "a number with an optional s, m, h or d suffix",
    };
    let (num, mult) = match v.char_indices().last() {
        Some((i, 's')) => (&v[..i], 1u64),
        Some((i, 'm')) => (&v[..i], 60),
        Some((i, 'h')) => (&v[..i], 3600),
        Some((i, 'd')) => (&v[..i], 86_400),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}
