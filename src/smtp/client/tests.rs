use super::*;

fn cfg() -> ClientConfig {
    ClientConfig {
        helo: "node.test".into(),
        lmtp: false,
        tls: TlsWant::Opportunistic,
        auth: None,
        pipelining: Pipelining::Envelope,
        all_or_nothing: false,
        transcript: false,
    }
}

/// A client and what it has sent so far, as text.
struct Script {
    c: Client,
}

impl Script {
    fn new(cfg: ClientConfig) -> Script {
        Script { c: Client::new(cfg) }
    }

    /// The server says `reply`; returns what the client sends in answer.
    fn server(&mut self, reply: &str) -> String {
        self.c.receive(reply.as_bytes());
        self.sent()
    }

    fn sent(&mut self) -> String {
        let s = String::from_utf8_lossy(self.c.output()).into_owned();
        let n = self.c.output().len();
        self.c.consume_output(n);
        s
    }

    fn event(&mut self) -> Option<ClientEvent> {
        self.c.poll_event()
    }
}

/// The verdict for a refusal with this wire text ("550 5.1.1 text"), whatever the step.
fn perm(text: &str) -> RcptResult {
    assert!(text.starts_with('5'));
    verdict(text)
}

fn temp(text: &str) -> RcptResult {
    assert!(text.starts_with('4'));
    verdict(text)
}

fn verdict(text: &str) -> RcptResult {
    let (code, rest) = text.split_once(' ').unwrap();
    RcptResult::from_reply(Step::Rcpt, &ServerReply { code: code.parse().unwrap(), lines: vec![rest.into()] })
}

/// Results compared by kind and reply, not by the step they came at.
fn shape(event: Option<ClientEvent>) -> Option<Vec<String>> {
    match event {
        Some(ClientEvent::Sent(results)) => Some(
            results
                .iter()
                .map(|r| match r {
                    RcptResult::Ok => "ok".to_string(),
                    RcptResult::Temp(f) => format!("temp {f}"),
                    RcptResult::Perm(f) => format!("perm {f}"),
                })
                .collect(),
        ),
        _ => None,
    }
}

const EHLO_PLAIN: &str = "250-mx.test Hello\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
const EHLO_PIPE: &str = "250-mx.test Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

#[test]
fn reply_parser_handles_any_chunking_and_bounds() {
    let input = b"250-first\r\n250-second\r\n250 last\r\n421 4.3.0 bye\n";
    for cut in 0..input.len() {
        let mut p = ReplyParser::default();
        let mut got = Vec::new();
        for part in [&input[..cut], &input[cut..]] {
            p.push(part).unwrap();
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 2, "cut at {cut}");
        assert_eq!(got[0].lines, ["first", "second", "last"]);
        assert_eq!((got[1].code, got[1].text()), (421, "4.3.0 bye"));
    }
    let mut p = ReplyParser::default();
    assert_eq!(p.push(&vec![b'2'; MAX_LINE + 1]), Err(ProtocolError::LineTooLong));
    let mut p = ReplyParser::default();
    p.push(b"250-a\r\n251 b\r\n").unwrap();
    assert_eq!(p.next_reply(), Err(ProtocolError::MixedCodes));
    for bad in ["hello\r\n", "25\r\n", "250x\r\n", "099 low\r\n", "\u{e9}50 x\r\n"] {
        let mut p = ReplyParser::default();
        p.push(bad.as_bytes()).unwrap();
        assert!(matches!(p.next_reply(), Err(ProtocolError::BadLine(_))), "{bad:?}");
    }
    let mut p = ReplyParser::default();
    p.push("250-x\r\n".repeat(MAX_LINES + 1).as_bytes()).unwrap();
    assert_eq!(p.next_reply(), Err(ProtocolError::TooManyLines));
}

#[test]
fn extensions_from_ehlo() {
    let r = ServerReply {
        code: 250,
        lines: vec![
            "mx Hello".into(),
            "pipelining".into(),
            "SIZE 35882577".into(),
            "AUTH=LOGIN".into(),
            "AUTH plain login".into(),
            "STARTTLS".into(),
        ],
    };
    let e = Extensions::parse(&r);
    assert!(e.pipelining && e.starttls);
    assert_eq!(e.size, Some(35882577));
    assert_eq!(e.auth, ["LOGIN", "PLAIN", "LOGIN"]);
}

