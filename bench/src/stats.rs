//! Counting and reporting: latency histograms (microseconds), reply codes, human and JSON
//! output, the progress bar.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::opts::Opts;
use crate::probe::ProbeResult;

#[derive(Clone)]
pub struct Stats {
    pub delivered: u64,
    pub bytes: u64,
    /// MAIL..final 250, or from the intended start in open-loop mode.
    pub txn: Histogram<u64>,
    /// End of DATA to 250: the server's commit latency.
    pub data: Histogram<u64>,
    /// "VERB CODE" → count, for every reply that was not 2xx/3xx.
    pub codes: BTreeMap<String, u64>,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub timeouts: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            delivered: 0,
            bytes: 0,
            txn: histogram(),
            data: histogram(),
            codes: BTreeMap::new(),
            connect_errors: 0,
            io_errors: 0,
            timeouts: 0,
        }
    }

    pub fn delivered(&mut self, size: usize, txn: Duration, data: Duration) {
        self.delivered += 1;
        self.bytes += size as u64;
        let _ = self.txn.record((txn.as_micros() as u64).max(1));
        let _ = self.data.record((data.as_micros() as u64).max(1));
    }

    pub fn code(&mut self, verb: &str, code: u16) {
        *self.codes.entry(format!("{verb} {code}")).or_insert(0) += 1;
    }

    pub fn connect_error(&mut self, _e: &std::io::Error) {
        self.connect_errors += 1;
    }

    pub fn io_error(&mut self, e: &std::io::Error) {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            self.timeouts += 1;
        } else {
            self.io_errors += 1;
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.delivered += o.delivered;
        self.bytes += o.bytes;
        let _ = self.txn.add(&o.txn);
        let _ = self.data.add(&o.data);
        for (k, v) in &o.codes {
            *self.codes.entry(k.clone()).or_insert(0) += v;
        }
        self.connect_errors += o.connect_errors;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
    }

    pub fn print(&self, o: &Opts, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        if o.json {
            println!("{}", self.json(o, secs));
            return;
        }
        println!("target {}  sessions {}  elapsed {:.2}s", o.target, o.sessions, secs);
        println!(
            "delivered {}  {:.0} msgs/s  {:.2} MB/s",
            self.delivered,
            self.delivered as f64 / secs,
            self.bytes as f64 / secs / 1e6
        );
        for (name, h) in [("transaction", &self.txn), ("data-to-250", &self.data)] {
            println!(
                "{name:>12} ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max())
            );
        }
        for (k, v) in &self.codes {
            println!("reply {k}: {v}");
        }
        if self.connect_errors + self.io_errors + self.timeouts > 0 {
            println!(
                "connect errors {}  i/o errors {}  timeouts {}",
                self.connect_errors, self.io_errors, self.timeouts
            );
        }
    }

    fn json(&self, o: &Opts, secs: f64) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"target\":\"{}\",\"sessions\":{},\"elapsed_s\":{:.3},\"delivered\":{},\"bytes\":{},\"msgs_per_s\":{:.1},\"bytes_per_s\":{:.0},",
            escape(&o.target), o.sessions, secs, self.delivered, self.bytes, self.delivered as f64 / secs, self.bytes as f64 / secs
        );
        for (name, h) in [("txn_us", &self.txn), ("data_us", &self.data)] {
            let _ = write!(
                s,
                "\"{name}\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{:.0}}},",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.mean()
            );
        }
        s.push_str("\"codes\":{");
        let codes: Vec<String> = self.codes.iter().map(|(k, v)| format!("\"{}\":{v}", escape(k))).collect();
        s.push_str(&codes.join(","));
        let _ = write!(
            s,
            "}},\"connect_errors\":{},\"io_errors\":{},\"timeouts\":{}}}",
            self.connect_errors, self.io_errors, self.timeouts
        );
        s
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

pub fn progress(done: &AtomicU64, total: Option<u64>, stop: &AtomicBool, start: Instant) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let n = done.load(Ordering::Relaxed);
        let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let line = match total {
            Some(t) if t > 0 => {
                let filled = (n.min(t) * 30 / t) as usize;
                format!("\r[{}{}] {n}/{t}  {rate:.0} msgs/s ", "#".repeat(filled), " ".repeat(30 - filled))
            }
            _ => format!("\r{n} msgs  {rate:.0} msgs/s "),
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    let _ = std::io::stderr().write_all(b"\n");
}

pub fn print_probe(results: &[ProbeResult], size: usize, json: bool) {
    if json {
        let parts: Vec<String> = results.iter().map(|r| format!("\"{}\":{:.0}", r.mode, r.files_per_s)).collect();
        println!("{{\"size\":{size},\"files_per_s\":{{{}}}}}", parts.join(","));
        return;
    }
    println!("durable writes of {size}-byte files (write, sync, rename into new/, fsync new/):");
    for r in results {
        println!("{:>20}  {:>8.0} files/s", r.mode, r.files_per_s);
    }
}
