//! The delivery process's login checks (`listen … auth [<t>]`): the smtp process sends the
//! credentials a session received ([`frame::AuthAsk`]), and the answer goes back on the same
//! link. Checks run here because this process is root (it may read the shadow file) and
//! apart from the network; they run on threads of their own, since a bcrypt check costs
//! tens of milliseconds and must delay no delivery.
//!
//! - A failed login is answered after [`FAILURE_DELAY`], so guessing is slow; the session
//!   waits for it in `AwaitAuth` and its loop serves everyone else meanwhile.
//! - [`FLOOD_FAILURES`] failures from one address (an IPv6 /64) within [`FLOOD_WINDOW`]
//!   block logins from it for [`FLOOD_BLOCK`]: `Blocked`, unchecked (the session's 421).
//!   At most [`FLOOD_ENTRIES`] addresses are remembered.
//! - Only a table some listener names with `auth <t>` is consulted, and the system's users
//!   only when some listener says `auth` without a table: a forged request reaches nothing
//!   the configuration does not offer to some client.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::frame::{AuthAsk, AuthVerdict};
use crate::auth::{self, system};
use crate::config::Config;
use crate::envelope::Origin;
use crate::table::proc_io::TableProcError;
use crate::table::Table;

/// How long a failed login waits for its answer (OpenSMTPD pauses a session about as long).
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);
pub const FLOOD_FAILURES: u32 = 10;
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10 * 60);
pub const FLOOD_BLOCK: Duration = Duration::from_secs(15 * 60);
pub const FLOOD_ENTRIES: usize = 4096;
/// Checks running at once, and requests waiting (more get `TempFail`, a 454).
const CHECKERS: usize = 2;
const WAITING: usize = 256;

type Answers = Sender<(u64, AuthVerdict)>;

/// The checking threads; dropping it lets them finish.
pub struct Checker {
    asks: Sender<AuthAsk>,
    answers: Answers,
    flood: Arc<Mutex<Flood>>,
}

impl Checker {
    pub fn start(config: Arc<Config>, answers: Answers) -> Checker {
        let (asks, rx) = crossbeam_channel::bounded::<AuthAsk>(WAITING);
        let (delay_tx, delay_rx) = crossbeam_channel::unbounded();
        let flood = Arc::new(Mutex::new(Flood::default()));
        let out = answers.clone();
        let spawned = std::thread::Builder::new().name("auth-delay".into()).spawn(move || delay_loop(&delay_rx, &out));
        if let Err(e) = spawned {
            log::error!("auth: cannot start the delay thread: {e}");
        }
        for i in 0..CHECKERS {
            let (rx, config, answers, delay, flood) =
                (rx.clone(), Arc::clone(&config), answers.clone(), delay_tx.clone(), Arc::clone(&flood));
            let spawned = std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || check_loop(&rx, &config, &answers, &delay, &flood));
            if let Err(e) = spawned {
                log::error!("auth: cannot start a checker: {e}");
            }
        }
        Checker { asks, answers, flood }
    }

    /// Takes one request; never waits (called by the link's reader).
    pub fn ask(&self, ask: AuthAsk) {
        let blocked = self.flood.lock().map(|mut f| f.blocked(&ask.origin, Instant::now())).unwrap_or(false);
        if blocked {
            let _ = self.answers.send((ask.seq, AuthVerdict::Blocked));
            return;
        }
        match self.asks.try_send(ask) {
            Ok(()) => {}
            Err(TrySendError::Full(ask) | TrySendError::Disconnected(ask)) => {
                log::warn!("auth: too many logins waiting; user={} refused for now", ask.user);
                let _ = self.answers.send((ask.seq, AuthVerdict::TempFail));
            }
        }
    }
}

fn check_loop(
    rx: &Receiver<AuthAsk>,
    config: &Config,
    answers: &Answers,
    delay: &Sender<(Instant, u64, AuthVerdict)>,
    flood: &Mutex<Flood>,
) {
    for ask in rx.iter() {
        let verdict = check(config, &ask);
        if verdict == AuthVerdict::Failed {
            let now = Instant::now();
            if let Ok(mut f) = flood.lock() {
                f.failed(&ask.origin, now);
            }
            if delay.send((now + FAILURE_DELAY, ask.seq, verdict)).is_err() {
                // No delay thread: an answer without the delay beats a session left waiting.
                let _ = answers.send((ask.seq, verdict));
            }
        } else {
            let _ = answers.send((ask.seq, verdict));
        }
    }
}

