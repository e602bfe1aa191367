//! AUTH on listeners, the smtp process's side: what a listener says about logins
//! (`auth [<t>]`, `auth-optional [<t>]`, `senders <t> [masquerade]`, `received-auth`), and
//! the `senders` check at MAIL. Passwords are never checked here: the session's request
//! goes to the delivery process over the link (`LoopCtx::check_auth`), whose verdict comes
//! back through the loop's channel (`privsep::auth` does the checking).

use crate::config::{Config, Listener};
use crate::smtp::{reply, AuthConfig, AuthPolicy, Reply, TxContext};

/// A listener's AUTH settings, shared by its sessions.
#[derive(Clone, Debug)]
pub(crate) struct ListenerAuth {
    pub(crate) session: AuthConfig,
    /// `auth <t>`: the credentials table; `None` with AUTH on means the system's users.
    pub(crate) table: Option<String>,
    pub(crate) senders: Option<Senders>,
    /// `received-auth`: the Received header says `auth=yes user=…` (under TLS).
    pub(crate) received_auth: bool,
}

/// `senders <t> [masquerade]`.
#[derive(Clone, Debug)]
pub(crate) struct Senders {
    table: String,
    masquerade: bool,
}

impl Senders {
    /// The table process behind `senders <t>` is for the delivery process to ask.
    pub(crate) fn is_proc(&self, config: &Config) -> bool {
        config.table(&self.table).is_some_and(|t| t.is_proc())
    }

    pub(crate) fn parts(&self) -> (&str, bool) {
        (&self.table, self.masquerade)
    }
}

impl ListenerAuth {
    pub(crate) const OFF: ListenerAuth =
        ListenerAuth { session: AuthConfig::OFF, table: None, senders: None, received_auth: false };

    pub(crate) fn of(l: &Listener) -> ListenerAuth {
        let policy = match &l.auth {
            None => AuthPolicy::Off,
            Some(a) if a.optional => AuthPolicy::Optional,
            Some(_) => AuthPolicy::Required,
        };
        ListenerAuth {
            session: AuthConfig::new(policy),
            table: l.auth.as_ref().and_then(|a| a.table.clone()),
            senders: l.options.senders.clone().map(|table| Senders { table, masquerade: l.options.masquerade }),
            received_auth: l.options.received_auth,
        }
    }
}

/// MAIL FROM of an authenticated session on a `senders` listener must be one of the user's
/// (OpenSMTPD checks only then, too).
pub(crate) fn check_sender(config: &Config, senders: Option<&Senders>, ctx: &TxContext<'_>) -> Result<(), Reply> {
    let (Some(s), Some(user)) = (senders, ctx.auth) else {
        return Ok(());
    };
    if s.is_proc(config) {
        // A table process: the session asks the delivery process (`ConnPolicy::ask_mail`).
        return Ok(());
    }
    let lookup = |u: &str| config.table(&s.table).and_then(|t| t.get_list(u));
    if crate::auth::senders::sender_allowed(user, ctx.mail_from, lookup, s.masquerade, config.sub_addr_delim) {
        Ok(())
    } else {
        Err(reply::SENDER_NOT_ALLOWED)
    }
}
