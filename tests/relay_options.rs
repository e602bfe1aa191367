//! Relay options (issue 5): the server's certificate verified against a `ca` (and refused
//! without it), a client certificate from a `pki`, `src`, `auth` (PLAIN and LOGIN, never
//! without TLS), `mail-from`, `lmtp://` into a real Dovecot, and the bounce of a message that
//! outlives `queue ttl`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::dovecot::Dovecot;
use common::{node_conf, python, queue_files, wait_for, Mxd, SEND};

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A CA in `dir`/ca.crt, and mx0.{crt,key} (a server certificate for 127.0.0.1 and mx0.test)
/// and node.{crt,key} (a client certificate) signed by it.
fn pki_set(dir: &Path) {
    sh(&format!(
        "set -e; cd {}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=test-ca 2>/dev/null; \
         printf 'subjectAltName=IP:127.0.0.1,DNS:mx0.test\\nextendedKeyUsage=serverAuth\\n' > mx0.ext; \
         printf 'extendedKeyUsage=clientAuth\\n' > node.ext; \
         for n in mx0 node; do \
           openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n.test 2>/dev/null; \
           openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile $n.ext -out $n.crt 2>/dev/null; \
         done; chmod 600 *.key",
        dir.display()
    ));
}

#[test]
fn verified_relay_with_a_ca_and_a_client_certificate() {
    if !common::can_run(
        "verified_relay_with_a_ca_and_a_client_certificate",
        &[common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    pki_set(certs.path());
    let c = certs.path().display().to_string();
    let tls_port = common::free_port();
    // mx0 wants a client certificate from the CA on its TLS listener.
    let c0 = c.clone();
    let mx0 = Mxd::start_with(
        move |d, p| {
            format!(
                "pki mx0.test cert \"{c0}/mx0.crt\"\npki mx0.test key \"{c0}/mx0.key\"\nca clients cert \"{c0}/ca.crt\"\n{}\
                 listen on 127.0.0.1 port {tls_port} tls-require verify pki mx0.test ca clients\n",
                common::basic_conf(d, p)
            )
        },
        &[],
    );
    let top = format!(
        "ca myca cert \"{c}/ca.crt\"\npki node.test cert \"{c}/node.crt\"\npki node.test key \"{c}/node.key\"\n"
    );
    let good = Mxd::start_with(
        node_conf(top.clone(), format!("host smtp+tls://127.0.0.1:{tls_port} ca myca pki node.test")),
        &[],
    );
    python(SEND, &[&good.port.to_string(), "joseph@node.test", "joseph@test", "verified"]);
    wait_for("the message on mx0", Duration::from_secs(20), || mx0.messages("joseph").len() == 1);
    assert!(String::from_utf8_lossy(&mx0.messages("joseph")[0]).contains("with ESMTPS id "));

    // Verified against the system's CAs, mx0's certificate is refused: the message waits.
    let system =
        Mxd::start_with(node_conf(top.clone(), format!("host smtp+tls://127.0.0.1:{tls_port} pki node.test")), &[]);
    python(SEND, &[&system.port.to_string(), "joseph@node.test", "joseph@test", "unverified"]);
    wait_for("a refused certificate", Duration::from_secs(20), || system.log().contains("result=TempFail"));
    assert!(system.logged("certificate"), "{}", system.log());
    assert_eq!(queue_files(&system), 1);

    // Without its client certificate, mx0 refuses the node.
    let anonymous = Mxd::start_with(node_conf(top, format!("host smtp+tls://127.0.0.1:{tls_port} ca myca")), &[]);
    python(SEND, &[&anonymous.port.to_string(), "joseph@node.test", "joseph@test", "anonymous"]);
    wait_for("a refused session", Duration::from_secs(20), || anonymous.log().contains("result=TempFail"));
    assert_eq!(queue_files(&anonymous), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mx0.messages("joseph").len(), 1, "only the verified node got through");
}

#[test]
fn src_sets_the_source_address() {
    let mx0 = Mxd::start();
    let node = Mxd::start_with(
        node_conf("table srcs { 127.0.0.7 }\n".into(), format!("host smtp://127.0.0.1:{} src <srcs>", mx0.port)),
        &[],
    );
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "alice@test", "from-seven"]);
    wait_for("the message on mx0", Duration::from_secs(20), || mx0.messages("alice").len() == 1);
    let text = String::from_utf8_lossy(&mx0.messages("alice")[0]).into_owned();
    assert!(text.contains("[127.0.0.7]"), "{text}");
}