/// Holds failed verdicts until they are due.
fn delay_loop(rx: &Receiver<(Instant, u64, AuthVerdict)>, answers: &Answers) {
    let mut due: BinaryHeap<Reverse<(Instant, u64, AuthVerdict)>> = BinaryHeap::new();
    let mut open = true;
    while open || !due.is_empty() {
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse((_, seq, v))) = due.pop() {
                let _ = answers.send((seq, v));
            }
        }
        let next = due.peek().map(|Reverse((at, _, _))| at.saturating_duration_since(now));
        let got = match (open, next) {
            (true, Some(wait)) => rx.recv_timeout(wait).map_err(|e| e.is_disconnected()),
            (true, None) => rx.recv().map_err(|_| true),
            (false, Some(wait)) => {
                std::thread::sleep(wait);
                continue;
            }
            (false, None) => break,
        };
        match got {
            Ok(item) => due.push(Reverse(item)),
            Err(true) => open = false,
            Err(false) => {}
        }
    }
}

/// One login against this process's own configuration. Logs why a check could not be made,
/// naming the user, never the password.
pub fn check(config: &Config, ask: &AuthAsk) -> AuthVerdict {
    let offered = config.listeners.iter().filter_map(|l| l.auth.as_ref()).any(|a| a.table == ask.table);
    if !offered {
        log::warn!("auth: refused a login against {}: no listener offers it", what(ask.table.as_deref()));
        return AuthVerdict::Failed;
    }
    let password = ask.password.expose();
    let checked = match &ask.table {
        Some(name) => {
            let Some(table) = config.table(name) else {
                log::warn!("auth: table {name} is not loaded; user={} refused for now", ask.user);
                return AuthVerdict::TempFail;
            };
            match against_table(table, &ask.user, password) {
                Ok(checked) => checked,
                Err(e) => {
                    log::warn!("auth: table {name}: {e}; user={} refused for now", ask.user);
                    return AuthVerdict::TempFail;
                }
            }
        }
        None => match system::check_system_user(&ask.user, password) {
            Err(e @ system::SystemError::Unreadable(..)) => {
                log::warn!("auth: {e}; user={} refused for now", ask.user);
                return AuthVerdict::TempFail;
            }
            other => other.map_err(|e| e.to_string()),
        },
    };
    match checked {
        Ok(true) => AuthVerdict::Ok,
        Ok(false) => AuthVerdict::Failed,
        Err(why) => {
            log::warn!("auth: user={} in {}: {why}", ask.user, what(ask.table.as_deref()));
            AuthVerdict::Failed
        }
    }
}

/// A login against a table. The outer error is a lookup that could not be made (a proc
/// table down or silent): a temporary failure, not a wrong password.
fn against_table(table: &Table, user: &str, password: &[u8]) -> Result<Result<bool, String>, TableProcError> {
    if let Ok(text) = std::str::from_utf8(password) {
        if let Some(verdict) = table.check_login(user, text)? {
            return Ok(Ok(verdict));
        }
    }
    let value = table.credentials(user)?;
    // A table process answers `user:hash` (smtpd-tables(7)); a hash holds no ':'.
    let hash = match &value {
        Some(v) if table.is_proc() => Some(v.split_once(':').map_or(v.as_str(), |(_, h)| h)),
        v => v.as_deref(),
    };
    Ok(auth::check_table(hash, password).map_err(|e| e.to_string()))
}

fn what(table: Option<&str>) -> String {
    table.map_or_else(|| "the system's users".to_owned(), |t| format!("table {t}"))
}

/// Recent failures per client address, bounded.
#[derive(Default)]
pub struct Flood {
    by_addr: HashMap<IpAddr, FloodEntry>,
}

