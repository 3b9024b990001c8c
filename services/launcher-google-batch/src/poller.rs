//! One poller reads the state of every job in flight: a round lists the jobs labelled with this
//! launcher in each location it has jobs in (one `jobs.list` per location and page of 1,000),
//! once per poll interval, and reads with `jobs.get` only a watched job the listing missed.
//! Batch has no call that gets many jobs by name; a label filter is how many are read at once.
//! No attempt polls on its own. A Pub/Sub notification that a job changed ([`crate::events`])
//! brings a read of that job forward, and the interval is only the fallback.
//!
//! The rounds, the hints and the waiting are [`ferry_launcher::batch::Poller`]'s, as for every
//! batch backend; what is Google's is how a round reads jobs ([`Listing`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use ferry_launcher::batch::{self, Round};

use crate::google::{Google, Job};

/// What a round saw of a job; [`batch::Seen::Missing`]: Batch does not know it (deleted, or
/// never made).
pub type Seen = batch::Seen<Job>;

/// The one reader of the state of every job in flight (this module's rounds, and the hinted
/// reads notifications bring forward).
pub type Poller = batch::Poller<Listing>;

/// How the [`Poller`] reads jobs: a listing of this launcher's jobs per location, `jobs.get` for
/// the rest. A job Batch does not know is taken for ended: it can run no more.
pub struct Listing {
    pub google: Google,
    /// The filter that selects this launcher's jobs.
    pub filter: String,
}

/// Whether Batch is done with a job in this state.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "CANCELLED")
}

/// The location (`projects/P/locations/L`) of a job's name.
pub fn parent_of(name: &str) -> &str {
    name.rsplit_once("/jobs/").map_or(name, |(p, _)| p)
}

#[async_trait]
impl batch::Reader for Listing {
    type Job = Job;
    const PLATFORM: &'static str = "Google Batch";
    const MISSING_ENDED: bool = true;

    /// Lists the jobs of every location `watched` (job names: `projects/P/locations/L/jobs/ID`)
    /// are in, and reads those the listings missed.
    async fn round(&self, watched: Vec<String>) -> Round<Job> {
        let parents: BTreeSet<&str> = watched.iter().map(|n| parent_of(n)).collect();
        let mut found: HashMap<String, Arc<Job>> = HashMap::new();
        let mut failed = None;
        for parent in parents {
            match self.google.list_jobs(parent, &self.filter).await {
                Ok(jobs) => found.extend(jobs.into_iter().map(|j| (j.name.clone(), Arc::new(j)))),
                Err(e) => {
                    failed = Some(e.fault(&format!("cannot list the Google Batch jobs of {parent}"), false));
                    break;
                }
            }
        }
        let mut seen = Vec::with_capacity(watched.len());
        if failed.is_none() {
            for name in watched {
                let job = match found.remove(&name) {
                    Some(job) => Seen::Job(job),
                    // Not in the listing: a job of another launcher's labels, or gone. Its own
                    // read is the truth.
                    None => match self.google.get_job(&name).await {
                        Ok(Some(job)) => Seen::Job(Arc::new(job)),
                        Ok(None) => Seen::Missing,
                        Err(e) => {
                            failed = Some(e.fault(&format!("cannot read Google Batch job {name}"), false));
                            break;
                        }
                    },
                };
                seen.push((name, job));
            }
        }
        if let Some(e) = &failed {
            tracing::warn!(error = %e, "a round of Google Batch job listings failed");
        }
        Round { seen, failed }
    }

    /// Reads the jobs `names` a notification named, each with `jobs.get`: their waiters need
    /// not wait for the next listing.
    async fn hinted(&self, names: Vec<String>) -> Vec<(String, Seen)> {
        let mut seen = Vec::with_capacity(names.len());
        for name in names {
            match self.google.get_job(&name).await {
                Ok(Some(job)) => seen.push((name, Seen::Job(Arc::new(job)))),
                Ok(None) => seen.push((name, Seen::Missing)),
                // The next listing reads it: a hint is only a hint.
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "cannot read a Google Batch job a notification named")
                }
            }
        }
        seen
    }

    fn is_terminal(job: &Job) -> bool {
        is_terminal(job.state())
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
