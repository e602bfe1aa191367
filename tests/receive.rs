//! Receive and deliver (issue 3), against the real daemon on 127.0.0.1 with python3's
//! smtplib and raw sockets; the Maildir is read back from disk.

mod common;

use std::time::Duration;

use common::{count_files, python, Mxd};

const SEND_ONE: &str = r#"
import smtplib, sys
port, rcpts = int(sys.argv[1]), sys.argv[2].split(",")
msg = sys.argv[3].encode().replace(b"\\n", b"\r\n")
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as s:
    s.ehlo("client.test")
    refused = s.sendmail("sender@example.org", rcpts, msg)
    print("refused", refused)
"#;

/// Waits for a log line containing `wanted` and checks that it carries the session id of a
/// `smtp connected` line, so an operator can follow the refusal back to its client.
fn assert_logged(mxd: &Mxd, wanted: &str) {
    assert!(mxd.logged(wanted), "{}", mxd.log());
    let log = mxd.log();
    let line = log.lines().find(|l| l.contains(wanted)).unwrap();
    let id = line.split_whitespace().find(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = id.unwrap_or_else(|| panic!("no session id in {line:?}"));
    assert!(log.lines().any(|l| l.contains(&format!("{id} smtp connected"))), "{log}");
}

fn body_of(stored: &[u8]) -> &[u8] {
    let at = stored.windows(2).position(|w| w == b"\n\n").expect("header/body separator");
    &stored[at + 2..]
}

#[test]
fn smtplib_message_lands_in_maildir_with_headers() {
    let mxd = Mxd::start();
    let out = python(SEND_ONE, &[&mxd.port.to_string(), "joseph@test", "Subject: hi\\n\\nHello, EHLO!\\n.dot line\\n"]);
    assert!(out.contains("refused {}"), "{out}");
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1, "{}", mxd.log());
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(
        text.starts_with("Return-Path: <sender@example.org>\nDelivered-To: joseph@test\nReceived: from client.test"),
        "{text}"
    );
    assert!(text.contains("by mx.test (mxd) with ESMTP id "), "{text}");
    assert!(text.contains("for <joseph@test>;"), "{text}");
    assert!(!text.contains('\r'), "stored with LF endings");
    assert_eq!(body_of(&msgs[0]), b"Hello, EHLO!\n.dot line\n");
    // Maildir layout and modes.
    let md = mxd.maildir("joseph");
    for sub in ["tmp", "new", "cur"] {
        let meta = std::fs::metadata(md.join(sub)).expect("subdir");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o700);
    }
    assert_eq!(count_files(&md.join("tmp")), 0);
    assert!(
        mxd.logged("smtp connected") && mxd.logged("smtp message msgid=") && mxd.logged("result=Ok"),
        "{}",
        mxd.log()
    );
}

#[test]
fn multiple_recipients_alias_and_list() {
    let mxd = Mxd::start();
    let out = python(
        SEND_ONE,
        &[&mxd.port.to_string(), "joseph@test,root@test,team@test,nobody@test", "Subject: many\\n\\nbody\\n"],
    );
    assert!(out.contains("nobody@test") && out.contains("550"), "unknown user refused at RCPT: {out}");
    // joseph directly, via root and via team: one copy (duplicates filtered); alice via team.
    assert_eq!(mxd.messages("joseph").len(), 1, "{}", mxd.log());
    assert_eq!(mxd.messages("alice").len(), 1);
}

