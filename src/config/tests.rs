//! Configuration: one test per construct and per error kind, each error with its FILE:LINE.

use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::File::create(&p).and_then(|mut f| f.write_all(text.as_bytes())).expect("write");
        p
    }

    fn load(&self, text: &str) -> Result<Config, Errors> {
        load(&self.write("smtpd.conf", text), &[])
    }

    /// Loads `text`, expects exactly one error, returns "NAME:LINE: message" with NAME the file name.
    fn error(&self, text: &str) -> String {
        let errs = self.load(text).expect_err("config should be refused").0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        format!("{}:{}: {}", e.file.file_name().unwrap().to_string_lossy(), e.line, e.kind)
    }
}

#[test]
fn seed_mx0_config_loads() {
    let d = Dir::new();
    let aliases = d.write("aliases", "root: joseph\n");
    let crt = d.write("mx0.crt", "cert");
    let key = d.write("mx0.key", "key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = format!(
        "table addresses {{ $SERVER_IP_1, $SERVER_IP_2, $SERVER_IP_3 }}\n\
         table domains {{ devbox-ntp.home.lan, devbox-svc0.home.lan, devbox-wg0.home.lan }}\n\n\
         table aliases file:{}\n\n\
         pki mx0.jfc.dev cert \"{}\"\npki mx0.jfc.dev key \"{}\"\n\n\
         listen on lo\nlisten on lo port 2465 tls-require pki mx0.jfc.dev\n\n\
         action local_delivery maildir \"/home/%{{user.username}}/Maildir\" alias <aliases>\n\n\
         match from local for local action local_delivery\n\
         match from src <addresses> for domain <domains> action local_delivery\n",
        aliases.display(),
        crt.display(),
        key.display()
    );
    let path = d.write("smtpd.conf", &conf);
    let defs: Vec<(String, String)> =
        (1..=3).map(|i| (format!("SERVER_IP_{i}"), format!("127.0.0.{}", i + 1))).collect();
    let c = load(&path, &defs).expect("loads");
    assert_eq!(c.table("addresses").map(|t| t.match_ip("127.0.0.3".parse().unwrap())), Some(true));
    assert_eq!(c.table("aliases").and_then(|t| t.get("root")), Some("joseph"));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].tls, TlsMode::Require { verify: false });
    assert!(
        matches!(&c.listeners[0].kind, ListenKind::Inet { addrs } if addrs.iter().any(|a| a.to_string() == "127.0.0.1:25"))
    );
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
}

#[test]
fn seed_node_config_loads_with_defaults() {
    let d = Dir::new();
    let path = d.write(
        "smtpd.conf",
        "listen on lo\n\naction relay_to_mx0 relay host smtp+tls://$MAIL_SERVER_IP tls no-verify\n\nmatch from local action relay_to_mx0\n",
    );
    let c = load(&path, &[("MAIL_SERVER_IP".into(), "127.0.0.1".into())]).expect("loads");
    let Method::Relay(r) = &c.actions["relay_to_mx0"].method else { panic!("relay") };
    assert_eq!(r.host, Some(RelayUrl { scheme: Scheme::SmtpTls, label: None, host: "127.0.0.1".into(), port: None }));
    assert!(r.tls && r.no_verify);
    // No `for` means `for local`.
    assert!(c.rules[0].conds.contains(&Cond { negate: false, kind: CondKind::ForLocal }));
}

