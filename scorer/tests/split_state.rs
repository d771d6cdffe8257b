//! A hot account's state written split (a head and content-addressed chunks): what a commit
//! writes is proportional to the change, and a restore from the changelog, compacted or not,
//! gives back exactly the state in memory.

use std::collections::BTreeMap;

use abm_schemas::{Contact, EngagementEvent, EventKind, Tier, WebVisit};
use scorer::changelog::{Restorer, SPLIT_ABOVE, SplitStates, is_chunk_key};
use scorer::engine::{AccountScoreState, DAY_MS, Engine, ScoringConfig};

const T0: i64 = 1_700_000_000_000;
const PARTITION: i32 = 3;

fn event(account: &str, id: &str, t: i64, contact: &str, kind: EventKind) -> EngagementEvent {
    let mut event = EngagementEvent::new(id, kind, t, "test");
    event.account_id = Some(account.into());
    event.contact = Some(Contact { contact_id: Some(contact.into()), email: None, title: None, persona: None });
    if kind == EventKind::WebVisit {
        event.web_visit = Some(WebVisit { url: "https://vendor.example/pricing".into(), referrer: None, title: None });
    }
    event
}

fn full(engine: &Engine, account: &str, state: &AccountScoreState) -> Vec<u8> {
    let mut bytes = Vec::new();
    state.encode_record_into(account, engine, &mut bytes);
    bytes
}

/// The changelog as written: every record in order, and its compacted form.
#[derive(Default)]
struct Log {
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Log {
    fn compacted(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut latest = BTreeMap::new();
        for (key, value) in &self.records {
            match value {
                Some(value) => latest.insert(key.clone(), value.clone()),
                None => latest.remove(key),
            };
        }
        latest
    }
}

/// Writes every account's state as one commit would; returns the bytes written.
fn commit(
    split: &mut SplitStates,
    engine: &Engine,
    log: &mut Log,
    accounts: &BTreeMap<String, AccountScoreState>,
) -> u64 {
    let mut bytes = 0;
    for (account, state) in accounts {
        let whole = full(engine, account, state);
        let written = split
            .write(PARTITION, account, state, engine, &whole, |key, value| {
                log.records.push((key.as_bytes().to_vec(), value.map(<[u8]>::to_vec)));
                Ok(())
            })
            .expect("writes");
        bytes += written.bytes;
    }
    bytes
}

/// Restores from `records` (in this order) and checks every account equals its state in memory.
fn check_restore<'a>(
    engine: &Engine,
    records: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    accounts: &BTreeMap<String, AccountScoreState>,
) -> scorer::changelog::SplitChunks {
    let mut restorer = Restorer::default();
    for (key, value) in records {
        restorer.record(key, value, engine);
    }
    let scorer::changelog::Restored { accounts: restored, split, skipped, model_version } = restorer.finish(engine);
    assert_eq!(skipped, 0);
    if !accounts.is_empty() {
        assert_eq!(
            model_version,
            Some(Some(engine.model_version().to_owned())),
            "the model the states were written with"
        );
    }
    assert_eq!(restored.len(), accounts.len());
    for (account, state) in accounts {
        let back = restored.get(account.as_str()).expect("restored");
        assert_eq!(full(engine, account, &back), full(engine, account, state), "{account} restored differently");
    }
    split
}

