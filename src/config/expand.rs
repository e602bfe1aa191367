//! Format specifiers in paths (smtpd.conf(5) "FORMAT SPECIFIERS"): `%{token}` with an
//! optional range `[n]`, `[n:m]` (character positions, inclusive, negative from the end)
//! and modifiers `:lowercase`, `:uppercase`, `:strip` (drop the sub-address, `user+tag` →
//! `user`). `%%` is a literal `%`.
//!
//! Security invariant: a value taken from an address (sender, rcpt, dest, mbox.from) can
//! never add a path component: one containing `/`, or producing `.`/`..`, or NUL, is refused.

use std::fmt;

use crate::envelope::Mailbox;

/// The values a template may use. `user_*` come from the password database or a userbase
/// table (trusted); the others come from the envelope (untrusted).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpandCtx<'a> {
    pub sender: &'a str,
    pub rcpt: &'a str,
    pub dest: &'a str,
    pub user_name: &'a str,
    pub user_dir: &'a str,
    pub sub_addr_delim: char,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpandError {
    /// Template syntax: what was expected.
    Syntax(&'static str),
    UnknownToken(String),
    /// A value from an address would escape its directory.
    Unsafe {
        token: String,
        value: String,
    },
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Syntax(e) => write!(f, "format specifier: expected {e}"),
            ExpandError::UnknownToken(t) => write!(f, "unknown format specifier %{{{t}}}"),
            ExpandError::Unsafe { token, value } => write!(f, "%{{{token}}} expands to an unsafe path part {value:?}"),
        }
    }
}

/// The raw value of a token and whether it comes from an address.
fn token_value<'a>(ctx: &ExpandCtx<'a>, name: &str) -> Result<(&'a str, bool), ExpandError> {
    Ok(match name {
        "sender" | "mbox.from" => (ctx.sender, true),
        "sender.user" => (Mailbox::split(ctx.sender).local, true),
        "sender.domain" => (Mailbox::split(ctx.sender).domain, true),
        "rcpt" => (ctx.rcpt, true),
        "rcpt.user" => (Mailbox::split(ctx.rcpt).local, true),
        "rcpt.domain" => (Mailbox::split(ctx.rcpt).domain, true),
        "dest" => (ctx.dest, true),
        "dest.user" => (Mailbox::split(ctx.dest).local, true),
        "dest.domain" => (Mailbox::split(ctx.dest).domain, true),
        "user.username" => (ctx.user_name, false),
        "user.directory" => (ctx.user_dir, false),
        other => return Err(ExpandError::UnknownToken(other.to_owned())),
    })
}

/// Applies `[n]` or `[n:m]`: character positions, inclusive, negative counting from the end.
fn range(value: &str, spec: &str) -> Result<String, ExpandError> {
    let chars: Vec<char> = value.chars().collect();
    let len = chars.len() as i64;
    let parse = |s: &str, default: i64| -> Result<i64, ExpandError> {
        if s.is_empty() {
            return Ok(default);
        }
        s.parse::<i64>().map_err(|_| ExpandError::Syntax("a number in [n:m]"))
    };
    let (a, b) = match spec.split_once(':') {
        Some((a, b)) => (parse(a, 0)?, parse(b, len - 1)?),
        None => {
            let n = parse(spec, 0)?;
            (n, n)
        }
    };
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    let (a, b) = (fix(a), fix(b).min(len - 1));
    if len == 0 || a > b {
        return Ok(String::new());
    }
    Ok(chars[a as usize..=b as usize].iter().collect())
}

fn modify(mut value: String, modifier: &str, delim: char) -> Result<String, ExpandError> {
    match modifier {
        "lowercase" => value = value.to_lowercase(),
        "uppercase" => value = value.to_uppercase(),
        "strip" => {
            let Mailbox { local: user, domain } = Mailbox::split(&value);
            let user = user.split(delim).next().unwrap_or(user);
            value =
                if domain.is_empty() && !value.contains('@') { user.to_owned() } else { format!("{user}@{domain}") };
        }
        "raw" => {}
        _ => return Err(ExpandError::Syntax("a modifier: lowercase, uppercase, strip or raw")),
    }
    Ok(value)
}

pub fn expand(template: &str, ctx: &ExpandCtx<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            out.push('%');
            rest = r;
            continue;
        }
        let Some(body) = rest.strip_prefix('{') else {
            return Err(ExpandError::Syntax("'{' or '%' after '%'"));
        };
        let end = body.find('}').ok_or(ExpandError::Syntax("'}' closing the format specifier"))?;
        out.push_str(&expand_one(&body[..end], ctx)?);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    // A value could form ".." only with help from the template ("/.%{rcpt.user}" and "."):
    // whatever its origin, no more ".." components may come out than went in.
    let dotdots = |s: &str| s.split('/').filter(|c| *c == "..").count();
    if dotdots(&out) > dotdots(template) {
        return Err(ExpandError::Unsafe { token: "path".into(), value: out });
    }
    Ok(out)
}

