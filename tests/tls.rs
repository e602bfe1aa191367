//! TLS (issue 4) against the real daemon: certificates made with the seed's own openssl
//! commands, python3 smtplib (starttls, SMTP_SSL), openssl s_client, curl, raw sockets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{python, Mxd};

/// The seed's commands: genrsa 4096, chmod 600, req -x509 -days 18250 with a -subj line.
fn seed_cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{cn}.key"));
    let crt = dir.join(format!("{cn}.crt"));
    run("openssl", &["genrsa", "-out", key.to_str().unwrap(), "4096"]);
    run("chmod", &["600", key.to_str().unwrap()]);
    self_sign(&key, &crt, "18250", &format!("/C=US/ST=State/L=Town/O=Org/OU=/CN={cn}"));
    (crt, key)
}

fn ec_cert(dir: &Path, cn: &str, alg: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{cn}.key"));
    let crt = dir.join(format!("{cn}.crt"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(alg);
    args.extend_from_slice(&["-out", key.to_str().unwrap()]);
    run("openssl", &args);
    run("chmod", &["600", key.to_str().unwrap()]);
    self_sign(&key, &crt, "30", &format!("/CN={cn}"));
    (crt, key)
}

/// `openssl req -x509` over an existing key, as the seed's commands make a certificate.
fn self_sign(key: &Path, crt: &Path, days: &str, subj: &str) {
    let (key, crt) = (key.to_str().unwrap(), crt.to_str().unwrap());
    run("openssl", &["req", "-x509", "-new", "-key", key, "-out", crt, "-days", days, "-subj", subj]);
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// basic_conf plus a pki and one TLS listener line (`mode` is e.g. "tls-require", "smtps").
fn tls_mxd(mode: &str, env: &[(&str, &str)]) -> (Mxd, u16) {
    let tls_port = common::free_port();
    let mode = mode.to_owned();
    let mxd = Mxd::start_with(
        move |d, p| {
            let (crt, key) = seed_cert(d, "mx0.test");
            format!(
                "pki mx0.test cert \"{}\"\npki mx0.test key \"{}\"\n{}listen on 127.0.0.1 port {tls_port} {mode} pki mx0.test\n",
                crt.display(),
                key.display(),
                common::basic_conf(d, p)
            )
        },
        env,
    );
    (mxd, tls_port)
}

const STARTTLS_SEND: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", port, local_hostname="node.test") as s:
    s.ehlo()
    assert s.has_extn("starttls"), s.esmtp_features
    s.starttls(context=ctx)
    s.ehlo()
    assert not s.has_extn("starttls"), "STARTTLS offered again after TLS"
    print("cipher", s.sock.version(), s.sock.cipher()[0])
    s.sendmail("joseph@node.test", ["joseph@test"], b"Subject: Test Subject\r\n\r\nHello, EHLO!\r\n")
"#;

#[test]
fn starttls_with_seed_certificate_and_esmtps_received_header() {
    if !common::can_run(
        "starttls_with_seed_certificate_and_esmtps_received_header",
        &[common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let (mxd, tls_port) = tls_mxd("tls-require", &[]);
    let out = python(STARTTLS_SEND, &[&tls_port.to_string()]);
    assert!(out.contains("cipher TLSv1.3"), "{out}");
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1, "{}", mxd.log());
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(text.contains("with ESMTPS id "), "{text}");
    assert!(text.contains("(TLSv1.3:TLS13_"), "{text}");
    assert!(text.contains(":NO)"), "{text}");
    assert!(mxd.logged("smtp tls ciphers=TLSv1.3:"), "{}", mxd.log());
}

#[test]
fn tls_require_refuses_plaintext_mail() {
    if !common::can_run("tls_require_refuses_plaintext_mail", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let (mxd, tls_port) = tls_mxd("tls-require", &[]);
    let mut c = common::Client::connect(tls_port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    drop(mxd);
}

#[test]
fn openssl_s_client_starttls_and_smtps() {
    if !common::can_run("openssl_s_client_starttls_and_smtps", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let (mxd, tls_port) = tls_mxd("tls", &[]);
    let out =
        s_client(&["-starttls", "smtp", "-connect", &format!("127.0.0.1:{tls_port}")], "EHLO client.test\r\nQUIT\r\n");
    assert!(out.contains("250-PIPELINING") || out.contains("250 PIPELINING") || out.contains("250-8BITMIME"), "{out}");
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    drop(mxd);
    let (mxd, smtps_port) = tls_mxd("smtps", &[]);
    let out = s_client(&["-connect", &format!("127.0.0.1:{smtps_port}")], "EHLO client.test\r\nQUIT\r\n");
    assert!(out.contains("220 mx.test ESMTP"), "{out}");
    assert!(out.contains("221 "), "{out}");
    drop(mxd);
}

fn s_client(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .args(["-brief", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().expect("stdin");
    // Give the handshake and greeting a moment before the commands.
    std::thread::sleep(Duration::from_millis(700));
    stdin.write_all(input.as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let out = child.wait_with_output().expect("s_client");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn smtps_with_python_smtp_ssl() {
    if !common::can_run("smtps_with_python_smtp_ssl", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let (mxd, port) = tls_mxd("smtps", &[]);
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx) as s:
    s.sendmail("a@example.org", ["alice@test"], b"Subject: smtps\r\n\r\nover smtps\r\n")
"#;
    python(script, &[&port.to_string()]);
    let msgs = mxd.messages("alice");
    assert_eq!(msgs.len(), 1);
    assert!(String::from_utf8_lossy(&msgs[0]).contains("with ESMTPS id"));
}

#[test]
fn swaks_sends_plain_and_over_starttls() {
    let needs = [
        common::Need::Program("openssl", "openssl"),
        common::Need::Program("swaks", "swaks"),
        common::Need::PerlModule("Net::SSLeay", "libnet-ssleay-perl"),
    ];
    if !common::can_run("swaks_sends_plain_and_over_starttls", &needs) {
        return;
    }
    let (mxd, tls_port) = tls_mxd("tls", &[]);
    for (port, tls, want) in [(mxd.port, None, "with ESMTP id"), (tls_port, Some("-tls"), "with ESMTPS id")] {
        let port = port.to_string();
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", "127.0.0.1", "--port", &port, "--from", "a@example.org", "--to", "alice@test"]);
        cmd.args(["--helo", "client.test", "--header", "Subject: swaks", "--body", "sent by swaks"]);
        cmd.args(tls);
        let out = cmd.output().expect("swaks");
        assert!(
            out.status.success(),
            "swaks: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let msgs: Vec<String> = mxd.messages("alice").iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        assert!(msgs.iter().any(|m| m.contains(want) && m.contains("\nsent by swaks\n")), "{msgs:?}");
    }
    assert_eq!(mxd.messages("alice").len(), 2);
}

#[test]
fn curl_sends_over_starttls() {
    if !common::can_run(
        "curl_sends_over_starttls",
        &[common::Need::Program("openssl", "openssl"), common::Need::Program("curl", "curl")],
    ) {
        return;
    }
    let (mxd, port) = tls_mxd("tls-require", &[]);
    let mail = mxd.path().join("mail.txt");
    std::fs::write(&mail, "From: a@example.org\r\nSubject: curl\r\n\r\nsent by curl\r\n").expect("write");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--ssl-reqd",
            "-k",
            &format!("smtp://127.0.0.1:{port}"),
            "--mail-from",
            "a@example.org",
            "--mail-rcpt",
            "joseph@test",
            "-T",
        ])
        .arg(&mail)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1);
    assert!(String::from_utf8_lossy(&msgs[0]).ends_with("sent by curl\n"));
}

#[test]
fn starttls_injection_is_discarded() {
    if !common::can_run("starttls_injection_is_discarded", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let (mxd, port) = tls_mxd("tls", &[]);
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def reply(f):
    lines = []
    while True:
        l = f.readline(); lines.append(l)
        if len(l) < 4 or l[3:4] != b"-": return b"".join(lines)
reply(f)
s.sendall(b"EHLO x\r\n"); reply(f)
s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
r = reply(f); assert r.startswith(b"220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s); g = t.makefile("rb")
t.sendall(b"EHLO x\r\n"); reply(g)
t.sendall(b"RCPT TO:<joseph@test>\r\n"); print(reply(g).decode().strip())
"#;
    let out = python(script, &[&port.to_string()]);
    assert!(out.starts_with("503 5.5.1"), "injected MAIL must not have run: {out}");
    drop(mxd);
}

#[test]
fn garbage_and_stalled_handshakes_do_not_stop_service() {
    if !common::can_run(
        "garbage_and_stalled_handshakes_do_not_stop_service",
        &[common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let (mxd, port) = tls_mxd("smtps", &[("MXD_SMTP_TIMEOUT", "2")]);
    use std::io::{Read, Write};
    // Garbage instead of a ClientHello: dropped.
    let mut g = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.write_all(&[0x47u8; 4096]).expect("garbage");
    let mut buf = [0u8; 1024];
    let mut closed = false;
    for _ in 0..10 {
        match g.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "garbage client not dropped");
    // A stalled client: connects, says nothing. Others are served meanwhile.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx) as s:
    s.sendmail("a@example.org", ["joseph@test"], b"Subject: meanwhile\r\n\r\nserved\r\n")
"#;
    python(script, &[&port.to_string()]);
    assert_eq!(mxd.messages("joseph").len(), 1);
    let started = std::time::Instant::now();
    // The server may send a TLS alert before it closes; what matters is that it closes.
    let mut eof = false;
    for _ in 0..4 {
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => {
                eof = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(eof, "stalled handshake closed");
    assert!(started.elapsed() < Duration::from_secs(9), "stalled handshake timed out");
    assert!(mxd.logged("handshake timed out"), "{}", mxd.log());
}

#[test]
fn ecdsa_and_ed25519_keys_and_sni_choice() {
    if !common::can_run("ecdsa_and_ed25519_keys_and_sni_choice", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let port = common::free_port();
    let mxd = Mxd::start_with(
        move |d, p| {
            let (c1, k1) = ec_cert(d, "ec.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            let (c2, k2) = ec_cert(d, "ed.test", &["-algorithm", "ED25519"]);
            let (c3, k3) = ec_cert(d, "p384.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]);
            format!(
                "pki ec.test cert \"{}\"\npki ec.test key \"{}\"\npki ed.test cert \"{}\"\npki ed.test key \"{}\"\npki p384.test cert \"{}\"\npki p384.test key \"{}\"\n{}listen on 127.0.0.1 port {port} smtps pki ec.test pki ed.test pki p384.test\n",
                c1.display(), k1.display(), c2.display(), k2.display(), c3.display(), k3.display(),
                common::basic_conf(d, p)
            )
        },
        &[],
    );
    let default = s_client(&["-connect", &format!("127.0.0.1:{port}"), "-showcerts"], "QUIT\r\n");
    assert!(default.contains("CN = ec.test") || default.contains("CN=ec.test"), "{default}");
    for name in ["ed.test", "p384.test"] {
        let sni = s_client(&["-connect", &format!("127.0.0.1:{port}"), "-servername", name], "QUIT\r\n");
        assert!(sni.contains(&format!("CN = {name}")) || sni.contains(&format!("CN={name}")), "SNI {name}: {sni}");
    }
    drop(mxd);
}

#[test]
fn bad_keys_are_refused_by_mxd_n() {
    if !common::can_run("bad_keys_are_refused_by_mxd_n", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = seed_cert(dir.path(), "a.test");
    let (_crt2, key2) = ec_cert(dir.path(), "b.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let conf = dir.path().join("smtpd.conf");
    let check = |cert: &Path, key: &Path| {
        std::fs::write(
            &conf,
            format!(
                "pki a.test cert \"{}\"\npki a.test key \"{}\"\nlisten on 127.0.0.1 port 2599 tls pki a.test\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(common::MXD).arg("-n").arg("-f").arg(&conf).output().expect("mxd -n");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(&crt, &key);
    assert!(ok, "{out}");
    let (ok, out) = check(&crt, &key2);
    assert!(!ok && out.contains("does not match"), "mismatch: {out}");
    run("chmod", &["644", key.to_str().unwrap()]);
    let (ok, out) = check(&crt, &key);
    assert!(!ok && out.contains("insecure permissions") && out.contains("a.test.key"), "{out}");
    let (ok, out) = check(&crt, &dir.path().join("missing.key"));
    assert!(!ok && out.contains("missing.key"), "{out}");
}

#[test]
fn sighup_reloads_certificates() {
    if !common::can_run("sighup_reloads_certificates", &[common::Need::Program("openssl", "openssl")]) {
        return;
    }
    let port = common::free_port();
    let mxd = Mxd::start_with(
        move |d, p| {
            let (crt, key) = ec_cert(d, "old.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            std::fs::rename(&crt, d.join("cur.crt")).unwrap();
            std::fs::rename(&key, d.join("cur.key")).unwrap();
            format!("pki mx cert \"{0}/cur.crt\"\npki mx key \"{0}/cur.key\"\n{1}listen on 127.0.0.1 port {port} smtps pki mx\n", d.display(), common::basic_conf(d, p))
        },
        &[],
    );
    let before = s_client(&["-connect", &format!("127.0.0.1:{port}")], "QUIT\r\n");
    assert!(before.contains("old.test"), "{before}");
    let (crt, key) = ec_cert(mxd.path(), "new.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    std::fs::rename(&crt, mxd.path().join("cur.crt")).unwrap();
    std::fs::rename(&key, mxd.path().join("cur.key")).unwrap();
    mxd.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(700));
    let after = s_client(&["-connect", &format!("127.0.0.1:{port}")], "QUIT\r\n");
    assert!(after.contains("new.test"), "{after}\n{}", mxd.log());
}

#[test]
fn tls_require_verify_wants_a_client_certificate_from_the_ca() {
    if !common::can_run(
        "tls_require_verify_wants_a_client_certificate_from_the_ca",
        &[common::Need::Program("openssl", "openssl")],
    ) {
        return;
    }
    let port = common::free_port();
    let mxd = Mxd::start_with(
        move |d, p| {
            let (crt, key) = ec_cert(d, "mx.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            let (ca_crt, ca_key) = ec_cert(d, "ca.test", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            // A client certificate signed by that CA.
            let dir = d.display();
            let script = format!(
                "set -e; cd {dir}; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out client.key 2>/dev/null; \
                 openssl req -new -key client.key -subj /CN=node.test -out client.csr; \
                 printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=clientAuth\\n' > ext; \
                 openssl x509 -req -in client.csr -CA {} -CAkey {} -CAcreateserial -days 30 -extfile ext -out client.crt 2>/dev/null",
                ca_crt.display(),
                ca_key.display()
            );
            run("sh", &["-c", &script]);
            format!(
                "pki mx.test cert \"{}\"\npki mx.test key \"{}\"\nca clients cert \"{}\"\n{}listen on 127.0.0.1 port {port} tls-require verify pki mx.test ca clients\n",
                crt.display(), key.display(), ca_crt.display(), common::basic_conf(d, p)
            )
        },
        &[],
    );
    let script = r#"
import smtplib, ssl, sys
port, cert = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
if cert != "none":
    ctx.load_cert_chain(cert + ".crt", cert + ".key")
try:
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.starttls(context=ctx)
        s.sendmail("a@example.org", ["joseph@test"], b"Subject: verified\r\n\r\nx\r\n")
    print("sent")
except Exception as e:
    print("refused", type(e).__name__)
"#;
    let without = python(script, &[&port.to_string(), "none"]);
    assert!(without.starts_with("refused"), "{without}");
    assert!(mxd.messages("joseph").is_empty());
    let client = mxd.path().join("client");
    let with = python(script, &[&port.to_string(), client.to_str().unwrap()]);
    assert_eq!(with.trim(), "sent", "{}", mxd.log());
    assert_eq!(mxd.messages("joseph").len(), 1);
}