#[test]
fn a_hot_account_writes_what_changed_and_restores_exactly() {
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut accounts: BTreeMap<String, AccountScoreState> = BTreeMap::new();
    let (mut split, mut log) = (SplitStates::default(), Log::default());
    let kinds = [EventKind::WebVisit, EventKind::Email, EventKind::AdClick, EventKind::ContentDownload];
    let mut n = 0;
    let (mut hot_bytes_late, mut hot_full_late, mut late_commits) = (0u64, 0u64, 0u64);
    // 40 commits of 50 events: a hot account (40 contacts, a few minutes apart, some out of
    // order) and a typical one (an event every few commits).
    for round in 0..40 {
        for k in 0..50 {
            n += 1;
            let jitter = if k % 7 == 0 { -3_600_000 } else { 0 };
            let t = T0 + n * 240_000 + jitter;
            let e = event("hot", &format!("h{n}"), t, &format!("c{}", n % 40), kinds[(n % 4) as usize]);
            let state = accounts.entry("hot".into()).or_default();
            engine.apply("hot", state, &e, Tier::Tier1);
        }
        if round % 3 == 0 {
            let e = event("typical", &format!("t{round}"), T0 + n * 240_000, "t1", EventKind::WebVisit);
            engine.apply("typical", accounts.entry("typical".into()).or_default(), &e, Tier::Tier2);
        }
        let before = log.records.len();
        let bytes = commit(&mut split, &engine, &mut log, &accounts);
        if round >= 20 {
            hot_bytes_late += bytes;
            hot_full_late += full(&engine, "hot", &accounts["hot"]).len() as u64;
            late_commits += 1;
        }
        assert!(log.records.len() > before);
        // A restore from the whole log and from its compacted form give back every state.
        let from_all = check_restore(&engine, log.records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())), &accounts);
        let compacted = log.compacted();
        check_restore(&engine, compacted.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))), &accounts);
        // The restored writer's memory equals the live one's: its next write repeats nothing.
        let mut restored = SplitStates::default();
        restored.restored(PARTITION, from_all);
        assert_eq!(restored.len(), split.len());
    }
    let hot = &accounts["hot"];
    assert!(hot.split_entries() > SPLIT_ABOVE, "the hot account is split ({} entries)", hot.split_entries());
    assert_eq!(split.len(), 1, "only the hot account is split");
    // Every chunk the compacted log keeps is listed by the head: nothing is left behind.
    let compacted = log.compacted();
    let chunks = compacted.keys().filter(|k| is_chunk_key(k)).count();
    assert_eq!(
        chunks,
        hot.chunk_refs(&engine).iter().map(|c| (c.structure, c.id)).collect::<std::collections::HashSet<_>>().len()
    );
    // Per commit of 50 events, a split hot account writes well under half its whole state.
    assert!(
        hot_bytes_late * 2 < hot_full_late,
        "split writes {hot_bytes_late} bytes in {late_commits} commits vs {hot_full_late} whole"
    );

    // 100 days later one more event: everything else fell out of the windows, the account is
    // written whole again and its chunks are deleted.
    let e = event("hot", "late", T0 + n * 240_000 + 100 * DAY_MS, "c1", EventKind::Email);
    engine.apply("hot", accounts.get_mut("hot").expect("hot"), &e, Tier::Tier1);
    commit(&mut split, &engine, &mut log, &accounts);
    assert!(split.is_empty());
    let compacted = log.compacted();
    assert!(compacted.keys().all(|k| !is_chunk_key(k)), "chunks left: {}", compacted.len());
    assert_eq!(compacted.len(), 2);
    check_restore(&engine, log.records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())), &accounts);
}

#[test]
fn a_missing_chunk_is_counted_not_fatal() {
    let engine = Engine::new(ScoringConfig::default()).expect("valid");
    let mut state = AccountScoreState::default();
    for n in 0..400 {
        engine.apply(
            "hot",
            &mut state,
            &event("hot", &format!("e{n}"), T0 + n * 1000, "c", EventKind::Email),
            Tier::Tier1,
        );
    }
    let mut log = Log::default();
    let accounts = BTreeMap::from([("hot".to_owned(), state)]);
    commit(&mut SplitStates::default(), &engine, &mut log, &accounts);
    let mut restorer = Restorer::default();
    let mut dropped = false;
    for (key, value) in &log.records {
        if is_chunk_key(key) && !dropped {
            dropped = true;
            continue;
        }
        restorer.record(key, value.as_deref(), &engine);
    }
    restorer.record(b"garbage", Some(b"not avro"), &engine);
    let scorer::changelog::Restored { accounts: restored, skipped, .. } = restorer.finish(&engine);
    assert!(dropped);
    assert_eq!(skipped, 2, "the missing chunk and the undecodable record");
    assert!(restored.get("hot").is_some_and(|s| s.events_applied == 400));
}

/// A config whose rules are reordered (their indexes change) reads a split state written with
/// the old order, and its next writes restore exactly: chunk names do not depend on indexes.
#[test]
fn a_reordered_config_keeps_split_states_exact() {
    let before = Engine::new(ScoringConfig::default()).expect("valid");
    let mut reordered = ScoringConfig::default();
    reordered.rules.reverse();
    let after = Engine::new(reordered).expect("valid");
    let mut state = AccountScoreState::default();
    for n in 0..600 {
        let kind = [EventKind::WebVisit, EventKind::Email][n % 2];
        let e = event("hot", &format!("e{n}"), T0 + n as i64 * 1000, &format!("c{}", n % 50), kind);
        before.apply("hot", &mut state, &e, Tier::Tier1);
    }
    let mut log = Log::default();
    commit(&mut SplitStates::default(), &before, &mut log, &BTreeMap::from([("hot".to_owned(), state)]));

    // Restored under the reordered config, then written again after more events.
    let mut restorer = Restorer::default();
    for (key, value) in &log.records {
        restorer.record(key, value.as_deref(), &after);
    }
    let restored = restorer.finish(&after);
    let mut state = *restored.accounts.remove("hot").map(|(_, state)| state).expect("restored");
    let mut split = SplitStates::default();
    split.restored(PARTITION, restored.split);
    for n in 600..700 {
        let e = event("hot", &format!("e{n}"), T0 + n as i64 * 1000, &format!("c{}", n % 50), EventKind::WebVisit);
        after.apply("hot", &mut state, &e, Tier::Tier1);
    }
    let accounts = BTreeMap::from([("hot".to_owned(), state)]);
    commit(&mut split, &after, &mut log, &accounts);
    check_restore(&after, log.records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())), &accounts);
    check_restore(&after, log.compacted().iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))), &accounts);
}
