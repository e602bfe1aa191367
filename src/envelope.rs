//! Types that cross layers: ids, the facts about a session that rules match on, and the
//! delivery targets that resolution produces and the delivery threads consume.
//! Pure data; no I/O.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// A message id as OpenSMTPD prints it: 8 hex digits (`msgid=64f3eab9`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u32);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A session id as OpenSMTPD prints it: 16 hex digits, first on every log line of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a connection came from, as `match from …` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The local unix socket (`listen on socket`, used by sendmail): always `from local`.
    Socket,
    /// A TCP peer. `from local` holds when the address is a loopback address.
    Tcp(IpAddr),
}

impl Origin {
    /// `from local`: the unix socket or a loopback peer (OpenSMTPD's definition).
    pub fn is_local(&self) -> bool {
        match self {
            Origin::Socket => true,
            Origin::Tcp(ip) => ip.is_loopback(),
        }
    }
}

/// Everything a `match` rule may look at when deciding one recipient. Borrowed from the
/// session so that evaluating rules allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub origin: &'a Origin,
    /// Reverse DNS name of the peer, when known.
    pub rdns: Option<&'a str>,
    /// Tag of the listener the session arrived on (`listen on … tag T`).
    pub tag: Option<&'a str>,
    /// True once the session runs over TLS (STARTTLS done or smtps).
    pub tls: bool,
    /// The authenticated user, if the session authenticated (or the local sendmail user).
    pub auth: Option<&'a str>,
    /// Reverse path of MAIL FROM, without angle brackets; empty for the null sender `<>`.
    pub mail_from: &'a str,
    /// The recipient being decided, without angle brackets.
    pub rcpt: &'a str,
    /// The name the client gave in HELO/EHLO (`match helo <t>`).
    pub helo: &'a str,
}

/// Owner of a delivered file: mxd runs as root in production and must leave each file owned
/// by its user; tests run unprivileged and leave `owner` as `None` (keep the process's ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// One place a message must land, as produced by [`crate::resolve`] for one recipient
/// (aliases may expand one recipient into several targets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Maildir: the directory holding tmp/, new/ and cur/ (created if missing, 0700).
    Maildir { dir: PathBuf, owner: Option<Owner>, delivered_to: String },
    /// An mbox file (/var/mail/USER), locked as mail(1) expects.
    Mbox { path: PathBuf, owner: Option<Owner>, delivered_to: String },
    /// A message for another host: goes to the persistent queue for relay by `action`.
    /// `orig_rcpt`: the recipient the client gave, which an alias or a .forward led to
    /// `rcpt` (the same address when nothing did): the SRS domain is its domain.
    Relay { action: String, rcpt: String, orig_rcpt: String },
    /// A message for an `mda` action's command: goes to the mda queue (`SPOOL/mda`), run
    /// from there by the parent as the user; `rcpt` is the final address (user@domain).
    Mda { action: String, rcpt: String },
}

impl Target {
    /// Whether one copy serves both: the same place, whichever recipient led there.
    pub fn same_place(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Relay { action, rcpt, .. }, Target::Relay { action: a, rcpt: r, .. }) => action == a && rcpt == r,
            _ => self == other,
        }
    }
}

/// A valid address as later layers read it: local part and domain, split at the last `@`
/// (a quoted local part may hold `@`, a domain never does). Borrowed: splitting allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mailbox<'a> {
    pub local: &'a str,
    /// Empty for an address without `@` (a bare user name, as aliases and sendmail allow).
    pub domain: &'a str,
}

impl<'a> Mailbox<'a> {
    /// `local@domain` at the last `@`; no `@` is a local part alone.
    pub fn split(addr: &'a str) -> Mailbox<'a> {
        let (local, domain) = addr.rsplit_once('@').unwrap_or((addr, ""));
        Mailbox { local, domain }
    }

    /// Only an address with an `@`; `None` for a bare user name.
    pub fn parse(addr: &'a str) -> Option<Mailbox<'a>> {
        addr.rsplit_once('@').map(|(local, domain)| Mailbox { local, domain })
    }

    /// The domain of `addr`, empty without `@`.
    pub fn domain_of(addr: &'a str) -> &'a str {
        Mailbox::split(addr).domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_splits_at_the_last_at() {
        assert_eq!(Mailbox::split("\"a@b\"@example.org"), Mailbox { local: "\"a@b\"", domain: "example.org" });
        assert_eq!(Mailbox::split("root"), Mailbox { local: "root", domain: "" });
        assert_eq!(Mailbox::parse("root"), None);
        assert_eq!(Mailbox::parse("u@"), Some(Mailbox { local: "u", domain: "" }));
        assert_eq!(Mailbox::domain_of("u@Example.ORG"), "Example.ORG");
    }
}
