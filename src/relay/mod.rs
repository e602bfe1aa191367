//! The relay runner: one thread that takes due recipients from the queue, groups them by
//! relay action so that every message for one host goes over one session, and records each
//! recipient's fate: delivered, retried later with backoff (4xx, network errors), or
//! bounced to the sender (5xx, or older than `queue ttl`), never a bounce for a bounce.

pub mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

use crate::config::{Config, Method, Scheme};
use crate::queue::{self, bounce, Envelope};
use crate::tls::Verify;
use client::{RcptResult, Session, Spec, TlsMode};

/// First retry after this (MXD_RETRY_BASE seconds overrides it, for tests); doubling up to
/// `MAX_DELAY`.
const RETRY_BASE: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(4 * 3600);

/// The current configuration, swapped by the supervisor on reload.
pub type SharedConfig = Arc<Mutex<Arc<Config>>>;

struct Rcpt {
    action: String,
    addr: String,
    attempts: u32,
    next: Instant,
    last_error: String,
}

impl Rcpt {
    /// Due for an attempt: its time has come and it is not waiting for its bounce.
    fn due(&self, action: Option<&str>, now: Instant) -> bool {
        self.next <= now && !self.last_error.starts_with("perm:") && action.map_or(true, |a| a == self.action)
    }
}

struct Entry {
    env: Envelope,
    /// Recipients not yet done.
    pending: Vec<Rcpt>,
    done: BTreeSet<String>,
    /// How many of `done` are already in the state file.
    persisted: usize,
}

pub struct Runner {
    queue: PathBuf,
    spool: PathBuf,
    config: SharedConfig,
    entries: BTreeMap<String, Entry>,
    retry_base: Duration,
}

/// Control over a running runner: wake it, ask for everything to be retried now, stop it,
/// and read where its retries stand.
#[derive(Clone)]
pub struct Handle {
    pub wake: crossbeam_channel::Sender<()>,
    pub schedule_all: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub status: Status,
}

/// The runner's view of each waiting recipient, by (queue file, address), published after
/// every round so that `show queue` can say how often it was tried and why it waits.
pub type Status = Arc<Mutex<BTreeMap<(String, String), Retry>>>;

#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub next: Instant,
    pub last_error: String,
}

