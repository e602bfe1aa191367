//! From what the statements said to a `Config`: defaults, table loading, interface
//! resolution, and every check of meaning (undefined or duplicate names, table kinds, pki
//! completeness and key permissions). Errors keep the FILE:LINE of the statement at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parser::{ListenSpec, Parsed, TableDef};
use super::{
    Ca, CondKind, Config, ConfigLine, Error, ErrorKind, Errors, ListenKind, Listener, Matcher, Method, Pki, TlsMode,
    Verdict, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RCPT, DEFAULT_QUEUE_TTL, DEFAULT_SPOOL,
};
use crate::table::{Kind, Table};

struct ConfigChecker {
    errors: Vec<Error>,
}

impl ConfigChecker {
    fn at(&mut self, at: &ConfigLine, kind: ErrorKind) {
        self.errors.push(Error { file: at.file.clone(), line: at.line, kind });
    }
}

pub(super) fn finish(mut p: Parsed) -> Result<Config, Errors> {
    let missing_filters = super::parser::knobs::undefined_filters(&p);
    let mut c = ConfigChecker { errors: std::mem::take(&mut p.errors) };
    for (at, name) in missing_filters {
        c.at(&at, ErrorKind::Undefined { what: "filter", name });
    }
    for (at, _, def) in &p.tables {
        let TableDef::Proc(name) = def else { continue };
        if p.knobs.procs.get(name).is_some_and(|pr| pr.user.is_some() || pr.group.is_some() || pr.chroot.is_some()) {
            let text = format!("table proc:{name}: its user, group and chroot are not applied to tables (table processes run as the unprivileged user)");
            p.notices.push(super::Notice { at: at.clone(), text, blocking: false });
        }
    }
    let mut tables = tables(&mut c, p.tables, &p.knobs.procs);
    for (at, name) in &p.regex_tables {
        compile_regexes(&mut c, at, &mut tables, name);
    }
    for (at, name) in &super::filter_check::regex_tables(&p.knobs) {
        compile_regexes(&mut c, at, &mut tables, name);
    }
    let mut notices = p.notices;
    let pkis = pkis(&mut c, p.pkis);
    let mut cas = BTreeMap::new();
    for (at, name, cert) in p.cas {
        if cas.contains_key(&name) {
            c.at(&at, ErrorKind::Duplicate { what: "ca", name });
        } else {
            cas.insert(name.clone(), Ca { name, cert, at });
        }
    }
    let hostname = p.hostname.unwrap_or_else(default_hostname);
    let listeners: Vec<Listener> = p
        .listeners
        .into_iter()
        .filter_map(|l| listener(&mut c, l, &pkis, &cas, &tables, &hostname, &mut notices))
        .collect();
    let mut actions = BTreeMap::new();
    for mut a in p.actions {
        // A proc table here is asked by the delivery process (the session asks it at RCPT).
        for t in [&a.alias, &a.virtual_, &a.userbase].into_iter().flatten() {
            need_lookup_table(&mut c, &a.at, &tables, t, Some(Kind::Mapping));
        }
        if let Method::Relay(r) = &mut a.method {
            for t in [&r.host_table].into_iter().flatten() {
                need_table(&mut c, &a.at, &tables, t, None);
            }
            // Looked up by the relay process only, which may block: proc tables serve them.
            for t in [&r.auth, &r.src].into_iter().flatten() {
                need_blocking_table(&mut c, &a.at, &tables, t);
            }
            for t in [&r.helo_src, &r.domain].into_iter().flatten() {
                if tables.get(t).is_some_and(|t| t.is_proc()) {
                    need_blocking_table(&mut c, &a.at, &tables, t);
                } else {
                    need_table(&mut c, &a.at, &tables, t, Some(Kind::Mapping));
                }
            }
            if r.src.is_none() && r.helo_src.as_ref().and_then(|t| tables.get(t)).is_some_and(|t| t.is_proc()) {
                c.at(
                    &a.at,
                    ErrorKind::BadValue {
                        what: "relay helo-src",
                        value: "a proc table without src".into(),
                        expected:
                            "'src ADDR|<table>' too: a table process is asked for the source address before connecting",
                    },
                );
            }
            relay_notices(&mut c, &a.at, r, &tables, &mut notices);
            if r.filter.is_some() {
                // Not in smtpd.conf(5): OpenSMTPD's grammar takes it, and then only sends the
                // filters smtp-out report events (no phase is filtered).
                let text = "relay filter: smtp-out filters (undocumented in smtpd.conf(5); OpenSMTPD \
                            sends them outgoing sessions' report events only) are not run"
                    .into();
                notices.push(super::Notice { at: a.at.clone(), text, blocking: true });
            }
            if r.srs && p.knobs.srs_keys.is_empty() {
                notices.push(super::Notice {
                    at: a.at.clone(),
                    text: "relay srs without 'srs key': senders are not rewritten".into(),
                    blocking: false,
                });
            }
            if let Some(pki) = &r.pki {
                if !pkis.contains_key(pki) {
                    c.at(&a.at, ErrorKind::Undefined { what: "pki", name: pki.clone() });
                }
            }
            if let Some(ca) = &r.ca {
                if !cas.contains_key(ca) {
                    c.at(&a.at, ErrorKind::Undefined { what: "ca", name: ca.clone() });
                }
            }
        }
        if actions.contains_key(&a.name) {
            c.at(&a.at, ErrorKind::Duplicate { what: "action", name: a.name.clone() });
        } else {
            actions.insert(a.name.clone(), a);
        }
    }
    for r in &p.rules {
        if let Verdict::Action(name) = &r.verdict {
            if !actions.contains_key(name) {
                c.at(&r.at, ErrorKind::Undefined { what: "action", name: name.clone() });
            }
        }
        for cond in &r.conds {
            let m = match &cond.kind {
                CondKind::FromSrc(m)
                | CondKind::FromMailFrom(m)
                | CondKind::ForDomain(m)
                | CondKind::ForRcptTo(m)
                | CondKind::Tag(m)
                | CondKind::Helo(m) => Some(m),
                CondKind::FromAuth(m) | CondKind::FromRdns(m) => m.as_ref(),
                _ => None,
            };
            if let Some(Matcher::Table(t) | Matcher::Regex(t)) = m {
                need_lookup_table(&mut c, &r.at, &tables, t, None);
            }
        }
    }
    // A proc table in a builtin filter's condition is asked by the delivery process while
    // the chain waits (`filter/engine_tables.rs`).
    for (at, problem) in super::filter_check::problems(&p.knobs, &tables) {
        match problem {
            super::filter_check::Problem::Error(text) => c.at(&at, ErrorKind::Filter(text)),
            super::filter_check::Problem::NotRun(text) => notices.push(super::Notice { at, text, blocking: true }),
        }
    }
    if !c.errors.is_empty() {
        return Err(Errors(c.errors));
    }
    Ok(Config {
        file: p.file,
        hostname,
        spool: p.spool.unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL)),
        threads: p.threads,
        max_message_size: p.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
        max_rcpt: p.max_rcpt.unwrap_or(DEFAULT_MAX_RCPT),
        sub_addr_delim: p.sub_addr_delim.unwrap_or('+'),
        queue_ttl: p.queue_ttl.unwrap_or(DEFAULT_QUEUE_TTL),
        tables,
        pkis,
        cas,
        listeners,
        actions,
        rules: p.rules,
        knobs: p.knobs,
        notices,
    })
}

