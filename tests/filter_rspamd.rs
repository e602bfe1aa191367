//! Issue 16 (optional part): OpenSMTPD's filter-rspamd, unchanged, driven through mxd's
//! filter runner and engine against a real rspamd on 127.0.0.1: a GTUBE message gets
//! rspamd's verdict (rejected at commit), a clean one passes unchanged, one above the
//! add-header threshold passes with the filter's X-Spam headers.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{can_run, free_port, Need};
use mxd::filter::driver::Driver;
use mxd::filter::process::ProcSpec;
use mxd::filter::protocol::{self, Endpoint, Report, TxResult};
use mxd::filter::{
    Chain, ChainFilter, ChainFilterKind, FilterChain, FilterDecision, FilterEvent, FilterLink, Id, Limits, Now, Phase,
};
use mxd::filter::{SessionFilter, TableRef};

const RSPAMD: &str = "/usr/bin/rspamd";
const FILTER: &str = "/usr/libexec/opensmtpd/filter-rspamd";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// rspamd with one scanning worker on 127.0.0.1:PORT, state in `dir`, no DNS.
struct Rspamd(Child);

impl Rspamd {
    fn start(dir: &Path, port: u16) -> Rspamd {
        for d in ["local", "db", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        let conf = format!(
            r#".include "$CONFDIR/common.conf"
options {{
    .include "$CONFDIR/options.inc"
    pidfile = "{d}/run/rspamd.pid";
    dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }}
}}
logging {{ type = "console"; level = "error"; }}
worker "normal" {{
    .include "$CONFDIR/worker-normal.inc"
    bind_socket = "127.0.0.1:{port}";
    count = 1;
}}
"#
        );
        std::fs::write(dir.join("rspamd.conf"), conf).unwrap();
        // Thresholds for the test: a sloppy message (no Date, no Message-ID: about 3.4)
        // gets "add header", a tidy one none; greylisting (which needs redis) is off.
        std::fs::create_dir_all(dir.join("local/local.d")).unwrap();
        std::fs::write(dir.join("local/local.d/actions.conf"), "add_header = 2;\ngreylist = null;\n").unwrap();
        let log = std::fs::File::create(dir.join("rspamd.log")).unwrap();
        let child = Command::new(RSPAMD)
            .args(["-f", "-i", "-c"])
            .arg(dir.join("rspamd.conf"))
            .arg(format!("--var=DBDIR={d}/db"))
            .arg(format!("--var=RUNDIR={d}/run"))
            .arg(format!("--var=LOCAL_CONFDIR={d}/local"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Rspamd(child);
        // Loading rules takes rspamd a while on a small machine.
        let limit = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < limit,
                "rspamd did not listen: {}",
                std::fs::read_to_string(dir.join("rspamd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its workers.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn next_event(d: &mut Driver, id: Id) -> FilterEvent {
    let mut got = None;
    let done = d.run_until(Instant::now() + Duration::from_secs(30), |s| {
        got = s.get_mut(id).and_then(|s| s.poll_event());
        got.is_some()
    });
    assert!(done, "no event for session {id}; failures: {:?}", d.failures());
    got.unwrap()
}

/// One transaction through filter-rspamd: the message after data-line filtering and the
/// commit decision.
fn transaction(d: &mut Driver, n: u64, message: &str) -> (Vec<String>, FilterDecision) {
    let no_tables = |_: &TableRef, _: mxd::filter::LookupKind, _: &str| false;
    let filters = vec![ChainFilter { name: "rspamd".into(), kind: ChainFilterKind::Proc("rspamd".into()) }];
    let chain = Chain::new(&FilterChain { filters }, d.registrations(), Arc::new(no_tables)).unwrap();
    let link = FilterLink {
        rdns: Some("client.test".into()),
        fcrdns: true,
        src: Endpoint::Inet("127.0.0.1:40000".parse().unwrap()),
        dest: Endpoint::Inet("127.0.0.1:25".parse().unwrap()),
    };
    let limits = Limits { timeout: Duration::from_secs(30), max_message: 1 << 20 };
    let id = Id(n);
    d.sessions.insert(SessionFilter::new(Arc::new(chain), id, n << 16, limits, &link, Now::read()));
    let s = d.sessions.get_mut(id).unwrap();
    let now = Now::read();
    s.report(now, &Report::LinkGreeting { hostname: "mx.test" });
    s.report(now, &Report::LinkIdentify { ehlo: true, identity: "client.test" });
    s.report(now, &Report::TxBegin { msgid: n as u32 });
    s.report(now, &Report::TxMail { msgid: n as u32, result: TxResult::Ok, address: "joseph@example.org" });
    s.report(now, &Report::TxRcpt { msgid: n as u32, result: TxResult::Ok, address: "alice@example.net" });
    s.data_begin(now);
    for line in message.lines() {
        s.data_line(now, line);
    }
    s.data_end(now);
    let lines = match next_event(d, id) {
        FilterEvent::Message(lines) => lines,
        other => panic!("{other:?}"),
    };
    d.sessions.get_mut(id).unwrap().begin(Now::read(), Phase::Commit, "");
    let decision = match next_event(d, id) {
        FilterEvent::Decided(Phase::Commit, decision) => decision,
        other => panic!("{other:?}"),
    };
    d.sessions.get_mut(id).unwrap().report(Now::read(), &Report::LinkDisconnect);
    (lines, decision)
}

#[test]
fn rspamd_rejects_gtube_marks_spammy_and_passes_clean() {
    let needs = [Need::File(RSPAMD, "rspamd"), Need::File(FILTER, "opensmtpd-filter-rspamd")];
    if !can_run("rspamd_rejects_gtube_marks_spammy_and_passes_clean", &needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _rspamd = Rspamd::start(dir.path(), port);
    let spec = ProcSpec {
        name: "rspamd".into(),
        command: format!("filter-rspamd -url http://127.0.0.1:{port}"),
        user: None,
        group: None,
        chroot: None,
    };
    let mut d = Driver::start(&[spec], &protocol::handshake(300, "mx.test"), Duration::from_secs(10)).unwrap();

    let head = "From: Joseph <joseph@example.org>\nTo: alice@example.net\nDate: Tue, 01 Dec 2026 10:00:00 +0000\n";
    let gtube = format!("{head}Message-ID: <gtube@example.org>\nSubject: test\n\n{GTUBE}\nBye.\n");
    let (_, decision) = transaction(&mut d, 1, &gtube);
    match decision {
        FilterDecision::Reject(r) | FilterDecision::Disconnect(r) => {
            assert!(r.starts_with('5') && r.contains("Gtube"), "{r}")
        }
        other => panic!("GTUBE passed: {other:?}"),
    }

    let clean = format!(
        "{head}Message-ID: <clean@example.org>\nSubject: lunch\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\nShall we have lunch on Thursday?\n"
    );
    let (lines, decision) = transaction(&mut d, 2, &clean);
    assert_eq!(decision, FilterDecision::Proceed, "{lines:?}");
    assert_eq!(lines, clean.lines().collect::<Vec<_>>(), "a clean message passes unchanged");

    // Above the add-header threshold: the message passes with filter-rspamd's X-Spam headers.
    let sloppy = "From: a@example.org\nTo: b@example.org\nSubject: hi\n\nbuy now\n";
    let (lines, decision) = transaction(&mut d, 3, sloppy);
    assert_eq!(decision, FilterDecision::Proceed, "{lines:?}");
    assert_eq!(lines[0], "X-Spam: yes", "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("X-Spam-Score: ")), "{lines:?}");
    assert!(lines.ends_with(&["".to_string(), "buy now".to_string()]), "{lines:?}");
    assert!(d.failures().is_empty(), "{:?}", d.failures());
}
