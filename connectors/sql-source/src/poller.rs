//! Polling: `pollQuery` every `pollTime`, each row sent as one notification, for as long as
//! the source stays configured (the task is aborted when its session ends).

use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use vantiq_connector_tokio::Source;

use crate::config::Poll;
use crate::db::Database;

/// Starts polling; abort the handle to stop. The first run is immediate; each next one
/// starts `pollTime` after the previous start, or at once when a run took longer (the Java
/// connector's `Timer.schedule(task, 0, pollTime)`).
#[must_use]
pub fn spawn(source: Source, db: Arc<Database>, poll: Poll) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(poll.every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            run_once(&source, &db, &poll.query).await;
        }
    })
}

/// One run: every row as a notification. Failures are logged; the next run tries again.
async fn run_once(source: &Source, db: &Database, query: &str) {
    let pool = match db.pool() {
        Ok(pool) => pool,
        Err(error) => {
            tracing::error!(source = source.name(), %error, query, "could not run the pollQuery");
            return;
        }
    };
    let mut rows = pool.rows(query);
    let mut sent = 0u64;
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => {
                if let Err(error) = source.notify(&row).await {
                    tracing::warn!(source = source.name(), %error, "a pollQuery row could not be sent");
                    return;
                }
                sent += 1;
            }
            Err(error) => {
                tracing::error!(source = source.name(), %error, query, "the pollQuery failed");
                return;
            }
        }
    }
    tracing::trace!(source = source.name(), rows = sent, "pollQuery run");
}
