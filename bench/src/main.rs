//! mxd-load: an SMTP load generator in the spirit of Postfix's smtp-source, with latency
//! percentiles, reply-code accounting, TLS, pipelining and an open-loop mode; and a
//! durable-write probe for the disk. Works against any SMTP server.

mod client;
mod opts;
mod probe;
mod stats;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxd::client_io::Blocking;
use mxd::smtp::client::{ClientEvent, RcptResult};
use opts::{Command, Opts};
use stats::Stats;

struct Shared {
    opts: Opts,
    next: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    start: Instant,
    tls: Arc<rustls::ClientConfig>,
    stats: Mutex<Stats>,
}

impl Shared {
    /// The next message number, or None when the run is over.
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.opts.duration.is_some_and(|d| self.start.elapsed() >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.opts.messages {
            Some(total) if n >= total + self.opts.warmup => None,
            _ => Some(n),
        }
    }
}

fn main() -> ExitCode {
    let cmd = match opts::parse(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Probe { dir, size, budget, keep, json } => match probe::probe(&dir, size, budget, keep) {
            Ok(results) => {
                stats::print_probe(&results, size, json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mxd-load: probe {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Load(opts) => load(opts),
    }
}

fn load(opts: Opts) -> ExitCode {
    let progress = opts.progress || std::io::stderr().is_terminal();
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        tls: client::tls_config(),
        stats: Mutex::new(Stats::new()),
        opts,
    });
    let workers: Vec<_> = (0..shared.opts.sessions)
        .map(|i| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || session_loop(&s, i))
        })
        .collect();
    let bar = progress.then(|| {
        let s = Arc::clone(&shared);
        std::thread::spawn(move || stats::progress(&s.done, s.opts.messages, &s.stop, s.start))
    });
    for w in workers {
        let _ = w.join();
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        let _ = b.join();
    }
    let elapsed = shared.start.elapsed();
    let stats = shared.stats.lock().map(|s| s.clone()).unwrap_or_else(|e| e.into_inner().clone());
    stats.print(&shared.opts, elapsed);
    if stats.delivered == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One session thread: connect, send messages until the run ends, reconnect after
/// `--per-session` messages or an error.
fn session_loop(s: &Shared, index: usize) {
    let mut local = Stats::new();
    let mut pending = None;
    'connect: while let Some(n) = pending.take().or_else(|| s.claim()) {
        let o = &s.opts;
        let mut c = match client::connect(&o.target, o.tls, &o.helo, o.timeout, o.pipelining, &s.tls) {
            Ok(c) => c,
            Err(e) => {
                local.connect_error(&e);
                std::thread::sleep(Duration::from_millis(50));
                pending = Some(n);
                if local.connect_errors > 1000 {
                    s.stop.store(true, Ordering::Relaxed);
                    break;
                }
                continue;
            }
        };
        let mut n = n;
        for sent in 0.. {
            match one_message(s, &mut c, n, index, sent > 0, &mut local) {
                Ok(Took::Yes) => {}
                // The server's messages-per-session limit: the same message, in a new session.
                Ok(Took::SessionFull) => {
                    client::quit(c);
                    pending = Some(n);
                    continue 'connect;
                }
                Err(e) => {
                    local.io_error(&e);
                    continue 'connect;
                }
            }
            s.done.fetch_add(1, Ordering::Relaxed);
            if sent + 1 >= s.opts.per_session {
                client::quit(c);
                continue 'connect;
            }
            match s.claim() {
                Some(next) => n = next,
                None => break,
            }
        }
        client::quit(c);
    }
    if let Ok(mut all) = s.stats.lock() {
        all.merge(&local);
    }
}

/// Whether the session took a message.
enum Took {
    /// Delivered or refused: counted.
    Yes,
    /// MAIL refused with 452 "too many" after earlier messages of this session (OpenSMTPD's
    /// `smtp limit max-mails`): not counted, to be sent again in a new session.
    SessionFull,
}

fn one_message(
    s: &Shared,
    c: &mut Blocking,
    n: u64,
    index: usize,
    may_reconnect: bool,
    st: &mut Stats,
) -> std::io::Result<Took> {
    let o = &s.opts;
    // Open loop: message n is due at start + n/rate; latency counts from then.
    let started = match o.rate {
        Some(rate) => {
            let due = s.start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            due
        }
        None => Instant::now(),
    };
    let record = n >= o.warmup;
    let rcpts: Vec<String> = (0..o.rcpts)
        .map(|k| {
            let t = &o.to[(n as usize + k) % o.to.len()];
            t.replace("{n}", &((n as usize + k + index) % 1_000_000).to_string())
        })
        .collect();
    let size = o.sizes.pick(n);
    let message = client::message(n, size, &o.from, &rcpts[0]);
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    c.send_mail(&o.from, &rcpt_refs, &message);
    let results = match c.next_event()? {
        ClientEvent::Sent(results) => results,
        ClientEvent::Failed(e) => return Err(std::io::Error::other(e.to_string())),
        other => return Err(std::io::Error::other(format!("unexpected {other:?}"))),
    };
    // In a fresh session the limit is no session limit: counted as a refusal below.
    if may_reconnect && RcptResult::session_full(&results) {
        return Ok(Took::SessionFull);
    }
    if !record {
        return Ok(Took::Yes);
    }
    let mut counted = Vec::new();
    for r in &results {
        if let RcptResult::Temp(f) | RcptResult::Perm(f) = r {
            // MAIL's or DATA's refusal is every recipient's: count it once.
            let key = (f.step, f.reply.code);
            if !counted.contains(&key) {
                counted.push(key);
                st.code(step_label(f.step), f.reply.code);
            }
        }
    }
    // Delivered when the message went through for at least one recipient.
    if results.contains(&RcptResult::Ok) {
        let data_end = c.data_sent_at().unwrap_or(started);
        st.delivered(size, started.elapsed(), data_end.elapsed());
    }
    Ok(Took::Yes)
}

/// The command a refusal answered, as the report names it (`RCPT 550`, `DATA-END 451`).
fn step_label(step: mxd::smtp::client::Step) -> &'static str {
    use mxd::smtp::client::Step;
    match step {
        Step::Mail => "MAIL",
        Step::Rcpt => "RCPT",
        Step::Data => "DATA",
        Step::EndOfData => "DATA-END",
        other => other.as_str(),
    }
}
