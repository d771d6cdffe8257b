//! Program metrics (`GET /v1/program`, `abm_scorer_program_*` and the funnel gauges): the
//! ABM program measured by accounts, over every account of every scorer instance.
//!
//! How the aggregate is kept and served across instances (ARCHITECTURE.md, "Program
//! metrics"): each scorer writes, in the transaction that writes an account's state, the
//! account's [`AccountProgram`] (stage entries, contacts' latest engagement, opportunities) to
//! the compacted topic `abm.account-program`. Every instance reads that topic whole, and
//! `abm.sales-alerts` too, into a [`Book`], and computes the figures from the book when asked.
//! So any instance answers for the whole program, two instances answer as one, and a figure
//! that needs the accounts' own values (a median, a window moved by `at`) can be computed.
//! The book is what Kafka has committed: an instance answers with the program as of the last
//! transactions it has read (a fraction of a second behind the scorers).
//!
//! Every figure is defined in the README ("Program metrics"); [`report`] is that definition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use abm_schemas::{AccountProgram, CrossingKind, JourneyStage, OpportunityStage, SalesAlert, Tier};
use dashmap::DashMap;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::engine::state::in_breadth_window;
use crate::engine::{AccountScoreState, DAY_MS, Engine, StageEntries};
use crate::processor::Tal;

/// How often the gauges are computed again (one pass over the book) ...
pub const REFRESH: Duration = Duration::from_secs(10);

/// ... or, when a pass takes longer than `REFRESH / REFRESH_COST_FACTOR`, that many times its
/// length after it (the gauges cost at most 1/20 of a core: about 1 s per 1M accounts, so
/// every 20 s at 1M accounts; benches/README.md).
pub const REFRESH_COST_FACTOR: u32 = 20;

/// Alerts kept per account in the book (the latest by alert time).
pub const MAX_ALERTS_PER_ACCOUNT: usize = 256;

/// The windows of alert conversion, in days.
pub const ALERT_WINDOWS_DAYS: [i64; 2] = [30, 90];

/// The record the scorer writes to `abm.account-program` for an account's state.
pub fn record_of(account_id: &str, state: &AccountScoreState) -> AccountProgram {
    AccountProgram {
        account_id: account_id.to_owned(),
        tier: state.tier,
        as_of: state.as_of,
        first_applied_at: state.first_applied_at(),
        events_applied: i64::try_from(state.events_applied).unwrap_or(i64::MAX),
        stage: state.stage,
        stage_entered_at: state.stage_entered_at(),
        stage_entries: state.stage_entries.to_vec(),
        contacts: state
            .contacts
            .iter()
            .map(|c| abm_schemas::ProgramContact { persona: c.persona.to_owned(), last_engaged_at: c.last_engaged_at })
            .collect(),
        opportunities: state.opportunities.iter().cloned().collect(),
    }
}

/// What the book keeps of an account's [`AccountProgram`].
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub stage: JourneyStage,
    pub first_applied_at: Option<i64>,
    /// At most one per stage, in stage order (the state's own normalisation).
    pub stage_entries: StageEntries,
    /// (persona, latest engagement) of each contact.
    pub contacts: Box<[(Box<str>, i64)]>,
    pub opportunities: Box<[Deal]>,
}

