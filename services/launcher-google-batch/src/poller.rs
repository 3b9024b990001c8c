//! One poller reads the state of every job in flight: a round lists the jobs labelled with this
//! launcher in each location it has jobs in (one `jobs.list` per location and page of 1,000),
//! once per poll interval, and reads with `jobs.get` only a watched job the listing missed.
//! Batch has no call that gets many jobs by name; a label filter is how many are read at once.
//! No attempt polls on its own. A Pub/Sub notification that a job changed ([`crate::events`])
//! brings a read of that job forward, and the interval is only the fallback.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_launcher::backend::AttemptError;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::google::{Google, Job};

/// What a round saw of a job.
#[derive(Debug, Clone)]
pub enum Seen {
    Job(Arc<Job>),
    /// Batch does not know it (deleted, or never made).
    Missing,
}

struct Entry {
    round: u64,
    seen: Seen,
}

#[derive(Default)]
struct State {
    /// The jobs waited for, by name (`projects/P/locations/L/jobs/ID`).
    watched: HashSet<String>,
    seen: HashMap<String, Entry>,
    /// The last round that failed, and why.
    failed: Option<(u64, AttemptError)>,
    /// Watched jobs a notification said changed, read before the next round is due.
    hinted: HashSet<String>,
}

pub struct Poller {
    google: Google,
    /// The filter that selects this launcher's jobs.
    filter: String,
    interval: Duration,
    state: Mutex<State>,
    rounds: watch::Sender<u64>,
    wake: Notify,
    hints: Notify,
}

/// How long hints are gathered before the jobs they name are read: a burst of notifications
/// costs one read per job, not one per notification.
const HINT_GATHER: Duration = Duration::from_millis(20);

/// Whether Batch is done with a job in this state.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "CANCELLED")
}

/// The location (`projects/P/locations/L`) of a job's name.
pub fn parent_of(name: &str) -> &str {
    name.rsplit_once("/jobs/").map_or(name, |(p, _)| p)
}

