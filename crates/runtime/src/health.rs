//! Readiness: what a process needs to answer (its bus, its databases), checked on demand for
//! `GET /readyz`.
//!
//! A service registers a check for each dependency it opens ([`register`]) and keeps the
//! returned [`Registered`] while it runs; dropping it removes the check. [`check_all`] runs
//! every check of the process, each within [`CHECK_TIMEOUT`], and says which failed and why.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of a check: `Err` with a short reason a person reads.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A check: called for each `/readyz` request.
pub type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

struct Entry {
    id: u64,
    name: String,
    check: Check,
}

static CHECKS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn checks() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    CHECKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a check registered; dropping it removes the check.
#[derive(Debug)]
#[must_use = "the check is removed when this is dropped"]
pub struct Registered {
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        checks().retain(|e| e.id != self.id);
    }
}

/// Registers a readiness check named `name` ("scheduler database").
pub fn register<F, Fut>(name: impl Into<String>, check: F) -> Registered
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let check: Check = Arc::new(move || Box::pin(check()));
    checks().push(Entry {
        id,
        name: name.into(),
        check,
    });
    Registered { id }
}

/// Runs every registered check at once; `Err` lists the failed ones as `NAME: REASON`.
pub async fn check_all() -> Result<(), Vec<String>> {
    let running: Vec<(String, Check)> = checks()
        .iter()
        .map(|e| (e.name.clone(), e.check.clone()))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (name, check) in running {
        set.spawn(async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            outcome.map_err(|why| format!("{name}: {why}"))
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failed.push(why),
            Err(e) => failed.push(format!("a readiness check panicked: {e}")),
        }
    }
    failed.sort();
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_check_is_named_until_it_is_dropped() {
        let ok = register("health-test ok", || async { Ok(()) });
        let bad = register("health-test db", || async {
            Err("connection refused".to_string())
        });
        let failed = check_all().await.unwrap_err();
        assert!(
            failed.contains(&"health-test db: connection refused".to_string()),
            "{failed:?}"
        );
        assert!(!failed.iter().any(|f| f.starts_with("health-test ok")));
        drop(bad);
        let left = check_all().await.err().unwrap_or_default();
        assert!(!left.iter().any(|f| f.starts_with("health-test")), "{left:?}");
        drop(ok);
    }
}
