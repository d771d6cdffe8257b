//! Codec tests: round trip of every record, schema evolution both ways, bad bytes.

use abm_schemas::codec::{SINGLE_OBJECT_HEADER_LEN, fingerprint, split_header};
use abm_schemas::*;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn sample_rules() -> Vec<RuleContribution> {
    vec![
        RuleContribution { rule: "pricing_page".into(), points: 28.5 },
        RuleContribution { rule: "email_unsubscribe".into(), points: -7.25 },
    ]
}

fn sample_contacts() -> Vec<EngagedContact> {
    vec![
        EngagedContact {
            contact_id: "c-1".into(),
            persona: "economic_buyer".into(),
            title: Some("CFO".into()),
            last_engaged_at: 1_700_000_000_000,
        },
        EngagedContact { contact_id: "c-2".into(), persona: "unknown".into(), title: None, last_engaged_at: 1 },
    ]
}

fn sample_recent() -> Vec<RecentEvent> {
    vec![RecentEvent {
        event_id: "e-9".into(),
        kind: EventKind::DemoRequest,
        occurred_at: 1_700_000_000_123,
        rule: Some("demo_request".into()),
        points: 75.0,
        contact_id: None,
        detail: "form: contact-sales".into(),
    }]
}

fn sample_coverage() -> CommitteeCoverage {
    CommitteeCoverage {
        required: vec!["economic_buyer".into(), "champion".into()],
        covered: vec!["champion".into()],
        missing: vec!["economic_buyer".into()],
        ratio: 0.5,
    }
}

fn sample_account() -> Account {
    Account {
        account_id: "acc-42".into(),
        name: "Acme Corp".into(),
        domains: vec!["acme.com".into(), "acme.io".into()],
        tier: Tier::Tier2,
        owner: "sdr@vendor.example".into(),
        industry: Some("Manufacturing".into()),
        employees: Some(1200),
        committee: None,
        updated_at: 1_700_000_000_000,
    }
}

fn full_event() -> EngagementEvent {
    let mut event = EngagementEvent::new("e-1", EventKind::WebVisit, 1_700_000_000_000, "http:site");
    event.received_at = 1_700_000_000_050;
    event.account_id = Some("acc-42".into());
    event.domain = Some("acme.com".into());
    event.contact = Some(Contact {
        contact_id: Some("c-1".into()),
        email: Some("jane@acme.com".into()),
        title: Some("VP Finance".into()),
        persona: Some("economic_buyer".into()),
    });
    event.web_visit = Some(WebVisit {
        url: "https://vendor.example/pricing?x=1".into(),
        referrer: Some("https://google.com".into()),
        title: None,
    });
    event.ad_click = Some(AdClick { channel: "linkedin".into(), campaign: Some("q4".into()), creative: None });
    event.email = Some(EmailEvent { action: EmailAction::Unsubscribe, campaign: None });
    event.demo_request = Some(DemoRequest { form: "contact-sales".into() });
    event.content_download = Some(ContentDownload { asset: "whitepaper.pdf".into() });
    event.webinar = Some(Webinar { webinar_id: "w-1".into(), action: "attended".into() });
    event.meeting = Some(Meeting { meeting_id: "m-1".into() });
    event.intent = Some(Intent { topic: "data pipelines".into(), strength: 0.83 });
    event.opportunity = Some(Opportunity {
        opportunity_id: "opp-1".into(),
        stage: OpportunityStage::ClosedWon,
        stage_name: Some("Closed Won".into()),
        amount: 48_000.5,
        currency: "EUR".into(),
    });
    event
}

fn sample_state() -> AccountState {
    AccountState {
        account_id: "acc-42".into(),
        tier: Tier::Tier1,
        as_of: Some(1_700_000_000_000),
        engagement: 123.456,
        rule_points: sample_rules(),
        armed: false,
        threshold_crossings: 3,
        hand_raiser_crossings: 1,
        contacts: sample_contacts(),
        window_events: vec![WindowEvent { kind: EventKind::Email, occurred_at: 1_699_999_000_000 }],
        cap_counts: vec![CapCount { contact_key: "c-1".into(), rule: "web_visit".into(), day: 19_675, count: 2 }],
        seen_events: vec![SeenEvent { id_hash: -42, applied_at: 5 }],
        recent_events: sample_recent(),
        events_applied: 10,
        duplicates: 2,
        chunks: vec![],
        opportunities: vec![OpportunityState {
            opportunity_id: "opp-1".into(),
            stage: OpportunityStage::Open,
            stage_name: None,
            amount: 12_000.0,
            currency: "USD".into(),
            created_at: 1_699_000_000_000,
            updated_at: 1_699_500_000_000,
        }],
        first_applied_at: Some(1_690_000_000_000),
        stage: JourneyStage::Opportunity,
        stage_entered_at: Some(1_699_500_000_000),
        journey_transitions: 4,
        last_hand_raiser_at: Some(1_699_400_000_000),
        stage_entries: sample_stage_entries(),
        model_version: None,
    }
}

fn sample_stage_entries() -> Vec<StageEntry> {
    vec![
        StageEntry {
            stage: JourneyStage::Aware,
            first_entered_at: 1_690_000_000_000,
            first_sequence: 1,
            last_sequence: 3,
        },
        StageEntry {
            stage: JourneyStage::Opportunity,
            first_entered_at: 1_699_500_000_000,
            first_sequence: 4,
            last_sequence: 4,
        },
    ]
}

