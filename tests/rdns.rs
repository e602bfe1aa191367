//! Reverse DNS on accept (issue 13): mxd asks a real dnsmasq for each client's PTR, then
//! for that name's addresses; only a name that points back at the client counts. Clients
//! connect from 127.0.56.x addresses of their own so that each has its own records.

mod common;
mod dns_util;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{can_run, python, uid_gid, Mxd, Need};
use dns_util::{Dnsmasq, DNSMASQ};

fn needs(test: &str) -> bool {
    can_run(test, &[Need::File(DNSMASQ, "dnsmasq-base"), Need::Program("python3", "python3")])
}

/// joseph@test only for a client whose confirmed name is good.rdns.test; joseph@any.test for
/// any client with a confirmed name; joseph@open.test for everyone.
fn conf(d: &Path, port: u16) -> String {
    {
        let (uid, gid) = uid_gid();
        format!(
            "spool \"{d}/spool\"\nhostname \"mx.test\"\nthreads 1\n\
             table users {{ joseph = \"{uid}:{gid}:{d}/home/joseph\" }}\n\
             listen on 127.0.0.1 port {port}\n\
             action \"local\" maildir userbase <users>\n\
             match from rdns {{ \"good.rdns.test\" }} for domain \"test\" action \"local\"\n\
             match from rdns for domain \"any.test\" action \"local\"\n\
             match from any for domain \"open.test\" action \"local\"\n",
            d = d.display()
        )
    }
}

fn start(resolv: &Path) -> Mxd {
    let env = [("MXD_RESOLV_CONF", resolv.to_str().expect("utf-8 path"))];
    Mxd::start_with(conf, &env)
}

/// python3 smtplib from `src`: `RCPT` gets a message with `BODY`; prints the RCPT reply code
/// (250, or the refusal's code).
const SEND_FROM: &str = r#"
import smtplib, sys
src, port, rcpt, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.helo", source_address=(src, 0), timeout=20) as s:
    try:
        s.sendmail("me@client.test", [rcpt], ("Subject: rdns\r\n\r\n%s\r\n" % body).encode())
        print(250)
    except smtplib.SMTPRecipientsRefused as e:
        print(list(e.recipients.values())[0][0])
"#;

fn send_from(src: &str, m: &Mxd, rcpt: &str, body: &str) -> String {
    python(SEND_FROM, &[src, &m.port.to_string(), rcpt, body]).trim().to_owned()
}

fn received_of(m: &Mxd, body: &str) -> String {
    let msgs = m.messages("joseph");
    let msg = msgs.iter().map(|b| String::from_utf8_lossy(b).into_owned()).find(|t| t.contains(body));
    let msg = msg.unwrap_or_else(|| panic!("no message {body}:\n{}", m.log()));
    msg.lines().find(|l| l.starts_with("Received: ")).expect("a Received header").to_owned()
}

/// A connection from `src`; returns it with its first line and how long that took.
fn greet_from(src: &str, port: u16) -> (BufReader<TcpStream>, String, Duration) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: IpAddr = src.parse().expect("ip");
    sock.bind(&SocketAddr::new(src, 0).into()).expect("bind source");
    let t0 = Instant::now();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    (r, line, t0.elapsed())
}

