//! Shared runtime of the ABM pipeline's three services (`ingest`, `scorer`, `alerter`), linked
//! into each of them (and nothing else is: the simulator is `deploy/sim`, the test kit `tests/kit`).
//!
//! Everything a service needs around its own logic exists here once:
//!
//! - [`clock`] — wall-clock milliseconds since the epoch, the pipeline's one time source.
//! - [`config`] — layered configuration: built-in defaults < TOML file (`--config`) < `ABM_`
//!   environment variables (`__` between levels); unknown keys are errors.
//! - [`telemetry`] — tracing set-up, human or JSON logs.
//! - [`ops`] — the service's HTTP port: `/metrics`, `/healthz`, `/readyz`, plus the service's
//!   own routes; readiness that goes 503 as soon as shutdown starts.
//! - [`shutdown`] — SIGINT/SIGTERM handling as a cancellation token passed into `run`.
//! - [`kafka`] — client configuration with a librdkafka passthrough (TLS/SASL), a start-up
//!   reachability check, topic creation.
//! - [`eos`] — the exactly-once consume-process-produce loop (Kafka transactions).
//! - [`watch`] — the progress watch of the non-transactional consumer loops (a wedged
//!   consumer is replaced).
//! - [`registry`] — the schema registry: Confluent framing of the topics configured for it,
//!   schemas registered at start-up, registry ids resolved for every reader.
//! - [`topics`] — the declarative topic list (`deploy/topics.toml`) and per-role names.
//! - [`service`] — the common `main`: parse `--config`, load, init, run, one-line errors.
//! - [`tal`] — the TAL follower: each service's own view of `abm.accounts`.
//!
//! Invariant: nothing here knows about scoring, events or alerts; the services know nothing
//! about how config is layered or how metrics are served.

pub mod clock;
pub mod config;
pub mod eos;
pub mod kafka;
pub mod ops;
pub mod registry;
pub mod service;
pub mod shutdown;
pub mod tal;
pub mod telemetry;
pub mod topics;
pub mod watch;

pub use tokio_util::sync::CancellationToken;