/// Encodes, checks the header names the record's schema, decodes, and compares.
fn check_round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(value: T) {
    let bytes = encode(&value).expect("encodes");
    assert_eq!(&bytes[..2], &[0xC3, 0x01], "single-object magic");
    let (writer, _) = split_header(&bytes).expect("header");
    assert_eq!(writer, WriterId::Fingerprint(T::codec().fingerprint()));
    let back: T = decode(&bytes).expect("decodes");
    assert_eq!(back, value);
}

#[test]
fn every_record_round_trips() {
    check_round_trip(sample_account());
    check_round_trip(Account {
        industry: None,
        employees: None,
        committee: None,
        domains: vec![],
        tier: Tier::Untiered,
        ..sample_account()
    });
    check_round_trip(Account { committee: Some(vec!["economic_buyer".into(), "legal".into()]), ..sample_account() });
    check_round_trip(full_event());
    check_round_trip(EngagementEvent::new("e-2", EventKind::Intent, -5, "kafka:abm.raw.web-visits"));
    for kind in EventKind::ALL {
        check_round_trip(EngagementEvent::new("e", kind, 0, "s"));
    }
    check_round_trip(RejectedEvent {
        reason: RejectReason::TooFarInFuture,
        message: "occurred_at is 3 days in the future".into(),
        source: RejectSource {
            transport: Transport::Kafka,
            write_key: None,
            batch_index: None,
            topic: Some("abm.raw.ad-clicks".into()),
            partition: Some(3),
            offset: Some(1 << 40),
        },
        event_id: Some("e-7".into()),
        received_at: 1_700_000_000_000,
        original: vec![0, 1, 2, 255, b'{'],
    });
    check_round_trip(AccountScore {
        account_id: "acc-42".into(),
        tier: Tier::Tier3,
        score: 101.5,
        engagement: 81.2,
        breadth: 2,
        multiplier: 1.25,
        threshold: 100.0,
        armed: false,
        as_of: 1_700_000_000_000,
        events_applied: 17,
        top_rules: sample_rules(),
        coverage: Some(sample_coverage()),
        stage: JourneyStage::Mqa,
        stage_entered_at: Some(1_699_000_000_000),
        model_version: Some("3f2a9c4e5b6d7081".into()),
    });
    check_round_trip(AccountProgram {
        account_id: "acc-42".into(),
        tier: Tier::Tier2,
        as_of: Some(1_700_000_000_000),
        first_applied_at: None,
        events_applied: 9,
        stage: JourneyStage::Opportunity,
        stage_entered_at: Some(1_699_500_000_000),
        stage_entries: sample_stage_entries(),
        contacts: vec![ProgramContact { persona: "champion".into(), last_engaged_at: 1_699_900_000_000 }],
        opportunities: sample_state().opportunities,
    });
    check_round_trip(JourneyTransition {
        transition_id: "acc-42:journey:3".into(),
        account_id: "acc-42".into(),
        sequence: 3,
        tier: Tier::Tier1,
        from: JourneyStage::Engaged,
        to: JourneyStage::Mqa,
        at: 1_700_000_000_000,
        trigger_event_id: "e-9".into(),
        score: 51.5,
    });
    let crossing = ScoreCrossing {
        crossing_id: "acc-42:hand_raiser:1".into(),
        account_id: "acc-42".into(),
        kind: CrossingKind::HandRaiser,
        sequence: 1,
        tier: Tier::Tier1,
        score: 80.0,
        threshold: 50.0,
        engagement: 80.0,
        breadth: 1,
        multiplier: 1.0,
        as_of: 1_700_000_000_123,
        trigger_event_id: "e-9".into(),
        top_rules: sample_rules(),
        contacts: sample_contacts(),
        recent_events: sample_recent(),
        coverage: Some(sample_coverage()),
        model_version: Some("3f2a9c4e5b6d7081".into()),
        replayed: true,
    };
    check_round_trip(crossing.clone());
    check_round_trip(SalesAlert {
        alert_id: crossing.crossing_id.clone(),
        crossing_id: crossing.crossing_id.clone(),
        account_id: "acc-42".into(),
        account_name: "Acme Corp".into(),
        tier: Tier::Tier1,
        owner: "sdr@vendor.example".into(),
        kind: CrossingKind::HandRaiser,
        score: 80.0,
        threshold: 50.0,
        as_of: crossing.as_of,
        top_rules: sample_rules(),
        contacts: sample_contacts(),
        recent_events: sample_recent(),
        next_step: "Call within the hour".into(),
        coverage: None,
        model_version: None,
    });
    check_round_trip(sample_state());
    check_round_trip(AccountState { model_version: Some("3f2a9c4e5b6d7081".into()), ..sample_state() });
    check_round_trip(AccountState { as_of: None, contacts: vec![], ..sample_state() });
    let split = vec![
        StateChunkRef { structure: StateStructure::SeenEvents, id: -7 },
        StateChunkRef { structure: StateStructure::CapCounts, id: 1 << 60 },
    ];
    check_round_trip(AccountState { chunks: split, seen_events: vec![], cap_counts: vec![], ..sample_state() });
    let state = sample_state();
    check_round_trip(AccountStateChunk {
        account_id: "acc-42".into(),
        structure: StateStructure::SeenEvents,
        id: 99,
        window_events: state.window_events,
        cap_counts: state.cap_counts,
        seen_events: state.seen_events,
    });
}

