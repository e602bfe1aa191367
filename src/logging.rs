//! The `log` backend: stderr when mxd runs in the foreground (`-d`), syslog (facility mail)
//! otherwise, as a daemon does. One line per event; callers put the 16-hex session id first,
//! as OpenSMTPD does. (Named `logging` so that `use log::…` stays unambiguous.)
//!
//! Logging never blocks the caller: a line is formatted, then handed to a writer thread over
//! a channel of at most [`QUEUE`] lines. When syslogd or a terminal cannot keep up and the
//! channel is full, the line is dropped and counted, and the writer reports how many were lost. Each process has
//! its own writer (a forked child starts one at its first line), and the writer uses plain
//! write(2)/send(2), no lock a fork could leave held.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    Syslog,
}

/// Lines waiting for the writer; past this, lines are dropped and counted. The channel is
/// counted rather than built bounded: a bounded one allocates and touches all its slots at
/// start (330 KiB in each of mxd's processes); threads racing past the count add at most one
/// line each.
const QUEUE: usize = 8192;

struct Logger {
    sink: Sink,
    ident: &'static str,
    /// rustls narrates every handshake at debug level; only `-vv` lets that through.
    quiet_tls: bool,
    tx: Sender<Line>,
    /// Kept so that a forked child can start a writer on the same channel.
    rx: Receiver<Line>,
    /// The process whose writer thread runs; another pid means we are a forked child.
    writer_pid: AtomicU32,
    dropped: AtomicU64,
}

struct Line {
    level: log::Level,
    text: String,
}

/// RFC 5424 facility `mail` (2), shifted as the PRI field wants it.
const FACILITY_MAIL: u8 = 2 << 3;

fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        if self.quiet_tls && metadata.level() > log::Level::Warn && metadata.target().starts_with("rustls") {
            return false;
        }
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.ensure_writer();
        let line = Line { level: record.level(), text: record.args().to_string() };
        if self.tx.len() >= QUEUE {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = self.tx.send(line);
    }

    /// Waits (at most a second) until the writer has taken every queued line: for exit.
    fn flush(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.tx.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Logger {
    fn ensure_writer(&self) {
        let pid = std::process::id();
        let current = self.writer_pid.load(Ordering::Acquire);
        if current == pid
            || self.writer_pid.compare_exchange(current, pid, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return;
        }
        let logger: &'static Logger = match LOGGER.get() {
            Some(l) => l,
            None => return,
        };
        let spawned = std::thread::Builder::new().name("log".into()).spawn(move || logger.write_lines());
        if spawned.is_err() {
            // No writer: let the next line try again rather than queue forever.
            self.writer_pid.store(0, Ordering::Release);
        }
    }

    fn write_lines(&self) {
        let syslog = match self.sink {
            Sink::Syslog => UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|()| s)).ok(),
            Sink::Stderr => None,
        };
        let pid = std::process::id();
        while let Ok(line) = self.rx.recv() {
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                let note =
                    Line { level: log::Level::Warn, text: format!("{lost} log lines dropped: logging too slow") };
                self.write(&syslog, pid, &note);
            }
            self.write(&syslog, pid, &line);
        }
    }

    fn write(&self, syslog: &Option<UnixDatagram>, pid: u32, line: &Line) {
        if let Some(sock) = syslog {
            // RFC 3164 "local" form: syslogd adds the timestamp and host.
            let msg = format!("<{}>{}[{pid}]: {}", FACILITY_MAIL | severity(line.level), self.ident, line.text);
            if sock.send(msg.as_bytes()).is_ok() {
                return;
            }
        }
        // When syslog cannot be reached, stderr rather than nothing. One write per line so that
        // lines from several processes do not interleave.
        let msg = format!("{}: {}\n", line.level.as_str().to_ascii_lowercase(), line.text);
        let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
    }
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the global logger. `verbosity` counts `-v` flags: 0 = info, 1 = debug, 2+ = trace.
pub fn init(sink: Sink, verbosity: u8, ident: &'static str) {
    let level = match verbosity {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let logger = Logger {
        sink,
        ident,
        quiet_tls: verbosity < 2,
        tx,
        rx,
        writer_pid: AtomicU32::new(0),
        dropped: AtomicU64::new(0),
    };
    if LOGGER.set(logger).is_ok() {
        if let Some(l) = LOGGER.get() {
            if log::set_logger(l).is_ok() {
                log::set_max_level(level);
            }
        }
    }
}