#[test]
fn dot_stuffing_and_line_endings() {
    let mut out = Vec::new();
    dot_stuff(b"a\n.b\r\n..c\nend", &mut out);
    assert_eq!(out, b"a\r\n..b\r\n...c\r\nend\r\n.\r\n");
    out.clear();
    dot_stuff(b"", &mut out);
    assert_eq!(out, b".\r\n");
}

#[test]
fn plain_transaction_one_command_at_a_time() {
    let mut d = Script::new(cfg());
    assert_eq!(d.server("220 mx.test ESMTP\r\n"), "EHLO node.test\r\n");
    assert_eq!(d.server(EHLO_PLAIN), "");
    assert_eq!(d.event(), Some(ClientEvent::Ready));
    d.c.send_mail("a@node.test", &["x@mx.test", "y@mx.test", "z@mx.test"], b"Subject: s\n\n.dot\n");
    assert_eq!(d.sent(), "MAIL FROM:<a@node.test>\r\n");
    assert_eq!(d.server("250 ok\r\n"), "RCPT TO:<x@mx.test>\r\n");
    assert_eq!(d.server("250 ok\r\n"), "RCPT TO:<y@mx.test>\r\n");
    assert_eq!(d.server("550 5.1.1 no such user\r\n"), "RCPT TO:<z@mx.test>\r\n");
    assert_eq!(d.server("451 4.3.0 later\r\n"), "DATA\r\n");
    assert_eq!(d.server("354 go\r\n"), "Subject: s\r\n\r\n..dot\r\n.\r\n");
    assert_eq!(d.server("250 2.0.0 queued\r\n"), "");
    assert_eq!(
        shape(d.event()),
        shape(Some(ClientEvent::Sent(vec![RcptResult::Ok, perm("550 5.1.1 no such user"), temp("451 4.3.0 later"),])))
    );
    d.c.quit();
    assert_eq!(d.sent(), "QUIT\r\n");
    d.server("221 bye\r\n");
    assert_eq!(d.event(), Some(ClientEvent::Closed));
}

#[test]
fn pipelining_sends_mail_and_rcpts_together_and_data_when_asked() {
    for pipelining in [Pipelining::Envelope, Pipelining::WithData] {
        let pipeline_data = pipelining == Pipelining::WithData;
        let mut d = Script::new(ClientConfig { pipelining, ..cfg() });
        d.server("220 mx\r\n");
        d.server(EHLO_PIPE);
        assert_eq!(d.event(), Some(ClientEvent::Ready));
        d.c.send_mail("a@b", &["x@c", "y@c"], b"hi\n");
        let data = if pipeline_data { "DATA\r\n" } else { "" };
        assert_eq!(d.sent(), format!("MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nRCPT TO:<y@c>\r\n{data}"));
        let after_rcpts = d.server("250 ok\r\n250 ok\r\n550 no\r\n");
        if pipeline_data {
            assert_eq!(after_rcpts, "");
            assert_eq!(d.server("354 go\r\n"), "hi\r\n.\r\n");
        } else {
            assert_eq!(after_rcpts, "DATA\r\n");
            assert_eq!(d.server("354 go\r\n"), "hi\r\n.\r\n");
        }
        d.server("250 queued\r\n");
        assert_eq!(shape(d.event()), shape(Some(ClientEvent::Sent(vec![RcptResult::Ok, perm("550 no")]))));
    }
}

#[test]
fn pipelined_data_with_every_recipient_refused_sends_an_empty_message() {
    let mut d = Script::new(ClientConfig { pipelining: Pipelining::WithData, ..cfg() });
    d.server("220 mx\r\n");
    d.server(EHLO_PIPE);
    d.event();
    d.c.send_mail("a@b", &["x@c"], b"secret\n");
    d.sent();
    // A server that answers 354 although no recipient was accepted gets no message.
    assert_eq!(d.server("250 ok\r\n550 no\r\n354 go\r\n"), ".\r\n");
    assert_eq!(d.server("554 no valid recipients\r\n"), "");
    assert_eq!(shape(d.event()), shape(Some(ClientEvent::Sent(vec![perm("550 no")]))));
}

#[test]
fn never_pipelining_waits_for_each_reply_even_when_offered() {
    let mut d = Script::new(ClientConfig { pipelining: Pipelining::Never, ..cfg() });
    d.server("220 mx\r\n");
    d.server(EHLO_PIPE);
    d.event();
    d.c.send_mail("a@b", &["x@c", "y@c"], b"m\n");
    assert_eq!(d.sent(), "MAIL FROM:<a@b>\r\n");
    assert_eq!(d.server("250 ok\r\n"), "RCPT TO:<x@c>\r\n");
    assert!(!d.c.message_sent());
    d.server("250 ok\r\n");
    d.server("250 ok\r\n");
    assert_eq!(d.server("354 go\r\n"), "m\r\n.\r\n");
    assert!(d.c.message_sent());
}

