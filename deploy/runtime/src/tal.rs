//! Following the TAL (`abm.accounts`, compacted): every service keeps its own view of it.

use abm_schemas::Account;
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaConfig;
use crate::topics::{TopicRole, Topics};

/// One change to the TAL, in topic order.
#[derive(Debug, Clone, PartialEq)]
pub enum TalChange {
    /// A new or updated account.
    Upsert(Account),
    /// A tombstone: the account left the TAL.
    Remove(String),
}

/// The TAL metrics every service has (`abm_<service>_tal_accounts`,
/// `abm_<service>_tal_decode_errors_total`), registered by the service.
#[derive(Debug, Clone)]
pub struct TalMetrics {
    pub accounts: prometheus::IntGauge,
    pub decode_errors: prometheus::IntCounter,
}

/// Reads the whole TAL, handing every change to `apply`, and keeps following it on a
/// background thread until `shutdown`. Returns once the TAL was read to its end.
///
/// `apply` changes the service's own view and returns how many accounts the view holds now
/// (the accounts gauge); a record that is not an `Account` is logged and counted here, and
/// changes nothing.
pub async fn follow<F>(
    kafka: &KafkaConfig,
    topics: &Topics,
    client_id: &str,
    shutdown: CancellationToken,
    metrics: TalMetrics,
    mut apply: F,
) -> anyhow::Result<()>
where
    F: FnMut(TalChange) -> usize + Send + 'static,
{
    let topic = topics.name(TopicRole::Accounts).to_owned();
    crate::kafka::follow_table(kafka, client_id, &topic, shutdown, move |key, value| {
        let change =
            match value.map(|bytes| abm_schemas::decode_patiently::<Account>(bytes, abm_schemas::REGISTRY_PATIENCE)) {
                None => TalChange::Remove(String::from_utf8_lossy(key).into_owned()),
                Some(Ok(account)) => TalChange::Upsert(account),
                Some(Err(error)) => {
                    tracing::warn!(%error, key = %String::from_utf8_lossy(key), "undecodable TAL record");
                    metrics.decode_errors.inc();
                    return;
                }
            };
        let accounts = apply(change);
        metrics.accounts.set(i64::try_from(accounts).unwrap_or(i64::MAX));
    })
    .await
    .context("loading the TAL")
}
