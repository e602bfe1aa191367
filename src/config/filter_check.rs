//! The checks `mxd -n` and a start make of the filter statements: the program of each
//! process exists and is executable, and nothing is configured that the daemon would have
//! to ignore. Here, not in the filter module, so that the configuration does not depend on
//! the filters that depend on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{self, ConfigLine, Knobs};
use crate::program::find_program;
use crate::table::Table;

/// What is wrong with a filter statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The configuration cannot load (a program missing).
    Error(String),
    /// It loads for `mxd -n` but the daemon will not start with it.
    NotRun(String),
}

/// The filter statements' problems, each with the statement's origin.
pub fn problems(knobs: &Knobs, tables: &BTreeMap<String, Arc<Table>>) -> Vec<(ConfigLine, Problem)> {
    let mut out = Vec::new();
    fn proc_check(out: &mut Vec<(ConfigLine, Problem)>, at: &ConfigLine, what: &str, p: &config::Proc) {
        // Chrooted, the program (and /bin/sh, which runs the command line) must be inside.
        let found = match &p.chroot {
            Some(root) => crate::program::find_program_chrooted(&p.command, std::path::Path::new(root)),
            None => find_program(&p.command),
        };
        if let Err(e) = found {
            out.push((at.clone(), Problem::Error(format!("{what} '{}': {e}", p.name))));
        }
    }
    for p in knobs.procs.values() {
        proc_check(&mut out, &p.at, "proc", p);
    }
    for f in knobs.filters.values() {
        match &f.kind {
            config::FilterKind::ProcExec(p) => proc_check(&mut out, &f.at, "filter", p),
            config::FilterKind::Builtin { conds, .. } => {
                for c in conds {
                    let Some(t) = &c.table else { continue };
                    // A regex table is compiled, or refused, with the match rules' (regex_tables).
                    if !c.regex && !tables.contains_key(t) {
                        out.push((f.at.clone(), Problem::Error(format!("filter '{}': no table {t}", f.name))));
                    }
                }
            }
            config::FilterKind::Chain(names) => {
                let nested = names.iter().find(|n| knobs.filters.get(*n).is_some_and(|g| is_chain(&g.kind)));
                if let Some(n) = nested {
                    out.push((
                        f.at.clone(),
                        Problem::Error(format!("filter '{}': chain '{n}' inside a chain", f.name)),
                    ));
                }
            }
            config::FilterKind::Proc(_) => {}
        }
    }
    out
}

/// The tables builtin filter conditions use with `regex`, to compile with the match rules'.
pub fn regex_tables(knobs: &Knobs) -> Vec<(ConfigLine, String)> {
    let mut out = Vec::new();
    for f in knobs.filters.values() {
        if let config::FilterKind::Builtin { conds, .. } = &f.kind {
            out.extend(conds.iter().filter(|c| c.regex).filter_map(|c| Some((f.at.clone(), c.table.clone()?))));
        }
    }
    out
}

fn is_chain(k: &config::FilterKind) -> bool {
    matches!(k, config::FilterKind::Chain(_))
}
