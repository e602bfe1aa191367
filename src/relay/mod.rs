//! The relay runner: one thread that takes due recipients from the queue, groups them into
//! destinations (a relay action, and the recipient domain for a relay by MX), hands each to
//! a worker (`worker.rs`: one session per destination, many destinations at once), and
//! records each recipient's fate as the workers report it: delivered, retried later with
//! backoff (4xx, network and DNS errors), or bounced to the sender (5xx, null MX, NXDOMAIN,
//! older than `queue ttl`), never a bounce for a bounce. The runner alone reads and writes
//! the queue's state, so workers share nothing but their reports.

pub mod client;
mod dir_sync;
mod local;
pub mod mda;
pub mod mx;
mod program;
mod spec;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Config, Method};
use crate::dns::Resolver;
use crate::envelope::Mailbox;
use crate::queue::{self, bounce, QueuedEnvelope};
use client::RcptStatus;
use worker::{Item, Work, WorkerReport};

/// First retry after this (MXD_RETRY_BASE seconds overrides it, for tests); doubling up to
/// `MAX_DELAY`.
const RETRY_BASE: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(4 * 3600);
/// The SMTP port of MX hosts. `MXD_MX_PORT` replaces it, for tests only: a test cannot
/// own port 25 on the loopback addresses its receiving servers use.
const MX_PORT: u16 = 25;
/// Destinations served at once, each by a worker thread with one session.
const MAX_DESTINATIONS: usize = 32;
/// The runner walks the whole queue (new files, dispatch, expiry, the mailq view) at most
/// this often while verdicts stream in, and at once when woken (a new message, `mxctl`).
const ROUND: Duration = Duration::from_millis(500);
/// What the runner's loop does after a batch of reports, in increasing order of work.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum After {
    Nothing,
    /// A worker finished: its slot can go to a waiting destination.
    Dispatch,
    /// A walk of the whole queue: new files, dispatch, expiry and bounces, the mailq view.
    Round,
}

/// On stop, how long in-flight sessions may still report what they delivered.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The current configuration, swapped by the supervisor on reload.
pub type SharedConfig = Arc<Mutex<Arc<Config>>>;

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// Not tried yet (since the start).
    Pending,
    /// Failed for now; tried again at its `next`.
    Deferred(String),
    /// Failed for good (5xx, null MX, NXDOMAIN, expired): its bounce is still to be sent.
    Bounced { status: String, reason: String },
    /// Delivered, or its bounce sent: recorded in `queue/state/`.
    Done,
}

struct QueuedRcpt {
    action: String,
    addr: String,
    attempts: u32,
    next: Instant,
    state: RcptState,
}

impl QueuedRcpt {
    /// Due for an attempt: its time has come and it is waiting for a delivery.
    fn due(&self, now: Instant) -> bool {
        self.next <= now && matches!(self.state, RcptState::Pending | RcptState::Deferred(_))
    }
}

/// One destination: every recipient of `action`, or, for a relay by MX, those of `domain`.
/// At most one session per destination at a time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Dest {
    action: String,
    domain: Option<String>,
}

impl Dest {
    fn of(config: &Config, r: &QueuedRcpt) -> Dest {
        let by_mx = spec::relay_of(config, &r.action).is_some_and(|rel| rel.host.is_none());
        Dest { action: r.action.clone(), domain: by_mx.then(|| domain_of(&r.addr)) }
    }

    fn holds(&self, r: &QueuedRcpt) -> bool {
        r.action == self.action && self.domain.as_ref().is_none_or(|d| *d == domain_of(&r.addr))
    }
}

fn domain_of(addr: &str) -> String {
    Mailbox::domain_of(addr).to_ascii_lowercase()
}

struct QueuedMessage {
    env: QueuedEnvelope,
    /// The message id (see `queue::message_id`).
    id: String,
    rcpts: Vec<QueuedRcpt>,
    /// How many Done recipients are already in the state file.
    persisted: usize,
    /// How many `bounce warn-interval` delays this message has been warned about.
    warned: usize,
}

