//! From smtpd.conf's filter statements (`Config::knobs`) to what the daemon runs: the
//! processes to start (`proc`, `proc-exec`) and, for every filter a listener names, its
//! chain in order (`filter NAME chain { … }` flattened). Also the checks `mxd -n` and a
//! start make: the program of each process exists and is executable, and nothing is
//! configured that the daemon would have to ignore.

use std::collections::BTreeMap;

use super::builtin::{BuiltinAction, BuiltinRule, Condition, TableRef, Test};
use super::chain::{ChainFilter, ChainFilterKind, FilterChain};
use super::process::ProcSpec;
use super::protocol::Phase;
use crate::config::{self, Config, FilterAction, FilterCond};

pub use crate::config::filter_check::{problems, Problem};

/// The filter processes and listener chains of a configuration.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Every process a listener's chain uses, once.
    pub procs: Vec<ProcSpec>,
    /// By the name a listener gives (`listen … filter NAME`).
    pub chains: BTreeMap<String, FilterChain>,
}

/// Builds the plan for the filters the configuration's listeners name. A loaded
/// `Config` has passed [`problems`], so names resolve; anything that does not is skipped.
pub fn plan(config: &Config) -> Plan {
    let mut plan = Plan::default();
    let knobs = &config.knobs;
    for name in config.listeners.iter().filter_map(|l| l.options.filter.as_ref()) {
        if plan.chains.contains_key(name) {
            continue;
        }
        let members: Vec<&String> = match knobs.filters.get(name).map(|f| &f.kind) {
            Some(config::FilterKind::Chain(names)) => names.iter().collect(),
            Some(_) => vec![name],
            None => continue,
        };
        let mut chain = FilterChain::default();
        for m in members {
            let Some(f) = knobs.filters.get(m) else { continue };
            let kind = match &f.kind {
                config::FilterKind::Proc(p) => {
                    if let Some(p) = knobs.procs.get(p) {
                        add_proc(&mut plan.procs, p, &p.name);
                    }
                    ChainFilterKind::Proc(p.clone())
                }
                config::FilterKind::ProcExec(p) => {
                    add_proc(&mut plan.procs, p, &f.name);
                    ChainFilterKind::Proc(f.name.clone())
                }
                config::FilterKind::Builtin { phase, conds, action } => match rule(phase, conds, action) {
                    Some(r) => ChainFilterKind::Builtin(r),
                    None => continue,
                },
                config::FilterKind::Chain(_) => continue,
            };
            chain.filters.push(ChainFilter { name: f.name.clone(), kind });
        }
        plan.chains.insert(name.clone(), chain);
    }
    plan
}

fn add_proc(procs: &mut Vec<ProcSpec>, p: &config::Proc, name: &str) {
    if procs.iter().any(|s| s.name == name) {
        return;
    }
    procs.push(ProcSpec {
        name: name.to_string(),
        command: p.command.clone(),
        user: p.user.clone(),
        group: p.group.clone(),
        chroot: p.chroot.as_ref().map(Into::into),
    });
}

fn rule(phase: &str, conds: &[FilterCond], action: &FilterAction) -> Option<BuiltinRule> {
    let phase = Phase::from_name(phase)?;
    let conditions = conds
        .iter()
        .map(|c| {
            let table = c.table.clone().map(|name| TableRef { name, regex: c.regex });
            let test = match (c.what.as_str(), table) {
                ("fcrdns", _) => Test::Fcrdns,
                ("rdns", None) => Test::Rdns,
                ("rdns", Some(t)) => Test::RdnsTable(t),
                ("auth", None) => Test::Auth,
                ("auth", Some(t)) => Test::AuthTable(t),
                ("src", Some(t)) => Test::Src(t),
                ("helo", Some(t)) => Test::Helo(t),
                ("mail-from", Some(t)) => Test::MailFrom(t),
                ("rcpt-to", Some(t)) => Test::RcptTo(t),
                _ => return None,
            };
            Some(Condition { negate: c.negate, test })
        })
        .collect::<Option<Vec<_>>>()?;
    let action = match action {
        FilterAction::Bypass => BuiltinAction::Bypass,
        FilterAction::Junk => BuiltinAction::Junk,
        FilterAction::Reject(r) => BuiltinAction::Reject(r.clone()),
        FilterAction::Disconnect(r) => BuiltinAction::Disconnect(r.clone()),
        FilterAction::Rewrite(v) => BuiltinAction::Rewrite(v.clone()),
        FilterAction::Report(m) => BuiltinAction::Report(m.clone()),
    };
    Some(BuiltinRule { phase, conditions, action })
}
