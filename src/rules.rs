//! `match` evaluation: a pure function of the configuration and an envelope. Rules are
//! tried in order; the first whose every condition holds decides. A condition on a proc
//! table is a `check` of its process (`Table::check_key`), which only the delivery process
//! may wait for: elsewhere [`try_decide`] answers `LookupError::Deferred`.

use crate::config::{Action, CondKind, Config, Matcher, Verdict};
use crate::envelope::Mailbox;
use crate::envelope::{Envelope, Origin};
use crate::table::proc::TableService;
use crate::table::{domain_matches, ip_matches, LookupError};

#[derive(Debug)]
pub enum Decision<'c> {
    Deliver(&'c Action),
    Reject,
    /// No rule matched: 550 5.7.1.
    NoMatch,
}

/// The decision, where no condition needs a table process (a proc table that cannot be
/// asked here does not match).
pub fn decide<'c>(config: &'c Config, env: &Envelope<'_>) -> Decision<'c> {
    try_decide(config, env).unwrap_or(Decision::NoMatch)
}

/// The decision, or why a proc table a condition needs could not answer.
pub fn try_decide<'c>(config: &'c Config, env: &Envelope<'_>) -> Result<Decision<'c>, LookupError> {
    for rule in &config.rules {
        let mut all = true;
        for c in &rule.conds {
            if holds(config, &c.kind, env)? == c.negate {
                all = false;
                break;
            }
        }
        if all {
            return Ok(match &rule.verdict {
                Verdict::Reject => Decision::Reject,
                Verdict::Action(name) => config.actions.get(name).map_or(Decision::NoMatch, Decision::Deliver),
            });
        }
    }
    Ok(Decision::NoMatch)
}

/// `for local`: no domain, localhost, this host's names, or one of its address literals.
pub fn is_local_domain(config: &Config, domain: &str) -> bool {
    let d = domain.to_lowercase();
    if d.is_empty() || d == "localhost" || d == "localhost.localdomain" || d == config.hostname.to_lowercase() {
        return true;
    }
    if let Some(ip) = d.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        let ip = ip.trim_start_matches("ipv6:");
        return ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || local_addr(config, ip));
    }
    system_hostname().eq_ignore_ascii_case(&d)
}

/// The system's host name, asked once per process (a reload starts new ones): `for local`
/// is decided on the event loops, which ask the system nothing while serving.
fn system_hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default())
}

fn local_addr(config: &Config, ip: std::net::IpAddr) -> bool {
    config
        .listeners
        .iter()
        .any(|l| matches!(&l.kind, crate::config::ListenKind::Inet { addrs } if addrs.iter().any(|a| a.ip() == ip)))
}

/// A literal or table matcher applied with `f` to each entry; a `regex` table is matched
/// against `subject` itself. A proc table is asked to `check` `key` in `service`.
fn matches_with(
    config: &Config,
    m: &Matcher,
    subject: &str,
    (service, key): (TableService, &str),
    f: impl Fn(&str) -> bool,
) -> Result<bool, LookupError> {
    let table = match m {
        Matcher::Value(v) => return Ok(f(&v.to_lowercase())),
        Matcher::Table(t) | Matcher::Regex(t) => match config.table(t) {
            Some(t) => t,
            None => return Ok(false),
        },
    };
    if matches!(m, Matcher::Regex(_)) {
        return Ok(table.check_key(TableService::Regex, subject)?.unwrap_or_else(|| table.match_regex(subject)));
    }
    Ok(table.check_key(service, key)?.unwrap_or_else(|| table.keys().any(f)))
}

