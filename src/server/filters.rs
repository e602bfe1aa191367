//! The smtp process's side of the filter processes: they are started here while the
//! process is still root, before it chroots and drops privileges (each as its configured
//! user, never root: `filter::process::run_as`), their handshakes completed before any
//! listener is served, then one thread (`filters`) owns their pipes. Loops send it their
//! sessions' lines over a channel and get back, over one channel each plus the loop's
//! `Waker`, the lines each process wrote for their sessions (routed by session id) and
//! the news that a process died. A session's engine (`filter::SessionFilter`) lives in its
//! connection (`conn_filter.rs`); this thread never parses more than the session id.
//!
//! A dead or misbehaving process is stopped: its sessions, and every later one using it,
//! fail closed with 421. This process cannot start it again (it is no longer root); the
//! parent asks ([`HEALTH_REQUEST`]) and replaces this process with one that starts fresh
//! filters (`filter_restart.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::filter::process::FilterProcess;
use crate::filter::protocol::{self, Output};
use crate::filter::tables::ConfigTables;
use crate::filter::{Chain, Id, Limits, Registration};

use super::StartError;

/// The parent's question: has a filter stopped? Answered `ok` or [`FAILED_PREFIX`] NAME.
pub(crate) const HEALTH_REQUEST: &str = "filters";
pub(crate) const FAILED_PREFIX: &str = "failed ";

/// The first filter of this process that stopped.
static FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The answer to [`HEALTH_REQUEST`].
pub(crate) fn health() -> String {
    match FAILED.lock().ok().and_then(|f| f.clone()) {
        Some(name) => format!("{FAILED_PREFIX}{name}"),
        None => "ok".into(),
    }
}

/// How long filters may take to register at start.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// OpenSMTPD's filters answer within the session timeout; `MXD_FILTER_TIMEOUT` (seconds)
/// overrides it for tests.
const FILTER_TIMEOUT: Duration = Duration::from_secs(300);
const HUB_WAKER: Token = Token(0);

/// From a loop to the filter thread.
pub(crate) enum ToHub {
    Open {
        session: Id,
        from: usize,
    },
    Close(Id),
    /// Lines for `proc`, newlines included (one or more).
    Line {
        session: Id,
        proc: Arc<str>,
        line: Vec<u8>,
    },
}

/// From the filter thread to a loop.
pub(crate) enum FromHub {
    /// Lines `proc` wrote for one of this loop's sessions, each ended by a newline.
    Line { session: Id, proc: Arc<str>, line: Vec<u8> },
    /// `proc` died or misbehaved and was stopped.
    Failed(Arc<str>),
}

