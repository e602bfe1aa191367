//! Builtin conditions on a table process's table (`filter … match rcpt-to <t>` with
//! `proc-exec:`): the engine cannot ask it (the loop must not block), so the chain waits
//! in `FilterState::Table` while the connection asks the delivery process
//! (`FilterEvent::AskTable`), and goes on from the same filter with the answer
//! (`handle_table`). Answers hold for the rest of the phase; a failed lookup refuses the
//! phase with a 451, so nothing is let through or refused for good on a fault.

use std::cell::{Cell, RefCell};

use super::super::builtin::{BuiltinRule, LookupKind, TableQuestion, TableRef, Tables};
use super::{FilterEvent, FilterState, Now, Phase, SessionFilter};

/// The reply to a phase whose condition's table could not be asked.
pub(super) const TABLE_TEMPFAIL: &str = "451 4.3.0 Temporary failure: table lookup";

/// Whether a builtin rule fires, as far as the answers so far tell.
pub(super) enum Fired {
    Is(bool),
    /// This table process's answer is needed first.
    Ask(TableQuestion),
    /// A table process's lookup failed.
    Failed,
}

/// The configuration's tables, with the answers of this phase standing in for those a
/// table process serves.
struct Answered<'a> {
    tables: &'a dyn Tables,
    answered: &'a [(TableQuestion, Option<bool>)],
    missing: RefCell<Option<TableQuestion>>,
    failed: Cell<bool>,
}

impl Tables for Answered<'_> {
    fn contains(&self, table: &TableRef, kind: LookupKind, key: &str) -> bool {
        if !self.tables.asks(table) {
            return self.tables.contains(table, kind, key);
        }
        let answer = self.answered.iter().find(|(q, _)| q.table == *table && q.kind == kind && q.key == key);
        match answer {
            Some((_, Some(found))) => *found,
            Some((_, None)) => {
                self.failed.set(true);
                false
            }
            None => {
                let mut missing = self.missing.borrow_mut();
                missing.get_or_insert_with(|| TableQuestion { table: table.clone(), kind, key: key.to_owned() });
                false
            }
        }
    }
}

impl SessionFilter {
    pub(super) fn fires(&self, rule: &BuiltinRule, rcpt: Option<&str>, tables: &dyn Tables) -> Fired {
        let answered =
            Answered { tables, answered: &self.answered, missing: RefCell::new(None), failed: Cell::new(false) };
        let fired = rule.fires(&self.facts, rcpt, &answered);
        match (answered.missing.into_inner(), answered.failed.get()) {
            (Some(q), _) => Fired::Ask(q),
            (None, true) => Fired::Failed,
            (None, false) => Fired::Is(fired),
        }
    }

    /// Parks the chain at filter `pos` until the table's answer.
    pub(super) fn ask_table(&mut self, now: Now, phase: Phase, param: String, pos: usize, question: TableQuestion) {
        self.events.push_back(FilterEvent::AskTable(question.clone()));
        let deadline = now.mono + self.limits.timeout;
        self.state = FilterState::Table { phase, param, pos, question, deadline };
    }

    /// The table process's answer to the question asked (`None`: the lookup failed): the
    /// chain goes on. Anything else is ignored.
    pub fn handle_table(&mut self, now: Now, found: Option<bool>) {
        if !matches!(self.state, FilterState::Table { .. }) {
            return;
        }
        let FilterState::Table { phase, param, pos, question, .. } =
            std::mem::replace(&mut self.state, FilterState::Idle)
        else {
            return;
        };
        self.answered.push((question, found));
        self.run(now, phase, param, pos);
    }

    /// Whether the chain waits for a table process's answer.
    pub fn awaits_table(&self) -> bool {
        matches!(self.state, FilterState::Table { .. })
    }
}
