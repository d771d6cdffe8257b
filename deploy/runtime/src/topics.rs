//! The declarative topic list (`deploy/topics.toml`) and the names in use.

use std::collections::BTreeMap;

use abm_schemas::EventKind;
use serde::{Deserialize, Serialize};

/// The list, compiled in so that every binary creates the same topics.
pub const DECLARED_TOPICS_TOML: &str = include_str!("../../topics.toml");

/// What a topic is for; config overrides names by role (`[topics] engagement = "x.engagement"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicRole {
    RawWebVisits,
    RawAdClicks,
    RawEmailEvents,
    RawDemoRequests,
    RawCrmOpportunities,
    Accounts,
    Engagement,
    Unresolved,
    Rejected,
    AccountScores,
    ScoreCrossings,
    SalesAlerts,
    SalesAlertsJson,
    ScorerState,
    ParkedAlerts,
    Journey,
    AccountProgram,
    Identity,
    IdentityGraph,
    ScorerMembers,
    ScoringModels,
}

/// The raw topics and the event kind each one's records default to: the one map between event
/// kinds and raw topics (ingest reads these topics, the simulator writes to them).
pub const RAW_TOPICS: [(TopicRole, EventKind); 5] = [
    (TopicRole::RawWebVisits, EventKind::WebVisit),
    (TopicRole::RawAdClicks, EventKind::AdClick),
    (TopicRole::RawEmailEvents, EventKind::Email),
    (TopicRole::RawDemoRequests, EventKind::DemoRequest),
    (TopicRole::RawCrmOpportunities, EventKind::Opportunity),
];

impl TopicRole {
    /// Every role, in declaration order (`deploy/topics.toml` declares each one once: tested).
    pub const ALL: [TopicRole; 21] = [
        TopicRole::RawWebVisits,
        TopicRole::RawAdClicks,
        TopicRole::RawEmailEvents,
        TopicRole::RawDemoRequests,
        TopicRole::RawCrmOpportunities,
        TopicRole::Accounts,
        TopicRole::Engagement,
        TopicRole::Unresolved,
        TopicRole::Rejected,
        TopicRole::AccountScores,
        TopicRole::ScoreCrossings,
        TopicRole::SalesAlerts,
        TopicRole::SalesAlertsJson,
        TopicRole::ScorerState,
        TopicRole::ParkedAlerts,
        TopicRole::Journey,
        TopicRole::AccountProgram,
        TopicRole::Identity,
        TopicRole::IdentityGraph,
        TopicRole::ScorerMembers,
        TopicRole::ScoringModels,
    ];

    /// The role's config key (`[topics] <key> = "name"`, `ABM_TOPICS__<KEY>`).
    pub fn key(self) -> &'static str {
        // A match, not a table: a new role does not compile until it has a key (and the test
        // below fails until it is in `ALL`).
        match self {
            TopicRole::RawWebVisits => "raw_web_visits",
            TopicRole::RawAdClicks => "raw_ad_clicks",
            TopicRole::RawEmailEvents => "raw_email_events",
            TopicRole::RawDemoRequests => "raw_demo_requests",
            TopicRole::RawCrmOpportunities => "raw_crm_opportunities",
            TopicRole::Accounts => "accounts",
            TopicRole::Engagement => "engagement",
            TopicRole::Unresolved => "unresolved",
            TopicRole::Rejected => "rejected",
            TopicRole::AccountScores => "account_scores",
            TopicRole::ScoreCrossings => "score_crossings",
            TopicRole::SalesAlerts => "sales_alerts",
            TopicRole::SalesAlertsJson => "sales_alerts_json",
            TopicRole::ScorerState => "scorer_state",
            TopicRole::ParkedAlerts => "parked_alerts",
            TopicRole::Journey => "journey",
            TopicRole::AccountProgram => "account_program",
            TopicRole::Identity => "identity",
            TopicRole::IdentityGraph => "identity_graph",
            TopicRole::ScorerMembers => "scorer_members",
            TopicRole::ScoringModels => "scoring_models",
        }
    }

    /// The Avro schema of the one record type this role's topics carry, for the schema
    /// registry (`<topic>-value`); `None` for topics that are not one Avro record: raw JSON,
    /// the JSON alerts, the scorer's changelog (states and their chunks), the parked alerts
    /// (copies of alert messages as they were read), the scorer's directory and its models
    /// (JSON).
    pub fn value_schema(self) -> Option<&'static str> {
        use abm_schemas::AvroRecord;
        match self {
            TopicRole::RawWebVisits
            | TopicRole::RawAdClicks
            | TopicRole::RawEmailEvents
            | TopicRole::RawDemoRequests
            | TopicRole::RawCrmOpportunities
            | TopicRole::SalesAlertsJson
            | TopicRole::ScorerState
            | TopicRole::ParkedAlerts
            | TopicRole::ScorerMembers
            | TopicRole::ScoringModels => None,
            TopicRole::Accounts => Some(abm_schemas::Account::SCHEMA_JSON),
            TopicRole::Engagement | TopicRole::Unresolved => Some(abm_schemas::EngagementEvent::SCHEMA_JSON),
            TopicRole::Rejected => Some(abm_schemas::RejectedEvent::SCHEMA_JSON),
            TopicRole::AccountScores => Some(abm_schemas::AccountScore::SCHEMA_JSON),
            TopicRole::ScoreCrossings => Some(abm_schemas::ScoreCrossing::SCHEMA_JSON),
            TopicRole::SalesAlerts => Some(abm_schemas::SalesAlert::SCHEMA_JSON),
            TopicRole::Journey => Some(abm_schemas::JourneyTransition::SCHEMA_JSON),
            TopicRole::AccountProgram => Some(abm_schemas::AccountProgram::SCHEMA_JSON),
            TopicRole::Identity | TopicRole::IdentityGraph => Some(abm_schemas::Visitor::SCHEMA_JSON),
        }
    }

    /// The kind a raw topic's records default to; `None` for the other roles.
    pub fn raw_kind(self) -> Option<EventKind> {
        RAW_TOPICS.iter().find(|(role, _)| *role == self).map(|(_, kind)| *kind)
    }

    /// The raw topic that carries `kind`, if one does.
    pub fn raw_for(kind: EventKind) -> Option<TopicRole> {
        RAW_TOPICS.iter().find(|(_, k)| *k == kind).map(|(role, _)| *role)
    }
}