#[test]
fn constructs() {
    let d = Dir::new();
    let inc = d.write("inc.conf", "table inc { x = y }\n");
    d.write("users", "joseph 1000:1000:/home/joseph\n");
    let c = d
        .load(&format!(
            "# comment\nname = \"value\"\nspool \"/tmp/s\"\nthreads 3\nhostname \"mx.example\"\n\
             include \"{}\"\ntable u file:{}/users\n\
             smtp max-message-size 10M\nsmtp sub-addr-delim -\nsmtp limit max-rcpt 50 max-mails 10\nqueue ttl 2d\n\
             listen on socket\nlisten on 127.0.0.1 port 2525 tag T hostname h.example\n\
             action a maildir \"%{{user.directory}}/Maildir\" junk userbase <u> user joseph ttl 1h\n\
             action b mbox alias <inc>\naction c relay host smtps://lbl@mx.example:4650 helo me.example mail-from \"x@y.example\"\n\
             action d mda \"/bin/cat\"\naction e lmtp \"/var/run/lmtp.sock\" rcpt-to\naction f forward-only\n\
             match !from local for domain \"example.org\" tls action a\n\
             match from src 10.0.0.0/8 for rcpt-to \"a@b.example\" \\\n    action b\n\
             match from any for any reject\n",
            inc.display(),
            d.0.path().display()
        ))
        .expect("loads");
    assert_eq!((c.spool.as_path(), c.threads, c.hostname.as_str()), (Path::new("/tmp/s"), Some(3), "mx.example"));
    assert_eq!((c.max_message_size, c.sub_addr_delim, c.max_rcpt), (10 << 20, '-', 50));
    assert_eq!(c.queue_ttl, Duration::from_secs(2 * 86400));
    assert_eq!(c.listeners[0].kind, ListenKind::Socket);
    assert_eq!(c.listeners[1].tag.as_deref(), Some("T"));
    assert_eq!(c.actions["a"].user.as_deref(), Some("joseph"));
    let Method::Relay(r) = &c.actions["c"].method else { panic!() };
    let url = r.host.as_ref().unwrap();
    assert_eq!((url.scheme, url.label.as_deref(), url.port_or_default()), (Scheme::Smtps, Some("lbl"), 4650));
    assert_eq!(c.rules.len(), 3);
    assert!(c.rules[0].conds[0].negate);
    assert_eq!(c.rules[2].verdict, Verdict::Reject);
}

