//! Relay (issue 5): a node mxd relaying to a second mxd over STARTTLS with `tls no-verify`,
//! to a host that is down and comes back, to one that answers 4xx then 250, to one that
//! answers 5xx (the bounce lands in the sender's Maildir), across a kill -9, and
//! pipelining exactly when the server offers it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{mxctl, python, queue_files, wait_for, Mxd, SEND};

fn node_conf(to: u16, scheme: &'static str, extra: &'static str) -> impl FnOnce(&Path, u16) -> String {
    common::node_conf(String::new(), format!("host {scheme}://127.0.0.1:{to} {extra}"))
}

/// mx0: the basic configuration plus a TLS-required listener on `tls_port`.
fn mx0_conf(tls_port: u16) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        format!(
            "{}{}listen on 127.0.0.1 port {tls_port} tls-require pki mx0.test\n",
            common::self_signed_pki(d, "mx0.test"),
            common::basic_conf(d, p)
        )
    }
}

#[test]
fn node_relays_to_mx0_over_starttls_no_verify() {
    if !common::can_run("node_relays_to_mx0_over_starttls_no_verify", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let tls_port = common::free_port();
    let mx0 = Mxd::start_with(mx0_conf(tls_port), &[]);
    let node = Mxd::start_with(node_conf(tls_port, "smtp+tls", "tls no-verify"), &[]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "joseph@test", "hello-mx0"]);
    wait_for("the message on mx0", Duration::from_secs(20), || mx0.messages("joseph").len() == 1);
    let text = String::from_utf8_lossy(&mx0.messages("joseph")[0]).into_owned();
    assert_eq!(text.matches("\nReceived: ").count() + usize::from(text.starts_with("Received: ")), 2, "{text}");
    assert!(text.contains("by mx.test (mxd) with ESMTPS id "), "hop to mx0 is TLS: {text}");
    assert!(text.contains("(TLSv1.3:"), "{text}");
    assert!(text.contains("by node.test (mxd) with ESMTP id "), "{text}");
    assert!(text.starts_with("Return-Path: <joseph@node.test>\nDelivered-To: joseph@test\n"), "{text}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
    assert!(node.logged("result=Ok"), "{}", node.log());
}

#[test]
fn host_down_then_up_gets_it_exactly_once_and_mailq_shows_it() {
    let port = common::free_port();
    let node = Mxd::start_with(node_conf(port, "smtp", ""), &[("MXD_RETRY_BASE", "1")]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "alice@test", "while-down"]);
    wait_for("a failed attempt", Duration::from_secs(10), || node.log().contains("result=TempFail"));
    assert!(mxctl(&node, &["show", "queue"]).contains("<joseph@node.test> <alice@test> action=out"));
    wait_for("the retry in show queue", Duration::from_secs(5), || {
        let mailq = mxctl(&node, &["show", "queue"]);
        mailq.contains(" attempts=1 ") && mailq.contains("Connection refused")
    });
    // mx0 comes up on that port.
    let mx0 = Mxd::start_at(port, common::basic_conf, &[]);
    wait_for("delivery after the host came back", Duration::from_secs(30), || mx0.messages("alice").len() == 1);
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mx0.messages("alice").len(), 1, "exactly once");
}

#[test]
fn remove_takes_the_id_show_queue_prints() {
    let node = Mxd::start_with(node_conf(common::free_port(), "smtp", ""), &[("MXD_RETRY_BASE", "60")]);
    for body in ["first", "second"] {
        python(SEND, &[&node.port.to_string(), "joseph@node.test", &format!("{body}@far.test"), body]);
    }
    let listing = mxctl(&node, &["show", "queue"]);
    let first = listing.lines().find(|l| l.contains("<first@far.test>")).expect("first listed");
    let id = &first.split(' ').next().unwrap()[..8];
    assert_eq!(mxctl(&node, &["remove", id]).trim(), "1 removed");
    wait_for("the runner to forget it", Duration::from_secs(5), || {
        !mxctl(&node, &["show", "queue"]).contains("first@")
    });
    assert!(mxctl(&node, &["show", "queue"]).contains("<second@far.test>"));
    assert_eq!(queue_files(&node), 1);
    assert!(mxctl(&node, &["remove", id]).contains("no such message"));
    assert_eq!(mxctl(&node, &["remove", "all"]).trim(), "1 removed");
    assert_eq!(queue_files(&node), 0);
}

