//! Issue 16: real filter processes driven through mxd's filter runner and engine
//! (`mxd::filter::driver`): OpenSMTPD's filter-dkimsign, whose signature an independent
//! verifier (python's dkimpy) accepts; the project's own filter (tests/filters/all_phases.py),
//! which checks every line it gets against smtpd-filters(7) and answers each kind of
//! response; and filters that crash, hang, write garbage or flood.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{can_run, Need};
use mxd::filter::driver::Driver;
use mxd::filter::process::ProcSpec;
use mxd::filter::protocol::{self, Endpoint, EventKind, Report};
use mxd::filter::{
    Chain, ChainFilter, ChainFilterKind, FilterChain, FilterDecision, FilterEvent, FilterLink, Id, Limits, Now, Phase,
    SessionFilter, TableRef,
};

const PY: &str = "/usr/bin/python3";
const DKIMSIGN: &str = "/usr/libexec/opensmtpd/filter-dkimsign";

fn spec(name: &str, command: String) -> ProcSpec {
    ProcSpec { name: name.into(), command, user: None, group: None, chroot: None }
}

fn start(specs: &[ProcSpec]) -> Driver {
    Driver::start(specs, &protocol::handshake(300, "mx.test"), Duration::from_secs(10)).expect("filters start")
}

/// Adds a session filtered by `procs` (in order) to the driver.
fn open_session(d: &mut Driver, id: u64, procs: &[&str], timeout: Duration) -> Id {
    let filters =
        procs.iter().map(|p| ChainFilter { name: p.to_string(), kind: ChainFilterKind::Proc(p.to_string()) }).collect();
    open_chain(d, id, filters, timeout)
}

/// Adds a session filtered by `filters`; tables hold addresses of bad.test and 127.0.0.1.
fn open_chain(d: &mut Driver, id: u64, filters: Vec<ChainFilter>, timeout: Duration) -> Id {
    let tables = |_: &TableRef, _: mxd::filter::LookupKind, key: &str| key.ends_with("@bad.test") || key == "127.0.0.1";
    let chain = Chain::new(&FilterChain { filters }, d.registrations(), Arc::new(tables)).unwrap();
    let link = FilterLink {
        rdns: Some("client.test".into()),
        fcrdns: true,
        src: Endpoint::Inet("127.0.0.1:40000".parse().unwrap()),
        dest: Endpoint::Inet("127.0.0.1:25".parse().unwrap()),
    };
    let limits = Limits { timeout, max_message: 1 << 20 };
    let s = SessionFilter::new(Arc::new(chain), Id(id), id << 16, limits, &link, Now::read());
    d.sessions.insert(s);
    Id(id)
}

/// Runs until the session has an event, and returns it.
fn next_event(d: &mut Driver, id: Id) -> FilterEvent {
    let mut got = None;
    let done = d.run_until(Instant::now() + Duration::from_secs(20), |s| {
        got = s.get_mut(id).and_then(|s| s.poll_event());
        got.is_some()
    });
    assert!(done, "no event for session {id} in time; failures: {:?}", d.failures());
    got.unwrap()
}

fn phase(d: &mut Driver, id: Id, phase: Phase, param: &str) -> FilterDecision {
    d.sessions.get_mut(id).unwrap().begin(Now::read(), phase, param);
    match next_event(d, id) {
        FilterEvent::Decided(p, decision) if p == phase => decision,
        other => panic!("{}: {other:?}", phase.name()),
    }
}

/// Keeps the driver going until the filter's log file says `cond` (the filter writes it
/// without telling us, so look every 20 ms), for at most 10 s.
fn wait_log(d: &mut Driver, log: &Path, cond: impl Fn(&str) -> bool) -> bool {
    let limit = Instant::now() + Duration::from_secs(10);
    while Instant::now() < limit {
        let check = || std::fs::read_to_string(log).is_ok_and(|l| cond(&l));
        if d.run_until(Instant::now() + Duration::from_millis(20), |_| check()) {
            return true;
        }
    }
    false
}

