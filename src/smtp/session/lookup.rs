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
