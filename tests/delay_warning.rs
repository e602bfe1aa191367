//! `bounce warn-interval` (issue 14): while a message waits in the relay queue (its next
//! hop is down), the sender gets one delay warning per interval passed, and the message
//! stays queued.

mod common;

use std::time::Duration;

use common::{python, queue_files, wait_for, Mxd, SEND};

fn warnings(node: &Mxd) -> Vec<String> {
    node.messages("joseph")
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .filter(|m| m.contains("Action: delayed"))
        .collect()
}

#[test]
fn delay_warnings_after_each_interval_and_the_message_stays() {
    let down = common::free_port();
    let node = Mxd::start_with(
        common::node_conf("bounce warn-interval 1s, 4s\n".into(), format!("host smtp://127.0.0.1:{down}")),
        &[("MXD_RETRY_BASE", "1")],
    );
    python(SEND, &[&node.port.to_string(), "joseph@node.test", "alice@far.test", "waiting-message"]);
    wait_for("the first delay warning", Duration::from_secs(15), || warnings(&node).len() == 1);
    let w = &warnings(&node)[0];
    assert!(w.starts_with("Return-Path: <>\n"), "{w}");
    assert!(w.contains("Subject: Delivery status notification: delay"), "{w}");
    assert!(w.contains("Final-Recipient: rfc822; alice@far.test\nAction: delayed\nStatus: 4.4.1\n"), "{w}");
    assert!(w.contains("Subject: relayed"), "the original headers come back: {w}");
    assert_eq!(queue_files(&node), 1, "still queued");
    wait_for("the second delay warning", Duration::from_secs(15), || warnings(&node).len() == 2);
    // Two intervals, two warnings: no more however long it waits.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(warnings(&node).len(), 2);
    assert_eq!(queue_files(&node), 1);
    assert!(node.logged("delay warning msgid="), "{}", node.log());
}
