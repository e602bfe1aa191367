//! The top-level statements beyond listeners, actions and rules: `queue`, `srs`, `bounce`,
//! `mta`/`mda`/`scheduler` limits, `admd`, `proc` and `filter` (parse.y's grammar). Each
//! parses into [`Knobs`](crate::config::Knobs); what mxd does not act on yet gets a notice. Filters
//! are checked against what the daemon can run in `crate::filter::config`.

use super::{duration, Parsed, Parser, R};
use crate::config::lexer::Tok;
use crate::config::{ErrorKind, FilterAction, FilterCond, FilterKind, Limit, Proc, QueueKey};

/// `queue compression | encryption [KEY|stdin] | ttl DURATION`.
pub(super) fn queue(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let Some(w) = p.keyword(&["compression", "encryption", "ttl"]) else {
        return p.err("compression, encryption or ttl after 'queue'");
    };
    match w.as_str() {
        "ttl" => out.queue_ttl = Some(duration(&p.value("a duration")?)?),
        "compression" => {
            out.knobs.queue_compression = true;
        }
        _ => {
            let key = if p.at_end() {
                QueueKey::Ask
            } else {
                match p.value("a key or 'stdin'")? {
                    k if k.eq_ignore_ascii_case("stdin") || k == "-" => QueueKey::Stdin,
                    k if super::super::queue_key::parse_key(&k).is_ok() => QueueKey::Key(k),
                    k => {
                        return Err(ErrorKind::BadValue {
                            what: "queue encryption key",
                            value: k,
                            expected: "32 characters or 64 hexadecimal digits, or 'stdin'",
                        })
                    }
                }
            };
            out.knobs.queue_encryption = Some(key);
        }
    }
    Ok(())
}

/// `srs key [backup] SECRET`, `srs ttl DURATION`.
pub(super) fn srs(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let Some(w) = p.keyword(&["key", "ttl"]) else {
        return p.err("key or ttl after 'srs'");
    };
    if w == "ttl" {
        let v = p.value("a duration")?;
        let ttl = duration(&v)?;
        // OpenSMTPD counts SRS ages in days.
        if ttl.as_secs() < 86_400 {
            return Err(ErrorKind::BadValue { what: "srs ttl", value: v, expected: "at least one day (1d)" });
        }
        out.knobs.srs_ttl = Some(ttl);
        return Ok(());
    }
    let backup = p.keyword(&["backup"]).is_some();
    let secret = p.value("a secret")?;
    // The signing key comes first; backup keys only verify.
    if backup || out.knobs.srs_keys.is_empty() {
        out.knobs.srs_keys.push(secret);
    } else {
        out.knobs.srs_keys.insert(0, secret);
    }
    Ok(())
}

/// `bounce warn-interval DELAY[, DELAY…]` (at most 4, as OpenSMTPD).
pub(super) fn bounce(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    p.expect_word("warn-interval")?;
    out.knobs.bounce_warn.clear();
    loop {
        let d = duration(&p.value("a delay such as 4h")?)?;
        if out.knobs.bounce_warn.len() < 4 {
            out.knobs.bounce_warn.push(d);
        }
        if !p.punct(',') {
            break;
        }
    }
    Ok(())
}

const MDA_LIMITS: &[&str] = &["max-session", "max-session-per-user", "task-lowat", "task-hiwat", "task-release"];
const SCHEDULER_LIMITS: &[&str] = &["max-inflight", "max-evp-batch-size", "max-msg-batch-size", "max-schedule"];
/// smtpd's limit_mta_set().
const MTA_LIMITS: &[&str] = &[
    "max-mx-per-domain",
    "max-conn-per-host",
    "max-conn-per-route",
    "max-conn-per-source",
    "max-conn-delay-per-source",
    "max-conn-per-connector",
    "max-conn-delay-per-connector",
    "max-conn-per-relay",
    "max-conn-delay-per-relay",
    "max-conn-per-domain",
    "max-conn-delay-per-domain",
    "max-mail-per-session",
    "discdelay-route",
    "session-time-connect",
    "session-time-greeting",
    "session-time-helo",
    "session-time-mail",
    "session-time-rcpt",
    "session-time-data",
    "session-time-data-end",
    "session-time-quit",
    "task-hiwat",
    "task-lowat",
    "task-release",
    "max-deferred",
];

