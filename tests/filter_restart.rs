//! Issue 16: a filter process that dies is started again. The smtp process that started it
//! can no longer (it dropped root), so the parent replaces it, as a reload does, and the
//! fresh smtp process starts fresh filters. A session of the dead filter gets 421; the next
//! sessions are filtered by the new process. A filter that keeps dying is restarted five
//! times a minute at most, then its listener stays fail-closed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{basic_conf, can_run, wait_for, Mxd, Need};

const PY: &str = "/usr/bin/python3";

/// A daemon whose listener is filtered by `filter "f" proc-exec "COMMAND"`.
fn start(command: String) -> Mxd {
    Mxd::start_with(
        move |d: &Path, p: u16| {
            let listen = format!("listen on 127.0.0.1 port {p}\n");
            let conf = basic_conf(d, p).replace(&listen, &format!("listen on 127.0.0.1 port {p} filter \"f\"\n"));
            format!("filter \"f\" proc-exec \"{command}\"\n{conf}")
        },
        &[],
    )
}

/// The pids of the filter processes started so far, in order.
fn filter_pids(m: &Mxd) -> Vec<i32> {
    let log = m.log();
    let pid = |l: &str| l.split("filter f started pid=").nth(1)?.split(' ').next()?.parse().ok();
    log.lines().filter_map(pid).collect()
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // PID (COMM) STATE PPID …: COMM may hold spaces, so split after its last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            kids.extend(e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()));
        }
    }
    kids
}

/// A session greeted, whose `EHLO reject.test` the filter refuses (the old smtp process
/// may still greet a last session with 421: false then).
fn helo_refused(port: u16) -> bool {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with("220") {
        return false;
    }
    if w.write_all(b"EHLO reject.test\r\n").is_err() {
        return false;
    }
    line.clear();
    r.read_line(&mut line).is_ok() && line.starts_with("550 5.7.1 helo refused")
}

#[test]
fn a_killed_filter_is_replaced_and_filters_the_next_sessions() {
    if !can_run("a_killed_filter_is_replaced_and_filters_the_next_sessions", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let s = common::filter_script(dir.path(), "all_phases.py");
    let log = dir.path().join("phases.log");
    let m = start(format!("{PY} {} {}", s.display(), log.display()));
    assert!(m.logged("filter f started pid="));
    let first = filter_pids(&m)[0];
    let mut open = m.connect();
    assert!(open.cmd("EHLO reject.test").starts_with("550 5.7.1 helo refused"), "filtered: {}", m.log());
    assert!(open.cmd("EHLO client.test").starts_with("250"));

    // The filter is a child of the `sh -c` that runs its command line (as in OpenSMTPD).
    let filter = children_of(first);
    assert_eq!(filter.len(), 1, "the filter process under sh {first}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(filter[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(m.logged("filter f stopped"), "{}", m.log());
    // The session whose filter died fails closed at its next filtered command.
    let r = open.cmd("MAIL FROM:<a@client.test>");
    assert!(r.starts_with("421"), "{r}: {}", m.log());
    assert!(m.logged("filter f stopped: starting new smtp and delivery processes"), "{}", m.log());
    wait_for("a second filter process", Duration::from_secs(60), || filter_pids(&m).len() >= 2);
    let second = filter_pids(&m)[1];
    assert_ne!(first, second);
    // The next sessions (once the new smtp process serves) are filtered by the new process.
    wait_for("a session filtered again", Duration::from_secs(30), || helo_refused(m.port));
    let mut c = m.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<rewrite@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: again\r\n\r\nfiltered again\r\n");
    assert!(c.cmd(".").starts_with("250"), "{}", m.log());
    wait_for("the message", Duration::from_secs(20), || !m.messages("joseph").is_empty());
    let stored = String::from_utf8(m.messages("joseph").pop().unwrap()).unwrap();
    assert!(stored.contains("X-Filtered: all_phases\nSubject: again"), "{stored}");
    assert!(stored.contains("Return-Path: <new@example.org>"), "{stored}");
    assert!(std::fs::read_to_string(&log).unwrap().matches("uid=").count() >= 2);
}

#[test]
fn a_filter_that_keeps_dying_is_given_up_on_and_stays_fail_closed() {
    if !can_run("a_filter_that_keeps_dying_is_given_up_on_and_stays_fail_closed", &[Need::Program("sh", "dash")]) {
        return;
    }
    let dir = common::shared_tempdir();
    // Exits at its first request: every filtered session kills it.
    let m = start(format!("{} crash", common::filter_script(dir.path(), "misbehave.sh").display()));
    assert!(m.logged("filter f started pid="));
    let started = Instant::now();
    while !m.log().contains("not restarted again") {
        assert!(started.elapsed() < Duration::from_secs(55), "never given up on: {}", m.log());
        let before = filter_pids(&m).len();
        assert!(common::first_line(m.port).starts_with("421"), "{}", m.log());
        // Until the new process serves, sessions meet the dead filter: 421 too.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && filter_pids(&m).len() == before && !m.log().contains("not restarted again") {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The first process and five restarts, then no more.
    assert_eq!(filter_pids(&m).len(), 6, "{}", m.log());
    assert!(common::first_line(m.port).starts_with("421"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(common::first_line(m.port).starts_with("421"));
    assert_eq!(filter_pids(&m).len(), 6, "{}", m.log());
}