fn compile_regexes(c: &mut ConfigChecker, at: &ConfigLine, tables: &mut BTreeMap<String, Arc<Table>>, name: &str) {
    let Some(t) = tables.get_mut(name) else {
        return c.at(at, ErrorKind::Undefined { what: "table", name: name.to_owned() });
    };
    if let Err((key, why)) = Arc::make_mut(t).compile_regexes() {
        let why = why.lines().last().unwrap_or("").trim().to_owned();
        c.at(at, ErrorKind::BadRegex { pattern: key, error: why });
    }
}

/// Relay options parsed but not acted on: each gets its notice. `host <table>` takes the
/// table's first entry.
fn relay_notices(
    c: &mut ConfigChecker,
    at: &ConfigLine,
    r: &mut super::Relay,
    tables: &BTreeMap<String, Arc<Table>>,
    notices: &mut Vec<super::Notice>,
) {
    let mut notice =
        |text: &str| notices.push(super::Notice { at: at.clone(), text: text.to_owned(), blocking: false });
    // A proc table here is refused by need_table: it has no entries to read.
    if let Some(t) = r.host_table.as_ref().and_then(|t| tables.get(t)).filter(|t| !t.is_proc()) {
        let mut hosts = t.originals();
        match hosts.next().map(super::parser::relay_url) {
            Some(Ok(url)) => r.host = Some(url),
            Some(Err(e)) => c.at(at, e),
            None => {
                c.at(at, ErrorKind::BadValue { what: "host table", value: t.name.clone(), expected: "a relay URL" })
            }
        }
        if hosts.next().is_some() {
            notice("relay host <table>: mxd relays through the table's first host only");
        }
    }
    // `domain <t>`: every value must be a relay URL, checked now rather than at relay time.
    if let Some(t) = r.domain.as_ref().and_then(|t| tables.get(t)) {
        for value in t.keys().filter_map(|k| t.get(k)) {
            if let Err(e) = super::relay_url(value) {
                c.at(at, e);
            }
        }
    }
    if r.ciphers.is_some() || r.protocols.is_some() {
        notice("relay ciphers/protocols: accepted, no effect (rustls: TLS 1.2 and 1.3, its own safe suites)");
    }
    if r.src.as_ref().and_then(|t| tables.get(t)).is_some_and(|t| t.len() > 1) {
        notice("relay src <table>: mxd binds the table's first address only");
    }
}