/// `mta max-deferred N`, `mta limit [for domain D] …`, `mda limit …`, `mda wrapper NAME
/// COMMAND`, `scheduler limit …`.
pub(super) fn limits(p: &mut Parser<'_>, out: &mut Parsed, scope: &str) -> R<()> {
    let at = p.origin();
    if scope == "mta" && p.keyword(&["max-deferred"]).is_some() {
        out.knobs.mta_max_deferred = Some(p.number("max-deferred")?);
        out.notice(&at, "mta max-deferred: accepted, no effect (mxd keeps every deferred message in its queue)");
        return Ok(());
    }
    if scope == "mda" && p.keyword(&["wrapper"]).is_some() {
        let name = p.value("a wrapper name")?;
        let command = p.value("a command")?;
        out.knobs.mda_wrappers.insert(name, command);
        return Ok(());
    }
    p.expect_word("limit")?;
    let (scope, names): (&'static str, &[&str]) = match scope {
        "mta" => ("mta", MTA_LIMITS),
        "mda" => ("mda", MDA_LIMITS),
        _ => ("scheduler", SCHEDULER_LIMITS),
    };
    let mut limit = Limit { at: at.clone(), scope, domain: None, family: None, values: Vec::new() };
    if scope == "mta" && p.keyword(&["for"]).is_some() {
        p.expect_word("domain")?;
        limit.domain = Some(p.value("a domain")?);
    }
    while !p.at_end() {
        if scope == "mta" {
            match p.keyword(&["inet4", "inet6"]).as_deref() {
                Some("inet4") => {
                    limit.family = Some(4);
                    continue;
                }
                Some(_) => {
                    limit.family = Some(6);
                    continue;
                }
                None => {}
            }
        }
        let name = p.value("a limit name")?;
        if !names.contains(&name.as_str()) {
            return Err(ErrorKind::BadValue {
                what: "limit",
                value: name,
                expected: match scope {
                    "mta" => "an mta limit such as max-conn-per-host",
                    "mda" => "max-session, max-session-per-user, task-lowat, task-hiwat or task-release",
                    _ => "max-inflight, max-evp-batch-size, max-msg-batch-size or max-schedule",
                },
            });
        }
        let n = p.number("limit")?;
        limit.values.push((name, n));
    }
    // The relay honours `max-mail-per-session`, and nothing else here.
    if scope != "mta" || limit.values.iter().any(|(name, _)| name != "max-mail-per-session") {
        let honoured = if scope == "mta" { "; max-mail-per-session is honoured" } else { "" };
        out.notice(&at, format!("{scope} limit: accepted, no effect (mxd sizes its own {scope} work{honoured})"));
    }
    out.knobs.limits.push(limit);
    Ok(())
}

/// `admd NAME`.
pub(super) fn admd(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("an authserv-id")?;
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ErrorKind::BadValue { what: "admd", value: name, expected: "printable characters, no blanks" });
    }
    out.knobs.admd = Some(name);
    out.notice(&at, "admd: accepted, no effect (mxd adds no Authentication-Results header)");
    Ok(())
}

/// `[user U] [group G] [chroot DIR]` after a proc's command.
fn proc_params(p: &mut Parser<'_>, proc: &mut Proc) -> R<()> {
    while let Some(w) = p.keyword(&["user", "group", "chroot"]) {
        let v = p.value("a name")?;
        match w.as_str() {
            "user" => proc.user = Some(v),
            "group" => proc.group = Some(v),
            _ => proc.chroot = Some(v),
        }
    }
    Ok(())
}

/// `proc NAME COMMAND [user U] [group G] [chroot DIR]`.
pub(super) fn proc(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("a proc name")?;
    let command = p.value("a command")?;
    let mut proc = Proc { name: name.clone(), at: at.clone(), command, user: None, group: None, chroot: None };
    proc_params(p, &mut proc)?;
    if out.knobs.procs.insert(name.clone(), proc).is_some() {
        return Err(ErrorKind::Duplicate { what: "proc", name });
    }
    Ok(())
}

const FILTER_ACTIONS: &[&str] = &["bypass", "junk", "reject", "disconnect", "rewrite", "report"];
const PHASES: &[&str] = &["connect", "helo", "ehlo", "auth", "mail-from", "rcpt-to", "data", "commit"];

/// `filter NAME proc P | proc-exec CMD … | phase PHASE match COND ACTION | chain { … }`.
pub(super) fn filter(p: &mut Parser<'_>, out: &mut Parsed) -> R<()> {
    let at = p.origin();
    let name = p.value("a filter name")?;
    let Some(how) = p.keyword(&["proc", "proc-exec", "phase", "chain"]) else {
        return p.err("proc, proc-exec, phase or chain after the filter's name");
    };
    let kind = match how.as_str() {
        "proc" => FilterKind::Proc(p.value("a proc name")?),
        "proc-exec" => {
            let command = p.value("a command")?;
            let mut proc = Proc { name: name.clone(), at: at.clone(), command, user: None, group: None, chroot: None };
            proc_params(p, &mut proc)?;
            FilterKind::ProcExec(proc)
        }
        "chain" => {
            if !p.punct('{') {
                return p.err("'{' and the chain's filters");
            }
            FilterKind::Chain(p.name_list()?)
        }
        _ => builtin(p, out)?,
    };
    add_filter(out, name, at, kind)
}

