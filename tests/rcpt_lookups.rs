//! Issues 14 and 15: what only the delivery process can answer is decided at RCPT and MAIL.
//! Proc tables (the project's smtpd-tables(7) program, tests/tables/proc_table.py) serve
//! aliases, virtual, userbase, a `match … for domain <t>` condition and `senders`; a
//! `forward-only` user is accepted with a ~/.forward and refused without one. Python's
//! smtplib is the client: refusals come at RCPT (or MAIL), accepted mail lands in Maildir,
//! a table process that exits costs that RCPT a 451 (nothing stored) and the next one
//! finds it started again, and sessions parked at once all get their answers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{can_run, python, uid_gid, wait_for, Mxd, Need};

const PASSWORD: &str = "right pw";

/// The table program and its data in a directory the unprivileged user can read (tables
/// run as `mxd` when the tests run as root); `home` is where the users' homes are.
fn table_dir(home: &Path) -> tempfile::TempDir {
    let (uid, gid) = uid_gid();
    let h = home.display();
    let files = [
        ("aliases", "team joseph, alice\npostmaster joseph\n".to_owned()),
        ("virt", "info@v.test alice\nalice@v.test alice\n".to_owned()),
        ("users", format!("joseph {uid}:{gid}:{h}/joseph\nalice {uid}:{gid}:{h}/alice\n")),
        ("domains", "d.test\n".to_owned()),
        ("senders", "joseph joseph@mx.test, ops@mx.test\n".to_owned()),
    ];
    common::proc_table_dir(&files, &[])
}

/// `RCPTS PORT RCPT...`: one session per recipient (MAIL, RCPT and, when accepted, DATA
/// with the recipient as body); prints `RCPT CODE` for RCPT's reply and then `RCPT data
/// CODE` for the message's.
const RCPTS: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
for rcpt in sys.argv[2:]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.mail("s@example.org")
        code, _ = s.rcpt(rcpt)
        print(rcpt, code, flush=True)
        if code == 250:
            code, _ = s.data(("Subject: %s\r\n\r\n%s\r\n" % (rcpt, rcpt)).encode())
            print(rcpt, "data", code, flush=True)
"#;

