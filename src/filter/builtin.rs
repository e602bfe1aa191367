//! Builtin filters: `filter NAME phase PHASE match [!]CONDITION… DECISION` (smtpd.conf(5),
//! MAIL FILTERING), evaluated as OpenSMTPD's lka_filter.c does: the rule fires when any of
//! its conditions holds; a condition on data the session has not given yet (no HELO, no
//! AUTH) does not hold, so its negation does.
//!
//! Table lookups go through [`Tables`], so this file knows nothing of how tables are stored;
//! whether a table holds regular expressions is the lookup's business too (`TableRef::regex`).

use super::protocol::Phase;

/// A table named in a condition: `<name>` or `regex <name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRef {
    pub name: String,
    pub regex: bool,
}

/// How a key is compared with a table's entries (OpenSMTPD's table services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// A host name: exact or `*.domain` entries (rdns, helo).
    Domain,
    /// An address against addresses and networks (src).
    NetAddr,
    /// A user name (auth).
    String,
    /// A mail address: `user@domain`, `@domain` or `user` entries (mail-from, rcpt-to).
    MailAddr,
}

/// Answers "is KEY in TABLE?" for builtin conditions.
pub trait Tables {
    fn contains(&self, table: &TableRef, kind: LookupKind, key: &str) -> bool;

    /// Whether `table` is answered elsewhere, by a table process the delivery process asks:
    /// the engine then waits for the answer (`SessionFilter::handle_table`).
    fn asks(&self, _table: &TableRef) -> bool {
        false
    }
}

/// A condition's lookup in a table answered elsewhere ([`Tables::asks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableQuestion {
    pub table: TableRef,
    pub kind: LookupKind,
    pub key: String,
}

impl<F: Fn(&TableRef, LookupKind, &str) -> bool> Tables for F {
    fn contains(&self, table: &TableRef, kind: LookupKind, key: &str) -> bool {
        self(table, kind, key)
    }
}

/// One condition of a builtin filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// The client's reverse DNS is forward-confirmed.
    Fcrdns,
    /// The client has a reverse DNS name.
    Rdns,
    RdnsTable(TableRef),
    Src(TableRef),
    Helo(TableRef),
    /// The session is authenticated.
    Auth,
    AuthTable(TableRef),
    MailFrom(TableRef),
    /// Only at the rcpt-to phase: the recipient of the command being filtered.
    RcptTo(TableRef),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub negate: bool,
    pub test: Test,
}

/// What a builtin filter does when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuiltinAction {
    /// Proceed at once: the rest of the chain is skipped for this phase.
    Bypass,
    /// `reject "CODE TEXT"`
    Reject(String),
    /// `disconnect "CODE TEXT"`
    Disconnect(String),
    Junk,
    /// `rewrite VALUE`: the command's parameter becomes VALUE.
    Rewrite(String),
    /// `report MESSAGE`: a filter-report event, and the chain goes on.
    Report(String),
}

/// A builtin filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinRule {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub action: BuiltinAction,
}

/// What a builtin condition may look at: the session so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The reverse DNS name, if the client has one.
    pub rdns: Option<String>,
    pub fcrdns: bool,
    /// The client's address as OpenSMTPD prints it (`1.2.3.4`, `[::1]`, `local`).
    pub src: String,
    pub helo: Option<String>,
    /// The authenticated user, once `link-auth` passed.
    pub username: Option<String>,
    pub mail_from: Option<String>,
}

impl BuiltinRule {
    /// Whether the rule fires at its phase; `rcpt` is the recipient at the rcpt-to phase.
    pub fn fires(&self, facts: &Facts, rcpt: Option<&str>, tables: &dyn Tables) -> bool {
        self.conditions.iter().any(|c| c.test.holds(facts, rcpt, tables) != c.negate)
    }
}

