//! A small blocking driver: filter processes, their handshakes and the sessions' traffic
//! on one mio `Poll`, run until a condition holds or a deadline passes. For tests and
//! tools; the server's event loops will drive the same pieces ([`FilterProcess`],
//! [`Sessions`]) from their own `Poll`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::chain::Registration;
use super::engine::Now;
use super::process::{FilterProcess, ProcSpec, SpawnError};
use super::{DispatchError, Sessions};

#[derive(Debug)]
pub enum DriverError {
    Spawn(String, SpawnError),
    /// The process wrote something else than `register|…` before `register|ready`.
    Handshake(String, String),
    /// Not ready within the time given.
    NotReady(String),
    Io(std::io::Error),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Spawn(n, e) => write!(f, "filter {n}: {e}"),
            DriverError::Handshake(n, e) => write!(f, "filter {n}: handshake: {e}"),
            DriverError::NotReady(n) => write!(f, "filter {n}: not ready in time"),
            DriverError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DriverError {}

pub struct Driver {
    poll: Poll,
    events: Events,
    /// `None` once failed and stopped.
    procs: Vec<Option<FilterProcess>>,
    registrations: HashMap<String, Registration>,
    pub sessions: Sessions,
    failures: Vec<(String, String)>,
}

impl Driver {
    /// Starts every process and completes its handshake (`handshake` is what
    /// `protocol::handshake` makes).
    pub fn start(specs: &[ProcSpec], handshake: &str, within: Duration) -> Result<Driver, DriverError> {
        let poll = Poll::new().map_err(DriverError::Io)?;
        let mut procs = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut p = FilterProcess::spawn(spec, handshake).map_err(|e| DriverError::Spawn(spec.name.clone(), e))?;
            let reg = poll.registry();
            let r = reg
                .register(p.stdout_source(), Token(3 * i), Interest::READABLE)
                .and_then(|_| reg.register(p.stderr_source(), Token(3 * i + 1), Interest::READABLE))
                .and_then(|_| reg.register(p.stdin_source(), Token(3 * i + 2), Interest::WRITABLE));
            r.map_err(DriverError::Io)?;
            procs.push(Some(p));
        }
        let mut d = Driver {
            poll,
            events: Events::with_capacity(64),
            procs,
            registrations: HashMap::new(),
            sessions: Sessions::default(),
            failures: Vec::new(),
        };
        d.handshake(Instant::now() + within)?;
        Ok(d)
    }

    fn handshake(&mut self, deadline: Instant) -> Result<(), DriverError> {
        let mut regs: Vec<Registration> = vec![Registration::default(); self.procs.len()];
        while !regs.iter().all(|r| r.is_ready()) {
            for (p, reg) in self.procs.iter_mut().flatten().zip(regs.iter_mut()) {
                p.read_registrations(reg).map_err(|e| DriverError::Handshake(p.name().to_string(), e))?;
            }
            if regs.iter().all(|r| r.is_ready()) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                let late = self.procs.iter().flatten().zip(&regs).find(|(_, r)| !r.is_ready());
                return Err(DriverError::NotReady(late.map(|(p, _)| p.name().to_string()).unwrap_or_default()));
            }
            self.poll.poll(&mut self.events, Some(deadline - now)).map_err(DriverError::Io)?;
        }
        for (p, r) in self.procs.iter().flatten().zip(regs) {
            self.registrations.insert(p.name().to_string(), r);
        }
        Ok(())
    }

    /// What each process registered.
    pub fn registrations(&self) -> &HashMap<String, Registration> {
        &self.registrations
    }

    /// Processes stopped so far, with why.
    pub fn failures(&self) -> &[(String, String)] {
        &self.failures
    }

    /// Moves lines between sessions and processes until `done` holds (true) or
    /// `deadline` passes (false). Filter timeouts are applied on the way.
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&mut Sessions) -> bool) -> bool {
        loop {
            let now = Now::read();
            self.sessions.handle_timeout(now);
            self.route_sends(now);
            let more = self.read_all(now);
            self.route_sends(now);
            if done(&mut self.sessions) {
                return true;
            }
            if now.mono >= deadline {
                return false;
            }
            if more {
                continue;
            }
            let wake = self.sessions.poll_timeout().map_or(deadline, |t| t.min(deadline));
            let wait = wake.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            if self.poll.poll(&mut self.events, Some(wait)).is_err() {
                return false;
            }
        }
    }

    /// Queues every session's outgoing lines on their processes and writes what it can.
    fn route_sends(&mut self, now: Now) {
        let mut out = Vec::new();
        for s in self.sessions.iter_mut() {
            while let Some(o) = s.poll_send() {
                out.push(o);
            }
        }
        for o in out {
            let idx = self.procs.iter().position(|p| p.as_ref().is_some_and(|p| p.name() == &*o.proc));
            match idx {
                Some(i) => {
                    if let Some(Err(e)) = self.procs[i].as_mut().map(|p| p.queue(&o.line)) {
                        self.fail(i, now, &e.to_string());
                    }
                }
                None => self.sessions.handle_proc_failure(now, &o.proc),
            }
        }
        for i in 0..self.procs.len() {
            if let Some(Err(e)) = self.procs[i].as_mut().map(|p| p.flush()) {
                self.fail(i, now, &e.to_string());
            }
        }
    }

    /// Reads every process's output into the sessions; true if some input was left.
    fn read_all(&mut self, now: Now) -> bool {
        let mut more = false;
        for i in 0..self.procs.len() {
            let Some(p) = self.procs[i].as_mut() else { continue };
            let name = p.name().to_string();
            let sessions = &mut self.sessions;
            let read = p.read_outputs(|_, output| match sessions.handle_output(now, &name, output) {
                Ok(()) => {}
                Err(DispatchError::UnknownSession(id)) => log::debug!("filter {name}: unknown session {id}"),
                Err(e) => log::warn!("filter {name}: {e}"),
            });
            match read {
                Ok(left) => more |= left,
                Err(why) => self.fail(i, now, &why),
            }
        }
        more
    }

    /// Stops process `i` and fails its sessions closed.
    fn fail(&mut self, i: usize, now: Now, why: &str) {
        if let Some(mut p) = self.procs[i].take() {
            log::warn!("filter {} stopped: {why}", p.name());
            let _ = self.poll.registry().deregister(p.stdout_source());
            let _ = self.poll.registry().deregister(p.stderr_source());
            let _ = self.poll.registry().deregister(p.stdin_source());
            p.kill();
            self.failures.push((p.name().to_string(), why.to_string()));
            self.sessions.handle_proc_failure(now, p.name());
        }
    }
}