fn report(d: &mut Driver, id: Id, r: &Report<'_>) {
    d.sessions.get_mut(id).unwrap().report(Now::read(), r);
}

/// Streams `message` through the data-line filters; returns what comes out.
fn filter_message(d: &mut Driver, id: Id, message: &str) -> Vec<String> {
    let s = d.sessions.get_mut(id).unwrap();
    let now = Now::read();
    s.data_begin(now);
    for line in message.lines() {
        s.data_line(now, line.as_bytes());
    }
    s.data_end(now);
    match next_event(d, id) {
        FilterEvent::Message(body) => String::from_utf8_lossy(&body).lines().map(String::from).collect(),
        other => panic!("data-line: {other:?}"),
    }
}

#[test]
fn own_filter_sees_every_phase_and_each_response_works() {
    if !can_run("own_filter_sees_every_phase_and_each_response_works", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let log = dir.path().join("filter.log");
    let script = common::filter_script(dir.path(), "all_phases.py");
    let mut d = start(&[spec("all", format!("{PY} {} {}", script.display(), log.display()))]);
    let reg = d.registrations()["all"];
    assert!(Phase::ALL.iter().all(|p| reg.filters(*p)) && EventKind::ALL.iter().all(|e| reg.reports(*e)));

    let id = open_session(&mut d, 1, &["all"], Duration::from_secs(10));
    assert_eq!(phase(&mut d, id, Phase::Connect, ""), FilterDecision::Proceed);
    report(&mut d, id, &Report::LinkGreeting { hostname: "mx.test" });
    report(&mut d, id, &Report::LinkIdentify { ehlo: true, identity: "client.test" });
    assert_eq!(phase(&mut d, id, Phase::Ehlo, "client.test"), FilterDecision::Proceed);
    report(&mut d, id, &Report::ProtocolClient { command: "MAIL FROM:<junk@example.org>" });
    assert_eq!(phase(&mut d, id, Phase::MailFrom, "junk@example.org"), FilterDecision::Junk);
    assert_eq!(
        phase(&mut d, id, Phase::MailFrom, "rewrite@example.org"),
        FilterDecision::Rewrite("new@example.org".into())
    );
    d.sessions.get_mut(id).unwrap().begin(Now::read(), Phase::MailFrom, "report@example.org");
    assert_eq!(next_event(&mut d, id), FilterEvent::Reported { filter: "all".into(), message: "noted sender".into() });
    assert_eq!(next_event(&mut d, id), FilterEvent::Decided(Phase::MailFrom, FilterDecision::Proceed));
    report(&mut d, id, &Report::TxBegin { msgid: 0x1234abcd });
    assert_eq!(
        phase(&mut d, id, Phase::RcptTo, "reject@example.org"),
        FilterDecision::Reject("550 5.1.1 no such user".into())
    );
    assert_eq!(phase(&mut d, id, Phase::RcptTo, "joseph@example.org"), FilterDecision::Proceed);
    report(
        &mut d,
        id,
        &Report::TxRcpt { msgid: 0x1234abcd, result: protocol::TxResult::Ok, address: "joseph@example.org" },
    );
    assert_eq!(phase(&mut d, id, Phase::Data, ""), FilterDecision::Proceed);
    let out = filter_message(&mut d, id, "Subject: hi\n\n.leading dot\nbody\n");
    assert_eq!(out, ["X-Filtered: all_phases", "Subject: hi", "", ".leading dot", "body"]);
    assert_eq!(phase(&mut d, id, Phase::Commit, ""), FilterDecision::Proceed);
    report(&mut d, id, &Report::TxCommit { msgid: 0x1234abcd, size: 42 });
    // A reply that is not a 4xx/5xx reply becomes OpenSMTPD's 421.
    assert_eq!(
        phase(&mut d, id, Phase::RcptTo, "bad-reply@example.org"),
        FilterDecision::Disconnect("421 Internal server error".into())
    );
    report(&mut d, id, &Report::LinkDisconnect);

    // Two more sessions at once on the same process: refusals at HELO and EHLO.
    let a = open_session(&mut d, 2, &["all"], Duration::from_secs(10));
    let b = open_session(&mut d, 3, &["all"], Duration::from_secs(10));
    assert_eq!(phase(&mut d, a, Phase::Helo, "reject.test"), FilterDecision::Reject("550 5.7.1 helo refused".into()));
    assert_eq!(phase(&mut d, b, Phase::Ehlo, "disconnect.test"), FilterDecision::Disconnect("421 4.7.0 bye".into()));

    // The filter checks every line; it would have exited on a bad one.
    let ok = wait_log(&mut d, &log, |l| l.matches("link-disconnect").count() == 1);
    assert!(ok && d.failures().is_empty(), "{:?}", d.failures());
    let seen = std::fs::read_to_string(&log).unwrap();
    for want in [
        "link-connect",
        "connect client.test|127.0.0.1",
        "link-greeting",
        "link-identify",
        "ehlo client.test",
        "protocol-client",
        "mail-from junk@example.org",
        "filter-response",
        "filter-report",
        "tx-begin",
        "rcpt-to joseph@example.org",
        "tx-rcpt",
        "data-line .",
        "commit ",
        "tx-commit",
        "helo reject.test",
    ] {
        assert!(seen.contains(want), "{want} not seen by the filter:\n{seen}");
    }
    if nix::unistd::geteuid().is_root() {
        assert!(!seen.starts_with("uid=0\n"), "the filter runs as root:\n{seen}");
    }
}

#[test]
fn dkimsign_signs_and_dkimpy_verifies() {
    let needs = [
        Need::File(DKIMSIGN, "opensmtpd-filter-dkimsign"),
        Need::File("/usr/lib/python3/dist-packages/dkim/__init__.py", "python3-dkim"),
        Need::File(PY, "python3"),
        Need::Program("openssl", "openssl"),
    ];
    if !can_run("dkimsign_signs_and_dkimpy_verifies", &needs) {
        return;
    }
    let dir = common::shared_tempdir();
    let key = dir.path().join("dkim.key");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    // The filter runs unprivileged: as _dkimsign (the package's user) when we are root.
    let mut s = spec("dkimsign", format!("filter-dkimsign -d example.org -s sel -k {}", key.display()));
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("_dkimsign").unwrap().expect("the package's user");
        nix::unistd::chown(&key, Some(u.uid), Some(u.gid)).unwrap();
        s.user = Some("_dkimsign".into());
    }
    let mut d = start(&[s]);
    let id = open_session(&mut d, 7, &["dkimsign"], Duration::from_secs(10));
    report(&mut d, id, &Report::TxBegin { msgid: 1 });
    let message = "From: Joseph <joseph@example.org>\nTo: alice@example.net\nSubject: signed\n\
                   Message-ID: <1@example.org>\n\nHello.\n.A line with a leading dot.\n";
    let out = filter_message(&mut d, id, message);
    assert!(out[0].starts_with("DKIM-Signature: v=1; a=rsa-sha256;"), "{out:?}");
    assert!(out.join("\n").contains("d=example.org"));
    assert_eq!(phase(&mut d, id, Phase::Commit, ""), FilterDecision::Proceed);
    report(&mut d, id, &Report::TxCommit { msgid: 1, size: 10 });
    report(&mut d, id, &Report::LinkDisconnect);

    let signed = dir.path().join("signed.eml");
    std::fs::write(&signed, out.join("\r\n") + "\r\n").unwrap();
    let verify = r#"
import base64, subprocess, sys, dkim
der = subprocess.run(["openssl", "rsa", "-in", sys.argv[2], "-pubout", "-outform", "DER"],
                     capture_output=True, check=True).stdout
txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
def dns(name, timeout=5):
    assert name == b"sel._domainkey.example.org.", name
    return txt
msg = open(sys.argv[1], "rb").read()
ok = dkim.verify(msg, dnsfunc=dns)
tampered = dkim.verify(msg.replace(b"Hello.", b"Hello!"), dnsfunc=dns)
print("verified" if ok and not tampered else "FAILED ok=%s tampered=%s" % (ok, tampered))
"#;
    let out = std::process::Command::new(PY).arg("-c").arg(verify).arg(&signed).arg(&key).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "verified", "{}", String::from_utf8_lossy(&out.stderr));
}

