//! Writing prepared records to Kafka and waiting for the broker's acknowledgement.
//!
//! Mechanism only: the pipeline decides what goes where. The producer is idempotent with
//! `acks=all`; a record counts as written only when its delivery report says so. Errors say
//! what the caller should do: `Overloaded` (local queue full: retry soon, HTTP 429) or
//! `Unavailable` (the broker did not acknowledge in time: retry later, HTTP 503).

use std::time::{Duration, Instant};

use prometheus::Histogram;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::pipeline::{Output, Record};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("the Kafka producer queue is full; retry shortly")]
    Overloaded,
    #[error("Kafka did not acknowledge the write: {0}")]
    Unavailable(String),
}

/// Topic names of the outputs.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub engagement: String,
    pub unresolved: String,
    pub rejected: String,
    pub identity: String,
}

#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer,
    topics: OutputTopics,
    produce_latency: Histogram,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl Sink {
    pub fn new(producer: FutureProducer, topics: OutputTopics, produce_latency: Histogram) -> Sink {
        Sink { producer, topics, produce_latency }
    }

    fn topic(&self, output: Output) -> &str {
        match output {
            Output::Engagement => &self.topics.engagement,
            Output::Unresolved => &self.topics.unresolved,
            Output::Rejected => &self.topics.rejected,
            Output::Identity => &self.topics.identity,
        }
    }

    /// Messages waiting in the producer (queued or in flight).
    pub fn queue_depth(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Writes every record and waits until all are acknowledged, or returns the first failure.
    /// On failure some records may have been written: the sender retries, and the pipeline
    /// absorbs the repeats by `event_id`.
    pub async fn write_all(&self, records: &[Record]) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let topic = self.topic(record.output);
            // Confluent framing for the topics the registry config asks it for (a header swap).
            let payload = abm_schemas::registry::frame_for(topic, &record.payload)
                .map_err(|error| SinkError::Unavailable(error.to_string()))?;
            let future = FutureRecord::to(topic).key(&record.key).payload(payload.as_ref());
            match self.producer.send_result(future) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(SinkError::Overloaded);
                }
                Err((error, _)) => return Err(SinkError::Unavailable(error.to_string())),
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(SinkError::Unavailable(error.to_string())),
                Err(_) => return Err(SinkError::Unavailable("the producer was shut down".into())),
            }
        }
        self.produce_latency.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Waits for everything queued to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "flushing the producer at shutdown");
        }
    }
}
