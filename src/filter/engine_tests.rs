//! The engine driven by hand: the test plays the filter processes, with a virtual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::filter::builtin::{BuiltinRule, Condition, LookupKind, TableRef, Test};
use crate::filter::chain::{ChainFilter, FilterChain, Registration};
use crate::filter::protocol::{EventKind, Register};

const SID: Id = Id(0xabc);

fn reg(phases: &[Phase], events: &[EventKind]) -> Registration {
    let mut r = Registration::default();
    for p in phases {
        r.handle(Register::Filter(*p));
    }
    for e in events {
        r.handle(Register::Report(*e));
    }
    r.handle(Register::Ready);
    r
}

fn proc(name: &str) -> ChainFilter {
    ChainFilter { name: name.into(), kind: ChainFilterKind::Proc(name.into()) }
}

fn builtin(name: &str, phase: Phase, test: Test, action: BuiltinAction) -> ChainFilter {
    ChainFilter {
        name: name.into(),
        kind: ChainFilterKind::Builtin(BuiltinRule {
            phase,
            conditions: vec![Condition { negate: false, test }],
            action,
        }),
    }
}

fn bad() -> TableRef {
    TableRef { name: "bad".into(), regex: false }
}

fn session(filters: Vec<ChainFilter>, regs: &[(&str, Registration)], max: usize) -> (SessionFilter, Now) {
    let regs: HashMap<String, Registration> = regs.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    let tables = |_: &TableRef, _: LookupKind, key: &str| key.ends_with("@bad.test") || key == "192.0.2.1";
    let chain = Arc::new(Chain::new(&FilterChain { filters }, &regs, Arc::new(tables)).unwrap());
    let now = Now { mono: Instant::now(), wall: Timestamp(Duration::from_micros(1_700_000_000_000_001)) };
    let link = FilterLink {
        rdns: Some("client.test".into()),
        fcrdns: true,
        src: Endpoint::Inet("192.0.2.1:4444".parse().unwrap()),
        dest: Endpoint::Inet("127.0.0.1:25".parse().unwrap()),
    };
    let limits = Limits { timeout: Duration::from_secs(30), max_message: max };
    (SessionFilter::new(chain, SID, 0x100, limits, &link, now), now)
}

/// What the session queued, a line per entry (a batch for one process holds several).
fn sends(s: &mut SessionFilter) -> Vec<(String, String)> {
    let batches: Vec<ProcLine> = std::iter::from_fn(|| s.poll_send()).collect();
    let mut out = Vec::new();
    for b in batches {
        for l in b.line.split_inclusive(|c| *c == b'\n') {
            out.push((b.proc.to_string(), String::from_utf8_lossy(l).into_owned()));
        }
    }
    out
}

fn events(s: &mut SessionFilter) -> Vec<FilterEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn builtins_decide_at_once_in_chain_order() {
    let filters = vec![
        builtin("rep", Phase::RcptTo, Test::RcptTo(bad()), BuiltinAction::Report("saw bad".into())),
        builtin("rej", Phase::RcptTo, Test::RcptTo(bad()), BuiltinAction::Reject("550 5.7.1 go away".into())),
        builtin("never", Phase::RcptTo, Test::RcptTo(bad()), BuiltinAction::Junk),
    ];
    let (mut s, now) = session(filters, &[], 1000);
    s.begin(now, Phase::RcptTo, "x@good.test");
    assert_eq!(events(&mut s), vec![FilterEvent::Decided(Phase::RcptTo, FilterDecision::Proceed)]);
    s.begin(now, Phase::RcptTo, "x@bad.test");
    assert_eq!(
        events(&mut s),
        vec![
            FilterEvent::Reported { filter: "rep".into(), message: "saw bad".into() },
            FilterEvent::Decided(Phase::RcptTo, FilterDecision::Reject("550 5.7.1 go away".into())),
        ]
    );
    assert!(sends(&mut s).is_empty(), "no process in the chain");
}

#[test]
fn bypass_skips_the_rest_and_refusals_are_checked() {
    let filters = vec![
        builtin("by", Phase::Connect, Test::Fcrdns, BuiltinAction::Bypass),
        builtin("no", Phase::Connect, Test::Fcrdns, BuiltinAction::Reject("550 no".into())),
        builtin("bad", Phase::Helo, Test::Rdns, BuiltinAction::Reject("250 not a refusal".into())),
        builtin("bye", Phase::Ehlo, Test::Rdns, BuiltinAction::Reject("421 4.7.0 bye".into())),
    ];
    let (mut s, now) = session(filters, &[], 1000);
    s.begin(now, Phase::Connect, "");
    s.begin(now, Phase::Helo, "h");
    s.begin(now, Phase::Ehlo, "h");
    assert_eq!(
        events(&mut s),
        vec![
            FilterEvent::Decided(Phase::Connect, FilterDecision::Proceed),
            FilterEvent::Decided(Phase::Helo, FilterDecision::Disconnect("421 Internal server error".into())),
            FilterEvent::Decided(Phase::Ehlo, FilterDecision::Disconnect("421 4.7.0 bye".into())),
        ]
    );
}