/// Writes `value` with an older schema (leaving out the fields it does not have) and frames it
/// with that schema's fingerprint, as a message already in Kafka would be.
fn written_with_old_schema<T: serde::Serialize>(old_schema: &str, value: &T, dropped: &[&str]) -> Vec<u8> {
    let old = apache_avro::Schema::parse_str(old_schema).expect("old schema parses");
    let mut value = apache_avro::to_value(value).expect("to value");
    if let apache_avro::types::Value::Record(fields) = &mut value {
        // No schema in history/ has `model_version` or `replayed` (the values written here
        // leave them at their defaults).
        fields.retain(|(name, _)| !dropped.contains(&name.as_str()) && name != "model_version" && name != "replayed");
    }
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .expect("old writer")
        .write_value_to_vec(value)
        .expect("old datum");
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint(&old).to_le_bytes());
    bytes.extend_from_slice(&datum);
    bytes
}

/// The fields AccountState v3 added (opportunities and the journey).
const ADDED_IN_STATE_V3: [&str; 6] =
    ["opportunities", "first_applied_at", "stage", "stage_entered_at", "journey_transitions", "last_hand_raiser_at"];

/// [`sample_state`] with the v3 fields at their defaults: what an older state reads as.
fn sample_state_before_v3() -> AccountState {
    AccountState {
        opportunities: vec![],
        first_applied_at: None,
        stage: JourneyStage::Unaware,
        stage_entered_at: None,
        journey_transitions: 0,
        last_hand_raiser_at: None,
        stage_entries: vec![],
        ..sample_state()
    }
}

/// Records written before scoring models had versions (AccountState v4, AccountScore,
/// ScoreCrossing and SalesAlert v2) read with no version.
#[test]
fn records_written_before_model_versions_still_decode() {
    let state = sample_state();
    let bytes = written_with_old_schema(include_str!("../avro/history/account_state.v4.avsc"), &state, &[]);
    assert_eq!(decode::<AccountState>(&bytes).expect("v4 state decodes"), state);
    let score = AccountScore {
        account_id: "acc-42".into(),
        tier: Tier::Tier2,
        score: 80.0,
        engagement: 64.0,
        breadth: 2,
        multiplier: 1.25,
        threshold: 75.0,
        armed: false,
        as_of: 5,
        events_applied: 3,
        top_rules: sample_rules(),
        coverage: Some(sample_coverage()),
        stage: JourneyStage::Mqa,
        stage_entered_at: Some(5),
        model_version: None,
    };
    let bytes = written_with_old_schema(include_str!("../avro/history/account_score.v2.avsc"), &score, &[]);
    assert_eq!(decode::<AccountScore>(&bytes).expect("v2 score decodes"), score);
    let crossing = ScoreCrossing {
        crossing_id: "acc-42:threshold:1".into(),
        account_id: "acc-42".into(),
        kind: CrossingKind::Threshold,
        sequence: 1,
        tier: Tier::Tier2,
        score: 80.0,
        threshold: 75.0,
        engagement: 64.0,
        breadth: 2,
        multiplier: 1.25,
        as_of: 5,
        trigger_event_id: "e-1".into(),
        top_rules: sample_rules(),
        contacts: sample_contacts(),
        recent_events: sample_recent(),
        coverage: None,
        model_version: None,
        replayed: false,
    };
    let bytes = written_with_old_schema(include_str!("../avro/history/score_crossing.v2.avsc"), &crossing, &[]);
    assert_eq!(decode::<ScoreCrossing>(&bytes).expect("v2 crossing decodes"), crossing);
    let alert = SalesAlert {
        alert_id: crossing.crossing_id.clone(),
        crossing_id: crossing.crossing_id.clone(),
        account_id: "acc-42".into(),
        account_name: "Acme Corp".into(),
        tier: Tier::Tier2,
        owner: "sdr@vendor.example".into(),
        kind: CrossingKind::Threshold,
        score: 80.0,
        threshold: 75.0,
        as_of: 5,
        top_rules: sample_rules(),
        contacts: sample_contacts(),
        recent_events: sample_recent(),
        next_step: "Start the 1:few sequence".into(),
        coverage: Some(sample_coverage()),
        model_version: None,
    };
    let bytes = written_with_old_schema(include_str!("../avro/history/sales_alert.v2.avsc"), &alert, &[]);
    assert_eq!(decode::<SalesAlert>(&bytes).expect("v2 alert decodes"), alert);
}

/// A state written before stage entries (AccountState v3) reads with none.
#[test]
fn states_written_before_stage_entries_still_decode() {
    let state = AccountState { stage_entries: vec![], ..sample_state() };
    let bytes =
        written_with_old_schema(include_str!("../avro/history/account_state.v3.avsc"), &state, &["stage_entries"]);
    assert_eq!(decode::<AccountState>(&bytes).expect("v3 state decodes"), state);
}

/// Messages written before the `opportunity` kind (EngagementEvent v1, AccountState v2, the
/// chunk v1) still decode: with no opportunity, no opportunities and no first applied time.
#[test]
fn records_written_before_opportunities_still_decode() {
    let mut event = full_event();
    event.opportunity = None;
    let bytes =
        written_with_old_schema(include_str!("../avro/history/engagement_event.v1.avsc"), &event, &["opportunity"]);
    assert_eq!(decode::<EngagementEvent>(&bytes).expect("v1 event decodes"), event);

    let state = sample_state_before_v3();
    let bytes = written_with_old_schema(
        include_str!("../avro/history/account_state.v2.avsc"),
        &state,
        &[&ADDED_IN_STATE_V3[..], &["stage_entries"]].concat(),
    );
    assert_eq!(decode::<AccountState>(&bytes).expect("v2 state decodes"), state);

    let chunk = AccountStateChunk {
        account_id: "acc-42".into(),
        structure: StateStructure::WindowEvents,
        id: 7,
        window_events: state.window_events.clone(),
        cap_counts: vec![],
        seen_events: vec![],
    };
    let bytes = written_with_old_schema(include_str!("../avro/history/account_state_chunk.v1.avsc"), &chunk, &[]);
    assert_eq!(decode::<AccountStateChunk>(&bytes).expect("v1 chunk decodes"), chunk);
}

