//! The parent's side of a dead filter. Filter processes are started by the smtp process
//! while it is still root, so only a fresh smtp process can start them again: when the
//! current one says a filter stopped (it died, or misbehaved and was killed), the parent
//! starts a new generation, as a reload does. Sessions that were waiting on the dead filter
//! have had their 421 already; the old process serves its other sessions to their end.
//! More than [`MAX_RESTARTS`] within [`WINDOW`] is a crash loop: no more restarts, and the
//! listeners using that filter stay fail-closed (421) until a reload.

use std::time::{Duration, Instant};

use super::supervise::Kids;
use super::Bound;
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

    /// Asks the current smtp process about its filters; replaces it if one has stopped.
    pub(crate) fn check(&mut self, kids: &mut Kids, bound: &Bound) {
        if !self.enabled || self.given_up {
            return;
        }
        let Some(answer) = kids.ask_smtp(super::filters::HEALTH_REQUEST) else { return };
        let Some(name) = answer.strip_prefix(super::filters::FAILED_PREFIX) else { return };
        let now = Instant::now();
        self.recent.retain(|t| now.duration_since(*t) < WINDOW);
        if self.recent.len() >= MAX_RESTARTS {
            log::error!(
                "filter {name} stopped {} times within {WINDOW:?}: not restarted again; \
                 its sessions get 421 until a reload",
                self.recent.len() + 1
            );
            self.given_up = true;
            return;
        }
        self.recent.push(now);
        log::warn!("filter {name} stopped: starting new smtp and delivery processes to restart it");
        if let Err(e) = kids.start_generation(bound) {
            log::error!("cannot restart filter {name}: {e}");
        }
    }
}
