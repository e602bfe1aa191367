//! The mda runner's other recipients: a command or a file named by a ~/.forward or an
//! alias ([`ForwardProgram`]), run as its user, never as root. A command runs as `/bin/sh -c`; a
//! file is appended to by mxd itself re-executed as the user (`mxd --append-mbox PATH
//! SENDER`, OpenSMTPD's mail.mboxfile), so it is opened only with the user's rights.

use std::process::Command;

use super::client::RcptStatus;
use crate::config::{Action, Config};
use crate::forward::{ForwardKind, ForwardProgram, APPEND_FLAG};
use crate::users::{SystemUsers, User, UserDb, Userbase};

/// What runs `p` for a message from `sender`, and as whom (the mda runner executes it);
/// or why it does not run.
/// `name` in the action's `userbase` (the system's users without one). A table that fails
/// is a temporary failure: the message was accepted, and a table that is down is not an
/// unknown user.
pub(super) fn action_user(config: &Config, action: &Action, name: &str) -> Result<Option<User>, RcptStatus> {
    match action.userbase.as_deref().and_then(|t| config.table(t)) {
        Some(t) => Userbase(t).lookup(name).map_err(|e| RcptStatus::Temp(format!("userbase: {e}"))),
        None => Ok(SystemUsers.by_name(name)),
    }
}

pub(super) fn command(
    config: &Config,
    action: &Action,
    p: &ForwardProgram,
    sender: &str,
) -> Result<(Command, User), RcptStatus> {
    let user = action_user(config, action, &p.user)?.or_else(|| SystemUsers.by_name(&p.user));
    let Some(user) = user else {
        return Err(RcptStatus::Perm(format!("5.1.1 unknown user {}", p.user)));
    };
    if user.uid == 0 {
        return Err(RcptStatus::Perm("5.3.0 a command or file from a .forward or alias never runs as root".into()));
    }
    let cmd = match &p.kind {
        ForwardKind::Pipe(line) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            cmd
        }
        ForwardKind::File(path) => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => return Err(RcptStatus::Temp(format!("cannot find mxd to append to {path}: {e}"))),
            };
            let mut cmd = Command::new(exe);
            cmd.arg(APPEND_FLAG).arg(path).arg(sender);
            cmd
        }
    };
    Ok((cmd, user))
}

impl ForwardProgram {
    /// The log's `method=`.
    pub fn method(&self) -> &'static str {
        match self.kind {
            ForwardKind::Pipe(_) => "command",
            ForwardKind::File(_) => "file",
        }
    }
}
