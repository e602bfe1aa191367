//! A pass-through smtpd-filters(7) filter for benchmarks: registers every smtp-in phase
//! and data-line, answers `proceed` to each request and echoes each data line back, so
//! what it costs is the protocol's round trips, not the filter's work. Data lines are
//! echoed as bytes, 8-bit text included. Output is flushed whenever the input read so far
//! has been answered.

use std::io::{self, BufRead, BufReader, BufWriter, Write};

const PHASES: [&str; 15] = [
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail-from",
    "rcpt-to",
    "data",
    "data-line",
    "rset",
    "quit",
    "noop",
    "help",
    "wiz",
    "commit",
];

fn main() -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, io::stdin());
    let mut out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end() == "config|ready" {
            break;
        }
    }
    for p in PHASES {
        writeln!(out, "register|filter|smtp-in|{p}")?;
    }
    writeln!(out, "register|ready")?;
    out.flush()?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        // The message's lines are bytes (8-bit text passes as it is); the rest is ASCII.
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        // filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAM…
        let mut f = l.splitn(8, |b| *b == b'|');
        if f.next() == Some(b"filter") {
            // The version, the time and the subsystem.
            f.nth(2);
            let (phase, sid, token) = (f.next().unwrap_or(b""), f.next().unwrap_or(b""), f.next().unwrap_or(b""));
            let (sid, token) = (String::from_utf8_lossy(sid), String::from_utf8_lossy(token));
            if phase == b"data-line" {
                write!(out, "filter-dataline|{sid}|{token}|")?;
                out.write_all(f.next().unwrap_or(b""))?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "filter-result|{sid}|{token}|proceed")?;
            }
        }
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
}