fn holds(config: &Config, cond: &CondKind, env: &Envelope<'_>) -> Result<bool, LookupError> {
    let rcpt = env.rcpt.to_lowercase();
    Ok(match cond {
        CondKind::FromAny | CondKind::ForAny => true,
        CondKind::FromLocal => env.origin.is_local(),
        CondKind::FromSocket => matches!(env.origin, Origin::Socket),
        CondKind::FromSrc(m) => match env.origin {
            Origin::Tcp(ip) => {
                let text = ip.to_string();
                matches_with(config, m, &text, (TableService::Netaddr, &text), |e| ip_matches(e, *ip))?
            }
            Origin::Socket => false,
        },
        CondKind::FromAuth(m) => match (env.auth, m) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(user), Some(m)) => {
                // OpenSMTPD's services: an address-like name is a `mailaddr`.
                let lower = user.to_lowercase();
                let service = if lower.contains('@') { TableService::Mailaddr } else { TableService::String };
                matches_with(config, m, user, (service, &lower), |e| e == lower)?
            }
        },
        CondKind::FromRdns(m) => match (env.rdns, m) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(name), Some(m)) => {
                // OpenSMTPD asks every `from` table as `netaddr`, the rDNS name too.
                let lower = name.to_lowercase();
                matches_with(config, m, name, (TableService::Netaddr, &lower), |e| domain_matches(e, &lower))?
            }
        },
        CondKind::FromMailFrom(m) => address_matches(config, m, &env.mail_from.to_lowercase())?,
        CondKind::ForLocal => is_local_domain(config, Mailbox::domain_of(env.rcpt)),
        CondKind::ForDomain(m) => {
            let domain = Mailbox::domain_of(&rcpt);
            matches_with(config, m, domain, (TableService::Domain, domain), |e| domain_matches(e, domain))?
        }
        CondKind::ForRcptTo(m) => address_matches(config, m, &rcpt)?,
        CondKind::Tls => env.tls,
        CondKind::Tag(m) => match env.tag {
            Some(tag) => {
                let lower = tag.to_lowercase();
                matches_with(config, m, tag, (TableService::String, &lower), |e| e == lower)?
            }
            None => false,
        },
        // OpenSMTPD looks the HELO name up as a domain.
        CondKind::Helo(m) => {
            let helo = env.helo.to_lowercase();
            matches_with(config, m, env.helo, (TableService::Domain, &helo), |e| domain_matches(e, &helo))?
        }
    })
}

/// Mailbox matching as OpenSMTPD's: a full address, or `@domain` for any user there.
fn address_matches(config: &Config, m: &Matcher, addr: &str) -> Result<bool, LookupError> {
    let domain = Mailbox::domain_of(addr);
    let service = (TableService::Mailaddr, addr);
    matches_with(config, m, addr, service, |e| e == addr || e.strip_prefix('@').is_some_and(|d| d == domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smtpd.conf");
        std::fs::write(&path, format!("action \"a\" mbox\naction \"b\" mbox\n{rules}")).unwrap();
        let c = crate::config::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    fn verdict(c: &Config, ip: &str, tag: Option<&str>, from: &str, rcpt: &str) -> String {
        let origin = Origin::Tcp(ip.parse().unwrap());
        let env =
            Envelope { origin: &origin, rdns: None, tag, tls: false, auth: None, mail_from: from, rcpt, helo: "" };
        match decide(c, &env) {
            Decision::Deliver(a) => a.name.clone(),
            Decision::Reject => "reject".into(),
            Decision::NoMatch => "none".into(),
        }
    }

    /// Issue 14: inline tables, `regex` forms, `tag` tables and negations.
    #[test]
    fn regex_inline_tag_and_negation() {
        let (_d, c) = config(
            "match from src { 192.0.2.0/24, 198.51.100.7 } for any reject\n\
             match !from src regex \"^10\\.\" for any action \"b\"\n\
             match tag regex \"^IN\" from any mail-from regex { \"@ok\\.test$\" } for domain { x.test } action \"a\"\n\
             match from any for rcpt-to regex \"^Root@\" action \"a\"\n",
        );
        assert_eq!(verdict(&c, "192.0.2.9", None, "s@ok.test", "u@x.test"), "reject");
        assert_eq!(verdict(&c, "198.51.100.7", None, "s@ok.test", "u@x.test"), "reject");
        assert_eq!(verdict(&c, "127.0.0.1", None, "s@ok.test", "u@x.test"), "b", "not from 10.");
        assert_eq!(verdict(&c, "10.1.1.1", Some("INBOUND"), "s@OK.test", "u@x.test"), "a", "case-insensitive");
        assert_eq!(verdict(&c, "10.1.1.1", Some("OUT"), "s@ok.test", "u@x.test"), "none");
        assert_eq!(verdict(&c, "10.1.1.1", Some("IN"), "s@ok.test.evil", "u@x.test"), "none", "anchored");
        assert_eq!(verdict(&c, "10.1.1.1", None, "s@a.test", "root@y.test"), "a");
    }
}