#[test]
fn proc_filters_get_requests_and_reports_in_opensmtpds_format() {
    let p = reg(&[Phase::Connect, Phase::MailFrom], &[EventKind::LinkConnect, EventKind::FilterResponse]);
    let filters = vec![proc("p"), builtin("j", Phase::MailFrom, Test::MailFrom(bad()), BuiltinAction::Junk)];
    let (mut s, now) = session(filters, &[("p", p)], 1000);
    let ts = "1700000000.000001";
    assert_eq!(
        sends(&mut s),
        vec![(
            "p".into(),
            format!(
                "report|0.7|{ts}|smtp-in|link-connect|0000000000000abc|client.test|pass|192.0.2.1:4444|127.0.0.1:25\n"
            )
        )]
    );
    s.begin(now, Phase::Connect, "");
    assert_eq!(
        sends(&mut s),
        vec![(
            "p".into(),
            format!("filter|0.7|{ts}|smtp-in|connect|0000000000000abc|0000000000000101|client.test|192.0.2.1\n")
        )]
    );
    assert!(s.is_waiting() && events(&mut s).is_empty());
    s.handle_output(now, "p", Id(0x101), FilterAnswer::Result(Response::Proceed)).unwrap();
    assert_eq!(events(&mut s), vec![FilterEvent::Decided(Phase::Connect, FilterDecision::Proceed)]);
    assert_eq!(
        sends(&mut s)[0].1,
        format!("report|0.7|{ts}|smtp-in|filter-response|0000000000000abc|connected|proceed\n")
    );

    // The proc proceeds, then the builtin after it junks.
    s.begin(now, Phase::MailFrom, "a@bad.test");
    assert!(sends(&mut s)[0].1.ends_with("|mail-from|0000000000000abc|0000000000000101|a@bad.test\n"));
    s.handle_output(now, "p", Id(0x101), FilterAnswer::Result(Response::Proceed)).unwrap();
    assert_eq!(events(&mut s), vec![FilterEvent::Decided(Phase::MailFrom, FilterDecision::Junk)]);

    // A rewrite ends the chain.
    s.begin(now, Phase::MailFrom, "a@good.test");
    s.handle_output(now, "p", Id(0x101), FilterAnswer::Result(Response::Rewrite("b@good.test"))).unwrap();
    assert_eq!(
        events(&mut s),
        vec![FilterEvent::Decided(Phase::MailFrom, FilterDecision::Rewrite("b@good.test".into()))]
    );
    assert!(sends(&mut s)
        .iter()
        .any(|(_, l)| l.ends_with("|filter-response|0000000000000abc|mail-from|rewrite|b@good.test\n")));
}

#[test]
fn data_lines_stream_through_every_stage_dot_stuffed() {
    let d = reg(&[Phase::DataLine], &[]);
    let (mut s, now) = session(vec![proc("a"), proc("b")], &[("a", d), ("b", d)], 1000);
    s.data_begin(now);
    s.data_line(now, b"Subject: x");
    s.data_line(now, b".hidden");
    s.data_end(now);
    let to_a = sends(&mut s);
    assert_eq!(to_a.len(), 3);
    assert!(to_a.iter().all(|(p, _)| p == "a"));
    assert!(to_a[1].1.ends_with("|data-line|0000000000000abc|0000000000000101|..hidden\n"), "{}", to_a[1].1);
    assert!(to_a[2].1.ends_with("|0000000000000101|.\n"));
    // a adds a header and echoes; its output goes to b with b's token.
    for l in ["X-A: 1", "Subject: x", "..hidden", "."] {
        s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(l.as_bytes())).unwrap();
    }
    let to_b = sends(&mut s);
    assert_eq!(to_b.len(), 4);
    assert!(to_b[0].1.ends_with("|data-line|0000000000000abc|0000000000000102|X-A: 1\n"));
    assert!(events(&mut s).is_empty());
    for l in ["X-B: 2", "X-A: 1", "Subject: x", "..hidden", "."] {
        s.handle_output(now, "b", Id(0x102), FilterAnswer::DataLine(l.as_bytes())).unwrap();
    }
    let want = b"X-B: 2\nX-A: 1\nSubject: x\n.hidden\n".to_vec();
    assert_eq!(events(&mut s), vec![FilterEvent::Message(want)]);
    assert!(!s.is_waiting());
    // After its final dot, a stage may not write more.
    s.data_begin(now);
    s.data_end(now);
    s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(b".")).unwrap();
    assert_eq!(
        s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(b"late")),
        Err(FilterSessionError::WrongPhase)
    );
}

