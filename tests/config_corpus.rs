//! Issue 14's differential corpus: every file in tests/conf_corpus (the examples of
//! smtpd.conf(5), OpenBSD's and the portable release's default files, every form the issue
//! lists, and files that must be refused) checked with `mxd -n` against the verdict its
//! header states; then, where Debian's OpenSMTPD 6.8 is at hand, `smtpd -n` as a second
//! opinion on the same files. The header format is in tests/conf_corpus/README.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{can_run, Need, MXD};

/// Where .ci/run unpacks Debian's opensmtpd package (not installed: no daemon is started).
const SMTPD_6_8: &str = "/opt/opensmtpd/usr/sbin/smtpd";

struct Case {
    name: String,
    text: String,
    expect_ok: bool,
    /// (line, text) of the expected error.
    error: Option<(u32, String)>,
    notices: Vec<String>,
    opensmtpd_6_8: Option<bool>,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conf_corpus");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/conf_corpus")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "the corpus is there");
    names.iter().map(|p| parse_case(p)).collect()
}

fn parse_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("read case");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut case =
        Case { name, text: text.clone(), expect_ok: false, error: None, notices: Vec::new(), opensmtpd_6_8: None };
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(e) = line.strip_prefix("# expect: ") {
            if e == "ok" {
                case.expect_ok = true;
            } else {
                let rest = e.strip_prefix("error ").unwrap_or_else(|| panic!("{}: bad expect line", case.name));
                let (n, t) = rest.split_once(' ').expect("error LINE TEXT");
                case.error = Some((n.parse().expect("line number"), t.to_owned()));
            }
        } else if let Some(n) = line.strip_prefix("# notice: ") {
            case.notices.push(n.to_owned());
        } else if let Some(v) = line.strip_prefix("# opensmtpd-6.8: ") {
            case.opensmtpd_6_8 = match v {
                "ok" => Some(true),
                "error" => Some(false),
                _ => None,
            };
        }
    }
    assert!(case.expect_ok != case.error.is_some(), "{}: one '# expect:' line", case.name);
    case
}

/// A scratch root with the files the corpus names under /etc/mail and /etc/ssl.
fn fixture() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["etc/mail", "etc/ssl/private"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("etc/mail/aliases"), "root: joseph\npostmaster: root\n").unwrap();
    mxd::table::db::makemap(&r.join("etc/mail/aliases"), &r.join("etc/mail/aliases.db")).unwrap();
    std::fs::write(r.join("etc/mail/secrets"), "bob username:password\n").unwrap();
    std::fs::write(r.join("etc/mail/other-relays"), "192.0.2.1\n198.51.100.0/24\n").unwrap();
    std::fs::write(r.join("etc/mail/passwd"), "joseph:*:1000:1000:Joseph:/home/joseph:/bin/sh\n").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["mail.example.com".to_owned()]).unwrap();
    std::fs::write(r.join("etc/ssl/mail.example.com.crt"), cert.cert.pem()).unwrap();
    let key = r.join("etc/ssl/private/mail.example.com.key");
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    root
}

/// The case's text with /etc/mail and /etc/ssl moved under `root` (line numbers unchanged).
fn rooted(text: &str, root: &Path) -> String {
    let r = root.display();
    text.replace("/etc/mail/", &format!("{r}/etc/mail/")).replace("/etc/ssl/", &format!("{r}/etc/ssl/"))
}

#[test]
fn every_corpus_file_gets_its_verdict_from_mxd_n() {
    let root = fixture();
    let mut failures = Vec::new();
    for case in corpus() {
        let path = root.path().join(&case.name);
        std::fs::write(&path, rooted(&case.text, root.path())).unwrap();
        let out = Command::new(MXD).arg("-n").arg("-f").arg(&path).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let mut why = Vec::new();
        if case.expect_ok && !(out.status.success() && stdout == "configuration OK\n") {
            why.push("expected configuration OK".to_owned());
        }
        if let Some((line, text)) = &case.error {
            let want = format!("{}:{line}: ", path.display());
            let hit = stderr.lines().any(|l| l.starts_with(&want) && l.contains(text.as_str()));
            if out.status.code() != Some(1) || !hit {
                why.push(format!("expected exit 1 and {want}…{text}…"));
            }
        }
        for n in &case.notices {
            let (line, text) = n.split_once(": ").filter(|(l, _)| l.parse::<u32>().is_ok()).unwrap_or(("", n));
            let prefix = if line.is_empty() { String::new() } else { format!("{}:{line}: ", path.display()) };
            if !stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(text)) {
                why.push(format!("expected a notice {prefix}…{text}…"));
            }
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}\n--- stdout\n{stdout}--- stderr\n{stderr}", case.name, why.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Debian's OpenSMTPD 6.8 on the same files. OpenBSD names (`lo0`, `egress`, `all`) become
/// `lo` for it, as for mxd on Linux.
#[test]
fn opensmtpd_6_8_agrees_where_the_corpus_says_it_does() {
    if !can_run(
        "opensmtpd_6_8_agrees_where_the_corpus_says_it_does",
        &[Need::File(SMTPD_6_8, "opensmtpd (unpacked by .ci/run)"), Need::Root],
    ) {
        return;
    }
    let root = fixture();
    let mut failures = Vec::new();
    for case in corpus() {
        let Some(want_ok) = case.opensmtpd_6_8 else { continue };
        let text = rooted(&case.text, root.path())
            .replace("listen on lo0", "listen on lo")
            .replace("listen on egress", "listen on lo")
            .replace("listen on all", "listen on lo");
        let path = root.path().join(&case.name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(SMTPD_6_8).arg("-n").arg("-f").arg(&path).output().unwrap();
        if out.status.success() != want_ok {
            failures.push(format!(
                "{}: smtpd 6.8 says {} (corpus: {})\n{}{}",
                case.name,
                if out.status.success() { "ok" } else { "error" },
                if want_ok { "ok" } else { "error" },
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
