//! One destination's delivery, on a thread of its own, so that many destinations progress
//! at once and a slow or silent host (a tarpit) delays only its own mail; a destination
//! with more than one session's worth of mail gets up to [`SESSIONS_PER_DEST`] sessions.
//! A worker owns no queue state but one: a message whose every recipient is in the session
//! and took it (the common case) is removed by the session itself, at once, and reported
//! to the runner after (`Delivered`), so sessions never wait on the runner's one thread
//! (on a loaded machine, a serial point that sessions queue behind). Any other verdict
//! goes to the runner, which records it; the session sends the next message meanwhile and
//! waits for that record before it reports the next: a crash sends again at most two
//! messages per session (the one in flight, and the one delivered just before).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::client::{RcptStatus, RelaySession, Sent, Spec};
use super::{result_name, spec, Dest};
use crate::config::Config;
use crate::dns::Resolver;
use crate::queue;

/// A session carries at most this many messages, then a new one is opened: OpenSMTPD's
/// default `mta limit max-mail-per-session`.
const DEFAULT_MAILS_PER_SESSION: u64 = 100;
/// Sessions at once to one destination, each with its own batch of messages (OpenSMTPD's
/// default limit per host is also 10, Postfix's per destination 20): one session's round
/// trips and the runner's disk writes overlap with the others'.
const SESSIONS_PER_DEST: usize = 10;

/// One queued message's due recipients for the destination.
pub(super) struct Item {
    pub(super) name: String,
    pub(super) id: String,
    pub(super) rcpts: Vec<String>,
}

pub(super) struct Work {
    pub(super) dest: Dest,
    pub(super) items: Vec<Item>,
    pub(super) config: Arc<Config>,
    pub(super) resolver: Arc<Resolver>,
    pub(super) mx_port: u16,
    pub(super) queue: PathBuf,
}

pub(super) enum WorkerReport {
    /// The verdicts for one message's recipients. The session waits for `ack`, sent once
    /// they are on disk, before it reports the next message.
    Sent { dest: Dest, name: String, results: Vec<(String, RcptStatus)>, ack: Sender<()> },
    /// Every recipient of the message took it, and the session removed its queue file
    /// (unsynced: the runner has the directory synced).
    Delivered { name: String },
    /// One verdict for each of these recipients, by queue file name.
    Failed { dest: Dest, rcpts: Vec<(String, Vec<String>)>, result: RcptStatus },
    /// The worker is done with `dest`.
    Finished(Dest),
}

pub(super) fn spawn(work: Work, reports: Sender<WorkerReport>) -> std::io::Result<()> {
    std::thread::Builder::new().name("relay-dest".into()).spawn(move || {
        run(&work, &reports);
        let _ = reports.send(WorkerReport::Finished(work.dest.clone()));
    })?;
    Ok(())
}

fn run(work: &Work, reports: &Sender<WorkerReport>) {
    let (action, domain) = (&work.dest.action, work.dest.domain.as_deref());
    let specs = match spec::candidates(&work.config, action, domain, &work.resolver, work.mx_port) {
        Ok(s) => s,
        Err(verdict) => return fail(work, &work.items, verdict, None, reports),
    };
    let batches: Vec<&[Item]> = work.items.chunks(mails_per_session(&work.config, domain)).collect();
    let shared = Sessions { work, specs: &specs, batches: &batches, next: AtomicUsize::new(0), down: Mutex::new(None) };
    let sessions = batches.len().clamp(1, SESSIONS_PER_DEST);
    std::thread::scope(|scope| {
        for _ in 1..sessions {
            let (shared, reports) = (&shared, reports.clone());
            let spawned = std::thread::Builder::new()
                .name("relay-session".into())
                .spawn_scoped(scope, move || shared.run(&reports));
            if spawned.is_err() {
                break; // fewer sessions, same work: the others take the batches
            }
        }
        shared.run(reports);
    });
}

