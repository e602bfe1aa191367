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
