//! Names and values as Google Batch accepts them: job ids from attempt ids, label values, the
//! request id that makes a create idempotent, and a task's resources in Batch's units.

use sha2::{Digest, Sha256};

/// The most a job id, a label key or a label value holds.
const MAX: usize = 63;

/// The readable part of a job id, before its hash.
const READABLE: usize = 40;

/// The id of an attempt's job: `ferry-`, the attempt id lowercased with every other character
/// a `-` (at most 40 of them), `-` and 12 hex digits of the attempt id's SHA-256, so that two
/// attempt ids that differ only in case or punctuation never share a job. Batch wants
/// `^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`.
pub fn job_id(attempt_id: &str) -> String {
    let mut readable: String = attempt_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(READABLE)
        .collect();
    while readable.contains("--") {
        readable = readable.replace("--", "-");
    }
    let readable = readable.trim_matches('-');
    let hash = hex(&Sha256::digest(attempt_id.as_bytes())[..6]);
    if readable.is_empty() {
        format!("ferry-{hash}")
    } else {
        format!("ferry-{readable}-{hash}")
    }
}

/// `value` as a label value: lowercase letters, digits, `_` and `-`, at most 63 characters
/// (others become `_`; a longer one keeps its head and a hash of the whole).
pub fn label(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if clean.len() <= MAX {
        return clean;
    }
    let hash = hex(&Sha256::digest(value.as_bytes())[..4]);
    format!("{}-{hash}", &clean[..MAX - 9])
}

/// The request id of an attempt's create: a UUID from the attempt id, the same on every try,
/// so that Batch answers a create retried after a lost answer with the job it made.
pub fn request_id(attempt_id: &str) -> String {
    let digest = Sha256::digest(format!("ferry-google-batch:{attempt_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// A task's CPUs in Batch's milli-CPUs (rounded up).
pub fn cpu_milli(cpu: f64) -> Result<u64, String> {
    if !(cpu.is_finite() && cpu > 0.0) {
        return Err(format!("resources.cpu {cpu} is not a positive number of CPUs"));
    }
    Ok((cpu * 1000.0).ceil() as u64)
}

/// Memory in bytes as Batch's MiB (rounded up).
pub fn memory_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` is a job id Batch accepts.
pub fn is_job_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=MAX).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_valid_distinct_and_stable() {
        for attempt in [
            "01JABCDEF.task-1.2",
            "a",
            "-._",
            &"X".repeat(200),
            "UPPER_and.lower-1",
            "upper_and.lower-1",
        ] {
            let id = job_id(attempt);
            assert!(is_job_id(&id), "{attempt:?} → {id:?}");
            assert_eq!(id, job_id(attempt));
        }
        assert_ne!(job_id("Ab"), job_id("ab"));
        assert_ne!(job_id("a.b"), job_id("a-b"));
        assert!(job_id("job1.extract.1").starts_with("ferry-job1-extract-1-"));
    }

    #[test]
    fn label_values_are_what_google_accepts() {
        assert_eq!(label("Flow.Name/v1"), "flow_name_v1");
        let long = label(&"a".repeat(100));
        assert_eq!(long.len(), 63);
        assert_ne!(long, label(&"a".repeat(101)));
    }

    #[test]
    fn a_request_id_is_a_uuid_of_the_attempt() {
        let a = request_id("attempt-1");
        assert_eq!(a, request_id("attempt-1"));
        assert_ne!(a, request_id("attempt-2"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn resources_in_batch_units() {
        assert_eq!(cpu_milli(0.5).unwrap(), 500);
        assert_eq!(cpu_milli(2.0).unwrap(), 2000);
        assert!(cpu_milli(0.0).is_err());
        assert_eq!(memory_mib(512 * 1024 * 1024), 512);
        assert_eq!(memory_mib(1), 1);
    }
}
