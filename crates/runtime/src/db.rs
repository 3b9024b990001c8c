//! What a database error means for the event it was applying, and holding a batch through an
//! outage.

use std::borrow::Cow;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a consumer waits between tries while its database is out of reach: `first`, then
/// twice as long each time, up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub first: Duration,
    pub max: Duration,
}

/// Runs `op` until it succeeds, fails with something other than an outage ([`is_outage`] of the
/// database error `db_error` finds in `E`), or `stop` is cancelled (then the outage's error is
/// returned). `what` names the database in the warning logged before each wait.
pub async fn through_outages<T, E, F>(
    what: &str,
    waits: Waits,
    stop: &CancellationToken,
    db_error: impl Fn(&E) -> Option<&sqlx::Error>,
    mut op: impl FnMut() -> F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let mut wait = waits.first;
    loop {
        let done = op().await;
        let outage = match &done {
            Err(e) if !stop.is_cancelled() => db_error(e).filter(|e| is_outage(e)),
            _ => None,
        };
        let Some(e) = outage else { return done };
        tracing::warn!(error = %e, retry_in = ?wait, "{what} is out of reach; holding the batch and trying again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
        wait = (wait * 2).min(waits.max);
    }
}

/// Whether a database error is an outage (the server or file is out of reach, busy, out of
/// room, or a transaction lost a conflict) rather than something wrong with what was applied.
///
/// A consumer meeting an outage holds its deliveries and applies them again later: giving them
/// back to the broker would count as a failed delivery each time, and RabbitMQ dead-letters a
/// message after [a limit of them](https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling),
/// so an outage of a minute would move accepted work to the dead letters. Anything else gives
/// the deliveries back, so that one that can never be applied ends in the dead letters instead
/// of stopping the consumer for good.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or(Cow::Borrowed(""));
            if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_outage(&code)
            } else {
                sqlstate_outage(&code)
            }
        }
        _ => false,
    }
}

/// SQLite's (extended) result code, as a number: the primary code is its low byte.
fn sqlite_outage(code: &str) -> bool {
    const BUSY: u32 = 5;
    const LOCKED: u32 = 6;
    const NOMEM: u32 = 7;
    const IOERR: u32 = 10;
    const FULL: u32 = 13;
    const CANTOPEN: u32 = 14;
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, BUSY | LOCKED | NOMEM | IOERR | FULL | CANTOPEN))
}

/// PostgreSQL's SQLSTATE: connection exceptions (08), serialization failures and deadlocks,
/// insufficient resources (53), a lock not available, the server shutting down or starting.
fn sqlstate_outage(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_told_from_errors_in_what_was_applied() {
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(is_outage(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        for code in ["5", "517", "6", "10", "266", "13"] {
            assert!(sqlite_outage(code), "SQLite {code}");
        }
        for code in ["1", "19", "2067", "11"] {
            assert!(!sqlite_outage(code), "SQLite {code}");
        }
        for code in ["08006", "40001", "40P01", "57P01", "53300"] {
            assert!(sqlstate_outage(code), "SQLSTATE {code}");
        }
        for code in ["23505", "42P01", "22P02", "42501"] {
            assert!(!sqlstate_outage(code), "SQLSTATE {code}");
        }
    }
}
