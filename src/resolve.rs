//! From an accepted recipient to the places its copy must go. Applies the action's
//! `virtual` or `alias` table (recursively, with loop detection and a depth limit), finds
//! each final local user (`userbase` table or the password database), and expands the
//! Maildir path template. Called at RCPT time, so an unknown user is refused there.
//!
//! ~/.forward files are read only when the delivery process resolves again before the
//! 250 after DATA ([`resolve_delivering`]): the smtp process is chrooted and never reads
//! homes. So RCPT checks the rules, aliases and that the user exists; what a .forward
//! says (and whether a `forward-only` user has one) is decided at delivery.

use std::fmt;
use std::path::PathBuf;

use crate::config::expand::{expand, ExpandCtx, ExpandError};
use crate::config::{Action, Config, Method};
use crate::envelope::Mailbox;
use crate::envelope::{Envelope, Owner, Target};
use crate::rules::{self, Decision};
use crate::users::{User, UserDb, Userbase};

mod forwards;

/// Alias chains longer than this are refused as loops (OpenSMTPD uses 5 for expansion depth
/// of includes; aliases to aliases rarely go past 3).
const MAX_DEPTH: usize = 10;
/// One recipient may not fan out to more targets than this.
const MAX_TARGETS: usize = 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// No such local user: 550 5.1.1 at RCPT.
    UnknownUser(String),
    /// Aliases loop or nest too deeply: 550 5.4.6.
    Loop(String),
    /// The path template refused this recipient (a hostile address): 550 5.1.3.
    BadPath(ExpandError),
    /// A method or alias form mxd does not deliver (forward-only, expand-only to a user,
    /// |command, /file, an mda as root): 550 5.3.3.
    Unsupported(String),
    /// An expanded address matched no rule, or a `reject` rule: 550 5.7.1.
    Refused(String),
    /// The recipient expands to no mailbox at all (an empty alias): 550 5.1.1, never a
    /// 250 for a message stored nowhere.
    Empty(String),
    /// What a ~/.forward says cannot be delivered (a `forward-only` user without one, a
    /// command in root's): found at delivery, so the message gets a 4xx after DATA.
    Forward(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownUser(u) => write!(f, "unknown user {u}"),
            ResolveError::Loop(a) => write!(f, "alias loop or too deep at {a}"),
            ResolveError::BadPath(e) => write!(f, "{e}"),
            ResolveError::Unsupported(w) => write!(f, "{w} is not supported"),
            ResolveError::Refused(a) => write!(f, "expanded address {a} is refused by the rules"),
            ResolveError::Empty(a) => write!(f, "{a} expands to no mailbox"),
            ResolveError::Forward(why) => write!(f, "{why}"),
        }
    }
}

struct Expander<'a> {
    config: &'a Config,
    env: &'a Envelope<'a>,
    system: &'a dyn UserDb,
    out: Vec<Target>,
    /// True where homes may be read (the delivery process).
    read_forwards: bool,
    /// A `forward-only`/`expand-only` user whose .forward only delivery can read.
    deferred: bool,
}

/// At RCPT (the smtp process): ~/.forward files are not read.
pub fn resolve(
    config: &Config,
    action: &Action,
    env: &Envelope<'_>,
    users: &dyn UserDb,
) -> Result<Vec<Target>, ResolveError> {
    run(config, action, env, users, false)
}

/// In the delivery process (root): as [`resolve`], and each local user's ~/.forward too.
pub fn resolve_delivering(
    config: &Config,
    action: &Action,
    env: &Envelope<'_>,
    users: &dyn UserDb,
) -> Result<Vec<Target>, ResolveError> {
    run(config, action, env, users, true)
}

fn run(
    config: &Config,
    action: &Action,
    env: &Envelope<'_>,
    users: &dyn UserDb,
    read_forwards: bool,
) -> Result<Vec<Target>, ResolveError> {
    let mut r = Expander { config, env, system: users, out: Vec::new(), read_forwards, deferred: false };
    r.address(action, env.rcpt, 0, &mut Vec::new())?;
    if r.out.is_empty() && !r.deferred {
        return Err(ResolveError::Empty(env.rcpt.to_owned()));
    }
    Ok(r.out)
}