/// A scripted server: RCPT answers come from `rcpt_replies` in turn (then 250); counts
/// accepted messages and connections.
struct Scripted {
    port: u16,
    messages: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

/// Serves one SMTP client a line at a time: `answer` gets each command line, upper-cased,
/// with the reader (for DATA) and the writer, and returns the reply, or None to hang up.
fn serve(
    conn: TcpStream,
    greeting: &str,
    mut answer: impl FnMut(&str, &mut BufReader<TcpStream>, &mut TcpStream) -> Option<String>,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let _ = w.write_all(greeting.as_bytes());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some(reply) = answer(&line.to_ascii_uppercase(), &mut r, &mut w) else {
            return;
        };
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Answers DATA with 354 and reads the message up to its final dot.
fn read_data(r: &mut BufReader<TcpStream>, w: &mut TcpStream) {
    let _ = w.write_all(b"354 go\r\n");
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 && line != ".\r\n" {
        line.clear();
    }
}

fn scripted(rcpt_replies: Vec<&'static str>) -> Scripted {
    scripted_at(0, rcpt_replies)
}

fn scripted_at(port: u16, rcpt_replies: Vec<&'static str>) -> Scripted {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = l.local_addr().unwrap().port();
    let (messages, connections) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (m, c) = (Arc::clone(&messages), Arc::clone(&connections));
    let replies = Arc::new(std::sync::Mutex::new(rcpt_replies.into_iter()));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            c.fetch_add(1, Ordering::Relaxed);
            let (m, replies) = (Arc::clone(&m), Arc::clone(&replies));
            std::thread::spawn(move || {
                let mut ok_rcpt = false;
                serve(conn, "220 scripted ESMTP\r\n", |u, r, w| {
                    Some(if u.starts_with("EHLO") {
                        "250-scripted\r\n250 PIPELINING\r\n".into()
                    } else if u.starts_with("RCPT") {
                        let r = replies.lock().unwrap().next().unwrap_or("250 ok");
                        ok_rcpt |= r.starts_with('2');
                        format!("{r}\r\n")
                    } else if u.starts_with("DATA") && ok_rcpt {
                        read_data(r, w);
                        m.fetch_add(1, Ordering::Relaxed);
                        ok_rcpt = false;
                        "250 queued\r\n".into()
                    } else if u.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        return None;
                    } else {
                        ok_rcpt &= !(u.starts_with("MAIL") || u.starts_with("RSET"));
                        "250 ok\r\n".into()
                    })
                });
            });
        }
    });
    Scripted { port, messages, connections }
}

#[test]
fn four_xx_then_250_is_retried() {
    let s = scripted(vec!["451 4.3.0 try again"]);
    let node = Mxd::start_with(node_conf(s.port, "smtp", ""), &[("MXD_RETRY_BASE", "1")]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "x@far.test", "retry"]);
    wait_for("the retry to succeed", Duration::from_secs(20), || s.messages.load(Ordering::Relaxed) == 1);
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
    assert!(node.logged("result=TempFail"), "{}", node.log());
}

#[test]
fn five_xx_bounces_to_the_sender_and_no_bounce_for_a_bounce() {
    let s = scripted(vec!["550 5.1.1 no such user", "550 5.1.1 no such user"]);
    let node = Mxd::start_with(node_conf(s.port, "smtp", ""), &[]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "nobody@far.test", "doomed"]);
    wait_for("the bounce in joseph's Maildir", Duration::from_secs(20), || node.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&node.messages("joseph")[0]).into_owned();
    assert!(bounce.starts_with("Return-Path: <>\n"), "{bounce}");
    assert!(bounce.contains("report-type=delivery-status"), "{bounce}");
    assert!(bounce.contains("Final-Recipient: rfc822; nobody@far.test"), "{bounce}");
    assert!(bounce.contains("550 5.1.1 no such user"), "{bounce}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
    // A message from the null sender that fails for good is dropped, not bounced.
    let script = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1])) as s:
    s.sendmail("<>", ["nobody@far.test"], b"Subject: bounce\r\n\r\nx\r\n")
"#;
    python(script, &[&node.port.to_string()]);
    wait_for("an empty queue", Duration::from_secs(20), || {
        queue_files(&node) == 0 && node.log().matches("result=PermFail").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.messages("joseph").len(), 1, "no bounce for a bounce");
}

