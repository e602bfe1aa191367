//! The server's answer to the session's questions: which recipients are accepted, and
//! where each one's copy must go. It applies the configuration's `match` rules and resolves
//! the action's targets at RCPT time, so an unknown user gets 550 5.1.1 there, not a bounce.

use std::sync::Arc;

use crate::config::Config;
use crate::envelope::{Envelope, MsgId, Origin, Target};
use crate::resolve::{self, ResolveError};
use crate::rules::{self, Decision};
use crate::smtp::{reply, Policy, Reply, TxContext};
use crate::users::SystemUsers;

pub(crate) struct ConnPolicy {
    config: Arc<Config>,
    origin: Origin,
    tag: Option<String>,
    /// The listener's `senders <t>`, checked at MAIL for authenticated sessions.
    senders: Option<super::auth::Senders>,
    /// Messages committed in this session (`smtp limit max-mails`), as OpenSMTPD counts:
    /// a transaction reset or refused before its 250 does not count.
    mails: u64,
    /// The client's forward-confirmed name, once the lookup before the greeting found one.
    rdns: Option<String>,
}

impl ConnPolicy {
    pub(crate) fn new(config: Arc<Config>, origin: Origin, tag: Option<String>) -> ConnPolicy {
        ConnPolicy { config, origin, tag, senders: None, mails: 0, rdns: None }
    }

    pub(crate) fn set_senders(&mut self, senders: Option<super::auth::Senders>) {
        self.senders = senders;
    }

    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    pub(crate) fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub(crate) fn rdns(&self) -> Option<&str> {
        self.rdns.as_deref()
    }

    pub(crate) fn set_rdns(&mut self, name: Option<String>) {
        self.rdns = name;
    }
}

impl Policy for ConnPolicy {
    type Rcpt = Vec<Target>;

    fn new_msgid(&mut self) -> MsgId {
        super::ids::msg_id()
    }

    fn check_mail(&mut self, ctx: &TxContext<'_>) -> Result<(), Reply> {
        // `smtp limit max-mails`: OpenSMTPD's reply, which pretends too many recipients.
        if self.mails >= self.config.knobs.max_mails.unwrap_or(crate::config::DEFAULT_MAX_MAILS) {
            return Err(reply::TOO_MANY_MAILS);
        }
        super::auth::check_sender(&self.config, self.senders.as_ref(), ctx)
    }

    fn committed(&mut self) {
        self.mails += 1;
    }

    fn check_rcpt(&mut self, ctx: &TxContext<'_>, rcpt: &str) -> Result<Vec<Target>, Reply> {
        // A bounce to an SRS address of ours goes on to the sender inside it.
        let decoded = crate::srs::reverse(&self.config, rcpt).map_err(|_| reply::BAD_SRS)?;
        let rcpt = decoded.as_deref().unwrap_or(rcpt);
        let env = Envelope {
            origin: &self.origin,
            rdns: self.rdns.as_deref(),
            tag: self.tag.as_deref(),
            tls: ctx.tls,
            auth: ctx.auth,
            mail_from: ctx.mail_from,
            rcpt,
            helo: ctx.helo,
        };
        match rules::decide(&self.config, &env) {
            Decision::Deliver(action) => {
                resolve::resolve(&self.config, action, &env, &SystemUsers).map_err(|e| refusal(&e))
            }
            Decision::Reject | Decision::NoMatch => Err(reply::NOT_AUTHORIZED),
        }
    }
}

fn refusal(err: &ResolveError) -> Reply {
    log::debug!("recipient refused: {err}");
    match err {
        ResolveError::UnknownUser(_) => reply::UNKNOWN_RCPT,
        ResolveError::Loop(_) => reply::ALIAS_LOOP,
        ResolveError::BadPath(_) => reply::UNSAFE_MAILBOX,
        ResolveError::Unsupported(_) => reply::METHOD_UNSUPPORTED,
        ResolveError::Refused(_) => reply::NOT_AUTHORIZED,
        ResolveError::Empty(_) => reply::EMPTY_EXPANSION,
        ResolveError::Forward(_) => reply::METHOD_UNSUPPORTED,
    }
}
