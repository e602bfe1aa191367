//! Issue 14, relay action options that choose where and as whom mail goes out, against a
//! real dnsmasq on loopback and receiving mxd instances (as tests/relay_mx.rs):
//! - `backup mx NAME`: only the MXs preferred over NAME; none left (NAME is the best MX
//!   up): the mail waits, and goes when the better MX is back; NAME not an MX of the domain:
//!   every MX, as OpenSMTPD;
//! - `domain <t>`: no MX lookup, the table's relay URL for the recipient domain; a domain
//!   it does not name bounces;
//! - `helo-src <t>`: the HELO name by the connection's source address; none for the source
//!   address: the mail waits.

mod common;
mod dns_util;

use std::path::Path;
use std::time::Duration;

use common::{can_run, count_with, mx_port, node_conf, queue_files, send_via, wait_for, Mxd, Need};
use dns_util::{Dnsmasq, DNSMASQ};

fn receiver(addr: &'static str, port: u16) -> Mxd {
    common::mx_receiver(addr, port, false)
}

/// A node relaying everything but node.test with `relay RELAY`, `top` before the listener.
fn node(top: String, relay: String, resolv: Option<&Path>, mx_port: u16) -> Mxd {
    let resolv = resolv.map(|p| p.display().to_string()).unwrap_or_else(|| "/dev/null".into());
    let port = mx_port.to_string();
    let env = [("MXD_RESOLV_CONF", resolv.as_str()), ("MXD_MX_PORT", &port), ("MXD_RETRY_BASE", "1")];
    Mxd::start_with(node_conf(top, relay), &env)
}