/// A driver with a misbehaving filter (`mode`) and, beside it, the project's well-behaved one.
fn misbehaving(mode: &str, dir: &Path) -> Driver {
    let bad = common::filter_script(dir, "misbehave.sh");
    let good = common::filter_script(dir, "all_phases.py");
    let log = dir.join("good.log");
    start(&[
        spec("bad", format!("{} {mode}", bad.display())),
        spec("good", format!("{PY} {} {}", good.display(), log.display())),
    ])
}

const FAIL: &str = mxd::smtp::reply::FILTER_FAIL;

#[test]
fn crashing_garbage_and_flooding_filters_fail_their_sessions_closed() {
    if !can_run("crashing_garbage_and_flooding_filters_fail_their_sessions_closed", &[Need::File(PY, "python3")]) {
        return;
    }
    for mode in ["crash", "garbage", "flood"] {
        let dir = common::shared_tempdir();
        let mut d = misbehaving(mode, dir.path());
        let victim = open_session(&mut d, 1, &["bad"], Duration::from_secs(10));
        let bystander = open_session(&mut d, 2, &["good"], Duration::from_secs(10));
        assert_eq!(phase(&mut d, victim, Phase::Connect, ""), FilterDecision::Disconnect(FAIL.into()), "{mode}");
        assert_eq!(d.failures().len(), 1, "{mode}: {:?}", d.failures());
        assert_eq!(d.failures()[0].0, "bad");
        // Later phases fail at once; sessions on other filters carry on.
        assert_eq!(phase(&mut d, victim, Phase::Connect, ""), FilterDecision::Disconnect(FAIL.into()));
        assert_eq!(phase(&mut d, bystander, Phase::Connect, ""), FilterDecision::Proceed, "{mode}");
        // A session opened later on the dead filter fails too.
        let late = open_session(&mut d, 3, &["bad", "good"], Duration::from_secs(10));
        assert_eq!(phase(&mut d, late, Phase::Connect, ""), FilterDecision::Disconnect(FAIL.into()));
    }
}