#[test]
fn fifty_clients_twenty_messages_each_exactly_once() {
    let mxd = Mxd::start();
    let script = r#"
import smtplib, sys, threading
port = int(sys.argv[1])
errors = []
def client(c):
    try:
        with smtplib.SMTP("127.0.0.1", port) as s:
            for m in range(20):
                body = "Message-ID: <%d.%d@load>\r\nSubject: load\r\n\r\n" % (c, m) + ("line %d %d\r\n" % (c, m)) * (1 + (c * m) % 50)
                s.sendmail("load@example.org", ["joseph@test" if m % 2 else "alice@test"], body)
    except Exception as e:
        errors.append(repr(e))
ts = [threading.Thread(target=client, args=(c,)) for c in range(50)]
[t.start() for t in ts]; [t.join() for t in ts]
print("errors", errors)
"#;
    let out = python(script, &[&mxd.port.to_string()]);
    assert!(out.contains("errors []"), "{out}");
    let mut seen = std::collections::BTreeMap::new();
    for (user, parity) in [("joseph", 1), ("alice", 0)] {
        for msg in mxd.messages(user) {
            let text = String::from_utf8(msg).expect("utf8");
            let id = text.split("Message-ID: <").nth(1).and_then(|s| s.split('>').next()).expect("id").to_owned();
            let (c, m): (usize, usize) = {
                let mut it = id.trim_end_matches("@load").split('.').map(|x| x.parse().expect("n"));
                (it.next().expect("c"), it.next().expect("m"))
            };
            assert_eq!(m % 2, parity, "{id} in {user}");
            let expect = format!("line {c} {m}\n").repeat(1 + (c * m) % 50);
            assert_eq!(String::from_utf8_lossy(body_of(text.as_bytes())), expect, "{id}");
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 1000, "every message once");
    assert!(seen.values().all(|&n| n == 1));
}

#[test]
fn pipelined_transaction_answered_in_order() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    let ehlo = c.cmd("EHLO client.test");
    for ext in ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE ", "SMTPUTF8"] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS"), "no pki, no STARTTLS: {ehlo}");
    c.send(b"MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100\r\nRCPT TO:<joseph@test>\r\nRCPT TO:<nobody@test>\r\nRCPT TO:<alice@test>\r\nDATA\r\n");
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("550 5.1.1"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("354 "));
    c.send("Subject: 8bit\r\n\r\nDaß ist schön\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n".as_bytes());
    let accepted = c.reply();
    assert!(accepted.starts_with("250 2.0.0"), "{accepted}");
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.reply().starts_with("221 2.0.0"));
    assert_eq!(body_of(&mxd.messages("joseph")[0]), "Daß ist schön\n".as_bytes());
    assert_eq!(mxd.messages("alice").len(), 1);
}

#[test]
fn commands_out_of_sequence_and_unknown() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    assert!(c.cmd("MAIL FROM:<a@b.example>").starts_with("503 5.5.1"), "MAIL before HELO");
    assert!(c.cmd("HELO client.test").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").starts_with("503 5.5.1"));
    assert!(c.cmd("FOO bar").starts_with("500 5.5.1"));
    assert!(c.cmd("VRFY joseph").starts_with("252 "));
    assert!(c.cmd("HELP").starts_with("214"));
    assert!(c.cmd("MAIL FROM:<no-at-sign").starts_with("501 "));
    assert!(c.cmd("QUIT").starts_with("221 "));
}

#[test]
fn command_line_too_long() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    let long = format!("NOOP {}", "x".repeat(600));
    let r = c.cmd(&long);
    assert!(r.starts_with("500 5."), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"), "session goes on");
}

#[test]
fn message_too_large_is_552_and_session_continues() {
    let mxd = Mxd::start_with(|d, p| common::basic_conf(d, p) + "smtp max-message-size 10K\n", &[]);
    let mut c = mxd.connect();
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("SIZE 10240"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<a@example.org> SIZE=20000").starts_with("552 5.3.4"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let line = format!("{}\r\n", "y".repeat(70));
    for _ in 0..2000 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(mxd.messages("joseph").is_empty());
    assert_logged(&mxd, "smtp refused step=mail reply=\"552 5.3.4 Message size exceeds fixed maximum message size\"");
    assert_logged(&mxd, "smtp refused step=data reply=\"552 5.3.4 Message size exceeds fixed maximum message size\"");
}

#[test]
fn too_many_recipients() {
    let mxd = Mxd::start_with(|d, p| common::basic_conf(d, p) + "smtp limit max-rcpt 3\n", &[]);
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    for _ in 0..3 {
        assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    }
    let r = c.cmd("RCPT TO:<joseph@test>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert_logged(&mxd, "smtp refused step=rcpt reply=\"452 4.5.3 Too many recipients\"");
}

#[test]
fn too_many_errors_closes_with_421() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    let mut last = String::new();
    for _ in 0..30 {
        last = c.cmd("BOGUS");
        if last.starts_with("421") || last.is_empty() {
            break;
        }
    }
    assert!(last.starts_with("421"), "{last}");
    assert!(c.closed());
}