impl Poller {
    /// Starts the rounds on the current runtime; they pause while no job is watched and end
    /// with `stop` (or once the poller is dropped).
    pub fn start(google: Google, filter: String, interval: Duration, stop: CancellationToken) -> Arc<Poller> {
        let (rounds, _) = watch::channel(0);
        let poller = Arc::new(Poller {
            google,
            filter,
            interval,
            state: Mutex::default(),
            rounds,
            wake: Notify::new(),
            hints: Notify::new(),
        });
        let weak = Arc::downgrade(&poller);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let wake = async {
                    if p.lock().watched.is_empty() {
                        p.wake.notified().await;
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => {}
                }
                p.lock().hinted.clear();
                p.round().await;
                let until = tokio::time::Instant::now() + p.interval;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(until) => break,
                        _ = p.hints.notified() => {}
                    }
                    tokio::time::sleep(HINT_GATHER).await;
                    let hinted: Vec<String> = p.lock().hinted.drain().collect();
                    if !hinted.is_empty() {
                        p.read(hinted).await;
                    }
                }
            }
        });
        poller
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn round(&self) {
        let round = *self.rounds.borrow() + 1;
        let watched: Vec<String> = self.lock().watched.iter().cloned().collect();
        let parents: BTreeSet<&str> = watched.iter().map(|n| parent_of(n)).collect();
        let mut found: HashMap<String, Arc<Job>> = HashMap::new();
        let mut failure = None;
        for parent in parents {
            match self.google.list_jobs(parent, &self.filter).await {
                Ok(jobs) => found.extend(jobs.into_iter().map(|j| (j.name.clone(), Arc::new(j)))),
                Err(e) => {
                    failure = Some(e.fault(&format!("cannot list the Google Batch jobs of {parent}"), false));
                    break;
                }
            }
        }
        let mut answers = Vec::with_capacity(watched.len());
        if failure.is_none() {
            for name in watched {
                let seen = match found.remove(&name) {
                    Some(job) => Seen::Job(job),
                    // Not in the listing: a job of another launcher's labels, or gone. Its own
                    // read is the truth.
                    None => match self.google.get_job(&name).await {
                        Ok(Some(job)) => Seen::Job(Arc::new(job)),
                        Ok(None) => Seen::Missing,
                        Err(e) => {
                            failure = Some(e.fault(&format!("cannot read Google Batch job {name}"), false));
                            break;
                        }
                    },
                };
                answers.push((name, seen));
            }
        }
        {
            let mut state = self.lock();
            for (name, seen) in answers {
                if state.watched.contains(&name) {
                    state.seen.insert(name, Entry { round, seen });
                }
            }
            if let Some(e) = failure {
                tracing::warn!(error = %e, "a round of Google Batch job listings failed");
                state.failed = Some((round, e));
            }
        }
        self.rounds.send_replace(round);
    }

    /// Reads the jobs `names` a notification named, each with `jobs.get`, as a round of their
    /// own: their waiters need not wait for the next listing.
    async fn read(&self, names: Vec<String>) {
        let round = *self.rounds.borrow() + 1;
        let mut answers = Vec::with_capacity(names.len());
        for name in names {
            match self.google.get_job(&name).await {
                Ok(Some(job)) => answers.push((name, Seen::Job(Arc::new(job)))),
                Ok(None) => answers.push((name, Seen::Missing)),
                // The next listing reads it: a hint is only a hint.
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot read a Google Batch job a notification named")
                }
            }
        }
        {
            let mut state = self.lock();
            for (name, seen) in answers {
                if state.watched.contains(&name) {
                    state.seen.insert(name, Entry { round, seen });
                }
            }
        }
        self.rounds.send_replace(round);
    }

    /// Brings forward a read of those of `names` that are watched (a notification said they
    /// changed); the others are not this launcher's, or no longer waited for. Returns how many
    /// were.
    pub fn hint<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        let mut state = self.lock();
        let mut n = 0;
        for name in names {
            if state.watched.contains(name) {
                state.hinted.insert(name.to_string());
                n += 1;
            }
        }
        drop(state);
        if n > 0 {
            self.hints.notify_one();
        }
        n
    }

    /// The job's state as a round that began after this call saw it.
    pub async fn state(&self, name: &str) -> Result<Seen, AttemptError> {
        let mut rounds = self.rounds.subscribe();
        let after = *rounds.borrow_and_update();
        let added = self.lock().watched.insert(name.to_string());
        if added {
            self.wake.notify_one();
        }
        loop {
            {
                let state = self.lock();
                // A job that ended stays as it ended.
                if let Some(Entry {
                    seen: Seen::Job(job), ..
                }) = state.seen.get(name)
                    && is_terminal(job.state())
                {
                    return Ok(Seen::Job(job.clone()));
                }
                // A round reads only the jobs watched when it began: one that saw this job and
                // ended after `after` is at most one interval old.
                if let Some(e) = state.seen.get(name).filter(|e| e.round > after) {
                    return Ok(e.seen.clone());
                }
                if let Some((r, e)) = &state.failed
                    && *r > after
                {
                    return Err(e.clone());
                }
            }
            if rounds.changed().await.is_err() {
                return Err(AttemptError::Unavailable(
                    "the Google Batch poller has stopped".into(),
                ));
            }
        }
    }

    /// Whether the latest round saw the job ended, or gone (it can run no more), without
    /// waiting for another.
    pub fn seen_ended(&self, name: &str) -> bool {
        match self.lock().seen.get(name) {
            Some(Entry {
                seen: Seen::Job(job), ..
            }) => is_terminal(job.state()),
            Some(Entry {
                seen: Seen::Missing, ..
            }) => true,
            None => false,
        }
    }

    /// Stops watching a job.
    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        state.watched.remove(name);
        state.seen.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_location_is_its_names_head() {
        assert_eq!(
            parent_of("projects/p/locations/us-central1/jobs/ferry-a"),
            "projects/p/locations/us-central1"
        );
        assert!(is_terminal("CANCELLED") && !is_terminal("RUNNING"));
    }
}
