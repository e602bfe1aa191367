//! `match helo <t>` (issue 14): the client's HELO/EHLO name reaches the rules, in the
//! session (RCPT is refused at once) and in the delivery process, which decides again.

mod common;

use common::{basic_conf, Mxd};

fn conf(d: &std::path::Path, p: u16) -> String {
    basic_conf(d, p).replacen(
        "match ",
        "table friends { \"trusted.example\", \"*.friends.example\" }\n\
         match helo regex \"^\\[\" from any for any reject\n\
         match !helo <friends> from any for any reject\nmatch ",
        1,
    )
}

fn rcpt_reply(mxd: &Mxd, helo: &str) -> String {
    let mut c = mxd.connect();
    assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250"));
    let reply = c.cmd("RCPT TO:<joseph@test>");
    if reply.starts_with("250") {
        assert!(c.cmd("DATA").starts_with("354"));
        let done = c.cmd(&format!("Subject: from {helo}\r\n\r\nhello\r\n."));
        assert!(done.starts_with("250"), "{helo}: {done}");
    }
    c.cmd("QUIT");
    reply
}

#[test]
fn helo_name_decides_which_rule_matches() {
    let mxd = Mxd::start_with(conf, &[]);
    assert!(rcpt_reply(&mxd, "trusted.example").starts_with("250"));
    assert!(rcpt_reply(&mxd, "MX1.Friends.Example").starts_with("250"));
    for stranger in ["stranger.example", "[127.0.0.1]", "friends.example.evil"] {
        let reply = rcpt_reply(&mxd, stranger);
        assert!(reply.starts_with("550 5.7.1 "), "{stranger}: {reply}");
    }
    // Both accepted messages passed the delivery process's own decision too.
    common::wait_for("two deliveries", std::time::Duration::from_secs(10), || mxd.messages("joseph").len() == 2);
}
