//! Session dialogues with a virtual clock: no sockets, no sleeps.

use super::*;

struct Dialog {
    s: Session<AcceptAll>,
    now: Instant,
    out: String,
}

impl Dialog {
    fn new(tls: TlsPolicy) -> Dialog {
        let cfg = SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 1000,
            max_rcpt: 3,
            max_errors: 5,
            idle_timeout: Duration::from_secs(300),
            tls,
            tls_active: false,
        };
        let now = Instant::now();
        let mut d = Dialog { s: Session::new(Arc::new(cfg), AcceptAll::default(), now), now, out: String::new() };
        d.expect("220 mx.test ESMTP mxd\r\n");
        d
    }

    /// Sends bytes; returns how many the session consumed.
    fn send(&mut self, bytes: &str) -> usize {
        let n = self.s.handle_input(bytes.as_bytes(), self.now);
        self.out.push_str(&String::from_utf8_lossy(self.s.output()));
        let len = self.s.output().len();
        self.s.consume_output(len);
        n
    }

    /// Asserts that the output so far starts with `prefix`, and drops that reply.
    fn expect(&mut self, prefix: &str) {
        self.out.push_str(&String::from_utf8_lossy(self.s.output()));
        let len = self.s.output().len();
        self.s.consume_output(len);
        assert!(self.out.starts_with(prefix), "expected {prefix:?}, got {:?}", self.out);
        let end = self.out[prefix.len()..].find("\r\n").map_or(self.out.len(), |i| prefix.len() + i + 2);
        self.out.drain(..end);
    }

    fn expect_nothing(&mut self) {
        self.out.push_str(&String::from_utf8_lossy(self.s.output()));
        assert!(self.out.is_empty(), "unexpected output {:?}", self.out);
    }

    fn message(&mut self) -> Message<()> {
        match self.s.poll_event() {
            Some(Event::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[test]
fn full_transaction_waits_for_commit() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("EHLO client.test\r\n");
    d.expect("250-mx.test Hello client.test");
    for ext in
        ["250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-SIZE 1000", "250-PIPELINING", "250-SMTPUTF8", "250 HELP"]
    {
        d.expect(ext);
    }
    d.send("MAIL FROM:<a@example.org>\r\n");
    d.expect("250 2.1.0 Ok");
    d.send("RCPT TO:<b@example.org>\r\n");
    d.expect("250 2.1.5 ");
    d.send("DATA\r\n");
    d.expect("354 ");
    let consumed = d.send("Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
    assert_eq!(consumed, "Subject: x\r\n\r\n..dot\r\n.\r\n".len(), "input after the message waits");
    d.expect_nothing();
    assert!(!d.s.wants_read());
    let m = d.message();
    assert_eq!(m.body, b"Subject: x\n\n.dot\n");
    assert_eq!(m.mail_from, "a@example.org");
    assert_eq!(m.rcpts.len(), 1);
    d.s.handle_commit(MsgId(999), Outcome::Ok);
    d.expect_nothing();
    d.s.handle_commit(m.id, Outcome::Ok);
    d.expect(&format!("250 2.0.0 {} Message accepted for delivery", m.id));
    d.send("QUIT\r\n");
    d.expect("221 2.0.0 Bye");
    assert!(d.s.is_closing());
}

#[test]
fn tempfail_commit_is_451_and_session_continues() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n");
    for p in ["250 mx.test Hello c", "250 2.1.0", "250 2.1.5", "354"] {
        d.expect(p);
    }
    let m = d.message();
    assert_eq!(m.mail_from, "");
    d.s.handle_commit(m.id, Outcome::TempFail("disk full".into()));
    d.expect("451 4.3.0");
    d.send("MAIL FROM:<a@example.org>\r\n");
    d.expect("250 2.1.0");
}

#[test]
fn pipelined_replies_in_order() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("EHLO c\r\n");
    d.out.clear();
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<refuse@example.org>\r\nRCPT TO:<ok@example.org>\r\nRSET\r\nNOOP\r\n");
    for p in ["250 2.1.0", "550 5.1.1", "250 2.1.5", "250 2.0.0 Reset", "250 2.0.0 Ok"] {
        d.expect(p);
    }
}

#[test]
fn sequence_errors() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("503 5.5.1");
    d.send("HELO c\r\nRCPT TO:<a@b.c>\r\n");
    d.expect("250 ");
    d.expect("503 5.5.1");
    d.send("DATA\r\n");
    d.expect("503 5.5.1");
    d.send("MAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n");
    d.expect("250 2.1.0");
    d.expect("503 5.5.1 Invalid command: Only one");
    d.expect("503 5.5.1 Invalid command: No recipient");
}

