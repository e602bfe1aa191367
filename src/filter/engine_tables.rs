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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::super::builtin::{BuiltinAction, BuiltinRule, Condition, Test};
    use super::super::super::chain::{Chain, ChainFilter, ChainFilterKind, FilterChain};
    use super::super::super::protocol::{Endpoint, Timestamp};
    use super::super::{FilterDecision, FilterLink, Id, Limits};
    use super::*;

    /// `proc` is a table process's; `file` holds `x@file.test`.
    struct Two;
    impl Tables for Two {
        fn contains(&self, _: &TableRef, _: LookupKind, key: &str) -> bool {
            key == "x@file.test"
        }
        fn asks(&self, t: &TableRef) -> bool {
            t.name == "proc"
        }
    }

    fn rule(name: &str, table: &str, negate: bool, action: BuiltinAction) -> ChainFilter {
        let test = Test::RcptTo(TableRef { name: table.into(), regex: false });
        let conditions = vec![Condition { negate, test }];
        ChainFilter {
            name: name.into(),
            kind: ChainFilterKind::Builtin(BuiltinRule { phase: Phase::RcptTo, conditions, action }),
        }
    }

    fn session() -> (SessionFilter, Now) {
        let filters = vec![
            rule("file", "file", false, BuiltinAction::Reject("550 file".into())),
            rule("proc", "proc", false, BuiltinAction::Reject("550 proc".into())),
            rule("notproc", "proc", true, BuiltinAction::Junk),
        ];
        let chain = Arc::new(Chain::new(&FilterChain { filters }, &HashMap::new(), Arc::new(Two)).unwrap());
        let now = Now { mono: Instant::now(), wall: Timestamp(Duration::from_secs(1_700_000_000)) };
        let link = FilterLink {
            rdns: None,
            fcrdns: false,
            src: Endpoint::Unix("/s".into()),
            dest: Endpoint::Unix("/s".into()),
        };
        let limits = Limits { timeout: Duration::from_secs(30), max_message: 1024 };
        (SessionFilter::new(chain, Id(7), 0, limits, &link, now), now)
    }

    fn events(s: &mut SessionFilter) -> Vec<FilterEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn asked(key: &str) -> FilterEvent {
        let table = TableRef { name: "proc".into(), regex: false };
        FilterEvent::AskTable(TableQuestion { table, kind: LookupKind::MailAddr, key: key.into() })
    }

    #[test]
    fn the_chain_waits_for_the_table_and_goes_on_from_the_same_filter() {
        let (mut s, now) = session();
        // A file table decides at once.
        s.begin(now, Phase::RcptTo, "x@file.test");
        assert_eq!(
            events(&mut s),
            vec![FilterEvent::Decided(Phase::RcptTo, FilterDecision::Reject("550 file".into()))]
        );
        // Listed in the table process's table: rejected once it says so.
        s.begin(now, Phase::RcptTo, "spam@x.test");
        assert_eq!(events(&mut s), vec![asked("spam@x.test")]);
        assert!(s.is_waiting() && s.awaits_table());
        s.handle_table(now, Some(true));
        assert_eq!(
            events(&mut s),
            vec![FilterEvent::Decided(Phase::RcptTo, FilterDecision::Reject("550 proc".into()))]
        );
        // Not listed: the answer serves the negated condition too, without asking again.
        s.begin(now, Phase::RcptTo, "ok@x.test");
        assert_eq!(events(&mut s), vec![asked("ok@x.test")]);
        s.handle_table(now, Some(false));
        assert_eq!(events(&mut s), vec![FilterEvent::Decided(Phase::RcptTo, FilterDecision::Junk)]);
        // A failed lookup: a 451 for this phase, and the session goes on.
        s.begin(now, Phase::RcptTo, "any@x.test");
        events(&mut s);
        s.handle_table(now, None);
        let tempfail = FilterDecision::Reject(TABLE_TEMPFAIL.into());
        assert_eq!(events(&mut s), vec![FilterEvent::Decided(Phase::RcptTo, tempfail)]);
        // An answer nobody waits for changes nothing.
        s.handle_table(now, Some(true));
        assert!(events(&mut s).is_empty() && !s.is_waiting());
    }

    #[test]
    fn an_unanswered_table_fails_the_session_at_the_filter_timeout() {
        let (mut s, now) = session();
        s.begin(now, Phase::RcptTo, "late@x.test");
        events(&mut s);
        let deadline = s.poll_timeout().expect("a deadline");
        s.handle_timeout(Now { mono: deadline, ..now });
        let got = events(&mut s);
        assert!(matches!(&got[..], [FilterEvent::Decided(Phase::RcptTo, FilterDecision::Disconnect(_))]), "{got:?}");
    }
}
