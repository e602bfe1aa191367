//! Issue 15, AUTH on listeners against the real daemon: swaks and python's smtplib log in
//! over STARTTLS on a `tls … auth <creds> senders <senders> received-auth` listener whose
//! table holds hashes the real `mxctl encrypt` made; the check runs in the delivery process.
//! Mail of a logged-in user is delivered, and relayed to a second mxd by `match auth <t>`;
//! wrong passwords, AUTH before STARTTLS and senders the table does not allow are refused;
//! a system user logs in without a table; a flood of failures from one address gets 421.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{can_run, python, uid_gid, wait_for, Mxd, Need};

const JOSEPH_PW: &str = "s3cret pass";
const ALICE_PW: &str = "alice's own";

/// The submission server: joseph (an admin) and alice log in from the `creds` table;
/// `listen` is the listener's options.
fn submission_conf(relay_to: u16, listen: &'static str) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        let (uid, gid) = uid_gid();
        let (j, a) = (common::mxctl_encrypt(JOSEPH_PW), common::mxctl_encrypt(ALICE_PW));
        format!(
            "spool \"{dd}/spool\"\nhostname \"mx.test\"\n{pki}\
             table creds {{ joseph = \"{j}\", alice = \"{a}\" }}\n\
             table senders {{ joseph = \"joseph@mx.test, @example.org\", alice = \"alice@mx.test\" }}\n\
             table admins {{ joseph }}\n\
             table users {{ joseph = \"{uid}:{gid}:{dd}/home/joseph\", alice = \"{uid}:{gid}:{dd}/home/alice\" }}\n\
             listen on 127.0.0.1 port {p} {listen} received-auth\n\
             action \"local\" maildir userbase <users>\n\
             action \"out\" relay host smtp://127.0.0.1:{relay_to}\n\
             match from any auth <admins> for domain \"remote.test\" action \"out\"\n\
             match from any auth for domain \"mx.test\" action \"local\"\n",
            dd = d.display(),
            pki = common::mx_test_pki(d),
        )
    }
}

/// The relay's destination: a plain mxd that delivers remote.test to its joseph.
fn remote_conf(d: &Path, p: u16) -> String {
    let (uid, gid) = uid_gid();
    format!(
        "spool \"{dd}/spool\"\nhostname \"remote.test\"\n\
         table users {{ joseph = \"{uid}:{gid}:{dd}/home/joseph\" }}\n\
         listen on 127.0.0.1 port {p}\n\
         action \"local\" maildir userbase <users>\n\
         match from any for domain \"remote.test\" action \"local\"\n",
        dd = d.display()
    )
}

fn swaks(port: u16, from: &str, to: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--from", from, "--to", to, "--timeout", "20"])
        .args(extra)
        .output()
        .expect("swaks");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn login<'a>(mechanism: &'a str, user: &'a str, password: &'a str) -> [&'a str; 7] {
    ["--tls", "--auth", mechanism, "--auth-user", user, "--auth-password", password]
}

fn swaks_needs(test: &str) -> bool {
    can_run(test, &[Need::Program("swaks", "swaks"), Need::PerlModule("Net::SSLeay", "libnet-ssleay-perl")])
}

#[test]
fn swaks_logs_in_delivers_relays_and_refuses() {
    if !swaks_needs("swaks_logs_in_delivers_relays_and_refuses") {
        return;
    }
    let remote = Mxd::start_with(remote_conf, &[]);
    let mx = Mxd::start_with(submission_conf(remote.port, "tls pki mx.test auth <creds> senders <senders>"), &[]);

    // PLAIN, delivered here: the Received header says ESMTPSA and names the user.
    let (ok, out) = swaks(mx.port, "joseph@mx.test", "joseph@mx.test", &login("PLAIN", "joseph", JOSEPH_PW));
    assert!(ok && out.contains("235 2.0.0 Authentication succeeded"), "{out}");
    wait_for("joseph's copy", Duration::from_secs(10), || mx.messages("joseph").len() == 1);
    let msg = String::from_utf8(mx.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("with ESMTPSA id") && msg.contains(":NO) auth=yes user=joseph"), "{msg}");
    assert!(mx.logged("smtp authentication user=joseph address=127.0.0.1 result=ok"), "{}", mx.log());

    // LOGIN, relayed to the second mxd because joseph is in <admins> (`match auth <t>`).
    let (ok, out) = swaks(mx.port, "boss@example.org", "joseph@remote.test", &login("LOGIN", "joseph", JOSEPH_PW));
    assert!(ok && out.contains("235 2.0.0"), "{out}");
    wait_for("the relayed copy", Duration::from_secs(20), || remote.messages("joseph").len() == 1);
    let msg = String::from_utf8(remote.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("by mx.test (mxd) with ESMTPSA"), "{msg}");

    // alice logs in, but `match auth <admins>` does not hold for her: no rule, 550.
    let (ok, out) = swaks(mx.port, "alice@mx.test", "joseph@remote.test", &login("PLAIN", "alice", ALICE_PW));
    assert!(!ok && out.contains("235 2.0.0") && out.contains("550 5.7.1"), "{out}");

    // A sender the `senders` table does not give her.
    let (ok, out) = swaks(mx.port, "joseph@mx.test", "alice@mx.test", &login("PLAIN", "alice", ALICE_PW));
    assert!(!ok && out.contains("550 5.7.1 Sender rejected"), "{out}");

    // A wrong password: 535, logged with user and address, never the password.
    let (ok, out) = swaks(mx.port, "joseph@mx.test", "joseph@mx.test", &login("LOGIN", "joseph", "guess1"));
    assert!(!ok && out.contains("535 5.7.8 Authentication failed"), "{out}");
    assert!(mx.logged("smtp authentication user=joseph address=127.0.0.1 result=permfail"), "{}", mx.log());
    assert!(!mx.log().contains("guess1") && !mx.log().contains(JOSEPH_PW));

    // Before STARTTLS: no AUTH offered, and MAIL needs a login.
    let (ok, out) = swaks(
        mx.port,
        "joseph@mx.test",
        "joseph@mx.test",
        &["--auth", "PLAIN", "--auth-user", "joseph", "--auth-password", JOSEPH_PW],
    );
    assert!(!ok && !out.contains("250-AUTH"), "{out}");
    let mut c = mx.connect();
    assert!(c.cmd("EHLO c").contains("250-STARTTLS"));
    assert!(c.cmd("AUTH PLAIN AGpvc2VwaABzM2NyZXQgcGFzcw==").starts_with("503 5.5.1"));
    assert!(c.cmd("MAIL FROM:<joseph@mx.test>").starts_with("530 5.7.0 Must issue an AUTH command first"));
    assert_eq!(mx.messages("joseph").len(), 1, "nothing else delivered here");
}

