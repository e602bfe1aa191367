//! The invariants the fuzz targets check, shared by fuzz/fuzz_targets/*.rs (libFuzzer, on
//! nightly) and tests/fuzz_replay.rs (every corpus and regression file, on stable). Each
//! function takes arbitrary bytes and panics only when an invariant breaks.
#![allow(dead_code)] // each user calls some of them

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxd::smtp::data::{reference_decode, DataDecoder, DataStatus};
use mxd::smtp::{
    AcceptAll, AuthConfig, AuthPolicy, AuthResult, Event, Outcome, Session, SessionConfig, TlsInfo, TlsPolicy, TxStep,
};

/// The command parser never panics; every error maps to a 4xx/5xx reply.
pub fn smtp_command(data: &[u8]) {
    match mxd::smtp::command::parse(data) {
        Ok(_) => {}
        Err(e) => assert!((400..600).contains(&e.reply().code)),
    }
    let _ = mxd::smtp::command::mail_params(data);
    let _ = mxd::smtp::command::rcpt_params(data);
}

/// The DATA decoder gives the reference decoder's answer whether the input comes a byte at
/// a time, whole, or in chunks of a size taken from the input's first byte.
pub fn smtp_data(data: &[u8]) {
    let (step, input) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s % 17) + 1, rest),
        None => return,
    };
    let max = 4096;
    let want = reference_decode(input, max);
    for step in [step, 1, input.len().max(1)] {
        let mut d = DataDecoder::new(max);
        let mut body = Vec::new();
        let mut consumed = 0;
        let mut got = None;
        for chunk in input.chunks(step) {
            let (n, status) = d.feed(chunk, &mut body);
            consumed += n;
            assert!(body.len() as u64 <= max, "body grew past the limit");
            if let DataStatus::End(r) = status {
                got = Some((consumed, r.map(|()| body.clone())));
                break;
            }
            assert_eq!(n, chunk.len(), "input consumed before the end");
        }
        assert_eq!(got, want, "chunks of {step}");
    }
}

