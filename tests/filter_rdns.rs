//! Issue 16: filters see the client's confirmed name. The filter session opens once the
//! reverse DNS answer is in (as OpenSMTPD's does), so `link-connect` and the connect request
//! carry the name, and builtin `rdns`/`fcrdns` rules at connect judge by it. Names come from a
//! real dnsmasq; clients connect from 127.0.57.x addresses of their own.

mod common;
mod dns_util;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{basic_conf, can_run, wait_for, Mxd, Need};
use dns_util::{Dnsmasq, DNSMASQ};

const PY: &str = "/usr/bin/python3";

/// A session from `src`: its greeting, then EHLO and QUIT when it was greeted.
fn session_from(src: &str, port: u16) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: IpAddr = src.parse().expect("ip");
    sock.bind(&SocketAddr::new(src, 0).into()).expect("bind source");
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("connect");
    greeted_session(sock.into(), b"")
}

/// Sends `prefix`, reads the greeting, then EHLO and QUIT when it was greeted.
fn greeted_session(stream: TcpStream, prefix: &[u8]) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    w.write_all(prefix).expect("prefix");
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.read_line(&mut greeting).expect("greeting");
    if greeting.starts_with("220") {
        w.write_all(b"EHLO client.test\r\nQUIT\r\n").expect("write");
        let mut rest = String::new();
        while r.read_line(&mut rest).is_ok_and(|n| n > 0) {}
    }
    greeting
}

/// dnsmasq at `dns_at` with `records`, and mxd resolving through it with the project's
/// filter ("own", logging every phase) declared after `tables` and before `rules`, which
/// must define the chain "all" that the listener (with `listen_opts`) runs.
fn start(
    dns_at: &str,
    records: &[String],
    tables: &str,
    rules: &str,
    listen_opts: &'static str,
) -> (Dnsmasq, tempfile::TempDir, PathBuf, Mxd) {
    let dns = Dnsmasq::start(dns_at, records);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let resolv = dns.resolv_conf(dir.path(), "timeout:2 attempts:1");
    let log = dir.path().join("phases.log");
    let script = common::filter_script(dir.path(), "all_phases.py");
    let top = format!("{tables}filter \"own\" proc-exec \"{PY} {} {}\"\n{rules}", script.display(), log.display());
    let m = Mxd::start_with(
        move |d: &Path, p: u16| {
            let listen = format!("listen on 127.0.0.1 port {p}\n");
            let with = format!("listen on 127.0.0.1 port {p}{listen_opts} filter \"all\"\n");
            format!("{top}{}", basic_conf(d, p).replace(&listen, &with))
        },
        &[("MXD_RESOLV_CONF", resolv.to_str().unwrap())],
    );
    (dns, dir, log, m)
}

/// What the filter logged, once both sessions of a test have disconnected.
fn after_two_sessions(log: &Path) -> String {
    let seen = || std::fs::read_to_string(log).unwrap_or_default();
    wait_for("both sessions' link-disconnect", Duration::from_secs(20), || {
        seen().lines().filter(|l| *l == "link-disconnect").count() >= 2
    });
    seen()
}