impl QueuedMessage {
    fn done(&self) -> BTreeSet<String> {
        self.rcpts.iter().filter(|r| r.state == RcptState::Done).map(|r| r.addr.clone()).collect()
    }
}

pub struct Runner {
    queue: PathBuf,
    spool: PathBuf,
    config: SharedConfig,
    entries: BTreeMap<String, QueuedMessage>,
    retry_base: Duration,
    mx_port: u16,
    /// Destinations a worker is serving now.
    in_flight: BTreeSet<Dest>,
    reports_tx: Sender<WorkerReport>,
    reports: Receiver<WorkerReport>,
    /// Messages with a state file among those unlinked since the last `flush` (their state
    /// files go after the directory sync), and the sessions waiting for their verdicts to
    /// be recorded.
    unlinked: Vec<String>,
    acks: Vec<Sender<()>>,
    /// Whether a queue file was unlinked since the last `flush`.
    removed: bool,
    sync: dir_sync::DirSync,
}

/// Control over a running runner: wake it, ask for everything or one message to be retried
/// now, stop it, and read where its retries stand.
#[derive(Clone)]
pub struct Handle {
    pub wake: crossbeam_channel::Sender<()>,
    pub schedule_all: Arc<AtomicBool>,
    /// Message ids (or prefixes) to retry now.
    pub scheduled: Arc<Mutex<Vec<String>>>,
    pub stop: Arc<AtomicBool>,
    pub status: RetryTable,
}

impl Handle {
    pub fn new(wake: crossbeam_channel::Sender<()>) -> Handle {
        Handle {
            wake,
            schedule_all: Arc::default(),
            scheduled: Arc::default(),
            stop: Arc::default(),
            status: Arc::default(),
        }
    }

    /// `mxctl schedule all|ID`: retry now everything, or the messages whose id starts
    /// with `id`; how many messages that is.
    pub fn schedule(&self, spool: &Path, id: Option<&str>) -> Result<usize, String> {
        self.schedule_in(&queue::queue_dir(spool), id)
    }

    /// As [`Handle::schedule`], for the runner over the queue directory `q`.
    pub fn schedule_in(&self, q: &Path, id: Option<&str>) -> Result<usize, String> {
        let matching = queued_in(q, id).len();
        if matching == 0 && id.is_some() {
            return Err("no such message".into());
        }
        match id {
            None => self.schedule_all.store(true, Ordering::Relaxed),
            Some(id) => self.scheduled.lock().map_err(|_| "relay runner failed")?.push(id.to_owned()),
        }
        let _ = self.wake.try_send(());
        Ok(matching)
    }
}

/// The queue files under `spool` holding the message `id` (a prefix of it), or all.
fn queued_in(q: &Path, id: Option<&str>) -> Vec<String> {
    let new = q.join("new");
    let Ok(rd) = std::fs::read_dir(&new) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| match id {
            None => true,
            Some(id) => queue::seal::read(&new.join(name))
                .ok()
                .and_then(|b| queue::decode(&b).map(|(env, _)| queue::message_id(&env, name)))
                .is_some_and(|m| m.starts_with(id)),
        })
        .collect()
}

/// `mxctl remove all|ID`: drops the messages (no bounce); how many.
pub fn remove(spool: &Path, id: Option<&str>) -> Result<usize, String> {
    remove_in(&queue::queue_dir(spool), id)
}

/// As [`remove`], in the queue directory `q`.
pub fn remove_in(q: &Path, id: Option<&str>) -> Result<usize, String> {
    let names = queued_in(q, id);
    if names.is_empty() {
        return Err("no such message".into());
    }
    for name in &names {
        queue::remove(q, name).map_err(|e| e.to_string())?;
    }
    Ok(names.len())
}

/// The runner's view of each waiting recipient, by (queue file, address), published after
/// every round so that `show queue` can say how often it was tried and why it waits.
pub type RetryTable = Arc<Mutex<BTreeMap<(String, String), Retry>>>;

