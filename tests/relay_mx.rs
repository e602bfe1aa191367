//! Relay by MX (issue 13): a node mxd with `action "out" relay` (no host) finds its
//! destinations in a real dnsmasq on loopback and delivers to receiving mxd instances on
//! other loopback addresses. The MX port is `MXD_MX_PORT` (tests only; port 25 is not ours
//! to take): every receiver listens on it, each on its own address.

mod common;
mod dns_util;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{can_run, count_with, mx_port, mxctl, python, queue_files, send_via, wait_for, Mxd, Need};
use dns_util::{Dnsmasq, DNSMASQ};

fn needs(test: &str) -> bool {
    can_run(test, &[Need::File(DNSMASQ, "dnsmasq-base"), Need::Program("python3", "python3")])
}

/// A receiving mxd on `addr` (see `common::mx_receiver`).
fn receiver(addr: &'static str, port: u16) -> Mxd {
    common::mx_receiver(addr, port, false)
}

/// The sending node: joseph@node.test is local, everything else goes out by MX.
struct Node {
    mxd: Mxd,
    _resolv: tempfile::TempDir,
    resolv: PathBuf,
    port: u16,
}

fn node(dns: &Dnsmasq, port: u16) -> Node {
    node_retrying(dns, port, 1)
}

/// A host that accepts connections and never says a word.
fn tarpit(addr: &str, port: u16) {
    let l = TcpListener::bind((addr, port)).expect("tarpit");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
}

/// As `node`, the first retry after `retry` seconds.
fn node_retrying(dns: &Dnsmasq, port: u16, retry: u64) -> Node {
    node_conf_with(dns, port, retry, 4, String::new())
}

/// As `node_retrying`, with `top` (more smtpd.conf lines) after the hostname.
/// `timeout`: MXD_RELAY_TIMEOUT, the longest a relay session waits for a reply.
fn node_conf_with(dns: &Dnsmasq, port: u16, retry: u64, timeout: u64, top: String) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dns.resolv_conf(dir.path(), "timeout:1 attempts:1");
    let mut env = node_env(&resolv, port);
    env[2].1 = retry.to_string();
    env.push(("MXD_RELAY_TIMEOUT", timeout.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mxd = Mxd::start_with(common::node_conf(top, String::new()), &env);
    Node { mxd, _resolv: dir, resolv, port }
}

fn node_env(resolv: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("MXD_RESOLV_CONF", resolv.display().to_string()),
        ("MXD_MX_PORT", port.to_string()),
        ("MXD_RETRY_BASE", "1".into()),
    ]
}

fn bodies(m: &Mxd) -> Vec<String> {
    m.messages("joseph").iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

#[test]
fn mx_preference_order_then_the_secondary_when_the_primary_is_down() {
    if !needs("mx_preference_order_then_the_secondary_when_the_primary_is_down") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.55.1",
        &[
            "--mx-host=pref.test,mx2.pref.test,20".into(),
            "--mx-host=pref.test,mx1.pref.test,10".into(),
            "--host-record=mx1.pref.test,127.0.55.11".into(),
            "--host-record=mx2.pref.test,127.0.55.12".into(),
        ],
    );
    let port = mx_port("127.0.55.11");
    let mut mx1 = receiver("127.0.55.11", port);
    let mx2 = receiver("127.0.55.12", port);
    let n = node(&dns, port);
    for i in 0..3 {
        send_via(&n.mxd, "joseph@pref.test", &format!("to-primary-{i}"));
    }
    wait_for("three messages at mx1", Duration::from_secs(30), || mx1.messages("joseph").len() == 3);
    assert_eq!(mx2.messages("joseph").len(), 0, "the secondary got mail while the primary was up");
    assert!(n.mxd.logged("host=mx1.pref.test address=127.0.55.11:"), "{}", n.mxd.log());
    assert!(n.mxd.logged("tls=none result=Ok"), "{}", n.mxd.log());
    // mx1 has a message before its 250 reaches the node: stop it only once all are recorded.
    wait_for("the relay's records", Duration::from_secs(20), || queue_files(&n.mxd) == 0);

    mx1.kill9();
    send_via(&n.mxd, "joseph@pref.test", "to-secondary");
    wait_for("the message at mx2", Duration::from_secs(30), || mx2.messages("joseph").len() == 1);
    wait_for("an empty queue", Duration::from_secs(10), || queue_files(&n.mxd) == 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count_with(&mx2, "to-secondary"), 1, "exactly once");
    assert!(n.mxd.logged("trying the next host"), "{}", n.mxd.log());
}

