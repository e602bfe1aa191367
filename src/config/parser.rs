//! Statements of smtpd.conf(5) into a `Parsed` value; meaning is checked afterwards
//! (check.rs). On a syntax error the parser records FILE:LINE and skips to the next line,
//! so one run reports every broken line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) mod knobs;

use super::lexer::{lex, Tok, Token};
use super::{
    Action, Cond, CondKind, ConfigLine, Error, ErrorKind, Errors, Knobs, ListenAuth, ListenOptions, Matcher, Method,
    Notice, Relay, RelayUrl, Rule, Scheme, TlsMode, Verdict,
};

const MAX_INCLUDE_DEPTH: usize = 8;

/// A `table` statement, not yet loaded.
#[derive(Debug)]
pub(crate) enum TableDef {
    List(Vec<String>),
    Mapping(Vec<(String, String)>),
    /// `file:/path`, or a bare path.
    File(PathBuf),
    /// `passwd:/path`: passwd(5) lines.
    Passwd(PathBuf),
    /// `db:/path`: a Berkeley DB hash file as makemap(8) writes it.
    Db(PathBuf),
    /// `proc-exec:COMMAND`: a table process speaking smtpd-tables(7).
    ProcExec(String),
    /// `proc:NAME`: the table process of the `proc NAME COMMAND` statement.
    Proc(String),
}

#[derive(Debug)]
pub(crate) struct ListenSpec {
    pub(crate) at: ConfigLine,
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
    /// Every `pki`, in order: the first is the default.
    pub(crate) pkis: Vec<String>,
    pub(crate) options: ListenOptions,
}

#[derive(Debug, Default)]
pub(crate) struct PkiParts {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<(PathBuf, ConfigLine)>,
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
    pub(crate) tables: Vec<(ConfigLine, String, TableDef)>,
    pub(crate) pkis: BTreeMap<String, (ConfigLine, PkiParts)>,
    pub(crate) cas: Vec<(ConfigLine, String, PathBuf)>,
    pub(crate) listeners: Vec<ListenSpec>,
    pub(crate) actions: Vec<Action>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) knobs: Knobs,
    pub(crate) notices: Vec<Notice>,
    /// Tables used with `regex`: their entries must compile (checked with the tables).
    pub(crate) regex_tables: Vec<(ConfigLine, String)>,
    pub(crate) errors: Vec<Error>,
    /// Inline tables made so far, for their generated names.
    pub(crate) anon: usize,
}

impl Parsed {
    pub(crate) fn notice(&mut self, at: &ConfigLine, text: impl Into<String>) {
        self.notices.push(Notice { at: at.clone(), text: text.into(), blocking: false });
    }

    pub(crate) fn blocking(&mut self, at: &ConfigLine, text: impl Into<String>) {
        self.notices.push(Notice { at: at.clone(), text: text.into(), blocking: true });
    }