#[test]
fn mail_refused_gives_every_recipient_its_verdict() {
    let mut d = Script::new(cfg());
    d.server("220 mx\r\n");
    d.server(EHLO_PLAIN);
    d.event();
    d.c.send_mail("a@b", &["x@c", "y@c"], b"m\n");
    d.sent();
    assert_eq!(d.server("452 4.3.1 full\r\n"), "RSET\r\n");
    assert_eq!(d.event(), None, "the transaction ends once RSET is answered");
    d.server("250 ok\r\n");
    let t = temp("452 4.3.1 full");
    assert_eq!(shape(d.event()), shape(Some(ClientEvent::Sent(vec![t.clone(), t]))));
}

#[test]
fn all_or_nothing_sends_no_data_when_one_recipient_is_refused() {
    let mut d = Script::new(ClientConfig { all_or_nothing: true, ..cfg() });
    d.server("220 mx\r\n");
    d.server(EHLO_PLAIN);
    d.event();
    d.c.send_mail("a@b", &["x@c", "y@c"], b"m\n");
    d.sent();
    d.server("250 ok\r\n");
    d.server("250 ok\r\n");
    assert_eq!(d.server("550 no\r\n"), "RSET\r\n");
    d.server("250 ok\r\n");
    assert_eq!(shape(d.event()), shape(Some(ClientEvent::Sent(vec![RcptResult::Ok, perm("550 no")]))));
}

#[test]
fn lmtp_gets_one_reply_per_accepted_recipient() {
    let mut d = Script::new(ClientConfig { lmtp: true, tls: TlsWant::Never, ..cfg() });
    assert_eq!(d.server("220 lmtp\r\n"), "LHLO node.test\r\n");
    d.server("250-lmtp\r\n250 PIPELINING\r\n");
    d.event();
    d.c.send_mail("a@b", &["x@c", "nobody@c", "y@c"], b"m\n");
    d.sent();
    assert_eq!(d.server("250 ok\r\n250 ok\r\n550 unknown\r\n250 ok\r\n"), "DATA\r\n");
    d.server("354 go\r\n");
    d.server("250 2.0.0 x saved\r\n452 4.2.2 y over quota\r\n");
    assert_eq!(
        shape(d.event()),
        shape(Some(ClientEvent::Sent(vec![RcptResult::Ok, perm("550 unknown"), temp("452 4.2.2 y over quota"),])))
    );
}