#[test]
fn implicit_mx_and_an_mx_that_is_an_alias() {
    if !needs("implicit_mx_and_an_mx_that_is_an_alias") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.56.1",
        &[
            "--host-record=implicit.test,127.0.56.11".into(),
            "--mx-host=alias.test,mx.alias.test,10".into(),
            "--cname=mx.alias.test,real.alias.test".into(),
            "--host-record=real.alias.test,127.0.56.12".into(),
            "--mx-host=literal.test,127.0.56.11,10".into(),
        ],
    );
    let port = mx_port("127.0.56.11");
    let implicit = receiver("127.0.56.11", port);
    let aliased = receiver("127.0.56.12", port);
    let n = node(&dns, port);
    send_via(&n.mxd, "joseph@implicit.test", "implicit");
    send_via(&n.mxd, "joseph@alias.test", "aliased");
    wait_for("the implicit MX's message", Duration::from_secs(30), || count_with(&implicit, "implicit") == 1);
    wait_for("the aliased MX's message", Duration::from_secs(30), || count_with(&aliased, "aliased") == 1);
    assert!(n.mxd.logged("MX mx.alias.test is an alias (CNAME) of real.alias.test"), "{}", n.mxd.log());

    // An MX naming an address is refused by name, then the domain has no usable host.
    send_via(&n.mxd, "joseph@literal.test", "literal");
    wait_for("the bounce", Duration::from_secs(30), || count_with(&n.mxd, "Delivery status notification") == 1);
    assert!(n.mxd.logged("is an address literal, not a host name"), "{}", n.mxd.log());
    assert_eq!(count_with(&implicit, "literal"), 0);
}

#[test]
fn an_ipv6_mx_and_ipv4_after_ipv6_fails() {
    if !needs("an_ipv6_mx_and_ipv4_after_ipv6_fails") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.62.1",
        &[
            "--mx-host=six.test,mx.six.test,10".into(),
            "--host-record=mx.six.test,::1".into(),
            // Both families: ::1 has no listener on this port, so 127.0.62.11 gets it.
            "--host-record=dual.test,::1,127.0.62.11".into(),
        ],
    );
    let port = mx_port("::1");
    let six = receiver("::1", port);
    let n = node(&dns, port);
    send_via(&n.mxd, "joseph@six.test", "over-ipv6");
    wait_for("the message over IPv6", Duration::from_secs(30), || count_with(&six, "over-ipv6") == 1);
    assert!(n.mxd.logged("host=mx.six.test address=[::1]:"), "{}", n.mxd.log());
    drop(six);
    let four = receiver("127.0.62.11", port);
    send_via(&n.mxd, "joseph@dual.test", "over-ipv4");
    wait_for("the message over IPv4", Duration::from_secs(30), || count_with(&four, "over-ipv4") == 1);
    assert!(n.mxd.logged("host=dual.test address=127.0.62.11:"), "{}", n.mxd.log());
}

#[test]
fn null_mx_and_nxdomain_bounce_at_once_and_a_dns_failure_defers() {
    if !needs("null_mx_and_nxdomain_bounce_at_once_and_a_dns_failure_defers") {
        return;
    }
    let dns =
        Dnsmasq::start("127.0.57.1", &["--mx-host=null.test,.,0".into(), "--server=/dead.test/127.0.0.1#9".into()]);
    let n = node(&dns, mx_port("127.0.57.1"));
    send_via(&n.mxd, "someone@null.test", "to-null");
    send_via(&n.mxd, "someone@nowhere.test", "to-nx");
    send_via(&n.mxd, "someone@dead.test", "to-dead");
    wait_for("two bounces", Duration::from_secs(20), || count_with(&n.mxd, "Delivery status notification") == 2);
    let all = bodies(&n.mxd).join("\n");
    assert!(all.contains("Final-Recipient: rfc822; someone@null.test\nAction: failed\nStatus: 5.1.10"), "{all}");
    assert!(all.contains("Final-Recipient: rfc822; someone@nowhere.test\nAction: failed\nStatus: 5.1.10"), "{all}");
    assert!(all.contains("null MX") && all.contains("NXDOMAIN"), "{all}");
    // The DNS failure is temporary: the message waits, and mailq says why.
    assert_eq!(queue_files(&n.mxd), 1);
    let mailq = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxctl"))
            .arg("-f")
            .arg(&n.mxd.conf)
            .args(["show", "queue"])
            .output()
            .expect("mxctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the deferral in mailq", Duration::from_secs(20), || mailq().contains("state=deferred"));
    let mailq = mailq();
    assert!(mailq.contains("<someone@dead.test>") && mailq.contains("state=deferred"), "{mailq}");
    assert!(mailq.contains("MX lookup for dead.test"), "{mailq}");
    assert!(!all.contains("someone@dead.test"), "no bounce for a temporary failure");
}

