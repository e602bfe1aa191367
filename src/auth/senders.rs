//! `listen … senders <t> [masquerade]`: the MAIL FROM addresses an authenticated user may
//! use. The table maps a user to a list of entries, matched as OpenSMTPD matches them:
//!
//! - `joseph@example.org`: that address, and its sub-addresses (`joseph+cron@…`) unless the
//!   entry has a sub-address of its own; the local part case-insensitively;
//! - `@example.org`: any address in that domain (`*.example.org` for its subdomains);
//! - `joseph`: that local part in any domain;
//! - `@`: any address at all.
//!
//! With `masquerade`, any address in the domain of one of the user's entries is allowed too.
//! A user the table does not list may send as nobody. A refusal is `550 5.7.1`
//! (`smtp::reply::SENDER_NOT_ALLOWED`).

use crate::envelope::Mailbox;
use crate::table::domain_matches;

/// May `user` send with `mail_from` (as parsed by the session: empty for `<>`)?
/// `lookup` gives the user's entries from the `senders` table, `None` for an unknown user.
pub fn sender_allowed<I, S>(
    user: &str,
    mail_from: &str,
    lookup: impl FnOnce(&str) -> Option<I>,
    masquerade: bool,
    sub_addr_delim: char,
) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let Some(entries) = lookup(user) else { return false };
    let Mailbox { local, domain } = Mailbox::split(mail_from);
    let domain = domain.to_lowercase();
    entries.into_iter().any(|entry| {
        let Mailbox { local: e_local, domain: e_domain } = Mailbox::split(entry.as_ref());
        let e_domain = e_domain.to_lowercase();
        if masquerade && !e_domain.is_empty() && !domain.is_empty() && domain_matches(&e_domain, &domain) {
            return true;
        }
        entry_matches(local, &domain, e_local, &e_domain, sub_addr_delim)
    })
}

fn entry_matches(local: &str, domain: &str, e_local: &str, e_domain: &str, delim: char) -> bool {
    if e_local.is_empty() && e_domain.is_empty() {
        return true;
    }
    if !e_domain.is_empty() && !domain_matches(e_domain, domain) {
        return false;
    }
    if e_local.is_empty() {
        return true;
    }
    let local = if e_local.contains(delim) { local } else { local.split(delim).next().unwrap_or(local) };
    !local.is_empty() && local.eq_ignore_ascii_case(e_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str], from: &str, masquerade: bool) -> bool {
        let lookup = |user: &str| (user == "joseph").then(|| entries.to_vec());
        sender_allowed("joseph", from, lookup, masquerade, '+')
    }

    #[test]
    fn entries_match_as_opensmtpd_matches_them() {
        let e = ["joseph@example.org", "@example.net", "root", "alias+tag@example.com"];
        for from in ["joseph@example.org", "JOSEPH@Example.ORG", "joseph+cron@example.org", "anyone@example.net"] {
            assert!(allowed(&e, from, false), "{from}");
        }
        assert!(allowed(&e, "root@elsewhere.test", false));
        assert!(allowed(&e, "alias+tag@example.com", false));
        for from in ["alice@example.org", "joseph@example.com", "alias@example.com", "alias+other@example.com", ""] {
            assert!(!allowed(&e, from, false), "{from:?}");
        }
        assert!(allowed(&["@"], "", false), "catch-all allows even <>");
        assert!(allowed(&["@*.example.org"], "x@a.example.org", false));
        assert!(!allowed(&["@*.example.org"], "x@example.org", false));
    }

    #[test]
    fn masquerade_allows_the_domains_of_the_users_entries() {
        let e = ["joseph@example.org"];
        assert!(!allowed(&e, "postmaster@example.org", false));
        assert!(allowed(&e, "postmaster@example.org", true));
        assert!(!allowed(&e, "joseph@example.net", true));
        assert!(!allowed(&e, "", true));
    }

    #[test]
    fn unknown_user_may_send_as_nobody() {
        let lookup = |_: &str| None::<Vec<String>>;
        assert!(!sender_allowed("mallory", "mallory@example.org", lookup, true, '+'));
    }
}
