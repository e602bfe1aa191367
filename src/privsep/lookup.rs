//! The delivery process's answers to questions at RCPT and MAIL ([`frame::LookupAsk`]):
//! what the smtp process cannot answer itself, because it would block its event loop (a
//! proc table) or read what it may not (a ~/.forward). The answer is what the commit will
//! find: the same `rules::try_decide` and `resolve::resolve_delivering` on this process's
//! own configuration, asked off the commit path, on threads of their own (a table process
//! may take seconds). A table that fails or times out is `TempFail` (451 4.3.0) and nothing
//! is stored; an accepted recipient is decided again at commit, as every recipient is.
//!
//! The question is untrusted: it is only an envelope a client could have sent. Its answer
//! is one of a few verdicts, never a path or a table's value; a `senders` question is
//! answered only for a table some listener names with that `masquerade`. The one value
//! given back is a `hostnames` table's name for a local address, asked only of a table
//! some listener names so, and only when it can stand in a greeting (`host_name_ok`). A
//! builtin filter's condition is answered only for a table, form and comparison some
//! `filter` statement uses.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::frame::{host_name_ok, LookupAsk, LookupQuestion, LookupVerdict};
use crate::auth::senders::sender_allowed;
use crate::config::{Config, FilterKind};
use crate::envelope::Envelope;
use crate::filter::LookupKind;
use crate::resolve::{self, ResolveError};
use crate::rules::{self, Decision};
use crate::table::proc::TableService;
use crate::table::LookupError;
use crate::users::SystemUsers;

/// Threads answering at once, and questions waiting (more get `TempFail`, a 451).
const WORKERS: usize = 4;
const WAITING: usize = 512;

type Answers = Sender<(u64, LookupVerdict)>;

/// The answering threads; dropping it lets them finish.
pub struct Lookups {
    asks: Sender<LookupAsk>,
    answers: Answers,
}

impl Lookups {
    pub fn start(config: &Arc<Config>, answers: Answers) -> Lookups {
        let (asks, rx) = crossbeam_channel::bounded::<LookupAsk>(WAITING);
        for i in 0..WORKERS {
            let (rx, config, answers) = (rx.clone(), Arc::clone(config), answers.clone());
            let spawned =
                std::thread::Builder::new().name(format!("lookup-{i}")).spawn(move || serve(&rx, &config, &answers));
            if let Err(e) = spawned {
                log::error!("lookup: cannot start a thread: {e}");
            }
        }
        Lookups { asks, answers }
    }

    /// Takes one question; never waits (called by the link's reader).
    pub fn ask(&self, ask: LookupAsk) {
        if let Err(TrySendError::Full(ask) | TrySendError::Disconnected(ask)) = self.asks.try_send(ask) {
            log::warn!("lookup: too many questions waiting; answered 451 for now");
            let _ = self.answers.send((ask.seq, LookupVerdict::TempFail));
        }
    }
}

fn serve(rx: &Receiver<LookupAsk>, config: &Config, answers: &Answers) {
    for ask in rx.iter() {
        let verdict = answer(config, &ask);
        let _ = answers.send((ask.seq, verdict));
    }
}

/// The verdict on one question, as the commit would decide it.
pub fn answer(config: &Config, ask: &LookupAsk) -> LookupVerdict {
    let rcpt = match &ask.question {
        LookupQuestion::Rcpt(r) => r.as_str(),
        LookupQuestion::Sender { table, masquerade } => return sender(config, ask, table, *masquerade),
        LookupQuestion::Hostname { table, local } => return hostname(config, table, *local),
        LookupQuestion::FilterTable { table, regex, kind, key } => {
            return filter_table(config, table, *regex, *kind, key)
        }
    };
    let Ok(decoded) = crate::srs::reverse(config, rcpt) else { return LookupVerdict::BadSrs };
    let rcpt = decoded.as_deref().unwrap_or(rcpt);
    let env = Envelope {
        origin: &ask.origin,
        rdns: ask.rdns.as_deref(),
        tag: ask.tag.as_deref(),
        tls: ask.tls,
        auth: ask.auth.as_deref(),
        mail_from: &ask.mail_from,
        rcpt,
        helo: &ask.helo,
    };
    let action = match rules::try_decide(config, &env) {
        Ok(Decision::Deliver(action)) => action,
        Ok(Decision::Reject | Decision::NoMatch) => return LookupVerdict::NotAuthorized,
        Err(e) => return failed(rcpt, &e.to_string()),
    };
    match resolve::resolve_delivering(config, action, &env, &SystemUsers) {
        Ok(_) => LookupVerdict::Ok,
        Err(e) => {
            log::debug!("lookup: <{rcpt}> refused: {e}");
            match e {
                ResolveError::UnknownUser(_) => LookupVerdict::UnknownUser,
                ResolveError::Forward(_) => LookupVerdict::ForwardTempFail,
                ResolveError::ExpandOnly(_) => LookupVerdict::ForwardPermFail,
                ResolveError::Loop(_) => LookupVerdict::Loop,
                ResolveError::BadPath(_) => LookupVerdict::UnsafeMailbox,
                ResolveError::Unsupported(_) => LookupVerdict::Unsupported,
                ResolveError::Refused(_) => LookupVerdict::NotAuthorized,
                ResolveError::Empty(_) => LookupVerdict::Empty,
                ResolveError::Deferred(why) | ResolveError::TableFailed(why) => failed(rcpt, &why),
            }
        }
    }
}