/// A whole session driven by arbitrary client bytes: replies well-formed and numbered,
/// output and pending input bounded, and every accepted message exactly what the reference
/// decoder makes of the bytes after its DATA line (no smuggled end of data). AUTH runs on an
/// auth listener (required when the input's length is 3 mod 4, else optional): credentials
/// come out only under TLS, with a clean user name and a password; the password `good`
/// logs in, `temp` is a temporary failure, anything else fails; every message carries the
/// user who logged in, and only then.
pub fn smtp_session(data: &[u8]) {
    const MAX: u64 = 2048;
    let cfg = SessionConfig {
        hostname: "fuzz.test".into(),
        max_message_size: MAX,
        max_rcpt: 5,
        max_errors: 50,
        idle_timeout: Duration::from_secs(300),
        tls: TlsPolicy::Offer,
        tls_active: false,
    };
    let now = Instant::now();
    let mut s = Session::new(Arc::new(cfg), AcceptAll::default(), now);
    let policy = if data.len() % 4 == 3 { AuthPolicy::Required } else { AuthPolicy::Optional };
    s.set_auth_config(AuthConfig::new(policy));
    let (mut tls, mut logged_in) = (false, None::<String>);
    let mut pending: Vec<u8> = Vec::new();
    // Offsets into `data`: the next byte to feed, the first byte not consumed, where the
    // content of the current DATA starts.
    let (mut fed, mut consumed, mut data_start) = (0usize, 0usize, None::<usize>);
    let mut commits = 0u32;
    while fed < data.len() {
        // Commands go in a byte at a time, so the offset where content starts is exact;
        // content goes in chunks of 7.
        let end = (fed + if s.in_data() { 7 } else { 1 }).min(data.len());
        pending.extend_from_slice(&data[fed..end]);
        fed = end;
        let n = s.handle_input(&pending, now);
        pending.drain(..n);
        consumed += n;
        if s.in_data() && data_start.is_none() {
            data_start = Some(consumed);
        }
        if let Some(req) = s.poll_auth() {
            assert!(tls, "credentials taken on a plaintext channel");
            assert!(logged_in.is_none(), "a second login");
            assert!(!req.user.is_empty() && !req.user.chars().any(|c| c.is_whitespace() || c.is_control()));
            assert!(!req.password.is_empty() && !format!("{req:?}").contains("password: ["));
            assert!(!s.wants_read(), "reads on while the server checks");
            let verdict = match req.password.expose() {
                b"good" => AuthResult::Ok,
                b"temp" => AuthResult::TempFail,
                b"blocked" => AuthResult::Blocked,
                _ => AuthResult::Failed,
            };
            if verdict == AuthResult::Ok {
                logged_in = Some(req.user.clone());
            }
            s.handle_auth(req.id, verdict);
        }
        // MAIL and RCPT that ask the server (issues 14, 15): parked, reading nothing, until
        // the answer; a late answer to another question changes nothing.
        if let Some(req) = s.poll_lookup() {
            assert!(!s.wants_read() && s.poll_lookup().is_none(), "reads on while the server decides");
            s.handle_lookup(mxd::smtp::LookupId(req.id.0.wrapping_add(1)), Ok(()));
            assert!(!s.wants_read(), "an answer to another question resumed the session");
            let about = req.rcpt.as_deref().unwrap_or(&req.mail_from);
            let verdict = if about.contains("no") { Err(mxd::smtp::reply::UNKNOWN_RCPT) } else { Ok(()) };
            s.handle_lookup(req.id, verdict);
            assert!(s.wants_read() || s.is_closing() || s.output().len() >= 64 * 1024, "still parked");
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Message(m) => {
                    assert_eq!(m.auth, logged_in, "a message carries exactly the user who logged in");
                    assert!(policy == AuthPolicy::Optional || logged_in.is_some(), "MAIL before AUTH");
                    let start = data_start.take().expect("a message comes out of DATA");
                    match reference_decode(&data[start..], MAX) {
                        Some((_, Ok(body))) => {
                            assert_eq!(body, m.body, "accepted a body the reference decoder reads otherwise")
                        }
                        other => panic!("accepted a message the reference decoder gives {other:?}"),
                    }
                    commits += 1;
                    let o = if commits % 2 == 0 { Outcome::Ok } else { Outcome::TempFail("fuzz".into()) };
                    s.handle_commit(m.id, o);
                }
                Event::StartTls => {
                    // What a client pipelined behind STARTTLS is discarded.
                    consumed += pending.len();
                    pending.clear();
                    s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), bits: 256 });
                    tls = true;
                }
                Event::Refused(r) if r.step == TxStep::Auth => assert!(r.address.is_some(), "refusal names the user"),
                Event::Close(_) | Event::Refused(_) => {}
            }
        }
        if !s.in_data() {
            data_start = None;
        }
        check_output(s.output());
        let len = s.output().len();
        s.consume_output(len);
        if s.is_closing() {
            return;
        }
        assert!(pending.len() <= 1024 + 7, "unconsumed input grew: {}", pending.len());
    }
}

fn check_output(out: &[u8]) {
    assert!(out.len() < 256 * 1024);
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("replies end in CRLF");
        let code: u16 = std::str::from_utf8(&line[..3]).ok().and_then(|c| c.parse().ok()).expect("numeric code");
        assert!((200..600).contains(&code));
        assert!(line.len() == 3 || line[3] == b' ' || line[3] == b'-');
    }
}

/// Accepted addresses have an '@' (or are empty) and no CR, LF, NUL or other controls.
pub fn address(data: &[u8]) {
    for utf8 in [false, true] {
        if let Ok(a) = mxd::smtp::address::parse_mailbox(data, utf8) {
            assert!(a.is_empty() || a.contains('@'));
            assert!(!a.chars().any(|c| c.is_control()), "{a:?}");
        }
    }
    let _ = mxd::smtp::address::split_path(data);
}

