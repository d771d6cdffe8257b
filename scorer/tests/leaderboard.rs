//! The leaderboard from the store's ranking equals a full scan sorted by score at the asked
//! time (ties by id), whatever the accounts, their tiers, partitions, later changes, moves of
//! partitions and the time asked; and it looks at far fewer accounts than there are.

use std::sync::Arc;

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use proptest::prelude::*;
use scorer::engine::{AccountScoreState, DAY_MS, Engine, ScoringConfig};
use scorer::store::{PartitionAccounts, Store, rank_of};

const T0: i64 = 1_700_000_000_000;
const TIERS: [Tier; 4] = [Tier::Tier1, Tier::Tier2, Tier::Tier3, Tier::Untiered];

fn event(n: usize, kind: u8, offset: i64, contact: u8) -> EngagementEvent {
    let kind = [EventKind::WebVisit, EventKind::WebVisit, EventKind::DemoRequest, EventKind::ContentDownload]
        [usize::from(kind % 4)];
    let mut event = EngagementEvent::new(format!("e{n}"), kind, T0 + offset, "leaderboard");
    event.contact = Some(Contact {
        contact_id: Some(format!("c{contact}")),
        email: None,
        title: None,
        persona: Some(["economic_buyer", "champion", "user"][usize::from(contact % 3)].into()),
    });
    if kind == EventKind::WebVisit {
        event.web_visit = Some(WebVisit { url: "https://v.example/pricing".into(), referrer: None, title: None });
    }
    event
}

/// One account: its tier, partition and events (kind, time offset, contact).
type AccountSpec = (u8, i32, Vec<(u8, i64, u8)>);

fn account_spec() -> impl Strategy<Value = AccountSpec> {
    (0u8..4, 0i32..3, proptest::collection::vec((0u8..4, 0i64..60 * DAY_MS, 0u8..8), 0..12))
}

fn apply_all(
    engine: &Engine,
    id: &str,
    state: &mut AccountScoreState,
    tier: Tier,
    events: &[(u8, i64, u8)],
    base: usize,
) {
    for (n, (kind, offset, contact)) in events.iter().enumerate() {
        engine.apply(id, state, &event(base + n, *kind, *offset, *contact), tier);
    }
}

