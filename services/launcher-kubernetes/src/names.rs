//! Names and labels: what makes creation idempotent and compute findable.
//!
//! A Job's name is derived from the attempt id alone ([`job_name`]), so that a redelivered
//! dispatch or a restarted launcher looks it up and adopts what it finds. Kubernetes names are
//! stricter than attempt ids (DNS-1123 labels: lowercase letters, digits and `-`, at most 63,
//! because the Job's name becomes its pods' `job-name` label), so an id that does not fit as it
//! is gets a readable part and a hash of the whole. Label values are as strict; labels carry
//! label-safe values ([`label_value`]) for selecting, annotations the full ids.

use sha2::{Digest, Sha256};

/// The launcher instance that owns the Job: what its watch and `list_owned` select on.
pub const LABEL_LAUNCHER: &str = "dev.ferry/launcher";
/// The job, the task and the attempt, label-safe (see [`label_value`]).
pub const LABEL_JOB: &str = "dev.ferry/job";
pub const LABEL_TASK: &str = "dev.ferry/task";
pub const LABEL_ATTEMPT: &str = "dev.ferry/attempt";
/// The full ids, as annotations.
pub const ANNOTATION_JOB_ID: &str = "dev.ferry/job-id";
pub const ANNOTATION_TASK_ID: &str = "dev.ferry/task-id";
pub const ANNOTATION_ATTEMPT_ID: &str = "dev.ferry/attempt-id";
/// The attempt number, 1 for the first.
pub const ANNOTATION_ATTEMPT: &str = "dev.ferry/attempt";
pub const ANNOTATION_FLOW: &str = "dev.ferry/flow";
pub const ANNOTATION_NAMESPACE: &str = "dev.ferry/namespace";
/// How long the pod may stay Pending, in seconds: kept on the pod so that whichever launcher
/// looks at it (after a restart too) applies the task's own deadline.
pub const ANNOTATION_PENDING_DEADLINE: &str = "dev.ferry/pending-deadline-seconds";

/// Every Job's name starts with this.
pub const PREFIX: &str = "ferry-";

/// A DNS-1123 label's length, which a Job's name may not exceed.
pub const MAX_NAME: usize = 63;

/// Hex digits of the SHA-256 kept in a name or label value that had to be changed.
const HASH_LEN: usize = 10;

fn hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..HASH_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Job (and Secret) name of an attempt: `ferry-<id>` when the id is a lowercase DNS label
/// that fits; otherwise `ferry-<the id lowercased, other characters as '-', cut>-<10 hex digits
/// of its SHA-256>`. The same id always gives the same name; two ids give the same name only
/// if their hashes collide. The attempt-id annotation is compared on adoption all the same.
pub fn job_name(attempt_id: &str) -> String {
    let plain = format!("{PREFIX}{attempt_id}");
    if is_dns_label(&plain) {
        return plain;
    }
    let keep = MAX_NAME - PREFIX.len() - 1 - HASH_LEN;
    let readable: String = attempt_id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let readable = readable.trim_matches('-');
    if readable.is_empty() {
        format!("{PREFIX}{}", hash(attempt_id))
    } else {
        format!("{PREFIX}{readable}-{}", hash(attempt_id))
    }
}

/// Whether `s` is a DNS-1123 label: lowercase letters, digits and `-`, alphanumeric at both
/// ends, 1 to 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// `s` as a label value: itself when it is one, else its label-safe characters cut to fit and
/// a hash of the whole (so that distinct ids stay distinct for selection).
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_string();
    }
    let keep = 63 - 1 - HASH_LEN;
    let readable: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(keep)
        .collect();
    let readable = readable.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if readable.is_empty() {
        hash(s)
    } else {
        format!("{readable}-{}", hash(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_dns_labels_deterministic_and_distinct() {
        let ids = [
            "0190f3a2-7c1e-7b7a-9d1e-3f2a1b0c9d8e",
            "Job_Task.1",
            "job-task-1",
            "job_task_1",
            "-",
            "",
            &"a".repeat(57),
            &"a".repeat(58),
            &"a".repeat(200),
            &format!("{}b", "a".repeat(199)),
        ];
        let names: Vec<String> = ids.iter().map(|id| job_name(id)).collect();
        for (id, n) in ids.iter().zip(&names) {
            assert!(is_dns_label(n), "{id:?} -> {n:?}");
            assert_eq!(&job_name(id), n);
        }
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(names[0], "ferry-0190f3a2-7c1e-7b7a-9d1e-3f2a1b0c9d8e");
        assert_eq!(names[2], "ferry-job-task-1");
        assert!(names[1].starts_with("ferry-job-task-1-"), "{}", names[1]);
        assert_eq!(names[6].len(), MAX_NAME, "an id that fits is kept whole");
    }

    #[test]
    fn label_values_fit_and_stay_distinct() {
        assert_eq!(label_value("nightly.report_1"), "nightly.report_1");
        for v in ["a/b", "-x-", &"z".repeat(64), "é"] {
            let l = label_value(v);
            assert!(is_label_value(&l), "{v:?} -> {l:?}");
            assert_ne!(l, label_value(&format!("{v}2")));
        }
    }
}
