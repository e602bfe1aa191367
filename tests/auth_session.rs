//! Issue 15, the AUTH exchange with real clients (swaks, python3 smtplib) before the daemon
//! is wired: a small blocking server drives the sans-IO `Session` over a real socket with
//! mxd's own TLS configuration, and checks credentials with `mxd::auth` against a table
//! whose hash the real `mxctl encrypt` made — what the daemon will do once the process split
//! lands, minus the privilege separation and the failure delay.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_run, python, Need};
use mxd::smtp::{
    AcceptAll, AuthConfig, AuthPolicy, AuthResult, Event, Outcome, Session, SessionConfig, TlsInfo, TlsPolicy,
};
use rustls::{ServerConnection, StreamOwned};

const PASSWORD: &str = "s3cret pass";

enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Io {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(buf),
            Io::Tls(s) => s.write_all(buf).and_then(|()| s.flush()),
        }
    }
}

/// What the server saw, in order: `auth USER ok|failed`, `message auth=USER`.
type Seen = Arc<Mutex<Vec<String>>>;

struct Server {
    port: u16,
    seen: Seen,
    _dir: tempfile::TempDir,
}

/// Serves connections one after the other until the test ends.
fn start(policy: AuthPolicy) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let hash = std::process::Command::new(env!("CARGO_BIN_EXE_mxctl")).args(["encrypt", PASSWORD]).output().unwrap();
    let table: BTreeMap<String, String> =
        [("joseph".to_owned(), String::from_utf8(hash.stdout).unwrap().trim().to_owned())].into();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let (crt, key) = (dir.path().join("mx.crt"), dir.path().join("mx.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pkis = mxd::tls::Pkis::load([("mx", crt.as_path(), key.as_path())]).unwrap();
    let tls = mxd::tls::server_config(&pkis, "mx", None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            serve(stream, &tls, policy, &table, &record);
        }
    });
    Server { port, seen, _dir: dir }
}

fn serve(
    stream: TcpStream,
    tls: &Arc<rustls::ServerConfig>,
    policy: AuthPolicy,
    table: &BTreeMap<String, String>,
    seen: &Seen,
) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let cfg = SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1 << 20,
        max_rcpt: 10,
        max_errors: 10,
        idle_timeout: Duration::from_secs(60),
        tls: TlsPolicy::Offer,
        tls_active: false,
    };
    let mut s = Session::new(Arc::new(cfg), AcceptAll::default(), Instant::now());
    s.set_auth_config(AuthConfig::new(policy));
    let mut io = Some(Io::Plain(stream));
    let (mut pending, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let Some(conn) = io.as_mut() else { return };
        if conn.write_all(s.output()).is_err() {
            return;
        }
        s.consume_output(s.output().len());
        if s.is_closing() {
            return;
        }
        if s.wants_read() {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return s.handle_eof(),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            let n = s.handle_input(&pending, Instant::now());
            pending.drain(..n);
        }
        if let Some(req) = s.poll_auth() {
            let verdict = match mxd::auth::check_table(table.get(&req.user).map(String::as_str), req.password.expose())
            {
                Ok(true) => AuthResult::Ok,
                Ok(false) => AuthResult::Failed,
                Err(_) => AuthResult::TempFail,
            };
            seen.lock().unwrap().push(format!(
                "auth {} {}",
                req.user,
                if verdict == AuthResult::Ok { "ok" } else { "failed" }
            ));
            s.handle_auth(req.id, verdict);
        }
        while let Some(event) = s.poll_event() {
            match event {
                Event::StartTls => {
                    let Some(Io::Plain(mut tcp)) = io.take() else { return };
                    if tcp.write_all(s.output()).is_err() {
                        return;
                    }
                    s.consume_output(s.output().len());
                    pending.clear();
                    let mut conn = ServerConnection::new(Arc::clone(tls)).unwrap();
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            return;
                        }
                    }
                    s.handle_tls(TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), bits: 256 });
                    io = Some(Io::Tls(Box::new(StreamOwned::new(conn, tcp))));
                }
                Event::Message(m) => {
                    seen.lock().unwrap().push(format!("message auth={}", m.auth.as_deref().unwrap_or("-")));
                    s.handle_commit(m.id, Outcome::Ok);
                }
                Event::Close(_) | Event::Refused(_) => {}
            }
        }
    }
}

fn swaks(port: u16, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--from", "joseph@example.org", "--to", "alice@example.org"])
        .args(["--timeout", "20"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn swaks_plain_and_login_over_starttls() {
    if !can_run("swaks_plain_and_login_over_starttls", &[Need::Program("swaks", "swaks")]) {
        return;
    }
    let server = start(AuthPolicy::Required);
    for mechanism in ["PLAIN", "LOGIN"] {
        let args = ["--tls", "--auth", mechanism, "--auth-user", "joseph", "--auth-password", PASSWORD];
        let (ok, out) = swaks(server.port, &args);
        assert!(ok && out.contains("235 2.0.0 Authentication succeeded"), "{mechanism}: {out}");
        assert!(out.contains("250 2.0.0") && out.contains("Message accepted"), "{out}");
        let args = ["--tls", "--auth", mechanism, "--auth-user", "joseph", "--auth-password", "wrong"];
        let (ok, out) = swaks(server.port, &args);
        assert!(!ok && out.contains("535 5.7.8 Authentication failed"), "{mechanism}: {out}");
    }
    // Without STARTTLS, AUTH is not offered, and MAIL is refused until a login.
    let (ok, out) = swaks(server.port, &["--auth", "PLAIN", "--auth-user", "joseph", "--auth-password", PASSWORD]);
    assert!(!ok && !out.contains("250-AUTH"), "{out}");
    let (ok, out) = swaks(server.port, &["--tls"]);
    assert!(!ok && out.contains("530 5.7.0 Must issue an AUTH command first"), "{out}");
    let seen = server.seen.lock().unwrap().clone();
    let want = [
        "auth joseph ok",
        "message auth=joseph",
        "auth joseph failed",
        "auth joseph ok",
        "message auth=joseph",
        "auth joseph failed",
    ];
    assert_eq!(seen, want);
}

#[test]
fn python_smtplib_login_and_auth_before_starttls() {
    let server = start(AuthPolicy::Optional);
    let script = r#"
import smtplib, sys
port, password = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo()
    print("before-tls", s.has_extn("auth"))
    code, _ = s.docmd("AUTH", "PLAIN AGpvc2VwaABzM2NyZXQgcGFzcw==")
    print("auth-plaintext", code)
    s.starttls()
    s.ehlo()
    print("after-tls", s.has_extn("auth"))
    try:
        s.login("joseph", "nope")
    except smtplib.SMTPAuthenticationError as e:
        print("wrong", e.smtp_code)
    s.user, s.password = "joseph", password
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    print("login", code)
    s.sendmail("joseph@example.org", ["alice@example.org"], b"Subject: x\r\n\r\nhi\r\n")
    code, _ = s.docmd("AUTH", "PLAIN AGpvc2VwaABzM2NyZXQgcGFzcw==")
    print("twice", code)
"#;
    let out = python(script, &[&server.port.to_string(), PASSWORD]);
    let want = "before-tls False\nauth-plaintext 503\nafter-tls True\nwrong 535\nlogin 235\ntwice 503\n";
    assert_eq!(out, want);
    let seen = server.seen.lock().unwrap().clone();
    // smtplib's login() tries each offered mechanism in turn: PLAIN, then LOGIN.
    assert_eq!(seen, ["auth joseph failed", "auth joseph failed", "auth joseph ok", "message auth=joseph"]);
}
