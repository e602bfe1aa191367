//! SRS (issue 14): a node forwards joseph@test's message (an alias of its own, on a domain
//! that is not its host name, pointing back at mx0) through a relay action with `srs`; mx0
//! sees the SRS0 sender at the forwarding recipient's domain, as OpenSMTPD writes it; a
//! bounce to that address, sent back to the node as mx0 would send it, finds its way to
//! joseph@test; a forged SRS address is refused; mail that was not forwarded keeps its sender.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{python, wait_for, Mxd, SEND};

fn node(mx0: u16) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        let (uid, gid) = common::uid_gid();
        format!(
            "spool \"{d}/spool\"\nhostname \"node.test\"\nsrs key \"first-secret\"\nsrs key backup \"old-secret\"\n\
             table users {{ ops = \"{uid}:{gid}:{d}/home/ops\" }}\n\
             table aliases {{ fwd = \"alice@test\" }}\n\
             listen on 127.0.0.1 port {p}\n\
             action \"local\" maildir alias <aliases> userbase <users>\n\
             action \"out\" relay host smtp://127.0.0.1:{mx0} srs\n\
             match from any for domain \"node.test\" action \"local\"\n\
             match from any for domain \"lists.example\" action \"local\"\n\
             match from any for any action \"out\"\n",
            d = d.display()
        )
    }
}

fn return_path(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let line = text.lines().next().unwrap_or("").to_owned();
    line.strip_prefix("Return-Path: <").and_then(|l| l.strip_suffix('>')).unwrap_or(&line).to_owned()
}

const BOUNCE: &str = r#"
import smtplib, sys
port, rcpt = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port) as s:
    try:
        s.sendmail("", [rcpt], b"Subject: Undelivered Mail Returned to Sender\r\n\r\nbounce-of-forwarded\r\n")
        print("250")
    except smtplib.SMTPRecipientsRefused as e:
        print(list(e.recipients.values())[0][0])
"#;

#[test]
fn forwarded_mail_gets_an_srs_sender_and_its_bounce_finds_the_way_back() {
    let mx0 = Mxd::start();
    let node = Mxd::start_with(node(mx0.port), &[]);
    // joseph@test writes to fwd@lists.example, which forwards to alice@test (on mx0): the
    // SRS domain is lists.example, not the node's name.
    python(SEND, &[&node.port.to_string(), "joseph@test", "fwd@lists.example", "forwarded-1"]);
    wait_for("the forwarded message on mx0", Duration::from_secs(20), || mx0.messages("alice").len() == 1);
    let srs = return_path(&mx0.messages("alice")[0]);
    assert!(srs.starts_with("SRS0=") && srs.ends_with("=test=joseph@lists.example"), "{srs}");

    // mx0 bounces it: to the SRS address, at the node, which sends it on to joseph@test.
    assert_eq!(python(BOUNCE, &[&node.port.to_string(), &srs]).trim(), "250");
    wait_for("the bounce at joseph's", Duration::from_secs(20), || mx0.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&mx0.messages("joseph")[0]).into_owned();
    assert!(bounce.contains("bounce-of-forwarded"), "{bounce}");
    assert!(bounce.starts_with("Return-Path: <>\nDelivered-To: joseph@test\n"), "{bounce}");

    // A forged one (the hash does not match) is refused at RCPT.
    let forged = srs.replacen("=joseph@", "=alice@", 1);
    assert_eq!(python(BOUNCE, &[&node.port.to_string(), &forged]).trim(), "550");
    // The node's own users' mail is not rewritten.
    python(SEND, &[&node.port.to_string(), "ops@node.test", "alice@test", "own-sender"]);
    wait_for("the second message", Duration::from_secs(20), || mx0.messages("alice").len() == 2);
    let own = mx0.messages("alice").into_iter().find(|m| String::from_utf8_lossy(m).contains("own-sender")).unwrap();
    assert_eq!(return_path(&own), "ops@node.test");
    // Nor is mail relayed as the client addressed it (OpenSMTPD rewrites only forwarded mail).
    python(SEND, &[&node.port.to_string(), "joseph@test", "alice@test", "not-forwarded"]);
    wait_for("the third message", Duration::from_secs(20), || mx0.messages("alice").len() == 3);
    let direct =
        mx0.messages("alice").into_iter().find(|m| String::from_utf8_lossy(m).contains("not-forwarded")).unwrap();
    assert_eq!(return_path(&direct), "joseph@test");
}

/// A second forwarder: node.test forwards fwd@ to fwd2@node2.test, which forwards it to
/// alice@test; `back` routes node.test's SRS0 addresses home.
fn node2(mx0: u16, node1: u16) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        let (uid, gid) = common::uid_gid();
        format!(
            "spool \"{d}/spool\"\nhostname \"node2.test\"\nsrs key \"second-secret\"\n\
             table users {{ ops = \"{uid}:{gid}:{d}/home/ops\" }}\n\
             table aliases {{ fwd2 = \"alice@test\" }}\n\
             listen on 127.0.0.1 port {p}\n\
             action \"local\" maildir alias <aliases> userbase <users>\n\
             action \"out\" relay host smtp://127.0.0.1:{mx0} srs\n\
             action \"back\" relay host smtp://127.0.0.1:{node1}\n\
             match from any for domain \"node2.test\" action \"local\"\n\
             match from any for domain \"node.test\" action \"back\"\n\
             match from any for any action \"out\"\n",
            d = d.display()
        )
    }
}

#[test]
fn forwarded_twice_gets_srs1_and_its_bounce_goes_back_through_the_first_hop() {
    let mx0 = Mxd::start();
    let node1_port = common::free_port();
    let second = Mxd::start_with(node2(mx0.port, node1_port), &[]);
    let first = Mxd::start_at(
        node1_port,
        |d: &Path, p: u16| node(second.port)(d, p).replace("fwd = \"alice@test\"", "fwd = \"fwd2@node2.test\""),
        &[],
    );
    python(SEND, &[&first.port.to_string(), "joseph@test", "fwd@node.test", "forwarded-twice"]);
    wait_for("the twice-forwarded message", Duration::from_secs(30), || mx0.messages("alice").len() == 1);
    let srs1 = return_path(&mx0.messages("alice")[0]);
    // SRS1=GGGG=node.test==HHHH=TT=test=joseph@node2.test: the first hop and its SRS0 part.
    assert!(
        srs1.starts_with("SRS1=") && srs1.contains("=node.test==") && srs1.ends_with("=test=joseph@node2.test"),
        "{srs1}"
    );

    // The bounce reaches node2, goes back to node.test as SRS0, and from there to joseph.
    assert_eq!(python(BOUNCE, &[&second.port.to_string(), &srs1]).trim(), "250");
    wait_for("the bounce at joseph's", Duration::from_secs(30), || mx0.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&mx0.messages("joseph")[0]).into_owned();
    assert!(bounce.contains("bounce-of-forwarded"), "{bounce}");
    let forged = srs1.replacen("=joseph@", "=alice@", 1);
    assert_eq!(python(BOUNCE, &[&second.port.to_string(), &forged]).trim(), "550");
}
