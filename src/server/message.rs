//! From a finished SMTP transaction to a delivery job: the Received header this hop adds,
//! and the job whose completion wakes the loop that owns the client.

use std::time::SystemTime;

use crate::envelope::{Origin, Target};
use crate::headers::{self, Peer, ReceivedInfo};
use crate::server::conn::Conn;
use crate::smtp::Message;

/// The Received header in OpenSMTPD's form; `for <rcpt>` only when there is one recipient.
pub(crate) fn received_header(conn: &Conn, message: &Message<Vec<Target>>, proto: &str) -> Vec<u8> {
    let peer = match conn.origin() {
        _ if conn.listener.knobs.mask_src => Peer::Masked,
        Origin::Socket => Peer::Local,
        Origin::Tcp(ip) => Peer::Ip(*ip),
    };
    let tls = message.tls.as_ref().map(|t| (t.version.as_str(), t.cipher.as_str(), t.bits));
    let rcpt = match message.rcpts.as_slice() {
        [(only, _)] => Some(only.as_str()),
        _ => None,
    };
    let auth = conn.listener.auth.received_auth.then_some(message.auth.as_deref());
    headers::received_with_auth(
        &ReceivedInfo {
            helo: &message.helo,
            rdns: conn.rdns(),
            peer,
            by: conn.hostname(),
            proto,
            id: message.id,
            tls,
            rcpt,
            date: SystemTime::now(),
        },
        auth,
    )
}
