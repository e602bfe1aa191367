//! Issue 16: filters through the real daemon: builtin rules on every command phase, the
//! project's all-phases filter, OpenSMTPD's filter-dkimsign (the stored message verified by
//! dkimpy, and signed still after a relay hop to a second mxd), filter-rspamd against a
//! real rspamd (GTUBE refused), filters that crash, hang or write garbage, and a reload
//! with a changed chain.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rspamd::{Rspamd, FILTER as RSPAMD_FILTER, GTUBE, RSPAMD};
use common::{basic_conf, can_run, free_port, node_conf, wait_for, Client, Mxd, Need};

const PY: &str = "/usr/bin/python3";
const DKIMSIGN: &str = "/usr/libexec/opensmtpd/filter-dkimsign";

/// `basic_conf` with `top` (filter statements) first and its listener filtered by `filter`.
fn filtered_conf(top: String, filter: &'static str) -> impl FnOnce(&Path, u16) -> String {
    move |d: &Path, p: u16| {
        let listen = format!("listen on 127.0.0.1 port {p}\n");
        let conf = basic_conf(d, p).replace(&listen, &format!("listen on 127.0.0.1 port {p} filter \"{filter}\"\n"));
        format!("{top}{conf}")
    }
}

/// The project's filter on every phase (tests/filters/all_phases.py): its `filter "all"`
/// line, and the log where it writes what it saw.
fn all_phases(dir: &Path) -> (String, std::path::PathBuf) {
    let script = common::filter_script(dir, "all_phases.py");
    let log = dir.join("phases.log");
    (format!("filter \"all\" proc-exec \"{PY} {} {}\"\n", script.display(), log.display()), log)
}

/// Sends one message in a session of its own; returns the reply to the final dot.
fn send(port: u16, from: &str, to: &str, message: &str) -> String {
    let mut c = Client::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message.replace('\n', "\r\n").as_bytes());
    let reply = c.cmd(".");
    c.cmd("QUIT");
    reply
}

