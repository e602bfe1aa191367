//! The real mxctl binary as `sendmail` (through a symlink), against a scripted SMTP server
//! on the spool's unix socket, and with no server at all (the offline directory).

mod mxctl_util;

use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;

use mxctl_util::{greeting_only, run, smtp_server, user_name, Env, FinalReply, HOST};

const SEED: &str = "Subject: Test Subject\n\nHello, EHLO!\n";
const ACCEPT: FinalReply = FinalReply::Line("250 2.0.0 f55200d4 Message accepted for delivery\r\n");

fn header_lines(data: &str) -> Vec<&str> {
    data.split("\r\n").take_while(|l| !l.is_empty()).collect()
}

#[test]
fn seed_message_gets_from_date_and_message_id() {
    let env = Env::new();
    let server = smtp_server(&env.socket(), ACCEPT);
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph");
    let out = run(cmd, SEED);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let d = server.join().expect("server");
    let me = user_name();
    assert_eq!(
        d.commands,
        [
            "EHLO localhost".to_string(),
            format!("MAIL FROM:<{me}@{HOST}>"),
            format!("RCPT TO:<joseph@{HOST}>"),
            "DATA".to_string(),
            "QUIT".to_string(),
        ]
    );
    let data = d.data_text();
    let headers = header_lines(&data);
    assert_eq!(headers.len(), 4, "{data}");
    assert!(headers[0].starts_with("From: ") && headers[0].ends_with(&format!("<{me}@{HOST}>")), "{data}");
    let date = headers[1].strip_prefix("Date: ").expect("Date: second");
    assert!(date.ends_with(" +0000") && date.split(' ').count() == 6, "{date}");
    assert_eq!(headers[2], "Subject: Test Subject");
    let id = headers[3]
        .strip_prefix("Message-ID: <")
        .and_then(|r| r.strip_suffix(&format!("@{HOST}>")))
        .expect("Message-ID last");
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(data.ends_with("\r\n\r\nHello, EHLO!\r\n"), "{data:?}");
    assert!(!data.replace("\r\n", "").contains('\n'), "bare LF sent: {data:?}");
}

#[test]
fn extract_recipients_sender_and_full_name() {
    let env = Env::new();
    let server = smtp_server(&env.socket(), ACCEPT);
    let mut cmd = env.command("sendmail");
    cmd.args(["-t", "-oi", "-odi", "-f", "cron@node1.lan", "-F", "Cron Daemon", "extra"]);
    let msg = "To: Joseph <joseph@mx0.lan>, root\nCc: ops@mx0.lan (Ops)\nBcc: hidden@mx0.lan\nSubject: cron\n\nout\n";
    let out = run(cmd, msg);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let d = server.join().expect("server");
    let rcpts: Vec<&str> = d.commands.iter().filter_map(|c| c.strip_prefix("RCPT TO:")).collect();
    assert_eq!(
        rcpts,
        [
            format!("<extra@{HOST}>"),
            "<joseph@mx0.lan>".into(),
            format!("<root@{HOST}>"),
            "<ops@mx0.lan>".into(),
            "<hidden@mx0.lan>".into()
        ]
    );
    assert!(d.commands.contains(&"MAIL FROM:<cron@node1.lan>".to_string()), "{:?}", d.commands);
    let data = d.data_text();
    assert!(data.starts_with("From: Cron Daemon <cron@node1.lan>\r\n"), "{data}");
    assert!(!data.contains("hidden"), "Bcc leaked: {data}");
    assert!(data.contains("To: Joseph <joseph@mx0.lan>, root\r\nCc: ops@mx0.lan (Ops)\r\nSubject: cron\r\n"), "{data}");
}

#[test]
fn dot_stuffing_and_line_endings() {
    let env = Env::new();
    let server = smtp_server(&env.socket(), ACCEPT);
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph");
    let out = run(cmd, "Subject: dots\r\n\r\n.hidden\n..two\r\n.\nlast line without newline");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let data = server.join().expect("server").data_text();
    let body = data.split_once("\r\n\r\n").map(|(_, b)| b).expect("body");
    assert_eq!(body, "..hidden\r\n...two\r\n..\r\nlast line without newline\r\n");
}

