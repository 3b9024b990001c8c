//! What a database error means for the event it was applying.

use std::borrow::Cow;

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