/// Records written before committee coverage (Account v1, AccountScore v1) still decode: no
/// committee override, no coverage.
#[test]
fn records_written_before_committee_coverage_still_decode() {
    let account = sample_account();
    let bytes = written_with_old_schema(include_str!("../avro/history/account.v1.avsc"), &account, &["committee"]);
    assert_eq!(decode::<Account>(&bytes).expect("v1 account decodes"), account);
    let score = AccountScore {
        account_id: "acc-1".into(),
        tier: Tier::Tier1,
        score: 1.0,
        engagement: 1.0,
        breadth: 1,
        multiplier: 1.0,
        threshold: 50.0,
        armed: true,
        as_of: 5,
        events_applied: 1,
        top_rules: sample_rules(),
        coverage: None,
        stage: JourneyStage::Unaware,
        stage_entered_at: None,
        model_version: None,
    };
    let bytes = written_with_old_schema(
        include_str!("../avro/history/account_score.v1.avsc"),
        &score,
        &["coverage", "stage", "stage_entered_at"],
    );
    assert_eq!(decode::<AccountScore>(&bytes).expect("v1 score decodes"), score);
}

/// An AccountState written before chunks existed reads as an unsplit state.
#[test]
fn account_state_v1_reads_as_unsplit() {
    let mut state = sample_state_before_v3();
    let bytes = written_with_old_schema(
        include_str!("../avro/history/account_state.v1.avsc"),
        &state,
        &[&["chunks"][..], &ADDED_IN_STATE_V3, &["stage_entries"]].concat(),
    );
    state.chunks = vec![];
    assert_eq!(decode::<AccountState>(&bytes).expect("v1 decodes"), state);
}

#[test]
fn fingerprints_are_distinct_and_match_the_avsc_files() {
    let fingerprints = [
        JourneyTransition::codec().fingerprint(),
        AccountProgram::codec().fingerprint(),
        Account::codec().fingerprint(),
        EngagementEvent::codec().fingerprint(),
        RejectedEvent::codec().fingerprint(),
        AccountScore::codec().fingerprint(),
        ScoreCrossing::codec().fingerprint(),
        SalesAlert::codec().fingerprint(),
        AccountState::codec().fingerprint(),
        AccountStateChunk::codec().fingerprint(),
    ];
    let unique: std::collections::HashSet<_> = fingerprints.iter().collect();
    assert_eq!(unique.len(), fingerprints.len());
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/avro/account.avsc")).expect("avsc");
    let parsed = apache_avro::Schema::parse_str(&on_disk).expect("parses");
    assert_eq!(fingerprint(&parsed), Account::codec().fingerprint());
}

// ---- schema evolution -------------------------------------------------------------------