/// One `token[range]:mod:mod` specifier.
fn expand_one(spec: &str, ctx: &ExpandCtx<'_>) -> Result<String, ExpandError> {
    let name_end = spec.find(['[', ':']).unwrap_or(spec.len());
    let (name, mut rest) = spec.split_at(name_end);
    let mut range_spec = None;
    if let Some(r) = rest.strip_prefix('[') {
        let close = r.find(']').ok_or(ExpandError::Syntax("']' closing the range"))?;
        range_spec = Some(&r[..close]);
        rest = &r[close + 1..];
    }
    let modifiers = match rest {
        "" => None,
        _ => Some(rest.strip_prefix(':').ok_or(ExpandError::Syntax("':' before a modifier"))?),
    };
    let (raw, from_address) = token_value(ctx, name)?;
    let mut value = raw.to_owned();
    if let Some(r) = range_spec {
        value = range(&value, r)?;
    }
    for m in modifiers.into_iter().flat_map(|m| m.split(':')) {
        value = modify(value, m, ctx.sub_addr_delim)?;
    }
    if from_address && (value.contains('/') || value.contains('\0') || value == "." || value == "..") {
        return Err(ExpandError::Unsafe { token: name.to_owned(), value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(rcpt: &'static str) -> ExpandCtx<'static> {
        ExpandCtx {
            sender: "Sender+x@Example.ORG",
            rcpt,
            dest: "joseph@home.lan",
            user_name: "joseph",
            user_dir: "/home/joseph",
            sub_addr_delim: '+',
        }
    }

    #[test]
    fn tokens_and_modifiers() {
        let c = ctx("Joseph+cron@Devbox.home.lan");
        let cases = [
            ("/home/%{user.username}/Maildir", "/home/joseph/Maildir"),
            ("%{user.directory}/Maildir", "/home/joseph/Maildir"),
            ("/m/%{rcpt.domain:lowercase}/%{rcpt.user:lowercase:strip}", "/m/devbox.home.lan/joseph"),
            ("%{rcpt.user:uppercase}", "JOSEPH+CRON"),
            ("%{sender:strip:lowercase}", "sender@example.org"),
            ("%{dest.user}", "joseph"),
            ("%{user.username[0]}/%{user.username}", "j/joseph"),
            ("%{user.username[1:3]}", "ose"),
            ("%{user.username[-2:]}", "ph"),
            ("100%%", "100%"),
        ];
        for (t, want) in cases {
            assert_eq!(expand(t, &c).as_deref(), Ok(want), "{t}");
        }
        assert!(matches!(expand("%{nope}", &c), Err(ExpandError::UnknownToken(_))));
        assert!(matches!(expand("%{rcpt", &c), Err(ExpandError::Syntax(_))));
        assert!(matches!(expand("%x", &c), Err(ExpandError::Syntax(_))));
        assert!(matches!(expand("%{rcpt:bogus}", &c), Err(ExpandError::Syntax(_))));
    }

    #[test]
    fn hostile_addresses_cannot_escape() {
        for rcpt in ["../../x@test", "a/b@test", "..@test", ".@test", "x@../../etc", "/etc/passwd@test", "a\0b@test"] {
            for t in [
                "/var/mail/%{rcpt.user}",
                "/m/%{rcpt.domain}/%{rcpt.user}",
                "/m/%{rcpt}",
                "/m/.%{rcpt.user}",
                "/m/%{rcpt.user:strip:lowercase}",
            ] {
                let r = expand(t, &ctx(rcpt));
                if let Ok(path) = &r {
                    assert!(!path.split('/').any(|c| c == ".."), "{t} with {rcpt:?} gave {path}");
                    let tail = path.trim_start_matches("/m/").trim_start_matches("/var/mail/");
                    assert!(!tail.contains('/') || t.contains("%{rcpt.domain}/"), "{t} with {rcpt:?} gave {path}");
                }
            }
        }
        assert!(matches!(expand("/m/%{rcpt.user}", &ctx("a/b@test")), Err(ExpandError::Unsafe { .. })));
        assert!(matches!(expand("/m/.%{rcpt.user}", &ctx(".@test")), Err(ExpandError::Unsafe { .. })));
        // A template's own ".." is the administrator's business.
        assert!(expand("/m/../x/%{user.username}", &ctx("a@b")).is_ok());
    }
}