#[test]
fn link_connect_and_connect_rules_see_the_confirmed_name() {
    let needs = [Need::File(DNSMASQ, "dnsmasq-base"), Need::File(PY, "python3")];
    if !can_run("link_connect_and_connect_rules_see_the_confirmed_name", &needs) {
        return;
    }
    let records = [
        // 127.0.57.10 ⇄ good.frdns.test: confirmed.
        "--host-record=good.frdns.test,127.0.57.10",
        // 127.0.57.11 → liar.frdns.test → 127.0.57.99: not confirmed, so no name.
        "--ptr-record=11.57.0.127.in-addr.arpa,liar.frdns.test",
        "--host-record=liar.frdns.test,127.0.57.99",
    ]
    .map(String::from);
    let rules = "filter \"named\" phase connect match !rdns disconnect \"421 4.7.0 no name, no mail\"\n\
         filter \"confirmed\" phase connect match !fcrdns disconnect \"421 4.7.0 not confirmed\"\n\
         filter \"all\" chain { \"own\", \"named\", \"confirmed\" }\n";
    let (_dns, _dir, log, m) = start("127.0.57.1", &records, "", rules, "");

    let greeting = session_from("127.0.57.10", m.port);
    assert!(greeting.starts_with("220"), "{greeting}: {}", m.log());
    let refused = session_from("127.0.57.11", m.port);
    assert!(refused.starts_with("421 4.7.0 no name, no mail"), "{refused}: {}", m.log());

    let seen = after_two_sessions(&log);
    let has = |prefix: &str| seen.lines().any(|l| l.starts_with(prefix));
    // The name, confirmed, in link-connect and in the connect request (`RDNS|SRC`).
    assert!(has("link-connect good.frdns.test|pass|127.0.57.10:"), "{seen}");
    assert!(has("connect good.frdns.test|127.0.57.10"), "{seen}");
    // The PTR that does not confirm: no name, as the builtin rule saw it.
    assert!(has("link-connect |fail|127.0.57.11:"), "{seen}");
    assert!(has("connect |127.0.57.11"), "{seen}");
    // link-connect comes first, before any other line of the session.
    assert!(seen.lines().find(|l| !l.starts_with("uid=")).is_some_and(|l| l.starts_with("link-connect")), "{seen}");
}

/// A session through a proxy at 127.0.0.1 for `client`: its PROXY v1 header naming `client`
/// port 40000 and the listener, then the greeting, and EHLO and QUIT when it was greeted.
fn proxied_session(client: &str, port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    greeted_session(stream, format!("PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n").as_bytes())
}

#[test]
fn behind_a_proxy_filters_see_the_client_its_header_names() {
    let needs = [Need::File(DNSMASQ, "dnsmasq-base"), Need::File(PY, "python3")];
    if !can_run("behind_a_proxy_filters_see_the_client_its_header_names", &needs) {
        return;
    }
    let records = [
        "--host-record=good.proxied.test,127.0.58.10",
        // 127.0.0.1, the proxy, has a name of its own that filters must not see.
        "--host-record=the-proxy.test,127.0.0.1",
    ]
    .map(String::from);
    let rules = "filter \"named\" phase connect match !rdns disconnect \"421 4.7.0 no name, no mail\"\n\
         filter \"direct\" phase connect match src <proxies> disconnect \"421 4.7.0 the proxy itself\"\n\
         filter \"all\" chain { \"own\", \"named\", \"direct\" }\n";
    let (_dns, _dir, log, m) = start("127.0.58.1", &records, "table proxies { \"127.0.0.1\" }\n", rules, " proxy-v2");

    // The connection comes from 127.0.0.1 (the proxy); rules judge the client, by its name.
    let greeting = proxied_session("127.0.58.10", m.port);
    assert!(greeting.starts_with("220"), "{greeting}: {}", m.log());
    let refused = proxied_session("127.0.58.11", m.port);
    assert!(refused.starts_with("421 4.7.0 no name, no mail"), "{refused}: {}", m.log());

    let seen = after_two_sessions(&log);
    let has = |prefix: &str| seen.lines().any(|l| l.starts_with(prefix));
    // link-connect and the connect request name the client, its port and where it
    // connected, all from the header; nothing names the proxy.
    let dest = format!("127.0.0.1:{}", m.port);
    assert!(has(&format!("link-connect good.proxied.test|pass|127.0.58.10:40000|{dest}")), "{seen}");
    assert!(has("connect good.proxied.test|127.0.58.10"), "{seen}");
    assert!(has(&format!("link-connect |fail|127.0.58.11:40000|{dest}")), "{seen}");
    assert!(has("connect |127.0.58.11"), "{seen}");
    assert!(!seen.contains("the-proxy.test"), "{seen}");
    assert!(seen.lines().find(|l| !l.starts_with("uid=")).is_some_and(|l| l.starts_with("link-connect")), "{seen}");
}
