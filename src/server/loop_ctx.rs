//! What a connection may use of its loop while it pumps (`LoopCtx`), and the answers that
//! come back to the loop for it: delivery verdicts and login verdicts. Apart from the loop
//! so that connections depend on this, not on the loop that owns them.

use crate::envelope::{MsgId, Origin, SessionId, Target};
use crate::privsep::frame::{AuthAsk, AuthVerdict, DeliveryVerdict, Head, LookupAsk, LookupVerdict};
use crate::privsep::link::LoopLink;
use crate::server::filters::Shared;
use crate::smtp::{AuthId, AuthRequest, LookupId, Message};

/// Who waits for an answer on the loop's link to delivery.
pub(crate) enum Waiter {
    Message {
        slot: usize,
        sid: SessionId,
        msgid: MsgId,
    },
    Login {
        slot: usize,
        sid: SessionId,
        id: AuthId,
        user: String,
    },
    /// A question at MAIL or RCPT (`server::lookup`).
    Lookup {
        slot: usize,
        sid: SessionId,
        id: LookupId,
    },
    /// A `hostnames` proc table's name for the greeting (`conn_hostname.rs`).
    Hostname {
        slot: usize,
        sid: SessionId,
    },
    /// A builtin filter condition's table process (`conn_filter.rs`).
    FilterTable {
        slot: usize,
        sid: SessionId,
    },
}

/// A delivery's result, addressed to the connection that waits for it.
pub(crate) struct DeliveryReport {
    pub(super) slot: usize,
    pub(super) sid: SessionId,
    pub(super) msgid: MsgId,
    pub(super) outcome: DeliveryVerdict,
}

/// The delivery process's answer to a login, addressed to the session that waits for it.
pub(crate) struct AuthAnswer {
    pub(super) slot: usize,
    pub(super) sid: SessionId,
    pub(super) id: AuthId,
    pub(super) user: String,
    pub(super) verdict: AuthVerdict,
}

/// The delivery process's answer to a question at MAIL or RCPT, for the session that asked.
pub(crate) struct LookupAnswer {
    pub(super) slot: usize,
    pub(super) sid: SessionId,
    pub(super) id: LookupId,
    pub(super) verdict: LookupVerdict,
}

/// What a connection may use of its loop while it pumps.
pub(crate) struct LoopCtx<'a> {
    pub(super) link: &'a mut LoopLink<Waiter>,
    pub(super) slot: usize,
    pub(super) inflight: bool,
    /// The way to the filter processes, when a listener has filters.
    pub(crate) filters: Option<&'a Shared>,
    /// Where reverse DNS lookups start (for a client a PROXY header names), and what
    /// wakes the loop when one ends.
    pub(super) rdns: &'a super::rdns::Rdns,
    pub(super) waker: &'a std::sync::Arc<mio::Waker>,
}

impl LoopCtx<'_> {
    /// Hands the message to the delivery process: the envelope as the client gave it (the
    /// targets this process resolved stay here; delivery resolves them again itself).
    pub(crate) fn submit(
        &mut self,
        sid: SessionId,
        message: Message<Vec<Target>>,
        received: Vec<u8>,
        origin: &Origin,
        tag: Option<&str>,
        rdns: Option<String>,
    ) {
        let msgid = message.id;
        let head = Head {
            seq: 0,
            msgid: msgid.0,
            origin: origin.clone(),
            tls: message.tls.is_some(),
            tag: tag.map(str::to_owned),
            auth: message.auth,
            mail_from: message.mail_from,
            rcpts: message.rcpts.into_iter().map(|(r, _)| r).collect(),
            received,
            body_len: 0,
            helo: message.helo,
            rdns,
        };
        self.link.submit(head, message.body, Waiter::Message { slot: self.slot, sid, msgid });
        self.inflight = true;
    }

    /// Sends a login to the delivery process, which checks it; the verdict comes back
    /// through `drain_auth`.
    pub(crate) fn check_auth(&mut self, sid: SessionId, origin: &Origin, table: Option<&str>, req: AuthRequest) {
        let AuthRequest { id, user, password } = req;
        let ask =
            AuthAsk { seq: 0, origin: origin.clone(), table: table.map(str::to_owned), user: user.clone(), password };
        self.link.check_auth(ask, Waiter::Login { slot: self.slot, sid, id, user });
    }

    /// Sends a question at MAIL or RCPT to the delivery process; the verdict comes back
    /// through `on_lookup`.
    pub(crate) fn ask(&mut self, sid: SessionId, id: LookupId, ask: LookupAsk) {
        self.link.ask(ask, Waiter::Lookup { slot: self.slot, sid, id });
    }

    /// Sends a builtin filter condition's question to the delivery process; the answer
    /// comes back through `EventLoop::on_answer`.
    pub(crate) fn ask_filter_table(&mut self, sid: SessionId, ask: LookupAsk) {
        self.link.ask(ask, Waiter::FilterTable { slot: self.slot, sid });
    }
}
