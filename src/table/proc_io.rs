//! A `proc-exec:` table's process: started on first use (`/bin/sh -c COMMAND`, as the
//! unprivileged user, never root), one request at a time, each answer awaited for
//! `TIMEOUT` at most. A table that dies, times out or breaks the protocol is killed and
//! started again at the next request (no sooner than `RESTART_DELAY` after a failed
//! start); meanwhile every lookup fails as temporary, so callers answer 4xx.
//!
//! Lookups block, so only code that may block calls in here: the delivery process's
//! login checks and the relay process's credentials, relay hosts by domain, source
//! addresses and HELO names (config/check.rs refuses every other use of a proc table).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::proc::{self, TableAnswer, TableOp, TableRegister, TableService};

/// How long one answer may take: ample for a database round trip, short enough that a
/// login or a relay attempt waiting on it fails (temporarily) instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the handshake may take: a table may connect to its database first.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Who table processes run as when this process is root (the delivery process).
static RUN_AS: OnceLock<(u32, u32)> = OnceLock::new();

/// Whether lookups for RCPT and MAIL (`Table::lookup_value`, `Table::check_key`) may wait
/// for a table process here: only where `allow_waiting` said so (the delivery process),
/// never in the smtp process, whose event loops must not block.
static MAY_WAIT: AtomicBool = AtomicBool::new(false);

/// This process may wait for table processes at RCPT and MAIL lookups.
pub fn allow_waiting() {
    MAY_WAIT.store(true, Ordering::Relaxed);
}

pub fn may_wait() -> bool {
    MAY_WAIT.load(Ordering::Relaxed)
}

/// Sets the user table processes started from this root process run as.
pub fn run_as(uid: u32, gid: u32) {
    let _ = RUN_AS.set((uid, gid));
}

/// Why a lookup has no answer: always temporary.
#[derive(Debug, PartialEq, Eq)]
pub enum TableProcError {
    Start(String),
    Protocol(String),
    Timeout,
    /// The process closed its output (it died).
    Gone,
    /// The table answered `error`.
    Table(String),
    /// The table did not register the service asked for.
    NoService(&'static str),
    /// A key with a line break, which the protocol cannot carry.
    BadKey,
}

impl fmt::Display for TableProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableProcError::Start(e) => write!(f, "cannot start the table process: {e}"),
            TableProcError::Protocol(e) => write!(f, "{e}"),
            TableProcError::Timeout => write!(f, "no answer within {} s", TIMEOUT.as_secs()),
            TableProcError::Gone => write!(f, "the table process exited"),
            TableProcError::Table(why) => write!(f, "the table answered error: {why}"),
            TableProcError::NoService(s) => write!(f, "the table does not register the '{s}' service"),
            TableProcError::BadKey => write!(f, "a key with a line break"),
        }
    }
}

pub struct ProcTable {
    name: String,
    command: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    next_id: u64,
    /// After a failed start, no new attempt before this.
    quiet_until: Option<Instant>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    services: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl fmt::Debug for ProcTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcTable").field("name", &self.name).field("command", &self.command).finish()
    }
}