#[test]
fn opportunistic_starttls_to_an_mx_with_a_self_signed_certificate() {
    if !needs("opportunistic_starttls_to_an_mx_with_a_self_signed_certificate")
        || !can_run(
            "opportunistic_starttls_to_an_mx_with_a_self_signed_certificate",
            &[Need::Program("openssl", "openssl")],
        )
    {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.59.1",
        &["--mx-host=tls.test,mx.tls.test,10".into(), "--host-record=mx.tls.test,127.0.59.11".into()],
    );
    let port = mx_port("127.0.59.11");
    let rx = common::mx_receiver("127.0.59.11", port, true);
    let n = node(&dns, port);
    send_via(&n.mxd, "joseph@tls.test", "over-tls");
    wait_for("the message", Duration::from_secs(30), || count_with(&rx, "over-tls") == 1);
    let text = bodies(&rx).join("");
    assert!(text.contains("with ESMTPS id "), "{text}");
    // The certificate names rx.test, not mx.tls.test, and nobody signed it: as OpenSMTPD
    // does for MX relays without `tls`, it is used unverified.
    assert!(
        n.mxd.logged("host=mx.tls.test address=127.0.59.11:") && n.mxd.logged(" tls=TLSv1.3:TLS13_"),
        "{}",
        n.mxd.log()
    );
}

/// `attempts=N` of the mailq line of message `id`.
fn attempts(mailq: &str, id: &str) -> Option<u32> {
    let line = mailq.lines().find(|l| l.starts_with(id))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("attempts=")).and_then(|n| n.parse().ok())
}

#[test]
fn one_message_id_from_the_receive_log_to_mailq_schedule_and_remove() {
    if !needs("one_message_id_from_the_receive_log_to_mailq_schedule_and_remove") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.60.1",
        &["--mx-host=down.test,mx.down.test,10".into(), "--host-record=mx.down.test,127.0.60.11".into()],
    );
    let n = node_retrying(&dns, mx_port("127.0.60.11"), 600);
    for i in 0..3 {
        send_via(&n.mxd, &format!("r{i}@down.test"), &format!("m{i}"));
    }
    wait_for("three deferrals", Duration::from_secs(20), || n.mxd.log().matches("result=TempFail").count() == 3);
    let log = n.mxd.log();
    let ids: Vec<String> = log
        .lines()
        .filter_map(|l| l.split(" smtp message msgid=").nth(1))
        .map(|r| r.split(' ').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{log}");
    for (i, id) in ids.iter().enumerate() {
        assert!(log.contains(&format!("relay msgid={id} to=<r{i}@down.test>")), "{id} in the relay log:\n{log}");
    }
    let mailq = mxctl(&n.mxd, &["show", "queue"]);
    for id in &ids {
        assert_eq!(attempts(&mailq, id), Some(1), "{id} in mailq:\n{mailq}");
    }
    // remove takes that id and drops that message only.
    assert!(mxctl(&n.mxd, &["remove", &ids[0]]).contains("1 removed"));
    assert_eq!(queue_files(&n.mxd), 2);
    // schedule takes an id and retries that message only.
    assert!(mxctl(&n.mxd, &["schedule", &ids[1]]).contains("1 scheduled"));
    wait_for("the scheduled retry", Duration::from_secs(20), || {
        attempts(&mxctl(&n.mxd, &["show", "queue"]), &ids[1]) == Some(2)
    });
    let mailq = mxctl(&n.mxd, &["show", "queue"]);
    assert!(!mailq.contains(&ids[0]), "{mailq}");
    assert_eq!(attempts(&mailq, &ids[2]), Some(1), "{mailq}");
    assert!(mxctl(&n.mxd, &["schedule", "ffffffff"]).contains("no such message"));
}

