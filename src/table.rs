//! Tables (table(5)): inline lists `{ a, b }`, inline mappings `{ k = v }`, `file:`
//! tables and `passwd:` tables. A table file holds one entry a line: `key value` (mapping),
//! `key: v1, v2` (aliases(5) style, a mapping), or a lone `key` (list); `#` starts a
//! comment. The first entry decides the kind; a file that mixes kinds is refused with its
//! line. A passwd(5) file maps each user to `uid:gid:home` (a `userbase`) and keeps the
//! password field for credentials lookups.
//!
//! A table used with `regex` has its entries compiled once, as written (case kept), and
//! matched case-insensitively: addresses and names compare that way everywhere else.
//!
//! A `proc-exec:` table (`proc_io.rs`, `proc.rs`) holds no entries: it answers by asking
//! its process, which blocks. Lookups that may wait ask it directly (credentials, relay
//! hosts); the RCPT and MAIL lookups (`lookup_value`, `check_key`) ask it only in a process
//! that allowed waiting (delivery), and elsewhere answer `LookupError::Deferred`, so the
//! smtp session asks the delivery process instead. Every other lookup sees it empty.
//!
//! Keys compare case-insensitively (addresses' domains and aliases are case-insensitive in
//! practice, and OpenSMTPD lowercases them). Parsing never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;

pub mod db;
pub mod proc;
pub mod proc_io;

use proc_io::{ProcTable, TableProcError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    List,
    Mapping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Inline,
    File(PathBuf),
    Passwd(PathBuf),
    /// A makemap(8) hash file.
    Db(PathBuf),
    /// `proc-exec:COMMAND` (or `proc:NAME` of a `proc` statement): a table process.
    Proc(String),
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub source: Source,
    kind: Kind,
    /// Lowercased key → value ("" for list entries).
    entries: BTreeMap<String, String>,
    /// The keys as written, in order (regular expressions are case-sensitive text).
    originals: Vec<String>,
    /// Compiled keys, once the table is used with `regex`.
    regexes: Option<Vec<Regex>>,
    /// passwd tables: user → password field, for credentials lookups.
    secrets: BTreeMap<String, String>,
    /// proc tables: the process, shared by the clones of this table.
    process: Option<Arc<ProcTable>>,
}

/// Why a lookup of a proc table has no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// Only a process that may wait can ask this table (the smtp process asks delivery).
    Deferred(String),
    /// The table process failed, timed out or answered `error`: a temporary failure.
    Failed(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::Deferred(t) => write!(f, "table {t} is asked by the delivery process"),
            LookupError::Failed(why) => f.write_str(why),
        }
    }
}

/// A table file that could not be read or parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum TableError {
    Read(String),
    /// Line of the file, and what was expected there.
    Parse {
        line: u32,
        expected: &'static str,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Read(e) => write!(f, "cannot read table file: {e}"),
            TableError::Parse { line, expected } => write!(f, "line {line}: expected {expected}"),
        }
    }
}

impl Table {
    fn build(name: &str, source: Source, kind: Kind, items: Vec<(String, String)>) -> Table {
        let originals = items.iter().map(|(k, _)| k.clone()).collect();
        let entries = items.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        Table {
            name: name.to_owned(),
            source,
            kind,
            entries,
            originals,
            regexes: None,
            secrets: BTreeMap::new(),
            process: None,
        }
    }

    pub fn inline_list(name: &str, items: Vec<String>) -> Table {
        Table::build(name, Source::Inline, Kind::List, items.into_iter().map(|k| (k, String::new())).collect())
    }

    pub fn inline_mapping(name: &str, items: Vec<(String, String)>) -> Table {
        Table::build(name, Source::Inline, Kind::Mapping, items)
    }

