//! The scoring models the cluster has run: `abm.scoring-models` (compacted, key = the model's
//! version, value = JSON `{version, scoring, registered_at, instance}`).
//!
//! Every scorer registers its configured model there at start-up and follows the topic. A
//! partition's state records the model it was built with; an instance started with another
//! model serves that partition with the recorded model (found here) while it re-scores the
//! partition under its own (README, "Changing the model"). A record whose version is not the
//! hash of its `scoring` as written is refused: a model is only ever what its version says. A
//! record written by a release with other `[scoring]` fields is still read (its version is the
//! hash of its own JSON; the fields it lacks take this release's defaults).

use std::sync::Arc;
use std::time::Duration;

use abm::kafka::KafkaConfig;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, ScoringConfig};

/// One model, as written to the topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub version: String,
    pub scoring: ScoringConfig,
    /// When an instance was last started with it (ms since the epoch), and which.
    pub registered_at: i64,
    pub instance: String,
}

/// A record as read: `scoring` kept as written, to check its hash.
#[derive(Debug, Deserialize)]
struct ReadRecord<'a> {
    version: String,
    #[serde(borrow)]
    scoring: &'a serde_json::value::RawValue,
}

/// The models known, by version.
#[derive(Debug, Default)]
pub struct Models {
    known: DashMap<String, Arc<Engine>>,
}

impl Models {
    /// Adds (or, for a tombstone, forgets) one record of the topic.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
        let Some(value) = value else {
            self.known.remove(key);
            return Ok(());
        };
        let record: ReadRecord<'_> = serde_json::from_slice(value).map_err(|e| format!("not a model record: {e}"))?;
        let raw = record.scoring.get().as_bytes();
        let version = format!("{:016x}", abm_schemas::hash::fnv1a_64_from(abm_schemas::hash::FNV64_OFFSET_BASIS, raw));
        if version != record.version || version != key {
            return Err(format!(
                "model {key}: its [scoring] hashes to {version}, its record says {}: refused",
                record.version
            ));
        }
        let scoring: ScoringConfig = serde_json::from_slice(raw)
            .map_err(|e| format!("model {key}: its [scoring] is not one this release reads: {e}"))?;
        let engine = Engine::with_version(scoring, version.clone()).map_err(|e| format!("model {key}: {e}"))?;
        self.known.insert(version, Arc::new(engine));
        Ok(())
    }

    /// Adds a model this process has itself (its configured one).
    pub fn insert(&self, engine: Arc<Engine>) {
        self.known.insert(engine.model_version().to_owned(), engine);
    }

    pub fn engine(&self, version: &str) -> Option<Arc<Engine>> {
        self.known.get(version).map(|entry| entry.value().clone())
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Writes `engine`'s model to `topic` (key = its version) and waits for the broker's ack.
pub fn register(kafka: &KafkaConfig, topic: &str, engine: &Engine, instance: &str) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let record = ModelRecord {
        version: engine.model_version().to_owned(),
        scoring: engine.config().clone(),
        registered_at: abm::clock::now_ms(),
        instance: instance.to_owned(),
    };
    let payload = serde_json::to_vec(&record)?;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = kafka
        .producer_config("abm-scorer-models")
        .set("acks", "all")
        .create()
        .map_err(|e| anyhow::anyhow!("creating the producer for {topic}: {e}"))?;
    producer
        .send(BaseRecord::to(topic).key(record.version.as_str()).payload(&payload))
        .map_err(|(e, _)| anyhow::anyhow!("registering model {} in {topic}: {e}", record.version))?;
    producer
        .flush(kafka.timeout().max(Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("registering model {} in {topic}: {e}", record.version))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_its_version_or_refused() {
        let models = Models::default();
        let scoring = ScoringConfig::default();
        let version = scoring.model_version();
        let record = |version: &str, scoring: ScoringConfig| {
            serde_json::to_vec(&ModelRecord {
                version: version.into(),
                scoring,
                registered_at: 1,
                instance: "a".into(),
            })
            .expect("JSON")
        };
        models.apply(version.as_bytes(), Some(&record(&version, scoring.clone()))).expect("applies");
        assert_eq!(models.engine(&version).map(|e| e.model_version().to_owned()), Some(version.clone()));
        // Another [scoring] under this version: refused, the known one stays.
        let mut other = scoring.clone();
        other.thresholds.tier_1 = 1.0;
        let error = models.apply(version.as_bytes(), Some(&record(&version, other))).expect_err("refused");
        assert!(error.contains("refused"), "{error}");
        assert_eq!(models.engine(&version).map(|e| e.config().thresholds.tier_1), Some(50.0));
        models.apply(version.as_bytes(), None).expect("tombstone");
        assert!(models.engine(&version).is_none());
    }

    #[test]
    fn a_model_an_older_release_wrote_is_read_under_its_own_version() {
        // An older release's [scoring] without `top_rules` (as if this release had added it).
        let mut json = serde_json::to_value(ScoringConfig::default()).expect("JSON");
        json.as_object_mut().expect("object").remove("top_rules");
        let scoring = serde_json::to_string(&json).expect("JSON");
        let version = format!(
            "{:016x}",
            abm_schemas::hash::fnv1a_64_from(abm_schemas::hash::FNV64_OFFSET_BASIS, scoring.as_bytes())
        );
        assert_ne!(version, ScoringConfig::default().model_version());
        let record = format!(r#"{{"version":"{version}","scoring":{scoring},"registered_at":1,"instance":"old"}}"#);
        let models = Models::default();
        models.apply(version.as_bytes(), Some(record.as_bytes())).expect("read");
        let engine = models.engine(&version).expect("known");
        assert_eq!(engine.model_version(), version, "it stamps the version it was recorded as");
        assert_eq!(engine.config().top_rules, ScoringConfig::default().top_rules, "the missing field defaulted");
    }
}