/// Messages per session to `domain`: `mta limit [for domain D] max-mail-per-session N`. As
/// in parse.y, a domain's limits start as a copy of the defaults where it first appears.
fn mails_per_session(config: &Config, domain: Option<&str>) -> usize {
    let (mut default, mut own) = (DEFAULT_MAILS_PER_SESSION, None);
    for limit in config.knobs.limits.iter().filter(|l| l.scope == "mta") {
        let slot = match &limit.domain {
            None => &mut default,
            Some(d) if domain.is_some_and(|x| x.eq_ignore_ascii_case(d)) => own.get_or_insert(default),
            Some(_) => continue,
        };
        for (_, n) in limit.values.iter().filter(|(name, _)| name == "max-mail-per-session") {
            *slot = *n;
        }
    }
    usize::try_from(own.unwrap_or(default)).unwrap_or(usize::MAX).max(1)
}

/// What the sessions of one destination share: the batches (one per session), the next to
/// take, and whether the destination has failed (then the batches left fail at once with
/// the same reason rather than each trying the hosts again).
struct Sessions<'a> {
    work: &'a Work,
    specs: &'a [Spec],
    batches: &'a [&'a [Item]],
    next: AtomicUsize,
    down: Mutex<Option<String>>,
}

impl Sessions<'_> {
    fn run(&self, reports: &Sender<WorkerReport>) {
        while let Some(batch) = self.batches.get(self.next.fetch_add(1, Ordering::Relaxed)) {
            let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
            if let Some(e) = down {
                fail(self.work, batch, RcptStatus::Temp(e), None, reports);
                continue;
            }
            if let Err(e) = self.session(batch, reports) {
                if let Ok(mut d) = self.down.lock() {
                    d.get_or_insert(e);
                }
            }
        }
    }

    /// Sessions for `batch`: one, or one after another when the server takes fewer
    /// messages per session (MAIL refused with 452 "too many"): the rest go in a new
    /// session, and nothing is deferred. `Err` (after reporting the messages left) when the
    /// destination failed.
    fn session(&self, batch: &[Item], reports: &Sender<WorkerReport>) -> Result<(), String> {
        // The last message's record, awaited while the next message goes out.
        let mut unacked: Option<crossbeam_channel::Receiver<()>> = None;
        let mut rest = batch;
        while !rest.is_empty() {
            let (mut session, spec) = match open(self.specs) {
                Ok(s) => s,
                Err(e) => {
                    fail(self.work, rest, RcptStatus::Temp(e.clone()), None, reports);
                    return Err(e);
                }
            };
            let taken = self.send_items(&mut session, spec, rest, &mut unacked, reports)?;
            session.quit();
            rest = rest.get(taken..).unwrap_or_default();
        }
        match unacked.map(|a| a.recv()) {
            Some(Err(_)) => Err("the relay runner stopped".into()),
            _ => Ok(()),
        }
    }

    /// Sends `items` in `session`; how many it took: all, or fewer (at least one) when
    /// the server would take no more in this session.
    fn send_items(
        &self,
        session: &mut RelaySession,
        spec: &Spec,
        items: &[Item],
        unacked: &mut Option<crossbeam_channel::Receiver<()>>,
        reports: &Sender<WorkerReport>,
    ) -> Result<usize, String> {
        let work = self.work;
        let relay = spec::relay_of(&work.config, &work.dest.action);
        let sender_override = relay.and_then(|r| r.mail_from.clone());
        let srs = relay.is_some_and(|r| r.srs);
        let tls = session.tls().unwrap_or("none");
        let host = format!("{} address={} tls={tls}", spec.host, session.peer());
        for (i, item) in items.iter().enumerate() {
            // Gone since it was dispatched (`mxctl remove`): nothing to send.
            let Ok(bytes) = queue::seal::read(&work.queue.join("new").join(&item.name)) else { continue };
            let Some((env, message)) = queue::decode(&bytes) else { continue };
            let rcpts: Vec<&str> = item.rcpts.iter().map(String::as_str).collect();
            let sender = sender_override.as_deref().unwrap_or(&env.sender);
            let via = crate::srs::forwarded(&env, &item.rcpts);
            let rewritten = if srs { crate::srs::forward_sender(&work.config, sender, via) } else { None };
            let sender = rewritten.as_deref().unwrap_or(sender);
            let e = match session.send(sender, &rcpts, message) {
                Ok(Sent::Results(results)) => {
                    for (addr, result) in item.rcpts.iter().zip(&results) {
                        log::info!("relay msgid={} to=<{addr}> host={host} result={}", item.id, result_name(result));
                    }
                    let whole = item.rcpts.len() == env.rcpts.len() && results.iter().all(|r| *r == RcptStatus::Ok);
                    if whole && removed(work, item) {
                        if reports.send(WorkerReport::Delivered { name: item.name.clone() }).is_err() {
                            return Err("the relay runner stopped".into());
                        }
                        continue;
                    }
                    let (ack, acked) = crossbeam_channel::bounded(1);
                    let results = item.rcpts.iter().cloned().zip(results).collect();
                    let report = WorkerReport::Sent { dest: work.dest.clone(), name: item.name.clone(), results, ack };
                    // The previous message must be on disk before this one's record is
                    // awaited: at most two per session are sent again after a crash. The
                    // runner stopped: what is not recorded is sent again after a restart.
                    let previous = unacked.replace(acked);
                    if reports.send(report).is_err() || previous.is_some_and(|p| p.recv().is_err()) {
                        return Err("the relay runner stopped".into());
                    }
                    continue;
                }
                // OpenSMTPD defers the message here; a new session sends it at once.
                Ok(Sent::SessionFull(reply)) if i > 0 => {
                    log::info!(
                        "relay host={host} took {i} messages in one session ({reply}): a new session sends the rest"
                    );
                    return Ok(i);
                }
                // Not even one: the server's limit is no session limit.
                Ok(Sent::SessionFull(reply)) => reply,
                Err(e) => e.to_string(),
            };
            let e = format!("{}: {e}", spec.host);
            fail(work, &items[i..], RcptStatus::Temp(e.clone()), Some(&host), reports);
            return Err(e);
        }
        Ok(items.len())
    }
}