fn records() -> Vec<String> {
    [
        // 127.0.56.10 ⇄ good.rdns.test: confirmed.
        "--host-record=good.rdns.test,127.0.56.10",
        // 127.0.56.11 → liar.rdns.test → 127.0.56.99: not confirmed.
        "--ptr-record=11.56.0.127.in-addr.arpa,liar.rdns.test",
        "--host-record=liar.rdns.test,127.0.56.99",
        // 127.0.56.12 ⇄ other.rdns.test: confirmed, but not the name the first rule wants.
        "--host-record=other.rdns.test,127.0.56.12",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn confirmed_ptr_names_the_client_and_matches_from_rdns() {
    if !needs("confirmed_ptr_names_the_client_and_matches_from_rdns") {
        return;
    }
    let dns = Dnsmasq::start("127.0.56.1", &records());
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dns.resolv_conf(dir.path(), "timeout:2 attempts:1");
    let m = start(&resolv);

    // A PTR that confirms: the name is in Received, and `from rdns <name>` holds in the
    // smtp process (RCPT) and again in the delivery process (the frame carries the name).
    assert_eq!(send_from("127.0.56.10", &m, "joseph@test", "good-1"), "250", "{}", m.log());
    let rcv = received_of(&m, "good-1");
    assert!(rcv.contains("from client.helo (good.rdns.test [127.0.56.10])"), "{rcv}");
    assert!(m.logged("smtp rdns address=127.0.56.10 host=good.rdns.test"), "{}", m.log());

    // A PTR that does not confirm: no name, `unknown` in Received, `from rdns` refuses.
    assert_eq!(send_from("127.0.56.11", &m, "joseph@test", "liar-1"), "550");
    assert_eq!(send_from("127.0.56.11", &m, "joseph@any.test", "liar-2"), "550");
    assert_eq!(send_from("127.0.56.11", &m, "joseph@open.test", "liar-3"), "250");
    let rcv = received_of(&m, "liar-3");
    assert!(rcv.contains("from client.helo (unknown [127.0.56.11])"), "{rcv}");

    // Another confirmed name: `from rdns` holds, `from rdns "good.rdns.test"` does not.
    assert_eq!(send_from("127.0.56.12", &m, "joseph@test", "other-1"), "550");
    assert_eq!(send_from("127.0.56.12", &m, "joseph@any.test", "other-2"), "250");
    assert!(received_of(&m, "other-2").contains("(other.rdns.test [127.0.56.12])"));

    // No PTR at all.
    assert_eq!(send_from("127.0.56.13", &m, "joseph@any.test", "none-1"), "550");
    assert!(m.logged("smtp rdns address=127.0.56.13 host=unknown"), "{}", m.log());
    assert_eq!(m.messages("joseph").len(), 3);
}

#[test]
fn a_silent_nameserver_delays_greetings_by_the_wait_at_most_and_stalls_no_one() {
    if !needs("a_silent_nameserver_delays_greetings_by_the_wait_at_most_and_stalls_no_one") {
        return;
    }
    // A nameserver that takes every query and never answers; the resolver would wait 30 s.
    let silent = UdpSocket::bind("127.0.57.1:0").expect("udp");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    let addr = silent.local_addr().expect("addr");
    std::fs::write(&resolv, format!("nameserver [{}]:{}\noptions timeout:30 attempts:1\n", addr.ip(), addr.port()))
        .expect("resolv.conf");
    let m = start(&resolv);

    // 127.0.0.1 is in /etc/hosts: greeted at once, before the silent lookups start.
    let (mut early, line, took) = greet_from("127.0.0.1", m.port);
    assert!(line.starts_with("220 mx.test "), "{line}");
    assert!(took < Duration::from_secs(3), "greeting after {took:?}");

    // Six clients whose PTR lookups hang (more than the resolver has threads).
    let waiting: Vec<_> = (2..8)
        .map(|i| {
            let port = m.port;
            std::thread::spawn(move || greet_from(&format!("127.0.57.{i}"), port))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Meanwhile the early session goes through a whole transaction on the same loop.
    let t0 = Instant::now();
    let mut say = |cmd: &str| -> String {
        early.get_mut().write_all(cmd.as_bytes()).expect("send");
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            early.read_line(&mut l).expect("reply");
            reply.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    };
    assert!(say("EHLO early\r\n").starts_with("250"));
    assert!(say("MAIL FROM:<me@client.test>\r\n").starts_with("250"));
    assert!(say("RCPT TO:<joseph@open.test>\r\n").starts_with("250"));
    assert!(say("DATA\r\n").starts_with("354"));
    assert!(say("Subject: early\r\n\r\nearly\r\n.\r\n").starts_with("250"));
    assert!(t0.elapsed() < Duration::from_secs(3), "the transaction took {:?}", t0.elapsed());

    // Each waiting client is greeted once its wait runs out (5 s, checked each second),
    // not 30 s later, and not one after another.
    for w in waiting {
        let (_, line, took) = w.join().expect("client");
        assert!(line.starts_with("220 mx.test "), "{line}");
        assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "greeting after {took:?}");
    }
    assert!(m.logged("smtp rdns address=127.0.57.2 timed out"), "{}", m.log());
    drop(silent);
}

/// A PROXY v1 header naming `client`, then one message to `rcpt`; the RCPT reply code.
const SEND_PROXIED: &str = r#"
import socket, sys
port, client, rcpt, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port), timeout=20)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline()
        if len(line) < 4 or line[3:4] != b"-":
            return line.decode()
s.sendall(("PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % client).encode())
assert reply().startswith("220"), "greeting"
for cmd in ["EHLO client.helo", "MAIL FROM:<me@client.test>", "RCPT TO:<%s>" % rcpt]:
    s.sendall((cmd + "\r\n").encode())
    r = reply()
code = r[:3]
if code == "250":
    s.sendall(b"DATA\r\n"); reply()
    s.sendall(("Subject: rdns\r\n\r\n%s\r\n.\r\n" % body).encode())
    assert reply().startswith("250"), "data"
s.sendall(b"QUIT\r\n")
print(code)
"#;

#[test]
fn a_client_named_by_a_proxy_header_gets_its_rdns_lookup() {
    if !needs("a_client_named_by_a_proxy_header_gets_its_rdns_lookup") {
        return;
    }
    let dns = Dnsmasq::start("127.0.64.1", &records());
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dns.resolv_conf(dir.path(), "timeout:2 attempts:1");
    let env = [("MXD_RESOLV_CONF", resolv.to_str().expect("utf-8 path"))];
    let proxied = |d: &Path, port: u16| {
        conf(d, port).replace(
            &format!("listen on 127.0.0.1 port {port}\n"),
            &format!("listen on 127.0.0.1 port {port} proxy-v2\n"),
        )
    };
    let m = Mxd::start_with(proxied, &env);
    let send = |client: &str, rcpt: &str, body: &str| {
        python(SEND_PROXIED, &[&m.port.to_string(), client, rcpt, body]).trim().to_owned()
    };

    // The connection comes from 127.0.0.1 (the proxy); the name is the client's.
    assert_eq!(send("127.0.56.10", "joseph@test", "proxied-good"), "250", "{}", m.log());
    let rcv = received_of(&m, "proxied-good");
    assert!(rcv.contains("from client.helo (good.rdns.test [127.0.56.10])"), "{rcv}");
    assert!(m.logged("smtp rdns address=127.0.56.10 host=good.rdns.test"), "{}", m.log());

    // A PTR that does not confirm: no name, and `from rdns` refuses.
    assert_eq!(send("127.0.56.11", "joseph@any.test", "proxied-liar"), "550");
    assert!(m.logged("smtp rdns address=127.0.56.11 host=unknown"), "{}", m.log());
    assert_eq!(m.messages("joseph").len(), 1);
}