/// What every loop shares: the chains by listener filter name, limits, the way in.
pub(crate) struct Shared {
    pub(crate) chains: BTreeMap<String, Arc<Chain>>,
    pub(crate) limits: Limits,
    tx: Sender<ToHub>,
    waker: Arc<Waker>,
    /// Something was sent since the filter thread was last woken.
    unwoken: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Queues `msg` for the filter thread; the loop wakes the thread once per turn
    /// (`wake`), not once per line: a message's data lines cost one wake, not sixty.
    pub(crate) fn send(&self, msg: ToHub) {
        if self.tx.send(msg).is_ok() {
            self.unwoken.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Wakes the filter thread if anything was sent since it was last woken; each loop
    /// calls it before it waits.
    pub(crate) fn wake(&self) {
        if self.unwoken.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }
}

/// A loop's end of the filter thread.
pub(crate) struct LoopFilters {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<FromHub>,
    pub(crate) index: usize,
    /// Which slot holds each filtered session of this loop.
    pub(crate) slots: HashMap<Id, usize>,
}

/// Started processes, before the thread runs.
pub(crate) struct Started {
    procs: Vec<FilterProcess>,
    poll: Poll,
    rx: Receiver<ToHub>,
    shared: Arc<Shared>,
    loop_txs: Vec<Sender<FromHub>>,
    loop_rxs: Vec<Option<Receiver<FromHub>>>,
}

fn filter_timeout() -> Duration {
    let env = std::env::var("MXD_FILTER_TIMEOUT").ok().and_then(|s| s.parse::<u64>().ok());
    env.map_or(FILTER_TIMEOUT, Duration::from_secs)
}

/// Starts the configuration's filter processes and completes their handshakes; `None` when
/// no listener names a filter.
pub(crate) fn start(config: &Arc<Config>, loops: usize) -> Result<Option<Started>, StartError> {
    let plan = crate::filter::config::plan(config);
    if plan.chains.is_empty() {
        return Ok(None);
    }
    let poll = Poll::new().map_err(StartError::Thread)?;
    let waker = Arc::new(Waker::new(poll.registry(), HUB_WAKER).map_err(StartError::Thread)?);
    let admd = config.knobs.admd.clone().unwrap_or_else(|| config.hostname.clone());
    let handshake = protocol::handshake(super::idle_timeout().as_secs(), &admd);
    let mut procs = Vec::new();
    for spec in &plan.procs {
        let p = FilterProcess::spawn(spec, &handshake)
            .map_err(|e| StartError::Filter(format!("filter {}: {e}", spec.name)))?;
        log::info!("filter {} started pid={} command=\"{}\"", spec.name, p.pid(), spec.command.escape_debug());
        procs.push(p);
    }
    let registrations = handshakes(&mut procs)?;
    let tables = Arc::new(ConfigTables { tables: config.tables.clone() });
    let mut chains = BTreeMap::new();
    for (name, chain) in &plan.chains {
        let chain = Chain::new(chain, &registrations, tables.clone()).map_err(|e| StartError::Filter(e.to_string()))?;
        chains.insert(name.clone(), Arc::new(chain));
    }
    for (i, p) in procs.iter_mut().enumerate() {
        let reg = poll.registry();
        reg.register(p.stdout_source(), Token(1 + 3 * i), Interest::READABLE)
            .and_then(|_| reg.register(p.stderr_source(), Token(2 + 3 * i), Interest::READABLE))
            .and_then(|_| reg.register(p.stdin_source(), Token(3 + 3 * i), Interest::WRITABLE))
            .map_err(StartError::Thread)?;
    }
    let limits =
        Limits { timeout: filter_timeout(), max_message: (config.max_message_size as usize).saturating_add(1 << 20) };
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared { chains, limits, tx, waker, unwoken: false.into() });
    let (mut loop_txs, mut loop_rxs) = (Vec::new(), Vec::new());
    for _ in 0..loops {
        let (t, r) = crossbeam_channel::unbounded();
        loop_txs.push(t);
        loop_rxs.push(Some(r));
    }
    Ok(Some(Started { procs, poll, rx, shared, loop_txs, loop_rxs }))
}

/// Reads `register|…` lines until every process said `register|ready`.
fn handshakes(procs: &mut [FilterProcess]) -> Result<HashMap<String, Registration>, StartError> {
    let deadline = Instant::now() + HANDSHAKE;
    let mut regs = vec![Registration::default(); procs.len()];
    while !regs.iter().all(Registration::is_ready) {
        for (p, reg) in procs.iter_mut().zip(regs.iter_mut()) {
            p.read_registrations(reg)
                .map_err(|why| StartError::Filter(format!("filter {}: handshake: {why}", p.name())))?;
        }
        if Instant::now() >= deadline {
            let late = procs.iter().zip(&regs).find(|(_, r)| !r.is_ready()).map(|(p, _)| p.name().to_string());
            return Err(StartError::Filter(format!("filter {}: not ready in time", late.unwrap_or_default())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(procs.iter().zip(regs).map(|(p, r)| (p.name().to_string(), r)).collect())
}

impl Started {
    /// Loop `index`'s end, once.
    pub(crate) fn loop_end(&mut self, index: usize) -> Option<LoopFilters> {
        let rx = self.loop_rxs.get_mut(index)?.take()?;
        Some(LoopFilters { shared: Arc::clone(&self.shared), rx, index, slots: HashMap::new() })
    }

    /// Runs the filter thread; `wakers` are the loops', by index.
    pub(crate) fn run(self, wakers: Vec<Arc<Waker>>) -> Result<(), StartError> {
        let hub = Hub {
            procs: self.procs.into_iter().map(Some).collect(),
            poll: self.poll,
            rx: self.rx,
            loops: self.loop_txs.into_iter().zip(wakers).collect(),
            sessions: HashMap::new(),
            wake: vec![false; 0],
        };
        std::thread::Builder::new().name("filters".into()).spawn(move || hub.run()).map_err(StartError::Thread)?;
        Ok(())
    }
}

struct Hub {
    procs: Vec<Option<FilterProcess>>,
    poll: Poll,
    rx: Receiver<ToHub>,
    loops: Vec<(Sender<FromHub>, Arc<Waker>)>,
    /// Session → the loop that owns it.
    sessions: HashMap<Id, usize>,
    wake: Vec<bool>,
}

impl Hub {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        self.wake = vec![false; self.loops.len()];
        let names: Vec<Arc<str>> = self.procs.iter().map(|p| Arc::from(p.as_ref().map_or("", |p| p.name()))).collect();
        loop {
            if self.take_requests(&names) {
                return;
            }
            self.flush_all(&names);
            let more = self.read_all(&names);
            self.flush_all(&names);
            for (i, w) in self.wake.iter_mut().enumerate() {
                if std::mem::take(w) {
                    let _ = self.loops[i].1.wake();
                }
            }
            if self.procs.iter().all(Option::is_none) && self.sessions.is_empty() && self.loops.is_empty() {
                return;
            }
            let wait = if more { Duration::ZERO } else { Duration::from_secs(1) };
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("filter thread: poll failed: {e}");
                    return;
                }
            }
        }
    }

    /// Takes the loops' requests; true once every loop is gone.
    fn take_requests(&mut self, names: &[Arc<str>]) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(ToHub::Open { session, from }) => {
                    self.sessions.insert(session, from);
                }
                Ok(ToHub::Close(session)) => {
                    self.sessions.remove(&session);
                }
                Ok(ToHub::Line { session, proc, line }) => {
                    let i = names.iter().position(|n| *n == proc);
                    let queued = match i.and_then(|i| self.procs[i].as_mut()) {
                        Some(p) => p.queue(&line).map_err(|e| e.to_string()),
                        None => Err("not running".into()),
                    };
                    if let Err(why) = queued {
                        match i {
                            Some(i) if self.procs[i].is_some() => self.fail(i, names, &why),
                            // Already stopped: tell the session's loop again.
                            _ => {
                                if let Some(&l) = self.sessions.get(&session) {
                                    self.send_loop(l, FromHub::Failed(proc));
                                }
                            }
                        }
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn flush_all(&mut self, names: &[Arc<str>]) {
        for i in 0..self.procs.len() {
            if let Some(Err(e)) = self.procs[i].as_mut().map(FilterProcess::flush) {
                self.fail(i, names, &e.to_string());
            }
        }
    }

    /// Routes every process's lines to the loops, a session's consecutive lines as one
    /// hand-off; true if input was left unread.
    fn read_all(&mut self, names: &[Arc<str>]) -> bool {
        let mut more = false;
        for i in 0..self.procs.len() {
            let Some(p) = self.procs[i].as_mut() else { continue };
            let mut batches: Vec<(Id, Vec<u8>)> = Vec::new();
            let read = p.read_outputs(|line, output| {
                let session = match output {
                    Output::Result { session, .. }
                    | Output::DataLine { session, .. }
                    | Output::Report { session, .. } => session,
                    Output::Register(_) => return, // refused by read_outputs
                };
                match batches.last_mut() {
                    Some((s, lines)) if *s == session => lines.extend_from_slice(line),
                    _ => batches.push((session, line.to_vec())),
                }
                if let Some((_, lines)) = batches.last_mut() {
                    lines.push(b'\n');
                }
            });
            for (session, line) in batches {
                match self.sessions.get(&session) {
                    Some(&l) => self.send_loop(l, FromHub::Line { session, proc: names[i].clone(), line }),
                    None => log::debug!("filter {}: unknown session {session}", names[i]),
                }
            }
            match read {
                Ok(left) => more |= left,
                Err(why) => self.fail(i, names, &why),
            }
        }
        more
    }

    fn send_loop(&mut self, l: usize, msg: FromHub) {
        if let Some((tx, _)) = self.loops.get(l) {
            if tx.send(msg).is_ok() {
                self.wake[l] = true;
            }
        }
    }

    /// Stops process `i` and tells every loop: its sessions fail closed.
    fn fail(&mut self, i: usize, names: &[Arc<str>], why: &str) {
        let Some(mut p) = self.procs[i].take() else { return };
        log::warn!("filter {} stopped: {why}", p.name());
        if let Ok(mut failed) = FAILED.lock() {
            failed.get_or_insert_with(|| p.name().to_string());
        }
        let _ = self.poll.registry().deregister(p.stdout_source());
        let _ = self.poll.registry().deregister(p.stderr_source());
        let _ = self.poll.registry().deregister(p.stdin_source());
        p.drain_stderr();
        p.kill();
        for l in 0..self.loops.len() {
            self.send_loop(l, FromHub::Failed(names[i].clone()));
        }
    }
}