impl Test {
    fn holds(&self, f: &Facts, rcpt: Option<&str>, tables: &dyn Tables) -> bool {
        let lookup = |t: &TableRef, kind, key: Option<&str>| key.is_some_and(|k| tables.contains(t, kind, k));
        match self {
            Test::Fcrdns => f.fcrdns,
            // An address literal in place of a name means there was no name.
            Test::Rdns => f.rdns.as_deref().is_some_and(|n| n.parse::<std::net::IpAddr>().is_err()),
            Test::RdnsTable(t) => lookup(t, LookupKind::Domain, f.rdns.as_deref()),
            Test::Src(t) => lookup(t, LookupKind::NetAddr, Some(&f.src)),
            Test::Helo(t) => lookup(t, LookupKind::Domain, f.helo.as_deref()),
            Test::Auth => f.username.is_some(),
            Test::AuthTable(t) => lookup(t, LookupKind::String, f.username.as_deref()),
            Test::MailFrom(t) => lookup(t, LookupKind::MailAddr, f.mail_from.as_deref()),
            Test::RcptTo(t) => lookup(t, LookupKind::MailAddr, rcpt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableRef {
        TableRef { name: name.into(), regex: false }
    }

    /// `bad` holds one entry per kind; `re` matches anything containing "spam".
    fn tables(t: &TableRef, kind: LookupKind, key: &str) -> bool {
        if t.regex {
            return key.contains("spam");
        }
        match (t.name.as_str(), kind) {
            ("bad", LookupKind::NetAddr) => key == "192.0.2.1",
            ("bad", LookupKind::Domain) => key == "bad.test",
            ("bad", LookupKind::MailAddr) => key.ends_with("@bad.test"),
            ("bad", LookupKind::String) => key == "mallory",
            _ => false,
        }
    }

    fn rule(negate: bool, test: Test) -> BuiltinRule {
        BuiltinRule { phase: Phase::Connect, conditions: vec![Condition { negate, test }], action: BuiltinAction::Junk }
    }

    #[test]
    fn each_condition_and_its_negation() {
        let facts = Facts {
            rdns: Some("bad.test".into()),
            fcrdns: false,
            src: "192.0.2.1".into(),
            helo: Some("spammy.test".into()),
            username: None,
            mail_from: Some("x@bad.test".into()),
        };
        let cases = [
            (Test::Fcrdns, false),
            (Test::Rdns, true),
            (Test::RdnsTable(table("bad")), true),
            (Test::Src(table("bad")), true),
            (Test::Src(table("other")), false),
            (Test::Helo(table("bad")), false),
            (Test::Helo(TableRef { name: "re".into(), regex: true }), true),
            (Test::Auth, false),
            (Test::AuthTable(table("bad")), false),
            (Test::MailFrom(table("bad")), true),
            (Test::RcptTo(table("bad")), true),
        ];
        for (test, want) in cases {
            assert_eq!(rule(false, test.clone()).fires(&facts, Some("y@bad.test"), &tables), want, "{test:?}");
            assert_eq!(rule(true, test.clone()).fires(&facts, Some("y@bad.test"), &tables), !want, "!{test:?}");
        }
    }

    #[test]
    fn rdns_that_is_an_address_is_no_rdns_and_missing_data_never_matches() {
        let facts = Facts { rdns: Some("192.0.2.1".into()), ..Facts::default() };
        assert!(!rule(false, Test::Rdns).fires(&facts, None, &tables));
        assert!(rule(true, Test::Rdns).fires(&facts, None, &tables));
        assert!(!rule(false, Test::RcptTo(table("bad"))).fires(&facts, None, &tables));
        assert!(rule(true, Test::Helo(table("bad"))).fires(&facts, None, &tables));
    }

    #[test]
    fn any_condition_fires_the_rule() {
        let facts = Facts { src: "192.0.2.1".into(), ..Facts::default() };
        let r = BuiltinRule {
            phase: Phase::Connect,
            conditions: vec![
                Condition { negate: false, test: Test::Auth },
                Condition { negate: false, test: Test::Src(table("bad")) },
            ],
            action: BuiltinAction::Bypass,
        };
        assert!(r.fires(&facts, None, &tables));
    }
}