#[test]
fn too_many_errors_closes() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    for _ in 0..4 {
        d.send("XYZZY\r\n");
        d.expect("500 5.5.1");
    }
    d.send("XYZZY\r\nNOOP\r\n");
    d.expect("500 5.5.1");
    d.expect("421 4.7.0");
    d.expect_nothing();
    assert!(d.s.is_closing());
    assert!(matches!(d.s.poll_event(), Some(Event::Close(CloseReason::TooManyErrors))));
}

#[test]
fn long_command_line_is_discarded_with_bounded_memory() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    let chunk = "x".repeat(4096);
    for _ in 0..100 {
        assert_eq!(d.send(&chunk), chunk.len(), "long line consumed, not buffered by the caller");
    }
    d.send("\r\nNOOP\r\n");
    d.expect("500 5.5.1 Invalid command: Line too long");
    d.expect("250 2.0.0 Ok");
    // A partial short line is left to the caller until its LF arrives.
    assert_eq!(d.send("NOO"), 0);
}

#[test]
fn limits_size_and_recipients() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("EHLO c\r\n");
    d.out.clear();
    d.send("MAIL FROM:<a@b.c> SIZE=2000\r\n");
    d.expect("552 5.3.4");
    d.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<1@b.c>\r\nRCPT TO:<2@b.c>\r\nRCPT TO:<3@b.c>\r\nRCPT TO:<4@b.c>\r\n");
    for p in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"] {
        d.expect(p);
    }
    d.send("DATA\r\n");
    d.expect("354");
    let line = format!("{}\r\n", "z".repeat(100));
    for _ in 0..20 {
        d.send(&line);
    }
    d.send(".\r\n");
    d.expect("552 5.3.4");
    // Each refusal is reported for the log, in order; no message.
    let steps: Vec<(TxStep, u16)> =
        std::iter::from_fn(|| d.s.poll_event()).map(refused).map(|r| (r.step, r.reply.code)).collect();
    assert_eq!(steps, [(TxStep::Mail, 552), (TxStep::Rcpt, 452), (TxStep::Data, 552)]);
    d.send("NOOP\r\n");
    d.expect("250");
}

#[test]
fn bare_lf_in_data_refuses_and_closes() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@b.c>\r\nDATA\r\n");
    d.out.clear();
    d.send("hello\n.\nMAIL FROM:<evil@b.c>\r\n");
    d.expect("554 5.5.2");
    assert!(d.s.is_closing());
    assert_eq!(refused(d.s.poll_event().unwrap()).reply, reply::BARE_EOL);
    assert!(matches!(d.s.poll_event(), Some(Event::Close(CloseReason::Protocol))));
}

#[test]
fn starttls_required_and_reset() {
    let mut d = Dialog::new(TlsPolicy::Require);
    d.send("EHLO c\r\n");
    assert!(d.out.contains("250-STARTTLS"));
    d.out.clear();
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("530 5.7.0 Must issue a STARTTLS command first");
    assert_eq!(
        refused(d.s.poll_event().unwrap()),
        Refusal { step: TxStep::Mail, address: None, reply: reply::TLS_REQUIRED }
    );
    let consumed = d.send("STARTTLS\r\nMAIL FROM:<evil@b.c>\r\n");
    assert_eq!(consumed, "STARTTLS\r\n".len(), "injected command not consumed");
    d.expect("220 2.0.0");
    assert!(matches!(d.s.poll_event(), Some(Event::StartTls)));
    assert!(!d.s.wants_read());
    d.s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into(), bits: 256 });
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("503 5.5.1");
    d.send("EHLO c\r\n");
    assert!(!d.out.contains("STARTTLS"), "{}", d.out);
    d.out.clear();
    d.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<x@b.c>\r\nDATA\r\nhi\r\n.\r\n");
    let m = {
        for p in ["250 2.1.0", "250 2.1.5", "354"] {
            d.expect(p);
        }
        d.message()
    };
    assert_eq!(m.tls.map(|t| t.version), Some("TLSv1.3".to_owned()));
}

