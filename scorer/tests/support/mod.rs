//! Helpers for the scorer's tests against the broker under test (on top of `abm_testkit`).

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;

use abm_schemas::{Account, EngagementEvent, Tier};
use abm_testkit::{TestTopics, free_port};

pub use abm::topics::TopicRole;
pub use abm_testkit::{flush, producer, read_all, send};

/// A scorer environment with its own topics, group and instance id.
#[derive(Debug, Clone)]
pub struct Env {
    pub topics: TestTopics,
    pub port: u16,
}

impl Env {
    pub fn new(name: &str) -> Env {
        Env { topics: TestTopics::new(name), port: free_port() }
    }

    pub fn prefix(&self) -> &str {
        &self.topics.prefix
    }

    pub fn topic(&self, role: TopicRole) -> String {
        self.topics.name(role)
    }

    /// Environment variables that point a scorer at this environment.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = self.topics.env();
        vars.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", self.port)));
        vars.push(("ABM_SCORER__GROUP_ID", format!("{}-group", self.prefix())));
        vars.push(("ABM_SCORER__INSTANCE_ID", format!("{}-instance", self.prefix())));
        vars
    }

    /// [`vars`](Self::vars) for instance `name` of the group: its own instance id.
    pub fn instance_vars(&self, name: &str) -> Vec<(&'static str, String)> {
        let mut vars = self.vars();
        vars.retain(|(key, _)| *key != "ABM_SCORER__INSTANCE_ID");
        vars.push(("ABM_SCORER__INSTANCE_ID", format!("{}-{name}", self.prefix())));
        vars
    }

    pub fn create_topics(&self) {
        self.topics.create();
    }
}

pub fn account(id: &str, tier: Tier) -> Account {
    Account {
        account_id: id.into(),
        name: format!("Company {id}"),
        domains: vec![format!("{id}.example")],
        tier,
        owner: "sdr@vendor.example".into(),
        industry: None,
        employees: None,
        committee: None,
        updated_at: 0,
    }
}

/// `GET /v1/accounts/{id}` as JSON.
pub fn account_json(port: u16, id: &str) -> Option<serde_json::Value> {
    let (status, body) = abm_testkit::http_get(port, &format!("/v1/accounts/{id}"))?;
    (status == 200).then(|| serde_json::from_str(&body).expect("JSON body"))
}

/// Events per account, in the order they were produced (= partition order).
pub fn by_account(events: &[EngagementEvent]) -> BTreeMap<String, Vec<EngagementEvent>> {
    let mut map: BTreeMap<String, Vec<EngagementEvent>> = BTreeMap::new();
    for event in events {
        map.entry(event.account_id.clone().unwrap_or_default()).or_default().push(event.clone());
    }
    map
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}
