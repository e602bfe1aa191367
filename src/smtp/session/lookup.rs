//! MAIL and RCPT that wait for the server: a sender or recipient the policy cannot decide
//! at once (`Policy::ask_mail`, `Policy::ask_rcpt`: a proc table, a ~/.forward only the
//! delivery process can read) becomes a [`LookupRequest`] (`Session::poll_lookup`), and the
//! session parks in `AwaitMail`/`AwaitRcpt`, reading nothing, until `handle_lookup` gives
//! the verdict. Pipelined commands behind it wait in the server's input buffer, so their
//! replies keep their order.

use super::{Policy, Session, State, Tx, TxStep};
use crate::smtp::reply::{self, Reply};

/// Names one question of one session, so a late answer to an earlier one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupId(pub u32);

/// A question for the server, with the transaction as the session has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    pub id: LookupId,
    /// The recipient asked about; `None` asks about the sender (MAIL).
    pub rcpt: Option<String>,
    pub mail_from: String,
    pub helo: String,
    pub tls: bool,
    pub auth: Option<String>,
}

impl<P: Policy> Session<P> {
    /// The question the session waits on, once per MAIL or RCPT that asks.
    pub fn poll_lookup(&mut self) -> Option<LookupRequest> {
        self.lookup_request.take()
    }

    /// MAIL or RCPT waits for the server's answer.
    pub fn awaiting_lookup(&self) -> bool {
        matches!(self.state, State::AwaitMail(..) | State::AwaitRcpt(..))
    }

