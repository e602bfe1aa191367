//! Tables (table(5)): inline lists `{ a, b }`, inline mappings `{ k = v }`, and `file:`
//! tables. A table file holds one entry a line: `key value` (mapping), `key: v1, v2`
//! (aliases(5) style, a mapping), or a lone `key` (list); `#` starts a comment. The first
//! entry decides the kind; a file that mixes kinds is refused with its line.
//!
//! Keys compare case-insensitively (addresses' domains and aliases are case-insensitive in
//! practice, and OpenSMTPD lowercases them). Parsing never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    List,
    Mapping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Inline,
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub source: Source,
    kind: Kind,
    /// Lowercased key → value ("" for list entries).
    entries: BTreeMap<String, String>,
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
    pub fn inline_list(name: &str, items: Vec<String>) -> Table {
        let entries = items.into_iter().map(|k| (k.to_lowercase(), String::new())).collect();
        Table { name: name.to_owned(), source: Source::Inline, kind: Kind::List, entries }
    }

    pub fn inline_mapping(name: &str, items: Vec<(String, String)>) -> Table {
        let entries = items.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        Table { name: name.to_owned(), source: Source::Inline, kind: Kind::Mapping, entries }
    }

    pub fn load_file(name: &str, path: &Path) -> Result<Table, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Read(e.to_string()))?;
        let (kind, entries) = parse(&text)?;
        Ok(Table { name: name.to_owned(), source: Source::File(path.to_owned()), kind, entries })
    }

    /// The same table read again from its file; inline tables are returned as they are.
    pub fn reload(&self) -> Result<Table, TableError> {
        match &self.source {
            Source::Inline => Ok(self.clone()),
            Source::File(path) => Table::load_file(&self.name, path),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) => Some(p),
            Source::Inline => None,
        }
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
    let mut kind = None;
    let mut entries = BTreeMap::new();
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
        entries.insert(key.to_lowercase(), value.unwrap_or("").to_owned());
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