#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub next: Instant,
    pub state: RcptState,
}

/// Starts the relay runner on a thread of its own; it reads the queue under `spool`, the
/// configuration from `config` at each round, and the system's resolver configuration.
pub fn spawn(
    spool: &Path,
    config: SharedConfig,
    wake: Receiver<()>,
    handle: Handle,
) -> std::io::Result<JoinHandle<()>> {
    spawn_at(spool, queue::queue_dir(spool), "relay", config, wake, handle)
}

/// The same runner over `queue`, on a thread named `name`: the parent runs one over the mda
/// queue (`mda::spawn`).
fn spawn_at(
    spool: &Path,
    queue: PathBuf,
    name: &str,
    config: SharedConfig,
    wake: Receiver<()>,
    handle: Handle,
) -> std::io::Result<JoinHandle<()>> {
    let env_u64 = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let (reports_tx, reports) = crossbeam_channel::unbounded();
    let sync = dir_sync::DirSync::spawn(queue.clone());
    let mut runner = Runner {
        queue,
        spool: spool.to_owned(),
        config,
        entries: BTreeMap::new(),
        retry_base: env_u64("MXD_RETRY_BASE").map_or(RETRY_BASE, Duration::from_secs),
        mx_port: env_u64("MXD_MX_PORT").and_then(|p| u16::try_from(p).ok()).unwrap_or(MX_PORT),
        in_flight: BTreeSet::new(),
        reports_tx,
        reports,
        unlinked: Vec::new(),
        acks: Vec::new(),
        removed: false,
        sync,
    };
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let mut next_round = Instant::now();
        while !handle.stop.load(Ordering::Relaxed) {
            let reports = runner.reports.clone();
            let mut next = After::Nothing;
            crossbeam_channel::select! {
                recv(wake) -> w => {
                    if w.is_err() {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    next = After::Round;
                },
                recv(reports) -> r => if let Ok(r) = r { next = runner.handle(r) },
                default(Duration::from_secs(1)) => next = After::Round,
            }
            while let Ok(r) = runner.reports.try_recv() {
                next = next.max(runner.handle(r));
            }
            runner.flush();
            // A round walks the whole queue: while deliveries stream in, once per ROUND; a
            // finished worker only frees its slot for the destinations waiting.
            if next != After::Round && Instant::now() < next_round {
                if next == After::Dispatch {
                    runner.dispatch();
                }
                continue;
            }
            next_round = Instant::now() + ROUND;
            runner.scan();
            let all = handle.schedule_all.swap(false, Ordering::Relaxed);
            let ids = handle.scheduled.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
            for e in runner.entries.values_mut().filter(|e| all || ids.iter().any(|id| e.id.starts_with(id.as_str()))) {
                e.rcpts.iter_mut().for_each(|r| r.next = Instant::now());
            }
            runner.dispatch();
            runner.settle_all();
            runner.publish(&handle.status);
        }
        runner.drain_on_stop();
    })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Runner {
    fn publish(&self, status: &RetryTable) {
        let view = self
            .entries
            .iter()
            .flat_map(|(name, e)| {
                e.rcpts.iter().filter(|r| r.state != RcptState::Done).map(move |r| {
                    (
                        (name.clone(), r.addr.clone()),
                        Retry { attempts: r.attempts, next: r.next, state: r.state.clone() },
                    )
                })
            })
            .collect();
        if let Ok(mut s) = status.lock() {
            *s = view;
        }
    }

    /// Picks up queue files not seen yet (new messages, or all of them after a restart).
    fn scan(&mut self) {
        let dir = self.queue.join("new");
        let names: BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        self.entries.retain(|name, _| names.contains(name));
        for name in names {
            if self.entries.contains_key(&name) {
                continue;
            }
            let Ok(bytes) = queue::seal::read(&dir.join(&name)) else {
                log::error!("queue file {name} cannot be read or opened; left for the administrator");
                continue;
            };
            let Some((env, _)) = queue::decode(&bytes) else {
                log::error!("queue file {name} is malformed; left for the administrator");
                continue;
            };
            let done = queue::read_done(&self.queue, &name);
            let rcpts = env
                .rcpts
                .iter()
                .map(|(action, addr)| QueuedRcpt {
                    action: action.clone(),
                    addr: addr.clone(),
                    attempts: 0,
                    next: Instant::now(),
                    state: if done.contains(addr) { RcptState::Done } else { RcptState::Pending },
                })
                .collect();
            let persisted = done.len();
            let id = queue::message_id(&env, &name);
            self.entries.insert(name, QueuedMessage { env, id, rcpts, persisted, warned: 0 });
        }
    }

    fn config(&self) -> Arc<Config> {
        self.config.lock().map(|c| Arc::clone(&c)).unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Hands each destination with due recipients, and no session yet, to a worker.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let config = self.config();
        let mut work: BTreeMap<Dest, Vec<Item>> = BTreeMap::new();
        for (name, e) in &self.entries {
            let mut by_dest: BTreeMap<Dest, Vec<String>> = BTreeMap::new();
            for r in e.rcpts.iter().filter(|r| r.due(now)) {
                let dest = Dest::of(&config, r);
                if !self.in_flight.contains(&dest) {
                    by_dest.entry(dest).or_default().push(r.addr.clone());
                }
            }
            for (dest, rcpts) in by_dest {
                work.entry(dest).or_default().push(Item { name: name.clone(), id: e.id.clone(), rcpts });
            }
        }
        if work.is_empty() {
            return;
        }
        // Read once per round that needs it, so an edited resolv.conf applies without a restart.
        let resolver = Arc::new(Resolver::system());
        for (dest, items) in work {
            if self.in_flight.len() >= MAX_DESTINATIONS {
                break;
            }
            let w = Work {
                dest: dest.clone(),
                items,
                config: Arc::clone(&config),
                resolver: Arc::clone(&resolver),
                mx_port: self.mx_port,
                queue: self.queue.clone(),
            };
            // The mda queue also holds ~/.forward and alias programs, under any local action.
            let is_mda = matches!(config.actions.get(&dest.action).map(|a| &a.method), Some(Method::Mda(_)))
                || self.queue == crate::spool::mda_dir(&self.spool);
            let started = if is_mda {
                mda::spawn_worker(w, self.reports_tx.clone())
            } else {
                worker::spawn(w, self.reports_tx.clone())
            };
            match started {
                Ok(()) => {
                    self.in_flight.insert(dest);
                }
                Err(e) => log::error!("relay: cannot start a worker for {}: {e}", dest.action),
            }
        }
    }

    /// Records what a worker reports; a message's verdicts reach the disk (at the next
    /// `flush`) before its ack. Says what the loop must do next.
    fn handle(&mut self, report: WorkerReport) -> After {
        match report {
            WorkerReport::Sent { dest, name, results, ack } => {
                if let Some(entry) = self.entries.get_mut(&name) {
                    for (addr, result) in &results {
                        record(entry, &dest, addr, result, self.retry_base);
                    }
                }
                self.persist_unsynced(&name);
                self.acks.push(ack);
                // A deferral or a bounce shows in mailq (and a bounce goes out) at once.
                if results.iter().any(|(_, r)| *r != RcptStatus::Ok) {
                    return After::Round;
                }
            }
            WorkerReport::Delivered { name } => {
                self.entries.remove(&name);
                self.removed = true;
            }
            WorkerReport::Failed { dest, rcpts, result } => {
                for (name, addrs) in rcpts {
                    if let Some(entry) = self.entries.get_mut(&name) {
                        for addr in &addrs {
                            record(entry, &dest, addr, &result, self.retry_base);
                        }
                    }
                }
                return After::Round;
            }
            WorkerReport::Finished(dest) => {
                self.in_flight.remove(&dest);
                return After::Dispatch;
            }
        }
        After::Nothing
    }

    /// Lets the sessions waiting for their verdicts to be recorded go on, and has the
    /// removals since the last flush synced off this thread (`dir_sync`): an unlink
    /// survives a kill -9, and a session must not wait for the disk (a directory sync
    /// under load takes tens of milliseconds, a message's round trips well under one).
    fn flush(&mut self) {
        if std::mem::take(&mut self.removed) {
            self.sync.request(&self.queue, std::mem::take(&mut self.unlinked));
        }
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }

    /// Stopping: sessions still running get a moment to report what they delivered.
    fn drain_on_stop(&mut self) {
        let deadline = Instant::now() + STOP_GRACE;
        while !self.in_flight.is_empty() {
            match self.reports.recv_deadline(deadline) {
                Ok(r) => {
                    self.handle(r);
                    self.flush();
                }
                Err(_) => break,
            }
        }
        self.sync.finish();
    }

    fn settle_all(&mut self) {
        let config = self.config();
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            self.settle(&config, &name);
        }
    }

    /// Writes what is done to `state/` (or removes the message when all is): durable
    /// before the runner goes on, so a crash resends at most what was in flight.
    fn persist(&mut self, name: &str) {
        self.persist_with(name, true);
    }

    /// As `persist`, but a finished message's file is only unlinked: `flush` has the
    /// directory synced for the whole batch, then their state files removed.
    fn persist_unsynced(&mut self, name: &str) {
        let has_state = self.entries.get(name).is_some_and(|e| e.persisted > 0);
        if self.persist_with(name, false) {
            self.removed = true;
            if has_state {
                self.unlinked.push(name.to_owned());
            }
        }
    }

    /// True when the message was finished and unlinked without a sync (`sync` false).
    fn persist_with(&mut self, name: &str, sync: bool) -> bool {
        let Some(entry) = self.entries.get_mut(name) else { return false };
        let done = entry.done();
        let finished = done.len() == entry.rcpts.len();
        let result = if finished && sync {
            queue::remove(&self.queue, name).map(|()| true)
        } else if finished {
            queue::unlink(&self.queue, name).map(|()| true)
        } else if done.len() != entry.persisted {
            entry.persisted = done.len();
            queue::write_done(&self.queue, name, &done).map(|()| false)
        } else {
            Ok(false)
        };
        match result {
            Ok(true) => {
                self.entries.remove(name);
                !sync
            }
            Ok(false) => false,
            Err(e) => {
                log::error!("queue msgid={} file={name}: {e}", entry_id(&self.entries, name));
                false
            }
        }
    }

    /// Turns expired deferrals into bounces, sends the bounces that are due, and persists.
    fn settle(&mut self, config: &Config, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else { return };
        let age = Duration::from_secs(now_secs().saturating_sub(entry.env.created));
        let now = Instant::now();
        for r in entry.rcpts.iter_mut() {
            let ttl = config.actions.get(&r.action).and_then(|a| a.ttl).unwrap_or(config.queue_ttl);
            // A recipient in a session now waits for that session's verdict.
            if self.in_flight.contains(&Dest::of(config, r)) {
                continue;
            }
            if let RcptState::Deferred(why) = &r.state {
                if age > ttl && r.attempts > 0 {
                    let reason = format!("message expired after {}s in the queue: {why}", age.as_secs());
                    r.state = RcptState::Bounced { status: "4.4.7".into(), reason };
                }
            }
        }
        if !warn_of_delay(config, entry, &self.queue, &self.spool, name, age, &self.in_flight) {
            return;
        }
        let failed: Vec<(String, String, String)> = entry
            .rcpts
            .iter()
            .filter(|r| r.next <= now)
            .filter_map(|r| match &r.state {
                RcptState::Bounced { status, reason } => Some((r.addr.clone(), status.clone(), reason.clone())),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            let bytes = queue::seal::read(&self.queue.join("new").join(name)).unwrap_or_default();
            let original = queue::decode(&bytes).map_or(&b""[..], |(_, m)| m);
            // A ~/.forward or alias program is named by its address.
            let shown: Vec<String> = failed.iter().map(|f| crate::forward::shown_rcpt(&f.0)).collect();
            let failures: Vec<bounce::Failure<'_>> = failed
                .iter()
                .zip(&shown)
                .map(|((_, status, why), rcpt)| bounce::Failure { rcpt, status, diagnostic: why })
                .collect();
            if let Some(dsn) = bounce::dsn(&config.hostname, &entry.env.sender, &failures, original, &entry.id) {
                let socket = self.spool.join(crate::spool::SUBMIT_SOCKET);
                let prepared = crate::submit::headers::Prepared {
                    sender: String::new(),
                    recipients: vec![entry.env.sender.clone()],
                    message: dsn,
                };
                if let Err(e) = crate::submit::client::submit(&socket, &prepared, None) {
                    // The recipients stay Bounced: the bounce is tried again later.
                    log::warn!("bounce for msgid={} not submitted, retrying later: {e}", entry.id);
                    for r in entry.rcpts.iter_mut().filter(|r| matches!(r.state, RcptState::Bounced { .. })) {
                        r.next = now + self.retry_base;
                    }
                    return;
                }
                log::info!("bounce msgid={} to=<{}> nrcpt={}", entry.id, entry.env.sender, failed.len());
            }
            for r in entry.rcpts.iter_mut().filter(|r| failed.iter().any(|f| f.0 == r.addr)) {
                r.state = RcptState::Done;
            }
        }
        self.persist(name);
    }
}

