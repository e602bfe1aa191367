//! Issue 16 (optional part): OpenSMTPD's filter-rspamd, unchanged, driven through mxd's
//! filter runner and engine against a real rspamd on 127.0.0.1: a GTUBE message gets
//! rspamd's verdict (rejected at commit), a clean one passes unchanged, one above the
//! add-header threshold passes with the filter's X-Spam headers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rspamd::{Rspamd, FILTER, GTUBE, RSPAMD};
use common::{can_run, Need};
use mxd::filter::driver::Driver;
use mxd::filter::process::ProcSpec;
use mxd::filter::protocol::{self, Endpoint, Report, TxResult};
use mxd::filter::{
    Chain, ChainFilter, ChainFilterKind, FilterChain, FilterDecision, FilterEvent, FilterLink, Id, Limits, Now, Phase,
};
use mxd::filter::{SessionFilter, TableRef};

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
        s.data_line(now, line.as_bytes());
    }
    s.data_end(now);
    let lines = match next_event(d, id) {
        FilterEvent::Message(body) => String::from_utf8_lossy(&body).lines().map(String::from).collect(),
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
    // Thresholds for the test: a sloppy message (no Date, no Message-ID: about 3.4) gets
    // "add header", a tidy one none; greylisting (which needs redis) is off.
    let rspamd = Rspamd::start(dir.path(), "add_header = 2;\ngreylist = null;\n");
    let port = rspamd.port;
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
