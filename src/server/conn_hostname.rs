//! `listen … hostnames <t>` with a table process: the delivery process asks it (a lookup
//! may block, this loop must not), and the greeting waits for the answer as it waits for
//! the client's reverse DNS. No answer in time, a failed table or no entry: the listener's
//! own name, logged.

use std::time::{Duration, Instant};

use super::Conn;
use crate::envelope::Origin;
use crate::privsep::frame::{LookupAsk, LookupQuestion, LookupVerdict};

/// How long the greeting waits for the name: past a table's start (10 s) and lookup (5 s)
/// timeouts, so a slow table is reported as such by the delivery process first.
const WAIT: Duration = Duration::from_secs(16);

impl Conn {
    /// The question for a `hostnames` proc table, once, right after `new`: the greeting
    /// waits for `handle_hostname` from now on.
    pub(crate) fn hostname_question(&mut self, now: Instant) -> Option<LookupAsk> {
        let table = self.listener.knobs.hostnames_proc()?.to_owned();
        let local = self.stream.local_ip()?;
        self.hostname_wait = Some(now + WAIT);
        self.session.await_rdns();
        Some(LookupAsk {
            seq: 0,
            question: LookupQuestion::Hostname { table, local },
            origin: self.origin().clone(),
            tls: false,
            tag: None,
            auth: None,
            mail_from: String::new(),
            helo: String::new(),
            rdns: None,
        })
    }

    /// The delivery process answered: the name, or the listener's own.
    pub(crate) fn handle_hostname(&mut self, verdict: LookupVerdict) {
        if self.hostname_wait.take().is_none() {
            return; // given up on already
        }
        match verdict {
            LookupVerdict::Name(name) => {
                log::info!("{} smtp hostname address={} name={name}", self.id, self.peer());
                self.session.set_hostname(name.clone());
                self.hostname_named = Some(name);
            }
            LookupVerdict::Empty => {}
            other => log::warn!(
                "{} smtp hostname lookup failed ({other:?}): greeting as {}",
                self.id,
                self.session.hostname()
            ),
        }
        self.greet_when_known();
    }

    /// The greeting goes out once neither the client's name nor this host's is awaited.
    pub(super) fn greet_when_known(&mut self) {
        if self.rdns_deadline.is_none() && self.hostname_wait.is_none() {
            self.session.handle_rdns();
        }
    }

    /// The name's deadline, checked by the loop's tick: true when it passed just now.
    pub(super) fn hostname_tick(&mut self, now: Instant) -> bool {
        if self.hostname_wait.is_none_or(|d| now < d) {
            return false;
        }
        self.hostname_wait = None;
        log::warn!("{} smtp hostname lookup timed out: greeting as {}", self.id, self.session.hostname());
        self.greet_when_known();
        true
    }

    /// The session started over behind a PROXY header: it keeps the name, or the wait.
    pub(super) fn hostname_restarted(&mut self) {
        if let Some(name) = &self.hostname_named {
            self.session.set_hostname(name.clone());
        }
        if self.hostname_wait.is_some() && matches!(self.origin(), Origin::Tcp(_)) {
            self.session.await_rdns();
        }
    }
}
