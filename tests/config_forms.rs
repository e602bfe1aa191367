//! Issue 14, through the real binary: OpenSMTPD 7.x forms that must not only load but work
//! (`listen on localhost`, service-name ports, macros of several words, inline tables after
//! `from src`, regex matches), and what `mxd -n` and the daemon say about statements mxd
//! parses but does not run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{can_run, python, uid_gid, Mxd, Need, MXD};

const SEND: &str = r#"
import smtplib, sys
port, sender = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP()
code, msg = s.connect("127.0.0.1", port)
print("greeting", code, msg.decode())
with s:
    try:
        print("refused", s.sendmail(sender, ["joseph@test"], b"Subject: t\r\n\r\nfrom " + sender.encode() + b"\r\n"))
    except smtplib.SMTPRecipientsRefused as e:
        print("rcpt refused", e.recipients)
"#;

fn users(d: &Path) -> String {
    let (uid, gid) = uid_gid();
    format!("table users {{ joseph = \"{uid}:{gid}:{}/home/joseph\" }}\n", d.display())
}

/// `listen on localhost` (resolved at load), its options from a macro of several words,
/// inline tables after `from src` and `for domain`, and a regex on the sender.
#[test]
fn localhost_macro_words_inline_src_tables_and_regex() {
    let mxd = Mxd::start_with(
        |d, port| {
            format!(
                "spool \"{d}/spool\"\nhostname \"mx.test\"\n{users}\
                 opts = \"port {port} hostname greet.test\"\n\
                 listen on localhost $opts\n\
                 action \"local\" maildir userbase <users>\n\
                 match from src {{ 192.0.2.1, 198.51.100.0/24 }} for any reject\n\
                 match from src {{ 127.0.0.1, ::1 }} mail-from regex \"@ok\\.test$\" for domain {{ test, other.test }} action \"local\"\n\
                 match from any for any reject\n",
                d = d.display(),
                users = users(d)
            )
        },
        &[],
    );
    let ok = python(SEND, &[&mxd.port.to_string(), "cron@ok.test"]);
    assert!(ok.contains("refused {}"), "{ok}\n{}", mxd.log());
    let bad = python(SEND, &[&mxd.port.to_string(), "cron@nok.test"]);
    assert!(bad.contains("rcpt refused") && bad.contains("550"), "{bad}");
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1, "{}", mxd.log());
    assert!(String::from_utf8_lossy(&msgs[0]).ends_with("\n\nfrom cron@ok.test\n"));
    // The listener's `hostname` (from the macro) greets.
    assert!(ok.contains("greeting 220 greet.test "), "{ok}");
}

/// `port submission` is 587: bound in a network namespace of the test's own, so nothing on
/// the host is touched.
#[test]
fn service_name_port_accepts_mail() {
    if !can_run("service_name_port_accepts_mail", &[Need::Root, Need::Program("ip", "iproute2")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = d.join("smtpd.conf");
    std::fs::write(
        &conf,
        format!(
            "spool \"{dd}/spool\"\nhostname \"mx.test\"\n{users}listen on localhost port submission\n\
             action \"local\" maildir userbase <users>\nmatch from any for domain test action \"local\"\n",
            dd = d.display(),
            users = users(d)
        ),
    )
    .unwrap();
    let ns = format!("mxd-port-{}", std::process::id());
    let _ns = Netns::new(&ns);
    let log = std::fs::File::create(d.join("mxd.log")).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, MXD, "-d", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let script = r#"
import smtplib, socket, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", 587), 1).close()
        break
    except OSError:
        time.sleep(0.05)
with smtplib.SMTP("127.0.0.1", 587) as s:
    print("refused", s.sendmail("a@example.org", ["joseph@test"], b"Subject: 587\r\n\r\nsubmission\r\n"))
"#;
    let out = Command::new("ip").args(["netns", "exec", &ns, "python3", "-c", script]).output().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let log = std::fs::read_to_string(d.join("mxd.log")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused {}"), "{out:?}\n{log}");
    let files = common::read_dir_files(&d.join("home/joseph/Maildir/new"));
    assert_eq!(files.len(), 1, "{log}");
    assert!(String::from_utf8_lossy(&files[0]).ends_with("\n\nsubmission\n"));
}

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns add {name} && ip -n {name} link set lo up"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `mxd -n` accepts knobs with a notice each and a relay filter with a "not run" line; the daemon
/// refuses to start with it, naming its line, rather than send mail unfiltered.
#[test]
fn notices_from_mxd_n_and_a_filter_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("smtpd.conf");
    let spool = dir.path().join("spool");
    std::fs::write(
        &conf,
        format!(
            "spool \"{}\"\nlisten on 127.0.0.1 port 2599\nsmtp ciphers \"HIGH\"\nmta max-deferred 100\n\
             filter \"h\" phase helo match helo regex {{ \"^x\" }} reject \"550 no\"\n\
             action \"out\" relay filter \"h\"\n",
            spool.display()
        ),
    )
    .unwrap();
    let out = Command::new(MXD).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration OK\n");
    assert!(err.contains("smtpd.conf:3: smtp ciphers: accepted, no effect"), "{err}");
    assert!(err.contains("smtpd.conf:4: mta max-deferred: accepted, no effect"), "{err}");
    assert!(err.contains("smtpd.conf:6: relay filter: smtp-out filters"), "{err}");
    let mut child = Command::new(MXD).arg("-d").arg("-f").arg(&conf).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("mxd started with a filter it does not run");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("smtpd.conf:6: relay filter: smtp-out filters") && err.contains("mxd refuses"), "{err}");
}

/// Several `pki` on one listener: the first is the default when the client names none (as
/// OpenSMTPD); SNI naming the second selects it, and SNI chooses only among the listener's pkis.
#[test]
fn first_pki_of_a_listener_is_the_default() {
    if !can_run("first_pki_of_a_listener_is_the_default", &[Need::Program("openssl", "openssl")]) {
        return;
    }
    let port = common::free_port();
    let mxd = Mxd::start_with(
        move |d, p| {
            let mut pkis = String::new();
            for cn in ["first.test", "second.test", "other.test"] {
                let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
                params.distinguished_name.push(rcgen::DnType::CommonName, cn);
                let pair = rcgen::KeyPair::generate().unwrap();
                let cert = params.self_signed(&pair).unwrap();
                let (crt, key) = (d.join(format!("{cn}.crt")), d.join(format!("{cn}.key")));
                std::fs::write(&crt, cert.pem()).unwrap();
                std::fs::write(&key, pair.serialize_pem()).unwrap();
                std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                pkis += &format!("pki {cn} cert \"{}\"\npki {cn} key \"{}\"\n", crt.display(), key.display());
            }
            format!(
                "{pkis}{}listen on 127.0.0.1 port {port} smtps pki first.test pki second.test\n",
                common::basic_conf(d, p)
            )
        },
        &[],
    );
    let subject = |sni: Option<&str>| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-brief"]);
        match sni {
            Some(name) => cmd.args(["-servername", name]),
            None => cmd.arg("-noservername"),
        };
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let default = subject(None);
    assert!(default.contains("first.test"), "{default}\n{}", mxd.log());
    let second = subject(Some("second.test"));
    assert!(second.contains("second.test"), "{second}");
    // A pki the configuration defines but this listener does not name is never served here.
    let other = subject(Some("other.test"));
    assert!(other.contains("first.test") && !other.contains("other.test"), "{other}");
}
