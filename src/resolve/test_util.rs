//! What the resolution tests share: a configuration loaded from text, and one recipient
//! decided and resolved as RCPT (`delivering` false) or the delivery process would.

use super::{resolve, resolve_delivering, ResolveError};
use crate::config::Config;
use crate::envelope::{Envelope, Origin, Target};
use crate::rules::{self, Decision};
use crate::users::SystemUsers;

/// `text` as smtpd.conf in `dir`, loaded.
pub(super) fn load(dir: &std::path::Path, text: &str) -> Config {
    let path = dir.join("smtpd.conf");
    std::fs::write(&path, text).unwrap();
    crate::config::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// `rcpt` from 127.0.0.1, sender s@example.org, through the rules and resolution.
pub(super) fn resolve_rcpt(c: &Config, rcpt: &str, delivering: bool) -> Result<Vec<Target>, ResolveError> {
    let origin = Origin::Tcp("127.0.0.1".parse().unwrap());
    let env = Envelope {
        origin: &origin,
        rdns: None,
        tag: None,
        tls: false,
        auth: None,
        mail_from: "s@example.org",
        rcpt,
        helo: "client.example.org",
    };
    let action = match rules::try_decide(c, &env)? {
        Decision::Deliver(a) => a,
        other => panic!("{rcpt}: {other:?}"),
    };
    if delivering {
        resolve_delivering(c, action, &env, &SystemUsers)
    } else {
        resolve(c, action, &env, &SystemUsers)
    }
}