/// Version 2 of `Account`: a new field with a default, and a new enum symbol.
const ACCOUNT_V2: &str = r#"{
  "type": "record", "name": "Account", "namespace": "abm",
  "fields": [
    {"name": "account_id", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "domains", "type": {"type": "array", "items": "string"}},
    {"name": "tier", "type": {"type": "enum", "name": "Tier",
      "symbols": ["untiered", "tier_1", "tier_2", "tier_3", "strategic"], "default": "untiered"}},
    {"name": "owner", "type": "string"},
    {"name": "industry", "type": ["null", "string"], "default": null},
    {"name": "employees", "type": ["null", "int"], "default": null},
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "region", "type": "string", "default": "unknown"}
  ]
}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TierV2 {
    Untiered,
    #[serde(rename = "tier_1")]
    Tier1,
    #[serde(rename = "tier_2")]
    Tier2,
    #[serde(rename = "tier_3")]
    Tier3,
    Strategic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AccountV2 {
    account_id: String,
    name: String,
    domains: Vec<String>,
    tier: TierV2,
    owner: String,
    industry: Option<String>,
    employees: Option<i32>,
    updated_at: i64,
    region: String,
}

#[test]
fn old_reader_reads_new_writer() {
    let new_writer: Codec<AccountV2> = Codec::new(ACCOUNT_V2, &[]).expect("v2 codec");
    let old_reader: Codec<Account> = Codec::new(Account::SCHEMA_JSON, &[ACCOUNT_V2]).expect("v1 reader knowing v2");
    let written = AccountV2 {
        account_id: "acc-1".into(),
        name: "Initech".into(),
        domains: vec!["initech.com".into()],
        tier: TierV2::Strategic,
        owner: "o".into(),
        industry: None,
        employees: Some(7),
        updated_at: 99,
        region: "emea".into(),
    };
    let bytes = new_writer.encode(&written).expect("encodes");
    let read = old_reader.decode(&bytes).expect("old reader resolves v2");
    assert_eq!(read.tier, Tier::Untiered, "unknown symbol falls back to the enum default");
    assert_eq!(read.account_id, "acc-1");
    assert_eq!(read.employees, Some(7));
    assert_eq!(read.updated_at, 99);

    // A known symbol keeps its meaning across versions.
    let bytes = new_writer.encode(&AccountV2 { tier: TierV2::Tier3, ..written }).expect("encodes");
    assert_eq!(old_reader.decode(&bytes).expect("decodes").tier, Tier::Tier3);
}

#[test]
fn new_reader_reads_old_writer() {
    let new_reader: Codec<AccountV2> = Codec::new(ACCOUNT_V2, &[Account::SCHEMA_JSON]).expect("v2 reader knowing v1");
    let bytes = encode(&sample_account()).expect("encodes");
    let read = new_reader.decode(&bytes).expect("new reader resolves v1");
    assert_eq!(read.region, "unknown", "added field takes its default");
    assert_eq!(read.tier, TierV2::Tier2);
    assert_eq!(read.name, "Acme Corp");
}

#[test]
fn a_version_the_reader_was_not_told_about_is_a_typed_error() {
    let new_writer: Codec<AccountV2> = Codec::new(ACCOUNT_V2, &[]).expect("v2 codec");
    let bytes = new_writer
        .encode(&AccountV2 {
            account_id: "a".into(),
            name: "n".into(),
            domains: vec![],
            tier: TierV2::Tier1,
            owner: "o".into(),
            industry: None,
            employees: None,
            updated_at: 0,
            region: "r".into(),
        })
        .expect("encodes");
    match decode::<Account>(&bytes) {
        Err(DecodeError::UnknownSchema { record, fingerprint }) => {
            assert_eq!(record, "abm.Account");
            assert_eq!(fingerprint, new_writer.fingerprint());
        }
        other => panic!("expected UnknownSchema, got {other:?}"),
    }
}

#[test]
fn an_incompatible_version_is_refused_when_the_codec_is_built() {
    // A new required field without a default cannot be read from old data.
    let incompatible = ACCOUNT_V2.replace(r#""type": "string", "default": "unknown""#, r#""type": "string""#);
    let result: Result<Codec<AccountV2>, _> = Codec::new(&incompatible, &[Account::SCHEMA_JSON]);
    // Either the build or the first decode must fail; the build is where we want it.
    if let Ok(codec) = result {
        let bytes = encode(&sample_account()).expect("encodes");
        assert!(codec.decode(&bytes).is_err(), "old data cannot fill a field without default");
    }
}

// ---- bad bytes --------------------------------------------------------------------------

#[test]
fn truncated_garbage_and_wrong_schema_bytes_are_typed_errors() {
    let bytes = encode(&full_event()).expect("encodes");
    for cut in 0..bytes.len() {
        let error = decode::<EngagementEvent>(&bytes[..cut]).expect_err("a cut message cannot decode");
        if cut < SINGLE_OBJECT_HEADER_LEN {
            assert!(matches!(error, DecodeError::Truncated { .. }), "cut {cut}: {error:?}");
        } else {
            assert!(matches!(error, DecodeError::Malformed { .. }), "cut {cut}: {error:?}");
        }
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(decode::<EngagementEvent>(&trailing), Err(DecodeError::TrailingBytes { trailing: 1, .. })));

    assert!(matches!(decode::<EngagementEvent>(b"{\"kind\":\"web_visit\"}"), Err(DecodeError::BadMagic { .. })));
    assert!(matches!(
        decode::<EngagementEvent>(&[0, 0, 0, 0, 42, 2, 4]),
        Err(DecodeError::RegistryFramed { schema_id: 42 })
    ));
    // Right framing, other record: the fingerprint does not belong to EngagementEvent.
    let account = encode(&sample_account()).expect("encodes");
    assert!(matches!(decode::<EngagementEvent>(&account), Err(DecodeError::UnknownSchema { .. })));
}

#[test]
fn a_huge_length_prefix_does_not_allocate_or_panic() {
    // Header of EngagementEvent, then a string length of ~2^62 (zig-zag varint).
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&EngagementEvent::codec().fingerprint().to_le_bytes());
    bytes.extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert!(matches!(decode::<EngagementEvent>(&bytes), Err(DecodeError::Malformed { .. })));
}

fn with_header<T: AvroRecord>(datum: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&T::codec().fingerprint().to_le_bytes());
    bytes.extend_from_slice(datum);
    bytes
}

fn text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn maybe_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