/// Every account, sorted as the leaderboard sorts: (id, score at `at`).
fn full_scan(engine: &Engine, store: &Store, tier: Option<Tier>, at: i64, n: usize) -> Vec<(String, f64)> {
    let mut all = Vec::new();
    store.for_each(|id, state| {
        if tier.is_none_or(|tier| tier == state.tier) {
            all.push((id.to_owned(), engine.score_at(state, at)));
        }
    });
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

fn ranked(store: &Store, tier: Option<Tier>, at: i64, n: usize) -> Vec<(String, f64)> {
    store.top(tier, at, n, |id, _, score| (id.to_owned(), score)).entries
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_ranking_gives_what_a_full_scan_gives(
        accounts in proptest::collection::vec(account_spec(), 1..40),
        later in proptest::collection::vec((0usize..40, (0u8..4, 0i64..90 * DAY_MS, 0u8..8)), 0..20),
        moved in proptest::option::of(0i32..3),
        at_offset in -10 * DAY_MS..120 * DAY_MS,
        n in 1usize..12,
    ) {
        let engine = Arc::new(Engine::new(ScoringConfig::default()).expect("valid"));
        let store = Store::new(engine.clone());
        for (index, (tier, partition, events)) in accounts.iter().enumerate() {
            let id = format!("acc-{index:02}");
            let tier = TIERS[usize::from(*tier)];
            let mut state = AccountScoreState::default();
            apply_all(&engine, &id, &mut state, tier, events, 0);
            store.partition(*partition).insert(id.as_str().into(), Box::new(state));
            store.rank(*partition, &id);
        }
        // Later events for some accounts, ranked again as a batch would be.
        for (n, (index, (kind, offset, contact))) in later.iter().enumerate() {
            let index = index % accounts.len();
            let (tier, partition, _) = &accounts[index];
            let id = format!("acc-{index:02}");
            // As the scorer does: the rank from the score it writes for the batch.
            let shard = store.partition(*partition);
            let rank = shard.get_mut(id.as_str()).map(|mut state| {
                engine.apply(&id, &mut state, &event(1000 + n, *kind, *offset, *contact), TIERS[usize::from(*tier)]);
                rank_of(&engine, &state, engine.score(&state))
            });
            if let Some(rank) = rank {
                store.place(*partition, &id, rank);
            }
        }
        // A partition revoked and restored (installed again), or revoked for good.
        if let Some(partition) = moved {
            let shard = store.partition(partition);
            let copy = PartitionAccounts::default();
            for entry in shard.iter() {
                copy.insert(entry.key().clone(), entry.value().clone());
            }
            store.drop_partition(partition);
            if partition != 0 {
                store.install(partition, copy);
            }
        }
        let at = T0 + at_offset;
        for tier in [None, Some(Tier::Tier1), Some(Tier::Tier2), Some(Tier::Untiered)] {
            prop_assert_eq!(ranked(&store, tier, at, n), full_scan(&engine, &store, tier, at, n), "tier {:?} at {}", tier, at);
        }
    }
}

#[test]
fn a_leaderboard_looks_at_the_top_of_the_ranking_not_at_every_account() {
    let engine = Arc::new(Engine::new(ScoringConfig::default()).expect("valid"));
    let store = Store::new(engine.clone());
    // 24,000 accounts (more than the walk budget) with one to four visits over 60 days.
    for index in 0..24_000_usize {
        let id = format!("acc-{index}");
        let mut state = AccountScoreState::default();
        let visits: Vec<(u8, i64, u8)> = (0..1 + index % 4)
            .map(|v| (0, ((index * 7919 + v * 104_729) as i64 * 60_000) % (60 * DAY_MS), (v % 3) as u8))
            .collect();
        apply_all(&engine, &id, &mut state, TIERS[index % 4], &visits, 0);
        let partition = (index % 6) as i32;
        store.partition(partition).insert(id.as_str().into(), Box::new(state));
        store.rank(partition, &id);
    }
    let at = T0 + 61 * DAY_MS;
    let top = store.top(None, at, 10, |id, _, score| (id.to_owned(), score));
    assert_eq!(top.entries, full_scan(&engine, &store, None, at, 10));
    assert!(top.examined < 2_000, "examined {} of 24000 accounts for the top 10", top.examined);
    let tier = store.top(Some(Tier::Tier2), at, 100, |id, _, score| (id.to_owned(), score));
    assert_eq!(tier.entries, full_scan(&engine, &store, Some(Tier::Tier2), at, 100));
    assert!(tier.examined < 2_000, "examined {} of 6000 tier-2 accounts for the top 100", tier.examined);
    assert!(!top.scanned && !tier.scanned);
    // Decades later every score has decayed to 0: the top is the smallest ids, as in a scan.
    let far = T0 + 80 * 365 * DAY_MS;
    let decayed = store.top(None, far, 10, |id, _, score| (id.to_owned(), score));
    assert_eq!(decayed.entries, full_scan(&engine, &store, None, far, 10));
    assert!(decayed.entries.iter().all(|(_, score)| *score == 0.0));
    // Long before the accounts' as-of times the bound is loose: past the walk's budget the
    // request scans every account instead (without holding the ranking), with the same answer.
    let past = T0 - 400 * DAY_MS;
    let scanned = store.top(None, past, 10, |id, _, score| (id.to_owned(), score));
    assert_eq!(scanned.entries, full_scan(&engine, &store, None, past, 10));
    assert!(scanned.scanned, "examined {}", scanned.examined);
    assert!(store.top(None, at, 0, |id, _, score| (id.to_owned(), score)).entries.is_empty());
}
