//! A listener's filter chain, resolved against what each filter process registered: for
//! every phase, the filters that take part, in order; for every process, the report events
//! it asked for. Built once per configuration (and per reload), shared by all sessions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::builtin::{BuiltinRule, Tables};
use super::protocol::{EventKind, Phase, Register};

/// One filter of a chain, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainFilterKind {
    /// `filter NAME phase … match … DECISION`
    Builtin(BuiltinRule),
    /// `filter NAME proc PROC` or `filter NAME proc-exec …`: the process's name.
    Proc(String),
}

/// A filter with its name, for `filter-report` lines and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainFilter {
    pub name: String,
    pub kind: ChainFilterKind,
}

/// A listener's filters in order: `filter NAME` on `listen on`, or a `filter NAME chain
/// { … }` flattened by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterChain {
    pub filters: Vec<ChainFilter>,
}

/// What one filter process registered during its handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    phases: u32,
    events: u32,
    ready: bool,
}

impl Registration {
    /// Takes one `register|…` line; true once `register|ready` came.
    pub fn handle(&mut self, reg: Register) -> bool {
        match reg {
            Register::Filter(p) => self.phases |= p.bit(),
            Register::Report(e) => self.events |= e.bit(),
            Register::Ready => self.ready = true,
        }
        self.ready
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn filters(&self, phase: Phase) -> bool {
        self.phases & phase.bit() != 0
    }

    pub fn reports(&self, event: EventKind) -> bool {
        self.events & event.bit() != 0
    }
}

/// A chain names a process that has not registered (not started, or not ready).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownProc(pub String);

impl fmt::Display for UnknownProc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter process {} is not registered", self.0)
    }
}

impl std::error::Error for UnknownProc {}

/// A chain ready for sessions.
pub struct Chain {
    pub(crate) filters: Vec<ChainFilter>,
    /// For each phase (indexed by `Phase as usize`), the filters taking part, in order.
    pub(crate) by_phase: Vec<Vec<usize>>,
    /// The distinct processes of the chain, each with its registration.
    pub(crate) procs: Vec<(Arc<str>, Registration)>,
    /// For each filter, its index in `procs` (builtins: none).
    pub(crate) proc_of: Vec<Option<usize>>,
    pub(crate) tables: Arc<dyn Tables + Send + Sync>,
}

impl Chain {
    pub fn new(
        chain: &FilterChain,
        registrations: &HashMap<String, Registration>,
        tables: Arc<dyn Tables + Send + Sync>,
    ) -> Result<Chain, UnknownProc> {
        let mut procs: Vec<(Arc<str>, Registration)> = Vec::new();
        let mut proc_of = Vec::with_capacity(chain.filters.len());
        let mut by_phase = vec![Vec::new(); Phase::ALL.len()];
        for (i, f) in chain.filters.iter().enumerate() {
            match &f.kind {
                ChainFilterKind::Builtin(rule) => {
                    proc_of.push(None);
                    // Builtins act at command phases only (filter_builtins_notimpl otherwise).
                    if rule.phase != Phase::DataLine {
                        by_phase[rule.phase as usize].push(i);
                    }
                }
                ChainFilterKind::Proc(name) => {
                    let reg = *registrations.get(name).ok_or_else(|| UnknownProc(name.clone()))?;
                    let idx = match procs.iter().position(|(n, _)| &**n == name) {
                        Some(idx) => idx,
                        None => {
                            procs.push((Arc::from(name.as_str()), reg));
                            procs.len() - 1
                        }
                    };
                    proc_of.push(Some(idx));
                    for p in Phase::ALL {
                        if reg.filters(p) {
                            by_phase[p as usize].push(i);
                        }
                    }
                }
            }
        }
        Ok(Chain { filters: chain.filters.clone(), by_phase, procs, proc_of, tables })
    }

    /// Whether any filter takes part in `phase`: if none, a session need not wait.
    pub fn filters_phase(&self, phase: Phase) -> bool {
        !self.by_phase[phase as usize].is_empty()
    }

    /// The processes this chain talks to.
    pub fn procs(&self) -> impl Iterator<Item = &str> {
        self.procs.iter().map(|(n, _)| &**n)
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain").field("filters", &self.filters).finish_non_exhaustive()
    }
}