#[test]
fn a_tarpit_destination_delays_no_other() {
    if !needs("a_tarpit_destination_delays_no_other") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.61.1",
        &[
            "--mx-host=tarpit.test,mx.tarpit.test,10".into(),
            "--host-record=mx.tarpit.test,127.0.61.11".into(),
            "--mx-host=fast.test,mx.fast.test,10".into(),
            "--host-record=mx.fast.test,127.0.61.12".into(),
        ],
    );
    let port = mx_port("127.0.61.11");
    tarpit("127.0.61.11", port);
    let rx = receiver("127.0.61.12", port);
    // The tarpit holds its session for 30 s (5 min by default): the other mail must not wait
    // for that, however slowly this machine runs the senders.
    let n = node_conf_with(&dns, port, 1, 30, String::new());
    send_via(&n.mxd, "joseph@tarpit.test", "stuck");
    let start = std::time::Instant::now();
    python(SEND_MANY, &[&n.mxd.port.to_string(), "joseph@fast.test", "fast", "5"]);
    wait_for("the other destination's mail", Duration::from_secs(25), || rx.messages("joseph").len() == 5);
    assert!(start.elapsed() < Duration::from_secs(25), "took {:?}:\n{}", start.elapsed(), n.mxd.log());
    assert!(!n.mxd.log().contains("to=<joseph@tarpit.test>"), "the tarpit answered?\n{}", n.mxd.log());
    // The tarpit's greeting times out: deferred, never lost.
    wait_for("the tarpit's deferral", Duration::from_secs(45), || {
        n.mxd.log().contains("to=<joseph@tarpit.test> result=TempFail")
    });
    assert_eq!(queue_files(&n.mxd), 1);
}

/// Sends `n` messages, 50 per session (under the default `smtp limit max-mails`); bodies
/// are `PREFIX-i`.
const SEND_MANY: &str = r#"
import smtplib, sys
port, rcpt, prefix, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for start in range(0, n, 50):
    with smtplib.SMTP("127.0.0.1", port) as s:
        for i in range(start, min(n, start + 50)):
            s.sendmail("joseph@node.test", [rcpt], ("Subject: m\r\n\r\n%s-%d.\r\n" % (prefix, i)).encode())
"#;

#[test]
fn kill9_mid_drain_resends_at_most_the_messages_in_flight() {
    if !needs("kill9_mid_drain_resends_at_most_the_messages_in_flight") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.58.1",
        &["--mx-host=drain.test,mx.drain.test,10".into(), "--host-record=mx.drain.test,127.0.58.11".into()],
    );
    let port = mx_port("127.0.58.11");
    let total = 300;
    let mut n = node(&dns, port);
    // Queued while the destination is down.
    python(SEND_MANY, &[&n.mxd.port.to_string(), "joseph@drain.test", "drain", &total.to_string()]);
    assert_eq!(queue_files(&n.mxd), total);
    let rx = receiver("127.0.58.11", port);
    let mxctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mxctl")).arg("-f").arg(&n.mxd.conf).args(args).output()
    };
    mxctl(&["schedule", "all"]).expect("mxctl");
    let started = std::time::Instant::now();
    while rx.messages("joseph").len() < 40 {
        assert!(started.elapsed() < Duration::from_secs(60), "drain too slow:\n{}\n{}", n.mxd.log(), dns.queries());
        std::thread::sleep(Duration::from_millis(20));
    }
    n.mxd.kill9();
    let before = rx.messages("joseph").len();
    assert!(before < total, "the drain finished before the kill: make it longer");
    let env = node_env(&n.resolv, n.port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    n.mxd.restart(&env);
    wait_for("an empty queue", Duration::from_secs(120), || queue_files(&n.mxd) == 0);
    let got = bodies(&rx);
    let distinct: std::collections::BTreeSet<String> =
        got.iter().filter_map(|b| b.split("\n\n").nth(1).map(|s| s.trim().to_owned())).collect();
    assert_eq!(distinct.len(), total, "every message arrives");
    // At most two messages in flight per session (the one being sent, the one whose record
    // is being written): 300 messages are 3 sessions of 100 at once.
    assert!(got.len() <= total + 6, "{} duplicates after a kill at {before} delivered", got.len() - total);
}