    pub fn load_file(name: &str, path: &Path) -> Result<Table, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Read(e.to_string()))?;
        let (kind, items) = parse_entries(&text)?;
        Ok(Table::build(name, Source::File(path.to_owned()), kind, items))
    }

    /// A passwd(5) file: `name:password:uid:gid:gecos:home:shell` lines.
    pub fn load_passwd(name: &str, path: &Path) -> Result<Table, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Read(e.to_string()))?;
        let mut items = Vec::new();
        let mut secrets = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(':').collect();
            let valid = fields.len() == 7
                && !fields[0].is_empty()
                && fields[2].parse::<u32>().is_ok()
                && fields[3].parse::<u32>().is_ok()
                && fields[5].starts_with('/');
            if !valid {
                return Err(TableError::Parse {
                    line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    expected: "a passwd(5) line: name:password:uid:gid:gecos:home:shell",
                });
            }
            items.push((fields[0].to_owned(), format!("{}:{}:{}", fields[2], fields[3], fields[5])));
            secrets.insert(fields[0].to_lowercase(), fields[1].to_owned());
        }
        let mut t = Table::build(name, Source::Passwd(path.to_owned()), Kind::Mapping, items);
        t.secrets = secrets;
        Ok(t)
    }

    /// A `db:` table: the hash file makemap(8) writes. A map of `-t set` (every value
    /// `<set>`) is a list.
    pub fn load_db(name: &str, path: &Path) -> Result<Table, TableError> {
        let pairs = db::read(path).map_err(|e| TableError::Read(e.to_string()))?;
        let text = |b: &[u8]| {
            let b = b.strip_suffix(b"\0").unwrap_or(b);
            String::from_utf8_lossy(b).into_owned()
        };
        let mut items: Vec<(String, String)> = pairs.iter().map(|(k, v)| (text(k), text(v))).collect();
        items.sort();
        let set = !items.is_empty() && items.iter().all(|(_, v)| v == db::SET_VALUE);
        if set {
            items.iter_mut().for_each(|(_, v)| v.clear());
        }
        let kind = if set || items.is_empty() { Kind::List } else { Kind::Mapping };
        Ok(Table::build(name, Source::Db(path.to_owned()), kind, items))
    }

    /// A table process running `command`, started at its first lookup.
    pub fn proc_exec(name: &str, command: &str) -> Table {
        let mut t = Table::build(name, Source::Proc(command.to_owned()), Kind::Mapping, Vec::new());
        t.process = Some(Arc::new(ProcTable::new(name, command)));
        t
    }

    pub fn is_proc(&self) -> bool {
        self.process.is_some()
    }

    /// The credentials value for `key` (a user for `listen … auth`, a label for a relay's
    /// `auth`): the mapping's value, a passwd table's password field, or a proc table's
    /// `credentials` lookup, which blocks (up to `proc_io::TIMEOUT`) and may fail.
    pub fn credentials(&self, key: &str) -> Result<Option<String>, TableProcError> {
        match (&self.process, &self.source) {
            (Some(p), _) => p.lookup(proc::TableService::Credentials, key),
            (None, Source::Passwd(_)) => Ok(self.secret(key).map(str::to_owned)),
            (None, _) => Ok(self.get(key).map(str::to_owned)),
        }
    }

    /// `relay domain <t>`: the relay URL for `domain` (a proc table's `relayhost` lookup).
    pub fn relay_host(&self, domain: &str) -> Result<Option<String>, TableProcError> {
        match &self.process {
            Some(p) => p.lookup(proc::TableService::Relayhost, domain),
            None => Ok(self.get(domain).map(str::to_owned)),
        }
    }

    /// `relay src <t>`: the address to send from (the first one; a proc table's next
    /// `source`).
    pub fn source(&self) -> Result<Option<IpAddr>, TableProcError> {
        match &self.process {
            Some(p) => Ok(p.fetch(proc::TableService::Source)?.and_then(|a| a.trim().parse().ok())),
            None => Ok(self.keys().find_map(|k| k.parse().ok())),
        }
    }

    /// `relay helo-src <t>`: the HELO name for source address `addr` (a proc table's
    /// `addrname` lookup).
    pub fn helo_name(&self, addr: IpAddr) -> Result<Option<String>, TableProcError> {
        match &self.process {
            Some(p) => p.lookup(proc::TableService::Addrname, &addr.to_string()),
            None => Ok(self
                .keys()
                .find(|k| k.parse::<IpAddr>().is_ok_and(|a| a == addr))
                .and_then(|k| self.get(k))
                .map(str::to_owned)),
        }
    }

    /// A proc table that registered the `auth` service checks `user:password` itself:
    /// Some(verdict). None for every other table (compare with `credentials`).
    pub fn check_login(&self, user: &str, password: &str) -> Result<Option<bool>, TableProcError> {
        let Some(p) = &self.process else { return Ok(None) };
        if !p.offers(proc::TableService::Auth)? {
            return Ok(None);
        }
        p.check(proc::TableService::Auth, &format!("{user}:{password}")).map(Some)
    }

    /// A mapping's value for `key`; a proc table's `lookup` of `service`, where waiting is
    /// allowed (`proc_io::allow_waiting`).
    pub fn lookup_value(&self, service: proc::TableService, key: &str) -> Result<Option<String>, LookupError> {
        match &self.process {
            None => Ok(self.get(key).map(str::to_owned)),
            Some(p) => self.waiting(|| p.lookup(service, key)),
        }
    }

    /// A proc table's `check` of `key` in `service`, where waiting is allowed; `None` for
    /// any other table, whose entries the caller matches itself.
    pub fn check_key(&self, service: proc::TableService, key: &str) -> Result<Option<bool>, LookupError> {
        match &self.process {
            None => Ok(None),
            Some(p) => self.waiting(|| p.check(service, key)).map(Some),
        }
    }

    fn waiting<T>(&self, ask: impl FnOnce() -> Result<T, TableProcError>) -> Result<T, LookupError> {
        if !proc_io::may_wait() {
            return Err(LookupError::Deferred(self.name.clone()));
        }
        ask().map_err(|e| LookupError::Failed(format!("table {}: {e}", self.name)))
    }

    /// The same table read again from its file; inline tables are returned as they are.
    /// A table compiled for `regex` is compiled again.
    pub fn reload(&self) -> Result<Table, TableError> {
        let mut fresh = match &self.source {
            Source::Inline | Source::Proc(_) => return Ok(self.clone()),
            Source::File(path) => Table::load_file(&self.name, path)?,
            Source::Passwd(path) => Table::load_passwd(&self.name, path)?,
            Source::Db(path) => Table::load_db(&self.name, path)?,
        };
        if self.regexes.is_some() {
            fresh
                .compile_regexes()
                .map_err(|(key, why)| TableError::Read(format!("regular expression '{key}': {why}")))?;
        }
        Ok(fresh)
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) | Source::Passwd(p) | Source::Db(p) => Some(p),
            Source::Inline | Source::Proc(_) => None,
        }
    }

    /// Compiles the keys as regular expressions, for `regex` match conditions. On error:
    /// the key and why it does not compile.
    pub fn compile_regexes(&mut self) -> Result<(), (String, String)> {
        let mut out = Vec::with_capacity(self.originals.len());
        for key in &self.originals {
            let re = regex::RegexBuilder::new(key)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| (key.clone(), e.to_string()))?;
            out.push(re);
        }
        self.regexes = Some(out);
        Ok(())
    }

    /// Whether the keys were compiled for `regex` conditions.
    pub fn is_regex_compiled(&self) -> bool {
        self.regexes.is_some()
    }

    /// True when some key, as a regular expression, matches `text` (false for a table
    /// never compiled).
    pub fn match_regex(&self, text: &str) -> bool {
        self.regexes.as_ref().is_some_and(|res| res.iter().any(|re| re.is_match(text)))
    }

    /// A passwd table's password field for `user`.
    pub fn secret(&self, user: &str) -> Option<&str> {
        self.secrets.get(&user.to_lowercase()).map(String::as_str)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(&key.to_lowercase())
    }

    /// A mapping's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.kind {
            Kind::Mapping => self.entries.get(&key.to_lowercase()).map(String::as_str),
            Kind::List => None,
        }
    }

    /// A mapping's value split as an aliases(5) list: "a, b c" → ["a", "b", "c"].
    pub fn get_list(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key).map(split_list)
    }

    /// Source tables: entries are addresses or CIDR netmasks.
    pub fn match_ip(&self, ip: IpAddr) -> bool {
        self.entries.keys().any(|k| ip_matches(k, ip))
    }

    /// Domain tables: exact (case-insensitive) or `*.example.org` for any subdomain.
    pub fn match_domain(&self, domain: &str) -> bool {
        let domain = domain.to_lowercase();
        self.entries.keys().any(|k| domain_matches(k, &domain))
    }

    /// The keys as written, in the table's order.
    pub fn originals(&self) -> impl Iterator<Item = &str> {
        self.originals.iter().map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

pub fn split_list(value: &str) -> Vec<&str> {
    value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).collect()
}

