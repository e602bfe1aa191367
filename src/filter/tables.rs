//! Builtin filter conditions against smtpd.conf's tables (`src/table.rs`, used read-only),
//! with the comparisons `match` uses: domains exact or `*.domain`, addresses and networks,
//! mailboxes as `user@domain` or `@domain`, user names without regard to case.
//!
//! A regex table (`match helo regex <t>`) matches when one of its entries, compiled by the
//! configuration as for `match` rules (without regard to case), finds the key; a table the
//! configuration did not compile for `regex` matches nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::builtin::{LookupKind, TableRef, Tables};
use crate::envelope::Mailbox;
use crate::table::{domain_matches, Table};

/// The tables of a loaded configuration, by name.
pub struct ConfigTables {
    pub tables: BTreeMap<String, Arc<Table>>,
}

impl ConfigTables {
    /// Whether conditions on `table` can be evaluated: it exists (and, for `regex`, was
    /// compiled).
    pub fn supports(&self, table: &TableRef) -> bool {
        self.tables.get(&table.name).is_some_and(|t| !table.regex || t.is_regex_compiled())
    }
}

impl Tables for ConfigTables {
    fn asks(&self, table: &TableRef) -> bool {
        self.tables.get(&table.name).is_some_and(|t| t.is_proc())
    }

    fn contains(&self, table: &TableRef, kind: LookupKind, key: &str) -> bool {
        let Some(t) = self.tables.get(&table.name) else { return false };
        if table.regex {
            return t.match_regex(key);
        }
        let key = key.to_lowercase();
        match kind {
            LookupKind::Domain => t.match_domain(&key),
            // `[::1]` as OpenSMTPD prints an IPv6 client; `local` (the socket) is no address.
            LookupKind::NetAddr => {
                key.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| t.match_ip(ip))
            }
            LookupKind::String => t.keys().any(|e| e == key),
            LookupKind::MailAddr => {
                let domain = Mailbox::domain_of(&key);
                t.keys().any(|e| e == key || e.strip_prefix('@').is_some_and(|d| domain_matches(d, domain)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_compare_as_match_rules_do() {
        let list = |items: &[&str]| Arc::new(Table::inline_list("t", items.iter().map(|s| s.to_string()).collect()));
        let tables = ConfigTables {
            tables: [
                ("nets".to_string(), list(&["192.0.2.0/24", "::1"])),
                ("names".to_string(), list(&["*.bad.test", "exact.test"])),
                ("boxes".to_string(), list(&["joe@a.test", "@b.test"])),
                ("users".to_string(), list(&["Joseph"])),
            ]
            .into_iter()
            .collect(),
        };
        let t = |name: &str| TableRef { name: name.into(), regex: false };
        let cases = [
            ("nets", LookupKind::NetAddr, "192.0.2.9", true),
            ("nets", LookupKind::NetAddr, "[::1]", true),
            ("nets", LookupKind::NetAddr, "198.51.100.1", false),
            ("nets", LookupKind::NetAddr, "local", false),
            ("names", LookupKind::Domain, "mx.bad.test", true),
            ("names", LookupKind::Domain, "bad.test", false),
            ("names", LookupKind::Domain, "EXACT.test", true),
            ("boxes", LookupKind::MailAddr, "Joe@a.test", true),
            ("boxes", LookupKind::MailAddr, "ann@a.test", false),
            ("boxes", LookupKind::MailAddr, "ann@b.test", true),
            ("users", LookupKind::String, "joseph", true),
            ("missing", LookupKind::String, "joseph", false),
        ];
        for (name, kind, key, want) in cases {
            assert_eq!(tables.contains(&t(name), kind, key), want, "{name} {kind:?} {key}");
        }
        let re = TableRef { name: "users".into(), regex: true };
        assert!(!tables.contains(&re, LookupKind::String, "joseph") && !tables.supports(&re), "not compiled");
        assert!(tables.supports(&t("users")) && !tables.supports(&t("missing")));
        let mut compiled = Table::inline_list("re", vec![r"^mx[0-9]+\.spam\.test$".into(), "Dyn".into()]);
        compiled.compile_regexes().unwrap();
        let tables = ConfigTables { tables: [("re".to_string(), Arc::new(compiled))].into_iter().collect() };
        let re = TableRef { name: "re".into(), regex: true };
        assert!(tables.supports(&re));
        assert!(tables.contains(&re, LookupKind::Domain, "mx12.spam.test"));
        assert!(tables.contains(&re, LookupKind::Domain, "host.Dyn.example"));
        assert!(tables.contains(&re, LookupKind::Domain, "host.dyn.example"), "without regard to case");
        assert!(!tables.contains(&re, LookupKind::Domain, "mx.spam.test"));
    }
}