impl Expander<'_> {
    fn address(
        &mut self,
        action: &Action,
        addr: &str,
        depth: usize,
        seen: &mut Vec<String>,
    ) -> Result<(), ResolveError> {
        if depth > MAX_DEPTH || self.out.len() > MAX_TARGETS {
            return Err(ResolveError::Loop(addr.to_owned()));
        }
        if let Method::Relay(_) = action.method {
            let orig_rcpt = self.env.rcpt.to_owned();
            self.out.push(Target::Relay { action: action.name.clone(), rcpt: addr.to_owned(), orig_rcpt });
            return Ok(());
        }
        let Mailbox { local: user, domain } = Mailbox::split(addr);
        let base = user.split(self.config.sub_addr_delim).next().unwrap_or(user).to_lowercase();
        let key = format!("{base}@{}", domain.to_lowercase());
        if seen.contains(&key) {
            // A name that expands back to itself ends the expansion as a user (root: root, x).
            return self.local_user(action, &base, addr, depth, seen);
        }
        let expansion = match (&action.virtual_, &action.alias) {
            (Some(t), _) => {
                self.config.table(t).and_then(|t| t.get(&key).or_else(|| t.get(&format!("@{}", domain.to_lowercase()))))
            }
            (None, Some(t)) => self.config.table(t).and_then(|t| t.get(&base)),
            (None, None) => None,
        }
        .map(crate::forward::alias_items);
        let Some(items) = expansion else {
            if action.virtual_.is_some() {
                return Err(ResolveError::UnknownUser(addr.to_owned()));
            }
            return self.local_user(action, &base, addr, depth, seen);
        };
        seen.push(key);
        for item in items {
            self.item(action, &item, domain, depth, seen)?;
        }
        seen.pop();
        Ok(())
    }

    /// One alias value: a local name, or an address decided again by the rules.
    fn item(
        &mut self,
        action: &Action,
        item: &str,
        domain: &str,
        depth: usize,
        seen: &mut Vec<String>,
    ) -> Result<(), ResolveError> {
        if item.starts_with('|') || item.starts_with('/') || item.starts_with("\"|") {
            return self.alias_program(action, item);
        }
        if item.starts_with(':') {
            return Err(ResolveError::Unsupported(format!("alias value '{item}'")));
        }
        if !item.contains('@') {
            let addr = if domain.is_empty() { item.to_owned() } else { format!("{item}@{domain}") };
            return self.address(action, &addr, depth + 1, seen);
        }
        let env = Envelope { rcpt: item, ..*self.env };
        match rules::decide(self.config, &env) {
            Decision::Deliver(next) => self.address(next, item, depth + 1, seen),
            Decision::Reject | Decision::NoMatch => Err(ResolveError::Refused(item.to_owned())),
        }
    }

    fn lookup(&self, action: &Action, name: &str) -> Option<User> {
        match action.userbase.as_deref().and_then(|t| self.config.table(t)) {
            Some(t) => Userbase(t).by_name(name),
            None => self.system.by_name(name),
        }
    }

    fn local_user(
        &mut self,
        action: &Action,
        name: &str,
        dest: &str,
        depth: usize,
        seen: &mut Vec<String>,
    ) -> Result<(), ResolveError> {
        let rcpt_user = self.lookup(action, name).ok_or_else(|| ResolveError::UnknownUser(name.to_owned()))?;
        // As OpenSMTPD: an action delivering as another `user` skips recipients' .forward.
        if action.user.as_deref().is_none_or(|u| u == name) && self.forward(action, &rcpt_user, dest, depth, seen)? {
            return Ok(());
        }
        // `user NAME`: deliver as that user (its ids own the files, its home is ~).
        let user = match &action.user {
            Some(u) => self
                .lookup(action, u)
                .or_else(|| self.system.by_name(u))
                .ok_or_else(|| ResolveError::UnknownUser(u.clone()))?,
            None => rcpt_user,
        };
        let home = user.home.to_string_lossy().into_owned();
        let domain = Mailbox::domain_of(dest);
        let dest_addr =
            if domain.is_empty() { format!("{name}@{}", self.config.hostname) } else { format!("{name}@{domain}") };
        let ctx = ExpandCtx {
            sender: self.env.mail_from,
            rcpt: self.env.rcpt,
            dest: &dest_addr,
            user_name: &user.name,
            user_dir: &home,
            sub_addr_delim: self.config.sub_addr_delim,
        };
        let owner = Some(Owner { uid: user.uid, gid: user.gid });
        let delivered_to = dest_addr.clone();
        let target = match &action.method {
            Method::Maildir { path, .. } => {
                let template = path.as_deref().unwrap_or("~/Maildir");
                let template = match template.strip_prefix("~/") {
                    Some(rest) => format!("%{{user.directory}}/{rest}"),
                    None => template.to_owned(),
                };
                let dir = PathBuf::from(expand(&template, &ctx).map_err(ResolveError::BadPath)?);
                Target::Maildir { dir, owner, delivered_to }
            }
            Method::Mbox => Target::Mbox { path: PathBuf::from("/var/mail").join(&user.name), owner, delivered_to },
            // Queued, and handed to the LMTP server by the relay process, with retries:
            // the user's name, or with `rcpt-to` the original recipient.
            Method::Lmtp { rcpt_to, .. } => Target::Relay {
                action: action.name.clone(),
                rcpt: if *rcpt_to { self.env.rcpt.to_owned() } else { user.name.clone() },
                orig_rcpt: self.env.rcpt.to_owned(),
            },
            // Never as root: OpenSMTPD refuses it too, unless `user` names who runs it.
            Method::Mda(_) if user.uid == 0 && action.user.is_none() => {
                return Err(ResolveError::Unsupported("mda delivery as root".into()))
            }
            Method::Mda(_) => Target::Mda { action: action.name.clone(), rcpt: dest_addr.clone() },
            Method::ForwardOnly | Method::ExpandOnly => {
                let kind =
                    if matches!(action.method, Method::ForwardOnly) { "a forward-only" } else { "an expand-only" };
                return Err(ResolveError::Forward(format!("{name} has no usable ~/.forward on {kind} action")));
            }
            Method::Relay(_) => return Err(ResolveError::Unsupported("relay".into())),
        };
        if !self.out.contains(&target) {
            self.out.push(target);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::envelope::Origin;
    use crate::users::SystemUsers;

    fn config(body: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smtpd.conf");
        let text = format!(
            "hostname \"mx.test\"\ntable users {{ joseph = \"1000:1000:/home/joseph\", alice = \"1001:1001:/home/alice\", vmail = \"2000:2000:/var/vmail\" }}\n{body}"
        );
        std::fs::write(&path, text).unwrap();
        let c = load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        (dir, c)
    }

    fn run(c: &Config, rcpt: &str) -> Result<Vec<Target>, ResolveError> {
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
        match rules::decide(c, &env) {
            Decision::Deliver(a) => resolve(c, a, &env, &SystemUsers),
            other => panic!("{rcpt}: {other:?}"),
        }
    }

    fn maildir(dir: &str, to: &str) -> Target {
        Target::Maildir {
            dir: dir.into(),
            owner: Some(Owner {
                uid: if dir.contains("alice") { 1001 } else { 1000 },
                gid: if dir.contains("alice") { 1001 } else { 1000 },
            }),
            delivered_to: to.into(),
        }
    }

    const LOCAL: &str =
        "action local maildir alias <aliases> userbase <users>\naction out relay host smtp://192.0.2.1\n\
                         match from any for domain \"test\" action local\nmatch from any for any action out\n";

    #[test]
    fn aliases_lists_sub_addresses_and_unknown_users() {
        let (_d, c) = config(&format!(
            "table aliases {{ root = \"joseph\", team = \"joseph, alice\", ops = \"ops@far.example\" }}\n{LOCAL}"
        ));
        assert_eq!(run(&c, "joseph@test"), Ok(vec![maildir("/home/joseph/Maildir", "joseph@test")]));
        assert_eq!(run(&c, "Joseph+cron@test"), Ok(vec![maildir("/home/joseph/Maildir", "joseph@test")]));
        assert_eq!(run(&c, "root@test"), Ok(vec![maildir("/home/joseph/Maildir", "joseph@test")]));
        assert_eq!(
            run(&c, "team@test"),
            Ok(vec![maildir("/home/joseph/Maildir", "joseph@test"), maildir("/home/alice/Maildir", "alice@test")])
        );
        // An alias to an address goes through the rules again: here it relays.
        assert_eq!(
            run(&c, "ops@test"),
            Ok(vec![Target::Relay {
                action: "out".into(),
                rcpt: "ops@far.example".into(),
                orig_rcpt: "ops@test".into()
            }])
        );
        assert_eq!(run(&c, "nobody@test"), Err(ResolveError::UnknownUser("nobody".into())));
    }

    #[test]
    fn alias_loops_end() {
        let (_d, c) = config(&format!("table aliases {{ a = \"b\", b = \"a\", self = \"self, joseph\" }}\n{LOCAL}"));
        assert_eq!(run(&c, "a@test"), Err(ResolveError::UnknownUser("a".into())));
        // A name that lists itself is delivered to as a user (if it is one) — here it is not.
        assert_eq!(run(&c, "self@test"), Err(ResolveError::UnknownUser("self".into())));
        let deep: String = (0..20).map(|i| format!("l{i} = \"l{}\", ", i + 1)).collect();
        let (_d, c) = config(&format!("table aliases {{ {deep} l20 = \"joseph\" }}\n{LOCAL}"));
        assert!(matches!(run(&c, "l0@test"), Err(ResolveError::Loop(_))));
        assert!(run(&c, "l15@test").is_ok());
    }

    #[test]
    fn virtual_tables_and_catch_all() {
        let (_d, c) = config(
            "table virt { joseph@v.example = joseph, \"@v.example\" = alice }\n\
             action v maildir virtual <virt> userbase <users>\nmatch from any for domain \"v.example\" action v\n",
        );
        assert_eq!(run(&c, "joseph@v.example"), Ok(vec![maildir("/home/joseph/Maildir", "joseph@v.example")]));
        assert_eq!(run(&c, "anyone@v.example"), Ok(vec![maildir("/home/alice/Maildir", "alice@v.example")]));
    }

    #[test]
    fn user_option_and_templates_refuse_hostile_names() {
        let (_d, c) = config(
            "action v maildir \"/var/vmail/%{rcpt.domain}/%{rcpt.user:strip}\" user vmail userbase <users>\n\
             match from any for any action v\n",
        );
        // `user vmail`: vmail owns the files; the path comes from the recipient.
        assert_eq!(
            run(&c, "joseph+x@v.example"),
            Ok(vec![Target::Maildir {
                dir: "/var/vmail/v.example/joseph".into(),
                owner: Some(Owner { uid: 2000, gid: 2000 }),
                delivered_to: "joseph@v.example".into()
            }])
        );
        let (_d, c) = config(
            "table aliases { }\naction v maildir \"/var/vmail/%{rcpt.user}\" user vmail alias <aliases> userbase <users>\n\
             match from any for any action v\n",
        );
        assert_eq!(
            run(&c, "joseph@v.example"),
            Ok(vec![Target::Maildir {
                dir: "/var/vmail/joseph".into(),
                owner: Some(Owner { uid: 2000, gid: 2000 }),
                delivered_to: "joseph@v.example".into()
            }])
        );
        assert!(matches!(run(&c, "a/b@v.example"), Err(ResolveError::UnknownUser(_)) | Err(ResolveError::BadPath(_))));
    }

    #[test]
    fn pipes_and_files_in_aliases_are_refused() {
        let (_d, c) = config(&format!("table aliases {{ prog = \"|/bin/sh\", file = \"/tmp/x\" }}\n{LOCAL}"));
        assert!(matches!(run(&c, "prog@test"), Err(ResolveError::Unsupported(_))));
        assert!(matches!(run(&c, "file@test"), Err(ResolveError::Unsupported(_))));
    }

    #[test]
    fn lmtp_and_mda_targets() {
        let (_d, c) = config(
            "table aliases { team = \"joseph, alice\" }\ntable u2 { root = \"0:0:/root\", joseph = \"1000:1000:/home/joseph\" }\n\
             action l lmtp \"/run/lmtp\" alias <aliases> userbase <users>\naction r lmtp \"h:24\" rcpt-to userbase <users>\n\
             action m mda \"procmail\" userbase <u2>\naction mu mda \"procmail\" user joseph userbase <u2>\n\
             match from any for domain \"l.test\" action l\nmatch from any for domain \"r.test\" action r\n\
             match from any for domain \"m.test\" action m\nmatch from any for domain \"mu.test\" action mu\n",
        );
        let relay = |a: &str, r: &str, o: &str| Target::Relay { action: a.into(), rcpt: r.into(), orig_rcpt: o.into() };
        // By user name after aliases; with `rcpt-to`, the recipient as it came.
        let team = Ok(vec![relay("l", "joseph", "team@l.test"), relay("l", "alice", "team@l.test")]);
        assert_eq!(run(&c, "team@l.test"), team);
        assert_eq!(run(&c, "Joseph+x@r.test"), Ok(vec![relay("r", "Joseph+x@r.test", "Joseph+x@r.test")]));
        assert_eq!(
            run(&c, "joseph+x@m.test"),
            Ok(vec![Target::Mda { action: "m".into(), rcpt: "joseph@m.test".into() }])
        );
        // Never as root, unless `user` names who runs it.
        assert!(matches!(run(&c, "root@m.test"), Err(ResolveError::Unsupported(_))));
        assert_eq!(run(&c, "root@mu.test"), Ok(vec![Target::Mda { action: "mu".into(), rcpt: "root@mu.test".into() }]));
    }

    #[test]
    fn empty_aliases_are_refused() {
        let (_d, c) = config(&format!("table aliases {{ void = \"\", nested = \"void\" }}\n{LOCAL}"));
        assert_eq!(run(&c, "void@test"), Err(ResolveError::Empty("void@test".into())));
        assert_eq!(run(&c, "nested@test"), Err(ResolveError::Empty("nested@test".into())));
    }
}