#[test]
fn misbehaviour_fails_the_session_closed() {
    let p = reg(&[Phase::Helo, Phase::Commit, Phase::DataLine], &[]);
    let fail = |phase| FilterEvent::Decided(phase, FilterDecision::Disconnect(reply::FILTER_FAIL.into()));

    let (mut s, now) = session(vec![proc("p")], &[("p", p)], 1000);
    s.begin(now, Phase::Helo, "h");
    assert_eq!(
        s.handle_output(now, "p", Id(0x999), FilterAnswer::Result(Response::Proceed)),
        Err(FilterSessionError::UnexpectedToken(Id(0x999)))
    );
    assert_eq!(events(&mut s), vec![fail(Phase::Helo)]);
    s.begin(now, Phase::Helo, "h");
    assert_eq!(events(&mut s), vec![fail(Phase::Helo)], "a failed session stays failed");

    let (mut s, now) = session(vec![proc("p")], &[("p", p)], 1000);
    s.begin(now, Phase::Helo, "h");
    assert_eq!(s.handle_output(now, "p", Id(0x101), FilterAnswer::DataLine(b"x")), Err(FilterSessionError::WrongPhase));

    let (mut s, now) = session(vec![proc("p")], &[("p", p)], 1000);
    s.begin(now, Phase::Commit, "");
    assert_eq!(
        s.handle_output(now, "p", Id(0x101), FilterAnswer::Result(Response::Junk)),
        Err(FilterSessionError::JunkAfterData)
    );
    assert_eq!(events(&mut s), vec![fail(Phase::Commit)]);

    // Timeout: nothing before the deadline, 421 at it.
    let (mut s, now) = session(vec![proc("p")], &[("p", p)], 1000);
    s.begin(now, Phase::Helo, "h");
    let deadline = s.poll_timeout().unwrap();
    s.handle_timeout(Now { mono: deadline - Duration::from_millis(1), ..now });
    assert!(events(&mut s).is_empty());
    s.handle_timeout(Now { mono: deadline, ..now });
    assert_eq!(events(&mut s), vec![fail(Phase::Helo)]);

    // The process dies while the message streams.
    let (mut s, now) = session(vec![proc("p")], &[("p", p)], 1000);
    s.data_begin(now);
    s.data_line(now, b"x");
    s.handle_proc_failure(now, "other");
    assert!(events(&mut s).is_empty());
    s.handle_proc_failure(now, "p");
    assert_eq!(events(&mut s), vec![fail(Phase::DataLine)]);
}

#[test]
fn filtered_message_is_bounded() {
    let d = reg(&[Phase::DataLine], &[]);
    let (mut s, now) = session(vec![proc("a")], &[("a", d)], 10);
    s.data_begin(now);
    for _ in 0..3 {
        let _ = s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(b"0123"));
    }
    assert_eq!(
        events(&mut s),
        vec![FilterEvent::Decided(Phase::DataLine, FilterDecision::Reject(reply::FILTER_TOO_BIG.into()))]
    );
    // A line too long for a filter to answer within `MAX_LINE` is never sent; the rest is,
    // and once the filter is done the message is refused, and the session goes on.
    let (mut s, now) = session(vec![proc("a")], &[("a", d)], 1 << 20);
    s.data_begin(now);
    s.data_line(now, b"Subject: long");
    s.data_line(now, &vec![b'x'; MAX_DATA_LINE + 1]);
    s.data_end(now);
    let sent = sends(&mut s);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].1.ends_with("|Subject: long\n") && sent[1].1.ends_with("|.\n"));
    assert!(events(&mut s).is_empty());
    for l in [&b"Subject: long"[..], b"."] {
        s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(l)).unwrap();
    }
    assert_eq!(
        events(&mut s),
        vec![FilterEvent::Decided(Phase::DataLine, FilterDecision::Reject(reply::FILTER_LINE_TOO_LONG.into()))]
    );
    assert!(!s.is_waiting());
    s.data_begin(now);
    s.data_end(now);
    s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(b".")).unwrap();
    assert_eq!(events(&mut s), vec![FilterEvent::Message(Vec::new())]);
}

#[test]
fn eight_bit_lines_pass_as_bytes_in_one_batch() {
    let d = reg(&[Phase::DataLine], &[]);
    let (mut s, now) = session(vec![proc("a")], &[("a", d)], 1000);
    s.data_begin(now);
    let latin1: &[u8] = b"Subject: caf\xe9 cr\xe8me";
    s.data_line(now, latin1);
    s.data_line(now, b"\xff\x00end");
    s.data_end(now);
    // Three lines for one process, handed over as one.
    let batch = s.poll_send().unwrap();
    assert!(s.poll_send().is_none());
    let lines: Vec<&[u8]> = batch.line.split_inclusive(|c| *c == b'\n').collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].ends_with(b"|0000000000000101|Subject: caf\xe9 cr\xe8me\n"));
    for l in [latin1, b"\xff\x00end", b"."] {
        s.handle_output(now, "a", Id(0x101), FilterAnswer::DataLine(l)).unwrap();
    }
    assert_eq!(events(&mut s), vec![FilterEvent::Message(b"Subject: caf\xe9 cr\xe8me\n\xff\x00end\n".to_vec())]);
}