/// Removes a message delivered to all its recipients (here, they are the whole envelope,
/// so there is no state file); false leaves it to the runner.
fn removed(work: &Work, item: &Item) -> bool {
    match queue::unlink(&work.queue, &item.name) {
        Ok(()) => true,
        // `mxctl remove` came first: gone either way.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            log::error!("queue msgid={} file={}: {e}", item.id, item.name);
            false
        }
    }
}

/// The first host of `specs` that takes a session (connection, greeting, EHLO, TLS, AUTH).
fn open(specs: &[Spec]) -> Result<(RelaySession, &Spec), String> {
    let mut last = String::from("no host to try");
    for spec in specs {
        match RelaySession::open(spec) {
            Ok(s) => return Ok((s, spec)),
            Err(e) => {
                last = format!("{}: {e}", spec.host);
                if specs.len() > 1 {
                    log::info!("relay host={} port={} failed, trying the next host: {e}", spec.host, spec.port);
                }
            }
        }
    }
    Err(last)
}

fn fail(work: &Work, items: &[Item], result: RcptStatus, host: Option<&str>, reports: &Sender<WorkerReport>) {
    let host = host.map_or(String::new(), |h| format!(" host={h}"));
    for item in items {
        for addr in &item.rcpts {
            log::info!("relay msgid={} to=<{addr}>{host} result={}", item.id, result_name(&result));
        }
    }
    let rcpts = items.iter().map(|i| (i.name.clone(), i.rcpts.clone())).collect();
    let _ = reports.send(WorkerReport::Failed { dest: work.dest.clone(), rcpts, result });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_per_session_by_domain_as_parse_y_copies_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let load = |limits: &str| {
            let file = dir.path().join("smtpd.conf");
            std::fs::write(&file, format!("{limits}listen on 127.0.0.1\n")).unwrap();
            crate::config::load(&file, &[]).unwrap()
        };
        assert_eq!(mails_per_session(&load(""), Some("a.example")), 100);
        let c = load(
            "mta limit max-mail-per-session 7\nmta limit for domain a.example max-conn-per-host 2\n\
             mta limit max-mail-per-session 9\nmta limit for domain b.example max-mail-per-session 3\n",
        );
        // a.example copied the defaults when the default was 7.
        assert_eq!(mails_per_session(&c, Some("A.example")), 7);
        assert_eq!(mails_per_session(&c, Some("b.example")), 3);
        assert_eq!(mails_per_session(&c, Some("c.example")), 9);
        assert_eq!(mails_per_session(&c, None), 9);
    }
}
