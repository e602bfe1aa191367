//! From a finished SMTP transaction to a delivery job: the Received header this hop adds,
//! and the job whose completion wakes the loop that owns the client.

use std::time::SystemTime;

use crate::envelope::{Origin, Target};
use crate::headers::{self, Peer, ReceivedInfo};
use crate::smtp::Message;

/// What the Received header says of the connection a message came on.
pub(crate) struct Hop<'a> {
    pub(crate) origin: &'a Origin,
    /// The listener's `mask-src`.
    pub(crate) mask_src: bool,
    /// The listener's `received-auth`.
    pub(crate) show_auth: bool,
    pub(crate) rdns: Option<&'a str>,
    pub(crate) hostname: &'a str,
}

/// The Received header in OpenSMTPD's form; `for <rcpt>` only when there is one recipient.
pub(crate) fn received_header(conn: &Hop<'_>, message: &Message<Vec<Target>>, proto: &str) -> Vec<u8> {
    let peer = match conn.origin {
        _ if conn.mask_src => Peer::Masked,
        Origin::Socket => Peer::Local,
        Origin::Tcp(ip) => Peer::Ip(*ip),
    };
    let tls = message.tls.as_ref().map(|t| (t.version.as_str(), t.cipher.as_str(), t.bits));
    let rcpt = match message.rcpts.as_slice() {
        [(only, _)] => Some(only.as_str()),
        _ => None,
    };
    let auth = conn.show_auth.then_some(message.auth.as_deref());
    headers::received_with_auth(
        &ReceivedInfo {
            helo: &message.helo,
            rdns: conn.rdns,
            peer,
            by: conn.hostname,
            proto,
            id: message.id,
            tls,
            rcpt,
            date: SystemTime::now(),
        },
        auth,
    )
}
