//! Messages per session (issue 14): `smtp limit max-mails` is OpenSMTPD's 100 unless
//! configured, and what mxd itself sends in bulk copes with it: the relay goes on in a new
//! session after the receiver's 452, without deferring anything, and mxd-load reconnects.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{basic_conf, can_run, mxctl, node_conf, python, queue_files, wait_for, Client, Mxd, Need};

/// OpenSMTPD's reply to the MAIL after `max-mails` messages (smtp_session.c).
const TOO_MANY: &str = "452 4.5.3 Too many recipients: Too many messages sent";

/// `FILL PORT N`: N messages from joseph@node.test to alice@test, 50 per session (under the
/// node's own limit), each with its number in the body.
const FILL: &str = r#"
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = None
for i in range(n):
    if i % 50 == 0:
        if s:
            s.quit()
        s = smtplib.SMTP("127.0.0.1", port)
    s.sendmail("joseph@node.test", ["alice@test"], ("Subject: m%d\r\n\r\nmessage-%d-end\r\n" % (i, i)).encode())
s.quit()
"#;

fn deliver(c: &mut Client, i: usize) {
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let done = c.cmd(&format!("Subject: m{i}\r\n\r\nbody {i}\r\n."));
    assert!(done.starts_with("250"), "message {i}: {done}");
}

#[test]
fn the_101st_mail_of_a_session_gets_opensmtpds_452() {
    let mxd = Mxd::start();
    let mut c = Client::connect(mxd.port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    // A transaction reset before its 250 does not count, as in OpenSMTPD.
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    for i in 0..100 {
        deliver(&mut c, i);
    }
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").trim_end(), TOO_MANY);
    c.cmd("QUIT");
    assert_eq!(mxd.messages("joseph").len(), 100);
    // A new session may send again.
    let mut again = Client::connect(mxd.port);
    assert!(again.cmd("EHLO client.example").starts_with("250"));
    deliver(&mut again, 100);
    assert_eq!(mxd.messages("joseph").len(), 101);
}

/// The numbers of the messages alice got, sorted; each must appear once.
fn numbers(m: &Mxd) -> Vec<usize> {
    let mut all: Vec<usize> = m
        .messages("alice")
        .iter()
        .filter_map(|b| {
            let text = String::from_utf8_lossy(b);
            let rest = &text[text.find("message-")? + 8..];
            rest[..rest.find("-end")?].parse().ok()
        })
        .collect();
    all.sort_unstable();
    all
}

/// 250 messages wait in a node's queue for a receiver that is down; it comes up with the
/// default limit, the queue is flushed: each message arrives once, and none is deferred
/// again. `top`: the node's extra lines.
fn relay_250_queued(top: &str) -> Mxd {
    let rx_port = common::free_port();
    // No retry of its own during the test: only the flush sends.
    let node = Mxd::start_with(
        node_conf(top.to_owned(), format!("host smtp://127.0.0.1:{rx_port}")),
        &[("MXD_RETRY_BASE", "3600")],
    );
    python(FILL, &[&node.port.to_string(), "250"]);
    let tempfails = || node.log().matches("result=TempFail").count();
    wait_for("each message tried once", Duration::from_secs(120), || tempfails() >= 250);
    let deferred = tempfails();
    assert_eq!(queue_files(&node), 250);

    let rx = Mxd::start_at(rx_port, basic_conf, &[]);
    assert!(mxctl(&node, &["schedule", "all"]).contains("scheduled"));
    wait_for("250 messages at alice's", Duration::from_secs(180), || rx.messages("alice").len() >= 250);
    wait_for("the node's queue emptied", Duration::from_secs(30), || queue_files(&node) == 0);
    assert_eq!(numbers(&rx), (0..250).collect::<Vec<_>>(), "each message exactly once");
    assert_eq!(rx.messages("alice").len(), 250);
    assert_eq!(tempfails(), deferred, "nothing deferred after the flush: {}", node.log());
    node
}

#[test]
fn a_flush_of_250_messages_in_sessions_of_100() {
    relay_250_queued("");
}

#[test]
fn a_receivers_452_after_100_messages_goes_on_in_a_new_session() {
    // The node would send all 250 in one session; the receiver takes 100 per session.
    let node = relay_250_queued("mta limit max-mail-per-session 1000\n");
    assert!(node.logged("messages in one session (452 4.5.3 "), "{}", node.log());
}

/// mxd-load, built beside mxd by `cargo test --workspace` (bench/).
fn mxd_load() -> Option<PathBuf> {
    let path = Path::new(common::MXD).with_file_name("mxd-load");
    if path.exists() {
        return Some(path);
    }
    can_run("mxd_load_reconnects_at_the_limit", &[Need::File(&path.display().to_string(), "(cargo build -p mxd-load)")])
        .then_some(path)
}

#[test]
fn mxd_load_reconnects_at_the_limit_and_counts_every_message() {
    let Some(load) = mxd_load() else { return };
    let mxd = Mxd::start();
    let target = format!("127.0.0.1:{}", mxd.port);
    // One session's worth and a half, from one connection at a time.
    let out = std::process::Command::new(load)
        .args(["-c", "1", "-n", "150", "-s", "1k", "--to", "joseph@test", "--json", &target])
        .output()
        .expect("mxd-load");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json} {}", String::from_utf8_lossy(&out.stderr));
    assert!(json.contains("\"delivered\":150,"), "{json}");
    assert!(!json.contains("MAIL 452"), "{json}");
    assert_eq!(mxd.messages("joseph").len(), 150);
}