#[test]
fn python_smtplib_logs_in_on_auth_optional() {
    let remote = Mxd::start_with(remote_conf, &[]);
    let mx = Mxd::start_with(submission_conf(remote.port, "tls pki mx.test auth-optional <creds>"), &[]);
    let script = r#"
import smtplib, sys, time
port, password = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo()
    print("before-tls", s.has_extn("auth"))
    s.starttls()
    s.ehlo()
    print("after-tls", s.esmtp_features.get("auth", "").strip())
    s.user, s.password = "joseph", "nope"
    started = time.monotonic()
    try:
        s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        print("wrong", e.smtp_code, "late" if time.monotonic() - started >= 0.9 else "at once")
    s.user, s.password = "joseph", password
    code, _ = s.auth("PLAIN", s.auth_plain)
    print("plain", code)
    s.sendmail("joseph@mx.test", ["alice@mx.test"], b"Subject: smtplib\r\n\r\nhi\r\n")
    print("sent")
    code, _ = s.docmd("AUTH", "PLAIN AGpvc2VwaABzM2NyZXQgcGFzcw==")
    print("twice", code)
"#;
    let out = python(script, &[&mx.port.to_string(), JOSEPH_PW]);
    assert_eq!(out, "before-tls False\nafter-tls PLAIN LOGIN\nwrong 535 late\nplain 235\nsent\ntwice 503\n");
    wait_for("alice's copy", Duration::from_secs(10), || mx.messages("alice").len() == 1);
    let msg = String::from_utf8(mx.messages("alice").remove(0)).unwrap();
    assert!(msg.contains("auth=yes user=joseph") && msg.contains("Subject: smtplib"), "{msg}");
    // auth-optional: no login is needed to send, and the header says so.
    let script = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.starttls()
    s.sendmail("x@example.org", ["alice@mx.test"], b"Subject: anonymous\r\n\r\nhi\r\n")
"#;
    // No rule accepts a session that did not log in: refused at RCPT, after MAIL was fine.
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(mx.port.to_string()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("550"), "{out:?}");
}

/// Removes the system user it names when dropped.
struct SystemUser(&'static str);

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(self.0).stderr(std::process::Stdio::null()).status();
    }
}