    /// Registers an inline table and returns its generated name (`{inline FILE:LINE #N}`,
    /// which no `table` statement can spell).
    pub(crate) fn anon_table(&mut self, at: &ConfigLine, def: TableDef) -> String {
        self.anon += 1;
        let name = format!("{{inline {}:{} #{}}}", at.file.display(), at.line, self.anon);
        self.tables.push((at.clone(), name.clone(), def));
        name
    }
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
    from: Option<&ConfigLine>,
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
    let mut p = Parser { toks: &tokens, pos: 0, file: path, lenient: Vec::new() };
    while p.pos < tokens.len() {
        if p.peek() == &Tok::Newline {
            p.pos += 1;
            continue;
        }
        let line = p.line();
        let result = statement(&mut p, out);
        for (at, text) in p.lenient.drain(..) {
            out.notice(&at, text);
        }
        match result {
            Ok(Some(inc)) => {
                let at = ConfigLine { file: path.to_owned(), line };
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

/// OpenSMTPD 7.x's keywords (parse.y's `keywords[]`). OpenSMTPD refuses one unquoted where
/// a name stands (`action relay relay`), and a word that does not start with a letter, a
/// digit, `-`, `:` or `_` (`/var/mail`, `@example.com`); mxd takes both, with a notice
/// saying to quote them so that the file stays valid for OpenSMTPD.
pub(crate) const KEYWORDS: &[&str] = &[
    "action",
    "admd",
    "alias",
    "any",
    "auth",
    "auth-optional",
    "backup",
    "bounce",
    "bypass",
    "ca",
    "cert",
    "chain",
    "chroot",
    "ciphers",
    "commit",
    "compression",
    "connect",
    "data",
    "data-line",
    "dhe",
    "disconnect",
    "domain",
    "ehlo",
    "encryption",
    "expand-only",
    "fcrdns",
    "filter",
    "for",
    "forward-only",
    "from",
    "group",
    "helo",
    "helo-src",
    "host",
    "hostname",
    "hostnames",
    "include",
    "inet4",
    "inet6",
    "junk",
    "key",
    "limit",
    "listen",
    "lmtp",
    "local",
    "mail-from",
    "maildir",
    "mask-src",
    "masquerade",
    "match",
    "max-deferred",
    "max-message-size",
    "mbox",
    "mda",
    "mta",
    "mx",
    "no-dsn",
    "no-verify",
    "noop",
    "on",
    "phase",
    "pki",
    "port",
    "proc",
    "proc-exec",
    "protocols",
    "proxy-v2",
    "queue",
    "quit",
    "rcpt-to",
    "rdns",
    "received-auth",
    "recipient",
    "regex",
    "reject",
    "relay",
    "report",
    "rewrite",
    "rset",
    "scheduler",
    "senders",
    "smtp",
    "smtp-in",
    "smtp-out",
    "smtps",
    "socket",
    "src",
    "srs",
    "sub-addr-delim",
    "table",
    "tag",
    "tagged",
    "tls",
    "tls-require",
    "ttl",
    "user",
    "userbase",
    "verify",
    "virtual",
    "warn-interval",
    "wrapper",
];

pub(crate) struct Parser<'a> {
    toks: &'a [Token],
    pub(crate) pos: usize,
    file: &'a Path,
    /// Notices for words mxd takes where OpenSMTPD wants them quoted.
    lenient: Vec<(ConfigLine, String)>,
}

pub(crate) type R<T> = Result<T, ErrorKind>;

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Punct(c) => format!("'{c}'"),
        Tok::Newline => "end of line".to_owned(),
    }
}

impl Parser<'_> {
    pub(crate) fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::Newline, |t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks.get(self.pos).or(self.toks.last()).map_or(1, |t| t.line)
    }

    pub(crate) fn origin(&self) -> ConfigLine {
        ConfigLine { file: self.file.to_owned(), line: self.line() }
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    pub(crate) fn err<T>(&self, expected: &str) -> R<T> {
        Err(ErrorKind::Syntax { expected: expected.to_owned(), found: describe(self.peek()) })
    }

    /// A word or a quoted string.
    pub(crate) fn value(&mut self, expected: &str) -> R<String> {
        match self.peek() {
            Tok::Word(w) if KEYWORDS.binary_search(&w.as_str()).is_ok() => {
                let at = self.origin();
                let w = w.clone();
                self.pos += 1;
                self.lenient.push((at, format!("'{w}' is a keyword: OpenSMTPD needs it quoted (\"{w}\") here")));
                Ok(w)
            }
            // parse.y starts an unquoted word only with a letter, a digit, '-', ':' or '_'.
            Tok::Word(w) if !w.starts_with(|c: char| c.is_ascii_alphanumeric() || "-:_".contains(c)) => {
                let at = self.origin();
                let w = w.clone();
                self.pos += 1;
                self.lenient.push((at, format!("OpenSMTPD reads '{w}' only quoted (\"{w}\")")));
                Ok(w)
            }
            Tok::Word(_) | Tok::Str(_) => match self.bump() {
                Tok::Word(w) | Tok::Str(w) => Ok(w),
                _ => unreachable!("peeked a word"),
            },
            _ => self.err(expected),
        }
    }

    /// A number (parse.y's NUMBER).
    pub(crate) fn number(&mut self, what: &'static str) -> R<u64> {
        let v = self.value("a number")?;
        v.parse::<u64>().map_err(|_| ErrorKind::BadValue { what, value: v, expected: "a number" })
    }

    /// The next unquoted word, if it is one of `words` (keywords are never quoted).
    pub(crate) fn keyword(&mut self, words: &[&str]) -> Option<String> {
        if let Tok::Word(w) = self.peek() {
            if words.contains(&w.as_str()) {
                let w = w.clone();
                self.pos += 1;
                return Some(w);
            }
        }
        None
    }

    pub(crate) fn expect_word(&mut self, word: &str) -> R<()> {
        match self.keyword(&[word]) {
            Some(_) => Ok(()),
            None => self.err(&format!("'{word}'")),
        }
    }

    pub(crate) fn punct(&mut self, c: char) -> bool {
        if self.peek() == &Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn peek_keyword(&self) -> Option<&str> {
        match self.peek() {
            Tok::Word(w) => Some(w),
            _ => None,
        }
    }

    pub(crate) fn at_end(&self) -> bool {
        self.peek() == &Tok::Newline
    }

    fn end(&mut self) -> R<()> {
        if self.at_end() {
            self.pos += 1;
            Ok(())
        } else {
            self.err("end of line")
        }
    }

    fn skip_line(&mut self) {
        // Newlines inside `{ … }` belong to the statement (parse.y's optnl).
        let mut depth = 0usize;
        while self.pos < self.toks.len() {
            match self.bump() {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => depth = depth.saturating_sub(1),
                Tok::Newline if depth == 0 => return,
                _ => {}
            }
        }
    }

    /// `<name>`
    pub(crate) fn table_ref(&mut self) -> R<String> {
        if !self.punct('<') {
            return self.err("a table reference <name>");
        }
        let name = self.value("a table name")?;
        if !self.punct('>') {
            return self.err("'>' closing the table reference");
        }
        Ok(name)
    }

    /// parse.y's `tables`: `<name>`, an inline `{ … }`, or one value (a one-entry list).
    /// Returns the table's name (inline tables get a generated one).
    pub(crate) fn tables(&mut self, out: &mut Parsed) -> R<String> {
        let at = self.origin();
        match self.peek() {
            Tok::Punct('<') => self.table_ref(),
            Tok::Punct('{') => {
                self.pos += 1;
                let def = self.inline_table()?;
                Ok(out.anon_table(&at, def))
            }
            _ => {
                let v = self.value("a table <name>, { … } or a value")?;
                Ok(out.anon_table(&at, TableDef::List(vec![v])))
            }
        }
    }

    /// `tables` where it is optional: only `<name>` or `{ … }` (a plain word is the next option).
    pub(crate) fn opt_tables(&mut self, out: &mut Parsed) -> R<Option<String>> {
        match self.peek() {
            Tok::Punct('<' | '{') => self.tables(out).map(Some),
            _ => Ok(None),
        }
    }

    /// What a match condition compares with: `regex TABLES`, `<t>`, `{ … }` or one value.
    fn matcher(&mut self, out: &mut Parsed) -> R<Matcher> {
        let at = self.origin();
        if self.keyword(&["regex"]).is_some() {
            let t = self.tables(out)?;
            out.regex_tables.push((at, t.clone()));
            return Ok(Matcher::Regex(t));
        }
        match self.peek() {
            Tok::Punct('<' | '{') => self.tables(out).map(Matcher::Table),
            _ => self.value("a table <name>, { … }, a value or 'regex'").map(Matcher::Value),
        }
    }

    fn opt_matcher(&mut self, out: &mut Parsed) -> R<Option<Matcher>> {
        match self.peek() {
            Tok::Punct('<' | '{') => self.matcher(out).map(Some),
            Tok::Word(w) if w == "regex" => self.matcher(out).map(Some),
            _ => Ok(None),
        }
    }

    fn skip_newlines(&mut self) {
        while self.peek() == &Tok::Newline && self.pos < self.toks.len() {
            self.pos += 1;
        }
    }

    /// After `{`: `a, b` or `k = v, …` (also `k => v`) up to `}`; entries are separated by
    /// commas or newlines, as in parse.y.
    pub(crate) fn inline_table(&mut self) -> R<TableDef> {
        let (mut list, mut map) = (Vec::new(), Vec::new());
        loop {
            self.skip_newlines();
            if self.punct('}') {
                break;
            }
            if self.pos >= self.toks.len() {
                return self.err("'}' closing the table");
            }
            let key = self.value("a table entry or '}'")?;
            if self.punct('=') {
                self.punct('>');
                map.push((key, self.value("a value after '='")?));
            } else {
                list.push(key);
            }
            self.skip_newlines();
            self.punct(',');
        }
        match (list.is_empty(), map.is_empty()) {
            (_, true) => Ok(TableDef::List(list)),
            (true, false) => Ok(TableDef::Mapping(map)),
            (false, false) => self.err("entries of one kind (all 'key = value' or all plain values)"),
        }
    }

    /// After `{`: names up to `}` (a filter chain).
    pub(crate) fn name_list(&mut self) -> R<Vec<String>> {
        match self.inline_table()? {
            TableDef::List(names) => Ok(names),
            _ => self.err("names separated by commas"),
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
        "queue" => knobs::queue(p, out)?,
        "srs" => knobs::srs(p, out)?,
        "bounce" => knobs::bounce(p, out)?,
        "mta" | "mda" | "scheduler" => knobs::limits(p, out, &word)?,
        "admd" => knobs::admd(p, out)?,
        "proc" => knobs::proc(p, out)?,
        "filter" => knobs::filter(p, out)?,
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
        _ => {
            p.pos -= 1;
            return p.err("a statement (include, table, pki, ca, listen, action, match, smtp, queue, srs, bounce, mta, mda, scheduler, admd, proc, filter, spool, threads, hostname or name = value)");
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
        table_source(&spec)?
    };
    out.tables.push((at, name, def));
    Ok(())
}

/// `file:/path`, `/path`, `passwd:/path` (the table-passwd add-on's format), `getpwnam`
/// (the system's users), `db:/path`, `proc:COMMAND` / `proc-exec:COMMAND`; other add-on
/// backends (table-ldap, table-sqlite…) are named as not supported.
fn table_source(spec: &str) -> R<TableDef> {
    if spec.starts_with('/') {
        return Ok(TableDef::File(PathBuf::from(spec)));
    }
    if spec == "getpwnam" {
        return Ok(TableDef::Passwd(PathBuf::from("/etc/passwd")));
    }
    let Some((backend, config)) = spec.split_once(':') else {
        return Err(ErrorKind::BadValue {
            what: "table source",
            value: spec.to_owned(),
            expected: "'{', an absolute path, getpwnam, or BACKEND:/path (file, passwd, db, proc)",
        });
    };
    let path = || {
        if config.starts_with('/') {
            Ok(PathBuf::from(config))
        } else {
            Err(ErrorKind::BadValue {
                what: "table path",
                value: config.to_owned(),
                expected: "an absolute path, as OpenSMTPD requires",
            })
        }
    };
    match backend {
        "file" | "static" => Ok(TableDef::File(path()?)),
        "passwd" => Ok(TableDef::Passwd(path()?)),
        "db" => Ok(TableDef::Db(path()?)),
        "proc-exec" if !config.is_empty() => Ok(TableDef::ProcExec(config.to_owned())),
        "proc" if !config.is_empty() => Ok(TableDef::Proc(config.to_owned())),
        other => Err(ErrorKind::Unsupported(format!("table backend '{other}:'"))),
    }
}

fn pki(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("a pki name")?;
    loop {
        let Some(what) = p.keyword(&["cert", "key", "dhe"]) else {
            return if p.at_end() { Ok(()) } else { p.err("'cert', 'key' or 'dhe'") };
        };
        let file = p.value("a file name")?;
        let entry = out.pkis.entry(name.clone()).or_insert_with(|| (at.clone(), PkiParts::default()));
        match what.as_str() {
            "cert" => entry.1.cert = Some(PathBuf::from(file)),
            "key" => entry.1.key = Some((PathBuf::from(file), at.clone())),
            _ => {
                if !["none", "auto", "legacy"].contains(&file.as_str()) {
                    return Err(ErrorKind::BadValue { what: "dhe", value: file, expected: "none, auto or legacy" });
                }
                out.notice(&at, "pki … dhe: accepted, no effect (rustls chooses its own key exchange)");
            }
        }
    }
}

/// A port: a number, or a service name (smtp, submission, smtps, submissions, or any
/// TCP service in /etc/services).
pub(crate) fn port(v: &str) -> R<u16> {
    let bad = || ErrorKind::BadValue {
        what: "port",
        value: v.to_owned(),
        expected: "a number from 1 to 65535 or a service name (smtp, submission, smtps, submissions, /etc/services)",
    };
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    }
    match v {
        "smtp" => Ok(25),
        "submission" => Ok(587),
        "smtps" | "submissions" | "urd" => Ok(465),
        "lmtp" => Ok(24),
        _ => service_port(v).ok_or_else(bad),
    }
}

/// A TCP port from /etc/services ("name port/tcp [aliases]").
fn service_port(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let service = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && proto == "tcp").then(|| port.parse().ok()).flatten()
    })
}