/// A scripted ESMTP server with STARTTLS (mx0.crt) that offers AUTH `mechanisms` only under
/// TLS and records every line it reads.
struct AuthServer {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

fn read_line(s: &mut dyn Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8];
    while !line.ends_with(b"\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        line.push(b[0]);
    }
    Some(String::from_utf8_lossy(&line).trim_end().to_owned())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn auth_server(certs: &Path, mechanisms: &'static str) -> AuthServer {
    let pkis =
        mxd::tls::Pkis::load([("mx0.test", certs.join("mx0.crt").as_path(), certs.join("mx0.key").as_path())]).unwrap();
    let config = mxd::tls::server_config(&pkis, "mx0.test", None).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let (config, log) = (Arc::clone(&config), Arc::clone(&log));
            std::thread::spawn(move || serve(tcp, &config, mechanisms, &log));
        }
    });
    AuthServer { port, seen }
}

fn serve(tcp: TcpStream, config: &Arc<rustls::ServerConfig>, mechanisms: &str, log: &Mutex<Vec<String>>) -> Option<()> {
    let mut s: Box<dyn Stream> = Box::new(tcp.try_clone().ok()?);
    let mut tls = false;
    s.write_all(b"220 scripted ESMTP\r\n").ok()?;
    loop {
        let line = read_line(&mut s)?;
        log.lock().unwrap().push(line.clone());
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" if tls => format!("250-scripted\r\n250-AUTH {mechanisms}\r\n250 PIPELINING\r\n"),
            "EHLO" => "250-scripted\r\n250-STARTTLS\r\n250 PIPELINING\r\n".into(),
            "STARTTLS" => {
                s.write_all(b"220 go ahead\r\n").ok()?;
                let conn = rustls::ServerConnection::new(Arc::clone(config)).ok()?;
                s = Box::new(rustls::StreamOwned::new(conn, tcp.try_clone().ok()?));
                tls = true;
                continue;
            }
            "AUTH" if line.eq_ignore_ascii_case("AUTH LOGIN") => {
                for prompt in ["334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"] {
                    s.write_all(prompt.as_bytes()).ok()?;
                    let answer = read_line(&mut s)?;
                    log.lock().unwrap().push(answer);
                }
                "235 2.0.0 ok\r\n".into()
            }
            "AUTH" => "235 2.0.0 ok\r\n".into(),
            "DATA" => {
                s.write_all(b"354 go\r\n").ok()?;
                while read_line(&mut s)? != "." {}
                log.lock().unwrap().push("<message>".into());
                "250 queued\r\n".into()
            }
            "QUIT" => {
                let _ = s.write_all(b"221 bye\r\n");
                return Some(());
            }
            _ => "250 ok\r\n".into(),
        };
        s.write_all(reply.as_bytes()).ok()?;
    }
}

#[test]
fn auth_plain_and_login_over_tls_with_mail_from() {
    if !common::can_run("auth_plain_and_login_over_tls_with_mail_from", &[common::Need::Program("openssl", "openssl")])
    {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    pki_set(certs.path());
    let top = "table secrets { mx = \"user1:pass word1\" }\n".to_owned();
    for (mechanisms, expected) in [
        ("PLAIN LOGIN", vec!["AUTH PLAIN AHVzZXIxAHBhc3Mgd29yZDE="]),
        ("LOGIN", vec!["AUTH LOGIN", "dXNlcjE=", "cGFzcyB3b3JkMQ=="]),
    ] {
        let server = auth_server(certs.path(), mechanisms);
        let relay = format!(
            "host smtp+tls://mx@127.0.0.1:{} tls no-verify auth <secrets> mail-from \"relay@node.test\"",
            server.port
        );
        let node = Mxd::start_with(node_conf(top.clone(), relay), &[]);
        python(SEND, &[&node.port.to_string(), "joseph@node.test", "x@far.test", "authenticated"]);
        wait_for("the message", Duration::from_secs(20), || {
            server.seen.lock().unwrap().contains(&"<message>".to_owned())
        });
        let seen = server.seen.lock().unwrap().clone();
        let auth_at = seen.iter().position(|l| l.starts_with("AUTH")).expect("AUTH sent");
        assert!(seen[..auth_at].contains(&"STARTTLS".to_owned()), "AUTH only after STARTTLS: {seen:?}");
        assert_eq!(seen[auth_at..auth_at + expected.len()], expected[..], "{mechanisms}: {seen:?}");
        assert!(seen.contains(&"MAIL FROM:<relay@node.test>".to_owned()), "{seen:?}");
    }
    // Credentials never travel in the clear: over smtp+notls the message waits instead.
    let server = auth_server(certs.path(), "PLAIN");
    let node =
        Mxd::start_with(node_conf(top, format!("host smtp+notls://mx@127.0.0.1:{} auth <secrets>", server.port)), &[]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "x@far.test", "cleartext"]);
    wait_for("a refusal", Duration::from_secs(20), || node.log().contains("result=TempFail"));
    assert!(node.logged("AUTH refused without TLS"), "{}", node.log());
    assert!(!server.seen.lock().unwrap().iter().any(|l| l.starts_with("AUTH")));
    assert_eq!(queue_files(&node), 1);
}

