//! From what the statements said to a `Config`: defaults, table loading, interface
//! resolution, and every check of meaning (undefined or duplicate names, table kinds, pki
//! completeness and key permissions). Errors keep the FILE:LINE of the statement at fault.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parser::{ListenSpec, Parsed, TableDef};
use super::{
    Ca, CondKind, Config, Error, ErrorKind, Errors, ListenKind, Listener, Matcher, Method, Origin, Pki, TlsMode,
    Verdict, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RCPT, DEFAULT_QUEUE_TTL, DEFAULT_SPOOL,
};
use crate::table::{Kind, Table};

struct Checker {
    errors: Vec<Error>,
}

impl Checker {
    fn at(&mut self, at: &Origin, kind: ErrorKind) {
        self.errors.push(Error { file: at.file.clone(), line: at.line, kind });
    }
}

pub(super) fn finish(p: Parsed) -> Result<Config, Errors> {
    let mut c = Checker { errors: p.errors };
    let tables = tables(&mut c, p.tables);
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
    let listeners: Vec<Listener> =
        p.listeners.into_iter().filter_map(|l| listener(&mut c, l, &pkis, &cas, &tables, &hostname)).collect();
    let mut actions = BTreeMap::new();
    for a in p.actions {
        for (t, need) in [(&a.alias, Kind::Mapping), (&a.virtual_, Kind::Mapping), (&a.userbase, Kind::Mapping)] {
            if let Some(t) = t {
                need_table(&mut c, &a.at, &tables, t, Some(need));
            }
        }
        if let Method::Relay(r) = &a.method {
            for t in [&r.src, &r.auth].into_iter().flatten() {
                need_table(&mut c, &a.at, &tables, t, None);
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
                | CondKind::Helo(m) => Some(m),
                CondKind::FromAuth(m) | CondKind::FromRdns(m) => m.as_ref(),
                _ => None,
            };
            if let Some(Matcher::Table(t)) = m {
                need_table(&mut c, &r.at, &tables, t, None);
            }
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
    })
}

fn tables(c: &mut Checker, defs: Vec<(Origin, String, TableDef)>) -> BTreeMap<String, Arc<Table>> {
    let mut out = BTreeMap::new();
    for (at, name, def) in defs {
        if out.contains_key(&name) {
            c.at(&at, ErrorKind::Duplicate { what: "table", name });
            continue;
        }
        let table = match def {
            TableDef::List(items) => Table::inline_list(&name, items),
            TableDef::Mapping(items) => Table::inline_mapping(&name, items),
            TableDef::File(path) => match Table::load_file(&name, &path) {
                Ok(t) => t,
                Err(e) => {
                    c.at(&at, ErrorKind::File { path, error: e.to_string() });
                    // Stand-in, so that uses of the table do not each report it undefined.
                    Table::inline_list(&name, Vec::new())
                }
            },
        };
        out.insert(name, Arc::new(table));
    }
    out
}

fn need_table(c: &mut Checker, at: &Origin, tables: &BTreeMap<String, Arc<Table>>, name: &str, kind: Option<Kind>) {
    match (tables.get(name), kind) {
        (None, _) => c.at(at, ErrorKind::Undefined { what: "table", name: name.to_owned() }),
        (Some(t), Some(Kind::Mapping)) if t.kind() == Kind::List && !t.is_empty() => c.at(
            at,
            ErrorKind::WrongTableKind { name: name.to_owned(), expected: "mapping (key = value, or key: value lines)" },
        ),
        _ => {}
    }
}

fn pkis(c: &mut Checker, parts: BTreeMap<String, (Origin, super::parser::PkiParts)>) -> BTreeMap<String, Pki> {
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
    c: &mut Checker,
    l: ListenSpec,
    pkis: &BTreeMap<String, Pki>,
    cas: &BTreeMap<String, Ca>,
    tables: &BTreeMap<String, Arc<Table>>,
    hostname: &str,
) -> Option<Listener> {
    let kind = if l.on == "socket" {
        ListenKind::Socket
    } else {
        let port = l.port.unwrap_or(if l.tls == TlsMode::Smtps { 465 } else { 25 });
        let ips = match interface_addrs(&l.on) {
            Some(ips) => ips,
            None => {
                c.at(&l.at, ErrorKind::NoSuchInterface(l.on.clone()));
                return None;
            }
        };
        let addrs = ips
            .into_iter()
            .filter(|ip| match l.family {
                Some(4) => ip.is_ipv4(),
                Some(_) => ip.is_ipv6(),
                None => true,
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        ListenKind::Inet { addrs }
    };
    let needs_pki = l.tls != TlsMode::Plain;
    let pki = l.pki.clone().or_else(|| needs_pki.then(|| hostname.to_owned()));
    if let Some(name) = &pki {
        if !pkis.contains_key(name) {
            let what = if l.pki.is_some() {
                name.clone()
            } else {
                format!("{name}' (the listener's host name, used when no pki is given")
            };
            c.at(&l.at, ErrorKind::Undefined { what: "pki", name: what });
        }
    }
    if let Some(ca) = &l.ca {
        if !cas.contains_key(ca) {
            c.at(&l.at, ErrorKind::Undefined { what: "ca", name: ca.clone() });
        }
    }
    if let Some(t) = l.auth.as_ref().and_then(|a| a.table.as_ref()) {
        if !tables.contains_key(t) {
            c.at(&l.at, ErrorKind::Undefined { what: "table", name: t.clone() });
        }
    }
    Some(Listener { at: l.at, kind, tls: l.tls, pki, ca: l.ca, hostname: l.hostname, auth: l.auth, tag: l.tag })
}

/// An address, or every address of the interface of that name.
fn interface_addrs(on: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = on.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    let mut ips = Vec::new();
    let mut seen = false;
    for ifa in nix::ifaddrs::getifaddrs().ok()? {
        if ifa.interface_name != on {
            continue;
        }
        seen = true;
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            // Link-local addresses need a scope to bind; mail never travels on them.
            if v6.ip().segments()[0] & 0xffc0 != 0xfe80 {
                ips.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    seen.then_some(ips)
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