/// Any `EngagementEvent`, every optional part present or not.
fn any_event() -> impl Strategy<Value = EngagementEvent> {
    let head = (text(), 0usize..EventKind::ALL.len(), any::<i64>(), any::<i64>(), text(), maybe_text(), maybe_text());
    let contact = proptest::option::of(
        (maybe_text(), maybe_text(), maybe_text(), maybe_text())
            .prop_map(|(contact_id, email, title, persona)| Contact { contact_id, email, title, persona }),
    );
    let visit =
        proptest::option::of((text(), maybe_text(), maybe_text()).prop_map(|(url, referrer, title)| WebVisit {
            url,
            referrer,
            title,
        }));
    let ad =
        proptest::option::of((text(), maybe_text(), maybe_text()).prop_map(|(channel, campaign, creative)| AdClick {
            channel,
            campaign,
            creative,
        }));
    let email = proptest::option::of(
        (0..EmailAction::ALL.len(), maybe_text())
            .prop_map(|(action, campaign)| EmailEvent { action: EmailAction::ALL[action], campaign }),
    );
    let rest = (
        proptest::option::of(text().prop_map(|form| DemoRequest { form })),
        proptest::option::of(text().prop_map(|asset| ContentDownload { asset })),
        proptest::option::of((text(), text()).prop_map(|(webinar_id, action)| Webinar { webinar_id, action })),
        proptest::option::of(text().prop_map(|meeting_id| Meeting { meeting_id })),
        proptest::option::of(
            (text(), any::<f64>().prop_filter("NaN never equals itself", |x| !x.is_nan()))
                .prop_map(|(topic, strength)| Intent { topic, strength }),
        ),
        proptest::option::of(
            (
                text(),
                0..OpportunityStage::ALL.len(),
                maybe_text(),
                any::<f64>().prop_filter("NaN", |x| !x.is_nan()),
                text(),
            )
                .prop_map(|(opportunity_id, stage, stage_name, amount, currency)| Opportunity {
                    opportunity_id,
                    stage: OpportunityStage::ALL[stage],
                    stage_name,
                    amount,
                    currency,
                }),
        ),
    );
    (head, contact, visit, ad, email, rest).prop_map(
        |(
            (event_id, kind, occurred_at, received_at, source, account_id, domain),
            contact,
            web_visit,
            ad_click,
            email,
            r,
        )| {
            EngagementEvent {
                event_id,
                kind: EventKind::ALL[kind],
                occurred_at,
                received_at,
                source,
                account_id,
                domain,
                contact,
                web_visit,
                ad_click,
                email,
                demo_request: r.0,
                content_download: r.1,
                webinar: r.2,
                meeting: r.3,
                intent: r.4,
                opportunity: r.5,
            }
        },
    )
}

/// The direct decoder (behind `decode`) and the codec agree: both fail, or both give the same
/// event (compared by re-encoding, so that a NaN strength compares equal to itself).
fn same_as_codec(bytes: &[u8]) -> Result<(), TestCaseError> {
    same_as_codec_for::<EngagementEvent>(bytes)
}

fn same_as_codec_for<T: AvroRecord + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let direct = decode::<T>(bytes);
    let codec = decode_with_codec::<T>(bytes);
    match (direct, codec) {
        (Ok(a), Ok(b)) => prop_assert_eq!(encode(&a).expect("encodes"), encode(&b).expect("encodes")),
        (Err(_), Err(_)) => {}
        (a, b) => prop_assert!(false, "direct {a:?} vs codec {b:?}"),
    }
    Ok(())
}

