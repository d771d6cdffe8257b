//! The program metrics (README, "Program metrics") recomputed from what a test knows of each
//! account, in `GET /v1/program`'s shape: one recomputation for the scorer's tests and the
//! end-to-end test, written from the definitions, not from the scorer's code.

use abm_schemas::{CrossingKind, JourneyStage, OpportunityStage, OpportunityState, SalesAlert, Tier};

const DAY_MS: i64 = 86_400_000;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

impl Truth {
    /// A TAL account without events.
    pub fn unaware(tier: Tier, committee: Vec<String>) -> Truth {
        Truth {
            tier,
            on_tal: true,
            committee,
            stage: JourneyStage::Unaware,
            transitions: vec![],
            contacts: vec![],
            deals: vec![],
            first_applied_at: None,
            alerts: vec![],
        }
    }
}

/// An alert as the alerter publishes it, with what the program reads of it: `alert_id`,
/// `account_id`, `kind`, `as_of` (the rest plain).
pub fn sales_alert(alert_id: &str, account_id: &str, kind: CrossingKind, as_of: i64) -> SalesAlert {
    SalesAlert {
        alert_id: alert_id.into(),
        crossing_id: alert_id.into(),
        account_id: account_id.into(),
        account_name: account_id.into(),
        tier: Tier::Tier1,
        owner: "sdr@vendor.example".into(),
        kind,
        score: 60.0,
        threshold: 50.0,
        as_of,
        top_rules: vec![],
        contacts: vec![],
        recent_events: vec![],
        next_step: String::new(),
        coverage: None,
        model_version: None,
    }
}

/// The whole report at `at`: every account, TAL and non-TAL, each tier; only `tier`'s
/// accounts (and tier) when given.
pub fn report(accounts: &[Truth], at: i64, tier: Option<Tier>) -> serde_json::Value {
    let chosen: Vec<&Truth> = accounts.iter().filter(|t| tier.is_none_or(|wanted| t.tier == wanted)).collect();
    let pick = |keep: &dyn Fn(&Truth) -> bool| -> Vec<&Truth> { chosen.iter().copied().filter(|t| keep(t)).collect() };
    let mut expected = serde_json::json!({
        "at": at,
        "tier": tier.map(|t| t.as_str()),
        "all": figures(&chosen, at),
        "tal": figures(&pick(&|t| t.on_tal), at),
        "non_tal": figures(&pick(&|t| !t.on_tal), at),
        "tiers": {},
    });
    for each in Tier::ALL {
        if tier.is_none_or(|wanted| wanted == each) {
            expected["tiers"][each.as_str()] = figures(&pick(&|t| t.tier == each), at);
        }
    }
    expected
}

/// What a test knows of one account from its own recomputation: the journey as its list of
/// transitions, the contacts and deals the state keeps, the alerts it got.
#[derive(Debug, Clone)]
pub struct Truth {
    pub tier: Tier,
    pub on_tal: bool,
    pub committee: Vec<String>,
    pub stage: JourneyStage,
    /// (to, at) of each transition, in order (the n-th has sequence n).
    pub transitions: Vec<(JourneyStage, i64)>,
    pub contacts: Vec<(String, i64)>,
    pub deals: Vec<OpportunityState>,
    pub first_applied_at: Option<i64>,
    pub alerts: Vec<i64>,
}