#[test]
fn a_system_user_logs_in_without_a_table() {
    if !swaks_needs("a_system_user_logs_in_without_a_table")
        || !can_run(
            "a_system_user_logs_in_without_a_table",
            &[Need::Root, Need::Program("useradd", "passwd"), Need::Program("chpasswd", "passwd")],
        )
    {
        return;
    }
    let name = "mxdauthtest";
    let _ = Command::new("userdel").arg(name).stderr(std::process::Stdio::null()).status();
    assert!(Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", name])
        .status()
        .unwrap()
        .success());
    let user = SystemUser(name);
    let mut chpasswd =
        Command::new("chpasswd").args(["-c", "SHA512"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(chpasswd.stdin.as_mut().unwrap(), format!("{name}:{JOSEPH_PW}\n").as_bytes()).unwrap();
    assert!(chpasswd.wait().unwrap().success());
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    assert!(shadow.lines().any(|l| l.starts_with(&format!("{name}:$6$"))), "a SHA-512 hash");

    let mx = Mxd::start_with(submission_conf(common::free_port(), "tls pki mx.test auth"), &[]);
    let (ok, out) = swaks(mx.port, "x@mx.test", "joseph@mx.test", &login("PLAIN", name, JOSEPH_PW));
    assert!(ok && out.contains("235 2.0.0"), "{out}\n{}", mx.log());
    wait_for("joseph's copy", Duration::from_secs(10), || mx.messages("joseph").len() == 1);
    let (ok, out) = swaks(mx.port, "x@mx.test", "joseph@mx.test", &login("LOGIN", name, "wrong"));
    assert!(!ok && out.contains("535 5.7.8"), "{out}");
    // yescrypt, Debian's default form.
    let mut chpasswd =
        Command::new("chpasswd").args(["-c", "YESCRYPT"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(chpasswd.stdin.as_mut().unwrap(), format!("{name}:{JOSEPH_PW}\n").as_bytes()).unwrap();
    assert!(chpasswd.wait().unwrap().success());
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    assert!(shadow.lines().any(|l| l.starts_with(&format!("{name}:$y$"))), "a yescrypt hash");
    let (ok, out) = swaks(mx.port, "x@mx.test", "joseph@mx.test", &login("PLAIN", name, JOSEPH_PW));
    assert!(ok && out.contains("235 2.0.0"), "{out}\n{}", mx.log());
    drop(user);
}

#[test]
fn a_flood_of_failures_from_one_address_gets_421() {
    let mx = Mxd::start_with(submission_conf(common::free_port(), "tls pki mx.test auth <creds>"), &[]);
    // Four sessions at once, three wrong passwords each (the session's own limit closes
    // each with 421 after its third), then a fresh session is refused at AUTH, even with
    // the right password.
    let script = r#"
import base64, smtplib, sys, threading
port, password = int(sys.argv[1]), sys.argv[2]
codes = []
def guess(n):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.starttls()
    s.ehlo()
    for i in range(3):
        try:
            code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0joseph\0guess%d" % i).decode())
        except smtplib.SMTPServerDisconnected:
            code = "closed"
        codes.append(code)
    s.close()
threads = [threading.Thread(target=guess, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("guesses", sorted(codes))
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.starttls()
s.ehlo()
s.user, s.password = "joseph", password
try:
    code, text = s.auth("PLAIN", s.auth_plain)
except smtplib.SMTPAuthenticationError as e:
    code, text = e.smtp_code, e.smtp_error
except smtplib.SMTPServerDisconnected:
    code, text = "closed", b""
print("then", code, text.decode())
"#;
    let out = python(script, &[&mx.port.to_string(), JOSEPH_PW]);
    // The tenth failure blocks the address: a guess still on its way may get 421 already.
    let guesses = out.lines().next().unwrap_or_default();
    assert!(guesses.matches("535").count() >= 10 && guesses.matches(", ").count() == 11, "{out}");
    assert_eq!(guesses.matches("535").count() + guesses.matches("421").count(), 12, "{out}");
    assert!(out.contains("then 421 4.7.0 Too many authentication failures from your address"), "{out}");
    assert!(mx.logged("smtp authentication user=joseph address=127.0.0.1 result=blocked"), "{}", mx.log());
    assert!(mx.logged("failed logins from 127.0.0.1"), "{}", mx.log());
}

#[test]
fn swaks_logs_in_on_smtps() {
    if !swaks_needs("swaks_logs_in_on_smtps") {
        return;
    }
    let mx = Mxd::start_with(submission_conf(common::free_port(), "smtps pki mx.test auth <creds>"), &[]);
    let args = ["--tlsc", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", ALICE_PW];
    let (ok, out) = swaks(mx.port, "alice@mx.test", "joseph@mx.test", &args);
    assert!(ok && out.contains("235 2.0.0"), "{out}");
    wait_for("joseph's copy", Duration::from_secs(10), || mx.messages("joseph").len() == 1);
    let msg = String::from_utf8(mx.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("with ESMTPSA") && msg.contains("auth=yes user=alice"), "{msg}");
}

#[test]
fn mxd_relays_to_mxd_with_auth() {
    let mx = Mxd::start_with(submission_conf(common::free_port(), "tls pki mx.test auth <creds>"), &[]);
    let top = format!("table secrets {{ mx = \"joseph:{JOSEPH_PW}\" }}\n");
    let relay = format!("host smtp+tls://mx@127.0.0.1:{} tls no-verify auth <secrets>", mx.port);
    let node = Mxd::start_with(common::node_conf(top, relay), &[]);
    python(common::SEND, &[&node.port.to_string(), "root@node.test", "joseph@mx.test", "relayed-with-auth"]);
    wait_for("the relayed copy", Duration::from_secs(20), || mx.messages("joseph").len() == 1);
    let msg = String::from_utf8(mx.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("by mx.test (mxd) with ESMTPSA") && msg.contains("auth=yes user=joseph"), "{msg}");
    assert!(mx.logged("smtp authentication user=joseph address=127.0.0.1 result=ok"), "{}", mx.log());
}
