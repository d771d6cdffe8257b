//! An account's CRM opportunities: the latest state of each, bounded ([`Opportunities`]).

use abm_schemas::{Opportunity, OpportunityStage, OpportunityState};

/// The latest state of each opportunity of an account, in order of first appearance. Most
/// accounts have none, so the list is boxed behind one pointer (the state stays small).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Opportunities {
    // One pointer in the state, not a Vec's three words: most accounts have no opportunity.
    #[allow(clippy::box_collection)]
    list: Option<Box<Vec<OpportunityState>>>,
}

impl Opportunities {
    pub fn from_entries(entries: impl IntoIterator<Item = OpportunityState>) -> Opportunities {
        let list: Vec<OpportunityState> = entries.into_iter().collect();
        Opportunities { list: (!list.is_empty()).then(|| Box::new(list)) }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, OpportunityState> {
        self.list.as_deref().map_or([].iter(), |list| list.iter())
    }

    pub fn len(&self) -> usize {
        self.list.as_ref().map_or(0, |list| list.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one change at event time `t`: a new opportunity is added; a known one takes the
    /// change when `t` is not older than its state's (on a tie the later applied wins), and its
    /// `created_at` becomes the earliest change time seen. Then at most `max` are kept: the
    /// closed ones updated longest ago go first, then the open ones updated longest ago.
    /// Returns how many the bound dropped.
    pub(crate) fn apply(&mut self, change: &Opportunity, t: i64, max: usize) -> u64 {
        let list = self.list.get_or_insert_with(Default::default);
        match list.iter_mut().find(|o| o.opportunity_id == change.opportunity_id) {
            Some(known) => {
                known.created_at = known.created_at.min(t);
                if t >= known.updated_at {
                    known.stage = change.stage;
                    known.stage_name.clone_from(&change.stage_name);
                    known.amount = change.amount;
                    known.currency.clone_from(&change.currency);
                    known.updated_at = t;
                }
            }
            None => list.push(OpportunityState {
                opportunity_id: change.opportunity_id.clone(),
                stage: change.stage,
                stage_name: change.stage_name.clone(),
                amount: change.amount,
                currency: change.currency.clone(),
                created_at: t,
                updated_at: t,
            }),
        }
        let mut dropped = 0;
        while list.len() > max.max(1) {
            let doomed = list
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| (o.stage == OpportunityStage::Open, o.updated_at))
                .map(|(index, _)| index);
            if let Some(index) = doomed {
                list.remove(index);
                dropped += 1;
            }
        }
        dropped
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.list.as_ref().map_or(0, |list| {
            std::mem::size_of::<Vec<OpportunityState>>()
                + list.capacity() * std::mem::size_of::<OpportunityState>()
                + list
                    .iter()
                    .map(|o| o.opportunity_id.len() + o.currency.len() + o.stage_name.as_ref().map_or(0, String::len))
                    .sum::<usize>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, stage: OpportunityStage, amount: f64) -> Opportunity {
        Opportunity { opportunity_id: id.into(), stage, stage_name: None, amount, currency: "USD".into() }
    }

    #[test]
    fn the_latest_change_by_event_time_wins_and_creation_is_the_earliest() {
        let mut opportunities = Opportunities::default();
        assert!(opportunities.is_empty());
        opportunities.apply(&change("o1", OpportunityStage::Open, 100.0), 1_000, 20);
        opportunities.apply(&change("o1", OpportunityStage::ClosedWon, 120.0), 3_000, 20);
        // A late change (older than the state) only moves the creation time back.
        opportunities.apply(&change("o1", OpportunityStage::Open, 90.0), 500, 20);
        let o1 = opportunities.iter().next().expect("kept");
        assert_eq!(
            (o1.stage, o1.amount, o1.created_at, o1.updated_at),
            (OpportunityStage::ClosedWon, 120.0, 500, 3_000)
        );
        // A tie: the later applied wins.
        opportunities.apply(&change("o1", OpportunityStage::ClosedLost, 0.0), 3_000, 20);
        assert_eq!(opportunities.iter().next().map(|o| o.stage), Some(OpportunityStage::ClosedLost));
        assert_eq!(opportunities.len(), 1);
    }

    #[test]
    fn the_bound_drops_closed_ones_updated_longest_ago_first() {
        let mut opportunities = Opportunities::default();
        opportunities.apply(&change("open-old", OpportunityStage::Open, 1.0), 1, 3);
        opportunities.apply(&change("won", OpportunityStage::ClosedWon, 1.0), 5, 3);
        opportunities.apply(&change("lost", OpportunityStage::ClosedLost, 1.0), 3, 3);
        assert_eq!(opportunities.apply(&change("open-new", OpportunityStage::Open, 1.0), 9, 3), 1);
        let ids: Vec<&str> = opportunities.iter().map(|o| o.opportunity_id.as_str()).collect();
        assert_eq!(ids, ["open-old", "won", "open-new"], "the closed one updated longest ago went");
        opportunities.apply(&change("won", OpportunityStage::ClosedWon, 1.0), 10, 3);
        assert_eq!(opportunities.apply(&change("open-3", OpportunityStage::Open, 1.0), 11, 3), 1);
        let ids: Vec<&str> = opportunities.iter().map(|o| o.opportunity_id.as_str()).collect();
        assert_eq!(ids, ["open-old", "open-new", "open-3"], "then the other closed one");
        assert_eq!(opportunities.apply(&change("open-4", OpportunityStage::Open, 1.0), 12, 3), 1);
        let ids: Vec<&str> = opportunities.iter().map(|o| o.opportunity_id.as_str()).collect();
        assert_eq!(ids, ["open-new", "open-3", "open-4"], "then the open one updated longest ago");
    }
}
