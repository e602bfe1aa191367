//! The `log` backend: stderr when mxd runs in the foreground (`-d`), syslog (facility mail)
//! otherwise, as a daemon does. One line per event; callers put the 16-hex session id first,
//! as OpenSMTPD does. (Named `logging` so that `use log::…` stays unambiguous.)

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    Syslog,
}

struct Logger {
    sink: Sink,
    /// The syslog socket, connected once; `None` when /dev/log cannot be reached, in which
    /// case lines fall back to stderr rather than vanish.
    syslog: Option<Mutex<UnixDatagram>>,
    ident: &'static str,
    /// rustls narrates every handshake at debug level; only `-vv` lets that through.
    quiet_tls: bool,
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
        if let (Sink::Syslog, Some(sock)) = (self.sink, &self.syslog) {
            // RFC 3164 "local" form: syslogd adds the timestamp and host.
            let line = format!(
                "<{}>{}[{}]: {}",
                FACILITY_MAIL | severity(record.level()),
                self.ident,
                std::process::id(),
                record.args()
            );
            if let Ok(sock) = sock.lock() {
                if sock.send(line.as_bytes()).is_ok() {
                    return;
                }
            }
        }
        let level = record.level().as_str().to_ascii_lowercase();
        // One write per line so that lines from several threads do not interleave.
        let line = format!("{level}: {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the global logger. `verbosity` counts `-v` flags: 0 = info, 1 = debug, 2+ = trace.
pub fn init(sink: Sink, verbosity: u8, ident: &'static str) {
    let syslog = match sink {
        Sink::Syslog => UnixDatagram::unbound().and_then(|s| s.connect("/dev/log").map(|()| s)).ok().map(Mutex::new),
        Sink::Stderr => None,
    };
    let level = match verbosity {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let logger = Box::new(Logger { sink, syslog, ident, quiet_tls: verbosity < 2 });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