#[test]
fn hanging_filter_costs_a_timeout_for_its_sessions_only() {
    if !can_run("hanging_filter_costs_a_timeout_for_its_sessions_only", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let mut d = misbehaving("hang", dir.path());
    // A timeout long enough that no loaded machine makes the bystander look like it waited.
    let victim = open_session(&mut d, 1, &["bad"], Duration::from_secs(3));
    let bystander = open_session(&mut d, 2, &["good"], Duration::from_secs(3));
    let started = Instant::now();
    d.sessions.get_mut(victim).unwrap().begin(Now::read(), Phase::Connect, "");
    assert_eq!(phase(&mut d, bystander, Phase::Connect, ""), FilterDecision::Proceed);
    assert!(started.elapsed() < Duration::from_secs(3), "the bystander waited for the hung filter");
    assert_eq!(
        next_event(&mut d, victim),
        FilterEvent::Decided(Phase::Connect, FilterDecision::Disconnect(FAIL.into()))
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    // While the message streams, too.
    let v2 = open_session(&mut d, 3, &["bad"], Duration::from_millis(300));
    let s = d.sessions.get_mut(v2).unwrap();
    s.data_begin(Now::read());
    s.data_line(Now::read(), b"Subject: x");
    assert_eq!(next_event(&mut d, v2), FilterEvent::Decided(Phase::DataLine, FilterDecision::Disconnect(FAIL.into())));
}

#[test]
fn answers_for_unknown_sessions_are_ignored() {
    if !can_run("answers_for_unknown_sessions_are_ignored", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let mut d = misbehaving("unknown", dir.path());
    let id = open_session(&mut d, 1, &["bad"], Duration::from_secs(10));
    assert_eq!(phase(&mut d, id, Phase::Connect, ""), FilterDecision::Proceed);
    assert!(d.failures().is_empty(), "{:?}", d.failures());
}

#[test]
fn builtin_and_proc_filters_run_in_chain_order() {
    if !can_run("builtin_and_proc_filters_run_in_chain_order", &[Need::File(PY, "python3")]) {
        return;
    }
    use mxd::filter::{BuiltinAction, BuiltinRule, Condition, Test};
    let dir = common::shared_tempdir();
    let log = dir.path().join("filter.log");
    let script = common::filter_script(dir.path(), "all_phases.py");
    let mut d = start(&[spec("all", format!("{PY} {} {}", script.display(), log.display()))]);
    let table = || TableRef { name: "t".into(), regex: false };
    let rule = |name: &str, phase, negate, test, action| ChainFilter {
        name: name.into(),
        kind: ChainFilterKind::Builtin(BuiltinRule { phase, conditions: vec![Condition { negate, test }], action }),
    };
    let filters = vec![
        rule("note", Phase::Connect, false, Test::Src(table()), BuiltinAction::Report("from loopback".into())),
        rule("fast", Phase::MailFrom, true, Test::Auth, BuiltinAction::Bypass),
        ChainFilter { name: "all".into(), kind: ChainFilterKind::Proc("all".into()) },
        rule("deny", Phase::RcptTo, false, Test::RcptTo(table()), BuiltinAction::Reject("550 5.7.1 denied".into())),
    ];
    let id = open_chain(&mut d, 1, filters, Duration::from_secs(10));
    d.sessions.get_mut(id).unwrap().begin(Now::read(), Phase::Connect, "");
    assert_eq!(
        next_event(&mut d, id),
        FilterEvent::Reported { filter: "note".into(), message: "from loopback".into() }
    );
    assert_eq!(next_event(&mut d, id), FilterEvent::Decided(Phase::Connect, FilterDecision::Proceed));
    // The bypass comes before the process: it never sees MAIL FROM.
    assert_eq!(phase(&mut d, id, Phase::MailFrom, "junk@example.org"), FilterDecision::Proceed);
    // The process proceeds, then the builtin after it refuses.
    assert_eq!(phase(&mut d, id, Phase::RcptTo, "x@bad.test"), FilterDecision::Reject("550 5.7.1 denied".into()));
    assert_eq!(phase(&mut d, id, Phase::RcptTo, "x@good.test"), FilterDecision::Proceed);
    report(&mut d, id, &Report::LinkDisconnect);
    let ok = wait_log(&mut d, &log, |l| l.contains("link-disconnect"));
    assert!(ok && d.failures().is_empty(), "{:?}", d.failures());
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("filter-report") && seen.contains("rcpt-to x@bad.test"), "{seen}");
    assert!(!seen.contains("mail-from junk"), "{seen}");
}

#[test]
fn handshake_failures_are_reported_with_the_filters_name() {
    let dir = common::shared_tempdir();
    let bad = common::filter_script(dir.path(), "misbehave.sh");
    let handshake = protocol::handshake(300, "mx.test");
    let start = |mode: &str| {
        Driver::start(&[spec("bad", format!("{} {mode}", bad.display()))], &handshake, Duration::from_millis(500))
    };
    match start("silent") {
        Err(e @ mxd::filter::driver::DriverError::NotReady(_)) => {
            assert_eq!(e.to_string(), "filter bad: not ready in time")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match start("badreg") {
        Err(e @ mxd::filter::driver::DriverError::Handshake(..)) => {
            assert!(e.to_string().contains("invalid register line"), "{e}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let missing =
        Driver::start(&[spec("gone", "filter-that-does-not-exist -x".into())], &handshake, Duration::from_secs(1));
    let e = missing.err().expect("refused").to_string();
    assert!(e.starts_with("filter gone: filter-that-does-not-exist: not found (looked at /usr/libexec/opensmtpd/filter-that-does-not-exist"), "{e}");
}
