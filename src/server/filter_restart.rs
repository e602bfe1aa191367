//! The parent's side of a dead filter. Filter processes are started by the smtp process
//! while it is still root, so only a fresh smtp process can start them again: when the
//! current one says a filter stopped (it died, or misbehaved and was killed), the parent
//! starts a new generation, as a reload does. Sessions that were waiting on the dead filter
//! have had their 421 already; the old process serves its other sessions to their end.
//! More than [`MAX_RESTARTS`] within [`WINDOW`] is a crash loop: no more restarts, and the
//! listeners using that filter stay fail-closed (421) until a reload.

use std::time::{Duration, Instant};

use crate::config::Config;

/// Filter restarts tolerated within [`WINDOW`].
const MAX_RESTARTS: usize = 5;
const WINDOW: Duration = Duration::from_secs(60);

pub(crate) struct FilterRestarts {
    /// The configuration starts filter processes: only then is the smtp process asked.
    enabled: bool,
    recent: Vec<Instant>,
    given_up: bool,
}

impl FilterRestarts {
    pub(crate) fn new(config: &Config) -> FilterRestarts {
        let enabled = !crate::filter::config::plan(config).procs.is_empty();
        FilterRestarts { enabled, recent: Vec::new(), given_up: false }
    }

    /// Asks the current smtp process about its filters (`ask`: a question to it, its
    /// answer); true when a filter stopped and a new generation must start.
    pub(crate) fn check(&mut self, ask: impl FnOnce(&str) -> Option<String>) -> bool {
        if !self.enabled || self.given_up {
            return false;
        }
        let Some(answer) = ask(super::filters::HEALTH_REQUEST) else { return false };
        let Some(name) = answer.strip_prefix(super::filters::FAILED_PREFIX) else { return false };
        let now = Instant::now();
        self.recent.retain(|t| now.duration_since(*t) < WINDOW);
        if self.recent.len() >= MAX_RESTARTS {
            log::error!(
                "filter {name} stopped {} times within {WINDOW:?}: not restarted again; \
                 its sessions get 421 until a reload",
                self.recent.len() + 1
            );
            self.given_up = true;
            return false;
        }
        self.recent.push(now);
        log::warn!("filter {name} stopped: starting new smtp and delivery processes to restart it");
        true
    }
}