fn tables(
    c: &mut ConfigChecker,
    defs: Vec<(ConfigLine, String, TableDef)>,
    procs: &BTreeMap<String, super::Proc>,
) -> BTreeMap<String, Arc<Table>> {
    let mut out = BTreeMap::new();
    for (at, name, def) in defs {
        let passwd = matches!(def, TableDef::Passwd(_));
        if out.contains_key(&name) {
            c.at(&at, ErrorKind::Duplicate { what: "table", name });
            continue;
        }
        let table = match def {
            TableDef::List(items) => Table::inline_list(&name, items),
            TableDef::Mapping(items) => Table::inline_mapping(&name, items),
            TableDef::File(path) | TableDef::Passwd(path) => {
                let loaded = if passwd { Table::load_passwd(&name, &path) } else { Table::load_file(&name, &path) };
                match loaded {
                    Ok(t) => t,
                    Err(e) => {
                        c.at(&at, ErrorKind::File { path, error: e.to_string() });
                        // Stand-in, so that uses of the table do not each report it undefined.
                        Table::inline_list(&name, Vec::new())
                    }
                }
            }
            TableDef::Db(path) => match Table::load_db(&name, &path) {
                Ok(t) => t,
                Err(e) => {
                    c.at(&at, ErrorKind::File { path, error: e.to_string() });
                    Table::inline_list(&name, Vec::new())
                }
            },
            TableDef::ProcExec(command) => proc_table(c, &at, &name, &command),
            TableDef::Proc(proc) => match procs.get(&proc) {
                Some(p) => proc_table(c, &at, &name, &p.command),
                None => {
                    c.at(&at, ErrorKind::Undefined { what: "proc", name: proc });
                    Table::inline_list(&name, Vec::new())
                }
            },
        };
        out.insert(name, Arc::new(table));
    }
    out
}

/// A proc table: its program, when named by path, must be there (a bare name is looked
/// for in PATH when it starts).
fn proc_table(c: &mut ConfigChecker, at: &ConfigLine, name: &str, command: &str) -> Table {
    let program = command.split_whitespace().next().unwrap_or("");
    if program.contains('/') {
        if let Err(e) = crate::program::find_program(program) {
            let error = match e {
                crate::program::ProgramError::NotExecutable(_) => "the table program is not executable",
                _ => "no such table program",
            };
            c.at(at, ErrorKind::File { path: PathBuf::from(program), error: error.to_owned() });
        }
    }
    Table::proc_exec(name, command)
}

/// A table looked up only where blocking is allowed (`listen … auth <t>`, checked by the
/// delivery process; a relay's `auth`, `src`, `helo-src`, `domain`, by the relay process):
/// a proc table may serve it.
fn need_blocking_table(c: &mut ConfigChecker, at: &ConfigLine, tables: &BTreeMap<String, Arc<Table>>, name: &str) {
    if !tables.contains_key(name) {
        c.at(at, ErrorKind::Undefined { what: "table", name: name.to_owned() });
    }
}

/// A table looked up at RCPT or MAIL: a proc table is asked by the delivery process,
/// where waiting is allowed (`server::lookup`, `privsep::lookup`).
fn need_lookup_table(
    c: &mut ConfigChecker,
    at: &ConfigLine,
    tables: &BTreeMap<String, Arc<Table>>,
    name: &str,
    kind: Option<Kind>,
) {
    match tables.get(name) {
        Some(t) if t.is_proc() => {}
        _ => need_table(c, at, tables, name, kind),
    }
}

fn need_table(
    c: &mut ConfigChecker,
    at: &ConfigLine,
    tables: &BTreeMap<String, Arc<Table>>,
    name: &str,
    kind: Option<Kind>,
) {
    match (tables.get(name), kind) {
        (None, _) => c.at(at, ErrorKind::Undefined { what: "table", name: name.to_owned() }),
        (Some(t), _) if t.is_proc() => c.at(at, ErrorKind::ProcTableUse(name.to_owned())),
        (Some(t), Some(Kind::Mapping)) if t.kind() == Kind::List && !t.is_empty() => c.at(
            at,
            ErrorKind::WrongTableKind { name: name.to_owned(), expected: "mapping (key = value, or key: value lines)" },
        ),
        _ => {}
    }
}

