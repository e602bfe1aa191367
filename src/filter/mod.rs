//! Filters: OpenSMTPD's builtin filters and its filter protocol (smtpd-filters(7), 0.7),
//! so that filters written for OpenSMTPD (filter-dkimsign, filter-rspamd, …) run unchanged.
//!
//! - [`protocol`]: the lines, both ways, byte-for-byte as OpenSMTPD writes and reads them.
//! - [`builtin`]: `filter NAME phase … match … DECISION` rules.
//! - [`chain`]: a listener's chain resolved against what each process registered.
//! - [`engine`]: one session's filtering, sans-IO: events in, requests and decisions out.
//! - [`Sessions`] (here): routes a process's output lines to the sessions they name.
//! - [`tables`]: builtin conditions against smtpd.conf's tables.
//! - [`process`]: starting a `proc-exec` command, its non-blocking pipes; [`driver`]: a
//!   small blocking loop around all of it, for tests and tools.
//!
//! Everything a filter writes is untrusted input: a malformed line, an unknown session or
//! token, a flood: a typed error and a 421 for the sessions concerned, never a panic.

pub mod builtin;
pub mod chain;
pub mod config;
pub mod driver;
pub mod engine;
pub mod process;
pub mod protocol;
pub mod tables;

use std::collections::HashMap;
use std::fmt;

pub use builtin::{BuiltinAction, BuiltinRule, Condition, LookupKind, TableQuestion, TableRef, Tables, Test};
pub use chain::{Chain, ChainFilter, ChainFilterKind, FilterChain, Registration};
pub use engine::{
    FilterAnswer, FilterDecision, FilterEvent, FilterLink, FilterSessionError, Limits, Now, ProcLine, SessionFilter,
};
pub use protocol::{Id, LineError, Output, Phase};

/// Why a process's line went nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchError {
    /// The line is malformed, or a `register` after the handshake: the process misbehaves
    /// and should be stopped (every session using it then fails with 421).
    Line(LineError),
    /// A register line after `register|ready`.
    LateRegister,
    /// No such session: it may have ended while the filter was answering (OpenSMTPD
    /// ignores these too).
    UnknownSession(Id),
    /// The session refused the answer and has failed (421).
    Session(Id, FilterSessionError),
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DispatchError::Line(e) => write!(f, "{e}"),
            DispatchError::LateRegister => f.write_str("register line after register|ready"),
            DispatchError::UnknownSession(id) => write!(f, "unknown session {id}"),
            DispatchError::Session(id, e) => write!(f, "session {id}: {e}"),
        }
    }
}

impl std::error::Error for DispatchError {}

/// The filtered sessions of one event loop, by session id.
#[derive(Default)]
pub struct Sessions {
    map: HashMap<Id, SessionFilter>,
}

impl Sessions {
    pub fn insert(&mut self, s: SessionFilter) {
        self.map.insert(s.id(), s);
    }

    pub fn remove(&mut self, id: Id) -> Option<SessionFilter> {
        self.map.remove(&id)
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut SessionFilter> {
        self.map.get_mut(&id)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut SessionFilter> {
        self.map.values_mut()
    }

    /// Routes one line `proc` wrote (after its handshake) to the session it names.
    pub fn handle_line(&mut self, now: Now, proc: &str, line: &[u8]) -> Result<(), DispatchError> {
        let output = protocol::parse_output(line).map_err(DispatchError::Line)?;
        self.handle_output(now, proc, output)
    }

    /// Routes one parsed line `proc` wrote to the session it names.
    pub fn handle_output(&mut self, now: Now, proc: &str, output: Output<'_>) -> Result<(), DispatchError> {
        let (session, token, answer) = FilterAnswer::of(output).ok_or(DispatchError::LateRegister)?;
        let s = self.map.get_mut(&session).ok_or(DispatchError::UnknownSession(session))?;
        s.handle_output(now, proc, token, answer).map_err(|e| DispatchError::Session(session, e))
    }

    /// A process died or was stopped: its sessions fail closed.
    pub fn handle_proc_failure(&mut self, now: Now, proc: &str) {
        for s in self.map.values_mut() {
            s.handle_proc_failure(now, proc);
        }
    }

    /// The earliest filter deadline of any session.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.map.values().filter_map(|s| s.poll_timeout()).min()
    }

    pub fn handle_timeout(&mut self, now: Now) {
        for s in self.map.values_mut() {
            s.handle_timeout(now);
        }
    }
}
