//! The control socket's view of both queues: the relay queue (its runner is in the relay
//! process) and the mda queue (its runner is in the parent, beside the control thread).
//! `mailq`, `schedule` and `remove` act on both; per-user visibility applies to the
//! joined listing, as it did to the relay's alone.

use crate::control::HandlerError;
use crate::relay::mda;

/// The relay queue's listing, then the mda queue's.
pub(crate) fn show(relay: String) -> String {
    let mda = mda::list();
    match (relay.is_empty(), mda.is_empty()) {
        (_, true) => relay,
        (true, false) => mda,
        (false, false) => format!("{relay}\n{mda}"),
    }
}

/// The relay process's answer ("N scheduled") with the mda queue's count added; not
/// found only when neither queue holds the message.
pub(crate) fn schedule(relay: Result<String, HandlerError>, id: Option<&str>) -> Result<String, HandlerError> {
    let count = |answer: &str| answer.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    match (relay, mda::schedule(id)) {
        (Ok(answer), Ok(n)) => Ok(format!("{} scheduled", count(&answer) + n)),
        (Ok(answer), Err(_)) => Ok(answer),
        (Err(_), Ok(n)) if n > 0 => Ok(format!("{n} scheduled")),
        (Err(e), _) => Err(e),
    }
}

/// Removes from both queues; how many messages, or not found in either.
pub(crate) fn remove(relay: Result<usize, String>, id: Option<&str>) -> Result<String, HandlerError> {
    match (relay, mda::remove(id)) {
        (Ok(a), Ok(b)) => Ok(format!("{} removed", a + b)),
        (Ok(n), Err(_)) | (Err(_), Ok(n)) => Ok(format!("{n} removed")),
        (Err(e), Err(_)) => Err(HandlerError::not_found(e)),
    }
}