pub fn spawn(
    spool: &Path,
    config: SharedConfig,
    wake: Receiver<()>,
    handle: Handle,
) -> std::io::Result<JoinHandle<()>> {
    let retry_base =
        std::env::var("MXD_RETRY_BASE").ok().and_then(|s| s.parse().ok()).map_or(RETRY_BASE, Duration::from_secs);
    let mut runner = Runner {
        queue: queue::queue_dir(spool),
        spool: spool.to_owned(),
        config,
        entries: BTreeMap::new(),
        retry_base,
    };
    std::thread::Builder::new().name("relay".into()).spawn(move || {
        while !handle.stop.load(Ordering::Relaxed) {
            let _ = wake.recv_timeout(Duration::from_secs(1));
            if handle.schedule_all.swap(false, Ordering::Relaxed) {
                runner.entries.values_mut().flat_map(|e| e.pending.iter_mut()).for_each(|r| r.next = Instant::now());
            }
            runner.scan();
            runner.attempt_due();
            runner.publish(&handle.status);
        }
    })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Runner {
    fn publish(&self, status: &Status) {
        let view = self
            .entries
            .iter()
            .flat_map(|(name, e)| {
                e.pending.iter().map(move |r| {
                    (
                        (name.clone(), r.addr.clone()),
                        Retry { attempts: r.attempts, next: r.next, last_error: r.last_error.clone() },
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
            let Ok(bytes) = std::fs::read(dir.join(&name)) else { continue };
            let Some((env, _)) = queue::decode(&bytes) else {
                log::error!("queue file {name} is malformed; left for the administrator");
                continue;
            };
            let done = queue::read_done(&self.queue, &name);
            let pending = env
                .rcpts
                .iter()
                .filter(|(_, r)| !done.contains(r))
                .map(|(action, addr)| Rcpt {
                    action: action.clone(),
                    addr: addr.clone(),
                    attempts: 0,
                    next: Instant::now(),
                    last_error: String::new(),
                })
                .collect();
            let persisted = done.len();
            self.entries.insert(name, Entry { env, pending, done, persisted });
        }
    }

    fn attempt_due(&mut self) {
        let now = Instant::now();
        let mut by_action: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, e) in &self.entries {
            for r in e.pending.iter().filter(|r| r.due(None, now)) {
                let names = by_action.entry(r.action.clone()).or_default();
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        let config = self.config.lock().map(|c| Arc::clone(&c)).unwrap_or_else(|e| Arc::clone(&e.into_inner()));
        for (action, names) in by_action {
            self.relay_group(&config, &action, &names);
        }
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            self.settle(&config, &name);
        }
    }

    /// Every due recipient of `action`, over one session.
    fn relay_group(&mut self, config: &Config, action: &str, names: &[String]) {
        let spec = match spec_for(config, action) {
            Ok(s) => s,
            Err(e) => return self.fail_group(action, names, &RcptResult::Temp(e)),
        };
        let mut session = match Session::open(&spec) {
            Ok(s) => s,
            Err(e) => {
                return self.fail_group(action, names, &RcptResult::Temp(format!("{}:{}: {e}", spec.host, spec.port)))
            }
        };
        let sender_override = relay_of(config, action).and_then(|r| r.mail_from.clone());
        for name in names {
            let Ok(bytes) = std::fs::read(self.queue.join("new").join(name)) else { continue };
            let Some((env, message)) = queue::decode(&bytes) else { continue };
            let now = Instant::now();
            let Some(entry) = self.entries.get_mut(name) else { continue };
            let due: Vec<String> =
                entry.pending.iter().filter(|r| r.due(Some(action), now)).map(|r| r.addr.clone()).collect();
            let rcpts: Vec<&str> = due.iter().map(String::as_str).collect();
            let sender = sender_override.as_deref().unwrap_or(&env.sender);
            match session.send(sender, &rcpts, message) {
                Ok(results) => {
                    for (addr, result) in due.iter().zip(results) {
                        log::info!("relay msgid={name} to=<{addr}> host={} result={}", spec.host, result_name(&result));
                        record(entry, addr, &result, self.retry_base);
                    }
                }
                Err(e) => {
                    let r = RcptResult::Temp(format!("{}: {e}", spec.host));
                    for addr in &due {
                        record(entry, addr, &r, self.retry_base);
                    }
                    return self.fail_group(action, names, &r);
                }
            }
        }
        session.quit();
    }

    fn fail_group(&mut self, action: &str, names: &[String], result: &RcptResult) {
        let now = Instant::now();
        for name in names {
            if let Some(entry) = self.entries.get_mut(name) {
                let due: Vec<String> =
                    entry.pending.iter().filter(|r| r.due(Some(action), now)).map(|r| r.addr.clone()).collect();
                for addr in due {
                    log::info!("relay msgid={name} to=<{addr}> result={}", result_name(result));
                    record(entry, &addr, result, self.retry_base);
                }
            }
        }
    }

    /// Bounces what failed for good or expired, persists what is done, removes what is
    /// finished.
    fn settle(&mut self, config: &Config, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else { return };
        let age = Duration::from_secs(now_secs().saturating_sub(entry.env.created));
        let ttl = entry
            .pending
            .iter()
            .filter_map(|r| config.actions.get(&r.action).and_then(|a| a.ttl))
            .min()
            .unwrap_or(config.queue_ttl);
        let mut failed: Vec<(String, String, String)> = Vec::new();
        entry.pending.retain(|r| {
            let perm = r.last_error.starts_with("perm:");
            let expired = age > ttl && r.attempts > 0;
            if perm || expired {
                let (status, why) = if perm {
                    ("5.0.0".to_owned(), r.last_error.trim_start_matches("perm:").to_owned())
                } else {
                    (
                        "4.4.7".to_owned(),
                        format!(
                            "message expired after {}s in the queue: {}",
                            age.as_secs(),
                            r.last_error.trim_start_matches("temp:")
                        ),
                    )
                };
                failed.push((r.addr.clone(), status, why));
                return false;
            }
            true
        });
        if !failed.is_empty() {
            let bytes = std::fs::read(self.queue.join("new").join(name)).unwrap_or_default();
            let original = queue::decode(&bytes).map_or(&b""[..], |(_, m)| m);
            let failures: Vec<bounce::Failure<'_>> =
                failed.iter().map(|(rcpt, status, why)| bounce::Failure { rcpt, status, diagnostic: why }).collect();
            if let Some(dsn) = bounce::dsn(&config.hostname, &entry.env.sender, &failures, original, name) {
                let socket = self.spool.join(crate::server::SUBMIT_SOCKET);
                let prepared = crate::submit::headers::Prepared {
                    sender: String::new(),
                    recipients: vec![entry.env.sender.clone()],
                    message: dsn,
                };
                if let Err(e) = crate::submit::client::submit(&socket, &prepared, None) {
                    // Keep the recipients pending: the bounce is retried with them.
                    log::warn!("bounce for msgid={name} not submitted, retrying later: {e}");
                    for (addr, _, why) in &failed {
                        entry.pending.push(Rcpt {
                            action: String::new(),
                            addr: addr.clone(),
                            attempts: 1,
                            next: Instant::now() + self.retry_base,
                            last_error: format!("perm:{why}"),
                        });
                    }
                    return;
                }
                log::info!("bounce msgid={name} to=<{}> nrcpt={}", entry.env.sender, failed.len());
            }
            entry.done.extend(failed.into_iter().map(|f| f.0));
        }
        let finished = entry.pending.is_empty();
        let result = if finished {
            queue::remove(&self.queue, name)
        } else if entry.done.len() != entry.persisted {
            entry.persisted = entry.done.len();
            queue::write_done(&self.queue, name, &entry.done)
        } else {
            Ok(())
        };
        match result {
            Ok(()) if finished => {
                self.entries.remove(name);
            }
            Ok(()) => {}
            Err(e) => log::error!("queue {name}: {e}"),
        }
    }
}

fn result_name(r: &RcptResult) -> String {
    match r {
        RcptResult::Ok => "Ok".into(),
        RcptResult::Temp(e) => format!("TempFail error=\"{e}\""),
        RcptResult::Perm(e) => format!("PermFail error=\"{e}\""),
    }
}

fn record(entry: &mut Entry, addr: &str, result: &RcptResult, base: Duration) {
    let Some(i) = entry.pending.iter().position(|r| r.addr == addr) else { return };
    match result {
        RcptResult::Ok => {
            entry.pending.remove(i);
            entry.done.insert(addr.to_owned());
        }
        RcptResult::Perm(e) => entry.pending[i].last_error = format!("perm:{e}"),
        RcptResult::Temp(e) => {
            let r = &mut entry.pending[i];
            r.attempts += 1;
            r.last_error = format!("temp:{e}");
            r.next = Instant::now() + backoff(base, r.attempts);
        }
    }
}

/// base, 2·base, 4·base … capped.
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(MAX_DELAY)
}

fn relay_of<'c>(config: &'c Config, action: &str) -> Option<&'c crate::config::Relay> {
    match &config.actions.get(action)?.method {
        Method::Relay(r) => Some(r),
        _ => None,
    }
}

/// How to reach the host of relay `action`.
fn spec_for(config: &Config, action: &str) -> Result<Spec, String> {
    let r = relay_of(config, action).ok_or_else(|| format!("action {action} is not a relay action (any more)"))?;
    let url = r.host.as_ref().ok_or("relay without 'host': MX lookups are not supported by mxd")?;
    let tls = match url.scheme {
        Scheme::Smtp | Scheme::Lmtp if r.tls => TlsMode::Required,
        Scheme::Smtp => TlsMode::Opportunistic,
        Scheme::SmtpTls => TlsMode::Required,
        Scheme::SmtpNoTls | Scheme::Lmtp => TlsMode::Never,
        Scheme::Smtps => TlsMode::Implicit,
    };
    let verify = match (&r.ca, r.no_verify) {
        (_, true) => Verify::Nothing,
        (Some(ca), false) => Verify::Ca(config.cas.get(ca).ok_or(format!("ca {ca} is not defined"))?.cert.clone()),
        (None, false) => Verify::System,
    };
    let identity = match &r.pki {
        Some(name) => {
            let pki = config.pkis.get(name).ok_or(format!("pki {name} is not defined"))?;
            Some((pki.cert.clone(), pki.key.clone()))
        }
        None => None,
    };
    let src = match &r.src {
        Some(t) => Some(
            config
                .table(t)
                .and_then(|t| t.keys().find_map(|k| k.parse::<IpAddr>().ok()))
                .ok_or(format!("src table {t} has no address"))?,
        ),
        None => None,
    };
    let auth = match (&r.auth, &url.label) {
        (Some(t), Some(label)) => {
            let value =
                config.table(t).and_then(|t| t.get(label)).ok_or(format!("no credentials for {label} in table {t}"))?;
            let (user, pass) =
                value.split_once(':').ok_or(format!("credentials for {label}: expected user:password"))?;
            Some((user.to_owned(), pass.to_owned()))
        }
        (Some(t), None) => return Err(format!("auth <{t}> needs a label@ in the relay URL")),
        _ => None,
    };
    Ok(Spec {
        host: url.host.clone(),
        port: url.port_or_default(),
        lmtp: url.scheme == Scheme::Lmtp,
        tls,
        verify,
        identity,
        src,
        helo: r.helo.clone().unwrap_or_else(|| config.hostname.clone()),
        auth,
    })
}

/// `mailq`: one line per waiting recipient, with its retry state when the runner has one.
pub fn list(spool: &Path, status: &Status) -> String {
    let q = queue::queue_dir(spool);
    let status = status.lock().map(|s| s.clone()).unwrap_or_default();
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir(q.join("new")) else { return out };
    let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    for name in names {
        let Ok(bytes) = std::fs::read(q.join("new").join(&name)) else { continue };
        let Some((env, message)) = queue::decode(&bytes) else { continue };
        let done = queue::read_done(&q, &name);
        let age = now_secs().saturating_sub(env.created);
        for (action, rcpt) in env.rcpts.iter().filter(|(_, r)| !done.contains(r)) {
            out.push_str(&format!(
                "{} <{}> <{rcpt}> action={action} size={} age={age}s",
                queue::id_of(&name),
                env.sender,
                message.len()
            ));
            if let Some(r) = status.get(&(name.clone(), rcpt.clone())).filter(|r| r.attempts > 0) {
                let next = r.next.saturating_duration_since(Instant::now()).as_secs();
                let error = r.last_error.split_once(':').map_or(r.last_error.as_str(), |(_, e)| e).replace('"', "'");
                out.push_str(&format!(" attempts={} next={next}s error=\"{error}\"", r.attempts));
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
