//! A pass-through smtpd-filters(7) filter for benchmarks: registers every smtp-in phase
//! and data-line, answers `proceed` to each request and echoes each data line back, so
//! what it costs is the protocol's round trips, not the filter's work. Output is flushed
//! whenever the input read so far has been answered.

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
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.strip_suffix('\n').unwrap_or(&line);
        // filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAM…
        let mut f = l.splitn(8, '|');
        if f.next() == Some("filter") {
            // The version, the time and the subsystem.
            f.nth(2);
            let (phase, sid, token) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
            if phase == "data-line" {
                writeln!(out, "filter-dataline|{sid}|{token}|{}", f.next().unwrap_or(""))?;
            } else {
                writeln!(out, "filter-result|{sid}|{token}|proceed")?;
            }
        }
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
}