fn median_of(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return serde_json::Value::Null;
    }
    serde_json::json!(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

fn share(part: usize, whole: usize) -> serde_json::Value {
    if whole == 0 { serde_json::Value::Null } else { serde_json::json!(part as f64 / whole as f64) }
}

/// The README's program figures for `accounts` at `at`, recomputed from the transitions (not
/// from stage entries, as the scorer keeps them), in the API's shape.
pub fn figures(accounts: &[&Truth], at: i64) -> serde_json::Value {
    let engaged_at = |t: i64| t > at - 30 * DAY_MS && t <= at;
    let engaged = |a: &&&Truth| a.contacts.iter().any(|(_, t)| engaged_at(*t));
    let tal = accounts.iter().filter(|a| a.on_tal).count();
    let engaged_tal = accounts.iter().filter(|a| a.on_tal).filter(engaged).count();
    let coverage: f64 = {
        let mut ratios: Vec<f64> = accounts
            .iter()
            .map(|a| {
                let covered = a
                    .committee
                    .iter()
                    .filter(|p| a.contacts.iter().any(|(persona, t)| persona == *p && engaged_at(*t)))
                    .count();
                if a.committee.is_empty() { 1.0 } else { covered as f64 / a.committee.len() as f64 }
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.iter().fold(0.0, |total, x| total + x)
    };
    let by_stage: serde_json::Map<String, serde_json::Value> = JourneyStage::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), serde_json::json!(accounts.iter().filter(|a| a.stage == *s).count())))
        .collect();
    let conversion: Vec<serde_json::Value> = JourneyStage::ALL[1..5]
        .iter()
        .map(|stage| {
            let next = JourneyStage::ALL[*stage as usize + 1];
            let first = |a: &Truth, s: JourneyStage| a.transitions.iter().position(|(to, _)| *to == s);
            let entered: Vec<&&Truth> = accounts.iter().filter(|a| first(a, *stage).is_some()).collect();
            let converted = entered
                .iter()
                .filter(|a| {
                    let i = first(a, *stage).unwrap_or(0);
                    a.transitions[i + 1..].iter().any(|(to, _)| to > stage)
                })
                .count();
            let days: Vec<f64> = entered
                .iter()
                .filter_map(|a| {
                    let (i, j) = (first(a, *stage)?, first(a, next)?);
                    (j > i).then(|| (a.transitions[j].1 - a.transitions[i].1) as f64 / DAY_MS as f64)
                })
                .collect();
            serde_json::json!({
                "stage": stage.as_str(),
                "entered": entered.len(),
                "converted": converted,
                "rate": share(converted, entered.len()),
                "next": next.as_str(),
                "next_accounts": days.len(),
                "median_days_to_next": median_of(days),
            })
        })
        .collect();
    let deals = || accounts.iter().flat_map(|a| a.deals.iter());
    let count = |stage: OpportunityStage| deals().filter(|d| d.stage == stage).count();
    let (won, lost) = (count(OpportunityStage::ClosedWon), count(OpportunityStage::ClosedLost));
    let amount = |stage: OpportunityStage, currency: &str| {
        let mut amounts: Vec<f64> =
            deals().filter(|d| d.stage == stage && d.currency == currency).map(|d| d.amount).collect();
        amounts.sort_by(f64::total_cmp);
        amounts.iter().fold(0.0, |total, x| total + x)
    };
    let days_to_won: Vec<f64> = accounts
        .iter()
        .filter_map(|a| {
            let won = a.deals.iter().filter(|d| d.stage == OpportunityStage::ClosedWon).map(|d| d.updated_at).min()?;
            Some((won - a.first_applied_at?) as f64 / DAY_MS as f64)
        })
        .collect();
    let mut alerts = 0;
    let mut windows = [(0, 0), (0, 0)];
    let mut to_opportunity = Vec::new();
    for a in accounts {
        for alert in a.alerts.iter().filter(|t| **t <= at) {
            alerts += 1;
            let created: Vec<i64> = a.deals.iter().map(|d| d.created_at).filter(|t| t >= alert).collect();
            for (i, days) in [30, 90].into_iter().enumerate() {
                let end = alert + days * DAY_MS;
                if end <= at {
                    windows[i].0 += 1;
                    windows[i].1 += usize::from(created.iter().any(|t| *t <= end));
                }
            }
            if let Some(first) = created.iter().filter(|t| **t <= at).min() {
                to_opportunity.push((first - alert) as f64 / DAY_MS as f64);
            }
        }
    }
    let mut figures = serde_json::json!({
        "accounts": accounts.len(),
        "tal_accounts": tal,
        "engaged": accounts.iter().filter(engaged).count(),
        "engaged_tal_accounts": engaged_tal,
        "engagement_rate": share(engaged_tal, tal),
        "mean_coverage": if accounts.is_empty() { serde_json::Value::Null } else { serde_json::json!(coverage / accounts.len() as f64) },
        "accounts_by_stage": by_stage,
        "conversion": conversion,
        "opportunities": {
            "by_currency": {},
            "open": count(OpportunityStage::Open),
            "won": won,
            "lost": lost,
            "win_rate": share(won, won + lost),
            "won_accounts": days_to_won.len(),
            "median_days_to_won": median_of(days_to_won),
        },
        "alerts": {
            "alerts": alerts,
            "windows": [
                {"days": 30, "matured": windows[0].0, "followed": windows[0].1, "rate": share(windows[0].1, windows[0].0)},
                {"days": 90, "matured": windows[1].0, "followed": windows[1].1, "rate": share(windows[1].1, windows[1].0)},
            ],
            "followed": to_opportunity.len(),
            "median_days_to_opportunity": median_of(to_opportunity),
        },
    });
    let currencies: std::collections::BTreeSet<&str> = deals().map(|d| d.currency.as_str()).collect();
    for currency in currencies {
        let won = deals().filter(|d| d.stage == OpportunityStage::ClosedWon && d.currency == currency).count();
        let revenue = amount(OpportunityStage::ClosedWon, currency);
        figures["opportunities"]["by_currency"][currency] = serde_json::json!({
            "open_pipeline": amount(OpportunityStage::Open, currency),
            "won_revenue": revenue,
            "won": won,
            "mean_won_deal": if won == 0 { serde_json::Value::Null } else { serde_json::json!(revenue / won as f64) },
        });
    }
    figures
}

/// The first leaf of `expected` that is not in `got` at the same path (numbers within 1e-9).
pub fn mismatch(got: &serde_json::Value, expected: &serde_json::Value, path: &str) -> Option<String> {
    match (got, expected) {
        (serde_json::Value::Object(got), serde_json::Value::Object(expected)) => {
            // Both ways: a key the answer has and the recomputation does not (an extra tier, a
            // currency) is a mismatch too.
            if let Some(extra) = got.keys().find(|key| !expected.contains_key(*key)) {
                return Some(format!("{path}.{extra}: not expected"));
            }
            expected.iter().find_map(|(key, value)| {
                let at = format!("{path}.{key}");
                match got.get(key) {
                    None => Some(format!("{at} missing")),
                    Some(got) => mismatch(got, value, &at),
                }
            })
        }
        (serde_json::Value::Array(got), serde_json::Value::Array(expected)) if got.len() == expected.len() => {
            got.iter().zip(expected).enumerate().find_map(|(i, (g, e))| mismatch(g, e, &format!("{path}[{i}]")))
        }
        (serde_json::Value::Number(g), serde_json::Value::Number(e)) => {
            let (g, e) = (g.as_f64().unwrap_or(f64::NAN), e.as_f64().unwrap_or(f64::NAN));
            (!close(g, e)).then(|| format!("{path}: {g} vs {e}"))
        }
        _ => (got != expected).then(|| format!("{path}: {got} vs {expected}")),
    }
}
