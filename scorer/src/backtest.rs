//! `scorer backtest`: what a candidate scoring model would have done with the retained history,
//! next to the current model, before anyone switches to it.
//!
//! [`Replay`] is the pure part: it applies each event of `abm.engagement` (CRM opportunity
//! changes included: they are events of kind `opportunity`) to one in-memory state per account
//! per model, with the same [`Engine`] the live scorer uses, and passes every crossing through
//! the alerter's own policy ([`alerter::policy::decide`]: sequences, cooldowns per tier), so
//! each model's alerts are the ones a live run of it would have published. It writes nothing
//! to Kafka. [`Report`] holds the figures (README, "Backtesting a model" defines each one);
//! [`table`] and [`html`] render them.
//!
//! What a replay cannot know is taken from now: the TAL (tiers and committees) is the one in
//! `abm.accounts` when the backtest runs, for both models alike.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use abm_schemas::{Account, CrossingKind, EngagementEvent, JourneyStage, Tier};
use alerter::policy::{Decision, History, PolicyConfig};
use serde::Serialize;

use crate::engine::{AccountScoreState, Applied, DAY_MS, Engine};
use crate::processor::TalEntry;

/// A week, in milliseconds.
pub const WEEK_MS: i64 = 7 * DAY_MS;
/// The windows of alert precision, in days: an alert followed by an opportunity within them.
pub const PRECISION_DAYS: [i64; 2] = [30, 90];
/// The window of recall and lead time, in days: an opportunity preceded by an alert within it.
pub const RECALL_DAYS: i64 = 90;
/// Lower bounds of the score distribution's buckets, as a share of the account's threshold.
pub const BUCKETS: [f64; 7] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0];

/// One model's alert, as the alerter would have published it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayAlert {
    /// The model's label (`current`, `candidate`).
    pub model: String,
    pub alert_id: String,
    pub account_id: String,
    pub kind: CrossingKind,
    pub tier: Tier,
    pub as_of: i64,
    pub score: f64,
}

/// One model's run: its engine, its accounts' states and alert histories, its alerts.
#[derive(Debug)]
struct Run {
    label: String,
    engine: Engine,
    states: HashMap<Box<str>, AccountScoreState>,
    histories: HashMap<(Box<str>, CrossingKind), History>,
    alerts: Vec<ReplayAlert>,
    crossings: u64,
    cooldown: u64,
}

/// Events the replay left out, by reason (the live scorer rejects the same ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub undecodable: u64,
    pub missing_account: u64,
    pub invalid_account: u64,
}

/// The replay of a history through one or more models (the first is the reference).
#[derive(Debug)]
pub struct Replay {
    runs: Vec<Run>,
    policy: PolicyConfig,
    tal: HashMap<String, (Account, TalEntry)>,
    /// Per account: each opportunity's creation (the earliest event time of a change of it).
    deals: HashMap<Box<str>, HashMap<String, i64>>,
    first: Option<i64>,
    last: Option<i64>,
    events: u64,
    skipped: Skipped,
}

impl Replay {
    /// `models`: (label, engine), the current model first. `policy`: the alerter's.
    pub fn new(models: Vec<(String, Engine)>, policy: PolicyConfig, tal: impl IntoIterator<Item = Account>) -> Replay {
        let runs = models
            .into_iter()
            .map(|(label, engine)| Run {
                label,
                engine,
                states: HashMap::new(),
                histories: HashMap::new(),
                alerts: Vec::new(),
                crossings: 0,
                cooldown: 0,
            })
            .collect();
        let tal = tal
            .into_iter()
            .map(|account| (account.account_id.clone(), (account.clone(), TalEntry::of(account))))
            .collect();
        Replay {
            runs,
            policy,
            tal,
            deals: HashMap::new(),
            first: None,
            last: None,
            events: 0,
            skipped: Skipped::default(),
        }
    }