#[test]
fn relay_urls() {
    use parser::relay_url;
    assert_eq!(
        relay_url("smtp+notls://[::1]:26").map(|u| (u.scheme, u.host, u.port)),
        Ok((Scheme::SmtpNoTls, "::1".into(), Some(26)))
    );
    assert_eq!(relay_url("lmtp://h").map(|u| u.port_or_default()), Ok(24));
    assert_eq!(relay_url("mx.example").map(|u| u.scheme), Ok(Scheme::Smtp));
    for bad in ["ftp://x", "smtp://", "smtp://h:0", "smtp://h:99999", "smtp://@h", "smtp://h/x"] {
        assert!(relay_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_error_kind_names_file_and_line() {
    let d = Dir::new();
    let cases: Vec<(String, &str)> = vec![
        ("listen on lo\nlisten xx\n".into(), "smtpd.conf:2: syntax error: expected 'on', found 'xx'"),
        ("\n\nfoo bar\n".into(), "smtpd.conf:3: syntax error: expected a statement"),
        ("listen on lo port $NOPE\n".into(), "smtpd.conf:1: macro 'NOPE' not defined"),
        ("\nmatch from src <nope> action x\naction x mbox\n".into(), "smtpd.conf:2: table 'nope' is not defined"),
        ("\n\nmatch from any for any action nope\n".into(), "smtpd.conf:3: action 'nope' is not defined"),
        ("listen on lo tls pki nope\n".into(), "smtpd.conf:1: pki 'nope' is not defined"),
        (
            "table l { a, b }\naction x maildir alias <l>\n".into(),
            "smtpd.conf:2: table 'l' is of the wrong kind: expected a mapping",
        ),
        ("\npki p cert \"/etc/hostname\"\n".into(), "smtpd.conf:2: pki 'p' has no key"),
        ("listen on no-such-if0\n".into(), "smtpd.conf:1: no interface or address 'no-such-if0'"),
        ("table t { a }\ntable t { b }\n".into(), "smtpd.conf:2: table 't' is already defined"),
        ("action a mbox\naction a mbox\n".into(), "smtpd.conf:2: action 'a' is already defined"),
        ("smtp max-message-size lots\n".into(), "smtpd.conf:1: invalid size 'lots'"),
        ("queue ttl forever\n".into(), "smtpd.conf:1: invalid duration 'forever'"),
        ("action r relay host ftp://x\n".into(), "smtpd.conf:1: invalid relay URL 'ftp://x'"),
        ("\n\ninclude \"/nonexistent/x.conf\"\n".into(), "smtpd.conf:3: /nonexistent/x.conf: "),
        ("table t \"\n".into(), "smtpd.conf:1: unterminated quoted string"),
        ("table t ldap:/etc/x.conf\n".into(), "smtpd.conf:1: table backend 'ldap:' is not supported by mxd"),
        ("table t file:relative\n".into(), "smtpd.conf:1: invalid table path 'relative'"),
        ("match from src regex \"(\" action a\naction a mbox\n".into(), "smtpd.conf:1: invalid regular expression '('"),
        ("filter f chain { nope }\n".into(), "smtpd.conf:1: filter 'nope' is not defined"),
        ("listen on lo port nosuchservice\n".into(), "smtpd.conf:1: invalid port 'nosuchservice'"),
        ("match ! action a\naction a mbox\n".into(), "smtpd.conf:1: syntax error: expected a condition after '!'"),
        ("mda limit max-foo 3\n".into(), "smtpd.conf:1: invalid limit 'max-foo'"),
        ("table t { a, b = c }\n".into(), "smtpd.conf:1: syntax error: expected entries of one kind"),
    ];
    for (text, want) in cases {
        let got = d.error(&text);
        assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn errors_in_included_files_name_that_file() {
    let d = Dir::new();
    let inc = d.write("inc.conf", "\n\n\nlisten on lo bogus\n");
    let got = d.error(&format!("include \"{}\"\n", inc.display()));
    assert!(got.starts_with("inc.conf:4: syntax error: expected a listen option"), "{got}");
}

#[test]
fn insecure_key_is_refused_with_its_name() {
    let d = Dir::new();
    let crt = d.write("c.crt", "x");
    let key = d.write("k.key", "x");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let got = d.error(&format!("pki p cert \"{}\"\n\npki p key \"{}\"\n", crt.display(), key.display()));
    assert!(got.starts_with("smtpd.conf:3: ") && got.contains("k.key: insecure permissions 0644"), "{got}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(d.load(&format!("pki p cert \"{}\"\npki p key \"{}\"\n", crt.display(), key.display())).is_ok());
}

#[test]
fn table_file_errors_name_the_statement() {
    let d = Dir::new();
    d.write("t", "a\nb c\n");
    let got = d.error(&format!("\ntable t file:{}/t\n", d.0.path().display()));
    assert!(got.starts_with("smtpd.conf:2: ") && got.contains("line 2: expected entries of one kind"), "{got}");
}

#[test]
fn reload_table_reads_the_file_again() {
    let d = Dir::new();
    let aliases = d.write("aliases", "root: joseph\n");
    let c = d.load(&format!("table aliases file:{}\n", aliases.display())).unwrap();
    std::fs::write(&aliases, "root: alice\n").unwrap();
    assert_eq!(c.table("aliases").unwrap().get("root"), Some("joseph"));
    let c2 = c.reload_table("aliases").unwrap();
    assert_eq!(c2.table("aliases").unwrap().get("root"), Some("alice"));
}

/// Issue 14: the forms OpenSMTPD 7.x accepts beyond the seed's.
#[test]
fn opensmtpd_7_forms() {
    let d = Dir::new();
    let crt = d.write("c.crt", "x");
    let key = d.write("k.key", "x");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passwd = d.write("passwd", "joseph:$2b$08$x:1000:1000:Joseph:/home/joseph:/bin/sh\n");
    let conf = format!(
        "pki a cert \"{c}\"\npki a key \"{k}\"\npki b cert \"{c}\"\npki b key \"{k}\"\n\
         opts = \"port submission tls\"\n\
         listen on localhost $opts pki b pki a mask-src received-auth no-dsn \\\n  ciphers secure protocols tlsv1.3 hostnames {{ 127.0.0.1 => mx.test }} senders <users> masquerade\n\
         listen on lo0 port smtps smtps pki a\n\
         table users passwd:{p}\n\
         action \"out\" relay backup mx mx1.test helo-src {{ 127.0.0.1 = h.test }} src 127.0.0.1 srs\n\
         action \"in\" maildir userbase <users> alias {{ root = joseph }}\n\
         match from src {{ 127.0.0.0/8, ::1 }} for domain {{ a.test, b.test }} action \"in\"\n\
         match !from src regex \"^10\\.\" mail-from regex {{ \"@x\\.test$\" }} tag T !rcpt-to regex \"^root@\" for any action \"out\"\n\
         srs key s3cr3t\nsrs key backup old\nsrs ttl 5d\nbounce warn-interval 1h, 6h, 2d\nqueue compression\n\
         smtp ciphers secure\nsmtp limit max-mails 100 max-rcpt 50\nmta max-deferred 100\n\
         mta limit for domain example.org inet4 max-conn-per-host 2\nmda limit max-session 10\n\
         scheduler limit max-inflight 1000\nadmd mx.test\n",
        c = crt.display(),
        k = key.display(),
        p = passwd.display()
    );
    let c = d.load(&conf).expect("loads");
    let l = &c.listeners[0];
    assert_eq!((l.pki.as_deref(), l.pkis.clone()), (Some("b"), vec!["b".to_owned(), "a".to_owned()]), "first pki wins");
    let ListenKind::Inet { addrs } = &l.kind else { panic!("inet") };
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 587), "{addrs:?}");
    assert!(l.options.mask_src && l.options.received_auth && l.options.no_dsn && l.options.masquerade);
    assert_eq!(c.table(l.options.hostnames.as_deref().unwrap()).and_then(|t| t.get("127.0.0.1")), Some("mx.test"));
    assert!(
        matches!(&c.listeners[1].kind, ListenKind::Inet { addrs } if addrs.iter().any(|a| a.to_string() == "127.0.0.1:465"))
    );
    assert_eq!(c.table("users").and_then(|t| t.get("joseph")), Some("1000:1000:/home/joseph"));
    assert_eq!(c.table("users").and_then(|t| t.secret("joseph")), Some("$2b$08$x"));
    let Method::Relay(r) = &c.actions["out"].method else { panic!("relay") };
    assert!(r.backup && r.srs && r.backup_mx.as_deref() == Some("mx1.test"));
    assert!(c.table(r.src.as_deref().unwrap()).unwrap().match_ip("127.0.0.1".parse().unwrap()));
    let CondKind::FromSrc(Matcher::Table(src)) = &c.rules[0].conds[0].kind else { panic!("inline src table") };
    assert!(c.table(src).unwrap().match_ip("::1".parse().unwrap()));
    let Cond { negate: true, kind: CondKind::FromSrc(Matcher::Regex(re)) } = &c.rules[1].conds[0] else {
        panic!("{:?}", c.rules[1].conds)
    };
    assert!(c.table(re).unwrap().match_regex("10.1.2.3") && !c.table(re).unwrap().match_regex("110.1.2.3"));
    let k = &c.knobs;
    assert_eq!(k.srs_keys, vec!["s3cr3t".to_owned(), "old".to_owned()]);
    assert_eq!(k.bounce_warn.len(), 3);
    assert!(k.queue_compression && k.max_mails == Some(100) && k.admd.as_deref() == Some("mx.test"));
    assert_eq!(c.max_rcpt, 50);
    assert_eq!(k.limits.len(), 3);
    assert!(!c.notices.is_empty() && c.notices.iter().all(|n| !n.blocking), "{:?}", c.notices);
}

#[test]
fn filters_load_their_programs_are_checked_and_what_cannot_run_stops_the_daemon() {
    let d = Dir::new();
    let text = "proc rspamd \"/bin/sh -c true\" user _rspamd\n\
                filter rspamd proc rspamd\n\
                filter dkim proc-exec \"/bin/sh -x\" user _dkim chroot \"/var/empty\"\n\
                filter \"rdns\" phase connect match !rdns disconnect \"550 no rDNS\"\n\
                filter \"all\" chain { \"rdns\", rspamd }\n\
                listen on lo filter \"all\"\n\
                listen on lo port 2526 filter { \"rdns\", dkim }\n";
    let path = d.write("smtpd.conf", text);
    // Chrooted, the command line needs /bin/sh inside the chroot, as in OpenSMTPD.
    let errs = check(&path, &[]).expect_err("no /bin/sh in the chroot").0;
    assert!(errs.iter().all(|e| e.line == 3 && e.to_string().contains("/var/empty/bin/sh")), "{errs:?}");
    let root = d.0.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/sh", root.join("bin/sh")).unwrap();
    let path = d.write("smtpd.conf", &text.replace("/var/empty", &root.display().to_string()));
    let c = check(&path, &[]).expect("mxd -n loads it");
    assert_eq!(c.knobs.filters.len(), 5, "{:?}", c.knobs.filters.keys());
    assert!(c.notices.iter().all(|n| !n.blocking), "{:?}", c.notices);
    load(&path, &[]).expect("the daemon runs a chrooted filter");
    let missing = d.write("missing.conf", "filter x proc-exec \"/nonexistent/filter-x -v\"\n");
    let errs = check(&missing, &[]).expect_err("a missing program").0;
    assert!(errs.iter().any(|e| e.line == 1 && e.to_string().contains("/nonexistent/filter-x: not found")), "{errs:?}");
}
