//! Program gauges: the journey funnel and the engagement of the TAL, as Prometheus gauges.
//!
//! Refreshed every [`REFRESH`] from the accounts this instance holds in memory (its partitions;
//! uncommitted changes of the open batch included), so that summing a gauge over the
//! instances gives the whole program. The labels are bounded: stage and tier.
//! `abm_scorer_tal_accounts_by_tier` is the TAL, which every instance reads whole: take its
//! maximum over instances, not its sum.

use std::time::Duration;

use abm_schemas::{JourneyStage, Tier};
use prometheus::{IntGaugeVec, Opts, Registry};

use crate::engine::AccountScoreState;
use crate::processor::Tal;
use crate::store::Store;

/// How often the gauges are computed again (one pass over the accounts in memory).
pub const REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ProgramGauges {
    accounts_by_stage: IntGaugeVec,
    engaged_accounts: IntGaugeVec,
    tal_accounts_by_tier: IntGaugeVec,
}

/// What one pass counts: per (stage, tier), engaged TAL accounts per tier, TAL accounts per tier.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_stage: [[i64; 4]; 6],
    pub engaged: [i64; 4],
    pub tal: [i64; 4],
}

/// A tier's slot in [`Counts`]: its place in the schema's symbol order (`Tier::ALL`).
fn tier_index(tier: Tier) -> usize {
    tier as usize
}

/// Counts the accounts of `store` and the TAL at wall-clock time `now`: an account is in the
/// stage its state says, under the tier of its state (the TAL's when its last event was
/// applied); a TAL account is engaged when a contact of it engaged in the 30 days before `now`
/// (`B(now) ≥ 1`, README "Program gauges").
pub fn count(store: &Store, tal: &Tal, now: i64) -> Counts {
    let mut counts = Counts::default();
    store.for_each(|account_id, state: &AccountScoreState| {
        counts.by_stage[state.stage as usize][tier_index(state.tier)] += 1;
        if let Some(entry) = tal.get(account_id)
            && state.breadth_at(now) >= 1
        {
            counts.engaged[tier_index(entry.tier)] += 1;
        }
    });
    for entry in tal.iter() {
        counts.tal[tier_index(entry.tier)] += 1;
    }
    counts
}

impl ProgramGauges {
    pub fn register(registry: &Registry) -> prometheus::Result<ProgramGauges> {
        let gauges = ProgramGauges {
            accounts_by_stage: IntGaugeVec::new(
                Opts::new(
                    "abm_scorer_accounts_by_stage",
                    "Accounts of this instance's partitions in each journey stage, by tier (sum over instances).",
                ),
                &["stage", "tier"],
            )?,
            engaged_accounts: IntGaugeVec::new(
                Opts::new(
                    "abm_scorer_engaged_accounts",
                    "TAL accounts of this instance's partitions with a contact engaged in the last 30 days, by TAL tier (sum over instances).",
                ),
                &["tier"],
            )?,
            tal_accounts_by_tier: IntGaugeVec::new(
                Opts::new(
                    "abm_scorer_tal_accounts_by_tier",
                    "Accounts on the TAL, by tier (every instance reads the whole TAL: take the max over instances).",
                ),
                &["tier"],
            )?,
        };
        registry.register(Box::new(gauges.accounts_by_stage.clone()))?;
        registry.register(Box::new(gauges.engaged_accounts.clone()))?;
        registry.register(Box::new(gauges.tal_accounts_by_tier.clone()))?;
        gauges.set(&Counts::default());
        Ok(gauges)
    }