/// Configuration text never panics the loader; every error has a line.
pub fn config(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("mxd-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("smtpd.conf");
    if std::fs::write(&path, data).is_ok() {
        if let Err(errs) = mxd::config::load(&path, &[]) {
            assert!(!errs.0.is_empty());
        }
    }
}

pub fn table(data: &[u8]) {
    let _ = mxd::table::parse(&String::from_utf8_lossy(data));
    // The same bytes as a makemap(8) hash file: refused or read, never a panic.
    let _ = mxd::table::db::parse(data);
    // The same bytes as a table process's lines (smtpd-tables(7)): parsed or refused.
    use mxd::table::proc::{parse_answer, parse_register, TableOp};
    for line in String::from_utf8_lossy(data).lines() {
        let _ = parse_register(line);
        for op in [TableOp::Check, TableOp::Lookup, TableOp::Fetch] {
            let _ = parse_answer(op, line);
        }
    }
}

/// Expansion never adds a ".." component, and address values never add a '/'.
pub fn expand(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let (template, rcpt, sender) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or("u@d"), parts.next().unwrap_or("s@d"));
    let ctx = mxd::config::expand::ExpandCtx {
        sender,
        rcpt,
        dest: rcpt,
        user_name: "joseph",
        user_dir: "/home/joseph",
        sub_addr_delim: '+',
    };
    if let Ok(out) = mxd::config::expand::expand(template, &ctx) {
        let count = |s: &str| s.split('/').filter(|c| *c == "..").count();
        assert!(count(&out) <= count(template), "{template:?} + {rcpt:?} -> {out:?}");
        if !template.contains("user.directory") {
            assert_eq!(out.matches('/').count(), template.matches('/').count(), "{template:?} + {rcpt:?} -> {out:?}");
        }
    }
}

