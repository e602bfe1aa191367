//! Lines both ways, compared with what OpenSMTPD writes and reads.

use super::*;

const TS: Timestamp = Timestamp(Duration::from_micros(1_576_146_008_006_099));
const SID: Id = Id(0x7641df9771b4ed00);

#[test]
fn report_lines_are_opensmtpds() {
    let src = Endpoint::Inet("199.185.178.25:33174".parse().unwrap());
    let dest = Endpoint::Inet("45.77.67.80:25".parse().unwrap());
    let cases: Vec<(Report<'_>, &str)> = vec![
        (
            Report::LinkConnect { rdns: "mail.openbsd.org", fcrdns: Fcrdns::Pass, src: &src, dest: &dest },
            "link-connect|7641df9771b4ed00|mail.openbsd.org|pass|199.185.178.25:33174|45.77.67.80:25",
        ),
        (Report::LinkDisconnect, "link-disconnect|7641df9771b4ed00"),
        (Report::LinkIdentify { ehlo: true, identity: "x.test" }, "link-identify|7641df9771b4ed00|EHLO|x.test"),
        (
            Report::TxMail { msgid: 0xab, result: TxResult::Ok, address: "a@b" },
            "tx-mail|7641df9771b4ed00|000000ab|ok|a@b",
        ),
        (Report::TxEnvelope { msgid: 1, envelope_id: 2 }, "tx-envelope|7641df9771b4ed00|00000001|0000000000000002"),
        (Report::TxCommit { msgid: 1, size: 42 }, "tx-commit|7641df9771b4ed00|00000001|42"),
        (
            Report::FilterResponse { phase: Phase::Connect, response: ResponseKind::Reject, param: Some("550 no") },
            "filter-response|7641df9771b4ed00|connected|reject|550 no",
        ),
        (
            Report::FilterReport { kind: ReporterKind::Builtin, name: "f", message: "m|n" },
            "filter-report|7641df9771b4ed00|builtin|f|m|n",
        ),
    ];
    for (report, tail) in cases {
        let mut out = String::new();
        write_report(&mut out, TS, SID, &report);
        assert_eq!(out, format!("report|0.7|1576146008.006099|smtp-in|{tail}\n"));
    }
    let unix = Endpoint::Unix("/var/run/smtpd.sock".into());
    let mut out = String::new();
    write_report(
        &mut out,
        TS,
        SID,
        &Report::LinkConnect { rdns: "localhost", fcrdns: Fcrdns::Pass, src: &unix, dest: &unix },
    );
    assert!(out.ends_with("|localhost|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock\n"));
    let v6 = Endpoint::Inet("[::1]:25".parse().unwrap());
    assert_eq!(v6.addr_text(), "[::1]");
}

#[test]
fn requests_are_opensmtpds() {
    let mut out = String::new();
    write_request(&mut out, TS, Phase::Connect, SID, Id(0x1ef1c203cc576e5d), "mail.openbsd.org|199.185.178.25");
    assert_eq!(
        out,
        "filter|0.7|1576146008.006099|smtp-in|connect|7641df9771b4ed00|1ef1c203cc576e5d|mail.openbsd.org|199.185.178.25\n"
    );
    assert!(handshake(300, "mx.test").ends_with("config|subsystem|smtp-in\nconfig|admd|mx.test\nconfig|ready\n"));
}

#[test]
fn output_lines_parse() {
    let ok: &[(&str, Output<'_>)] = &[
        ("register|ready", Output::Register(Register::Ready)),
        ("register|filter|smtp-in|data-line", Output::Register(Register::Filter(Phase::DataLine))),
        ("register|report|smtp-in|tx-begin", Output::Register(Register::Report(EventKind::TxBegin))),
        (
            "filter-result|7641df9771b4ed00|1ef1c203cc576e5d|reject|550 nope",
            Output::Result { session: SID, token: Id(0x1ef1c203cc576e5d), response: Response::Reject("550 nope") },
        ),
        ("filter-result|1|2|proceed", Output::Result { session: Id(1), token: Id(2), response: Response::Proceed }),
        ("filter-dataline|1|2|a|b", Output::DataLine { session: Id(1), token: Id(2), line: b"a|b" }),
        ("filter-dataline|1|2|", Output::DataLine { session: Id(1), token: Id(2), line: b"" }),
        ("report|1576146008.006099|smtp-in|1|hello", Output::Report { session: Id(1), message: "hello" }),
    ];
    for (line, want) in ok {
        assert_eq!(parse_output(line.as_bytes()).as_ref(), Ok(want), "{line}");
    }
    let bad: &[(&[u8], LineError)] = &[
        (b"", LineError::UnknownKind),
        (b"hello", LineError::UnknownKind),
        (b"register|filter|smtp-out|connect", LineError::BadRegister),
        (b"register|filter|smtp-in|nope", LineError::BadRegister),
        (b"filter-result|xyz|2|proceed", LineError::BadId),
        (b"filter-result|11111111111111111|2|proceed", LineError::BadId),
        (b"filter-result|1|2", LineError::BadId),
        (b"filter-result|1|2|reject", LineError::BadDecision),
        (b"filter-result|1|2|accept|x", LineError::BadDecision),
        (b"report|1.5|smtp-in|1|x", LineError::BadReport),
        (b"filter-dataline|1|2|a\rb", LineError::ControlByte),
        (b"filter-result|1|2|reject|550 caf\xe9", LineError::NotUtf8),
        (b"report|1576146008.006099|smtp-in|1|\0", LineError::ControlByte),
    ];
    for (line, want) in bad {
        assert_eq!(parse_output(line), Err(want.clone()), "{:?}", String::from_utf8_lossy(line));
    }
    assert_eq!(parse_output(&vec![b'a'; MAX_LINE + 1]), Err(LineError::TooLong));
    // A data line carries the message's bytes: 8-bit text and NULs pass as they are.
    let latin1 = b"filter-dataline|1|2|Subject: caf\xe9\0";
    assert_eq!(
        parse_output(latin1),
        Ok(Output::DataLine { session: Id(1), token: Id(2), line: b"Subject: caf\xe9\0" })
    );
}

#[test]
fn data_line_requests_carry_bytes() {
    let mut out = Vec::new();
    write_dataline(&mut out, TS, SID, Id(0x1ef1c203cc576e5d), b"..caf\xe9");
    assert_eq!(
        out,
        b"filter|0.7|1576146008.006099|smtp-in|data-line|7641df9771b4ed00|1ef1c203cc576e5d|..caf\xe9\n".to_vec()
    );
}

#[test]
fn refusals_are_checked_as_opensmtpd_does() {
    for ok in ["550 nope", "451 4.7.1 later", "421 bye"] {
        assert!(valid_refusal(ok), "{ok}");
    }
    for bad in ["250 ok", "550", "55 x", "550-x", "abc d", "550 a\tb"] {
        assert!(!valid_refusal(bad), "{bad}");
    }
}