#[test]
fn idle_timeout_is_421() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    let later = d.now + Duration::from_secs(299);
    d.s.handle_timeout(later);
    d.expect_nothing();
    d.s.handle_timeout(d.now + Duration::from_secs(301));
    d.expect("421 4.4.2");
    assert!(d.s.is_closing());
}

#[test]
fn eof_mid_data_delivers_nothing() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@b.c>\r\nDATA\r\npartial body\r\n");
    d.s.handle_eof();
    assert!(matches!(d.s.poll_event(), Some(Event::Close(CloseReason::Eof))));
    assert!(d.s.poll_event().is_none());
}

#[test]
fn eight_bit_addresses_need_smtputf8() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("EHLO c\r\n");
    d.out.clear();
    d.send("MAIL FROM:<jörg@b.c>\r\n");
    d.expect("553 5.6.7");
    d.send("MAIL FROM:<jörg@b.c> SMTPUTF8\r\nRCPT TO:<zoë@b.c>\r\n");
    d.expect("250 2.1.0");
    d.expect("250 2.1.5");
}

#[test]
fn arbitrary_bytes_never_panic_and_replies_are_well_formed() {
    let inputs: [&[u8]; 5] =
        [b"\0\0\0\r\n", b"\xff\xfe\r\nEHLO \x00\r\n", b"MAIL FROM:<\"\\\r\n", b"RCPT TO:<@:>\r\n", b"\r\n\r\n\n\n"];
    for input in inputs {
        let mut s = Session::new(
            Arc::new(SessionConfig {
                hostname: "h".into(),
                max_message_size: 10,
                max_rcpt: 1,
                max_errors: 100,
                idle_timeout: Duration::from_secs(1),
                tls: TlsPolicy::Offer,
                tls_active: false,
            }),
            AcceptAll::default(),
            Instant::now(),
        );
        s.handle_input(input, Instant::now());
        for line in String::from_utf8_lossy(s.output()).split_terminator("\r\n") {
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).expect("numeric code");
            assert!((200..600).contains(&code), "{line}");
        }
    }
}

fn refused<R: std::fmt::Debug>(event: Event<R>) -> Refusal {
    match event {
        Event::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// AUTH (issue 15). "\0joseph\0s3cret" in base64:
const PLAIN_JOSEPH: &str = "AGpvc2VwaABzM2NyZXQ=";

impl Dialog {
    /// A session on an auth listener, after STARTTLS and a fresh EHLO.
    fn tls_with_auth(policy: AuthPolicy) -> Dialog {
        let mut d = Dialog::new(TlsPolicy::Offer);
        d.s.set_auth_config(AuthConfig::new(policy));
        d.send("EHLO c\r\n");
        assert!(!d.out.contains("AUTH"), "AUTH offered on plaintext: {}", d.out);
        d.out.clear();
        d.send("STARTTLS\r\n");
        d.expect("220 2.0.0");
        assert!(matches!(d.s.poll_event(), Some(Event::StartTls)));
        d.s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into(), bits: 256 });
        d.send("EHLO c\r\n");
        assert!(d.out.contains("250-AUTH PLAIN LOGIN\r\n"), "{}", d.out);
        d.out.clear();
        d
    }

    fn auth_request(&mut self) -> AuthRequest {
        let req = self.s.poll_auth().expect("credentials handed out");
        assert!(!self.s.wants_read(), "input paused while the server checks");
        assert_eq!(self.s.poll_timeout(), None, "no idle timeout while the server checks");
        req
    }

    fn events(&mut self) -> Vec<Event<()>> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }
}

#[test]
fn auth_is_offered_only_under_tls_on_an_auth_listener() {
    // Not configured: never offered, refused with OpenSMTPD's text even under TLS.
    let mut d = Dialog::new(TlsPolicy::Offer);
    d.send("EHLO c\r\nSTARTTLS\r\n");
    d.out.clear();
    d.s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), bits: 256 });
    d.send("EHLO c\r\n");
    assert!(!d.out.contains("AUTH"), "{}", d.out);
    d.out.clear();
    d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n"));
    d.expect("503 5.5.1 Invalid command: Command not supported");

    // Configured, before STARTTLS: not offered, and the credentials are never taken.
    let mut d = Dialog::new(TlsPolicy::Offer);
    d.s.set_auth_config(AuthConfig::new(AuthPolicy::Optional));
    d.send("EHLO c\r\n");
    assert!(!d.out.contains("AUTH"), "{}", d.out);
    d.out.clear();
    d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\nAUTH LOGIN\r\n"));
    d.expect("503 5.5.1 Invalid command: Command not supported");
    d.expect("503 5.5.1 Invalid command: Command not supported");
    assert!(d.s.poll_auth().is_none());
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("250 2.1.0");
}

