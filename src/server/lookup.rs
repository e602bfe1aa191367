//! Questions at MAIL and RCPT that the smtp process cannot answer without blocking or
//! without reading what it may not: a proc table in a rule, alias, virtual, userbase or
//! `senders` use, or the ~/.forward of a `forward-only`/`expand-only` user. The session
//! parks (`smtp::LookupRequest`), the loop sends the question on its link to delivery
//! (`LoopCtx::ask`), and the verdict becomes the session's reply (`reply`). Every other
//! MAIL and RCPT is answered at once, as before: a configuration with neither pays nothing.

use crate::config::{Config, Method};
use crate::envelope::{Envelope, Origin};
use crate::privsep::frame::{LookupAsk, LookupQuestion, LookupVerdict};
use crate::resolve::{self, ResolveError};
use crate::rules::{self, Decision};
use crate::smtp::{reply, LookupRequest, Reply};
use crate::users::SystemUsers;

/// Whether some recipient of `config` may need the delivery process: it has a proc table,
/// or an action that delivers only through a user's ~/.forward.
pub(crate) fn may_ask(config: &Config) -> bool {
    config.tables.values().any(|t| t.is_proc())
        || config.actions.values().any(|a| matches!(a.method, Method::ForwardOnly | Method::ExpandOnly))
}

/// Whether this recipient needs the delivery process: deciding or resolving it here meets
/// a proc table or a ~/.forward (`Deferred`).
pub(crate) fn rcpt_needs_delivery(config: &Config, env: &Envelope<'_>) -> bool {
    match rules::try_decide(config, env) {
        Err(_) => true,
        Ok(Decision::Deliver(action)) => matches!(
            resolve::resolve(config, action, env, &SystemUsers),
            Err(ResolveError::Deferred(_) | ResolveError::TableFailed(_))
        ),
        Ok(Decision::Reject | Decision::NoMatch) => false,
    }
}

/// What the connection knows of its client, for a question.
pub(crate) struct ClientFacts<'a> {
    pub(crate) origin: &'a Origin,
    pub(crate) tag: Option<&'a str>,
    pub(crate) rdns: Option<&'a str>,
    /// The listener's `senders` table and `masquerade`.
    pub(crate) senders: Option<(&'a str, bool)>,
}

/// The question as it crosses to delivery.
pub(crate) fn ask(req: LookupRequest, client: &ClientFacts<'_>) -> LookupAsk {
    let senders = client.senders;
    let question = match (req.rcpt, senders) {
        (Some(rcpt), _) => LookupQuestion::Rcpt(rcpt),
        (None, Some((table, masquerade))) => LookupQuestion::Sender { table: table.to_owned(), masquerade },
        // MAIL asks only with a `senders` table (`ConnPolicy::ask_mail`).
        (None, None) => LookupQuestion::Sender { table: String::new(), masquerade: false },
    };
    LookupAsk {
        seq: 0,
        question,
        origin: client.origin.clone(),
        tls: req.tls,
        tag: client.tag.map(str::to_owned),
        auth: req.auth,
        mail_from: req.mail_from,
        helo: req.helo,
        rdns: client.rdns.map(str::to_owned),
    }
}

/// The session's reply for delivery's verdict.
pub(crate) fn reply(verdict: LookupVerdict) -> Result<(), Reply> {
    Err(match verdict {
        LookupVerdict::Ok => return Ok(()),
        // A name answers only a `hostnames` question: here it is a mix-up.
        LookupVerdict::TempFail | LookupVerdict::Name(_) => reply::TEMPFAIL,
        LookupVerdict::UnknownUser => reply::UNKNOWN_RCPT,
        LookupVerdict::NotAuthorized => reply::NOT_AUTHORIZED,
        LookupVerdict::Loop => reply::ALIAS_LOOP,
        LookupVerdict::UnsafeMailbox => reply::UNSAFE_MAILBOX,
        LookupVerdict::Unsupported => reply::METHOD_UNSUPPORTED,
        LookupVerdict::Empty => reply::EMPTY_EXPANSION,
        LookupVerdict::SenderNotAllowed => reply::SENDER_NOT_ALLOWED,
        LookupVerdict::BadSrs => reply::BAD_SRS,
        LookupVerdict::ForwardTempFail => reply::FORWARD_TEMPFAIL,
        LookupVerdict::ForwardPermFail => reply::FORWARD_PERMFAIL,
    })
}