#[test]
fn idle_session_gets_421_and_is_closed() {
    let mxd = Mxd::start_with(common::basic_conf, &[("MXD_SMTP_TIMEOUT", "2")]);
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.closed());
}

#[test]
fn smuggling_bare_lf_dot_is_refused() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RCPT TO:<joseph@test>");
    assert!(c.cmd("DATA").starts_with("354"));
    // The classic payload: a bare-LF "end of data" followed by a smuggled transaction.
    c.send(
        b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<alice@test>\nDATA\nsmuggled\n.\r\n",
    );
    let r = c.reply();
    assert!(r.starts_with('5'), "bare LF refused: {r}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(mxd.messages("alice").is_empty(), "smuggled message delivered");
    assert!(mxd.messages("joseph").is_empty(), "message with bare LF delivered");
    assert_logged(
        &mxd,
        "smtp refused step=data reply=\"554 5.5.2 Message refused: bare CR or LF in DATA is not allowed\"",
    );
}

#[test]
fn hostile_recipients_cannot_leave_the_maildir() {
    let mxd = Mxd::start_with(
        |d, p| {
            common::basic_conf(d, p).replace(
                "action \"local\" maildir alias <aliases> userbase <users>",
                &format!(
                    "action \"local\" maildir \"{}/boxes/%{{rcpt.user}}\" user joseph userbase <users>",
                    d.display()
                ),
            )
        },
        &[],
    );
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    for rcpt in ["<../../x@test>", "<a/b@test>", "<..@test>", "<\"../x\"@test>"] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with('5'), "refused for good, not deferred: {rcpt}: {r}");
    }
    assert!(!mxd.path().join("x").exists());
    assert!(!mxd.path().join("boxes").join("a").exists());
}

#[test]
fn no_matching_rule_is_550_5_7_1() {
    let mxd = Mxd::start();
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    let r = c.cmd("RCPT TO:<someone@elsewhere.example>");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert_logged(
        &mxd,
        "smtp refused step=rcpt address=<someone@elsewhere.example> reply=\"550 5.7.1 Delivery not authorized, message refused\"",
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut mxd = Mxd::start();
    python(SEND_ONE, &[&mxd.port.to_string(), "joseph@test", "Subject: x\\n\\nx\\n"]);
    let status = mxd.stop();
    assert!(status.success(), "{status:?}\n{}", mxd.log());
    assert_eq!(mxd.messages("joseph").len(), 1);
}

/// A service manager may stop mxd the moment its port answers: the parent must already
/// handle SIGTERM then, not die of it while it finishes starting.
#[test]
fn sigterm_as_soon_as_the_port_answers_exits_zero() {
    use nix::sys::signal::{kill, Signal};
    for _ in 0..10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let conf = dir.path().join("smtpd.conf");
        std::fs::write(&conf, common::basic_conf(dir.path(), port)).expect("conf");
        let mut child = std::process::Command::new(common::MXD)
            .arg("-d")
            .arg("-f")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mxd");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "mxd did not listen");
            std::thread::sleep(Duration::from_millis(1));
        }
        kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("kill");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "mxd did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn sighup_with_broken_config_keeps_serving_and_good_config_adds_listener() {
    let mut mxd = Mxd::start();
    let good = std::fs::read_to_string(&mxd.conf).expect("conf");
    std::fs::write(&mxd.conf, "this is not a config\n").expect("write");
    mxd.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    python(SEND_ONE, &[&mxd.port.to_string(), "joseph@test", "Subject: still\\n\\nx\\n"]);
    assert_eq!(mxd.messages("joseph").len(), 1);
    assert!(mxd.logged("reload failed"), "{}", mxd.log());
    let second = common::free_port();
    std::fs::write(&mxd.conf, format!("{good}listen on 127.0.0.1 port {second}\n")).expect("write");
    mxd.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", second)).is_err() {
        assert!(std::time::Instant::now() < deadline, "new listener: {}", mxd.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    python(SEND_ONE, &[&second.to_string(), "joseph@test", "Subject: new\\n\\nx\\n"]);
    assert_eq!(mxd.messages("joseph").len(), 2);
    assert!(mxd.stop().success());
}

#[test]
fn kill9_during_load_loses_nothing_that_got_250() {
    let mut mxd = Mxd::start();
    let script = r#"
import smtplib, sys, threading, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
ok = []; lock = threading.Lock()
def client(c):
    m = 0
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            while True:
                body = "Message-ID: <%d.%d@k9>\r\n\r\n" % (c, m) + ("x" * 78 + "\r\n") * 25 + "end\r\n"
                s.sendmail("load@example.org", ["joseph@test"], body)
                with lock: ok.append("%d.%d@k9" % (c, m))
                m += 1
    except Exception:
        pass
ts = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(8)]
[t.start() for t in ts]
time.sleep(secs)
with lock: print("\n".join(ok)); sys.stdout.flush()
import os; os._exit(0)
"#;
    let port = mxd.port.to_string();
    let handle = std::thread::spawn(move || python(script, &[&port, "3.0"]));
    std::thread::sleep(Duration::from_millis(1500));
    mxd.kill9();
    let acked: Vec<String> =
        handle.join().expect("client").lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    assert!(!acked.is_empty(), "some messages were accepted before the kill");
    let stored: Vec<String> = mxd
        .messages("joseph")
        .iter()
        .map(|m| {
            let t = String::from_utf8_lossy(m).into_owned();
            assert!(
                t.ends_with(&format!("{}end\n", format!("{}\n", "x".repeat(78)).repeat(25))),
                "half-written message in new/"
            );
            t.split("Message-ID: <").nth(1).and_then(|s| s.split('>').next()).expect("id").to_owned()
        })
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "{id} got 250 but is not in new/");
    }
}