#[test]
fn auth_plain_initial_response_waits_for_the_verdict() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    let line = format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n");
    let consumed = d.send(&format!("{line}MAIL FROM:<joseph@b.c>\r\n"));
    assert_eq!(consumed, line.len(), "pipelined MAIL waits for the verdict");
    d.expect_nothing();
    let req = d.auth_request();
    assert_eq!(req.user, "joseph");
    assert_eq!(req.password.expose(), b"s3cret");
    assert!(!format!("{req:?}").contains("s3cret"), "{req:?}");
    d.s.handle_auth(AuthId(req.id.0 + 1), AuthResult::Ok);
    d.expect_nothing();
    d.s.handle_auth(req.id, AuthResult::Ok);
    d.expect("235 2.0.0 Authentication succeeded");
    assert!(d.s.wants_read());
    d.send("MAIL FROM:<joseph@b.c>\r\nRCPT TO:<x@b.c>\r\nDATA\r\nhi\r\n.\r\n");
    for p in ["250 2.1.0", "250 2.1.5", "354"] {
        d.expect(p);
    }
    assert_eq!(d.message().auth.as_deref(), Some("joseph"), "the Received header says ESMTPSA");
    d.s.handle_commit(MsgId(1), Outcome::Ok);
    d.out.clear();
    // Once only: no longer offered, and a second AUTH is 503.
    d.send("EHLO c\r\n");
    assert!(!d.out.contains("AUTH"), "{}", d.out);
    d.out.clear();
    d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n"));
    d.expect("503 5.5.1 Invalid command: Already authenticated");
    assert!(d.s.poll_auth().is_none());
}

#[test]
fn auth_plain_with_a_334_continuation() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("AUTH PLAIN\r\n");
    assert_eq!(d.out, "334 \r\n");
    d.out.clear();
    // "admin\0joseph\0s3cret": the authorization identity is ignored.
    d.send("YWRtaW4Aam9zZXBoAHMzY3JldA==\r\n");
    d.expect_nothing();
    let req = d.auth_request();
    assert_eq!((req.user.as_str(), req.password.expose()), ("joseph", &b"s3cret"[..]));
    d.s.handle_auth(req.id, AuthResult::Ok);
    d.expect("235 2.0.0");
}

#[test]
fn auth_login_exchange() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    d.send("AUTH LOGIN\r\n");
    d.expect("334 VXNlcm5hbWU6\r\n");
    d.send("am9zZXBo\r\n");
    d.expect("334 UGFzc3dvcmQ6\r\n");
    d.send("czNjcmV0\r\n");
    d.expect_nothing();
    let req = d.auth_request();
    assert_eq!((req.user.as_str(), req.password.expose()), ("joseph", &b"s3cret"[..]));
    d.s.handle_auth(req.id, AuthResult::Failed);
    d.expect("535 5.7.8 Authentication failed");
    // The user name as the initial response skips the first challenge.
    d.send("AUTH LOGIN am9zZXBo\r\n");
    d.expect("334 UGFzc3dvcmQ6\r\n");
    d.send("czNjcmV0\r\n");
    let req = d.auth_request();
    d.s.handle_auth(req.id, AuthResult::Ok);
    d.expect("235 2.0.0");
}

#[test]
fn auth_cancel_malformed_and_unknown_mechanisms() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("AUTH\r\nAUTH PLAIN\r\nAGpvc2VwaABzM2NyZXQ\r\nNOOP\r\n");
    d.expect("501 5.5.4 Invalid command arguments: No parameters given");
    d.expect("334 ");
    d.expect("501 5.5.2 Syntax error"); // padding missing
    d.expect("250 2.0.0 Ok");
    assert!(d.s.poll_auth().is_none(), "nothing malformed reaches the server");

    // Each mistake is counted (a cancel too), so the error limit (5 here) bounds a client
    // that loops on them.
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("AUTH LOGIN\r\n*\r\nNOOP\r\n");
    d.expect("334 VXNlcm5hbWU6");
    d.expect("501 5.7.0 Authentication canceled");
    d.expect("250 2.0.0 Ok");
    d.send("AUTH PLAIN\r\n*\r\n");
    d.expect("334 ");
    d.expect("501 5.7.0");
    d.send("AUTH PLAIN not-base64!\r\n");
    d.expect("501 5.5.2 Syntax error");
    d.send("AUTH LOGIN\r\nam8gc2VwaA==\r\n");
    d.expect("334 ");
    d.expect("501 5.5.2"); // "jo seph"
    d.send("AUTH CRAM-MD5\r\n");
    d.expect("504 5.7.4 Security features not supported");
    d.expect("421 4.7.0 Too many errors");
    assert!(d.s.is_closing());
    assert!(d.s.poll_auth().is_none());
}

