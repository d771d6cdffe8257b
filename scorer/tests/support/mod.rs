//! Helpers for the scorer's tests against the broker under test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use abm::kafka::{EndOfPartitionContext, KafkaConfig};
use abm::testkit::{bootstrap_servers, free_port, unique};
use abm_schemas::{Account, AvroRecord, EngagementEvent, Tier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

pub fn kafka() -> KafkaConfig {
    KafkaConfig { bootstrap_servers: bootstrap_servers(), ..KafkaConfig::default() }
}

/// A scorer environment with its own topics, group and instance id.
#[derive(Debug, Clone)]
pub struct Env {
    pub prefix: String,
    pub port: u16,
}

impl Env {
    pub fn new(name: &str) -> Env {
        Env { prefix: unique(name), port: free_port() }
    }

    pub fn topic(&self, role: &str) -> String {
        format!("{}.{role}", self.prefix)
    }

    /// Environment variables that point a scorer at this environment's topics.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ABM_KAFKA__BOOTSTRAP_SERVERS", bootstrap_servers()),
            ("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", self.port)),
            ("ABM_SCORER__GROUP_ID", format!("{}-group", self.prefix)),
            ("ABM_SCORER__INSTANCE_ID", format!("{}-instance", self.prefix)),
            ("ABM_TOPICS__ENGAGEMENT", self.topic("engagement")),
            ("ABM_TOPICS__ACCOUNTS", self.topic("accounts")),
            ("ABM_TOPICS__SCORER_STATE", self.topic("state")),
            ("ABM_TOPICS__ACCOUNT_SCORES", self.topic("scores")),
            ("ABM_TOPICS__SCORE_CROSSINGS", self.topic("crossings")),
            ("ABM_TOPICS__REJECTED", self.topic("rejected")),
        ]
    }

    /// Creates this environment's topics (all of the declared list, renamed).
    pub fn create_topics(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let overrides = [
            ("engagement", abm::topics::TopicRole::Engagement),
            ("accounts", abm::topics::TopicRole::Accounts),
            ("state", abm::topics::TopicRole::ScorerState),
            ("scores", abm::topics::TopicRole::AccountScores),
            ("crossings", abm::topics::TopicRole::ScoreCrossings),
            ("rejected", abm::topics::TopicRole::Rejected),
        ];
        let topics =
            abm::topics::Topics::resolve(&overrides.iter().map(|(name, role)| (*role, self.topic(name))).collect());
        let specs: Vec<_> = topics.specs().iter().filter(|spec| spec.name.starts_with(&self.prefix)).cloned().collect();
        runtime.block_on(kafka().ensure_topics("test", &specs)).expect("topics created");
    }
}

pub fn producer() -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    kafka().producer_config("test-producer").create().expect("producer")
}

pub fn send<T: AvroRecord>(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    key: &str,
    value: &T,
) {
    let payload = abm_schemas::encode(value).expect("encodes");
    let mut record = BaseRecord::to(topic).key(key).payload(payload.as_slice());
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub fn flush(producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>) {
    producer.flush(Duration::from_secs(30)).expect("flushed");
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
        updated_at: 0,
    }
}

/// Every record of `topic`, read with `read_committed` from the beginning to the end.
pub fn read_all<T: AvroRecord>(topic: &str) -> Vec<(String, T)> {
    let consumer: BaseConsumer<EndOfPartitionContext> = kafka()
        .client_config("test-reader")
        .set("group.id", unique("test-reader"))
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create_with_context(EndOfPartitionContext)
        .expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(topic, *p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} did not reach the end");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                let value = abm_schemas::decode::<T>(message.payload().expect("value")).expect("decodes");
                records.push((key, value));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    records
}

/// `GET /v1/accounts/{id}` as JSON.
pub fn account_json(port: u16, id: &str) -> Option<serde_json::Value> {
    let (status, body) = abm::testkit::http_get(port, &format!("/v1/accounts/{id}"))?;
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