fn rcpts(port: u16, list: &[&str]) -> Vec<String> {
    let mut args = vec![port.to_string()];
    args.extend(list.iter().map(|r| (*r).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(RCPTS, &args).lines().map(str::to_owned).collect()
}

/// `SENDERS PORT USER PASSWORD FROM...`: logs in over STARTTLS, then MAIL FROM each
/// address (RSET between); prints `FROM CODE`.
const SENDERS: &str = r#"
import smtplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
    s.starttls()
    s.ehlo("client.test")
    s.login(user, password)
    for sender in sys.argv[4:]:
        code, _ = s.mail(sender)
        print(sender, code, flush=True)
        s.rset()
"#;

/// `PARALLEL PORT N RCPT`: N sessions at once, each parked on the same question; prints
/// one RCPT code per session.
const PARALLEL: &str = r#"
import smtplib, sys, threading
port, n, rcpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
codes = [None] * n
def one(i):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.mail("s@example.org")
        codes[i], _ = s.rcpt(rcpt)
        if codes[i] == 250:
            s.data(("Subject: parallel %d\r\n\r\nparallel\r\n" % i).encode())
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(str(c) for c in codes))
"#;

#[test]
fn proc_tables_and_forward_only_are_decided_at_rcpt_and_mail() {
    if !can_run("proc_tables_and_forward_only_are_decided_at_rcpt_and_mail", &[Need::Program("python3", "python3")]) {
        return;
    }
    let homes = tempfile::tempdir().unwrap();
    for u in ["joseph", "alice"] {
        std::fs::create_dir(homes.path().join(u)).unwrap();
    }
    std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = table_dir(homes.path());
    let auth_port = common::free_port();
    let hash = common::mxctl_encrypt(PASSWORD);
    let h = homes.path().display().to_string();
    let mx = Mxd::start_with(
        |d: &Path, p: u16| {
            let (uid, gid) = uid_gid();
            let proc = |name: &str, service: &str| common::proc_table(t.path(), name, name, service);
            format!(
                "spool \"{dd}/spool\"\nhostname \"mx.test\"\n{pki}{aliases}{virt}{users}{domains}{senders}\
                 table creds {{ joseph = \"{hash}\" }}\n\
                 table local_users {{ joseph = \"{uid}:{gid}:{h}/joseph\", alice = \"{uid}:{gid}:{h}/alice\" }}\n\
                 listen on 127.0.0.1 port {p}\n\
                 listen on 127.0.0.1 port {auth_port} tls pki mx.test auth <creds> senders <senders>\n\
                 action \"local\" maildir alias <aliases> userbase <users>\n\
                 action \"virt\" maildir virtual <virt> userbase <users>\n\
                 action \"fo\" forward-only userbase <local_users>\n\
                 action \"plain\" maildir userbase <local_users>\n\
                 match from any for domain \"mx.test\" action \"local\"\n\
                 match from any for domain \"v.test\" action \"virt\"\n\
                 match from any for domain \"fo.test\" action \"fo\"\n\
                 match from any for domain <domains> action \"plain\"\n",
                dd = d.display(),
                pki = common::mx_test_pki(d),
                aliases = proc("aliases", "alias"),
                virt = proc("virt", "alias"),
                users = proc("users", "userinfo"),
                domains = proc("domains", "domain"),
                senders = proc("senders", "mailaddrmap"),
            )
        },
        &[],
    );
    let count = |user: &str| common::read_dir_files(&homes.path().join(user).join("Maildir/new")).len();

    // Aliases, userbase, virtual and a match condition from table processes: known ones
    // accepted and delivered, unknown ones refused at RCPT.
    let got = rcpts(
        mx.port,
        &["team@mx.test", "nobody@mx.test", "info@v.test", "other@v.test", "joseph@d.test", "joseph@nod.test"],
    );
    assert_eq!(
        got,
        [
            "team@mx.test 250",
            "team@mx.test data 250",
            "nobody@mx.test 550",
            "info@v.test 250",
            "info@v.test data 250",
            "other@v.test 550",
            "joseph@d.test 250",
            "joseph@d.test data 250",
            "joseph@nod.test 550",
        ],
        "{}",
        mx.log()
    );
    wait_for("the copies", Duration::from_secs(20), || count("joseph") == 2 && count("alice") == 2);
    assert!(mx.logged("reply=\"550 5.1.1 Invalid recipient\""), "{}", mx.log());
    assert!(mx.logged("address=<joseph@nod.test> reply=\"550 5.7.1"), "{}", mx.log());

    // forward-only: joseph's .forward (to alice) is read by the delivery process at RCPT;
    // alice has none, so she is refused there (OpenSMTPD's 424 4.2.4), not after DATA.
    let forward = homes.path().join("joseph/.forward");
    std::fs::write(&forward, "alice@mx.test\n").unwrap();
    std::fs::set_permissions(&forward, std::fs::Permissions::from_mode(0o644)).unwrap();
    let got = rcpts(mx.port, &["joseph@fo.test", "alice@fo.test"]);
    assert_eq!(got, ["joseph@fo.test 250", "joseph@fo.test data 250", "alice@fo.test 424"], "{}", mx.log());
    wait_for("the forwarded copy", Duration::from_secs(20), || count("alice") == 3);
    assert!(mx.logged("address=<alice@fo.test> reply=\"424 4.2.4 Mailing list expansion problem"), "{}", mx.log());
    std::fs::remove_file(&forward).unwrap();

    // senders <proc>: the authenticated user's own addresses only.
    let got = python(SENDERS, &[&auth_port.to_string(), "joseph", PASSWORD, "ops@mx.test", "evil@mx.test"]);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["ops@mx.test 250", "evil@mx.test 550"], "{}", mx.log());
    assert!(mx.logged("step=mail address=<evil@mx.test> reply=\"550 5.7.1"), "{}", mx.log());

    // The alias table exits on `crash`: 451 at RCPT, nothing stored; the next RCPT starts
    // it again and mail flows.
    let got = rcpts(mx.port, &["crash@mx.test", "postmaster@mx.test"]);
    assert_eq!(got, ["crash@mx.test 451", "postmaster@mx.test 250", "postmaster@mx.test data 250"], "{}", mx.log());
    wait_for("postmaster's copy", Duration::from_secs(20), || count("joseph") == 3);
    assert!(mx.logged("table aliases: the table process exited"), "{}", mx.log());
    let starts = std::fs::read_to_string(t.path().join("starts-aliases")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}");

    // Sessions parked at once on the same table all get their answers.
    let got = python(PARALLEL, &[&mx.port.to_string(), "12", "team@mx.test"]);
    assert_eq!(got.trim(), ["250"; 12].join(" "), "{}", mx.log());
    wait_for("the parallel copies", Duration::from_secs(30), || count("joseph") == 15 && count("alice") == 15);
}