#[test]
fn builtin_rules_reject_disconnect_and_junk() {
    let top = "table badhelo { \"bad.test\" }\ntable evil { \"evil.test\" }\n\
               table blocked { \"alice@test\" }\ntable spammers { \"@spam.test\" }\n\
               filter \"helo\" phase helo match helo <badhelo> reject \"550 5.7.1 go away\"\n\
               filter \"evil\" phase ehlo match helo <evil> disconnect \"421 4.7.0 bye\"\n\
               filter \"rcpt\" phase rcpt-to match rcpt-to <blocked> reject \"550 5.1.1 blocked here\"\n\
               filter \"junk\" phase mail-from match mail-from <spammers> junk\n\
               filter \"all\" chain { \"helo\", \"evil\", \"rcpt\", \"junk\" }\n"
        .to_string();
    let m = Mxd::start_with(filtered_conf(top, "all"), &[]);
    let mut c = m.connect();
    assert!(c.cmd("HELO bad.test").starts_with("550 5.7.1 go away"));
    assert!(c.cmd("EHLO good.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<x@spam.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@test>").starts_with("550 5.1.1 blocked here"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: junk\r\n\r\nhello\r\n");
    assert!(c.cmd(".").starts_with("250"));
    let stored = String::from_utf8(m.messages("joseph").pop().unwrap()).unwrap();
    assert!(stored.contains("X-Spam: Yes\n"), "{stored}");
    assert!(m.messages("alice").is_empty());

    let mut c = m.connect();
    assert!(c.cmd("EHLO evil.test").starts_with("421 4.7.0 bye"));
    assert!(c.closed());
}

#[test]
fn builtin_rules_match_regex_tables() {
    let top = "table dynhelo { \"^dyn-[0-9]+[.]\" }\ntable bulk { \"^bulk[0-9]*@\" }\n\
               filter \"dyn\" phase helo match helo regex <dynhelo> reject \"550 5.7.1 dynamic hosts go away\"\n\
               filter \"bulk\" phase mail-from match !mail-from regex <bulk> junk\n\
               filter \"re\" chain { \"dyn\", \"bulk\" }\n"
        .to_string();
    let m = Mxd::start_with(filtered_conf(top, "re"), &[]);
    let mut c = m.connect();
    assert!(c.cmd("HELO DYN-42.example.net").starts_with("550 5.7.1 dynamic hosts go away"), "{}", m.log());
    assert!(c.cmd("HELO static.dyn-42.example.net").starts_with("250"));
    // Negated: every sender but bulk ones is junk.
    for (from, junk) in [("bulk7@list.test", false), ("someone@list.test", true)] {
        assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
        assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {from}\r\n\r\nhello\r\n").as_bytes());
        assert!(c.cmd(".").starts_with("250"));
        wait_for("the message", Duration::from_secs(20), || {
            m.messages("joseph").iter().any(|b| String::from_utf8_lossy(b).contains(from))
        });
        let all = m.messages("joseph");
        let stored = all.iter().map(|b| String::from_utf8_lossy(b)).find(|t| t.contains(from)).unwrap().into_owned();
        assert_eq!(stored.contains("X-Spam: Yes\n"), junk, "{stored}");
    }
}

#[test]
fn own_filter_sees_every_phase_through_the_daemon() {
    if !can_run("own_filter_sees_every_phase_through_the_daemon", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let (all, log) = all_phases(dir.path());
    let m = Mxd::start_with(filtered_conf(all, "all"), &[]);
    let mut c = m.connect();
    assert!(c.cmd("EHLO reject.test").starts_with("550 5.7.1 helo refused"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<rewrite@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: phases\r\n\r\n..a dotted line\r\nbody\r\n");
    assert!(c.cmd(".").starts_with("250"), "{}", m.log());
    let stored = String::from_utf8(m.messages("joseph").pop().unwrap()).unwrap();
    assert!(stored.contains("X-Filtered: all_phases\nSubject: phases\n\n.a dotted line\nbody\n"), "{stored}");
    assert!(stored.contains("Return-Path: <new@example.org>"), "rewritten sender: {stored}");
    // Latin-1 text (8BITMIME) goes through the filter as bytes and is stored unchanged.
    assert!(c.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: caf\xe9\r\n\r\nd\xe9j\xe0 vu \xff\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}: {}", m.log());
    wait_for("the Latin-1 message", Duration::from_secs(20), || m.messages("joseph").len() == 2);
    let want: &[u8] = b"X-Filtered: all_phases\nSubject: caf\xe9\n\nd\xe9j\xe0 vu \xff\n";
    assert!(m.messages("joseph").iter().any(|b| b.windows(want.len()).any(|w| w == want)), "{}", m.log());
    // The phases without a transaction: each asked for, the filter's reject applies.
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("HELP").starts_with("502 5.5.1 no help from the filter"));
    assert!(c.cmd("RSET").starts_with("250"));
    // A reply that is not a reply: OpenSMTPD's 421, and the session ends.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<bad-reply@test>");
    assert!(r.starts_with("421"), "{r}: {}", m.log());
    assert!(c.closed());
    // The log holds the Latin-1 line too: read as bytes.
    let read_log = || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    wait_for("link-disconnect", Duration::from_secs(10), || read_log().contains("link-disconnect"));
    let seen = read_log();
    for what in ["link-connect", "connect", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit", "tx-commit"]
    {
        assert!(seen.lines().any(|l| l.split_whitespace().any(|w| w == what)), "{what} not seen: {seen}");
    }
    // Requests and reports as the filter received them (`EVENT PARAMS`, `PHASE PARAM`).
    for line in [
        "noop ",
        "help ",
        "rset ",
        "link-identify EHLO|client.test",
        "protocol-client EHLO client.test",
        "protocol-client .",
        "protocol-client HELP",
        "protocol-server 250-mx.test Hello client.test, pleased to meet you",
        "protocol-server 502 5.5.1 no help from the filter",
        "tx-envelope 00000001|0000000100000001",
        "tx-reset 00000002",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line:?} not seen: {seen}");
    }
    if nix::unistd::geteuid().is_root() {
        assert!(!seen.contains("uid=0\n"), "the filter ran as root: {seen}");
    }
}

#[test]
fn data_lines_stream_through_the_filter_while_the_message_arrives() {
    if !can_run("data_lines_stream_through_the_filter_while_the_message_arrives", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let (all, log) = all_phases(dir.path());
    let top = format!("{all}smtp max-message-size 4K\n");
    let m = Mxd::start_with(filtered_conf(top, "all"), &[]);
    let mut c = m.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    // Too big for the session: refused at the dot while the filter still has it; the
    // session goes on once the filter is done with it.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(80)).repeat(80).as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("552"), "{r}: {}", m.log());
    // A message whose lines reach the filter before its final dot is sent.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: streamed\r\n\r\n..first body line\r\n");
    wait_for("the first body line at the filter", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("data-line ..first body line\n")
    });
    c.send(b"last line\r\n");
    assert!(c.cmd(".").starts_with("250"), "{}", m.log());
    wait_for("the message", Duration::from_secs(20), || !m.messages("joseph").is_empty());
    let stored = String::from_utf8(m.messages("joseph").pop().unwrap()).unwrap();
    assert!(stored.contains("X-Filtered: all_phases\nSubject: streamed\n\n.first body line\nlast line\n"), "{stored}");
    assert_eq!(m.messages("joseph").len(), 1);
}

/// A self-signed certificate for `mx.test` in `dir`, as a pki block.
fn pki(dir: &Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let (crt, key) = (dir.join("mx.crt"), dir.join("mx.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("pki mx.test cert \"{}\"\npki mx.test key \"{}\"\n", crt.display(), key.display())
}

#[test]
fn own_filter_sees_starttls_auth_quit_and_their_reports() {
    if !can_run("own_filter_sees_starttls_auth_quit_and_their_reports", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let (all, log) = all_phases(dir.path());
    let hash = Command::new(env!("CARGO_BIN_EXE_mxctl")).args(["encrypt", "s3cret"]).output().expect("mxctl");
    let hash = String::from_utf8(hash.stdout).unwrap().trim().to_owned();
    let top = format!("{}table creds {{ joseph = \"{hash}\" }}\n{all}", pki(dir.path()));
    let m = Mxd::start_with(
        move |d: &Path, p: u16| {
            let listen = format!("listen on 127.0.0.1 port {p}\n");
            let with = format!("listen on 127.0.0.1 port {p} tls pki mx.test auth <creds> filter \"all\"\n");
            format!("{top}{}", basic_conf(d, p).replace(&listen, &with))
        },
        &[],
    );
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.ehlo("client.test")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    s.user, s.password = "joseph", "wrong"
    try:
        s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        print("wrong", e.smtp_code)
    s.user, s.password = "joseph", "s3cret"
    print("plain", s.auth("PLAIN", s.auth_plain)[0])
    s.sendmail("joseph@test", ["joseph@test"], b"Subject: tls\r\n\r\nhi\r\n")
    print("sent")
"#;
    let out = common::python(script, &[&m.port.to_string()]);
    assert_eq!(out, "wrong 535\nplain 235\nsent\n", "{}", m.log());
    wait_for("link-disconnect", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("link-disconnect")
    });
    let seen = std::fs::read_to_string(&log).unwrap();
    let has = |prefix: &str| seen.lines().any(|l| l.starts_with(prefix));
    // The phases, with OpenSMTPD's parameters: none for starttls and quit, the mechanism and
    // initial response for auth.
    assert!(seen.lines().any(|l| l == "starttls "), "{seen}");
    assert!(seen.lines().any(|l| l == "quit "), "{seen}");
    assert!(has("auth PLAIN AGpvc2VwaABz"), "{seen}");
    // link-tls as VERSION:CIPHER:BITS; link-auth with the verdict; credentials never shown.
    assert!(has("link-tls TLSv1.3:TLS"), "{seen}");
    assert!(seen.lines().any(|l| l == "link-auth fail|joseph"), "{seen}");
    assert!(seen.lines().any(|l| l == "link-auth pass|joseph"), "{seen}");
    assert!(seen.lines().any(|l| l == "protocol-client AUTH PLAIN ********"), "{seen}");
    assert!(seen.lines().any(|l| l == "protocol-client STARTTLS"), "{seen}");
    assert!(has("protocol-server 220 2.0.0 "), "{seen}");
    assert!(has("protocol-server 235 "), "{seen}");
    assert!(has("protocol-server 221 "), "{seen}");
    assert!(!seen.contains("s3cret"), "{seen}");
}

#[test]
fn an_idle_session_is_reported_as_a_timeout() {
    if !can_run("an_idle_session_is_reported_as_a_timeout", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let (all, log) = all_phases(dir.path());
    let m = Mxd::start_with(filtered_conf(all, "all"), &[("MXD_SMTP_TIMEOUT", "2")]);
    let mut c = m.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.reply().starts_with("421"), "the idle timeout");
    // The session's last lines: its 421, timeout, link-disconnect.
    let tail = || {
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        let at = seen.find("\ntimeout\n").map_or(String::new(), |i| seen[..i].rsplit('\n').next().unwrap().into());
        (seen.contains("\ntimeout\nlink-disconnect\n"), at)
    };
    wait_for("timeout, link-disconnect", Duration::from_secs(20), || tail().0);
    assert!(tail().1.starts_with("protocol-server 421 "), "{}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn a_line_too_long_for_filters_refuses_only_its_message() {
    if !can_run("a_line_too_long_for_filters_refuses_only_its_message", &[Need::File(PY, "python3")]) {
        return;
    }
    let dir = common::shared_tempdir();
    let (all, _log) = all_phases(dir.path());
    let m = Mxd::start_with(filtered_conf(all, "all"), &[]);
    let mut c = m.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    // 70,000 octets on one line: more than a filter could answer within what mxd reads
    // back, so the line never reaches it and the message is refused.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: long\r\n\r\n{}\r\n", "x".repeat(70_000)).as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("554 5.6.0"), "{r}: {}", m.log());
    // The filter lives on, and so does the session.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<joseph@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: short\r\n\r\nfine\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}: {}", m.log());
    wait_for("the short message", Duration::from_secs(20), || !m.messages("joseph").is_empty());
    let stored = m.messages("joseph");
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0]).contains("X-Filtered: all_phases\nSubject: short\n"));
    assert!(!m.log().contains("stopped"), "{}", m.log());
}

/// A DKIM key for example.org in `dir`, readable by the filter's user.
fn dkim_key(dir: &Path) -> (PathBuf, &'static str) {
    let key = dir.join("dkim.key");
    let ok = Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").stderr(Stdio::null()).status();
    assert!(ok.unwrap().success());
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("_dkimsign").unwrap().expect("the package's user");
        nix::unistd::chown(&key, Some(u.uid), Some(u.gid)).unwrap();
        (key, " user _dkimsign")
    } else {
        (key, "")
    }
}

/// dkimpy's verdict on `message` (LF endings) with the public half of `key`.
fn dkim_verify(dir: &Path, message: &[u8], key: &Path) -> String {
    let path = dir.join("verify.eml");
    let crlf: Vec<u8> = message.iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
    std::fs::write(&path, crlf).unwrap();
    let verify = r#"
import base64, subprocess, sys, dkim
der = subprocess.run(["openssl", "rsa", "-in", sys.argv[2], "-pubout", "-outform", "DER"],
                     capture_output=True, check=True).stdout
txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
def dns(name, timeout=5):
    assert name == b"sel._domainkey.example.org.", name
    return txt
msg = open(sys.argv[1], "rb").read()
print("verified" if dkim.verify(msg, dnsfunc=dns) else "FAILED")
"#;
    let out = Command::new(PY).arg("-c").arg(verify).arg(&path).arg(key).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn dkimsign_signs_every_message_and_the_signature_survives_a_relay_hop() {
    let needs = [
        Need::File(DKIMSIGN, "opensmtpd-filter-dkimsign"),
        Need::File("/usr/lib/python3/dist-packages/dkim/__init__.py", "python3-dkim"),
        Need::File(PY, "python3"),
        Need::Program("openssl", "openssl"),
    ];
    if !can_run("dkimsign_signs_every_message_and_the_signature_survives_a_relay_hop", &needs) {
        return;
    }
    let dir = common::shared_tempdir();
    let (key, user) = dkim_key(dir.path());
    let filter =
        format!("filter \"dkim\" proc-exec \"filter-dkimsign -d example.org -s sel -k {}\"{user}\n", key.display());
    let message = "From: Joseph <joseph@example.org>\nTo: joseph@test\nSubject: signed\n\
                   Message-ID: <1@example.org>\n\nHello.\n.A line with a leading dot.\n";

    // Stored locally: signed, and dkimpy agrees.
    let b = Mxd::start_with(filtered_conf(filter.clone(), "dkim"), &[]);
    assert!(send(b.port, "joseph@example.org", "joseph@test", message).starts_with("250"));
    let stored = b.messages("joseph").pop().unwrap();
    assert!(String::from_utf8_lossy(&stored).contains("DKIM-Signature: v=1; a=rsa-sha256;"));
    assert_eq!(dkim_verify(dir.path(), &stored, &key), "verified");
    // Latin-1 text (8BITMIME): signed over its own bytes, stored unchanged.
    let latin1: &[u8] = b"From: joseph@example.org\r\nTo: joseph@test\r\nSubject: caf\xe9\r\n\r\nd\xe9j\xe0 vu\r\n";
    let mut c = Client::connect(b.port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<joseph@example.org> BODY=8BITMIME").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(latin1);
    assert!(c.cmd(".").starts_with("250"), "{}", b.log());
    wait_for("the Latin-1 message", Duration::from_secs(20), || !b.messages("alice").is_empty());
    let stored = b.messages("alice").pop().unwrap();
    let body: &[u8] = b"Subject: caf\xe9\n\nd\xe9j\xe0 vu\n";
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains("\nDKIM-Signature: v=1;") && stored.ends_with(body), "{text}");
    assert_eq!(dkim_verify(dir.path(), &stored, &key), "verified");

    // Signed by a node, relayed to a second mxd (without filters): still verifies there.
    let plain = Mxd::start();
    let relay = format!("host smtp://127.0.0.1:{}", plain.port);
    let node = node_conf(filter, relay);
    let a = Mxd::start_with(
        move |d: &Path, p: u16| {
            let listen = format!("listen on 127.0.0.1 port {p}\n");
            node(d, p).replace(&listen, &format!("listen on 127.0.0.1 port {p} filter \"dkim\"\n"))
        },
        &[],
    );
    assert!(send(a.port, "joseph@example.org", "joseph@test", message).starts_with("250"));
    wait_for("the relayed message", Duration::from_secs(30), || !plain.messages("joseph").is_empty());
    let arrived = plain.messages("joseph").pop().unwrap();
    assert!(String::from_utf8_lossy(&arrived).contains("DKIM-Signature:"));
    assert_eq!(dkim_verify(dir.path(), &arrived, &key), "verified");
}

#[test]
fn rspamd_rejects_gtube_through_the_daemon() {
    let needs = [Need::File(RSPAMD, "rspamd"), Need::File(RSPAMD_FILTER, "opensmtpd-filter-rspamd")];
    if !can_run("rspamd_rejects_gtube_through_the_daemon", &needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rspamd = Rspamd::start(dir.path(), "greylist = null;\n");
    let port = rspamd.port;
    let top = format!("filter \"rspamd\" proc-exec \"filter-rspamd -url http://127.0.0.1:{port}\"\n");
    let m = Mxd::start_with(filtered_conf(top, "rspamd"), &[]);
    let head = "From: Joseph <joseph@example.org>\nTo: joseph@test\nDate: Tue, 01 Dec 2026 10:00:00 +0000\n";
    // filter-rspamd joins the lines without a final newline: rspamd finds the pattern on a
    // line of its own only, so a line follows it.
    let gtube = format!("{head}Message-ID: <gtube@example.org>\nSubject: test\n\n{GTUBE}\nBye.\n");
    let reply = send(m.port, "joseph@example.org", "joseph@test", &gtube);
    assert!(reply.starts_with('5') && reply.contains("Gtube"), "{reply}: {}", m.log());
    assert!(m.messages("joseph").is_empty());
    let clean = format!(
        "{head}Message-ID: <clean@example.org>\nSubject: lunch\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\nShall we have lunch on Thursday?\n"
    );
    assert!(send(m.port, "joseph@example.org", "joseph@test", &clean).starts_with("250"));
    assert_eq!(m.messages("joseph").len(), 1);
}

/// A daemon whose filtered listener runs misbehave.sh MODE, and a second, unfiltered one.
fn misbehaving(mode: &str, dir: &Path, env: &[(&str, &str)]) -> (Mxd, u16) {
    let s = common::filter_script(dir, "misbehave.sh");
    let other = free_port();
    let top = format!("filter \"bad\" proc-exec \"{} {mode}\"\n", s.display());
    let conf = filtered_conf(top, "bad");
    let m = Mxd::start_with(
        move |d: &Path, p: u16| {
            // One event loop: a session waiting for a filter must not hold up the others.
            let c = format!("threads 1\n{}", conf(d, p));
            c.replace(
                "action \"local\" maildir",
                &format!("listen on 127.0.0.1 port {other}\naction \"local\" maildir"),
            )
        },
        env,
    );
    (m, other)
}

#[test]
fn crashing_hanging_and_garbage_filters_fail_their_sessions_closed() {
    if !can_run("crashing_hanging_and_garbage_filters_fail_their_sessions_closed", &[Need::File(PY, "python3")]) {
        return;
    }
    for mode in ["crash", "garbage", "flood", "hang"] {
        let dir = common::shared_tempdir();
        let (m, other) = misbehaving(mode, dir.path(), &[("MXD_FILTER_TIMEOUT", "5")]);
        let started = Instant::now();
        let port = m.port;
        let waiting = std::thread::spawn(move || common::first_line(port));
        if mode == "hang" {
            // While a session waits for the hung filter, the loops serve everyone else.
            std::thread::sleep(Duration::from_millis(300));
            let mut c = Client::connect(other);
            assert!(c.cmd("EHLO client.test").starts_with("250"));
            assert!(started.elapsed() < Duration::from_secs(5), "served while the filter hangs");
        }
        assert!(waiting.join().unwrap().starts_with("421 4.3.0"), "{mode}: {}", m.log());
        if mode == "hang" {
            assert!(started.elapsed() >= Duration::from_secs(1), "a hang costs the timeout");
        } else {
            assert!(m.logged("filter bad stopped"), "{mode}");
            // Dead: later sessions fail closed too.
            assert!(common::first_line(m.port).starts_with("421"), "{mode}");
        }
        // Sessions of the other listener are not concerned.
        let mut c = Client::connect(other);
        assert!(c.cmd("EHLO client.test").starts_with("250"), "{mode}");
    }
}

#[test]
fn reload_changes_the_chain() {
    let rule = |helo: &str| {
        format!(
            "table bad {{ \"{helo}\" }}\nfilter \"helo\" phase helo match helo <bad> reject \"550 5.7.1 not you\"\n"
        )
    };
    let mut m = Mxd::start_with(filtered_conf(rule("first.test"), "helo"), &[]);
    assert!(m.connect().cmd("HELO first.test").starts_with("550"));
    assert!(m.connect().cmd("HELO second.test").starts_with("250"));
    let conf = filtered_conf(rule("second.test"), "helo")(m.path(), m.port);
    std::fs::write(&m.conf, conf).unwrap();
    m.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(m.logged("configuration reloaded"));
    wait_for("the new chain", Duration::from_secs(10), || m.connect().cmd("HELO second.test").starts_with("550"));
    assert!(m.connect().cmd("HELO first.test").starts_with("250"));
    let mut c = m.connect();
    c.send(b"QUIT\r\n");
    let _ = c.stream.flush();
    assert_eq!(m.stop().code(), Some(0));
}

#[test]
fn mxd_n_checks_that_filter_programs_exist() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("smtpd.conf");
    let text = "filter \"x\" proc-exec \"/nonexistent/filter-x -v\"\nlisten on 127.0.0.1 port 2599 filter \"x\"\n";
    std::fs::write(&conf, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxd")).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("smtpd.conf:1: filter 'x': /nonexistent/filter-x: not found"), "{err}");
    let exe = dir.path().join("filter-x");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    std::fs::write(&conf, text.replace("/nonexistent/filter-x", &exe.display().to_string())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxd")).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not an executable file"), "{err}");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxd")).arg("-n").arg("-f").arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn answers_for_unknown_sessions_are_ignored_and_a_filter_that_cannot_register_stops_the_start() {
    let dir = common::shared_tempdir();
    let (m, _) = misbehaving("unknown", dir.path(), &[]);
    assert!(common::first_line(m.port).starts_with("220 "), "{}", m.log());
    drop(m);

    let s = common::filter_script(dir.path(), "misbehave.sh");
    let conf = dir.path().join("smtpd.conf");
    let text = basic_conf(dir.path(), free_port());
    let listen = text.lines().find(|l| l.starts_with("listen on")).unwrap().to_string();
    let text =
        text.replace(&listen, &format!("filter \"bad\" proc-exec \"{} badreg\"\n{listen} filter \"bad\"", s.display()));
    std::fs::write(&conf, text).unwrap();
    let mut child = Command::new(common::MXD).arg("-d").arg("-f").arg(&conf).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mxd started with a filter that could not register");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{err}");
    assert!(err.contains("filter bad: handshake"), "{err}");
}