    /// One record of `abm.engagement`: decoded and applied, or counted as skipped with the
    /// live scorer's reasons (undecodable, no account id, an account id with control
    /// characters). A decoding error the registry may cure (it did not answer) is returned.
    pub fn record(&mut self, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<()> {
        let mut event = match abm_schemas::decode::<EngagementEvent>(payload) {
            Ok(event) => event,
            Err(error) if error.is_retryable() => anyhow::bail!("decoding an EngagementEvent: {error}"),
            Err(_) => {
                self.skipped.undecodable += 1;
                return Ok(());
            }
        };
        match crate::processor::account_of(&mut event, key) {
            Ok(account_id) => self.apply(&account_id, &event),
            Err(crate::processor::Unusable::MissingAccount) => self.skipped.missing_account += 1,
            Err(crate::processor::Unusable::InvalidAccount(_)) => self.skipped.invalid_account += 1,
        }
        Ok(())
    }

    /// Applies `event` of `account_id` to every model.
    pub fn apply(&mut self, account_id: &str, event: &EngagementEvent) {
        self.events += 1;
        let t = event.occurred_at;
        self.first = Some(self.first.map_or(t, |first| first.min(t)));
        self.last = Some(self.last.map_or(t, |last| last.max(t)));
        if let Some(change) = &event.opportunity {
            let deals = match self.deals.get_mut(account_id) {
                Some(deals) => deals,
                None => self.deals.entry(account_id.into()).or_default(),
            };
            let created = deals.entry(change.opportunity_id.clone()).or_insert(t);
            *created = (*created).min(t);
        }
        let entry = self.tal.get(account_id);
        let membership = entry.map(|(_, entry)| entry.membership()).unwrap_or_default();
        let account = entry.map(|(account, _)| account);
        for run in &mut self.runs {
            let state = match run.states.get_mut(account_id) {
                Some(state) => state,
                None => run.states.entry(account_id.into()).or_default(),
            };
            let Applied::Scored { crossings, .. } = run.engine.apply(account_id, state, event, membership) else {
                continue;
            };
            for crossing in crossings {
                run.crossings += 1;
                let history = run.histories.entry((account_id.into(), crossing.kind)).or_default();
                // A replay's crossings are never `replayed` (that is the live re-score's): `now`
                // does not matter.
                match alerter::policy::decide(&self.policy, &crossing, account, history, i64::MAX) {
                    Decision::Alert(alert) => run.alerts.push(ReplayAlert {
                        model: run.label.clone(),
                        alert_id: alert.alert_id,
                        account_id: alert.account_id,
                        kind: alert.kind,
                        tier: alert.tier,
                        as_of: alert.as_of,
                        score: alert.score,
                    }),
                    Decision::Cooldown => run.cooldown += 1,
                    // Sequences only grow within a run, and no crossing is replayed: not reached.
                    Decision::Duplicate | Decision::Replayed => {}
                }
            }
        }
    }

    /// Events applied so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The state of `account_id` under the `model`-th model (as listed to [`Replay::new`]),
    /// with that model's engine.
    pub fn state(&self, model: usize, account_id: &str) -> Option<(&Engine, &AccountScoreState)> {
        let run = self.runs.get(model)?;
        run.states.get(account_id).map(|state| (&run.engine, state))
    }

    /// Every model's alerts, model by model, each in the order published.
    pub fn alerts(&self) -> impl Iterator<Item = &ReplayAlert> {
        self.runs.iter().flat_map(|run| run.alerts.iter())
    }

    /// The tier an account is segmented by: its TAL tier now, untiered when not on the TAL.
    fn tier_of(&self, account_id: &str) -> Tier {
        self.tal.get(account_id).map_or(Tier::Untiered, |(account, _)| account.tier)
    }

    /// The figures, from `since` (the history's first event when `None`) to the last event;
    /// `top`: how many of the most changed accounts to list.
    pub fn report(&self, since: Option<i64>, top: usize) -> Report {
        let to = self.last;
        let from = match (since, self.first) {
            (Some(since), Some(first)) => Some(since.min(first)),
            (since, first) => since.or(first),
        };
        // At least a day, so a short history gives a rate, not a division by zero.
        let span = match (from, to) {
            (Some(from), Some(to)) => (to - from).max(DAY_MS),
            _ => DAY_MS,
        };
        let weeks = span as f64 / WEEK_MS as f64;
        let at = to.unwrap_or(0);
        let mut deals_by_tier: BTreeMap<Tier, Vec<(&str, i64)>> = BTreeMap::new();
        for (account_id, deals) in &self.deals {
            let tier = self.tier_of(account_id);
            deals_by_tier.entry(tier).or_default().extend(deals.values().map(|created| (&**account_id, *created)));
        }
        let models = self.runs.iter().map(|run| self.model_report(run, &deals_by_tier, from, to, weeks, at)).collect();
        let (most_changed, stage_changed) = self.changes(at, top);
        Report {
            from,
            to,
            weeks,
            events: self.events,
            skipped: self.skipped.clone(),
            accounts: self.runs.first().map_or(0, |run| run.states.len() as u64),
            opportunities: self.deals.values().map(|deals| deals.len() as u64).sum(),
            models,
            most_changed,
            stage_changed,
            replay_seconds: 0.0,
        }
    }

    fn model_report(
        &self,
        run: &Run,
        deals_by_tier: &BTreeMap<Tier, Vec<(&str, i64)>>,
        from: Option<i64>,
        to: Option<i64>,
        weeks: f64,
        at: i64,
    ) -> ModelReport {
        let mut alert_times: HashMap<&str, Vec<i64>> = HashMap::new();
        for alert in &run.alerts {
            alert_times.entry(alert.account_id.as_str()).or_default().push(alert.as_of);
        }
        let deal_times = |account_id: &str| -> Vec<i64> {
            self.deals.get(account_id).map(|deals| deals.values().copied().collect()).unwrap_or_default()
        };
        let mut segments = BTreeMap::new();
        let tiers: Vec<Option<Tier>> = std::iter::once(None).chain(Tier::ALL.iter().copied().map(Some)).collect();
        for tier in tiers {
            let in_segment = |t: Tier| tier.is_none_or(|wanted| wanted == t);
            let accounts: Vec<(&str, &AccountScoreState)> =
                run.states.iter().filter(|(id, _)| in_segment(self.tier_of(id))).map(|(id, s)| (&**id, s)).collect();
            let alerts: Vec<&ReplayAlert> =
                run.alerts.iter().filter(|a| in_segment(self.tier_of(&a.account_id))).collect();
            let count = |kind: CrossingKind| alerts.iter().filter(|a| a.kind == kind).count() as u64;
            let (threshold, hand_raiser) = (count(CrossingKind::Threshold), count(CrossingKind::HandRaiser));
            let precision = PRECISION_DAYS
                .iter()
                .map(|days| {
                    let window = days * DAY_MS;
                    let matured: Vec<&&ReplayAlert> = alerts.iter().filter(|a| a.as_of + window <= at).collect();
                    let followed = matured
                        .iter()
                        .filter(|a| deal_times(&a.account_id).iter().any(|c| *c >= a.as_of && *c <= a.as_of + window))
                        .count() as u64;
                    Window {
                        days: *days,
                        matured: matured.len() as u64,
                        followed,
                        rate: ratio(followed, matured.len() as u64),
                    }
                })
                .collect();
            let deals: Vec<(&str, i64)> = deals_by_tier
                .iter()
                .filter(|(t, _)| in_segment(**t))
                .flat_map(|(_, deals)| deals.iter().copied())
                .collect();
            let mut leads = Vec::new();
            for (account_id, created) in &deals {
                let earliest = alert_times
                    .get(account_id)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|t| *t <= *created && *t >= created - RECALL_DAYS * DAY_MS)
                    .min();
                if let Some(alerted) = earliest {
                    leads.push((created - alerted) as f64 / DAY_MS as f64);
                }
            }
            let preceded = leads.len() as u64;
            let name = tier.map_or("all", Tier::as_str).to_owned();
            segments.insert(
                name,
                Segment {
                    accounts: accounts.len() as u64,
                    mqa_accounts: accounts
                        .iter()
                        .filter(|(_, state)| state.stage_entries.iter().any(|e| e.stage == JourneyStage::Mqa))
                        .count() as u64,
                    threshold_alerts: threshold,
                    hand_raiser_alerts: hand_raiser,
                    alerts_per_week: (threshold + hand_raiser) as f64 / weeks,
                    threshold_alerts_per_week: threshold as f64 / weeks,
                    hand_raiser_alerts_per_week: hand_raiser as f64 / weeks,
                    precision,
                    recall: Recall {
                        days: RECALL_DAYS,
                        opportunities: deals.len() as u64,
                        preceded,
                        rate: ratio(preceded, deals.len() as u64),
                    },
                    median_lead_days: crate::program::median(&mut leads),
                },
            );
        }
        let mut weekly: BTreeMap<i64, Week> = BTreeMap::new();
        if let (Some(from), Some(to)) = (from, to) {
            let mut start = week_start(from);
            while start <= to {
                weekly.insert(start, Week { start, threshold: 0, hand_raiser: 0 });
                start += WEEK_MS;
            }
        }
        for alert in &run.alerts {
            let week = weekly.entry(week_start(alert.as_of)).or_insert(Week {
                start: week_start(alert.as_of),
                threshold: 0,
                hand_raiser: 0,
            });
            match alert.kind {
                CrossingKind::Threshold => week.threshold += 1,
                CrossingKind::HandRaiser => week.hand_raiser += 1,
            }
        }
        let mut distribution: Vec<Bucket> = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, from)| Bucket { from_ratio: *from, to_ratio: BUCKETS.get(i + 1).copied(), accounts: 0 })
            .collect();
        for state in run.states.values() {
            let ratio = run.engine.score_at(state, at) / run.engine.threshold(state.tier);
            let index = BUCKETS.iter().rposition(|from| ratio >= *from).unwrap_or(0);
            distribution[index].accounts += 1;
        }
        ModelReport {
            label: run.label.clone(),
            model_version: run.engine.model_version().to_owned(),
            crossings: run.crossings,
            suppressed_by_cooldown: run.cooldown,
            segments,
            weekly: weekly.into_values().collect(),
            distribution,
        }
    }

    /// The accounts whose score at `at` differs most between the first two models (then those
    /// whose stage differs), and how many accounts end in another stage.
    fn changes(&self, at: i64, top: usize) -> (Vec<Change>, u64) {
        let [reference, other, ..] = &self.runs[..] else { return (Vec::new(), 0) };
        fn alerts_of(run: &Run) -> HashMap<&str, u64> {
            let mut counts: HashMap<&str, u64> = HashMap::new();
            for alert in &run.alerts {
                *counts.entry(alert.account_id.as_str()).or_default() += 1;
            }
            counts
        }
        let (reference_alerts, other_alerts) = (alerts_of(reference), alerts_of(other));
        let mut stage_changed = 0;
        let mut changes: Vec<Change> = reference
            .states
            .iter()
            .filter_map(|(account_id, before)| {
                let after = other.states.get(account_id)?;
                let scores = [reference.engine.score_at(before, at), other.engine.score_at(after, at)];
                let stages = [before.stage, after.stage];
                stage_changed += u64::from(stages[0] != stages[1]);
                Some(Change {
                    account_id: account_id.to_string(),
                    name: self.tal.get(&**account_id).map(|(account, _)| account.name.clone()),
                    tier: self.tier_of(account_id),
                    scores,
                    stages,
                    alerts: [
                        reference_alerts.get(&**account_id).copied().unwrap_or(0),
                        other_alerts.get(&**account_id).copied().unwrap_or(0),
                    ],
                })
            })
            .collect();
        changes.sort_by(|a, b| {
            let delta = |c: &Change| (c.scores[1] - c.scores[0]).abs();
            delta(b)
                .total_cmp(&delta(a))
                .then_with(|| (b.stages[0] != b.stages[1]).cmp(&(a.stages[0] != a.stages[1])))
                .then_with(|| a.account_id.cmp(&b.account_id))
        });
        changes.truncate(top);
        (changes, stage_changed)
    }
}