struct FloodEntry {
    since: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// The unit a flood is counted by: an IPv4 address, an IPv6 /64; the local socket never.
fn key(origin: &Origin) -> Option<IpAddr> {
    match origin {
        Origin::Socket => None,
        Origin::Tcp(IpAddr::V6(a)) if a.to_ipv4_mapped().is_none() => {
            let mut o = a.octets();
            o[8..].fill(0);
            Some(IpAddr::from(o))
        }
        Origin::Tcp(IpAddr::V6(a)) => a.to_ipv4_mapped().map(IpAddr::V4),
        Origin::Tcp(ip) => Some(*ip),
    }
}

impl Flood {
    pub fn blocked(&mut self, origin: &Origin, now: Instant) -> bool {
        let Some(k) = key(origin) else { return false };
        self.by_addr.get(&k).and_then(|e| e.blocked_until).is_some_and(|until| now < until)
    }

    pub fn failed(&mut self, origin: &Origin, now: Instant) {
        let Some(k) = key(origin) else { return };
        if !self.by_addr.contains_key(&k) && self.by_addr.len() >= FLOOD_ENTRIES {
            self.make_room(now);
        }
        let e = self.by_addr.entry(k).or_insert(FloodEntry { since: now, failures: 0, blocked_until: None });
        if now.duration_since(e.since) > FLOOD_WINDOW {
            *e = FloodEntry { since: now, failures: 0, blocked_until: e.blocked_until.filter(|u| now < *u) };
        }
        e.failures += 1;
        if e.failures >= FLOOD_FAILURES && !matches!(e.blocked_until, Some(u) if now < u) {
            e.blocked_until = Some(now + FLOOD_BLOCK);
            log::warn!(
                "auth: {} failed logins from {k} within {} minutes: its logins are refused for {} minutes",
                e.failures,
                FLOOD_WINDOW.as_secs() / 60,
                FLOOD_BLOCK.as_secs() / 60
            );
        }
    }

    /// Forgets what has expired, else the oldest entry.
    fn make_room(&mut self, now: Instant) {
        self.by_addr
            .retain(|_, e| now.duration_since(e.since) <= FLOOD_WINDOW || e.blocked_until.is_some_and(|u| now < u));
        if self.by_addr.len() >= FLOOD_ENTRIES {
            if let Some(oldest) = self.by_addr.iter().min_by_key(|(_, e)| e.since).map(|(k, _)| *k) {
                self.by_addr.remove(&oldest);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Origin {
        Origin::Tcp(s.parse().unwrap())
    }

    #[test]
    fn a_flood_blocks_its_address_for_a_while() {
        let mut f = Flood::default();
        let t0 = Instant::now();
        for i in 0..FLOOD_FAILURES - 1 {
            f.failed(&tcp("192.0.2.1"), t0 + Duration::from_secs(u64::from(i)));
        }
        assert!(!f.blocked(&tcp("192.0.2.1"), t0 + Duration::from_secs(20)));
        f.failed(&tcp("192.0.2.1"), t0 + Duration::from_secs(20));
        assert!(f.blocked(&tcp("192.0.2.1"), t0 + Duration::from_secs(21)));
        assert!(!f.blocked(&tcp("192.0.2.2"), t0 + Duration::from_secs(21)), "other addresses are not");
        assert!(!f.blocked(&Origin::Socket, t0), "the local socket never is");
        assert!(!f.blocked(&tcp("192.0.2.1"), t0 + Duration::from_secs(21) + FLOOD_BLOCK));
    }

    #[test]
    fn failures_spread_out_do_not_block_and_v6_counts_by_64() {
        let mut f = Flood::default();
        let t0 = Instant::now();
        for i in 0..3 * FLOOD_FAILURES {
            f.failed(&tcp("192.0.2.1"), t0 + FLOOD_WINDOW / 4 * i);
        }
        assert!(!f.blocked(&tcp("192.0.2.1"), t0 + FLOOD_WINDOW / 4 * (3 * FLOOD_FAILURES)));
        for i in 0..FLOOD_FAILURES {
            f.failed(&tcp(&format!("2001:db8::{i:x}")), t0);
        }
        assert!(f.blocked(&tcp("2001:db8::ffff"), t0));
        assert!(!f.blocked(&tcp("2001:db8:0:1::1"), t0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = Flood::default();
        let t0 = Instant::now();
        for i in 0..(FLOOD_ENTRIES as u32 * 2) {
            f.failed(&Origin::Tcp(IpAddr::from(i.to_be_bytes())), t0);
        }
        assert!(f.len() <= FLOOD_ENTRIES);
    }
}