#[test]
fn backup_mx_relays_only_to_preferred_mxs() {
    if !can_run(
        "backup_mx_relays_only_to_preferred_mxs",
        &[Need::File(DNSMASQ, "dnsmasq-base"), Need::Program("python3", "python3")],
    ) {
        return;
    }
    let dns = Dnsmasq::start(
        "127.0.71.1",
        &[
            "--mx-host=bk.test,mx1.bk.test,10".into(),
            "--mx-host=bk.test,mx2.bk.test,20".into(),
            "--mx-host=bk.test,mx3.bk.test,30".into(),
            "--host-record=mx1.bk.test,127.0.71.11".into(),
            "--host-record=mx2.bk.test,127.0.71.12".into(),
            "--host-record=mx3.bk.test,127.0.71.13".into(),
            "--mx-host=other.test,mx3.bk.test,10".into(),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let resolv = dns.resolv_conf(dir.path(), "timeout:1 attempts:1");
    let port = mx_port("127.0.71.11");
    let mut mx1 = receiver("127.0.71.11", port);
    let mx2 = receiver("127.0.71.12", port);
    let mx3 = receiver("127.0.71.13", port);
    let n = node(String::new(), "backup mx mx2.bk.test".into(), Some(&resolv), port);

    send_via(&n, "joseph@bk.test", "to-the-primary");
    wait_for("the primary's copy", Duration::from_secs(30), || count_with(&mx1, "to-the-primary") == 1);
    // mx2.bk.test is not an MX of other.test: every MX of it is tried.
    send_via(&n, "joseph@other.test", "not-our-domain");
    wait_for("other.test's copy", Duration::from_secs(30), || count_with(&mx3, "not-our-domain") == 1);

    // The only MX preferred over mx2 is down: the mail waits, never to mx2 or mx3.
    mx1.kill9();
    send_via(&n, "joseph@bk.test", "waits-for-the-primary");
    wait_for("a deferral", Duration::from_secs(30), || {
        n.log().contains("connection refused") || n.log().contains("Connection refused")
    });
    assert_eq!(queue_files(&n), 1, "{}", n.log());
    assert_eq!(count_with(&mx2, "waits-for-the-primary") + count_with(&mx3, "waits-for-the-primary"), 0);
    mx1.restart(&[]);
    wait_for("the primary's second copy", Duration::from_secs(60), || count_with(&mx1, "waits-for-the-primary") == 1);
    assert_eq!(mx2.messages("joseph").len(), 0, "the backup's own level never gets mail");

    // Named as the best MX itself: nothing is preferred over it, so the mail waits.
    let best = node(String::new(), "backup mx mx1.bk.test".into(), Some(&resolv), port);
    send_via(&best, "joseph@bk.test", "we-are-the-best");
    assert!(best.logged("no MX of bk.test is preferred over mx1.bk.test (preference 10)"), "{}", best.log());
    assert_eq!(queue_files(&best), 1);
    assert_eq!(count_with(&mx1, "we-are-the-best"), 0);
}

#[test]
fn domain_table_picks_the_host_and_helo_src_the_name() {
    if !can_run("domain_table_picks_the_host_and_helo_src_the_name", &[Need::Program("python3", "python3")]) {
        return;
    }
    let port = mx_port("127.0.72.11");
    let rx = receiver("127.0.72.11", port);
    let top = format!(
        "table routes {{ dom.test = \"smtp://127.0.72.11:{port}\" }}\n\
         table helos {{ 127.0.0.1 = out-one.node.test }}\n"
    );
    // No DNS at all (resolv.conf is /dev/null): the table alone routes.
    let n = node(top.clone(), "domain <routes> src 127.0.0.1 helo-src <helos>".into(), None, port);
    send_via(&n, "joseph@dom.test", "routed-by-table");
    wait_for("the routed copy", Duration::from_secs(30), || count_with(&rx, "routed-by-table") == 1);
    let msg = String::from_utf8(rx.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("Received: from out-one.node.test ("), "{msg}");

    // A domain the table does not name bounces to the sender.
    send_via(&n, "joseph@elsewhere.test", "no-route");
    wait_for("the bounce", Duration::from_secs(30), || count_with(&n, "Delivery status notification") == 1);
    assert_eq!(count_with(&n, "no relay host for domain elsewhere.test in table routes"), 1, "{}", n.log());

    // The table has no name for this source address: the mail waits.
    let other = node(top, "domain <routes> src 127.0.0.2 helo-src <helos>".into(), None, port);
    send_via(&other, "joseph@dom.test", "no-helo");
    assert!(other.logged("helo-src has no HELO name for source 127.0.0.2"), "{}", other.log());
    assert_eq!(queue_files(&other), 1);
    assert_eq!(count_with(&rx, "no-helo"), 0);
}

/// The same three options answered by table processes (smtpd-tables(7), the project's
/// tests/tables/proc_table.py): `relayhost` by domain, `source` fetched, `addrname` by
/// address, all asked by the relay process.
#[test]
fn relay_tables_from_table_processes() {
    use std::os::unix::fs::PermissionsExt;
    if !can_run("relay_tables_from_table_processes", &[Need::Program("python3", "python3")]) {
        return;
    }
    let port = mx_port("127.0.73.11");
    let rx = receiver("127.0.73.11", port);
    let t = tempfile::tempdir().unwrap();
    let td = t.path().display().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tables/proc_table.py");
    std::fs::copy(script, t.path().join("proc_table.py")).unwrap();
    for (name, text, mode) in [
        ("routes", format!("dom.test smtp://127.0.73.11:{port}\n"), 0o644),
        ("helos", "127.0.0.1 proc-helo.node.test\n".to_owned(), 0o644),
        ("sources", "127.0.0.1\n".to_owned(), 0o644),
        ("proc_table.py", String::new(), 0o755),
        (".", String::new(), 0o755),
    ] {
        if !text.is_empty() {
            std::fs::write(t.path().join(name), text).unwrap();
        }
        std::fs::set_permissions(t.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for state in ["s-routes", "s-helos", "s-sources"] {
        std::fs::write(t.path().join(state), "").unwrap();
        std::fs::set_permissions(t.path().join(state), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let table = |name: &str, service: &str| {
        format!("table {name} \"proc-exec:{td}/proc_table.py {td}/{name} {td}/s-{name} {service}\"\n")
    };
    let top = format!("{}{}{}", table("routes", "relayhost"), table("helos", "addrname"), table("sources", "source"));
    let n = node(top, "domain <routes> src <sources> helo-src <helos>".into(), None, port);
    send_via(&n, "joseph@dom.test", "routed-by-process");
    wait_for("the routed copy", Duration::from_secs(30), || count_with(&rx, "routed-by-process") == 1);
    let msg = String::from_utf8(rx.messages("joseph").remove(0)).unwrap();
    assert!(msg.contains("Received: from proc-helo.node.test ("), "{msg}");
    send_via(&n, "joseph@elsewhere.test", "no-route");
    wait_for("the bounce", Duration::from_secs(30), || count_with(&n, "Delivery status notification") == 1);
    assert_eq!(count_with(&n, "no relay host for domain elsewhere.test in table routes"), 1, "{}", n.log());
    for state in ["s-routes", "s-helos", "s-sources"] {
        let text = std::fs::read_to_string(t.path().join(state)).unwrap();
        assert!(!text.is_empty() && !text.contains("uid=0\n"), "{state}: {text}");
    }
}
