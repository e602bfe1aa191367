//! sendmail's submission of a prepared message to the running daemon over its unix socket
//! (`SPOOL/mxd.sock`): the project's one SMTP client (`smtp::client`) over a blocking
//! stream, EHLO, MAIL, RCPT…, DATA, one command at a time as OpenSMTPD's enqueue does, then
//! QUIT. Every recipient must be accepted, or nothing is sent.
//!
//! Guarantee: [`submit`] returns `Ok` only after the 250 that answers the final dot, i.e.
//! once the daemon has durably accepted the message. The caller sends nothing about who it
//! is: the daemon takes the user from the socket's peer credentials.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::Prepared;
use crate::client_io::{Blocking, ClientStream};
use crate::smtp::client::{
    Client, ClientConfig, ClientEvent, Pipelining, RcptResult, ServerReply, SessionError, Step, TlsWant,
};

pub use crate::spool::SUBMIT_SOCKET;
/// RFC 5321 §4.5.3.2: 5 minutes per command, 10 minutes for the final dot.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a submission did not end with the final 250.
#[derive(Debug)]
pub enum SubmitError {
    /// The socket could not be reached (absent, refused): the daemon is not running.
    /// Nothing was sent; the message belongs in the offline directory.
    Unreachable(io::Error),
    /// The daemon turned the session away at its greeting with a 4xx (e.g. shutting down).
    /// Nothing was sent; handled like [`SubmitError::Unreachable`].
    Busy(ServerReply),
    /// The connection broke or timed out before the final reply; the daemon may or may not
    /// have the message. Writing it offline risks one duplicate, never a loss.
    Lost(io::Error),
    /// The daemon answered something unparsable; handled like [`SubmitError::Lost`].
    Protocol(String),
    /// The daemon refused at `stage` ("MAIL FROM", "RCPT TO", "DATA", "end of data"…).
    Refused { stage: &'static str, reply: ServerReply },
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Unreachable(e) => write!(f, "cannot reach the mail daemon: {e}"),
            SubmitError::Busy(r) => write!(f, "the mail daemon is busy: {r}"),
            SubmitError::Lost(e) => write!(f, "connection to the mail daemon lost: {e}"),
            SubmitError::Protocol(s) => write!(f, "bad reply from the mail daemon: {s}"),
            SubmitError::Refused { stage, reply } => write!(f, "{stage} refused: {reply}"),
        }
    }
}

impl std::error::Error for SubmitError {}

impl SubmitError {
    /// True when the message belongs in the offline directory: the daemon was down, busy
    /// at the greeting, the session broke before the final reply, or the daemon refused it
    /// for now (4xx: a Maildir it cannot write yet). Only a 5xx is final.
    pub fn goes_offline(&self) -> bool {
        !matches!(self, SubmitError::Refused { reply, .. } if reply.code >= 500)
    }
}

/// Submits `msg` to the daemon listening on `socket`; see the module doc.
pub fn submit(socket: &Path, msg: &Prepared, mut trace: Option<&mut dyn Write>) -> Result<(), SubmitError> {
    let stream = UnixStream::connect(socket).map_err(SubmitError::Unreachable)?;
    // The final dot may take a while (a full disk being freed); commands get the usual time.
    stream.set_read_timeout(Some(DATA_END_TIMEOUT)).map_err(SubmitError::Lost)?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(SubmitError::Lost)?;
    let cfg = ClientConfig {
        helo: "localhost".into(),
        lmtp: false,
        tls: TlsWant::Never,
        auth: None,
        pipelining: Pipelining::Never,
        all_or_nothing: true,
        transcript: trace.is_some(),
    };
    let mut session = Blocking::new(Client::new(cfg), ClientStream::Unix(stream), None);
    let mut next = |s: &mut Blocking| {
        let event = s.next_event();
        if let Some(t) = trace.as_mut() {
            for line in s.client.take_transcript() {
                let _ = writeln!(t, "{line}");
            }
        }
        event.map_err(SubmitError::Lost)
    };
    match next(&mut session)? {
        ClientEvent::Ready => {}
        ClientEvent::Failed(e) => return Err(session_error(e)),
        other => return Err(SubmitError::Protocol(format!("unexpected {other:?}"))),
    }
    let rcpts: Vec<&str> = msg.recipients.iter().map(String::as_str).collect();
    session.send_mail(&msg.sender, &rcpts, &msg.message);
    match next(&mut session)? {
        ClientEvent::Sent(results) => {
            if let Some(RcptResult::Temp(r) | RcptResult::Perm(r)) = results.into_iter().find(|r| *r != RcptResult::Ok)
            {
                return Err(SubmitError::Refused { stage: r.step.as_str(), reply: r.reply });
            }
        }
        ClientEvent::Failed(e) => return Err(session_error(e)),
        other => return Err(SubmitError::Protocol(format!("unexpected {other:?}"))),
    }
    // Accepted: the rest is courtesy, its failure changes nothing.
    session.client.quit();
    let _ = next(&mut session);
    Ok(())
}

fn session_error(e: SessionError) -> SubmitError {
    match e {
        // A 4xx greeting (mxd stopping, or out of sessions) means nothing was started: the
        // offline directory is the better place than a failure the caller may ignore.
        SessionError::Refused { step: Step::Greeting, reply } if reply.code / 100 == 4 => SubmitError::Busy(reply),
        SessionError::Refused { step, reply } => SubmitError::Refused { stage: step.as_str(), reply },
        SessionError::Closed(step) => SubmitError::Lost(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed before the reply to {}", step.as_str()),
        )),
        other => SubmitError::Protocol(other.to_string()),
    }
}