/// One topic of the list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub role: TopicRole,
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    /// `retention.ms` of a topic the services create; the broker's default when absent.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    pub doc: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    topic: Vec<TopicSpec>,
}

/// `[topics]` section: topic name per role, for the roles whose default name is not wanted.
pub type TopicOverrides = BTreeMap<TopicRole, String>;

/// Overrides from the environment, as the services read them: `ABM_TOPICS__<KEY>=name` (for
/// tools that have no config file, such as the simulator).
pub fn overrides_from_env() -> TopicOverrides {
    TopicRole::ALL
        .into_iter()
        .filter_map(|role| {
            let name = std::env::var(format!("ABM_TOPICS__{}", role.key().to_uppercase())).ok()?;
            (!name.trim().is_empty()).then(|| (role, name.trim().to_owned()))
        })
        .collect()
}

/// The topics in effect: the declared list with config overrides applied.
#[derive(Debug, Clone)]
pub struct Topics {
    specs: Vec<TopicSpec>,
}

impl Topics {
    /// The declared list, with names replaced where `overrides` says so.
    pub fn resolve(overrides: &TopicOverrides) -> Topics {
        // The file is compiled in and checked by a unit test: it cannot fail at run time.
        let file: TopicFile = toml::from_str(DECLARED_TOPICS_TOML).unwrap_or(TopicFile { topic: Vec::new() });
        let specs = file
            .topic
            .into_iter()
            .map(|mut spec| {
                if let Some(name) = overrides.get(&spec.role) {
                    spec.name.clone_from(name);
                }
                spec
            })
            .collect();
        Topics { specs }
    }

    /// Name of the topic with `role`.
    pub fn name(&self, role: TopicRole) -> &str {
        self.spec(role).map_or("", |spec| spec.name.as_str())
    }

    pub fn spec(&self, role: TopicRole) -> Option<&TopicSpec> {
        self.specs.iter().find(|spec| spec.role == role)
    }

    pub fn specs(&self) -> &[TopicSpec] {
        &self.specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_list_names_every_role_once_and_parses() {
        let file: TopicFile = toml::from_str(DECLARED_TOPICS_TOML).expect("deploy/topics.toml parses");
        let roles: Vec<TopicRole> = file.topic.iter().map(|spec| spec.role).collect();
        let unique: std::collections::BTreeSet<_> = roles.iter().collect();
        assert_eq!(unique.len(), roles.len(), "a role is declared twice");
        assert_eq!(roles, TopicRole::ALL, "every TopicRole is declared once, in the order of TopicRole::ALL");
        for spec in &file.topic {
            assert!(spec.partitions > 0, "{}", spec.name);
        }
        let topics = Topics::resolve(&TopicOverrides::new());
        assert_eq!(topics.name(TopicRole::Engagement), "abm.engagement");
        assert!(topics.spec(TopicRole::Accounts).expect("accounts").compacted);
        assert!(topics.spec(TopicRole::ScorerState).expect("state").compacted);
        assert!(topics.spec(TopicRole::AccountScores).expect("scores").compacted);
        assert!(!topics.spec(TopicRole::SalesAlerts).expect("alerts").compacted);
    }

    #[test]
    fn every_role_is_listed_once_and_its_key_is_its_serde_name() {
        let unique: std::collections::BTreeSet<_> = TopicRole::ALL.iter().collect();
        assert_eq!(unique.len(), TopicRole::ALL.len());
        for role in TopicRole::ALL {
            let serde_name = toml::Value::try_from(role).expect("serializes");
            assert_eq!(serde_name.as_str(), Some(role.key()), "{role:?}");
        }
        for (role, kind) in RAW_TOPICS {
            assert_eq!(role.raw_kind(), Some(kind));
            assert_eq!(TopicRole::raw_for(kind), Some(role));
            assert!(role.key().starts_with("raw_"), "{role:?}");
        }
        assert_eq!(TopicRole::Engagement.raw_kind(), None);
    }

    #[test]
    fn overrides_replace_names_by_role() {
        let overrides = TopicOverrides::from([(TopicRole::Engagement, "test.engagement".to_string())]);
        let topics = Topics::resolve(&overrides);
        assert_eq!(topics.name(TopicRole::Engagement), "test.engagement");
        assert_eq!(topics.name(TopicRole::Rejected), "abm.rejected");
    }
}
