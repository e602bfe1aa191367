//! Issue 14: a body line longer than 1000 octets is accepted and stored unchanged, as
//! OpenSMTPD and Postfix do; only the message size bounds it.

mod common;

use common::{python, Mxd};

const SEND_LONG: &str = r#"
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b"Subject: long\r\n\r\nbefore\r\n" + b"L" * (n - 1) + b"!\r\nafter\r\n"
with smtplib.SMTP("127.0.0.1", port) as s:
    try:
        print("refused", s.sendmail("cron@example.org", ["joseph@test"], body))
    except smtplib.SMTPDataError as e:
        print("data error", e.smtp_code)
"#;

#[test]
fn a_3000_octet_line_arrives_whole() {
    let mxd = Mxd::start();
    let out = python(SEND_LONG, &[&mxd.port.to_string(), "3000"]);
    assert!(out.contains("refused {}"), "{out}\n{}", mxd.log());
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1, "{}", mxd.log());
    let want = [b"\n\nbefore\n".to_vec(), vec![b'L'; 2999], b"!\nafter\n".to_vec()].concat();
    assert!(msgs[0].ends_with(&want), "the long line was changed: {}", String::from_utf8_lossy(&msgs[0]));
}

#[test]
fn a_long_line_past_the_size_limit_is_552() {
    let mxd = Mxd::start_with(
        |d, p| common::basic_conf(d, p).replace("listen on", "smtp max-message-size 2K\nlisten on"),
        &[],
    );
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<cron@example.org>");
    c.cmd("RCPT TO:<joseph@test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&[vec![b'L'; 3000], b"\r\n.\r\n".to_vec()].concat());
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(mxd.messages("joseph").is_empty());
}