/// `bounce warn-interval`: once the message is older than another of the intervals and
/// recipients are still deferred, one warning to the sender names them (the message stays
/// queued). `false` when the warning could not be submitted (tried again at the next round).
fn warn_of_delay(
    config: &Config,
    entry: &mut QueuedMessage,
    queue_dir: &Path,
    spool: &Path,
    name: &str,
    age: Duration,
    in_flight: &BTreeSet<Dest>,
) -> bool {
    let passed = config.knobs.bounce_warn.iter().filter(|d| age >= **d).count();
    if passed <= entry.warned {
        return true;
    }
    let delayed: Vec<(String, String)> = entry
        .rcpts
        .iter()
        .filter(|r| r.attempts > 0 && !in_flight.contains(&Dest::of(config, r)))
        .filter_map(|r| match &r.state {
            RcptState::Deferred(why) => Some((r.addr.clone(), why.clone())),
            _ => None,
        })
        .collect();
    if delayed.is_empty() {
        return true;
    }
    let bytes = queue::seal::read(&queue_dir.join("new").join(name)).unwrap_or_default();
    let original = queue::decode(&bytes).map_or(&b""[..], |(_, m)| m);
    let shown: Vec<String> = delayed.iter().map(|d| crate::forward::shown_rcpt(&d.0)).collect();
    let list: Vec<bounce::Failure<'_>> = delayed
        .iter()
        .zip(&shown)
        .map(|((_, why), rcpt)| bounce::Failure { rcpt, status: "4.4.1", diagnostic: why })
        .collect();
    if let Some(dsn) = bounce::delay_warning(&config.hostname, &entry.env.sender, &list, original, &entry.id, passed) {
        let prepared = crate::submit::headers::Prepared {
            sender: String::new(),
            recipients: vec![entry.env.sender.clone()],
            message: dsn,
        };
        if let Err(e) = crate::submit::client::submit(&spool.join(crate::spool::SUBMIT_SOCKET), &prepared, None) {
            log::warn!("delay warning for msgid={} not submitted, retrying later: {e}", entry.id);
            return false;
        }
        log::info!(
            "delay warning msgid={} to=<{}> nrcpt={} age={}s",
            entry.id,
            entry.env.sender,
            list.len(),
            age.as_secs()
        );
    }
    entry.warned = passed;
    true
}