fn add_filter(out: &mut Parsed, name: String, at: crate::config::ConfigLine, kind: FilterKind) -> R<()> {
    if out.knobs.filters.contains_key(&name) {
        return Err(ErrorKind::Duplicate { what: "filter", name });
    }
    out.knobs.filters.insert(name.clone(), crate::config::Filter { name, at, kind });
    Ok(())
}

/// `phase PHASE match [!]CONDITION ACTION`.
fn builtin(p: &mut Parser<'_>, out: &mut Parsed) -> R<FilterKind> {
    let Some(phase) = p.keyword(PHASES) else {
        return p.err(&format!("a phase ({})", PHASES.join(", ")));
    };
    p.expect_word("match")?;
    let negate = p.punct('!');
    let Some(what) = p.keyword(&["fcrdns", "rdns", "src", "helo", "auth", "mail-from", "rcpt-to"]) else {
        return p.err("fcrdns, rdns, src, helo, auth, mail-from or rcpt-to");
    };
    let regex = p.keyword(&["regex"]).is_some();
    let table = match p.peek() {
        Tok::Punct('<' | '{') | Tok::Str(_) => Some(p.tables(out)?),
        Tok::Word(w) if !FILTER_ACTIONS.contains(&w.as_str()) => Some(p.tables(out)?),
        _ => None,
    };
    let needs_table = !matches!(what.as_str(), "fcrdns" | "rdns" | "auth");
    if (needs_table || regex) && table.is_none() {
        return p.err("a table <name> after the condition");
    }
    let Some(act) = p.keyword(FILTER_ACTIONS) else {
        return p.err("bypass, junk, reject MESSAGE, disconnect MESSAGE, rewrite VALUE or report VALUE");
    };
    let action = match act.as_str() {
        "bypass" => FilterAction::Bypass,
        "junk" => FilterAction::Junk,
        "reject" => FilterAction::Reject(p.value("a reply such as \"550 go away\"")?),
        "disconnect" => FilterAction::Disconnect(p.value("a reply such as \"421 bye\"")?),
        "rewrite" => FilterAction::Rewrite(p.value("a value")?),
        _ => FilterAction::Report(p.value("a value")?),
    };
    Ok(FilterKind::Builtin { phase, conds: vec![FilterCond { negate, what, regex, table }], action })
}

/// `filter NAME` or `filter { A, B }` on a listener or relay: an inline list becomes an
/// anonymous chain.
pub(super) fn filter_ref(p: &mut Parser<'_>, out: &mut Parsed) -> R<String> {
    let at = p.origin();
    if p.punct('{') {
        let chain = p.name_list()?;
        let name = format!("<dynchain:{}:{}>", at.file.display(), at.line);
        add_filter(out, name.clone(), at, FilterKind::Chain(chain))?;
        return Ok(name);
    }
    p.value("a filter name or { … }")
}

/// Filters named by chains, listeners and relays must exist (checked after parsing, since
/// parse.y requires definition before use but includes may reorder).
pub(in crate::config) fn undefined_filters(out: &Parsed) -> Vec<(crate::config::ConfigLine, String)> {
    let known = |n: &String| out.knobs.filters.contains_key(n);
    let mut missing = Vec::new();
    for f in out.knobs.filters.values() {
        match &f.kind {
            FilterKind::Chain(names) => {
                missing.extend(names.iter().filter(|n| !known(n)).map(|n| (f.at.clone(), n.clone())))
            }
            FilterKind::Proc(proc) if !out.knobs.procs.contains_key(proc) => {
                missing.push((f.at.clone(), format!("proc:{proc}")))
            }
            _ => {}
        }
    }
    for l in &out.listeners {
        if let Some(n) = l.options.filter.as_ref().filter(|n| !known(n)) {
            missing.push((l.at.clone(), n.clone()));
        }
    }
    for a in &out.actions {
        if let crate::config::Method::Relay(r) = &a.method {
            if let Some(n) = r.filter.as_ref().filter(|n| !known(n)) {
                missing.push((a.at.clone(), n.clone()));
            }
        }
    }
    missing
}