#[test]
fn lmtp_relay_into_dovecot_with_per_recipient_results() {
    if !common::can_run(
        "lmtp_relay_into_dovecot_with_per_recipient_results",
        &[
            common::Need::Program("dovecot", "dovecot-lmtpd"),
            common::Need::File("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ],
    ) {
        return;
    }
    let dv = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _dovecot = Dovecot::start(dv.path(), port, &["joseph@dv.test", "alice@dv.test"]);
    let node = Mxd::start_with(node_conf(String::new(), format!("host lmtp://127.0.0.1:{port}")), &[]);
    python(
        SEND,
        &[&node.port.to_string(), "joseph@node.test", "joseph@dv.test,alice@dv.test,nobody@dv.test", "over-lmtp"],
    );
    let inbox = |u: &str| common::read_dir_files(&dv.path().join("home").join(u).join("Maildir/new"));
    wait_for("both users' copies", Duration::from_secs(20), || inbox("joseph").len() == 1 && inbox("alice").len() == 1);
    let text = String::from_utf8_lossy(&inbox("joseph")[0]).into_owned();
    assert!(text.contains("by node.test (mxd) with ESMTP id "), "{text}");
    assert!(text.ends_with("over-lmtp\n"), "{text}");
    // The unknown user is refused at RCPT by Dovecot: its bounce comes back to joseph.
    wait_for("the bounce", Duration::from_secs(20), || node.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&node.messages("joseph")[0]).into_owned();
    assert!(bounce.contains("Final-Recipient: rfc822; nobody@dv.test"), "{bounce}");
    assert!(!bounce.contains("Final-Recipient: rfc822; alice@dv.test"), "{bounce}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
}

#[test]
fn a_message_older_than_queue_ttl_bounces() {
    let down = common::free_port();
    let node = Mxd::start_with(
        node_conf("queue ttl 2s\n".into(), format!("host smtp://127.0.0.1:{down}")),
        &[("MXD_RETRY_BASE", "1")],
    );
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "x@far.test", "expiring"]);
    wait_for("the expiry bounce", Duration::from_secs(30), || node.messages("joseph").len() == 1);
    let bounce = String::from_utf8_lossy(&node.messages("joseph")[0]).into_owned();
    assert!(bounce.contains("Status: 4.4.7"), "{bounce}");
    assert!(bounce.contains("Final-Recipient: rfc822; x@far.test"), "{bounce}");
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&node) == 0);
}

/// A directory the unprivileged user can read, with tests/tables/proc_table.py, its data
/// file `secrets` (`lines`) and its log of starts.
fn proc_table_dir(lines: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tables/proc_table.py");
    std::fs::copy(script, t.path().join("proc_table.py")).unwrap();
    std::fs::write(t.path().join("secrets"), lines).unwrap();
    std::fs::write(t.path().join("starts"), "").unwrap();
    for (name, mode) in [(".", 0o755), ("proc_table.py", 0o755), ("secrets", 0o644), ("starts", 0o666)] {
        std::fs::set_permissions(t.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    t
}

/// Issue 14: a relay's `auth <t>` from a `proc-exec:` table (smtpd-tables(7)), asked by the
/// relay process; a table that answers `error` leaves the message queued.
#[test]
fn relay_credentials_from_a_proc_table() {
    if !common::can_run(
        "relay_credentials_from_a_proc_table",
        &[common::Need::Program("openssl", "openssl"), common::Need::Program("python3", "python3")],
    ) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    pki_set(certs.path());
    let t = proc_table_dir("mx user1:pass word1\n");
    let top =
        format!("table secrets \"proc-exec:{td}/proc_table.py {td}/secrets {td}/starts\"\n", td = t.path().display());
    let server = auth_server(certs.path(), "PLAIN");
    let relay = format!("host smtp+tls://mx@127.0.0.1:{} tls no-verify auth <secrets>", server.port);
    let node = Mxd::start_with(node_conf(top.clone(), relay), &[]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "x@far.test", "proc-credentials"]);
    wait_for("the message", Duration::from_secs(20), || server.seen.lock().unwrap().contains(&"<message>".to_owned()));
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen.contains(&"AUTH PLAIN AHVzZXIxAHBhc3Mgd29yZDE=".to_owned()), "{seen:?}");

    // The table cannot answer for this label: the relay defers, the message stays.
    let relay = format!("host smtp+tls://dberror@127.0.0.1:{} tls no-verify auth <secrets>", server.port);
    let node = Mxd::start_with(node_conf(top, relay), &[]);
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "y@far.test", "proc-error"]);
    assert!(node.logged("the table answered error: database unreachable"), "{}", node.log());
    wait_for("a deferral", Duration::from_secs(20), || node.log().contains("result=TempFail"));
    assert_eq!(queue_files(&node), 1);
}
