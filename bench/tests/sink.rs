//! mxd-load checked against a small SMTP server written here, which counts what it gets and
//! injects known failures and delays: the report must match exactly.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Seen {
    messages: AtomicU64,
    body_bytes: AtomicU64,
    rcpts: AtomicU64,
    data_ends: AtomicU64,
    /// Reads that held a whole MAIL..DATA group: pipelining on the wire.
    pipelined_groups: AtomicU64,
    stuffing_errors: AtomicU64,
}

struct Sink {
    port: u16,
    seen: Arc<Seen>,
}

/// Every 5th RCPT gets 451, every 7th message 554 at end of data, DATA replies wait `delay`.
fn start_sink(delay: Duration) -> Sink {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let s = Arc::clone(&s2);
            std::thread::spawn(move || serve(conn, &s, delay));
        }
    });
    Sink { port, seen }
}

fn serve(conn: TcpStream, s: &Seen, delay: Duration) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let _ = w.write_all(b"220 sink ESMTP\r\n");
    let mut line = String::new();
    let mut accepted = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL") {
            if r.buffer().windows(4).any(|w| w == b"DATA") {
                s.pipelined_groups.fetch_add(1, Ordering::Relaxed);
            }
            accepted = 0;
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT") {
            let n = s.rcpts.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 5 == 0 {
                b"451 try later\r\n"
            } else {
                accepted += 1;
                b"250 ok\r\n"
            }
        } else if upper.starts_with("DATA") && accepted == 0 {
            b"554 no valid recipients\r\n"
        } else if upper.starts_with("DATA") {
            let _ = w.write_all(b"354 go\r\n");
            let mut bytes = 0u64;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                let text = match line.strip_prefix('.') {
                    Some(rest) => rest,
                    None if line.starts_with('.') => &line,
                    None => &line,
                };
                if line.starts_with('.') && !line.starts_with("..") {
                    s.stuffing_errors.fetch_add(1, Ordering::Relaxed);
                }
                bytes += text.len() as u64;
            }
            std::thread::sleep(delay);
            let n = s.data_ends.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 7 == 0 {
                b"554 refused\r\n"
            } else {
                s.messages.fetch_add(1, Ordering::Relaxed);
                s.body_bytes.fetch_add(bytes, Ordering::Relaxed);
                b"250 queued\r\n"
            }
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        if w.write_all(reply).is_err() {
            return;
        }
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mxd-load")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The integer after `"key":` in mxd-load's JSON (the first occurrence after `within`).
fn field(json: &str, within: &str, key: &str) -> u64 {
    let start = json.find(within).unwrap_or(0);
    let at = json[start..].find(&format!("\"{key}\":")).map(|i| start + i + key.len() + 3).expect(key);
    json[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().expect(key)
}

#[test]
fn counts_codes_sizes_and_latency_match_the_server() {
    let sink = start_sink(Duration::from_millis(20));
    let target = format!("127.0.0.1:{}", sink.port);
    // One recipient per message: RCPT n%5==0 fails (no DATA then), DATA n%7==0 fails.
    let json = run(&["-c", "4", "-n", "70", "-s", "3000", "--json", &target]);
    let seen = &sink.seen;
    let delivered = field(&json, "", "delivered");
    assert_eq!(delivered, seen.messages.load(Ordering::Relaxed), "{json}");
    assert_eq!(field(&json, "", "bytes"), delivered * 3000, "exact sizes: {json}");
    assert_eq!(seen.body_bytes.load(Ordering::Relaxed), delivered * 3000);
    assert_eq!(field(&json, "\"codes\"", "RCPT 451"), 14, "{json}");
    let data_ends = seen.data_ends.load(Ordering::Relaxed);
    assert_eq!(field(&json, "\"codes\"", "DATA-END 554"), data_ends / 7, "{json}");
    assert_eq!(delivered + data_ends / 7 + 14, 70);
    let p50 = field(&json, "\"data_us\"", "p50");
    assert!((20_000..200_000).contains(&p50), "DATA-to-250 p50 reflects the 20 ms delay: {p50}");
    assert!(field(&json, "\"txn_us\"", "p50") >= p50);
    assert_eq!(seen.stuffing_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn pipelining_sends_the_group_in_one_write() {
    let sink = start_sink(Duration::ZERO);
    let target = format!("127.0.0.1:{}", sink.port);
    run(&["-c", "1", "-n", "10", "-s", "1k", "--pipelining", "--json", &target]);
    assert_eq!(sink.seen.pipelined_groups.load(Ordering::Relaxed), 10);
    let sink = start_sink(Duration::ZERO);
    let target = format!("127.0.0.1:{}", sink.port);
    run(&["-c", "1", "-n", "10", "-s", "1k", "--json", &target]);
    assert_eq!(sink.seen.pipelined_groups.load(Ordering::Relaxed), 0);
}

#[test]
fn probe_reports_rates() {
    let dir = std::env::temp_dir();
    let json = run(&["--fsync-probe", dir.to_str().unwrap(), "-t", "0.2", "--json"]);
    for mode in ["single", "batch32-fsync", "2x-batch32-syncfs", "4x-batch128-syncfs"] {
        let mode = if cfg!(target_os = "linux") { mode.to_owned() } else { mode.replace("syncfs", "fsync") };
        assert!(field(&json, "", &mode) > 0, "{mode}: {json}");
    }
}
