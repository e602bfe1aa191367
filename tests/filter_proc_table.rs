//! Issue 14: builtin filter conditions on a table process (tests/tables/proc_table.py).
//! The chain waits while the delivery process asks the table: `match rcpt-to <t>` rejects
//! a listed recipient and lets another through (its message is delivered), `match src <t>`
//! at connect turns a listed client away, and a dead table process refuses the phase with
//! a 451 (nothing let through, nothing refused for good).

mod common;

use std::time::Duration;

use common::{basic_conf, can_run, wait_for, Client, Mxd, Need};

/// A session from source address `src` (any of 127.0.0.0/8) to `addr`.
fn connect_from(src: &str, addr: &str, port: u16) -> Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: std::net::IpAddr = src.parse().unwrap();
    sock.bind(&std::net::SocketAddr::new(src, 0).into()).expect("bind source");
    let to: std::net::IpAddr = addr.parse().unwrap();
    sock.connect(&std::net::SocketAddr::new(to, port).into()).expect("connect");
    Client::open(sock.into())
}

fn table_dir() -> tempfile::TempDir {
    common::proc_table_dir(&[("bad", "spam@bad.test\n127.0.0.3\n".to_owned())], &["dead"])
}

#[test]
fn builtin_filter_conditions_ask_a_table_process() {
    if !can_run("builtin_filter_conditions_ask_a_table_process", &[Need::Program("python3", "python3")]) {
        return;
    }
    let t = table_dir();
    let mxd = Mxd::start_with(
        |d, p| {
            // `dead` reads a data file that is not there: its process exits at once.
            let listen = format!(
                "{}{}filter \"norcpt\" phase rcpt-to match rcpt-to <bad> reject \"550 5.7.1 listed recipient\"\n\
                 filter \"deadrcpt\" phase rcpt-to match !rcpt-to <dead> reject \"550 5.7.1 not listed\"\n\
                 filter \"nosrc\" phase connect match src <bad> disconnect \"554 5.7.1 listed client\"\n\
                 listen on 127.0.0.1 port {p} filter \"norcpt\"\n\
                 listen on 127.0.0.2 port {p} filter \"deadrcpt\"\n\
                 listen on 127.0.0.3 port {p} filter \"nosrc\"\n",
                common::proc_table(t.path(), "bad", "bad", "mailaddr,netaddr"),
                common::proc_table(t.path(), "dead", "missing", "mailaddr"),
            );
            basic_conf(d, p).replace(&format!("listen on 127.0.0.1 port {p}\n"), &listen)
        },
        &[],
    );
    let mut c = connect_from("127.0.0.1", "127.0.0.1", mxd.port);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
    let listed = c.cmd("RCPT TO:<Spam@bad.test>");
    assert!(listed.starts_with("550 5.7.1 listed recipient"), "{listed}{}", mxd.log());
    let passed = c.cmd("RCPT TO:<joseph@test>");
    assert!(passed.starts_with("250"), "{passed}");
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: through\r\n\r\nfiltered-through\r\n.").starts_with("250"));
    c.cmd("QUIT");
    wait_for("the message that passed", Duration::from_secs(10), || {
        mxd.messages("joseph").iter().any(|m| String::from_utf8_lossy(m).contains("filtered-through"))
    });
    // A dead table process: neither passed nor refused for good.
    let mut c = connect_from("127.0.0.1", "127.0.0.2", mxd.port);
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
    let failed = c.cmd("RCPT TO:<joseph@test>");
    assert!(failed.starts_with("451 4.3.0"), "{failed}");
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
    assert!(mxd.logged("filter table lookup failed"), "{}", mxd.log());
    // `src <t>` at connect: the listed client is turned away before any greeting.
    let mut c = connect_from("127.0.0.3", "127.0.0.3", mxd.port);
    let refused = c.reply();
    assert!(refused.starts_with("554 5.7.1 listed client"), "{refused}");
    let mut c = connect_from("127.0.0.4", "127.0.0.3", mxd.port);
    let greeting = c.reply();
    assert!(greeting.starts_with("220 "), "{greeting}");
}