/// `x / of`, `None` when `of` is 0.
fn ratio(x: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| x as f64 / of as f64)
}

/// The start (Monday 00:00 UTC) of the week of `t`. 1970-01-01 was a Thursday.
pub fn week_start(t: i64) -> i64 {
    ((t.div_euclid(DAY_MS) + 3).div_euclid(7) * 7 - 3) * DAY_MS
}

/// A backtest's figures (README, "Backtesting a model").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The history replayed: from `--since` (or its first event) to its last event, event time.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// `(to - from)` in weeks, at least one day's worth: what "per week" divides by.
    pub weeks: f64,
    pub events: u64,
    pub skipped: Skipped,
    /// Accounts with at least one event; opportunities created in the history.
    pub accounts: u64,
    pub opportunities: u64,
    /// One per model, the current one first.
    pub models: Vec<ModelReport>,
    /// The accounts whose score at `to` changed most from the first model to the second.
    pub most_changed: Vec<Change>,
    /// Accounts whose journey stage at `to` differs between the two models.
    pub stage_changed: u64,
    /// Seconds spent reading and replaying `abm.engagement` (0 when not read from Kafka).
    pub replay_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    pub label: String,
    pub model_version: String,
    /// Crossings found, and those the alert policy held back by cooldown.
    pub crossings: u64,
    pub suppressed_by_cooldown: u64,
    /// `all`, then each tier (the account's TAL tier now).
    pub segments: BTreeMap<String, Segment>,
    /// Alerts per week (Monday 00:00 UTC), every week of the history.
    pub weekly: Vec<Week>,
    /// Accounts by score at `to` as a share of their tier's threshold.
    pub distribution: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub accounts: u64,
    /// Accounts that entered `mqa` at some time of the history.
    pub mqa_accounts: u64,
    pub threshold_alerts: u64,
    pub hand_raiser_alerts: u64,
    pub alerts_per_week: f64,
    pub threshold_alerts_per_week: f64,
    pub hand_raiser_alerts_per_week: f64,
    pub precision: Vec<Window>,
    pub recall: Recall,
    /// Over the opportunities preceded by an alert: days from the earliest alert of the
    /// account in the 90 days before the opportunity to its creation; the median.
    pub median_lead_days: Option<f64>,
}

