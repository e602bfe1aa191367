//! `db:` tables and `mxctl makemap` (issue 14) against the reference implementation:
//! libdb1's dbopen(3) (Debian's libdb1-compat, the 4.4BSD db 1.85 that OpenBSD's libc
//! descends from), driven from python3 through tests/support/db1.py.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{can_run, python, uid_gid, Mxd, Need};

const MXCTL: &str = env!("CARGO_BIN_EXE_mxctl");

fn db1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/db1.py")
}

fn needs(test: &str) -> bool {
    can_run(test, &[Need::Program("python3", "python3"), Need::File("/usr/lib/libdb.so.2", "libdb1-compat")])
}

/// libdb1 writes `lines` ("key\tvalue") to `path`.
fn libdb1_write(path: &Path, lines: &str) {
    let mut child =
        Command::new("python3").arg(db1()).arg("write").arg(path).stdin(Stdio::piped()).spawn().expect("python3");
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "libdb1 write");
}

fn libdb1_read(path: &Path) -> Vec<String> {
    let out = Command::new("python3").arg(db1()).arg("read").arg(path).output().unwrap();
    assert!(out.status.success(), "libdb1 read: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn entries(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("user{i}@example.com\tvalue {i}, other{i}")).collect();
    v.sort();
    v
}

#[test]
fn makemap_output_is_read_by_libdb1() {
    if !needs("makemap_output_is_read_by_libdb1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("aliases");
    let text: String = entries(3000).iter().map(|l| l.replacen('\t', ": ", 1) + "\n").collect();
    std::fs::write(&src, format!("# comment\n{text}")).unwrap();
    let out = Command::new(MXCTL).args(["makemap", "-t", "aliases"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(libdb1_read(&dir.path().join("aliases.db")), entries(3000));
    // A set: lone keys, stored with makemap's "<set>" value.
    std::fs::write(&src, "example.com\nExample.ORG\n").unwrap();
    let out =
        Command::new(MXCTL).args(["makemap", "-t", "set", "-o"]).arg(dir.path().join("set.db")).arg(&src).output();
    assert!(out.unwrap().status.success());
    assert_eq!(libdb1_read(&dir.path().join("set.db")), vec!["example.com\t<set>", "example.org\t<set>"]);
}

#[test]
fn libdb1_files_are_read_by_makemap_u_and_mxd_n() {
    if !needs("libdb1_files_are_read_by_makemap_u_and_mxd_n") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    // Enough entries that libdb1 splits buckets and chains overflow pages.
    libdb1_write(&db, &entries(3000).join("\n"));
    let out = Command::new(MXCTL).args(["makemap", "-U"]).arg(&db).output().unwrap();
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, entries(3000));
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(&conf, format!("table big db:{}\nlisten on lo\n", db.display())).unwrap();
    let out = Command::new(common::MXD).arg("-n").arg("-f").arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Not a hash file: refused with the table's line.
    std::fs::write(dir.path().join("bad.db"), vec![0u8; 8192]).unwrap();
    std::fs::write(&conf, format!("listen on lo\ntable bad db:{}/bad.db\n", dir.path().display())).unwrap();
    let out = Command::new(common::MXD).arg("-n").arg("-f").arg(&conf).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("smtpd.conf:2: ") && err.contains("bad magic"), "{err}");
}

/// A `db:` alias table built by libdb1 expands an alias at RCPT.
#[test]
fn db_alias_table_delivers() {
    if !needs("db_alias_table_delivers") {
        return;
    }
    let mxd = Mxd::start_with(
        |d, port| {
            libdb1_write(&d.join("aliases.db"), "postmaster\tjoseph\nabuse\tjoseph");
            let (uid, gid) = uid_gid();
            format!(
                "spool \"{d}/spool\"\nhostname \"mx.test\"\ntable users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\" }}\n\
                 table aliases db:{d}/aliases.db\nlisten on 127.0.0.1 port {port}\n\
                 action \"local\" maildir alias <aliases> userbase <users>\nmatch from any for domain test action \"local\"\n",
                d = d.display()
            )
        },
        &[],
    );
    let out = python(common::SEND, &[&mxd.port.to_string(), "a@example.org", "postmaster@test", "viadb"]);
    assert!(out.is_empty() || !out.contains("refused"), "{out}");
    let msgs = mxd.messages("joseph");
    assert_eq!(msgs.len(), 1, "{}", mxd.log());
    assert!(String::from_utf8_lossy(&msgs[0]).contains("viadb"));
}