#[test]
fn auth_over_long_line_is_bounded_and_ends_the_exchange() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("AUTH PLAIN\r\n");
    d.expect("334 ");
    let chunk = "A".repeat(4096);
    for _ in 0..50 {
        assert_eq!(d.send(&chunk), chunk.len(), "consumed, not buffered by the caller");
    }
    d.send("==\r\nNOOP\r\n");
    d.expect("500 5.5.1 Invalid command: Line too long");
    d.expect("250 2.0.0 Ok");
    // An initial response longer than a command line, too.
    d.send(&format!("AUTH PLAIN {}\r\nNOOP\r\n", "A".repeat(600)));
    d.expect("500 5.5.1 Invalid command: Line too long");
    d.expect("250 2.0.0 Ok");
    assert!(d.s.poll_auth().is_none());
}

#[test]
fn auth_needs_helo_and_no_transaction() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), bits: 256 });
    d.send("AUTH PLAIN\r\n");
    d.expect("503 5.5.1 Invalid command: Command not allowed at this point.");
    d.send("EHLO c\r\n");
    d.out.clear();
    d.send(&format!("MAIL FROM:<a@b.c>\r\nAUTH PLAIN {PLAIN_JOSEPH}\r\n"));
    d.expect("250 2.1.0");
    d.expect("503 5.5.1 Invalid command: Command not allowed at this point.");
    assert!(d.s.poll_auth().is_none());
}

#[test]
fn auth_required_refuses_mail_before_login() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("530 5.7.0 Must issue an AUTH command first");
    assert_eq!(
        refused(d.s.poll_event().unwrap()),
        Refusal { step: TxStep::Mail, address: None, reply: reply::AUTH_REQUIRED }
    );
    // Optional lets it through.
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("MAIL FROM:<a@b.c>\r\n");
    d.expect("250 2.1.0");
}

#[test]
fn auth_failures_are_logged_by_user_and_end_the_session() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    for attempt in 1..=3 {
        d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n"));
        let req = d.auth_request();
        d.s.handle_auth(req.id, AuthResult::Failed);
        d.expect("535 5.7.8 Authentication failed");
        let events = d.events();
        let log = format!("{events:?}");
        assert!(log.contains("joseph") && !log.contains("s3cret"), "{log}");
        let refusals: Vec<Refusal> =
            events.into_iter().filter(|e| matches!(e, Event::Refused(_))).map(refused).collect();
        assert_eq!(
            refusals[0],
            Refusal { step: TxStep::Auth, address: Some("joseph".into()), reply: reply::AUTH_FAILED }
        );
        if attempt < 3 {
            assert!(!d.s.is_closing());
        } else {
            d.expect("421 4.7.0 Too many authentication failures");
            assert_eq!(refusals[1].reply, reply::TOO_MANY_AUTH_FAILURES);
            assert!(log.contains("Close(TooManyAuthFailures)"), "{log}");
            assert!(d.s.is_closing());
        }
    }
}

#[test]
fn auth_tempfail_is_454_and_not_counted() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    for _ in 0..5 {
        d.send("AUTH LOGIN am9zZXBo\r\n");
        d.expect("334 UGFzc3dvcmQ6");
        d.send("czNjcmV0\r\n");
        let req = d.auth_request();
        d.s.handle_auth(req.id, AuthResult::TempFail);
        d.expect("454 4.7.0 Temporary authentication failure");
    }
    assert!(!d.s.is_closing());
    let r = d.events().into_iter().map(refused).next_back().unwrap();
    assert_eq!((r.step, r.address.as_deref()), (TxStep::Auth, Some("joseph")));
}