/// A listener with a filter: a RCPT parked on the delivery process reaches the filter's
/// `tx-rcpt` report with the reply it finally got, not before.
#[test]
fn filters_see_a_parked_rcpt_with_its_reply() {
    if !can_run("filters_see_a_parked_rcpt_with_its_reply", &[Need::File("/usr/bin/python3", "python3")]) {
        return;
    }
    let shared = common::shared_tempdir();
    let script = common::filter_script(shared.path(), "all_phases.py");
    let log = shared.path().join("phases.log");
    let homes = tempfile::tempdir().unwrap();
    for u in ["joseph", "alice"] {
        std::fs::create_dir(homes.path().join(u)).unwrap();
    }
    std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let forward = homes.path().join("joseph/.forward");
    std::fs::write(&forward, "alice@mx.test\n").unwrap();
    std::fs::set_permissions(&forward, std::fs::Permissions::from_mode(0o644)).unwrap();
    let h = homes.path().display().to_string();
    let mx = Mxd::start_with(
        |d: &Path, p: u16| {
            let (uid, gid) = uid_gid();
            format!(
                "spool \"{dd}/spool\"\nhostname \"mx.test\"\n\
                 filter \"all\" proc-exec \"/usr/bin/python3 {s} {l}\"\n\
                 table local_users {{ joseph = \"{uid}:{gid}:{h}/joseph\", alice = \"{uid}:{gid}:{h}/alice\" }}\n\
                 listen on 127.0.0.1 port {p} filter \"all\"\n\
                 action \"fo\" forward-only userbase <local_users>\n\
                 action \"local\" maildir userbase <local_users>\n\
                 match from any for domain \"fo.test\" action \"fo\"\n\
                 match from any for domain \"mx.test\" action \"local\"\n",
                dd = d.display(),
                s = script.display(),
                l = log.display(),
            )
        },
        &[],
    );
    let mut c = mx.connect();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let r = c.cmd("RCPT TO:<joseph@fo.test>");
    assert!(r.starts_with("250"), "{r}: {}", mx.log());
    let r = c.cmd("RCPT TO:<alice@fo.test>");
    assert!(r.starts_with("424 4.2.4"), "{r}: {}", mx.log());
    assert!(c.cmd("QUIT").starts_with("221"));
    wait_for("the reports", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("link-disconnect")
    });
    let seen = std::fs::read_to_string(&log).unwrap();
    for line in [
        "tx-rcpt 00000001|ok|joseph@fo.test",
        "tx-rcpt 00000001|tempfail|alice@fo.test",
        "protocol-server 424 4.2.4 Mailing list expansion problem",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line:?} not seen: {seen}");
    }
}