    /// Sets every gauge (every label pair, zeros included) from `counts`.
    pub fn set(&self, counts: &Counts) {
        for tier in Tier::ALL {
            let t = tier_index(tier);
            for stage in JourneyStage::ALL {
                self.accounts_by_stage
                    .with_label_values(&[stage.as_str(), tier.as_str()])
                    .set(counts.by_stage[stage as usize][t]);
            }
            self.engaged_accounts.with_label_values(&[tier.as_str()]).set(counts.engaged[t]);
            self.tal_accounts_by_tier.with_label_values(&[tier.as_str()]).set(counts.tal[t]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use abm_schemas::{Contact, EngagementEvent, EventKind, WebVisit};

    use super::*;
    use crate::engine::{DAY_MS, Engine, ScoringConfig};
    use crate::processor::TalEntry;

    fn visit(id: &str, t: i64, contact: &str) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::WebVisit, t, "test");
        event.contact = Some(Contact { contact_id: Some(contact.into()), ..Contact::default() });
        event.web_visit = Some(WebVisit { url: "https://v.example/pricing".into(), referrer: None, title: None });
        event
    }

    #[test]
    fn an_empty_tal_committee_means_the_tier_default() {
        let account = |committee: Option<Vec<String>>| abm_schemas::Account {
            account_id: "a".into(),
            name: "A".into(),
            domains: vec![],
            tier: Tier::Tier2,
            owner: "o".into(),
            industry: None,
            employees: None,
            committee,
            updated_at: 0,
        };
        assert_eq!(TalEntry::of(account(Some(vec![]))).committee, None);
        assert_eq!(TalEntry::of(account(None)).committee, None);
        let legal = TalEntry::of(account(Some(vec!["legal".into()])));
        assert_eq!(legal.membership().committee, Some(&["legal".to_owned()][..]));
    }

    #[test]
    fn the_funnel_counts_stages_by_tier_and_engagement_of_tal_accounts() {
        let engine = Arc::new(Engine::new(ScoringConfig::default()).expect("valid"));
        let store = Store::new(engine.clone());
        let tal = Tal::default();
        let now = 1_700_000_000_000;
        tal.insert("a".into(), TalEntry { tier: Tier::Tier1, committee: None });
        tal.insert("b".into(), TalEntry { tier: Tier::Tier2, committee: None });
        tal.insert("quiet".into(), TalEntry { tier: Tier::Tier2, committee: None });
        let apply = |partition: i32, id: &str, tier: Tier, events: &[EngagementEvent]| {
            let accounts = store.partition(partition);
            let mut state = accounts.entry(id.into()).or_default();
            for event in events {
                engine.apply(id, &mut state, event, tier);
            }
        };
        // a: one pricing visit (15 points, B = 1) today: aware, engaged.
        apply(0, "a", Tier::Tier1, &[visit("a1", now - DAY_MS, "c1")]);
        // b: two contacts (B = 2): engaged stage; its last engagement 40 days ago: not engaged now.
        apply(1, "b", Tier::Tier2, &[visit("b1", now - 40 * DAY_MS, "c1"), visit("b2", now - 40 * DAY_MS, "c2")]);
        // x: not on the TAL: in the funnel as untiered, never in the engagement rate.
        apply(1, "x", Tier::Untiered, &[visit("x1", now, "c1")]);
        let counts = count(&store, &tal, now);
        let (t1, t2, untiered) = (tier_index(Tier::Tier1), tier_index(Tier::Tier2), tier_index(Tier::Untiered));
        assert_eq!(counts.by_stage[JourneyStage::Aware as usize][t1], 1);
        assert_eq!(counts.by_stage[JourneyStage::Engaged as usize][t2], 1);
        assert_eq!(counts.by_stage[JourneyStage::Aware as usize][untiered], 1);
        assert_eq!(counts.by_stage.iter().flatten().sum::<i64>(), 3);
        assert_eq!((counts.engaged[t1], counts.engaged[t2], counts.engaged[untiered]), (1, 0, 0));
        assert_eq!((counts.tal[t1], counts.tal[t2]), (1, 2));

        let registry = Registry::new();
        let gauges = ProgramGauges::register(&registry).expect("registers");
        gauges.set(&counts);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("text");
        assert!(text.contains(r#"abm_scorer_accounts_by_stage{stage="engaged",tier="tier_2"} 1"#), "{text}");
        assert!(text.contains(r#"abm_scorer_engaged_accounts{tier="tier_1"} 1"#), "{text}");
        assert!(text.contains(r#"abm_scorer_tal_accounts_by_tier{tier="tier_2"} 2"#), "{text}");
    }
}