fn entry_id(entries: &BTreeMap<String, QueuedMessage>, name: &str) -> String {
    entries.get(name).map_or_else(|| queue::id_of(name), |e| e.id.clone())
}

pub(crate) fn result_name(r: &RcptStatus) -> String {
    match r {
        RcptStatus::Ok => "Ok".into(),
        RcptStatus::Temp(e) => format!("TempFail error=\"{e}\""),
        RcptStatus::Perm(e) => format!("PermFail error=\"{e}\""),
    }
}

/// The enhanced status code in a reply text ("550 5.1.1 no such user"), else the class's.
fn enhanced_status(text: &str) -> String {
    // A reply ("550 5.1.1 …") has it second; mxd's own verdicts ("5.1.10 …") first.
    let code = text.split_ascii_whitespace().take(2).find(|c| {
        let parts: Vec<&str> = c.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    code.map_or_else(|| "5.0.0".to_owned(), str::to_owned)
}

fn record(entry: &mut QueuedMessage, dest: &Dest, addr: &str, result: &RcptStatus, base: Duration) {
    let Some(r) = entry.rcpts.iter_mut().find(|r| r.addr == addr && dest.holds(r) && r.state != RcptState::Done) else {
        return;
    };
    r.attempts += 1;
    match result {
        RcptStatus::Ok => r.state = RcptState::Done,
        RcptStatus::Perm(e) => r.state = RcptState::Bounced { status: enhanced_status(e), reason: e.clone() },
        RcptStatus::Temp(e) => {
            r.state = RcptState::Deferred(e.clone());
            r.next = Instant::now() + backoff(base, r.attempts);
        }
    }
}

/// base, 2·base, 4·base … capped.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(MAX_DELAY)
}

/// `mailq`: one line per waiting recipient, with its retry state when the runner has one.
pub fn list(spool: &Path, status: &RetryTable) -> String {
    list_in(&queue::queue_dir(spool), status)
}

/// As [`list`], for the queue directory `q`.
pub fn list_in(q: &Path, status: &RetryTable) -> String {
    let status = status.lock().map(|s| s.clone()).unwrap_or_default();
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir(q.join("new")) else { return out };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let Ok(bytes) = queue::seal::read(&q.join("new").join(&name)) else { continue };
        let Some((env, message)) = queue::decode(&bytes) else { continue };
        let done = queue::read_done(q, &name);
        let age = now_secs().saturating_sub(env.created);
        for (action, rcpt) in env.rcpts.iter().filter(|(_, r)| !done.contains(r)) {
            // A ~/.forward or alias program (mda queue): its address, and what it is.
            let (shown, via) = match crate::forward::ForwardProgram::from_queue_rcpt(rcpt) {
                Some(p) => (p.dest.clone(), format!(" via={}", p.method())),
                None => (rcpt.clone(), String::new()),
            };
            out.push_str(&format!(
                "{} <{}> <{shown}> action={action}{via} size={} age={age}s",
                queue::message_id(&env, &name),
                env.sender,
                message.len()
            ));
            if let Some(r) = status.get(&(name.clone(), rcpt.clone())).filter(|r| r.attempts > 0) {
                let next = r.next.saturating_duration_since(Instant::now()).as_secs();
                let (state, error) = match &r.state {
                    RcptState::Deferred(e) => ("deferred", e.as_str()),
                    RcptState::Bounced { reason, .. } => ("bounced", reason.as_str()),
                    RcptState::Pending | RcptState::Done => ("pending", ""),
                };
                let error = error.replace('"', "'");
                out.push_str(&format!(" state={state} attempts={} next={next}s error=\"{error}\"", r.attempts));
            }
            out.push('\n');
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(60);
        assert_eq!(backoff(b, 1), Duration::from_secs(60));
        assert_eq!(backoff(b, 2), Duration::from_secs(120));
        assert_eq!(backoff(b, 4), Duration::from_secs(480));
        assert_eq!(backoff(b, 40), MAX_DELAY);
    }
}