#[test]
fn unwritable_maildir_is_451_and_no_recipient_gets_a_copy() {
    let mxd = Mxd::start_with(common::conf_alice_unwritable, &[]);
    let mut c = mxd.connect();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.org>");
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: both\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("451 4."), "{r}");
    assert!(mxd.messages("joseph").is_empty(), "joseph got a copy although the message was refused");
    assert_eq!(count_files(&mxd.maildir("joseph").join("tmp")), 0);
    assert!(mxd.logged("result=TempFail"), "{}", mxd.log());
    // The service goes on, and joseph alone can be served.
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RCPT TO:<joseph@test>");
    c.cmd("DATA");
    c.send(b"Subject: one\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    assert_eq!(mxd.messages("joseph").len(), 1);
}

#[test]
fn sessions_past_the_limit_get_421_at_accept() {
    // One loop; 64 descriptors are kept for files and listeners, so 100 leaves 36 sessions.
    let mxd = Mxd::start_with(|d, p| common::basic_conf(d, p) + "threads 1\n", &[("ULIMIT_N", "100")]);
    let held: Vec<common::Client> = (0..36).map(|_| mxd.connect()).collect();
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", mxd.port)).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut extra, &mut reply).expect("read");
    assert!(reply.starts_with("421 4.3.2"), "{reply:?}");
    assert!(mxd.logged("reason=too-many-sessions"), "{}", mxd.log());
    drop(held);
    // Room again once the others leave.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = mxd.connect();
    assert!(c.cmd("NOOP").starts_with("250"));
}

/// As root, files and Maildir directories belong to the recipient's uid/gid.
#[test]
fn delivered_files_belong_to_their_user_when_root() {
    if !common::can_run("delivered_files_belong_to_their_user_when_root", &[common::Need::Root]) {
        return;
    }
    let mxd = Mxd::start_with(
        |d, p| {
            let (uid, gid) = common::uid_gid();
            common::basic_conf(d, p).replace(&format!("alice = \"{uid}:{gid}:"), "alice = \"65534:65534:")
        },
        &[],
    );
    python(SEND_ONE, &[&mxd.port.to_string(), "alice@test", "Subject: mine\\n\\nx\\n"]);
    use std::os::unix::fs::MetadataExt;
    let md = mxd.maildir("alice");
    for p in [md.clone(), md.join("new"), md.join("tmp"), md.join("cur")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", p.display());
    }
    let file = std::fs::read_dir(md.join("new")).unwrap().flatten().next().expect("delivered").path();
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));
}