/// Alert precision over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub days: i64,
    /// Alerts whose window ended by `to` (alert time + days ≤ to).
    pub matured: u64,
    /// Of those, the alerts followed by an opportunity of the account created within it.
    pub followed: u64,
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recall {
    pub days: i64,
    /// Opportunities created in the history.
    pub opportunities: u64,
    /// Of those, the ones with an alert of the account in the `days` before their creation.
    pub preceded: u64,
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Week {
    pub start: i64,
    pub threshold: u64,
    pub hand_raiser: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub from_ratio: f64,
    pub to_ratio: Option<f64>,
    pub accounts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub account_id: String,
    pub name: Option<String>,
    pub tier: Tier,
    /// At `to`, under the first and the second model.
    pub scores: [f64; 2],
    pub stages: [JourneyStage; 2],
    pub alerts: [u64; 2],
}

/// A date for people: `2026-12-07`.
fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.div_euclid(1000))
        .map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
        .unwrap_or_else(|_| t.to_string())
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn days(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |d| format!("{d:.1} d"))
}

/// The rows of the comparison, one per (segment, figure): the table's and the page's.
fn rows(report: &Report) -> Vec<(String, String, Vec<String>)> {
    let mut rows = Vec::new();
    let segments: Vec<&String> = report.models.first().map(|m| m.segments.keys().collect()).unwrap_or_default();
    // `all` first, then the tiers in order.
    let mut ordered: Vec<&String> = segments.iter().copied().filter(|s| s.as_str() == "all").collect();
    ordered.extend(segments.iter().copied().filter(|s| s.as_str() != "all"));
    for segment in ordered {
        let of = |f: &dyn Fn(&Segment) -> String| -> Vec<String> {
            report.models.iter().map(|m| m.segments.get(segment).map_or_else(|| "-".to_owned(), f)).collect()
        };
        let mut add = |figure: &str, values: Vec<String>| rows.push((segment.clone(), figure.to_owned(), values));
        add("accounts", of(&|s| s.accounts.to_string()));
        add("alerts / week", of(&|s| format!("{:.2}", s.alerts_per_week)));
        add("  threshold / week", of(&|s| format!("{:.2}", s.threshold_alerts_per_week)));
        add("  hand-raiser / week", of(&|s| format!("{:.2}", s.hand_raiser_alerts_per_week)));
        add("alerts", of(&|s| (s.threshold_alerts + s.hand_raiser_alerts).to_string()));
        add("MQA accounts", of(&|s| s.mqa_accounts.to_string()));
        for (i, days) in PRECISION_DAYS.iter().enumerate() {
            add(
                &format!("precision {days} d"),
                of(&|s| {
                    let w = &s.precision[i];
                    format!("{} ({}/{})", percent(w.rate), w.followed, w.matured)
                }),
            );
        }
        add(
            &format!("recall {RECALL_DAYS} d"),
            of(&|s| format!("{} ({}/{})", percent(s.recall.rate), s.recall.preceded, s.recall.opportunities)),
        );
        add("median lead time", of(&|s| days(s.median_lead_days)));
    }
    rows
}

