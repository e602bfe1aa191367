//! Hostile clients against the real daemon (issue 7): slow, huge, endless, garbage, gone
//! mid-message, and a disk that fills up. Memory is read from /proc/PID/status.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{count_files, Mxd};

/// RSS of mxd's processes together: the parent and its children (smtp, delivery, relay).
fn rss_kib(mxd: &Mxd) -> u64 {
    let field = |pid: &str, key: &str| -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
    };
    let parent = mxd.pid().to_string();
    let pids = std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    pids.iter()
        .filter(|p| **p == parent || field(p, "PPid:").as_deref() == Some(parent.as_str()))
        .filter_map(|p| field(p, "VmRSS:")?.parse::<u64>().ok())
        .sum()
}

fn small_limit(d: &std::path::Path, p: u16) -> String {
    common::basic_conf(d, p) + "smtp max-message-size 1M\n"
}

#[test]
fn slowloris_is_cut_at_the_idle_timeout() {
    let mxd = Mxd::start_with(common::basic_conf, &[("MXD_SMTP_TIMEOUT", "2")]);
    let mut c = mxd.connect();
    let started = Instant::now();
    // One byte a second of a line that never ends: nothing is consumed, the clock runs.
    for b in b"NOOP NOOP NOOP" {
        if c.stream.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "cut after {:?}", started.elapsed());
}

#[test]
fn thousands_of_idle_connections_cost_bounded_memory() {
    let mxd = Mxd::start();
    let before = rss_kib(&mxd);
    let mut conns = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(("127.0.0.1", mxd.port)) {
            Ok(s) => conns.push(s),
            Err(_) => break,
        }
    }
    // Every one got its greeting (the loop serves them all).
    let mut greeted = 0;
    for s in conns.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"220 ")) {
            greeted += 1;
        }
    }
    assert_eq!(greeted, conns.len());
    assert!(conns.len() >= 1000, "only {} connections", conns.len());
    let per_conn = (rss_kib(&mxd).saturating_sub(before)) * 1024 / conns.len() as u64;
    assert!(per_conn < 16 * 1024, "{per_conn} bytes per idle connection");
    let mut c = mxd.connect();
    assert!(c.cmd("NOOP").starts_with("250"), "still serving");
}

#[test]
fn megabyte_line_is_refused_with_bounded_memory() {
    let mxd = Mxd::start();
    let before = rss_kib(&mxd);
    let mut c = mxd.connect();
    let chunk = vec![b'A'; 64 * 1024];
    for _ in 0..16 {
        c.send(&chunk);
    }
    let r = c.cmd("");
    assert!(r.starts_with("500 5.5.1"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(rss_kib(&mxd) < before + 4 * 1024, "grew from {before} KiB to {} KiB", rss_kib(&mxd));
}

#[test]
fn endless_data_past_the_limit_is_552_and_not_stored() {
    let mxd = Mxd::start_with(small_limit, &[]);
    let before = rss_kib(&mxd);
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RCPT TO:<joseph@test>");
    assert!(c.cmd("DATA").starts_with("354"));
    let line = [vec![b'z'; 998], b"\r\n".to_vec()].concat();
    let block: Vec<u8> = line.repeat(64);
    for _ in 0..320 {
        c.send(&block); // 20 MB in all
    }
    let peak = rss_kib(&mxd);
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(peak < before + 8 * 1024, "grew from {before} KiB to {peak} KiB while reading 20 MB");
    assert!(mxd.messages("joseph").is_empty());
}

#[test]
fn ten_thousand_recipients() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    let mut batch = Vec::new();
    for _ in 0..10_000 {
        batch.extend_from_slice(b"RCPT TO:<joseph@test>\r\n");
    }
    // Send and read in parallel: the client must read replies while pipelining.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&batch));
    let (mut ok, mut full) = (0, 0);
    for _ in 0..10_000 {
        let r = c.reply();
        if r.starts_with("250") {
            ok += 1;
        } else if r.starts_with("452 4.5.3") {
            full += 1;
        } else {
            panic!("unexpected {r}");
        }
    }
    writer.join().unwrap().unwrap();
    assert_eq!((ok, full), (1000, 9000));
    assert!(c.cmd("RSET").starts_with("250"));
}

#[test]
fn pipelined_garbage_nul_and_8bit_bytes() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    c.send(b"\0\0\0\r\nEHLO \xff\xfe\r\nMAIL FROM:<\xc3\xa9@x>\r\n");
    for _ in 0..3 {
        let r = c.reply();
        assert!(r.starts_with("50"), "{r:?}");
    }
    let mut junk = Vec::new();
    for i in 0..2000u32 {
        junk.extend_from_slice(format!("{}\x01garbage {i}\r\n", i % 7).as_bytes());
    }
    c.send(&junk);
    let mut last = String::new();
    loop {
        let r = c.reply();
        if r.is_empty() {
            break;
        }
        last = r;
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    let mut d = mxd.connect();
    assert!(d.cmd("NOOP").starts_with("250"), "daemon still serves");
}

#[test]
fn disconnect_mid_data_delivers_nothing() {
    let mxd = Mxd::start();
    {
        let mut c = mxd.connect();
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<a@example.org>");
        c.cmd("RCPT TO:<joseph@test>");
        c.cmd("DATA");
        c.send(b"Subject: cut\r\n\r\nhalf a mess");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(mxd.messages("joseph").is_empty());
    assert_eq!(count_files(&mxd.maildir("joseph").join("tmp")), 0);
    assert!(mxd.logged("reason=eof"), "{}", mxd.log());
}

/// A Maildir on a 1 MiB tmpfs: a message that does not fit gets 451 and leaves nothing;
/// so does a small one while the disk is full; once space is back, delivery works again.
/// Needs root to mount, as CI is.
#[test]
fn disk_full_is_451_and_recovers() {
    if !common::can_run("disk_full_is_451_and_recovers", &[common::Need::Root]) {
        return;
    }
    let mxd = Mxd::start();
    let home = mxd.path().join("home/joseph");
    std::fs::create_dir_all(&home).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(mount.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(home.clone());
    let send = |lines: usize| -> String {
        let mut c = mxd.connect();
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<a@example.org>");
        c.cmd("RCPT TO:<joseph@test>");
        c.cmd("DATA");
        let line = format!("{}\r\n", "d".repeat(98));
        c.send(b"Subject: big\r\n\r\n");
        c.send(line.repeat(lines).as_bytes());
        c.send(b".\r\n");
        c.reply()
    };
    let r = send(20_000); // 2 MB into a 1 MiB file system
    assert!(r.starts_with("451 4."), "{r}");
    assert!(mxd.messages("joseph").is_empty());
    assert_eq!(count_files(&mxd.maildir("joseph").join("tmp")), 0, "partial file left in tmp/");
    // Another writer fills the file system: even a small message is deferred, not lost.
    let filler = home.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    let r = send(10);
    assert!(r.starts_with("451 4."), "full disk: {r}");
    assert!(mxd.messages("joseph").is_empty());
    assert_eq!(count_files(&mxd.maildir("joseph").join("tmp")), 0, "partial file left in tmp/");
    // Space is back: the same daemon delivers again.
    std::fs::remove_file(&filler).unwrap();
    let r = send(10);
    assert!(r.starts_with("250 2.0.0"), "recovers once space is back: {r}");
    assert_eq!(mxd.messages("joseph").len(), 1);
}