#[test]
fn several_messages_for_one_host_share_a_session() {
    // Five messages wait for a host that is down; when it comes up, one session takes them.
    let port = common::free_port();
    let node = Mxd::start_with(node_conf(port, "smtp", ""), &[("MXD_RETRY_BASE", "2")]);
    let script = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1])) as s:
    for i in range(5):
        s.sendmail("joseph@node.test", ["x%d@far.test" % i], b"Subject: batch\r\n\r\nx\r\n")
"#;
    python(script, &[&node.port.to_string()]);
    wait_for("failed attempts", Duration::from_secs(10), || node.log().matches("result=TempFail").count() >= 5);
    let s = scripted_at(port, vec![]);
    wait_for("five messages", Duration::from_secs(20), || s.messages.load(Ordering::Relaxed) == 5);
    assert_eq!(s.connections.load(Ordering::Relaxed), 1, "one session for the five");
}

#[test]
fn kill9_with_messages_queued_loses_nothing() {
    let port = common::free_port();
    let mut node = Mxd::start_with(node_conf(port, "smtp", ""), &[("MXD_RETRY_BASE", "1")]);
    for i in 0..5 {
        python(SEND, &[&node.port.to_string(), "joseph@node.test", "alice@test", &format!("k9-{i}")]);
    }
    assert_eq!(queue_files(&node), 5);
    node.kill9();
    let mx0 = Mxd::start_at(port, common::basic_conf, &[]);
    node.restart(&[("MXD_RETRY_BASE", "1")]);
    wait_for("all five after restart", Duration::from_secs(30), || mx0.messages("alice").len() == 5);
    let bodies: std::collections::BTreeSet<String> = mx0
        .messages("alice")
        .iter()
        .map(|m| String::from_utf8_lossy(m).lines().last().unwrap_or("").to_owned())
        .collect();
    assert_eq!(bodies.len(), 5);
}

/// A server that, after MAIL, stays silent until the client has been quiet for 700 ms and
/// reports how many RCPTs arrived in that silence: a pipelining client sends them all
/// without waiting, a client that does not pipeline sends none. Offers PIPELINING or not.
fn pipelining_witness(offer: bool) -> (u16, std::sync::mpsc::Receiver<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            serve(conn, "220 witness ESMTP\r\n", |u, r, w| {
                Some(if u.starts_with("EHLO") {
                    if offer {
                        "250-witness\r\n250 PIPELINING\r\n".into()
                    } else {
                        "250 witness\r\n".into()
                    }
                } else if u.starts_with("MAIL") {
                    r.get_ref().set_read_timeout(Some(Duration::from_millis(700))).unwrap();
                    let (mut early, mut data) = (0, false);
                    let mut more = String::new();
                    // A pipelined DATA ends the group (RFC 2920 §3.1).
                    while !data && r.read_line(&mut more).is_ok_and(|n| n > 0) {
                        early += usize::from(more.to_ascii_uppercase().starts_with("RCPT"));
                        data = more.to_ascii_uppercase().starts_with("DATA");
                        more.clear();
                    }
                    r.get_ref().set_read_timeout(None).unwrap();
                    tx.send(early).unwrap();
                    let replies = "250 ok\r\n".to_owned() + &"250 ok\r\n".repeat(early);
                    if !data {
                        return Some(replies);
                    }
                    let _ = w.write_all(replies.as_bytes());
                    read_data(r, w);
                    "250 queued\r\n".into()
                } else if u.starts_with("DATA") {
                    read_data(r, w);
                    "250 queued\r\n".into()
                } else if u.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n");
                    return None;
                } else {
                    "250 ok\r\n".into()
                })
            });
        }
    });
    (port, rx)
}

#[test]
fn relay_pipelines_only_when_the_server_offers_it() {
    for (offer, expected) in [(true, 3), (false, 0)] {
        let (port, early) = pipelining_witness(offer);
        let node = Mxd::start_with(node_conf(port, "smtp", ""), &[]);
        python(SEND, &[&node.port.to_string(), "joseph@node.test", "a@far.test,b@far.test,c@far.test", "piped"]);
        let seen = early.recv_timeout(Duration::from_secs(20)).expect("a MAIL at the witness");
        assert_eq!(seen, expected, "RCPTs sent before the reply to MAIL, PIPELINING offered: {offer}");
        wait_for("an empty queue", Duration::from_secs(20), || queue_files(&node) == 0);
    }
}
