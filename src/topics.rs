//! The declarative topic list (`deploy/topics.toml`) and the names in use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The list, compiled in so that every binary creates the same topics.
pub const DECLARED_TOPICS_TOML: &str = include_str!("../deploy/topics.toml");

/// What a topic is for; config overrides names by role (`[topics] engagement = "x.engagement"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicRole {
    RawWebVisits,
    RawAdClicks,
    RawEmailEvents,
    RawDemoRequests,
    Accounts,
    Engagement,
    Unresolved,
    Rejected,
    AccountScores,
    ScoreCrossings,
    SalesAlerts,
    ScorerState,
    ParkedAlerts,
}

/// One topic of the list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub role: TopicRole,
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    pub doc: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    topic: Vec<TopicSpec>,
}

/// `[topics]` section: topic name per role, for the roles whose default name is not wanted.
pub type TopicOverrides = BTreeMap<TopicRole, String>;

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
        assert_eq!(roles.len(), 13, "every TopicRole is declared");
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
    fn overrides_replace_names_by_role() {
        let overrides = TopicOverrides::from([(TopicRole::Engagement, "test.engagement".to_string())]);
        let topics = Topics::resolve(&overrides);
        assert_eq!(topics.name(TopicRole::Engagement), "test.engagement");
        assert_eq!(topics.name(TopicRole::Rejected), "abm.rejected");
    }
}