#[test]
fn mx_hosts_of_this_hosts_preference_or_more_are_skipped() {
    if !needs("mx_hosts_of_this_hosts_preference_or_more_are_skipped") {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.63.1",
        &[
            // The node (listening on 127.0.63.20) is backup.test's second MX.
            "--mx-host=backup.test,mx1.backup.test,10".into(),
            "--mx-host=backup.test,mx2.backup.test,20".into(),
            "--mx-host=backup.test,mx3.backup.test,30".into(),
            "--host-record=mx1.backup.test,127.0.63.11".into(),
            "--host-record=mx2.backup.test,127.0.63.20".into(),
            "--host-record=mx3.backup.test,127.0.63.13".into(),
            // The node is best.test's best MX, by address; and byname.test's, by its hostname.
            "--mx-host=best.test,self.best.test,10".into(),
            "--mx-host=best.test,mx3.backup.test,20".into(),
            "--host-record=self.best.test,127.0.63.20".into(),
            "--mx-host=byname.test,node.test,10".into(),
            "--mx-host=byname.test,mx3.backup.test,20".into(),
            "--host-record=node.test,127.0.63.99".into(),
        ],
    );
    let port = mx_port("127.0.63.11");
    let mut mx1 = receiver("127.0.63.11", port);
    let mx3 = receiver("127.0.63.13", port);
    let n = node_conf_with(&dns, port, 1, 4, format!("listen on 127.0.63.20 port {port}\n"));

    // A more preferred MX than this host: the mail goes there.
    send_via(&n.mxd, "joseph@backup.test", "to-mx1");
    wait_for("the message at mx1", Duration::from_secs(30), || count_with(&mx1, "to-mx1") == 1);
    assert!(n.mxd.logged("MX mx2.backup.test is this host: only MX hosts of preference below 20"), "{}", n.mxd.log());
    // mx1 has the message before its 250 reaches the node: stop it only once that 250 is in.
    wait_for("the relay's record", Duration::from_secs(20), || queue_files(&n.mxd) == 0);

    // With it down, the mail waits rather than go to this host's own backup (mx3).
    mx1.kill9();
    send_via(&n.mxd, "joseph@backup.test", "not-to-mx3");
    wait_for("the deferral", Duration::from_secs(30), || {
        n.mxd.log().contains("to=<joseph@backup.test> result=TempFail")
    });

    // This host is the best MX: nothing to try, deferred as OpenSMTPD does.
    send_via(&n.mxd, "joseph@best.test", "best");
    send_via(&n.mxd, "joseph@byname.test", "byname");
    wait_for("two best-MX deferrals", Duration::from_secs(30), || {
        let log = n.mxd.log();
        log.contains("to=<joseph@best.test> result=TempFail") && log.contains("to=<joseph@byname.test> result=TempFail")
    });
    assert!(
        n.mxd.logged("MX self.best.test (preference 10) is this host and none is more preferred"),
        "{}",
        n.mxd.log()
    );
    assert!(n.mxd.logged("MX node.test (preference 10) is this host"), "{}", n.mxd.log());
    let mailq = std::process::Command::new(env!("CARGO_BIN_EXE_mxctl"))
        .arg("-f")
        .arg(&n.mxd.conf)
        .args(["show", "queue"])
        .output()
        .expect("mxctl");
    let mailq = String::from_utf8_lossy(&mailq.stdout).into_owned();
    assert!(mailq.contains("No MX found for destination: best.test"), "{mailq}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(queue_files(&n.mxd), 3, "all three wait in the queue");
    assert!(mx3.messages("joseph").is_empty(), "this host's backup got mail: {:?}", bodies(&mx3));
    assert!(!n.mxd.log().contains("host=mx3.backup.test"), "{}", n.mxd.log());
}
