//! From an accepted recipient to the places its copy must go. Applies the action's
//! `virtual` or `alias` table (recursively, with loop detection and a depth limit), finds
//! each final local user (`userbase` table or the password database), and expands the
//! Maildir path template. Called at RCPT time, so an unknown user is refused there.

use std::fmt;
use std::path::PathBuf;

use crate::config::expand::{expand, ExpandCtx, ExpandError};
use crate::config::{Action, Config, Method};
use crate::envelope::{Envelope, Owner, Target};
use crate::rules::{self, Decision};
use crate::users::{User, UserDb, Userbase};

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
    /// A method or alias form mxd does not deliver (mda, lmtp, |command, /file): 550 5.3.3.
    Unsupported(String),
    /// An expanded address matched no rule, or a `reject` rule: 550 5.7.1.
    Refused(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownUser(u) => write!(f, "unknown user {u}"),
            ResolveError::Loop(a) => write!(f, "alias loop or too deep at {a}"),
            ResolveError::BadPath(e) => write!(f, "{e}"),
            ResolveError::Unsupported(w) => write!(f, "{w} is not supported"),
            ResolveError::Refused(a) => write!(f, "expanded address {a} is refused by the rules"),
        }
    }
}

struct Resolver<'a> {
    config: &'a Config,
    env: &'a Envelope<'a>,
    system: &'a dyn UserDb,
    out: Vec<Target>,
}

pub fn resolve(config: &Config, action: &Action, env: &Envelope<'_>, users: &dyn UserDb) -> Result<Vec<Target>, ResolveError> {
    let mut r = Resolver { config, env, system: users, out: Vec::new() };
    r.address(action, env.rcpt, 0, &mut Vec::new())?;
    Ok(r.out)
}

fn split(addr: &str) -> (&str, &str) {
    addr.rsplit_once('@').unwrap_or((addr, ""))
}

impl Resolver<'_> {
    fn address(&mut self, action: &Action, addr: &str, depth: usize, seen: &mut Vec<String>) -> Result<(), ResolveError> {
        if depth > MAX_DEPTH || self.out.len() > MAX_TARGETS {
            return Err(ResolveError::Loop(addr.to_owned()));
        }
        if let Method::Relay(_) = action.method {
            self.out.push(Target::Relay { action: action.name.clone(), rcpt: addr.to_owned() });
            return Ok(());
        }
        let (user, domain) = split(addr);
        let base = user.split(self.config.sub_addr_delim).next().unwrap_or(user).to_lowercase();
        let key = format!("{base}@{}", domain.to_lowercase());
        if seen.contains(&key) {
            // A name that expands back to itself ends the expansion as a user (root: root, x).
            return self.local_user(action, &base, addr);
        }
        let expansion = match (&action.virtual_, &action.alias) {
            (Some(t), _) => self.config.table(t).and_then(|t| t.get_list(&key).or_else(|| t.get_list(&format!("@{}", domain.to_lowercase())))),
            (None, Some(t)) => self.config.table(t).and_then(|t| t.get_list(&base)),
            (None, None) => None,
        };
        let Some(items) = expansion else {
            if action.virtual_.is_some() {
                return Err(ResolveError::UnknownUser(addr.to_owned()));
            }
            return self.local_user(action, &base, addr);
        };
        let items: Vec<String> = items.into_iter().map(str::to_owned).collect();
        seen.push(key);
        for item in items {
            self.item(action, &item, domain, depth, seen)?;
        }
        seen.pop();
        Ok(())
    }

    /// One alias value: a local name, or an address decided again by the rules.
    fn item(&mut self, action: &Action, item: &str, domain: &str, depth: usize, seen: &mut Vec<String>) -> Result<(), ResolveError> {
        if item.starts_with('|') || item.starts_with('/') || item.starts_with(':') {
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

    fn local_user(&mut self, action: &Action, name: &str, dest: &str) -> Result<(), ResolveError> {
        let rcpt_user = self.lookup(action, name).ok_or_else(|| ResolveError::UnknownUser(name.to_owned()))?;
        // `user NAME`: deliver as that user (its ids own the files, its home is ~).
        let user = match &action.user {
            Some(u) => self.lookup(action, u).or_else(|| self.system.by_name(u)).ok_or_else(|| ResolveError::UnknownUser(u.clone()))?,
            None => rcpt_user,
        };
        let home = user.home.to_string_lossy().into_owned();
        let (_, domain) = split(dest);
        let dest_addr = if domain.is_empty() { format!("{name}@{}", self.config.hostname) } else { format!("{name}@{domain}") };
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
            Method::Lmtp { .. } => return Err(ResolveError::Unsupported("lmtp delivery".into())),
            Method::Mda(_) => return Err(ResolveError::Unsupported("mda delivery".into())),
            Method::ForwardOnly | Method::ExpandOnly => return Err(ResolveError::Unsupported("local delivery for a forward-only action".into())),
            Method::Relay(_) => return Err(ResolveError::Unsupported("relay".into())),
        };
        if !self.out.contains(&target) {
            self.out.push(target);
        }
        Ok(())
    }
}