/// An opportunity as the figures need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    pub stage: OpportunityStage,
    pub amount: f64,
    pub currency: Box<str>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Bounds on what the book keeps of one record (the scorer writes far fewer: `max_contacts`,
/// `max_opportunities`; a record from another writer may not).
pub const MAX_FACT_CONTACTS: usize = 1024;
pub const MAX_FACT_OPPORTUNITIES: usize = 256;
/// Longest persona the book keeps (bytes; longer ones are cut at a character boundary).
pub const MAX_FACT_TEXT: usize = 64;

fn truncate_text(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl From<AccountProgram> for Facts {
    fn from(mut record: AccountProgram) -> Facts {
        record.contacts.truncate(MAX_FACT_CONTACTS);
        record.opportunities.truncate(MAX_FACT_OPPORTUNITIES);
        for contact in &mut record.contacts {
            truncate_text(&mut contact.persona, MAX_FACT_TEXT);
        }
        for deal in &mut record.opportunities {
            // A currency is a Prometheus label value: ingest accepts three letters only.
            truncate_text(&mut deal.currency, 3);
        }
        Facts {
            stage: record.stage,
            first_applied_at: record.first_applied_at,
            stage_entries: StageEntries::from_entries(record.stage_entries),
            contacts: record.contacts.into_iter().map(|c| (c.persona.into_boxed_str(), c.last_engaged_at)).collect(),
            opportunities: record
                .opportunities
                .into_iter()
                .map(|o| Deal {
                    stage: o.stage,
                    amount: o.amount,
                    currency: o.currency.into_boxed_str(),
                    created_at: o.created_at,
                    updated_at: o.updated_at,
                })
                .collect(),
        }
    }
}

/// One alert as the book keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertFact {
    pub id_hash: i64,
    pub kind: CrossingKind,
    /// The alert's `as_of`: the event time of the crossing it announces.
    pub at: i64,
}

/// What the book holds for an account: its facts (once its first `AccountProgram` is read) and
/// its alerts (possibly read first).
#[derive(Debug, Default)]
struct Entry {
    facts: Option<Facts>,
    alerts: Vec<AlertFact>,
}

/// An account's journey (stage, first entered at) and alerts (kind, as-of), oldest first.
pub type Story = (Vec<(JourneyStage, i64)>, Vec<(CrossingKind, i64)>);

/// Every account's facts and alerts, as read from Kafka: one map, so that a query looks each
/// account up once.
#[derive(Debug, Default)]
pub struct Book {
    accounts: DashMap<String, Entry>,
    /// Accounts with facts.
    with_facts: std::sync::atomic::AtomicUsize,
    /// Both topics read to their end once (until then the figures would be partial).
    facts_loaded: AtomicBool,
    alerts_loaded: AtomicBool,
    /// The latest alerts whole, and the console's live feed of new ones.
    pub feed: crate::console::AlertFeed,
}

impl Book {
    /// `abm.account-program` has been read to its end once.
    pub fn facts_loaded(&self) {
        self.facts_loaded.store(true, Ordering::Release);
    }

    /// `abm.sales-alerts` has been read to its end once.
    pub fn alerts_loaded(&self) {
        self.alerts_loaded.store(true, Ordering::Release);
    }

    /// Whether both topics have been read to their end once.
    pub fn is_loaded(&self) -> bool {
        self.facts_loaded.load(Ordering::Acquire) && self.alerts_loaded.load(Ordering::Acquire)
    }

    /// One record of `abm.account-program` as read: an `AccountProgram`, or a tombstone.
    pub fn read_program(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), abm_schemas::DecodeError> {
        match value {
            None => self.forget(&String::from_utf8_lossy(key)),
            Some(bytes) => self.record(abm_schemas::decode_patiently(bytes, abm_schemas::REGISTRY_PATIENCE)?),
        }
        Ok(())
    }

    /// One record of `abm.sales-alerts` as read (a tombstone means nothing there).
    pub fn read_alert(&self, _key: &[u8], value: Option<&[u8]>) -> Result<(), abm_schemas::DecodeError> {
        if let Some(bytes) = value {
            let alert: SalesAlert = abm_schemas::decode_patiently(bytes, abm_schemas::REGISTRY_PATIENCE)?;
            self.alert(&alert);
            self.feed.push(alert);
        }
        Ok(())
    }

    /// The account's journey (stage, first entered at) and its alerts (kind, as-of), oldest
    /// first, as the program's topics tell them.
    pub fn story(&self, account_id: &str) -> Story {
        let Some(entry) = self.accounts.get(account_id) else { return (Vec::new(), Vec::new()) };
        let stages = entry
            .facts
            .as_ref()
            .map(|facts| facts.stage_entries.iter().map(|e| (e.stage, e.first_entered_at)).collect())
            .unwrap_or_default();
        let mut alerts: Vec<(CrossingKind, i64)> = entry.alerts.iter().map(|a| (a.kind, a.at)).collect();
        alerts.sort_by_key(|(_, at)| *at);
        (stages, alerts)
    }

    /// The account's latest record (the topic is compacted by account: the last one wins).
    pub fn record(&self, mut record: AccountProgram) {
        let account_id = std::mem::take(&mut record.account_id);
        let facts = Facts::from(record);
        let mut entry = self.accounts.entry(account_id).or_default();
        if entry.facts.replace(facts).is_none() {
            self.with_facts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A tombstone of `abm.account-program`: the account is gone from the program.
    pub fn forget(&self, account_id: &str) {
        if let Some(mut entry) = self.accounts.get_mut(account_id)
            && entry.facts.take().is_some()
        {
            self.with_facts.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// An alert of `abm.sales-alerts` (the same alert read twice counts once).
    pub fn alert(&self, alert: &SalesAlert) {
        let fact =
            AlertFact { id_hash: abm_schemas::hash::stable_hash(&alert.alert_id), kind: alert.kind, at: alert.as_of };
        let mut entry = match self.accounts.get_mut(alert.account_id.as_str()) {
            Some(entry) => entry,
            None => self.accounts.entry(alert.account_id.clone()).or_default(),
        };
        let alerts = &mut entry.alerts;
        if alerts.iter().any(|a| a.id_hash == fact.id_hash) {
            return;
        }
        alerts.push(fact);
        if alerts.len() > MAX_ALERTS_PER_ACCOUNT {
            alerts.sort_by_key(|a| std::cmp::Reverse(a.at));
            alerts.truncate(MAX_ALERTS_PER_ACCOUNT);
        }
    }

    /// Whether the book has an `AccountProgram` of the account.
    pub fn has_facts(&self, account_id: &str) -> bool {
        self.accounts.get(account_id).is_some_and(|entry| entry.facts.is_some())
    }

    /// Accounts with facts.
    pub fn accounts(&self) -> usize {
        self.with_facts.load(Ordering::Relaxed)
    }

    pub fn alert_count(&self) -> usize {
        self.accounts.iter().map(|e| e.alerts.len()).sum()
    }
}

/// The segments every figure is given for: every account, TAL and non-TAL accounts, each tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    All,
    Tal,
    NonTal,
    Tier(Tier),
}

/// The figures of one segment (README, "Program metrics").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub accounts: u64,
    pub tal_accounts: u64,
    pub engaged: u64,
    pub engaged_tal_accounts: u64,
    pub engagement_rate: Option<f64>,
    pub mean_coverage: Option<f64>,
    pub accounts_by_stage: BTreeMap<JourneyStage, u64>,
    pub conversion: Vec<Conversion>,
    pub opportunities: Outcomes,
    pub alerts: AlertConversion,
}

/// From one stage on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversion {
    pub stage: JourneyStage,
    /// Accounts that ever entered the stage.
    pub entered: u64,
    /// Of those, the accounts that entered a later stage after they first entered this one.
    pub converted: u64,
    pub rate: Option<f64>,
    /// The next stage in the journey's order, and the days from first entering this stage to
    /// first entering that one (accounts that entered both, that one after this one).
    pub next: JourneyStage,
    pub next_accounts: u64,
    pub median_days_to_next: Option<f64>,
}

/// Pipeline and outcomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcomes {
    pub open: u64,
    pub won: u64,
    pub lost: u64,
    pub win_rate: Option<f64>,
    /// Per currency: open pipeline, won revenue and mean won deal size.
    pub by_currency: BTreeMap<String, Money>,
    /// Accounts with a won opportunity, and the median days from their first applied event to
    /// their first won opportunity.
    pub won_accounts: u64,
    pub median_days_to_won: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Money {
    pub open_pipeline: f64,
    pub won_revenue: f64,
    pub won: u64,
    pub mean_won_deal: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertConversion {
    /// Threshold and hand-raiser alerts at or before `at`.
    pub alerts: u64,
    pub windows: Vec<AlertWindow>,
    /// Alerts followed by an opportunity created at or after them (up to `at`), and the median
    /// days from the alert to the first such opportunity.
    pub followed: u64,
    pub median_days_to_opportunity: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertWindow {
    pub days: i64,
    /// Alerts whose window has ended by `at` (alert time + days ≤ at).
    pub matured: u64,
    /// Of those, the alerts followed by an opportunity created within the window.
    pub followed: u64,
    pub rate: Option<f64>,
}

/// The program at `at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub at: i64,
    pub tier: Option<Tier>,
    pub all: Figures,
    pub tal: Figures,
    pub non_tal: Figures,
    pub tiers: BTreeMap<Tier, Figures>,
}

/// What one account gives a segment.
#[derive(Default)]
struct Sums {
    accounts: u64,
    tal_accounts: u64,
    engaged: u64,
    engaged_tal: u64,
    coverage: Vec<f64>,
    by_stage: [u64; 6],
    entered: [u64; 6],
    converted: [u64; 6],
    days_to_next: [Vec<f64>; 6],
    open: u64,
    won: u64,
    lost: u64,
    /// Per currency: open amounts, won amounts.
    money: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
    days_to_won: Vec<f64>,
    alerts: u64,
    matured: [u64; 2],
    followed_in: [u64; 2],
    days_to_opportunity: Vec<f64>,
}

/// A sum that does not depend on the order the accounts were read in: the same on every
/// instance, to the bit.
fn sum(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    // From +0 (an empty `Sum` of floats is -0).
    values.iter().fold(0.0, |total, x| total + x)
}

/// The middle value (the mean of the two middle ones for an even count); `None` for none.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn days(ms: i64) -> f64 {
    ms as f64 / DAY_MS as f64
}

/// The journey's stage after `stage` (itself for the last).
fn next_stage(stage: JourneyStage) -> JourneyStage {
    JourneyStage::ALL.get(stage as usize + 1).copied().unwrap_or(stage)
}

/// What one account gives every segment it is in: computed once, added to each.
struct One<'a> {
    on_tal: bool,
    engaged: bool,
    coverage: f64,
    stage: JourneyStage,
    facts: Option<&'a Facts>,
    entered: [bool; 6],
    converted: [bool; 6],
    days_to_next: [Option<f64>; 6],
    days_to_won: Option<f64>,
    alerts: u64,
    matured: [u64; 2],
    followed_in: [u64; 2],
    days_to_opportunity: Vec<f64>,
}

impl<'a> One<'a> {
    fn of(on_tal: bool, facts: Option<&'a Facts>, required: &[String], alerts: &[AlertFact], at: i64) -> One<'a> {
        let contacts = facts.map_or(&[][..], |f| &f.contacts[..]);
        let covered = required
            .iter()
            .filter(|persona| contacts.iter().any(|(p, t)| **p == ***persona && in_breadth_window(*t, at)))
            .count();
        let mut one = One {
            on_tal,
            engaged: contacts.iter().any(|(_, t)| in_breadth_window(*t, at)),
            coverage: if required.is_empty() { 1.0 } else { covered as f64 / required.len() as f64 },
            stage: facts.map_or(JourneyStage::Unaware, |f| f.stage),
            facts,
            entered: [false; 6],
            converted: [false; 6],
            days_to_next: [None; 6],
            days_to_won: None,
            alerts: 0,
            matured: [0; 2],
            followed_in: [0; 2],
            days_to_opportunity: Vec::new(),
        };
        // Alerts count whether or not the account's facts have been read yet.
        let deals = facts.map_or(&[][..], |f| &f.opportunities[..]);
        for alert in alerts.iter().filter(|a| a.at <= at) {
            one.alerts += 1;
            let created = || deals.iter().map(|o| o.created_at).filter(|t| *t >= alert.at);
            for (i, window) in ALERT_WINDOWS_DAYS.iter().enumerate() {
                let end = alert.at.saturating_add(window.saturating_mul(DAY_MS));
                if end <= at {
                    one.matured[i] += 1;
                    one.followed_in[i] += u64::from(created().any(|t| t <= end));
                }
            }
            if let Some(first) = created().filter(|t| *t <= at).min() {
                one.days_to_opportunity.push(days(first.saturating_sub(alert.at)));
            }
        }
        let Some(facts) = facts else { return one };
        let entry = |stage: JourneyStage| facts.stage_entries.iter().find(|e| e.stage == stage);
        for e in facts.stage_entries.iter() {
            let s = e.stage as usize;
            one.entered[s] = true;
            one.converted[s] =
                facts.stage_entries.iter().any(|l| l.stage > e.stage && l.last_sequence > e.first_sequence);
            if let Some(next) = entry(next_stage(e.stage)).filter(|n| n.stage != e.stage)
                && next.first_sequence > e.first_sequence
            {
                one.days_to_next[s] = Some(days(next.first_entered_at.saturating_sub(e.first_entered_at)));
            }
        }
        let first_won = facts
            .opportunities
            .iter()
            .filter(|deal| deal.stage == OpportunityStage::ClosedWon)
            .map(|deal| deal.updated_at)
            .min();
        if let (Some(won), Some(first)) = (first_won, facts.first_applied_at) {
            one.days_to_won = Some(days(won.saturating_sub(first)));
        }
        one
    }
}

impl Sums {
    fn add(&mut self, one: &One<'_>) {
        self.accounts += 1;
        self.tal_accounts += u64::from(one.on_tal);
        self.engaged += u64::from(one.engaged);
        self.engaged_tal += u64::from(one.engaged && one.on_tal);
        self.coverage.push(one.coverage);
        self.by_stage[one.stage as usize] += 1;
        self.alerts += one.alerts;
        for i in 0..2 {
            self.matured[i] += one.matured[i];
            self.followed_in[i] += one.followed_in[i];
        }
        self.days_to_opportunity.extend_from_slice(&one.days_to_opportunity);
        let Some(facts) = one.facts else { return };
        for s in 0..6 {
            self.entered[s] += u64::from(one.entered[s]);
            self.converted[s] += u64::from(one.converted[s]);
            if let Some(days) = one.days_to_next[s] {
                self.days_to_next[s].push(days);
            }
        }
        for deal in facts.opportunities.iter() {
            let money = match self.money.get_mut(&*deal.currency) {
                Some(money) => money,
                None => self.money.entry(deal.currency.to_string()).or_default(),
            };
            match deal.stage {
                OpportunityStage::Open => {
                    self.open += 1;
                    money.0.push(deal.amount);
                }
                OpportunityStage::ClosedWon => {
                    self.won += 1;
                    money.1.push(deal.amount);
                }
                OpportunityStage::ClosedLost => self.lost += 1,
                OpportunityStage::Other => {}
            }
        }
        self.days_to_won.extend(one.days_to_won);
    }

    fn figures(mut self) -> Figures {
        let conversion = JourneyStage::ALL[1..JourneyStage::ALL.len() - 1]
            .iter()
            .map(|stage| {
                let s = *stage as usize;
                Conversion {
                    stage: *stage,
                    entered: self.entered[s],
                    converted: self.converted[s],
                    rate: ratio(self.converted[s], self.entered[s]),
                    next: next_stage(*stage),
                    next_accounts: self.days_to_next[s].len() as u64,
                    median_days_to_next: median(&mut self.days_to_next[s]),
                }
            })
            .collect();
        let won_accounts = self.days_to_won.len() as u64;
        let by_currency = std::mem::take(&mut self.money)
            .into_iter()
            .map(|(currency, (mut open, mut won))| {
                let count = won.len() as u64;
                let won_revenue = sum(&mut won);
                let money = Money {
                    open_pipeline: sum(&mut open),
                    won_revenue,
                    won: count,
                    mean_won_deal: (count > 0).then(|| won_revenue / count as f64),
                };
                (currency, money)
            })
            .collect();
        let windows = ALERT_WINDOWS_DAYS
            .iter()
            .enumerate()
            .map(|(i, days)| AlertWindow {
                days: *days,
                matured: self.matured[i],
                followed: self.followed_in[i],
                rate: ratio(self.followed_in[i], self.matured[i]),
            })
            .collect();
        let accounts = self.accounts;
        Figures {
            accounts,
            tal_accounts: self.tal_accounts,
            engaged: self.engaged,
            engaged_tal_accounts: self.engaged_tal,
            engagement_rate: ratio(self.engaged_tal, self.tal_accounts),
            mean_coverage: (accounts > 0).then(|| sum(&mut self.coverage) / accounts as f64),
            accounts_by_stage: JourneyStage::ALL.iter().map(|s| (*s, self.by_stage[*s as usize])).collect(),
            conversion,
            opportunities: Outcomes {
                open: self.open,
                won: self.won,
                lost: self.lost,
                win_rate: ratio(self.won, self.won + self.lost),
                by_currency,
                won_accounts,
                median_days_to_won: median(&mut self.days_to_won),
            },
            alerts: AlertConversion {
                alerts: self.alerts,
                windows,
                followed: self.days_to_opportunity.len() as u64,
                median_days_to_opportunity: median(&mut self.days_to_opportunity),
            },
        }
    }
}

/// The program at `at` over the TAL and the book; only accounts of `tier` when given. An
/// account on the TAL has the TAL's tier and committee (else its tier's); one that is not is
/// untiered.
pub fn report(book: &Book, tal: &Tal, engine: &Engine, at: i64, tier: Option<Tier>) -> Report {
    let mut sums: Vec<(Segment, Sums)> = [Segment::All, Segment::Tal, Segment::NonTal]
        .into_iter()
        .chain(Tier::ALL.into_iter().map(Segment::Tier))
        .map(|segment| (segment, Sums::default()))
        .collect();
    let mut add = |entry: Option<&Entry>, account_tier: Tier, on_tal: bool, committee: Option<&[String]>| {
        if tier.is_some_and(|t| t != account_tier) {
            return;
        }
        let (facts, alerts) = entry.map_or((None, &[][..]), |e| (e.facts.as_ref(), &e.alerts[..]));
        let required = committee.unwrap_or_else(|| engine.config().committee.for_tier(account_tier));
        let one = One::of(on_tal, facts, required, alerts, at);
        for (segment, sums) in &mut sums {
            let member = match segment {
                Segment::All => true,
                Segment::Tal => on_tal,
                Segment::NonTal => !on_tal,
                Segment::Tier(t) => *t == account_tier,
            };
            if member {
                sums.add(&one);
            }
        }
    };
    // One pass over the book (TAL accounts with facts or alerts, and the others), then the TAL
    // accounts the book has nothing of.
    // (The TAL accounts counted in the first pass are remembered: one the book gains meanwhile,
    // in a shard already walked, is counted in the second.)
    let mut counted: std::collections::HashSet<String> = std::collections::HashSet::new();
    for account in book.accounts.iter() {
        match tal.get(account.key()) {
            Some(on_tal) => {
                add(Some(account.value()), on_tal.tier, true, on_tal.committee.as_deref());
                counted.insert(account.key().clone());
            }
            None if account.facts.is_some() => add(Some(account.value()), Tier::Untiered, false, None),
            None => {}
        }
    }
    for on_tal in tal.iter() {
        if !counted.contains(on_tal.key()) {
            add(None, on_tal.tier, true, on_tal.committee.as_deref());
        }
    }
    let mut figures = sums.into_iter().map(|(segment, sums)| (segment, sums.figures()));
    let mut take = || figures.next().map(|(_, f)| f).expect("a segment per slot");
    let (all, tal_figures, non_tal) = (take(), take(), take());
    let tiers = Tier::ALL
        .into_iter()
        .zip(figures.map(|(_, f)| f))
        .filter(|(t, _)| tier.is_none_or(|wanted| wanted == *t))
        .collect();
    Report { at, tier, all, tal: tal_figures, non_tal, tiers }
}

/// The program gauges, set from a [`Report`] at wall-clock time. Every instance computes them
/// over the whole program: take one instance's (or the maximum over instances), never the sum.
#[derive(Debug, Clone)]
pub struct ProgramGauges {
    loaded: prometheus::IntGauge,
    accounts_by_stage: IntGaugeVec,
    engaged_accounts: IntGaugeVec,
    tal_accounts_by_tier: IntGaugeVec,
    engagement_rate: GaugeVec,
    mean_coverage: GaugeVec,
    conversion: GaugeVec,
    open_pipeline: GaugeVec,
    won_revenue: GaugeVec,
    win_rate: GaugeVec,
    alert_conversion: GaugeVec,
}

/// The lists of the outcome gauges.
const LISTS: [&str; 3] = ["all", "tal", "non_tal"];

impl ProgramGauges {
    pub fn register(registry: &Registry) -> prometheus::Result<ProgramGauges> {
        let int = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
        let float = |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let gauges = ProgramGauges {
            loaded: prometheus::IntGauge::new(
                "abm_scorer_program_loaded",
                "1 once this instance has read abm.account-program and abm.sales-alerts to their end (GET /v1/program answers 503 until then), else 0.",
            )?,
            accounts_by_stage: int(
                "abm_scorer_accounts_by_stage",
                "Accounts in each journey stage, by tier (the whole program: do not sum over instances).",
                &["stage", "tier"],
            )?,
            engaged_accounts: int(
                "abm_scorer_engaged_accounts",
                "TAL accounts with a contact engaged in the last 30 days, by TAL tier (the whole program).",
                &["tier"],
            )?,
            tal_accounts_by_tier: int("abm_scorer_tal_accounts_by_tier", "Accounts on the TAL, by tier.", &["tier"])?,
            engagement_rate: float(
                "abm_scorer_program_engagement_rate",
                "Engaged TAL accounts / TAL accounts, by tier (NaN without TAL accounts).",
                &["tier"],
            )?,
            mean_coverage: float(
                "abm_scorer_program_mean_coverage",
                "Mean buying-committee coverage of the accounts, by tier.",
                &["tier"],
            )?,
            conversion: float(
                "abm_scorer_program_stage_conversion",
                "Of the accounts that entered the stage, the share that later entered a later one, by tier.",
                &["stage", "tier"],
            )?,
            open_pipeline: float(
                "abm_scorer_program_open_pipeline",
                "Sum of the amounts of open opportunities, by list (all, tal, non_tal) and currency.",
                &["list", "currency"],
            )?,
            won_revenue: float(
                "abm_scorer_program_won_revenue",
                "Sum of the amounts of won opportunities, by list and currency.",
                &["list", "currency"],
            )?,
            win_rate: float(
                "abm_scorer_program_win_rate",
                "Won / closed opportunities, by list (NaN before the first closed one).",
                &["list"],
            )?,
            alert_conversion: float(
                "abm_scorer_program_alert_conversion",
                "Share of the matured threshold and hand-raiser alerts followed by an opportunity within the window.",
                &["window_days"],
            )?,
        };
        registry.register(Box::new(gauges.loaded.clone()))?;
        registry.register(Box::new(gauges.accounts_by_stage.clone()))?;
        registry.register(Box::new(gauges.engaged_accounts.clone()))?;
        registry.register(Box::new(gauges.tal_accounts_by_tier.clone()))?;
        registry.register(Box::new(gauges.engagement_rate.clone()))?;
        registry.register(Box::new(gauges.mean_coverage.clone()))?;
        registry.register(Box::new(gauges.conversion.clone()))?;
        registry.register(Box::new(gauges.open_pipeline.clone()))?;
        registry.register(Box::new(gauges.won_revenue.clone()))?;
        registry.register(Box::new(gauges.win_rate.clone()))?;
        registry.register(Box::new(gauges.alert_conversion.clone()))?;
        Ok(gauges)
    }

    /// Whether the book has been read to its end once.
    pub fn loaded(&self, loaded: bool) {
        self.loaded.set(i64::from(loaded));
    }

    /// Sets every gauge from `report` (every tier and stage, zeros included).
    pub fn set(&self, report: &Report) {
        let value = |x: Option<f64>| x.unwrap_or(f64::NAN);
        for (tier, figures) in &report.tiers {
            let t = tier.as_str();
            for (stage, count) in &figures.accounts_by_stage {
                self.accounts_by_stage.with_label_values(&[stage.as_str(), t]).set(*count as i64);
            }
            self.engaged_accounts.with_label_values(&[t]).set(figures.engaged_tal_accounts as i64);
            self.tal_accounts_by_tier.with_label_values(&[t]).set(figures.tal_accounts as i64);
            self.engagement_rate.with_label_values(&[t]).set(value(figures.engagement_rate));
            self.mean_coverage.with_label_values(&[t]).set(value(figures.mean_coverage));
            for conversion in &figures.conversion {
                self.conversion.with_label_values(&[conversion.stage.as_str(), t]).set(value(conversion.rate));
            }
        }
        // A currency no longer in the program leaves the gauges.
        self.open_pipeline.reset();
        self.won_revenue.reset();
        for (list, figures) in LISTS.iter().zip([&report.all, &report.tal, &report.non_tal]) {
            for (currency, money) in &figures.opportunities.by_currency {
                self.open_pipeline.with_label_values(&[*list, currency.as_str()]).set(money.open_pipeline);
                self.won_revenue.with_label_values(&[*list, currency.as_str()]).set(money.won_revenue);
            }
            self.win_rate.with_label_values(&[list]).set(value(figures.opportunities.win_rate));
        }
        for window in &report.all.alerts.windows {
            self.alert_conversion.with_label_values(&[&window.days.to_string()]).set(value(window.rate));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::TalEntry;

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
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