fn pkis(
    c: &mut ConfigChecker,
    parts: BTreeMap<String, (ConfigLine, super::parser::PkiParts)>,
) -> BTreeMap<String, Pki> {
    let mut out = BTreeMap::new();
    for (name, (at, parts)) in parts {
        let (Some(cert), Some((key, key_at))) = (parts.cert.clone(), parts.key.clone()) else {
            let missing = if parts.cert.is_none() { "cert" } else { "key" };
            c.at(&at, ErrorKind::PkiIncomplete { name, missing });
            continue;
        };
        match std::fs::metadata(&key) {
            Ok(m) if m.permissions().mode() & 0o037 != 0 => {
                c.at(&key_at, ErrorKind::InsecureKey { path: key.clone(), mode: m.permissions().mode() & 0o7777 })
            }
            Ok(_) => {}
            Err(e) => c.at(&key_at, ErrorKind::File { path: key.clone(), error: e.to_string() }),
        }
        if let Err(e) = std::fs::metadata(&cert) {
            c.at(&at, ErrorKind::File { path: cert.clone(), error: e.to_string() });
        }
        out.insert(name.clone(), Pki { name, cert, key, at });
    }
    out
}

fn listener(
    c: &mut ConfigChecker,
    l: ListenSpec,
    pkis: &BTreeMap<String, Pki>,
    cas: &BTreeMap<String, Ca>,
    tables: &BTreeMap<String, Arc<Table>>,
    hostname: &str,
    notices: &mut Vec<super::Notice>,
) -> Option<Listener> {
    let kind = if l.on == "socket" {
        ListenKind::Socket
    } else {
        let port = l.port.unwrap_or(if l.tls == TlsMode::Smtps { 465 } else { 25 });
        let ips = match super::iface::resolve(&l.on) {
            Some(ips) => ips,
            None => {
                c.at(&l.at, ErrorKind::NoSuchInterface(l.on.clone()));
                return None;
            }
        };
        let mut addrs: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| match l.family {
                Some(4) => ip.is_ipv4(),
                Some(_) => ip.is_ipv6(),
                None => true,
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        addrs.sort();
        addrs.dedup();
        ListenKind::Inet { addrs }
    };
    let needs_pki = l.tls != TlsMode::Plain;
    let pki = l.pki.clone().or_else(|| needs_pki.then(|| hostname.to_owned()));
    let named = l.pkis.iter().map(|n| (n.clone(), true));
    let implied = pki.iter().filter(|_| l.pki.is_none()).map(|n| (n.clone(), false));
    for (name, explicit) in named.chain(implied) {
        if !pkis.contains_key(&name) {
            let what =
                if explicit { name } else { format!("{name}' (the listener's host name, used when no pki is given") };
            c.at(&l.at, ErrorKind::Undefined { what: "pki", name: what });
        }
    }
    if let Some(ca) = &l.ca {
        if !cas.contains_key(ca) {
            c.at(&l.at, ErrorKind::Undefined { what: "ca", name: ca.clone() });
        }
    }
    if let Some(t) = l.auth.as_ref().and_then(|a| a.table.as_ref()) {
        need_blocking_table(c, &l.at, tables, t);
    }
    if l.options.smtps_verify && l.ca.is_none() {
        // Verifying against nothing would accept every client where a certificate is required.
        c.at(
            &l.at,
            ErrorKind::BadValue {
                what: "listen smtps verify",
                value: "no ca".into(),
                expected: "a 'ca NAME' option on the listener: the CA that signs the client certificates",
            },
        );
    }
    // A proc table here is asked by the delivery process while the greeting waits.
    if let Some(t) = &l.options.hostnames {
        need_lookup_table(c, &l.at, tables, t, Some(Kind::Mapping));
    }
    if let Some(t) = &l.options.senders {
        need_lookup_table(c, &l.at, tables, t, Some(Kind::Mapping));
    }
    let mut notice =
        |text: &str| notices.push(super::Notice { at: l.at.clone(), text: text.to_owned(), blocking: false });
    if l.auth.is_some() && l.tls == TlsMode::Plain && l.pki.is_none() {
        notice("listen auth: AUTH is offered only under TLS, and this listener has none (add tls and a pki, or smtps)");
    }
    let o = &l.options;
    if o.ciphers.is_some() || o.protocols.is_some() {
        notice("listen ciphers/protocols: accepted, no effect (rustls: TLS 1.2 and 1.3, its own safe suites)");
    }
    if o.no_dsn {
        notice("listen no-dsn: accepted, no effect (mxd does not offer DSN)");
    }
    Some(Listener {
        at: l.at,
        kind,
        tls: l.tls,
        pki,
        ca: l.ca,
        hostname: l.hostname,
        auth: l.auth,
        tag: l.tag,
        pkis: l.pkis,
        options: l.options,
    })
}

/// /etc/mail/mailname, else the system host name (as design.md says).
pub fn default_hostname() -> String {
    if let Ok(name) = std::fs::read_to_string(Path::new("/etc/mail/mailname")) {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}
