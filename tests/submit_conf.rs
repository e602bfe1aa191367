//! sendmail and mxctl find the spool and the mail name through the daemon's own lexer and
//! parser: the same values from the same files (macros, includes), and still the values
//! when the daemon could not load the file (a key it cannot read).

use std::path::{Path, PathBuf};

use mxd::submit::conf::{load_local_conf, mail_name, DEFAULT_SPOOL};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sendmail_and_the_daemon_read_the_same_spool_and_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    write(dir.path(), "names.conf", "hostname $name\n");
    let main = write(
        dir.path(),
        "smtpd.conf",
        &format!(
            "sp = \"{d}/myspool\"\nname = \"mx.example.test\"\n\
             include \"{d}/names.conf\"\nspool $sp\n\
             action \"local\" maildir\nmatch from local for local action \"local\"\n"
        ),
    );
    let daemon = mxd::config::load(&main, &[]).expect("the daemon loads it");
    let local = load_local_conf(&main);
    assert_eq!(local.spool, daemon.spool);
    assert_eq!(local.spool, dir.path().join("myspool"));
    assert_eq!(mail_name(&local), daemon.hostname);
    assert_eq!(daemon.hostname, "mx.example.test");

    // A line the old whitespace scan took for the spool is not a top-level statement.
    let listen = write(
        dir.path(),
        "listen.conf",
        "listen on 127.0.0.1 port 2525 hostname other.test\n\
         action \"local\" maildir\nmatch from local for local action \"local\"\n",
    );
    let daemon = mxd::config::load(&listen, &[]).expect("the daemon loads it");
    let local = load_local_conf(&listen);
    assert_eq!(local.spool, daemon.spool);
    assert_eq!(local.spool, PathBuf::from(DEFAULT_SPOOL));
    assert_eq!(local.hostname, None);
}

#[test]
fn keys_and_tables_are_not_loaded_to_find_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let main = write(
        dir.path(),
        "smtpd.conf",
        &format!(
            "pki mx.test cert \"{d}/absent.crt\"\npki mx.test key \"{d}/absent.key\"\n\
             table aliases file:{d}/absent-aliases\n\
             spool \"{d}/spool\"\nhostname \"mx.test\"\n\
             listen on 127.0.0.1 port 2525 tls pki mx.test\n\
             action \"local\" maildir alias <aliases>\nmatch from local for local action \"local\"\n"
        ),
    );
    // The daemon must read them and cannot: sendmail needs neither.
    assert!(mxd::config::load(&main, &[]).is_err());
    let local = load_local_conf(&main);
    assert_eq!(local.spool, dir.path().join("spool"));
    assert_eq!(local.hostname.as_deref(), Some("mx.test"));

    // An unreadable configuration gives the defaults.
    let none = load_local_conf(&dir.path().join("absent.conf"));
    assert_eq!(none.spool, PathBuf::from(DEFAULT_SPOOL));
    assert_eq!(none.hostname, None);
}