/// Any `AccountState` the schema can hold (short arrays, every field drawn).
fn any_state() -> impl Strategy<Value = AccountState> {
    use proptest::collection::vec;
    use proptest::option::of;
    let head = (
        text(),
        0..Tier::ALL.len(),
        of(any::<i64>()),
        any::<f64>(),
        vec((text(), any::<f64>()), 0..3),
        any::<bool>(),
        any::<i64>(),
        any::<i64>(),
    );
    let windows = (
        vec((text(), text(), of(text()), any::<i64>()), 0..3),
        vec((0..EventKind::ALL.len(), any::<i64>()), 0..3),
        vec((text(), text(), any::<i32>(), any::<i32>()), 0..3),
        vec((any::<i64>(), any::<i64>()), 0..3),
    );
    let recent = (
        vec((text(), 0..EventKind::ALL.len(), any::<i64>(), of(text()), any::<f64>(), of(text()), text()), 0..3),
        any::<i64>(),
        any::<i64>(),
        vec((0..StateStructure::ALL.len(), any::<i64>()), 0..2),
        vec(
            (text(), 0..OpportunityStage::ALL.len(), of(text()), any::<f64>(), text(), any::<i64>(), any::<i64>()),
            0..2,
        ),
    );
    let journey = (
        of(any::<i64>()),
        0..JourneyStage::ALL.len(),
        of(any::<i64>()),
        any::<i64>(),
        of(any::<i64>()),
        vec((0..JourneyStage::ALL.len(), any::<i64>(), any::<i64>(), any::<i64>()), 0..3),
        of(text()),
    );
    (head, windows, recent, journey).prop_map(|(h, w, r, j)| AccountState {
        account_id: h.0,
        tier: Tier::ALL[h.1],
        as_of: h.2,
        engagement: h.3,
        rule_points: h.4.into_iter().map(|(rule, points)| RuleContribution { rule, points }).collect(),
        armed: h.5,
        threshold_crossings: h.6,
        hand_raiser_crossings: h.7,
        contacts: w
            .0
            .into_iter()
            .map(|(contact_id, persona, title, last_engaged_at)| EngagedContact {
                contact_id,
                persona,
                title,
                last_engaged_at,
            })
            .collect(),
        window_events: w
            .1
            .into_iter()
            .map(|(k, occurred_at)| WindowEvent { kind: EventKind::ALL[k], occurred_at })
            .collect(),
        cap_counts: w
            .2
            .into_iter()
            .map(|(contact_key, rule, day, count)| CapCount { contact_key, rule, day, count })
            .collect(),
        seen_events: w.3.into_iter().map(|(id_hash, applied_at)| SeenEvent { id_hash, applied_at }).collect(),
        recent_events: r
            .0
            .into_iter()
            .map(|(event_id, k, occurred_at, rule, points, contact_id, detail)| RecentEvent {
                event_id,
                kind: EventKind::ALL[k],
                occurred_at,
                rule,
                points,
                contact_id,
                detail,
            })
            .collect(),
        events_applied: r.1,
        duplicates: r.2,
        chunks: r.3.into_iter().map(|(s, id)| StateChunkRef { structure: StateStructure::ALL[s], id }).collect(),
        opportunities: r
            .4
            .into_iter()
            .map(|(opportunity_id, s, stage_name, amount, currency, created_at, updated_at)| OpportunityState {
                opportunity_id,
                stage: OpportunityStage::ALL[s],
                stage_name,
                amount,
                currency,
                created_at,
                updated_at,
            })
            .collect(),
        first_applied_at: j.0,
        stage: JourneyStage::ALL[j.1],
        stage_entered_at: j.2,
        journey_transitions: j.3,
        last_hand_raiser_at: j.4,
        stage_entries: j
            .5
            .into_iter()
            .map(|(s, first_entered_at, first_sequence, last_sequence)| StageEntry {
                stage: JourneyStage::ALL[s],
                first_entered_at,
                first_sequence,
                last_sequence,
            })
            .collect(),
        model_version: j.6,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The restore's direct `AccountState` decoder gives what the codec gives (compared by
    /// re-encoding: NaN points compare equal to themselves).
    #[test]
    fn the_direct_account_state_decoder_equals_the_codec(state in any_state()) {
        let bytes = encode(&state).expect("encodes");
        // The direct decoder itself reads it (not the codec behind it).
        let direct = AccountState::decode_direct(&bytes[SINGLE_OBJECT_HEADER_LEN..]).expect("direct");
        prop_assert_eq!(encode(&direct).expect("encodes"), bytes.clone());
        same_as_codec_for::<AccountState>(&bytes)?;
    }

    /// Damaged states: a byte changed, the message cut short, bytes appended, or any datum.
    #[test]
    fn the_direct_account_state_decoder_accepts_and_refuses_what_the_codec_does(
        state in any_state(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..4),
        datum in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let bytes = encode(&state).expect("encodes");
        let body = SINGLE_OBJECT_HEADER_LEN..bytes.len();
        let mut changed = bytes.clone();
        changed[body.start + at.index(body.len())] = byte;
        same_as_codec_for::<AccountState>(&changed)?;
        same_as_codec_for::<AccountState>(&bytes[..body.start + cut.index(body.len())])?;
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        same_as_codec_for::<AccountState>(&longer)?;
        same_as_codec_for::<AccountState>(&with_header::<AccountState>(&datum))?;
    }

    #[test]
    fn the_direct_engagement_event_decoder_equals_the_codec(event in any_event()) {
        let bytes = encode(&event).expect("encodes");
        prop_assert_eq!(decode::<EngagementEvent>(&bytes).expect("direct"), event.clone());
        prop_assert_eq!(decode_with_codec::<EngagementEvent>(&bytes).expect("codec"), event);
    }

    /// Damaged messages: a byte changed, the message cut short, or bytes appended.
    #[test]
    fn the_direct_decoder_accepts_and_refuses_what_the_codec_does(
        event in any_event(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..4),
    ) {
        let bytes = encode(&event).expect("encodes");
        let body = SINGLE_OBJECT_HEADER_LEN..bytes.len();
        let mut changed = bytes.clone();
        changed[body.start + at.index(body.len())] = byte;
        same_as_codec(&changed)?;
        same_as_codec(&bytes[..body.start + cut.index(body.len())])?;
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        same_as_codec(&longer)?;
    }

    #[test]
    fn arbitrary_datums_decode_alike(datum in proptest::collection::vec(any::<u8>(), 0..96)) {
        same_as_codec(&with_header::<EngagementEvent>(&datum))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<EngagementEvent>(&bytes);
        let _ = decode::<AccountState>(&bytes);
        // Behind a valid header, the datum parser itself sees the garbage.
        let _ = decode::<EngagementEvent>(&with_header::<EngagementEvent>(&bytes));
        let _ = decode::<AccountState>(&with_header::<AccountState>(&bytes));
        let _ = decode::<ScoreCrossing>(&with_header::<ScoreCrossing>(&bytes));
        let _ = decode::<RejectedEvent>(&with_header::<RejectedEvent>(&bytes));
    }

    #[test]
    fn engagement_events_round_trip(
        event_id in ".{0,40}",
        kind_index in 0usize..EventKind::ALL.len(),
        occurred_at in any::<i64>(),
        url in proptest::option::of(".{0,80}"),
        persona in proptest::option::of("[a-z_]{0,20}"),
        strength in any::<f64>().prop_filter("NaN never equals itself", |x| !x.is_nan()),
    ) {
        let mut event = EngagementEvent::new(event_id, EventKind::ALL[kind_index], occurred_at, "prop");
        event.web_visit = url.map(|url| WebVisit { url, referrer: None, title: None });
        event.contact = persona.map(|persona| Contact { persona: Some(persona), ..Contact::default() });
        event.intent = Some(Intent { topic: "t".into(), strength });
        let bytes = encode(&event).expect("encodes");
        prop_assert_eq!(decode::<EngagementEvent>(&bytes).expect("decodes"), event);
    }
}

#[test]
fn fingerprints_equal_the_avro_reference_implementation() {
    // Computed with independent implementations from the same .avsc files, so the
    // single-object header is readable by them: Avro's Java library
    // (SchemaNormalization.parsingFingerprint64) for the first versions, fastavro's
    // CRC-64-AVRO of the parsing canonical form since (it prints the bytes in little-endian
    // order). Versions in history/ had, from Java: EngagementEvent v1 0x08b5_1b7e_d0f8_ae37,
    // ScoreCrossing v1 0x4008_0d95_3d79_9800, SalesAlert v1 0x041f_d87b_00ae_19c8,
    // RejectedEvent v1 0xcc96_a5d1_55f6_c7d3; from fastavro: AccountState v2
    // 0xc96d_4928_7c16_8e73, AccountStateChunk v1 0x41a9_4b17_0f76_46af.
    // Account v1 and AccountScore v1 had, from Java, 0xa874_d922_837c_cbfd and
    // 0x2fb4_29f4_4d68_0893 (fastavro agrees).
    let java = [
        // Since the `opportunity` kind, committee coverage and the journey (EngagementEvent v2,
        // Account v2, AccountScore v2, ScoreCrossing v2, SalesAlert v2, AccountState v3,
        // AccountStateChunk v2, JourneyTransition v1), from fastavro.
        (Account::codec().fingerprint(), 0x1f81_876c_e261_47d8_u64),
        (EngagementEvent::codec().fingerprint(), 0x5241_f051_ef57_7ea9),
        (JourneyTransition::codec().fingerprint(), 0x2399_726b_ef98_2419),
        (AccountStateChunk::codec().fingerprint(), 0x09a4_063a_0217_873f),
        // Since stage entries and the program record (AccountProgram v1), from fastavro;
        // AccountState v3 had 0x6eaa_2427_1817_1f55, v4 0xbf4d_bb85_f17a_2f8e.
        (AccountProgram::codec().fingerprint(), 0xfdb5_61a2_000d_3b0b),
        // Since scoring models have versions and re-scores (AccountScore v3, ScoreCrossing v3, SalesAlert
        // v3, AccountState v5), from fastavro. The v2s had 0x6af5_e74b_04ee_5c9a,
        // 0x9028_6b35_53b5_cd20 and 0x6461_0eb3_c727_1019.
        (AccountScore::codec().fingerprint(), 0xb953_69a9_46e4_ede7),
        (ScoreCrossing::codec().fingerprint(), 0x3f11_0604_2aa3_8c67),
        (SalesAlert::codec().fingerprint(), 0xf67d_dc93_a87f_c8dd),
        (AccountState::codec().fingerprint(), 0xa145_0dca_80ec_bab9),
        // Since RejectedEvent v2 (reason `not_allowed`), from fastavro.
        (RejectedEvent::codec().fingerprint(), 0x2bb6_5620_4044_4ef6),
    ];
    for (ours, reference) in java {
        assert_eq!(ours, reference, "{ours:016x} vs {reference:016x}");
    }
}

#[test]
fn messages_framed_with_apache_avros_legacy_fingerprint_still_decode() {
    let event = full_event();
    let mut bytes = encode(&event).expect("encodes");
    let legacy = abm_schemas::codec::legacy_fingerprint(EngagementEvent::codec().schema());
    assert_ne!(legacy, EngagementEvent::codec().fingerprint());
    bytes[2..10].copy_from_slice(&legacy.to_le_bytes());
    assert_eq!(decode::<EngagementEvent>(&bytes).expect("decodes"), event);
}

/// Arrays written in several blocks, one of them with a negative count and its size in bytes
/// (what other Avro writers may produce; ours write one block): the direct `AccountState`
/// decoder reads them as the codec does.
#[test]
fn the_direct_decoder_reads_arrays_in_blocks_as_the_codec_does() {
    use abm_schemas::binary::Writer;
    let state = AccountState { rule_points: vec![], ..sample_state() };
    let bytes = encode(&state).expect("encodes");
    // The datum up to `rule_points`, then its empty array (one 0 byte), then the rest.
    let mut prefix = Vec::new();
    let mut writer = Writer::new(&mut prefix);
    writer.string(&state.account_id);
    writer.symbol(Tier::ALL.iter().position(|t| *t == state.tier).expect("a tier"));
    writer.optional_long(state.as_of);
    writer.double(state.engagement);
    let at = SINGLE_OBJECT_HEADER_LEN + prefix.len();
    assert_eq!(bytes[..at], [&bytes[..SINGLE_OBJECT_HEADER_LEN], prefix.as_slice()].concat()[..]);
    assert_eq!(bytes[at], 0, "an empty array");
    let rules = [("a", 1.5), ("bb", -2.0), ("c", 0.25)];
    let item = |rule: &str, points: f64| {
        let mut bytes = Vec::new();
        let mut writer = Writer::new(&mut bytes);
        writer.string(rule);
        writer.double(points);
        bytes
    };
    let mut blocks = Vec::new();
    let mut writer = Writer::new(&mut blocks);
    // A block of two items, its count negative and followed by its size in bytes.
    let two = [item(rules[0].0, rules[0].1), item(rules[1].0, rules[1].1)].concat();
    writer.long(-2);
    writer.long(two.len() as i64);
    blocks.extend_from_slice(&two);
    // A block of one, then the end.
    let mut writer = Writer::new(&mut blocks);
    writer.long(1);
    blocks.extend_from_slice(&item(rules[2].0, rules[2].1));
    blocks.push(0);
    let spliced = [&bytes[..at], blocks.as_slice(), &bytes[at + 1..]].concat();
    let expected = AccountState {
        rule_points: rules
            .iter()
            .map(|(rule, points)| RuleContribution { rule: (*rule).into(), points: *points })
            .collect(),
        ..state
    };
    assert_eq!(decode_with_codec::<AccountState>(&spliced).expect("the codec reads blocks"), expected);
    assert_eq!(
        AccountState::decode_direct(&spliced[SINGLE_OBJECT_HEADER_LEN..]).expect("the direct decoder reads blocks"),
        expected
    );
}