impl ProcTable {
    pub fn new(name: &str, command: &str) -> ProcTable {
        ProcTable { name: name.to_owned(), command: command.to_owned(), state: Mutex::new(State::default()) }
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// True when the table registered `service` (starting it if need be).
    pub fn offers(&self, service: TableService) -> Result<bool, TableProcError> {
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = self.ensure(&mut st)?;
        Ok(running.services.iter().any(|s| s == service.as_str()))
    }

    /// `lookup SERVICE KEY`: the value, or None when the table has no such key.
    pub fn lookup(&self, service: TableService, key: &str) -> Result<Option<String>, TableProcError> {
        match self.ask(TableOp::Lookup, service, key)? {
            TableAnswer::Found(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// `fetch SERVICE`: the table's next item, wrapping around; None for an empty table.
    pub fn fetch(&self, service: TableService) -> Result<Option<String>, TableProcError> {
        match self.ask_with(TableOp::Fetch, service, None)? {
            TableAnswer::Found(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// `check SERVICE KEY`.
    pub fn check(&self, service: TableService, key: &str) -> Result<bool, TableProcError> {
        Ok(matches!(self.ask(TableOp::Check, service, key)?, TableAnswer::Found(_)))
    }

    fn ask(&self, op: TableOp, service: TableService, key: &str) -> Result<TableAnswer, TableProcError> {
        self.ask_with(op, service, Some(key))
    }

    fn ask_with(&self, op: TableOp, service: TableService, key: Option<&str>) -> Result<TableAnswer, TableProcError> {
        if !key.is_none_or(proc::key_ok) {
            return Err(TableProcError::BadKey);
        }
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = format!("{:x}", st.next_id);
        st.next_id += 1;
        let running = self.ensure(&mut st)?;
        if !running.services.iter().any(|s| s == service.as_str()) {
            return Err(TableProcError::NoService(service.as_str()));
        }
        let line = proc::request(&self.name, op, service, &id, key, now());
        let answer = exchange(running, &line, op, &id);
        match answer {
            Ok(TableAnswer::Error(why)) => Err(TableProcError::Table(why)),
            Ok(o) => Ok(o),
            Err(e) => {
                log::warn!("table {}: {e}; the process is stopped and started again at the next lookup", self.name);
                st.running = None;
                Err(e)
            }
        }
    }

    /// The running process, started (and its handshake done) if it is not.
    fn ensure<'s>(&self, st: &'s mut State) -> Result<&'s mut Running, TableProcError> {
        if let Some(r) = st.running.as_mut() {
            // A process that exited between two lookups is replaced now, not after a timeout.
            if !matches!(r.child.try_wait(), Ok(Some(_))) {
                return Ok(st.running.as_mut().expect("checked just above"));
            }
            st.running = None;
        }
        if st.quiet_until.is_some_and(|t| Instant::now() < t) {
            return Err(TableProcError::Start("it failed less than a second ago".into()));
        }
        match self.start() {
            Ok(r) => {
                log::info!("table {}: started '{}', services {}", self.name, self.command, r.services.join(","));
                st.quiet_until = None;
                Ok(st.running.insert(r))
            }
            Err(e) => {
                log::warn!("table {}: {e}", self.name);
                st.quiet_until = Some(Instant::now() + RESTART_DELAY);
                Err(e)
            }
        }
    }

    fn start(&self) -> Result<Running, TableProcError> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&self.command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if nix::unistd::geteuid().is_root() {
            let Some(&(uid, gid)) = RUN_AS.get().filter(|(uid, _)| *uid != 0) else {
                return Err(TableProcError::Start(
                    "no unprivileged user to run it as (table processes never run as root)".into(),
                ));
            };
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| TableProcError::Start(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TableProcError::Start("no pipes".into()));
        };
        let lines = match read_lines(stdout, &self.name) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        // From here on, dropping `running` on an error kills the process.
        let mut running = Running { child, stdin, lines, services: Vec::new() };
        running.stdin.write_all(proc::handshake(&self.name).as_bytes()).map_err(|_| TableProcError::Gone)?;
        running.stdin.flush().map_err(|_| TableProcError::Gone)?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            let line = next_line(&running.lines, deadline)?;
            match proc::parse_register(&line).map_err(|e| TableProcError::Protocol(e.to_string()))? {
                TableRegister::Service(s) if running.services.len() < 64 => running.services.push(s),
                TableRegister::Service(_) => {
                    return Err(TableProcError::Protocol("more than 64 services registered".into()))
                }
                TableRegister::Ready => return Ok(running),
            }
        }
    }
}

fn exchange(running: &mut Running, line: &str, op: TableOp, id: &str) -> Result<TableAnswer, TableProcError> {
    // Lines the table wrote unasked, and answers to other ids, are dropped.
    while running.lines.try_recv().is_ok() {}
    running.stdin.write_all(line.as_bytes()).and_then(|()| running.stdin.flush()).map_err(|_| TableProcError::Gone)?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = next_line(&running.lines, deadline)?;
        let (got, outcome) = proc::parse_answer(op, &answer).map_err(|e| TableProcError::Protocol(e.to_string()))?;
        if got == id {
            return Ok(outcome);
        }
    }
}

fn next_line(lines: &Receiver<String>, deadline: Instant) -> Result<String, TableProcError> {
    match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(l) => Ok(l),
        Err(RecvTimeoutError::Timeout) => Err(TableProcError::Timeout),
        Err(RecvTimeoutError::Disconnected) => Err(TableProcError::Gone),
    }
}

/// A thread that turns the table's output into lines (bounded in length and number
/// waiting); it ends when the process closes its output or a line is too long.
fn read_lines(stdout: impl Read + Send + 'static, table: &str) -> Result<Receiver<String>, TableProcError> {
    let (tx, rx) = crossbeam_channel::bounded(64);
    let table = table.to_owned();
    std::thread::Builder::new()
        .name("table-proc".into())
        .spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match (&mut r).take(proc::MAX_LINE as u64 + 1).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if !buf.ends_with(b"\n") => {
                        return log::warn!("table {table}: a line longer than {} bytes", proc::MAX_LINE);
                    }
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']).to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| TableProcError::Start(format!("reader thread: {e}")))?;
    Ok(rx)
}

fn now() -> (u64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_micros())
}