/// The report as a terminal table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let span = match (report.from, report.to) {
        (Some(from), Some(to)) => format!("{} to {} ({:.1} weeks)", date(from), date(to), report.weeks),
        _ => "no events".to_owned(),
    };
    let _ = writeln!(
        out,
        "Backtest: {} events, {} accounts, {} opportunities, {span}",
        report.events, report.accounts, report.opportunities
    );
    let skipped = &report.skipped;
    if skipped.undecodable + skipped.missing_account + skipped.invalid_account > 0 {
        let _ = writeln!(
            out,
            "Skipped as the scorer rejects them: {} undecodable, {} without account, {} with an invalid account id",
            skipped.undecodable, skipped.missing_account, skipped.invalid_account
        );
    }
    let headers: Vec<String> = report.models.iter().map(|m| format!("{} {}", m.label, m.model_version)).collect();
    let rows = rows(report);
    let width = |i: usize| {
        rows.iter()
            .map(|(_, _, values)| values[i].chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let _ = write!(out, "\n{:<9} {:<22}", "segment", "figure");
    for (header, width) in headers.iter().zip(&widths) {
        let _ = write!(out, " {header:>width$}");
    }
    out.push('\n');
    let mut last = String::new();
    for (segment, figure, values) in &rows {
        let shown = if *segment == last { "" } else { segment.as_str() };
        if *segment != last && !last.is_empty() {
            out.push('\n');
        }
        last.clone_from(segment);
        let _ = write!(out, "{shown:<9} {figure:<22}");
        for (value, width) in values.iter().zip(&widths) {
            let _ = write!(out, " {value:>width$}");
        }
        out.push('\n');
    }
    if !report.most_changed.is_empty() {
        let _ = writeln!(
            out,
            "\nMost changed accounts (score at {}; {} end in another stage):",
            span_end(report),
            report.stage_changed
        );
        for change in &report.most_changed {
            let _ = writeln!(
                out,
                "  {:<24} {:<9} {:>9.1} -> {:<9.1} {:>11} -> {:<11} alerts {} -> {}",
                clip(change.name.as_deref().unwrap_or(&change.account_id), 24),
                change.tier.as_str(),
                change.scores[0],
                change.scores[1],
                change.stages[0].as_str(),
                change.stages[1].as_str(),
                change.alerts[0],
                change.alerts[1]
            );
        }
    }
    out
}

fn span_end(report: &Report) -> String {
    report.to.map_or_else(|| "-".to_owned(), date)
}

/// At most `max` characters, for a table cell (control characters shown escaped).
fn clip(text: &str, max: usize) -> String {
    let text: String = text.chars().flat_map(char::escape_default).collect();
    if text.chars().count() <= max { text } else { text.chars().take(max - 1).chain(['…']).collect() }
}

/// Escapes text for HTML (an account's name or id is anyone's input): the console's.
use crate::console::esc as escape;

/// The series colours, one per model.
const COLOURS: [&str; 4] = ["#4063d8", "#d8613f", "#389826", "#9558b2"];

/// The report as one self-contained HTML page: inline CSS and SVG charts, no script, nothing
/// fetched (its Content-Security-Policy forbids it), so it opens from a file offline.
pub fn html(report: &Report) -> String {
    let mut out = String::new();
    let title = match (report.from, report.to) {
        (Some(from), Some(to)) => format!("Backtest {} to {}", date(from), date(to)),
        _ => "Backtest".to_owned(),
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{title}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}}\
         td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){{text-align:left}}\
         .legend span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}\
         svg{{background:#fafafa;border:1px solid #eee}} svg text{{font:11px system-ui,sans-serif;fill:#444}}\
         </style></head><body>\n<h1>{title}</h1>\n"
    );
    let _ = writeln!(
        out,
        "<p>{} events, {} accounts, {} opportunities, {:.1} weeks. Skipped: {} undecodable, {} without account, {} with an invalid account id.</p>",
        report.events,
        report.accounts,
        report.opportunities,
        report.weeks,
        report.skipped.undecodable,
        report.skipped.missing_account,
        report.skipped.invalid_account
    );
    out.push_str("<p class=\"legend\">");
    for (i, model) in report.models.iter().enumerate() {
        let _ = write!(
            out,
            "<span style=\"background:{}\"></span>{} (model {})",
            COLOURS[i % COLOURS.len()],
            escape(&model.label),
            escape(&model.model_version)
        );
    }
    out.push_str("</p>\n<h2>Alerts per week</h2>\n");
    out.push_str(&weekly_chart(report));
    out.push_str("<h2>Score distribution at the end of the history</h2>\n<p>Accounts by score as a share of their tier's threshold.</p>\n");
    out.push_str(&distribution_chart(report));
    out.push_str("<h2>Precision and recall (all accounts)</h2>\n");
    out.push_str(&quality_chart(report));
    out.push_str("<h2>Figures by tier</h2>\n<table><tr><th>segment</th><th>figure</th>");
    for model in &report.models {
        let _ = write!(out, "<th>{}</th>", escape(&model.label));
    }
    out.push_str("</tr>\n");
    for (segment, figure, values) in rows(report) {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td>", escape(&segment), escape(figure.trim()));
        for value in values {
            let _ = write!(out, "<td>{}</td>", escape(&value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    if !report.most_changed.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Most changed accounts</h2>\n<p>Score at {}; {} accounts end in another stage.</p>\n<table><tr><th>account</th><th>tier</th><th>score</th><th>stage</th><th>alerts</th></tr>",
            span_end(report),
            report.stage_changed
        );
        for change in &report.most_changed {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{:.1} → {:.1}</td><td>{} → {}</td><td>{} → {}</td></tr>",
                escape(change.name.as_deref().unwrap_or(&change.account_id)),
                change.tier.as_str(),
                change.scores[0],
                change.scores[1],
                change.stages[0].as_str(),
                change.stages[1].as_str(),
                change.alerts[0],
                change.alerts[1]
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 220.0;
const PAD: f64 = 40.0;

fn svg_open(out: &mut String, label: &str) {
    let _ = write!(
        out,
        "<svg role=\"img\" aria-label=\"{}\" width=\"{CHART_W}\" height=\"{CHART_H}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(label)
    );
}

/// The y axis: 0 and the maximum, with the plot's base line.
fn y_axis(out: &mut String, max: f64) {
    let _ = write!(
        out,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/><text x=\"4\" y=\"{b}\">0</text><text x=\"4\" y=\"{t}\">{max}</text>",
        b = CHART_H - PAD,
        r = CHART_W - 10.0,
        t = PAD / 2.0 + 4.0
    );
}

fn weekly_chart(report: &Report) -> String {
    let mut out = String::new();
    svg_open(&mut out, "alerts per week under each model");
    let weeks = report.models.first().map_or(0, |m| m.weekly.len());
    let max = report
        .models
        .iter()
        .flat_map(|m| m.weekly.iter().map(|w| w.threshold + w.hand_raiser))
        .max()
        .unwrap_or(0)
        .max(1);
    y_axis(&mut out, max as f64);
    let x = |i: usize| PAD + (CHART_W - PAD - 10.0) * if weeks > 1 { i as f64 / (weeks - 1) as f64 } else { 0.5 };
    let y = |v: u64| CHART_H - PAD - (CHART_H - 1.5 * PAD) * v as f64 / max as f64;
    for (m, model) in report.models.iter().enumerate() {
        let points: Vec<String> = model
            .weekly
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{:.1},{:.1}", x(i), y(w.threshold + w.hand_raiser)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"{}\" points=\"{}\"/>",
            COLOURS[m % COLOURS.len()],
            points.join(" ")
        );
        for (i, w) in model.weekly.iter().enumerate() {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"><title>week of {}: {} alerts</title></circle>",
                x(i),
                y(w.threshold + w.hand_raiser),
                COLOURS[m % COLOURS.len()],
                date(w.start),
                w.threshold + w.hand_raiser
            );
        }
    }
    if let Some(model) = report.models.first() {
        for (i, w) in model.weekly.iter().enumerate() {
            if weeks <= 12 || i % weeks.div_ceil(12) == 0 {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    x(i),
                    CHART_H - PAD + 16.0,
                    date(w.start)
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Grouped bars: one group per label, one bar per model.
fn bars(out: &mut String, labels: &[String], values: &[Vec<f64>], max: f64, format: &dyn Fn(f64) -> String) {
    let groups = labels.len().max(1);
    let group_w = (CHART_W - PAD - 10.0) / groups as f64;
    let bar_w = (group_w * 0.8) / values.len().max(1) as f64;
    for (g, label) in labels.iter().enumerate() {
        for (m, series) in values.iter().enumerate() {
            let v = series.get(g).copied().unwrap_or(0.0);
            let h = (CHART_H - 1.5 * PAD) * if max > 0.0 { v / max } else { 0.0 };
            let x = PAD + g as f64 * group_w + group_w * 0.1 + m as f64 * bar_w;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                CHART_H - PAD - h,
                bar_w.max(1.0),
                COLOURS[m % COLOURS.len()],
                escape(label),
                format(v)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            PAD + (g as f64 + 0.5) * group_w,
            CHART_H - PAD + 16.0,
            escape(label)
        );
    }
}

fn distribution_chart(report: &Report) -> String {
    let mut out = String::new();
    svg_open(&mut out, "accounts by score as a share of the threshold, under each model");
    let labels: Vec<String> = BUCKETS
        .iter()
        .enumerate()
        .map(|(i, from)| match BUCKETS.get(i + 1) {
            Some(to) => format!("{:.0}–{:.0}%", from * 100.0, to * 100.0),
            None => format!("≥ {:.0}%", from * 100.0),
        })
        .collect();
    let values: Vec<Vec<f64>> =
        report.models.iter().map(|m| m.distribution.iter().map(|b| b.accounts as f64).collect()).collect();
    let max = values.iter().flatten().copied().fold(1.0, f64::max);
    y_axis(&mut out, max);
    bars(&mut out, &labels, &values, max, &|v| format!("{v:.0} accounts"));
    out.push_str("</svg>\n");
    out
}

fn quality_chart(report: &Report) -> String {
    let mut out = String::new();
    svg_open(&mut out, "alert precision and recall under each model");
    let mut labels: Vec<String> = PRECISION_DAYS.iter().map(|d| format!("precision {d} d")).collect();
    labels.push(format!("recall {RECALL_DAYS} d"));
    let values: Vec<Vec<f64>> = report
        .models
        .iter()
        .map(|m| {
            let all = m.segments.get("all");
            let mut v: Vec<f64> = PRECISION_DAYS
                .iter()
                .enumerate()
                .map(|(i, _)| all.and_then(|s| s.precision[i].rate).unwrap_or(0.0) * 100.0)
                .collect();
            v.push(all.and_then(|s| s.recall.rate).unwrap_or(0.0) * 100.0);
            v
        })
        .collect();
    y_axis(&mut out, 100.0);
    bars(&mut out, &labels, &values, 100.0, &|v| format!("{v:.1}%"));
    out.push_str("</svg>\n");
    out
}

/// What `scorer backtest` is asked (its flags; `main.rs` has their help).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A TOML file with the candidate's `[scoring]` table (a whole scorer config file will do).
    pub candidate: std::path::PathBuf,
    /// The alerter's config file, for its cooldowns (default: the alerter's defaults).
    pub alerter_config: Option<std::path::PathBuf>,
    /// Replay the records written at or after this time (ms since the epoch).
    pub since: Option<i64>,
    pub json: Option<std::path::PathBuf>,
    pub html: Option<std::path::PathBuf>,
    pub alerts: Option<std::path::PathBuf>,
    pub top: usize,
}

/// The `[scoring]` table of the candidate's file; a file without one is an error (not the
/// default model, which a typo in the table's name would otherwise silently give).
pub fn load_candidate(path: &std::path::Path) -> anyhow::Result<crate::engine::ScoringConfig> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let scoring = table.remove("scoring").ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no [scoring] table: write the candidate model as the scorer's config does",
            path.display()
        )
    })?;
    let config: crate::engine::ScoringConfig =
        scoring.try_into().with_context(|| format!("the [scoring] table of {}", path.display()))?;
    config.validate().with_context(|| format!("the candidate model in {}", path.display()))?;
    Ok(config)
}

/// `--since`: `YYYY-MM-DD` (UTC midnight), an RFC 3339 time, `<N>d` (N days before now) or
/// milliseconds since the epoch.
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d').and_then(|d| d.parse::<u32>().ok()) {
        return Ok(now - i64::from(days) * DAY_MS);
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let format = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]").map_err(|e| e.to_string())?;
    if let Ok(date) = time::Date::parse(text, &format) {
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("--since {text:?}: expected YYYY-MM-DD, an RFC 3339 time, <N>d or milliseconds"))
}

