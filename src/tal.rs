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
    /// A record that is not an `Account` (logged here; the caller counts it).
    Undecodable,
}

/// Reads the whole TAL, handing every change to `on_change`, and keeps following it on a
/// background thread until `shutdown`. Returns once the TAL was read to its end.
pub async fn follow<F>(
    kafka: &KafkaConfig,
    topics: &Topics,
    client_id: &str,
    shutdown: CancellationToken,
    mut on_change: F,
) -> anyhow::Result<()>
where
    F: FnMut(TalChange) + Send + 'static,
{
    let topic = topics.name(TopicRole::Accounts).to_owned();
    crate::kafka::follow_table(kafka, client_id, &topic, shutdown, move |key, value| {
        let change = match value.map(abm_schemas::decode::<Account>) {
            None => TalChange::Remove(String::from_utf8_lossy(key).into_owned()),
            Some(Ok(account)) => TalChange::Upsert(account),
            Some(Err(error)) => {
                tracing::warn!(%error, key = %String::from_utf8_lossy(key), "undecodable TAL record");
                TalChange::Undecodable
            }
        };
        on_change(change);
    })
    .await
    .context("loading the TAL")
}
