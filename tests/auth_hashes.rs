//! Issue 15, credentials: `mxctl encrypt` (the real binary) makes hashes that mxd and a real
//! program (htpasswd) accept; hashes made by openssl, mkpasswd and htpasswd verify with
//! `mxd::auth`, wrong passwords do not, and forms mxd cannot check are refused by name.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{can_run, Need};
use mxd::auth::hash::{self, HashError};

const MXCTL: &str = env!("CARGO_BIN_EXE_mxctl");

/// Runs a program and returns its stdout's lines; panics when it fails.
fn output(program: &str, args: &[&str], stdin: &[u8]) -> Vec<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn mxctl_encrypt_prints_a_2b_hash_that_verifies() {
    if !can_run("mxctl_encrypt_prints_a_2b_hash_that_verifies", &[Need::Program("htpasswd", "apache2-utils")]) {
        return;
    }
    let lines = output(MXCTL, &["encrypt", "s3cret pass"], b"");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let h = &lines[0];
    assert!(h.starts_with("$2b$10$") && h.len() == 60, "{h}");
    assert_eq!(hash::verify(h, b"s3cret pass"), Ok(true));
    assert_eq!(hash::verify(h, b"s3cret Pass"), Ok(false));

    // htpasswd (Apache's bcrypt) agrees: the hash is a standard one.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("joseph:{h}\n")).unwrap();
    let verify = |password: &str| {
        Command::new("htpasswd")
            .arg("-vb")
            .arg(&file)
            .args(["joseph", password])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(verify("s3cret pass"));
    assert!(!verify("wrong"));
}

#[test]
fn mxctl_encrypt_hashes_each_stdin_line() {
    let lines = output(MXCTL, &["encrypt"], b"first\nsecond pass\r\n");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(hash::verify(&lines[0], b"first"), Ok(true));
    assert_eq!(hash::verify(&lines[1], b"second pass"), Ok(true));
    assert_eq!(hash::verify(&lines[1], b"first"), Ok(false));
    assert_ne!(lines[0], output(MXCTL, &["encrypt", "first"], b"")[0], "a fresh salt each time");
    assert!(output(MXCTL, &["encrypt"], b"").is_empty());
    let status = Command::new(MXCTL).args(["encrypt", "a", "b"]).stderr(Stdio::null()).status().unwrap();
    assert_eq!(status.code(), Some(64), "two passwords is a usage error");
}

#[test]
fn hashes_from_openssl_mkpasswd_and_htpasswd_verify() {
    let needs = [
        Need::Program("openssl", "openssl"),
        Need::Program("mkpasswd", "whois"),
        Need::Program("htpasswd", "apache2-utils"),
    ];
    if !can_run("hashes_from_openssl_mkpasswd_and_htpasswd_verify", &needs) {
        return;
    }
    let password = "correct horse";
    let made: Vec<(&str, String)> = vec![
        ("$6$", output("openssl", &["passwd", "-6", "-stdin"], password.as_bytes()).remove(0)),
        ("$5$", output("openssl", &["passwd", "-5", "-stdin"], password.as_bytes()).remove(0)),
        ("$6$", output("mkpasswd", &["-m", "sha512crypt", "-R", "20000", password], b"").remove(0)),
        ("$5$", output("mkpasswd", &["-m", "sha256crypt", password], b"").remove(0)),
        ("$2b$", output("mkpasswd", &["-m", "bcrypt", "-R", "8", password], b"").remove(0)),
        ("$2a$", output("mkpasswd", &["-m", "bcrypt-a", "-R", "8", password], b"").remove(0)),
        ("$2y$", output("htpasswd", &["-nbB", "-C", "8", "joseph", password], b"").remove(0).split_off(7)),
        ("$y$", output("mkpasswd", &["-m", "yescrypt", password], b"").remove(0)),
    ];
    for (prefix, h) in &made {
        assert!(h.starts_with(prefix), "{h}");
        assert_eq!(hash::verify(h, password.as_bytes()), Ok(true), "{h}");
        assert_eq!(hash::verify(h, b"correct horse "), Ok(false), "{h}");
        assert_eq!(mxd::auth::check_table(Some(h), b"Correct horse"), Ok(false), "{h}");
    }
}

#[test]
fn forms_mxd_cannot_check_are_refused_by_name() {
    let needs = [Need::Program("openssl", "openssl"), Need::Program("mkpasswd", "whois")];
    if !can_run("forms_mxd_cannot_check_are_refused_by_name", &needs) {
        return;
    }
    let md5 = output("openssl", &["passwd", "-1", "-stdin"], b"pw").remove(0);
    assert_eq!(hash::verify(&md5, b"pw"), Err(HashError::UnknownForm(Some("$1$".into()))));
    assert_eq!(hash::verify("pw", b"pw"), Err(HashError::UnknownForm(None)), "plaintext is never compared");
}