const LISTEN_OPTIONS: &[&str] = &[
    "port",
    "tls",
    "tls-require",
    "smtps",
    "pki",
    "ca",
    "hostname",
    "hostnames",
    "auth",
    "auth-optional",
    "tag",
    "inet4",
    "inet6",
    "family",
    "mask-src",
    "received-auth",
    "no-dsn",
    "proxy-v2",
    "ciphers",
    "protocols",
    "senders",
    "filter",
];

fn listen(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    p.expect_word("on")?;
    let on = match p.keyword(&["socket"]) {
        Some(s) => s,
        None => p.value("an interface, an interface group, an address, a host name or 'socket'")?,
    };
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
        pkis: Vec::new(),
        options: ListenOptions::default(),
    };
    while !p.at_end() {
        let Some(opt) = p.keyword(LISTEN_OPTIONS) else {
            return p.err(&format!("a listen option ({})", LISTEN_OPTIONS.join(", ")));
        };
        let socket_ok = ["filter", "mask-src", "no-dsn", "tag"].contains(&opt.as_str());
        if l.on == "socket" && !socket_ok {
            return Err(ErrorKind::BadValue {
                what: "option for 'listen on socket'",
                value: opt,
                expected: "filter, mask-src, no-dsn or tag",
            });
        }
        match opt.as_str() {
            "port" => {
                // `smtp` and `smtps` are keywords (parse.y: PORT SMTP, PORT SMTPS).
                let name = match p.keyword(&["smtp", "smtps"]) {
                    Some(k) => k,
                    None => p.value("a port number or service name")?,
                };
                l.port = Some(port(&name)?);
            }
            "tls" => l.tls = TlsMode::StartTls,
            "tls-require" => l.tls = TlsMode::Require { verify: p.keyword(&["verify"]).is_some() },
            "smtps" => {
                l.options.smtps_verify = p.keyword(&["verify"]).is_some();
                l.tls = TlsMode::Smtps;
            }
            "pki" => {
                let name = p.value("a pki name")?;
                // OpenSMTPD: the first pki is the default when SNI names none of them.
                l.pki.get_or_insert_with(|| name.clone());
                l.pkis.push(name);
            }
            "ca" => l.ca = Some(p.value("a ca name")?),
            "hostname" => l.hostname = Some(p.value("a host name")?),
            "hostnames" => l.options.hostnames = Some(p.tables(out)?),
            "auth" | "auth-optional" => {
                l.auth = Some(ListenAuth { table: p.opt_tables(out)?, optional: opt == "auth-optional" })
            }
            "tag" => l.tag = Some(p.value("a tag")?),
            "inet4" => l.family = Some(4),
            "inet6" => l.family = Some(6),
            "mask-src" => l.options.mask_src = true,
            "received-auth" => l.options.received_auth = true,
            "no-dsn" => l.options.no_dsn = true,
            "proxy-v2" => l.options.proxy_v2 = true,
            "ciphers" => l.options.ciphers = Some(p.value("a cipher list")?),
            "protocols" => l.options.protocols = Some(p.value("a protocol list")?),
            "senders" => {
                l.options.senders = Some(p.tables(out)?);
                l.options.masquerade = p.keyword(&["masquerade"]).is_some();
            }
            "filter" => l.options.filter = Some(knobs::filter_ref(p, out)?),
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
        _ => Method::Relay(relay(p, out)?),
    };
    let mut a =
        Action { name, at, method, alias: None, virtual_: None, userbase: None, user: None, ttl: None, wrapper: None };
    while !p.at_end() {
        let Some(opt) = p.keyword(ACTION_OPTIONS) else {
            return p.err("an action option (alias, virtual, userbase, user, ttl, wrapper)");
        };
        match opt.as_str() {
            "alias" => a.alias = Some(p.tables(out)?),
            "virtual" => a.virtual_ = Some(p.tables(out)?),
            "userbase" => a.userbase = Some(p.tables(out)?),
            "user" => a.user = Some(p.value("a user name")?),
            "ttl" => a.ttl = Some(duration(&p.value("a duration")?)?),
            "junk" => out.notice(&a.at, "maildir junk: accepted, no effect (mxd files no mail into Junk)"),
            _ => {
                let w = p.value("an mda wrapper name")?;
                if !matches!(a.method, Method::Mda(_)) {
                    out.blocking(
                        &a.at,
                        format!("action option 'wrapper {w}': mxd runs wrappers around mda commands only"),
                    );
                } else if !out.knobs.mda_wrappers.contains_key(&w) {
                    out.blocking(
                        &a.at,
                        format!("action option 'wrapper {w}': no 'mda wrapper {w} \"COMMAND\"' before it"),
                    );
                }
                a.wrapper = Some(w);
            }
        }
    }
    if a.alias.is_some() && a.virtual_.is_some() {
        return Err(ErrorKind::Syntax { expected: "either alias or virtual, not both".into(), found: "both".into() });
    }
    if matches!(a.method, Method::Maildir { junk: true, .. }) {
        out.notice(&a.at, "maildir junk: accepted, no effect (mxd files no mail into Junk)");
    }
    out.actions.push(a);
    Ok(())
}