#[test]
fn starttls_discards_plaintext_and_says_ehlo_again() {
    let mut d = Script::new(ClientConfig { tls: TlsWant::Required, ..cfg() });
    d.server("220 mx\r\n");
    assert_eq!(d.server("250-mx\r\n250 STARTTLS\r\n"), "STARTTLS\r\n");
    // An injected reply after the 220 must not be taken as the answer to what follows.
    assert_eq!(d.server("220 go ahead\r\n250 injected\r\n"), "");
    assert_eq!(d.event(), Some(ClientEvent::StartTls));
    assert!(!d.c.wants_read());
    d.c.tls_started();
    assert_eq!(d.sent(), "EHLO node.test\r\n");
    d.server("250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(d.event(), Some(ClientEvent::Ready));
    assert!(d.c.tls_active());
}

#[test]
fn tls_required_but_not_offered_fails() {
    let mut d = Script::new(ClientConfig { tls: TlsWant::Required, ..cfg() });
    d.server("220 mx\r\n");
    d.server(EHLO_PLAIN);
    assert_eq!(d.event(), Some(ClientEvent::Failed(SessionError::NoStartTls)));
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut d = Script::new(ClientConfig { tls: TlsWant::Opportunistic, ..cfg() });
    d.server("220 mx\r\n");
    assert_eq!(d.server("502 5.5.1 what\r\n"), "HELO node.test\r\n");
    d.server("250 mx\r\n");
    assert_eq!(d.event(), Some(ClientEvent::Ready));
}

#[test]
fn auth_plain_or_login_only_over_tls() {
    let auth = Some(("joe".to_string(), "secret".to_string()));
    // Plaintext: refused before anything is sent.
    let mut d = Script::new(ClientConfig { tls: TlsWant::Never, auth: auth.clone(), ..cfg() });
    d.server("220 mx\r\n");
    assert_eq!(d.server("250-mx\r\n250 AUTH PLAIN\r\n"), "");
    assert_eq!(d.event(), Some(ClientEvent::Failed(SessionError::AuthWithoutTls)));
    // PLAIN in one line.
    let mut d = Script::new(ClientConfig { tls: TlsWant::Implicit, auth: auth.clone(), ..cfg() });
    d.server("220 mx\r\n");
    assert_eq!(d.server("250-mx\r\n250 AUTH LOGIN PLAIN\r\n"), "AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n");
    d.server("235 ok\r\n");
    assert_eq!(d.event(), Some(ClientEvent::Ready));
    // LOGIN when that is all there is.
    let mut d = Script::new(ClientConfig { tls: TlsWant::Implicit, auth: auth.clone(), ..cfg() });
    d.server("220 mx\r\n");
    assert_eq!(d.server("250-mx\r\n250 AUTH LOGIN\r\n"), "AUTH LOGIN\r\n");
    assert_eq!(d.server("334 VXNlcm5hbWU6\r\n"), "am9l\r\n");
    assert_eq!(d.server("334 UGFzc3dvcmQ6\r\n"), "c2VjcmV0\r\n");
    d.server("535 5.7.8 no\r\n");
    assert!(matches!(d.event(), Some(ClientEvent::Failed(SessionError::Refused { step: Step::Auth, .. }))));
}

#[test]
fn broken_servers_end_the_session_with_an_error() {
    let mut d = Script::new(cfg());
    d.server("554 go away\r\n");
    assert!(matches!(d.event(), Some(ClientEvent::Failed(SessionError::Refused { step: Step::Greeting, .. }))));
    let mut d = Script::new(cfg());
    d.server("220 mx\r\n");
    d.server(EHLO_PLAIN);
    d.event();
    d.server("250 nobody asked\r\n");
    assert!(matches!(d.event(), Some(ClientEvent::Failed(SessionError::Protocol(ProtocolError::Unsolicited(_))))));
    let mut d = Script::new(cfg());
    d.server("220 mx\r\n");
    d.c.eof();
    assert_eq!(d.event(), Some(ClientEvent::Failed(SessionError::Closed(Step::Ehlo))));
    assert_eq!(d.server("250 late\r\n"), "", "nothing after the end");
}

#[test]
fn transcript_shows_the_dialogue_but_no_credentials_or_body() {
    let auth = Some(("joe".to_string(), "secret".to_string()));
    let mut d = Script::new(ClientConfig { tls: TlsWant::Implicit, auth, transcript: true, ..cfg() });
    d.server("220 mx\r\n");
    d.server("250-mx\r\n250 AUTH LOGIN\r\n");
    d.server("334 VXNlcm5hbWU6\r\n");
    d.server("334 UGFzc3dvcmQ6\r\n");
    d.server("235 ok\r\n");
    d.c.send_mail("a@b", &["x@c"], b"body\n");
    d.server("250 ok\r\n");
    d.server("250 ok\r\n");
    d.server("354 go\r\n");
    let t = d.c.take_transcript().join("\n");
    assert!(t.starts_with("<<< 220 mx\n>>> EHLO node.test\n<<< 250 AUTH LOGIN\n>>> AUTH LOGIN\n"), "{t}");
    assert!(t.contains(">>> [credentials]") && !t.contains("c2VjcmV0") && !t.contains("secret"), "{t}");
    assert!(t.ends_with(">>> DATA\n<<< 354 go\n>>> [9 bytes of message]"), "{t}");
}

#[test]
fn a_full_session_is_told_from_a_refused_message() {
    let at =
        |step, code, text: &str| vec![RcptResult::from_reply(step, &ServerReply { code, lines: vec![text.into()] }); 2];
    for (step, code, text, full) in [
        (Step::Mail, 452, "4.5.3 Too many recipients: Too many messages sent", true),
        (Step::Mail, 452, "too many messages in this connection", true),
        (Step::Mail, 452, "4.3.1 Insufficient system storage", false),
        (Step::Mail, 451, "4.5.3 Too many recipients", false),
        (Step::Rcpt, 452, "4.5.3 Too many recipients", false),
        (Step::Mail, 250, "2.0.0 Ok", false),
    ] {
        assert_eq!(RcptResult::session_full(&at(step, code, text)), full, "{step:?} {code} {text}");
    }
    assert!(!RcptResult::session_full(&[]));
}