#[test]
fn auth_exchange_idle_timeout_and_eof_while_waiting() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send("AUTH LOGIN\r\n");
    d.expect("334 ");
    d.s.handle_timeout(d.now + Duration::from_secs(301));
    d.expect("421 4.4.2");
    assert!(d.s.is_closing());

    let mut d = Dialog::tls_with_auth(AuthPolicy::Optional);
    d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n"));
    let req = d.auth_request();
    d.s.handle_timeout(d.now + Duration::from_secs(1000));
    d.expect_nothing();
    d.s.handle_eof();
    assert!(d.s.is_closing());
    d.s.handle_auth(req.id, AuthResult::Ok);
    d.expect_nothing();
}

#[test]
fn auth_blocked_by_the_servers_flood_limit_is_421_at_once() {
    let mut d = Dialog::tls_with_auth(AuthPolicy::Required);
    d.send(&format!("AUTH PLAIN {PLAIN_JOSEPH}\r\n"));
    let req = d.auth_request();
    d.s.handle_auth(req.id, AuthResult::Blocked);
    d.expect("421 4.7.0 Too many authentication failures from your address");
    let log = format!("{:?}", d.events());
    assert!(log.contains("Close(TooManyAuthFailures)") && log.contains("joseph"), "{log}");
    assert!(d.s.is_closing());
}

/// Issues 14, 15: a RCPT the server must decide parks the session (AcceptAll asks about
/// addresses starting with `ask`); pipelined commands wait behind it, in order.
#[test]
fn a_parked_rcpt_holds_pipelined_commands_until_its_answer() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    let input = "HELO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n";
    let n = d.send(input);
    assert_eq!(&input[..n], "HELO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\n", "stops at the question");
    d.expect("250 mx.test Hello c");
    d.expect("250 2.1.0 Ok");
    d.expect_nothing();
    assert!(!d.s.wants_read() && d.s.poll_timeout().is_none() && d.s.awaiting_lookup());
    let req = d.s.poll_lookup().expect("a question");
    assert_eq!((req.rcpt.as_deref(), req.mail_from.as_str(), req.helo.as_str()), (Some("ask@x.test"), "s@x.test", "c"));
    assert!(d.s.poll_lookup().is_none(), "asked once");
    // A late answer to another question changes nothing.
    d.s.handle_lookup(LookupId(req.id.0.wrapping_add(7)), Ok(()));
    d.expect_nothing();
    assert!(!d.s.wants_read());
    d.s.handle_lookup(req.id, Err(reply::UNKNOWN_RCPT));
    d.expect("550 5.1.1 Invalid recipient");
    assert!(matches!(d.s.poll_event(), Some(Event::Refused(r)) if r.address.as_deref() == Some("ask@x.test")));
    assert!(d.s.wants_read());
    d.send(&input[n..]);
    d.expect("250 2.1.5 ");
    d.expect("354");
    assert!(d.s.in_data(), "the refused recipient is not in the transaction, the other one is");
}

#[test]
fn a_parked_rcpt_accepted_and_a_parked_sender_refused() {
    let mut d = Dialog::new(TlsPolicy::Unavailable);
    d.send("HELO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\n");
    let req = d.s.poll_lookup().unwrap();
    d.s.handle_lookup(req.id, Ok(()));
    for p in ["250 mx.test Hello c", "250 2.1.0", "250 2.1.5 Destination address valid"] {
        d.expect(p);
    }
    d.send("RSET\r\nMAIL FROM:<ask@x.test>\r\n");
    d.expect("250 2.0.0 Reset state");
    let req = d.s.poll_lookup().expect("MAIL asks");
    assert_eq!((req.rcpt, req.mail_from.as_str()), (None, "ask@x.test"));
    d.s.handle_lookup(req.id, Err(reply::SENDER_NOT_ALLOWED));
    d.expect("550 5.7.1 Sender rejected");
    // No transaction: RCPT needs MAIL again.
    d.send("RCPT TO:<b@x.test>\r\n");
    d.expect("503 ");
    // A client that leaves while parked just ends the session; the late answer is ignored.
    d.send("MAIL FROM:<ask@x.test>\r\n");
    let req = d.s.poll_lookup().unwrap();
    d.s.handle_eof();
    assert!(d.s.is_closing());
    d.s.handle_lookup(req.id, Ok(()));
    d.expect_nothing();
}
