//! Issue 14, `proc-exec:` tables (smtpd-tables(7)) against the real daemon: python's
//! smtplib logs in over STARTTLS on listeners whose `auth` tables are table processes of
//! the project's own (tests/tables/proc_table.py): one answers `credentials` lookups with
//! hashes `mxctl encrypt` made, one checks `auth` itself. A table that answers `error`,
//! dies or hangs costs that login a 454 (temporary), and the next login finds it started
//! again; as root, the table runs as the unprivileged user.

mod common;

use std::path::Path;

use common::{can_run, python, uid_gid, Mxd, Need};

const RIGHT: &str = "right pw";

/// A directory the unprivileged user can read (mxd's own temp dir is root's alone when the
/// tests run as root): the table program, its data, and its log of starts (world-writable).
fn table_dir() -> tempfile::TempDir {
    let files = [
        ("hashed", format!("joseph joseph:{}\n", common::mxctl_encrypt(RIGHT))),
        ("plain", format!("joseph {RIGHT}\n")),
    ];
    common::proc_table_dir(&files, &[])
}

/// One STARTTLS session per `user:password` argument; prints `user code` for each AUTH.
const LOGINS: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
for pair in sys.argv[2:]:
    user, password = pair.split(":", 1)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls()
        s.ehlo()
        s.user, s.password = user, password
        try:
            code, _ = s.auth("PLAIN", s.auth_plain)
        except smtplib.SMTPAuthenticationError as e:
            code = e.smtp_code
        print(user, code, flush=True)
"#;

fn logins(port: u16, pairs: &[&str]) -> Vec<String> {
    let mut args = vec![port.to_string()];
    args.extend(pairs.iter().map(|p| (*p).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(LOGINS, &args).lines().map(str::to_owned).collect()
}

#[test]
fn proc_tables_answer_logins_and_come_back_after_failures() {
    if !can_run("proc_tables_answer_logins_and_come_back_after_failures", &[Need::Program("python3", "python3")]) {
        return;
    }
    let t = table_dir();
    let td = t.path().display().to_string();
    let plain_port = common::free_port();
    let mx = Mxd::start_with(
        |d: &Path, p: u16| {
            let (uid, gid) = uid_gid();
            format!(
                "spool \"{dd}/spool\"\nhostname \"mx.test\"\n{pki}\
                 table hashed \"proc-exec:{td}/proc_table.py {td}/hashed {td}/starts-hashed\"\n\
                 proc plain \"{td}/proc_table.py {td}/plain {td}/starts-plain auth\"\n\
                 table plain proc:plain\n\
                 table users {{ joseph = \"{uid}:{gid}:{dd}/home/joseph\" }}\n\
                 listen on 127.0.0.1 port {p} tls pki mx.test auth <hashed>\n\
                 listen on 127.0.0.1 port {plain_port} tls pki mx.test auth <plain>\n\
                 action \"local\" maildir userbase <users>\n\
                 match from any auth for domain \"mx.test\" action \"local\"\n",
                dd = d.display(),
                pki = common::mx_test_pki(d),
            )
        },
        &[],
    );

    // `credentials` lookups: the hash is checked here. A table that answers `error`, exits
    // or never answers makes that login a 454, and the next one works again.
    let got = logins(
        mx.port,
        &[
            &format!("joseph:{RIGHT}"),
            "joseph:wrong",
            "dberror:x",
            "crash:x",
            &format!("joseph:{RIGHT}"),
            "slow:x",
            &format!("joseph:{RIGHT}"),
        ],
    );
    assert_eq!(
        got,
        ["joseph 235", "joseph 535", "dberror 454", "crash 454", "joseph 235", "slow 454", "joseph 235"],
        "{}",
        mx.log()
    );
    assert!(mx.logged("table hashed: the table answered error: database unreachable"), "{}", mx.log());
    assert!(mx.logged("table hashed: no answer within 5 s"), "{}", mx.log());
    // Started three times: at the first login, after the crash, after the hang.
    let starts = std::fs::read_to_string(t.path().join("starts-hashed")).unwrap();
    assert_eq!(starts.lines().count(), 3, "{starts}");

    // A table that registers `auth` checks the login itself.
    let got = logins(plain_port, &[&format!("joseph:{RIGHT}"), "joseph:wrong"]);
    assert_eq!(got, ["joseph 235", "joseph 535"], "{}", mx.log());

    // Never root: as root, tables run as the unprivileged user.
    if nix::unistd::geteuid().is_root() {
        let mxd_uid = nix::unistd::User::from_name("mxd").unwrap().expect("the mxd user").uid.as_raw();
        for f in ["starts-hashed", "starts-plain"] {
            let text = std::fs::read_to_string(t.path().join(f)).unwrap();
            assert!(!text.is_empty() && text.lines().all(|l| l == format!("uid={mxd_uid}")), "{f}: {text}");
        }
    }
}