/// Headers built from hostile values keep their structure: no CR, no control bytes, every
/// continuation line indented.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let (helo, rcpt, sender) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let h = mxd::headers::received(&mxd::headers::ReceivedInfo {
        helo,
        rdns: Some(sender),
        peer: mxd::headers::Peer::Local,
        by: "fuzz.test",
        proto: "ESMTP",
        id: mxd::envelope::MsgId(1),
        tls: Some((helo, rcpt, 256)),
        rcpt: Some(rcpt),
        date: std::time::UNIX_EPOCH,
    });
    let s = String::from_utf8(h).expect("ASCII or UTF-8");
    assert_eq!(s.matches('\n').count(), 4, "{s:?}");
    assert!(s.lines().skip(1).all(|l| l.starts_with('\t')));
    assert!(!s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{s:?}");
    for h in [mxd::headers::return_path(sender), mxd::headers::delivered_to(rcpt)] {
        assert_eq!(h.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(!h.contains(&b'\r'));
    }
}

/// The SMTP client fed arbitrary server bytes, in chunks sized by the first byte, through a
/// whole session (greeting, EHLO, maybe STARTTLS, a transaction of three recipients, QUIT):
/// no panic, a bounded output, and a transaction ends with one result per recipient.
pub fn smtp_client(data: &[u8]) {
    use mxd::smtp::client::{Client, ClientConfig, ClientEvent, Pipelining, TlsWant};
    let Some((first, input)) = data.split_first() else { return };
    let pipelining = [Pipelining::Never, Pipelining::Envelope, Pipelining::WithData][usize::from(*first % 3)];
    let cfg = ClientConfig {
        helo: "fuzz.test".into(),
        lmtp: first & 4 != 0,
        tls: if first & 8 != 0 { TlsWant::Opportunistic } else { TlsWant::Never },
        auth: (first & 16 != 0).then(|| ("u".to_string(), "p".to_string())),
        pipelining,
        all_or_nothing: first & 32 != 0,
        transcript: first & 64 != 0,
    };
    let mut c = Client::new(cfg);
    let mut started = false;
    let step = usize::from(*first >> 4) + 1;
    for chunk in input.chunks(step) {
        c.receive(chunk);
        assert!(c.output().len() < 64 * 1024, "client output grew without bound");
        let n = c.output().len();
        c.consume_output(n);
        while let Some(event) = c.poll_event() {
            match event {
                ClientEvent::StartTls => c.tls_started(),
                ClientEvent::Ready if !started => {
                    started = true;
                    c.send_mail("a@b.example", &["x@c.example", "y@c.example", "z@c.example"], b"Subject: s\n\n.\n");
                }
                ClientEvent::Ready => {}
                ClientEvent::Sent(results) => {
                    assert_eq!(results.len(), 3);
                    c.quit();
                }
                ClientEvent::Failed(_) | ClientEvent::Closed => return,
            }
        }
    }
    c.eof();
}

/// The frames between mxd's processes: a head decodes or is refused, never panics, and one
/// that decodes encodes back to the same bytes (nothing in it is ignored or guessed).
pub fn privsep_frame(data: &[u8]) {
    use mxd::privsep::frame;
    if let Ok(head) = frame::decode_head(data) {
        let mut again = Vec::new();
        frame::encode_head(&head, &mut again);
        assert_eq!(&again[4..], data, "a decoded head encodes differently");
    }
    let _ = frame::decode_verdict(data);
    let mut r = data;
    while let Ok(Some(f)) = frame::read_frame(&mut r, 4096) {
        assert!(f.len() <= 4096);
    }
    // Logins (issue 15) share the link: same promise.
    if let Ok(ask) = frame::decode_auth_ask(data) {
        let mut again = Vec::new();
        frame::encode_auth_ask(&ask, &mut again);
        assert_eq!(&again[4..], data, "a decoded login encodes differently");
    }
    if let Ok(frame::DeliveryAnswer::Auth(seq, v)) = frame::decode_answer(data) {
        let mut again = Vec::new();
        frame::encode_auth_verdict(seq, v, &mut again);
        assert_eq!(&again[4..], data, "a decoded login verdict encodes differently");
    }
    // Questions at RCPT and MAIL (issues 14, 15) too.
    if let Ok(ask) = frame::decode_lookup_ask(data) {
        let mut again = Vec::new();
        frame::encode_lookup_ask(&ask, &mut again);
        assert_eq!(&again[4..], data, "a decoded lookup encodes differently");
    }
    if let Ok(frame::DeliveryAnswer::Lookup(seq, v)) = frame::decode_answer(data) {
        let mut again = Vec::new();
        frame::encode_lookup_verdict(seq, v, &mut again);
        assert_eq!(&again[4..], data, "a decoded lookup verdict encodes differently");
    }
    let mut r = data;
    while let Ok(Some((_, f))) = frame::read_kinded(&mut r, 4096) {
        assert!(f.len() <= 4096);
    }
}

/// A filter process's output (issue 16): every line parses or is refused with a typed error,
/// and what parses stays within the line; a session fed the lines as a filter's answers
/// never panics, only decides what OpenSMTPD allows (refusals are 4xx/5xx replies, a 421
/// always disconnects), and its filtered message stays within the limit.
pub fn filter_line(data: &[u8]) {
    use mxd::filter::protocol::{self, valid_refusal, Endpoint, EventKind, Output, Register, Response, Timestamp};
    use mxd::filter::{
        Chain, ChainFilter, ChainFilterKind, FilterChain, FilterDecision, FilterEvent, FilterLink, Id, Limits, Now,
        Phase,
    };
    use mxd::smtp::reply::{FILTER_FAIL, FILTER_INVALID, FILTER_TOO_BIG};

    for line in data.split(|b| *b == b'\n') {
        let inside = |s: &str| assert!(!s.contains(['\n', '\r', '\0']), "{s:?}");
        match protocol::parse_output(line) {
            // The message's bytes: anything but a line end.
            Ok(Output::DataLine { line, .. }) => assert!(!line.contains(&b'\n') && !line.contains(&b'\r'), "{line:?}"),
            Ok(Output::Report { message: line, .. }) => inside(line),
            Ok(Output::Result { response, .. }) => match response {
                Response::Reject(r) | Response::Disconnect(r) | Response::Rewrite(r) | Response::Report(r) => inside(r),
                Response::Proceed | Response::Junk => {}
            },
            Ok(Output::Register(_)) | Err(_) => {}
        }
    }

    let mut reg = mxd::filter::Registration::default();
    for p in Phase::ALL {
        reg.handle(Register::Filter(p));
    }
    for e in EventKind::ALL {
        reg.handle(Register::Report(e));
    }
    reg.handle(Register::Ready);
    let regs = [("p".to_string(), reg)].into_iter().collect();
    let filters = vec![ChainFilter { name: "p".into(), kind: ChainFilterKind::Proc("p".into()) }];
    let tables = |_: &mxd::filter::TableRef, _: mxd::filter::LookupKind, _: &str| true;
    let chain = Arc::new(Chain::new(&FilterChain { filters }, &regs, Arc::new(tables)).expect("chain"));
    let now = Now { mono: Instant::now(), wall: Timestamp(Duration::from_secs(1_700_000_000)) };
    let link =
        FilterLink { rdns: None, fcrdns: false, src: Endpoint::Unix("/s".into()), dest: Endpoint::Unix("/s".into()) };
    let limits = Limits { timeout: Duration::from_secs(5), max_message: 256 };
    // Session 1, token base 0: the filter's token is 1, so "filter-result|1|1|…" is an answer.
    let mut sessions = mxd::filter::Sessions::default();
    sessions.insert(mxd::filter::SessionFilter::new(chain, Id(1), 0, limits, &link, now));
    let mut step = 0usize;
    for line in data.split(|b| *b == b'\n') {
        let s = sessions.get_mut(Id(1)).expect("session");
        if !s.is_waiting() {
            match step % 3 {
                0 => s.begin(now, Phase::RcptTo, "a@b"),
                1 => {
                    s.data_begin(now);
                    s.data_line(now, b".x");
                    s.data_end(now);
                }
                _ => s.begin(now, Phase::Commit, ""),
            }
            step += 1;
        }
        let _ = sessions.handle_line(now, "p", line);
        let s = sessions.get_mut(Id(1)).expect("session");
        let mut sends = 0;
        while s.poll_send().is_some() {
            sends += 1;
        }
        assert!(sends <= 8, "{sends} lines to send after one answer");
        while let Some(ev) = s.poll_event() {
            match ev {
                FilterEvent::Decided(_, FilterDecision::Reject(r)) => {
                    assert!(valid_refusal(&r) && !r.starts_with("421") || r == FILTER_TOO_BIG, "{r:?}")
                }
                FilterEvent::Decided(_, FilterDecision::Disconnect(r)) => {
                    assert!(valid_refusal(&r) || r == FILTER_INVALID || r == FILTER_FAIL, "{r:?}")
                }
                FilterEvent::Message(body) => {
                    assert!(body.len() <= 256);
                    assert!(body.is_empty() || body.ends_with(b"\n"));
                    assert!(!body.contains(&b'\r'));
                }
                FilterEvent::Decided(..) | FilterEvent::Reported { .. } | FilterEvent::AskTable(_) => {}
            }
        }
    }
}

/// Runs one named target on one input.
/// A DNS answer from an untrusted server, checked against questions of each type mxd asks
/// (the id taken from the input, so the full parse is reached): never a panic; a CNAME
/// chain never followed forever; records only of the asked type; never more records than
/// the bytes could hold.
pub fn dns_answer(data: &[u8]) {
    use mxd::dns::wire::{decode, Answer, Name, Question, Rdata, RecordType};
    let id = data.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    for (name, rtype) in [("example.test.", "MX"), ("mx.example.test.", "A"), ("2.0.192.in-addr.arpa.", "PTR")] {
        let rtype: RecordType = rtype.parse().expect("record type");
        let name = Name::from_ascii(name).expect("name");
        let q = Question { id, name, rtype };
        if let Ok(Answer::Records(r)) = decode(&q, data) {
            assert!(!r.is_empty() && r.len() <= data.len() / 11, "{} records from {} bytes", r.len(), data.len());
            for rec in r {
                let ok = match rec {
                    Rdata::Mx(..) => rtype == RecordType::MX,
                    Rdata::Addr(_) => rtype == RecordType::A,
                    Rdata::Name(_) => rtype == RecordType::PTR,
                };
                assert!(ok, "a record of another type than {rtype}");
            }
        }
    }
}

pub fn run(target: &str, data: &[u8]) {
    match target {
        "smtp_command" => smtp_command(data),
        "smtp_data" => smtp_data(data),
        "smtp_session" => smtp_session(data),
        "address" => address(data),
        "config" => config(data),
        "table" => table(data),
        "expand" => expand(data),
        "headers" => headers(data),
        "smtp_client" => smtp_client(data),
        "privsep_frame" => privsep_frame(data),
        "dns_answer" => dns_answer(data),
        "filter_line" => filter_line(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

pub const TARGETS: [&str; 12] = [
    "smtp_command",
    "smtp_data",
    "smtp_session",
    "address",
    "config",
    "table",
    "expand",
    "headers",
    "smtp_client",
    "privsep_frame",
    "dns_answer",
    "filter_line",
];