fn failed(subject: &str, why: &str) -> LookupVerdict {
    log::warn!("lookup: <{subject}> not decided: {why}");
    LookupVerdict::TempFail
}

/// `senders <t> [masquerade]`: may the authenticated user send as MAIL FROM?
fn sender(config: &Config, ask: &LookupAsk, table: &str, masquerade: bool) -> LookupVerdict {
    let offered = config
        .listeners
        .iter()
        .any(|l| l.options.senders.as_deref() == Some(table) && l.options.masquerade == masquerade);
    let (Some(t), Some(user), true) = (config.table(table), ask.auth.as_deref(), offered) else {
        log::warn!("lookup: a senders question for table '{table}', which no listener uses so");
        return LookupVerdict::SenderNotAllowed;
    };
    let found = match t.lookup_value(TableService::Mailaddrmap, user) {
        Ok(found) => found,
        Err(LookupError::Deferred(why) | LookupError::Failed(why)) => return failed(user, &why),
    };
    let lookup = |_: &str| found.as_deref().map(crate::table::split_list);
    if sender_allowed(user, &ask.mail_from, lookup, masquerade, config.sub_addr_delim) {
        LookupVerdict::Ok
    } else {
        LookupVerdict::SenderNotAllowed
    }
}

/// `listen … hostnames <t>`: the table's name for the local address a client reached
/// (OpenSMTPD's `addrname` lookup); `Empty` when it has none.
fn hostname(config: &Config, table: &str, local: std::net::IpAddr) -> LookupVerdict {
    let named = config.listeners.iter().any(|l| l.options.hostnames.as_deref() == Some(table));
    let (Some(t), true) = (config.table(table), named) else {
        log::warn!("lookup: a hostnames question for table '{table}', which no listener uses so");
        return LookupVerdict::TempFail;
    };
    let key = local.to_string();
    match t.lookup_value(TableService::Addrname, &key) {
        Ok(Some(name)) if host_name_ok(name.trim()) => LookupVerdict::Name(name.trim().to_owned()),
        Ok(Some(name)) => {
            log::warn!("lookup: table {table} names {key} \"{}\", not a host name", name.escape_debug());
            LookupVerdict::TempFail
        }
        Ok(None) => LookupVerdict::Empty,
        Err(LookupError::Deferred(why) | LookupError::Failed(why)) => failed(&key, &why),
    }
}

/// A builtin filter's condition on a table process: `Ok` when `key` is in `table`,
/// compared as the condition compares it (OpenSMTPD's `check` services).
fn filter_table(config: &Config, table: &str, regex: bool, kind: LookupKind, key: &str) -> LookupVerdict {
    let kind_of = |what: &str| match what {
        "rdns" | "helo" => Some(LookupKind::Domain),
        "src" => Some(LookupKind::NetAddr),
        "auth" => Some(LookupKind::String),
        "mail-from" | "rcpt-to" => Some(LookupKind::MailAddr),
        _ => None,
    };
    let used = config.knobs.filters.values().any(|f| match &f.kind {
        FilterKind::Builtin { conds, .. } => conds
            .iter()
            .any(|c| c.table.as_deref() == Some(table) && c.regex == regex && kind_of(&c.what) == Some(kind)),
        _ => false,
    });
    let (Some(t), true) = (config.table(table), used) else {
        log::warn!("lookup: a filter question for table '{table}', which no filter condition uses so");
        return LookupVerdict::TempFail;
    };
    let service = match (regex, kind) {
        (true, _) => TableService::Regex,
        (false, LookupKind::Domain) => TableService::Domain,
        (false, LookupKind::NetAddr) => TableService::Netaddr,
        (false, LookupKind::String) => TableService::String,
        (false, LookupKind::MailAddr) => TableService::Mailaddr,
    };
    // Compared as for a file table (`filter::tables`): without regard to case, an IPv6
    // client without its brackets; `local` (the socket) is no address.
    let mut key = if regex { key.to_owned() } else { key.to_lowercase() };
    if kind == LookupKind::NetAddr && !regex {
        match key.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => key = ip.to_string(),
            Err(_) => return LookupVerdict::NotAuthorized,
        }
    }
    match t.check_key(service, &key) {
        Ok(Some(true)) => LookupVerdict::Ok,
        Ok(_) => LookupVerdict::NotAuthorized,
        Err(LookupError::Deferred(why) | LookupError::Failed(why)) => failed(&key, &why),
    }
}
