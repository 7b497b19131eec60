//! The change feed: after each commit, one `NOTIFY` per batch on the
//! channel `ot_heads` with `doc:head` payloads (sent as its own statement,
//! after the transaction: a NOTIFY inside it would take PostgreSQL's global
//! notify lock at commit and serialise every committer), and one listening
//! session outside the pools that turns them into [`HeadChange`]s.
//!
//! LISTEN needs a session of its own: it does not work through a
//! transaction-pooling PgBouncer (point `--database-url` at PostgreSQL or a
//! session-pooling bouncer).

use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::connection;
use super::tls::Connector;
use crate::storage::{HeadChange, StorageError};

/// The channel heads are announced on.
const CHANNEL: &str = "ot_heads";

/// The channel of presence notes between nodes (`crate::presence`).
const PRESENCE_CHANNEL: &str = "ot_presence";

/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Announce the heads a commit moved (`doc:head` each), in one statement.
pub(super) async fn announce(pool: &Pool, heads: &[(String, u64)]) -> Result<(), StorageError> {
    if heads.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = heads
        .iter()
        .map(|(doc, head)| format!("{doc}:{head}"))
        .collect();
    notify(pool, CHANNEL, &payloads).await
}

/// Send presence notes (their payloads: see `crate::presence`) to every
/// node's feed, in one statement, outside any write transaction.
pub(super) async fn publish_presence(pool: &Pool, payloads: &[String]) -> Result<(), StorageError> {
    if payloads.is_empty() {
        return Ok(());
    }
    notify(pool, PRESENCE_CHANNEL, payloads).await
}

/// One `pg_notify` on `channel` per payload, in one statement.
async fn notify(pool: &Pool, channel: &str, payloads: &[String]) -> Result<(), StorageError> {
    let client = connection(pool).await?;
    let statement = client
        .prepare_cached("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .await?;
    client.execute(&statement, &[&channel, &payloads]).await?;
    Ok(())
}

/// A `doc:head` payload (the id may itself hold colons: the head is after the last).
fn parse(payload: &str) -> Option<HeadChange> {
    let (doc, head) = payload.rsplit_once(':')?;
    Some(HeadChange::Moved {
        doc: doc.to_owned(),
        head: head.parse().ok()?,
    })
}

/// Listen on `config`'s database until `feed` is dropped, reconnecting with
/// backoff; after every (re)connection the feed gets a
/// [`HeadChange::Resync`], since heads may have moved meanwhile.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    connector: Connector,
    feed: UnboundedSender<HeadChange>,
) {
    match connector {
        Connector::Plain => listen_with(config, NoTls, feed).await,
        Connector::Tls(tls) => listen_with(config, tls, feed).await,
    }
}

/// [`listen`] connecting with `tls`.
async fn listen_with<T>(config: tokio_postgres::Config, tls: T, feed: UnboundedSender<HeadChange>)
where
    T: MakeTlsConnect<Socket> + Clone,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut backoff = Duration::from_millis(100);
    while !feed.is_closed() {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
                // The connection delivers notifications only to whoever polls it.
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                let presence = n.channel() == PRESENCE_CHANNEL;
                                if tx.send((presence, n.payload().to_owned())).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the PostgreSQL change feed's session failed");
                                return;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {PRESENCE_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        if feed.send(HeadChange::Resync).is_err() {
                            return;
                        }
                        while let Some((presence, payload)) = notifications.recv().await {
                            if presence {
                                if feed.send(HeadChange::Presence { payload }).is_err() {
                                    return;
                                }
                                continue;
                            }
                            match parse(&payload) {
                                Some(change) => {
                                    if feed.send(change).is_err() {
                                        return;
                                    }
                                }
                                None => tracing::warn!(%payload, "an unreadable head notification"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for heads"),
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect the PostgreSQL change feed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::storage::HeadChange;

    #[test]
    fn payloads_parse_with_colons_in_the_id() {
        assert_eq!(
            parse("a:b:12"),
            Some(HeadChange::Moved {
                doc: "a:b".into(),
                head: 12
            })
        );
        assert_eq!(parse("nohead"), None);
        assert_eq!(parse("d:x"), None);
    }
}