pub fn ip_matches(entry: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match entry.split_once('/') {
        Some((a, b)) => match b.parse::<u8>() {
            Ok(b) => (a, Some(b)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => prefix_eq(&n.octets(), &i.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(n), IpAddr::V6(i)) => prefix_eq(&n.octets(), &i.octets(), bits.unwrap_or(128)),
        (IpAddr::V4(n), IpAddr::V6(i)) => {
            i.to_ipv4_mapped().is_some_and(|i| prefix_eq(&n.octets(), &i.octets(), bits.unwrap_or(32)))
        }
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits).min(a.len() * 8);
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[full] & mask) == (b[full] & mask)
    }
}

pub fn domain_matches(entry: &str, domain: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(suffix) => {
            domain.len() > suffix.len()
                && domain.ends_with(suffix)
                && domain[..domain.len() - suffix.len()].ends_with('.')
        }
        None => entry == domain,
    }
}

/// Parses a table file's text.
pub fn parse(text: &str) -> Result<(Kind, BTreeMap<String, String>), TableError> {
    let (kind, items) = parse_entries(text)?;
    Ok((kind, items.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect()))
}

/// A table file's entries as written, in order.
pub(crate) fn parse_entries(text: &str) -> Result<(Kind, Vec<(String, String)>), TableError> {
    let mut kind = None;
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let is_net = line.split('/').next().is_some_and(|a| a.parse::<IpAddr>().is_ok());
        let (key, value) = match line.split_once(|c: char| c == ':' || c.is_whitespace()) {
            _ if is_net => (line, None),
            Some((k, v)) if line.as_bytes().get(k.len()) == Some(&b':') => (k.trim(), Some(v.trim())),
            Some((k, v)) => (k, Some(v.trim())),
            None => (line, None),
        };
        let this = if value.is_some() { Kind::Mapping } else { Kind::List };
        if key.is_empty() || value.is_some_and(str::is_empty) {
            return Err(TableError::Parse { line: line_no, expected: "'key value', 'key: value' or a lone key" });
        }
        match kind {
            None => kind = Some(this),
            Some(k) if k != this => {
                return Err(TableError::Parse {
                    line: line_no,
                    expected: "entries of one kind (all 'key value' or all lone keys)",
                });
            }
            _ => {}
        }
        entries.push((key.to_owned(), value.unwrap_or("").to_owned()));
    }
    Ok((kind.unwrap_or(Kind::List), entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_formats() {
        let (k, e) =
            parse("# aliases\nroot: joseph\nteam: joseph, alice\n\nMailer-Daemon:\tpostmaster # trailing\n").unwrap();
        assert_eq!(k, Kind::Mapping);
        assert_eq!(e.get("root").map(String::as_str), Some("joseph"));
        assert_eq!(e.get("team").map(String::as_str), Some("joseph, alice"));
        assert_eq!(e.get("mailer-daemon").map(String::as_str), Some("postmaster"));
        let (k, e) = parse("joseph 1000:1000:/home/joseph\n").unwrap();
        assert_eq!((k, e.get("joseph").map(String::as_str)), (Kind::Mapping, Some("1000:1000:/home/joseph")));
        let (k, e) = parse("192.0.2.1\n10.0.0.0/8\n::1\nfe80::/10\n").unwrap();
        assert_eq!((k, e.len()), (Kind::List, 4));
        assert_eq!(
            parse("a\nb c\n"),
            Err(TableError::Parse { line: 2, expected: "entries of one kind (all 'key value' or all lone keys)" })
        );
        assert!(matches!(parse("root:\n"), Err(TableError::Parse { line: 1, .. })));
    }

    #[test]
    fn lookups() {
        let t = Table::inline_list(
            "a",
            vec!["192.0.2.1".into(), "10.0.0.0/8".into(), "::1".into(), "*.home.lan".into(), "Example.ORG".into()],
        );
        assert!(t.match_ip("192.0.2.1".parse().unwrap()));
        assert!(t.match_ip("10.200.3.4".parse().unwrap()));
        assert!(!t.match_ip("11.0.0.1".parse().unwrap()));
        assert!(t.match_ip("::1".parse().unwrap()));
        assert!(t.match_ip("::ffff:10.1.1.1".parse().unwrap()));
        assert!(t.match_domain("devbox.home.lan"));
        assert!(!t.match_domain("home.lan"));
        assert!(!t.match_domain("xhome.lan"));
        assert!(t.match_domain("example.org"));
        let m = Table::inline_mapping("m", vec![("Root".into(), "joseph, alice".into())]);
        assert_eq!(m.get_list("root"), Some(vec!["joseph", "alice"]));
        assert_eq!(t.get("192.0.2.1"), None, "lists have no values");
    }
}
