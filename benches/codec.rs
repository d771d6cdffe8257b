//! Avro codec throughput: records encoded and decoded per second on one core.
//!
//!     deploy/local/bench.sh codec

use std::hint::black_box;
use std::time::Instant;

use abm_schemas::{AccountState, Contact, EngagementEvent, EventKind, WebVisit};
use fixed::state_record;

/// A typical account state as a fixed record (5 rules, 4 contacts, 20 window events, 5 recent
/// events, 30 seen ids), the same since the first figures in benches/README.md so runs compare;
/// the scorer's own encoder is measured from real states in `scorer_state.rs`.
mod fixed {
    use abm_schemas::*;

    pub fn state_record() -> AccountState {
        AccountState {
            account_id: "acc-00042".into(),
            tier: Tier::Tier2,
            as_of: Some(1_700_000_000_000),
            engagement: 87.5,
            rule_points: ["pricing_page", "web_visit", "email_click", "ad_click", "demo_request"]
                .iter()
                .map(|r| RuleContribution { rule: (*r).into(), points: 12.5 })
                .collect(),
            armed: false,
            threshold_crossings: 2,
            hand_raiser_crossings: 1,
            contacts: (0..4)
                .map(|i| EngagedContact {
                    contact_id: format!("acc-00042-c{i}"),
                    persona: "champion".into(),
                    title: Some("Director of Data Engineering".into()),
                    last_engaged_at: 1_700_000_000_000 - i,
                })
                .collect(),
            window_events: (0..20)
                .map(|i| WindowEvent { kind: EventKind::WebVisit, occurred_at: 1_700_000_000_000 - i })
                .collect(),
            cap_counts: vec![CapCount {
                contact_key: "acc-00042-c1".into(),
                rule: "web_visit".into(),
                day: 19_675,
                count: 3,
            }],
            seen_events: (0..30).map(|i| SeenEvent { id_hash: i * 7_919, applied_at: 1_700_000_000_000 }).collect(),
            recent_events: (0..5)
                .map(|i| RecentEvent {
                    event_id: format!("sim-{i}"),
                    kind: EventKind::WebVisit,
                    occurred_at: 1_700_000_000_000 - i,
                    rule: Some("pricing_page".into()),
                    points: 15.0,
                    contact_id: Some("acc-00042-c1".into()),
                    detail: "/pricing".into(),
                })
                .collect(),
            events_applied: 57,
            duplicates: 1,
            chunks: vec![],
            opportunities: vec![],
            first_applied_at: Some(1_690_000_000_000),
            stage: abm_schemas::JourneyStage::Engaged,
            stage_entered_at: Some(1_699_000_000_000),
            journey_transitions: 2,
            last_hand_raiser_at: None,
            stage_entries: vec![],
            model_version: Some("0123456789abcdef".into()),
        }
    }
}

fn event() -> EngagementEvent {
    let mut event = EngagementEvent::new("sim-123456", EventKind::WebVisit, 1_700_000_000_000, "http:site");
    event.account_id = Some("acc-00042".into());
    event.contact = Some(Contact {
        contact_id: Some("acc-00042-c3".into()),
        email: Some("dana.3@acct42.example".into()),
        title: Some("VP Finance".into()),
        persona: None,
    });
    event.web_visit = Some(WebVisit {
        url: "https://vendor.example/pricing?utm_source=linkedin".into(),
        referrer: None,
        title: None,
    });
    event
}

fn measure<T: abm_schemas::AvroRecord>(name: &str, value: &T, iterations: u32) {
    let bytes = abm_schemas::encode(value).expect("encodes");
    // Warm-up.
    for _ in 0..iterations / 10 {
        black_box(abm_schemas::encode(black_box(value)).expect("encodes"));
    }
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(abm_schemas::encode(black_box(value)).expect("encodes"));
    }
    let encode = f64::from(iterations) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(abm_schemas::decode::<T>(black_box(&bytes)).expect("decodes"));
    }
    let decode = f64::from(iterations) / started.elapsed().as_secs_f64();
    println!(
        "codec {name:<16} {:>5} bytes: encode {:>9.0} records/s ({:.2} µs), decode {:>9.0} records/s ({:.2} µs)",
        bytes.len(),
        encode,
        1e6 / encode,
        decode,
        1e6 / decode
    );
}

fn main() {
    let iterations = std::env::var("BENCH_CODEC_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    measure("EngagementEvent", &event(), iterations);
    measure::<AccountState>("AccountState", &state_record(), iterations / 4);
}