/// Runs a backtest against the cluster of `config`: reads the TAL and `abm.engagement`
/// (`read_committed`, from `options.since` or the beginning, to the end it has when the
/// backtest starts), replays it through the current model (`config.scoring`) and the
/// candidate, and writes the report. Writes nothing to Kafka.
pub async fn run(config: crate::Config, options: Options) -> anyhow::Result<()> {
    use abm::topics::{TopicRole, Topics};
    use anyhow::Context as _;
    let current = Engine::new(config.scoring.clone()).context("the current model ([scoring])")?;
    let candidate = Engine::new(load_candidate(&options.candidate)?).context("the candidate model")?;
    let policy = match &options.alerter_config {
        None => PolicyConfig::default(),
        Some(path) => {
            abm::config::load::<alerter::Config>(Some(path), &[])
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .alerter
                .policy
        }
    };
    policy.validate().map_err(|e| anyhow::anyhow!(e))?;
    let topics = Topics::resolve(&config.topics);
    let inputs = [TopicRole::Engagement, TopicRole::Accounts].map(|role| abm::registry::Output::of(&topics, role));
    abm::registry::prepare(&config.registry, &[], &inputs).await?;
    let kafka = config.kafka.clone();
    let (accounts, engagement) =
        (topics.name(TopicRole::Accounts).to_owned(), topics.name(TopicRole::Engagement).to_owned());
    let started = std::time::Instant::now();
    let (replay, report) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Replay, Report)> {
        let mut tal: HashMap<String, Account> = HashMap::new();
        abm::kafka::read_messages_to_end(
            &kafka,
            "abm-scorer-backtest-tal",
            &accounts,
            &Default::default(),
            |message| {
                use rdkafka::Message as _;
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                match message.payload() {
                    None => {
                        tal.remove(&key);
                    }
                    Some(payload) => {
                        match abm_schemas::decode_patiently::<Account>(payload, abm_schemas::REGISTRY_PATIENCE) {
                            Ok(account) => {
                                tal.insert(account.account_id.clone(), account);
                            }
                            Err(error) => tracing::warn!(%error, key, "TAL record left out"),
                        }
                    }
                }
                Ok(())
            },
        )?;
        tracing::info!(accounts = tal.len(), "TAL read");
        let models = vec![("current".to_owned(), current), ("candidate".to_owned(), candidate)];
        let mut replay = Replay::new(models, policy, tal.into_values());
        let settings = abm::kafka::ReadToEnd {
            since: options.since,
            // A year of a large site's history takes hours (benches/README.md).
            deadline: std::time::Duration::from_secs(7 * 86_400),
            ..Default::default()
        };
        let mut last_log = std::time::Instant::now();
        let replaying = std::time::Instant::now();
        abm::kafka::read_messages_to_end(&kafka, "abm-scorer-backtest", &engagement, &settings, |message| {
            use rdkafka::Message as _;
            let payload = message.payload().unwrap_or_default();
            // The registry did not answer: asked again every second for as long as the restores
            // wait for it (`abm_schemas::REGISTRY_PATIENCE`), then the backtest fails.
            let waiting = std::time::Instant::now();
            while let Err(error) = replay.record(message.key(), payload) {
                if waiting.elapsed() >= abm_schemas::REGISTRY_PATIENCE {
                    return Err(error);
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            if last_log.elapsed() >= std::time::Duration::from_secs(10) {
                last_log = std::time::Instant::now();
                tracing::info!(
                    events = replay.events(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "replaying"
                );
            }
            Ok(())
        })?;
        let mut report = replay.report(options.since, options.top);
        report.replay_seconds = replaying.elapsed().as_secs_f64();
        Ok((replay, report))
    })
    .await
    .context("the replay thread")??;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(events = report.events, seconds, rate = report.events as f64 / seconds.max(1e-9), "replay done");
    write_outputs(&report, &replay, &options)
}

/// The table to stdout (unless the JSON goes there), and the files asked for.
fn write_outputs(report: &Report, replay: &Replay, options: &Options) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let json = serde_json::to_string_pretty(report)?;
    let stdout_json = options.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if stdout_json {
        println!("{json}");
    } else {
        print!("{}", table(report));
    }
    let write = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    if let Some(path) = options.json.as_deref().filter(|_| !stdout_json) {
        write(path, &json)?;
        eprintln!("backtest: JSON report in {}", path.display());
    }
    if let Some(path) = &options.html {
        write(path, &html(report))?;
        eprintln!("backtest: HTML report in {}", path.display());
    }
    if let Some(path) = &options.alerts {
        let file = std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for alert in replay.alerts() {
            serde_json::to_writer(&mut out, alert)?;
            out.write_all(b"\n")?;
        }
        out.flush().with_context(|| format!("writing {}", path.display()))?;
        eprintln!("backtest: every alert of both models in {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use abm_schemas::{EventKind, Opportunity, OpportunityStage};

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday

    fn demo(id: &str, t: i64) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::DemoRequest, t, "test");
        event.demo_request = Some(abm_schemas::DemoRequest { form: "f".into() });
        event
    }

    fn opportunity(id: &str, opportunity: &str, t: i64) -> EngagementEvent {
        let mut event = EngagementEvent::new(id, EventKind::Opportunity, t, "test");
        event.opportunity = Some(Opportunity {
            opportunity_id: opportunity.into(),
            stage: OpportunityStage::Open,
            stage_name: None,
            amount: 1000.0,
            currency: "USD".into(),
        });
        event
    }

    #[test]
    fn since_takes_dates_times_days_and_milliseconds() {
        let now = T0 + 10 * DAY_MS;
        assert_eq!(parse_since("2026-01-01", now), Ok(T0));
        assert_eq!(parse_since("2026-01-01T06:00:00Z", now), Ok(T0 + 6 * 3_600_000));
        assert_eq!(parse_since("2026-01-01T07:00:00+01:00", now), Ok(T0 + 6 * 3_600_000));
        assert_eq!(parse_since("10d", now), Ok(T0));
        assert_eq!(parse_since(&T0.to_string(), now), Ok(T0));
        assert!(parse_since("last week", now).expect_err("refused").contains("YYYY-MM-DD"));
    }

    #[test]
    fn a_candidate_file_needs_its_scoring_table() {
        let dir = std::env::temp_dir().join(format!("abm-candidate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("candidate.toml");
        std::fs::write(&path, "[scoring.thresholds]\ntier_1 = 40.0\n").expect("writes");
        assert_eq!(load_candidate(&path).expect("loads").thresholds.tier_1, 40.0);
        std::fs::write(&path, "[thresholds]\ntier_1 = 40.0\n").expect("writes");
        assert!(load_candidate(&path).expect_err("no [scoring]").to_string().contains("no [scoring] table"));
        std::fs::write(&path, "[scoring]\nhalf_life_dayz = 3.0\n").expect("writes");
        assert!(load_candidate(&path).is_err(), "a misspelt key is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn weeks_start_on_monday() {
        assert_eq!(week_start(T0), T0 - 3 * DAY_MS);
        assert_eq!(week_start(T0 - 3 * DAY_MS), T0 - 3 * DAY_MS);
        assert_eq!(week_start(T0 + 4 * DAY_MS), T0 + 4 * DAY_MS);
        assert_eq!(week_start(T0 + 4 * DAY_MS - 1), T0 - 3 * DAY_MS);
    }

    #[test]
    fn alerts_pass_the_alerters_cooldown_and_are_measured_against_opportunities() {
        let current = Engine::new(crate::engine::ScoringConfig::default()).expect("default model");
        let mut config = crate::engine::ScoringConfig::default();
        config.rules.retain(|rule| rule.name != "demo_request");
        let candidate = Engine::new(config).expect("candidate model");
        assert_ne!(current.model_version(), candidate.model_version());
        let mut replay = Replay::new(
            vec![("current".into(), current), ("candidate".into(), candidate)],
            PolicyConfig::default(),
            [],
        );
        // Three demo requests: the second within the 24 h cooldown of the first.
        replay.apply("acc", &demo("d1", T0));
        replay.apply("acc", &demo("d2", T0 + 3_600_000));
        replay.apply("acc", &demo("d3", T0 + 40 * DAY_MS));
        // An opportunity 10 days after the first alert; the history ends 120 days after it.
        replay.apply("acc", &opportunity("o1", "opp-1", T0 + 10 * DAY_MS));
        replay.apply("acc", &opportunity("o2", "opp-1", T0 + 20 * DAY_MS));
        replay.apply("other", &demo("x", T0 + 120 * DAY_MS));
        let ids: Vec<&str> = replay.alerts().filter(|a| a.model == "current").map(|a| a.alert_id.as_str()).collect();
        assert_eq!(ids, ["acc:hand_raiser:1", "acc:hand_raiser:3", "other:hand_raiser:1"]);
        let report = replay.report(None, 5);
        assert_eq!(report.events, 6);
        assert_eq!(report.opportunities, 1);
        let all = &report.models[0].segments["all"];
        assert_eq!(all.hand_raiser_alerts, 3, "the second demo request is held back by the cooldown");
        assert_eq!(report.models[0].suppressed_by_cooldown, 1);
        // Alerts at T0 (followed at +10 d), T0+40 d (not followed), T0+120 d (window not ended).
        assert_eq!(all.precision[0], Window { days: 30, matured: 2, followed: 1, rate: Some(0.5) });
        assert_eq!(all.precision[1].matured, 1, "only the first has 90 days behind it");
        assert_eq!(all.recall, Recall { days: 90, opportunities: 1, preceded: 1, rate: Some(1.0) });
        assert_eq!(all.median_lead_days, Some(10.0));
        assert_eq!(all.mqa_accounts, 2);
        // The candidate has no points for demo requests: the same hand-raisers, but no score.
        let candidate = &report.models[1];
        assert_eq!(candidate.segments["all"].hand_raiser_alerts, 3);
        assert_eq!(candidate.segments["all"].threshold_alerts, 0);
        assert_eq!(report.most_changed.len(), 2);
        assert!(report.most_changed[0].scores[1] < report.most_changed[0].scores[0]);
        let weekly: u64 = report.models[0].weekly.iter().map(|w| w.threshold + w.hand_raiser).sum();
        assert_eq!(weekly, all.threshold_alerts + all.hand_raiser_alerts);
        assert_eq!(report.models[0].weekly.first().map(|w| w.start), Some(week_start(T0)));
        assert!(table(&report).contains("precision 30 d"));
    }

    #[test]
    fn the_page_escapes_names_and_fetches_nothing() {
        let engine = Engine::new(crate::engine::ScoringConfig::default()).expect("default model");
        let account = Account {
            account_id: "<script>".into(),
            name: "<img src=x onerror=alert(1)>".into(),
            domains: vec![],
            tier: Tier::Tier1,
            owner: "o".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        };
        let mut replay = Replay::new(
            vec![("current".into(), engine.clone()), ("candidate".into(), engine)],
            PolicyConfig::default(),
            [account],
        );
        replay.apply("<script>", &demo("d1", T0));
        let page = html(&replay.report(None, 5));
        assert!(!page.contains("<script") && !page.contains("<img"), "{page}");
        assert!(page.contains("&lt;img src=x"));
        // Nothing to fetch: the only URL is the SVG namespace.
        let urls = page.matches("http").count();
        assert_eq!(urls, page.matches("http://www.w3.org/2000/svg").count() + page.matches("http-equiv").count());
        assert!(page.contains("default-src 'none'"));
    }
}