    /// The server's verdict on the question `id`: the recipient's value (ignored for MAIL),
    /// or the refusal to reply. Anything else is ignored.
    pub fn handle_lookup(&mut self, id: LookupId, verdict: Result<P::Rcpt, Reply>) {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::AwaitMail(waiting, tx) if waiting == id => match verdict {
                Ok(_) => {
                    self.state = State::Mail(tx);
                    self.reply(&reply::MAIL_OK);
                }
                Err(r) => self.refuse(TxStep::Mail, Some(tx.mail_from), r),
            },
            State::AwaitRcpt(waiting, mut tx, rcpt) if waiting == id => {
                match verdict {
                    Ok(accepted) => {
                        tx.rcpts.push((rcpt, accepted));
                        self.reply(&reply::RCPT_OK);
                    }
                    Err(r) => self.refuse(TxStep::Rcpt, Some(rcpt), r),
                }
                self.state = State::Mail(tx);
            }
            other => self.state = other,
        }
    }

    /// Parks MAIL's new transaction until the server answers.
    pub(super) fn park_mail(&mut self, tx: Tx<P::Rcpt>) {
        let id = self.next_lookup();
        self.lookup_request = Some(self.request(id, None, &tx));
        self.state = State::AwaitMail(id, tx);
    }

    /// Parks the transaction and this recipient until the server answers.
    pub(super) fn park_rcpt(&mut self, tx: Tx<P::Rcpt>, rcpt: String) {
        let id = self.next_lookup();
        self.lookup_request = Some(self.request(id, Some(rcpt.clone()), &tx));
        self.state = State::AwaitRcpt(id, tx, rcpt);
    }

    fn next_lookup(&mut self) -> LookupId {
        self.next_lookup_id = self.next_lookup_id.wrapping_add(1);
        LookupId(self.next_lookup_id)
    }

    fn request(&self, id: LookupId, rcpt: Option<String>, tx: &Tx<P::Rcpt>) -> LookupRequest {
        LookupRequest {
            id,
            rcpt,
            mail_from: tx.mail_from.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.is_some(),
            auth: self.auth.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::envelope::MsgId;
    use crate::smtp::{reply, Event, Policy, Reply, Session, SessionConfig, TlsPolicy, TxContext};

    /// Asks about senders and recipients whose local part is `ask`.
    struct Asking;
    impl Policy for Asking {
        type Rcpt = u8;
        fn new_msgid(&mut self) -> MsgId {
            MsgId(1)
        }
        fn check_mail(&mut self, _: &TxContext<'_>) -> Result<(), Reply> {
            Ok(())
        }
        fn check_rcpt(&mut self, _: &TxContext<'_>, _: &str) -> Result<u8, Reply> {
            Ok(1)
        }
        fn ask_mail(&mut self, ctx: &TxContext<'_>) -> bool {
            ctx.mail_from.starts_with("ask@")
        }
        fn ask_rcpt(&mut self, _: &TxContext<'_>, rcpt: &str) -> bool {
            rcpt.starts_with("ask@")
        }
    }

    fn session(now: Instant) -> Session<Asking> {
        let cfg = SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 1 << 20,
            max_rcpt: 10,
            max_errors: 5,
            idle_timeout: Duration::from_secs(300),
            tls: TlsPolicy::Unavailable,
            tls_active: false,
        };
        let mut s = Session::new(Arc::new(cfg), Asking, now);
        s.handle_input(b"EHLO c.test\r\n", now);
        let n = s.output().len();
        s.consume_output(n);
        s
    }

    fn take_output(s: &mut Session<Asking>) -> String {
        let text = String::from_utf8_lossy(s.output()).into_owned();
        s.consume_output(text.len());
        text
    }

    #[test]
    fn a_parked_rcpt_holds_pipelined_commands_until_its_answer() {
        let now = Instant::now();
        let mut s = session(now);
        let input = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n";
        let n = s.handle_input(input, now);
        assert_eq!(&input[..n], b"MAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\n", "stops at the question");
        assert!(!s.wants_read() && s.poll_timeout().is_none());
        assert_eq!(take_output(&mut s), "250 2.1.0 Ok\r\n");
        let req = s.poll_lookup().expect("a question");
        assert_eq!(
            (req.rcpt.as_deref(), req.mail_from.as_str(), req.helo.as_str()),
            (Some("ask@x.test"), "s@x.test", "c.test")
        );
        assert!(s.poll_lookup().is_none(), "asked once");
        // A late answer to another question changes nothing.
        s.handle_lookup(super::LookupId(req.id.0.wrapping_add(7)), Ok(0));
        assert!(!s.wants_read() && s.output().is_empty());
        s.handle_lookup(req.id, Err(reply::UNKNOWN_RCPT));
        assert_eq!(take_output(&mut s), "550 5.1.1 Invalid recipient\r\n");
        assert!(matches!(s.poll_event(), Some(Event::Refused(r)) if r.address.as_deref() == Some("ask@x.test")));
        assert!(s.wants_read());
        s.handle_input(&input[n..], now);
        assert!(take_output(&mut s).starts_with("250 2.1.5 "));
        assert!(s.in_data(), "the refused recipient is not in the transaction, the other one is");
    }

    #[test]
    fn an_accepted_rcpt_and_a_refused_sender() {
        let now = Instant::now();
        let mut s = session(now);
        s.handle_input(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<ask@x.test>\r\n", now);
        let req = s.poll_lookup().unwrap();
        s.handle_lookup(req.id, Ok(9));
        assert!(take_output(&mut s).ends_with("250 2.1.5 Destination address valid: Recipient ok\r\n"));
        s.handle_input(b"RSET\r\nMAIL FROM:<ask@x.test>\r\n", now);
        let req = s.poll_lookup().expect("MAIL asks");
        assert_eq!((req.rcpt, req.mail_from.as_str()), (None, "ask@x.test"));
        s.handle_lookup(req.id, Err(reply::SENDER_NOT_ALLOWED));
        let out = take_output(&mut s);
        assert!(out.ends_with("\r\n550 5.7.1 Sender rejected: not an address of the authenticated user\r\n"), "{out}");
        // No transaction: RCPT needs MAIL again.
        s.handle_input(b"RCPT TO:<b@x.test>\r\n", now);
        assert!(take_output(&mut s).starts_with("503 "));
        // A client that leaves while parked just ends the session.
        s.handle_input(b"MAIL FROM:<ask@x.test>\r\n", now);
        s.handle_eof();
        assert!(s.is_closing());
    }
}