fn relay(p: &mut Parser<'_>, out: &mut Parsed) -> R<Relay> {
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
            "ciphers",
            "protocols",
            "filter",
        ]) else {
            return Ok(r);
        };
        match opt.as_str() {
            "host" => match p.peek() {
                Tok::Punct('<' | '{') => r.host_table = Some(p.tables(out)?),
                _ => r.host = Some(relay_url(&p.value("a relay URL")?)?),
            },
            "backup" => {
                r.backup = true;
                if p.keyword(&["mx"]).is_some() {
                    r.backup_mx = Some(p.value("an MX name")?);
                }
            }
            "tls" => {
                r.tls = true;
                r.no_verify = p.keyword(&["no-verify"]).is_some();
            }
            "src" => r.src = Some(p.tables(out)?),
            "helo" => r.helo = Some(p.value("a HELO name")?),
            "helo-src" => r.helo_src = Some(p.tables(out)?),
            "auth" => r.auth = Some(p.tables(out)?),
            "mail-from" => r.mail_from = Some(p.value("an address")?),
            "pki" => r.pki = Some(p.value("a pki name")?),
            "ca" => r.ca = Some(p.value("a ca name")?),
            "srs" => r.srs = true,
            "domain" => r.domain = Some(p.tables(out)?),
            "ciphers" => r.ciphers = Some(p.value("a cipher list")?),
            "protocols" => r.protocols = Some(p.value("a protocol list")?),
            _ => r.filter = Some(knobs::filter_ref(p, out)?),
        }
        if (r.host.is_some() || r.host_table.is_some() || r.domain.is_some()) && r.backup {
            return Err(ErrorKind::BadValue {
                what: "relay options",
                value: "backup with host or domain".into(),
                expected: "backup, or host/domain, not both (as OpenSMTPD)",
            });
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
    let mut seen: Vec<String> = Vec::new();
    let verdict = loop {
        let negate = p.punct('!');
        // parse.y allows each option once per rule ("from already specified for this rule").
        if let Some(w) = p.peek_keyword() {
            if w != "action" && w != "reject" {
                if seen.iter().any(|s| s == w) {
                    return Err(ErrorKind::AlreadySpecified(w.to_owned()));
                }
                seen.push(w.to_owned());
            }
        }
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
            "from" => from_cond(p, out)?,
            "for" => for_cond(p, out)?,
            "tls" => CondKind::Tls,
            "auth" => CondKind::FromAuth(p.opt_matcher(out)?),
            "mail-from" => CondKind::FromMailFrom(p.matcher(out)?),
            "rcpt-to" => CondKind::ForRcptTo(p.matcher(out)?),
            "helo" => CondKind::Helo(p.matcher(out)?),
            "tag" => CondKind::Tag(p.matcher(out)?),
            _ => return p.err("a condition after '!' ('action' and 'reject' cannot be negated)"),
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

fn from_cond(p: &mut Parser<'_>, out: &mut Parsed) -> R<CondKind> {
    let Some(w) = p.keyword(&["any", "local", "socket", "src", "auth", "rdns", "mail-from"]) else {
        return p.err("any, local, socket, src, auth, rdns or mail-from after 'from'");
    };
    Ok(match w.as_str() {
        "any" => CondKind::FromAny,
        "local" => CondKind::FromLocal,
        "socket" => CondKind::FromSocket,
        "src" => CondKind::FromSrc(p.matcher(out)?),
        "auth" => CondKind::FromAuth(p.opt_matcher(out)?),
        "rdns" => CondKind::FromRdns(p.opt_matcher(out)?),
        _ => CondKind::FromMailFrom(p.matcher(out)?),
    })
}

fn for_cond(p: &mut Parser<'_>, out: &mut Parsed) -> R<CondKind> {
    let Some(w) = p.keyword(&["any", "local", "domain", "rcpt-to"]) else {
        return p.err("any, local, domain or rcpt-to after 'for'");
    };
    Ok(match w.as_str() {
        "any" => CondKind::ForAny,
        "local" => CondKind::ForLocal,
        "domain" => CondKind::ForDomain(p.matcher(out)?),
        _ => CondKind::ForRcptTo(p.matcher(out)?),
    })
}

fn smtp(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let Some(w) = p.keyword(&["max-message-size", "sub-addr-delim", "limit", "ciphers"]) else {
        return p.err("max-message-size, sub-addr-delim, limit or ciphers after 'smtp'");
    };
    match w.as_str() {
        "max-message-size" => out.max_message_size = Some(size(&p.value("a size")?)?),
        "ciphers" => {
            let at = p.origin();
            out.knobs.smtp_ciphers = Some(p.value("a cipher list")?);
            out.notice(&at, "smtp ciphers: accepted, no effect (rustls offers only its own safe cipher suites)");
        }
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
            while !p.at_end() {
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
                } else {
                    out.knobs.max_mails = Some(n as u64);
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

#[cfg(test)]
mod tests {
    #[test]
    fn keywords_are_sorted_for_binary_search() {
        assert!(super::KEYWORDS.windows(2).all(|w| w[0] < w[1]));
    }
}
