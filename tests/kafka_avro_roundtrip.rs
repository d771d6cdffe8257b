//! Avro single-object records through a real topic on the broker under test.

use std::time::Duration;

use abm::kafka::KafkaConfig;
use abm::topics::{TopicRole, TopicSpec};
use abm_schemas::{EngagementEvent, EventKind, WebVisit};
use abm_testkit::{TestTopics, bootstrap_servers, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn kafka() -> KafkaConfig {
    KafkaConfig { bootstrap_servers: bootstrap_servers(), ..KafkaConfig::default() }
}

fn event(n: usize) -> EngagementEvent {
    let kind = EventKind::ALL[n % EventKind::ALL.len()];
    let mut event = EngagementEvent::new(format!("e-{n}"), kind, 1_700_000_000_000 + n as i64, "test");
    event.account_id = Some(format!("acc-{}", n % 7));
    event.web_visit = (kind == EventKind::WebVisit).then(|| WebVisit {
        url: format!("https://vendor.example/page/{n}"),
        referrer: None,
        title: Some("Pricing".into()),
    });
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_framed_events_survive_a_real_topic() {
    let kafka = kafka();
    let topics = TestTopics::new("avro-roundtrip");
    let topic = topics.name(TopicRole::Engagement);
    let spec = TopicSpec {
        role: TopicRole::Engagement,
        name: topic.clone(),
        partitions: 3,
        compacted: false,
        retention_ms: None,
        doc: String::new(),
    };
    let created = kafka.ensure_topics("test", &[spec]).await.expect("topic created");
    assert_eq!(created, vec![topic.clone()]);

    let producer: FutureProducer = kafka.producer_config("test-producer").create().expect("producer");
    let sent: Vec<EngagementEvent> = (0..200).map(event).collect();
    for event in &sent {
        let payload = abm_schemas::encode(event).expect("encodes");
        let key = event.account_id.clone().unwrap_or_default();
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .expect("acknowledged by the broker");
    }

    let consumer: StreamConsumer =
        kafka.consumer_config("test-consumer", &unique("test-group")).create().expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} records arrived", received.len(), sent.len()))
            .expect("consumer error");
        let payload = message.payload().expect("payload");
        assert_eq!(&payload[..2], &[0xC3, 0x01], "single-object framing on the wire");
        let decoded: EngagementEvent = abm_schemas::decode(payload).expect("decodes");
        assert_eq!(message.key(), decoded.account_id.as_deref().map(str::as_bytes), "keyed by account");
        received.push(decoded);
    }
    received.sort_by_key(|event| event.occurred_at);
    assert_eq!(received, sent);
}