#[test]
fn exit_status_follows_the_final_reply() {
    let sendmail_against = |reply: &'static str| {
        let env = Env::new();
        let server = smtp_server(&env.socket(), FinalReply::Line(reply));
        let mut cmd = env.command("sendmail");
        cmd.arg("joseph");
        let out = run(cmd, SEED);
        server.join().expect("server");
        (env, out)
    };
    // A 5xx is final: exit 69 with the daemon's reply, nothing kept.
    let (env, out) = sendmail_against("550 5.7.1 Delivery not authorized\r\n");
    assert_eq!(out.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("550 5.7.1 Delivery not authorized"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.spool.join("offline").exists(), "a refused message must not go offline");
    // A 4xx is "not now": the message waits in the offline directory for the daemon's next
    // round, and the caller (cron, security(8)) sees success.
    let (env, out) = sendmail_against("451 4.3.0 Temporary failure\r\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let kept = std::fs::read_dir(env.spool.join("offline")).expect("offline dir").count();
    assert_eq!(kept, 1, "a deferred message waits offline");
}

#[test]
fn waits_for_the_final_250() {
    let env = Env::new();
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let server = smtp_server(&env.socket(), FinalReply::Gated(arrived_tx, go_rx));
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph").stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(SEED.as_bytes()).expect("stdin");
    arrived_rx.recv().expect("the dot arrives");
    // The whole message is sent, the 250 is not: sendmail must still be waiting.
    assert!(child.try_wait().expect("try_wait").is_none(), "sendmail exited before the 250");
    go_tx.send(()).expect("go");
    assert!(child.wait().expect("wait").success());
    server.join().expect("server");
}

#[test]
fn daemon_down_goes_offline() {
    let env = Env::new();
    let mut cmd = env.command("sendmail");
    cmd.args(["-F", "Joe", "joseph", "root@mx0.lan"]);
    let out = run(cmd, SEED);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_offline(&env, &["joseph@devbox-ntp.home.lan", "root@mx0.lan"]);
}

#[test]
fn stale_socket_and_lost_connection_go_offline() {
    // A socket file nobody listens on (the daemon died): connection refused.
    let env = Env::new();
    drop(std::os::unix::net::UnixListener::bind(env.socket()).expect("bind"));
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph");
    assert!(run(cmd, SEED).status.success());
    assert_offline(&env, &["joseph@devbox-ntp.home.lan"]);

    // The daemon is shutting down: 421 at the greeting, nothing is sent.
    let env = Env::new();
    let server = greeting_only(&env.socket(), "421 4.3.0 Server shutting down\r\n");
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph");
    assert!(run(cmd, SEED).status.success());
    assert!(server.join().expect("server").iter().all(|l| !l.starts_with("MAIL")));
    assert_offline(&env, &["joseph@devbox-ntp.home.lan"]);

    // The daemon takes the message and vanishes before its 250: keep a copy offline.
    let env = Env::new();
    let server = smtp_server(&env.socket(), FinalReply::Hangup);
    let mut cmd = env.command("sendmail");
    cmd.arg("joseph");
    assert!(run(cmd, SEED).status.success());
    server.join().expect("server");
    assert_offline(&env, &["joseph@devbox-ntp.home.lan"]);
}

fn assert_offline(env: &Env, rcpts: &[&str]) {
    let dir = env.spool.join("offline");
    assert_eq!(std::fs::metadata(&dir).expect("offline dir").mode() & 0o7777, 0o1777);
    let taken = mxd::submit::take_offline(&env.spool).expect("take_offline");
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (path, msg) = &taken[0];
    assert_eq!(std::fs::metadata(path).expect("stat").mode() & 0o777, 0o600);
    let msg = msg.as_ref().expect("readable offline file");
    assert_eq!(msg.uid, nix::unistd::getuid().as_raw());
    assert_eq!(msg.user, user_name());
    assert_eq!(msg.sender, format!("{}@{HOST}", user_name()));
    assert_eq!(msg.recipients, rcpts);
    let text = String::from_utf8_lossy(&msg.message);
    assert!(text.starts_with("From: "), "{text}");
    assert!(text.contains("\nDate: ") && text.contains("\nMessage-ID: <"), "{text}");
    assert!(text.ends_with("\n\nHello, EHLO!\n"), "{text}");
    assert!(!text.contains('\r'), "offline messages use LF endings");
}
