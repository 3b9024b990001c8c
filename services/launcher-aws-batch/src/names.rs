//! Names, tags and sizes as AWS Batch accepts them, derived deterministically from what ferry
//! knows: a job's name from the attempt id, a job definition's from what it contains, a queue's
//! from its compute environment; and the vCPU and memory a task asks for, checked against what
//! the platform can give before anything is submitted.

use ferry_event::payload::AwsBatchPlatform;
use sha2::{Digest, Sha256};

/// The longest name Batch accepts for a job, a job definition or a job queue.
pub const MAX_NAME: usize = 128;

/// The first hex digits of the SHA-256 of `parts`, each length-prefixed so that no two lists
/// give the same input.
fn digest(parts: &[&str], hex_digits: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(hex_digits)
        .collect()
}

fn name_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The Batch job name of an attempt: `ferry-<attempt id>` when that is a valid name (at most
/// 128 letters, digits, `-` and `_`). An attempt id with a `.`, or too long, is mapped to its
/// valid characters (at most 100) and a hash of the whole id, so that two ids never meet.
pub fn job_name(attempt_id: &str) -> String {
    let plain = format!("ferry-{attempt_id}");
    if plain.len() <= MAX_NAME && plain.chars().all(name_char_ok) {
        return plain;
    }
    let kept: String = attempt_id
        .chars()
        .map(|c| if name_char_ok(c) { c } else { '_' })
        .take(100)
        .collect();
    format!("ferry-{kept}-{}", digest(&[attempt_id], 16))
}

/// The job queue ferry creates for a compute environment (its name, or the name at the end of
/// its ARN): `ferry-<name>`, shortened with a hash when it would be too long.
pub fn queue_name(compute_environment: &str) -> String {
    let base = compute_environment
        .rsplit('/')
        .next()
        .unwrap_or(compute_environment);
    let kept: String = base
        .chars()
        .map(|c| if name_char_ok(c) { c } else { '_' })
        .collect();
    let plain = format!("ferry-{kept}");
    if plain.len() <= MAX_NAME && kept == base {
        return plain;
    }
    let short: String = kept.chars().take(100).collect();
    format!("ferry-{short}-{}", digest(&[compute_environment], 16))
}

/// Everything a job definition holds. Two tasks asking for the same share one definition,
/// registered once: its name is a hash of all of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DefinitionSpec {
    pub image: String,
    pub platform: AwsBatchPlatform,
    /// vCPUs as Batch writes them (`0.25`, `1`, `16`).
    pub vcpus: String,
    pub memory_mib: u64,
    pub gpus: u32,
    pub job_role_arn: Option<String>,
    pub execution_role_arn: Option<String>,
    /// Fargate's `networkConfiguration.assignPublicIp`, when the task sets it.
    pub assign_public_ip: Option<bool>,
    /// Fargate's `fargatePlatformConfiguration.platformVersion`, when the task sets it.
    pub platform_version: Option<String>,
    /// Fargate's `ephemeralStorage.sizeInGiB`, when the task sets it.
    pub ephemeral_storage_gib: Option<u32>,
}

impl DefinitionSpec {
    /// `ferry-<first 24 hex digits of the SHA-256 of the spec>`. The Fargate settings a task
    /// leaves unset are left out of what is hashed, so that a definition registered before
    /// they existed keeps its name (and is reused); each one set is hashed with its name.
    pub fn name(&self) -> String {
        let platform = match self.platform {
            AwsBatchPlatform::Fargate => "FARGATE",
            AwsBatchPlatform::Ec2 => "EC2",
        };
        let memory = self.memory_mib.to_string();
        let gpus = self.gpus.to_string();
        let mut parts: Vec<String> = [
            "v1",
            &self.image,
            platform,
            &self.vcpus,
            &memory,
            &gpus,
            self.job_role_arn.as_deref().unwrap_or(""),
            self.execution_role_arn.as_deref().unwrap_or(""),
        ]
        .map(String::from)
        .to_vec();
        if let Some(public) = self.assign_public_ip {
            parts.push(format!("assignPublicIp={}", assign_public_ip(public)));
        }
        if let Some(version) = &self.platform_version {
            parts.push(format!("platformVersion={version}"));
        }
        if let Some(gib) = self.ephemeral_storage_gib {
            parts.push(format!("ephemeralStorageGiB={gib}"));
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        format!("ferry-{}", digest(&parts, 24))
    }
}

/// `networkConfiguration.assignPublicIp` as Batch writes it.
pub fn assign_public_ip(public: bool) -> &'static str {
    if public { "ENABLED" } else { "DISABLED" }
}

/// The directions an AWS region's name has before its number (`us-east-1`, `ap-southeast-2`).
const DIRECTIONS: &[&str] = &[
    "east",
    "west",
    "north",
    "south",
    "central",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
];

/// Checks that `region` is written as AWS names its regions: an area code (`us`, `eu`, `ap`,
/// `eusc`…), an optional partition or country (`gov`, `iso`, `de`), a direction and a number —
/// `us-east-1`, `us-gov-west-1`, `ap-southeast-7`, `eusc-de-east-1`. A name that is not (a typo,
/// upper case, an availability zone such as `us-east-1a`) is refused here, before any call,
/// rather than failing at the endpoint.
pub fn region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let well_formed = match parts.as_slice() {
        [area, rest @ .., direction, number] if rest.len() <= 1 => {
            let letters = |p: &str| (2..=4).contains(&p.len()) && p.chars().all(|c| c.is_ascii_lowercase());
            letters(area)
                && rest.iter().all(|p| letters(p))
                && DIRECTIONS.contains(direction)
                && (1..=2).contains(&number.len())
                && number.chars().all(|c| c.is_ascii_digit())
        }
        _ => false,
    };
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "runner.region {region:?} is not an AWS region: write one such as us-east-1, eu-west-1 or ap-southeast-2 \
             (a region, not an availability zone), or leave it out to use the launcher's --aws-region"
        ))
    }
}

/// The region of a Batch ARN (`arn:aws:batch:eu-west-1:123456789012:job-queue/q`); `None` for
/// a plain name.
pub fn arn_region(name: &str) -> Option<&str> {
    let mut parts = name.strip_prefix("arn:")?.split(':');
    let (_partition, _service, region) = (parts.next()?, parts.next()?, parts.next()?);
    Some(region).filter(|r| !r.is_empty())
}

/// Checks a Fargate platform version: `LATEST` or a version such as `1.4.0`.
pub fn platform_version(version: &str) -> Result<(), String> {
    let numbers: Vec<&str> = version.split('.').collect();
    let numbered = numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if version == "LATEST" || numbered {
        Ok(())
    } else {
        Err(format!(
            "runner.platformVersion {version:?} is not a Fargate platform version: write LATEST or a version such as \
             1.4.0"
        ))
    }
}

/// The least and most ephemeral storage Fargate gives a job, in GiB.
pub const FARGATE_EPHEMERAL_GIB: (u32, u32) = (21, 200);

/// A tag value as Batch accepts it: at most 256 characters of letters, digits, spaces and
/// `_ . : / = + - @`; others become `_`.
pub fn tag_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// Fargate's valid vCPU and memory combinations: for each vCPU count (in quarters of a vCPU),
/// the memory in MiB from, to and by.
const FARGATE: &[(u32, u64, u64, u64)] = &[
    (1, 512, 2048, 512),
    (2, 1024, 4096, 1024),
    (4, 2048, 8192, 1024),
    (8, 4096, 16384, 1024),
    (16, 8192, 30720, 1024),
    (32, 16384, 61440, 4096),
    (64, 32768, 122880, 8192),
];

/// vCPUs in quarters, written as Batch writes them.
fn quarters_text(q: u32) -> String {
    match q % 4 {
        0 => (q / 4).to_string(),
        1 => format!("{}.25", q / 4),
        2 => format!("{}.5", q / 4),
        _ => format!("{}.75", q / 4),
    }
}

fn fargate_ok(q: u32, mib: u64) -> bool {
    FARGATE
        .iter()
        .any(|&(vq, from, to, by)| vq == q && (from..=to).contains(&mib) && (mib - from).is_multiple_of(by))
}

/// The smallest valid Fargate size with at least `q` quarter-vCPUs and `mib` MiB, if any.
fn fargate_nearest(q: u32, mib: u64) -> Option<(u32, u64)> {
    FARGATE.iter().find_map(|&(vq, from, to, by)| {
        if vq < q || mib > to {
            return None;
        }
        let m = if mib <= from {
            from
        } else {
            from + (mib - from).div_ceil(by) * by
        };
        (m <= to).then_some((vq, m))
    })
}

/// The vCPUs and memory (MiB) of a job for a task's `resources.cpu`, memory in bytes and GPU
/// count on `platform`. Fargate takes only its fixed combinations and no GPUs; absent values
/// take the smallest size that fits the rest (Fargate), or 1 vCPU and 2048 MiB (EC2). The
/// error names the field and the nearest valid size.
pub fn size(
    platform: AwsBatchPlatform,
    cpu: Option<f64>,
    memory_bytes: Option<u64>,
    gpus: u32,
) -> Result<(String, u64), String> {
    const MIB: u64 = 1 << 20;
    let mib = memory_bytes.map(|b| b.div_ceil(MIB));
    if let Some(c) = cpu
        && !(c.is_finite() && c > 0.0)
    {
        return Err(format!(
            "resources.cpu {c} is refused: give a positive number of vCPUs"
        ));
    }
    match platform {
        AwsBatchPlatform::Ec2 => {
            let vcpus = match cpu {
                None => 1,
                Some(c) if c.fract() == 0.0 && c <= 4096.0 => c as u32,
                Some(c) => {
                    return Err(format!(
                        "resources.cpu {c} is refused on AWS Batch EC2: jobs get whole vCPUs; ask for {}",
                        c.ceil().max(1.0)
                    ));
                }
            };
            let mib = mib.unwrap_or(2048);
            if mib < 4 {
                return Err(format!(
                    "resources.memory is {mib} MiB: AWS Batch needs at least 4 MiB for a job"
                ));
            }
            Ok((vcpus.to_string(), mib))
        }
        AwsBatchPlatform::Fargate => {
            if gpus > 0 {
                return Err(
                    "resources.gpu is refused on AWS Batch Fargate, which has no GPUs: use a compute environment on EC2 \
                     (runner.platform: ec2)"
                        .into(),
                );
            }
            // In quarters of a vCPU, rounded up; exactness is checked below.
            let q = cpu.map(|c| (c * 4.0).ceil().max(1.0) as u32);
            let exact_cpu = cpu.is_none_or(|c| (c * 4.0).fract() == 0.0);
            let want_q = q.unwrap_or(1);
            let want_mib = mib.unwrap_or(0);
            let nearest = fargate_nearest(want_q, want_mib);
            let Some((nq, nmib)) = nearest else {
                return Err(format!(
                    "resources (cpu {}, memory {} MiB) exceed what AWS Batch Fargate gives a job (at most 16 vCPUs with \
                     122880 MiB): ask for less, or use a compute environment on EC2 (runner.platform: ec2)",
                    cpu.map(|c| c.to_string()).unwrap_or_else(|| "unset".into()),
                    want_mib
                ));
            };
            let chosen = match (q, mib) {
                // Both given: they must be one of Fargate's combinations.
                (Some(q), Some(m)) if exact_cpu && fargate_ok(q, m) => (q, m),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "resources (cpu {}, memory {} MiB) are not a valid AWS Batch Fargate size; the nearest one is \
                         cpu {} with memory {}Mi",
                        cpu.unwrap_or_default(),
                        want_mib,
                        quarters_text(nq),
                        nmib
                    ));
                }
                // Only the CPUs: the least memory they come with.
                (Some(q), None) if exact_cpu && nq == q => (nq, nmib),
                (Some(_), None) => {
                    return Err(format!(
                        "resources.cpu {} is not a valid AWS Batch Fargate size (0.25, 0.5, 1, 2, 4, 8 or 16 vCPUs); \
                         the nearest one is {}",
                        cpu.unwrap_or_default(),
                        quarters_text(nq)
                    ));
                }
                // Only the memory, or nothing: the fewest CPUs that take it.
                (None, Some(m)) if nmib == m => (nq, nmib),
                (None, Some(m)) => {
                    return Err(format!(
                        "resources.memory {m} MiB is not a valid AWS Batch Fargate size; the nearest one is {nmib}Mi \
                         (with cpu {})",
                        quarters_text(nq)
                    ));
                }
                (None, None) => (nq, nmib),
            };
            Ok((quarters_text(chosen.0), chosen.1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AwsBatchPlatform::{Ec2, Fargate};

    const GI: u64 = 1 << 30;
    const MI: u64 = 1 << 20;

    #[test]
    fn job_names_come_from_the_attempt_id_and_never_meet() {
        assert_eq!(job_name("a1-b_2"), "ferry-a1-b_2");
        let dotted = job_name("job.task.1");
        assert!(dotted.starts_with("ferry-job_task_1-"), "{dotted}");
        // The id with `_` where the other has `.` is another job.
        assert_ne!(dotted, job_name("job_task_1"));
        assert_eq!(dotted, job_name("job.task.1"), "deterministic");
        let long = job_name(&"x".repeat(200));
        assert!(long.len() <= MAX_NAME, "{}", long.len());
        assert!(long.chars().all(name_char_ok));
        assert_ne!(long, job_name(&"x".repeat(199)));
    }

    #[test]
    fn queue_names_come_from_the_compute_environment() {
        assert_eq!(queue_name("spot"), "ferry-spot");
        assert_eq!(
            queue_name("arn:aws:batch:eu-west-1:123456789012:compute-environment/spot"),
            "ferry-spot"
        );
        let odd = queue_name("a.b");
        assert!(odd.starts_with("ferry-a_b-") && odd.len() <= MAX_NAME, "{odd}");
    }

    #[test]
    fn a_definition_is_named_by_all_it_holds() {
        let spec = DefinitionSpec {
            image: "python:3.12".into(),
            platform: Fargate,
            vcpus: "1".into(),
            memory_mib: 2048,
            gpus: 0,
            job_role_arn: None,
            execution_role_arn: None,
            assign_public_ip: None,
            platform_version: None,
            ephemeral_storage_gib: None,
        };
        let name = spec.name();
        assert!(name.starts_with("ferry-") && name.len() == 30, "{name}");
        assert_eq!(name, spec.clone().name());
        // Without Fargate's own settings, the name of a definition registered before they
        // existed: it is found and reused, not registered again.
        assert_eq!(
            name,
            format!(
                "ferry-{}",
                digest(&["v1", "python:3.12", "FARGATE", "1", "2048", "0", "", ""], 24)
            )
        );
        // The same settings share one definition.
        let public = DefinitionSpec {
            assign_public_ip: Some(true),
            platform_version: Some("1.4.0".into()),
            ..spec.clone()
        };
        assert_eq!(public.name(), public.clone().name());
        for other in [
            DefinitionSpec {
                image: "python:3.13".into(),
                ..spec.clone()
            },
            DefinitionSpec {
                platform: Ec2,
                ..spec.clone()
            },
            DefinitionSpec {
                memory_mib: 4096,
                ..spec.clone()
            },
            DefinitionSpec {
                job_role_arn: Some("arn:aws:iam::123456789012:role/r".into()),
                ..spec.clone()
            },
            DefinitionSpec {
                assign_public_ip: Some(true),
                ..spec.clone()
            },
            DefinitionSpec {
                assign_public_ip: Some(false),
                ..spec.clone()
            },
            DefinitionSpec {
                platform_version: Some("LATEST".into()),
                ..spec.clone()
            },
            DefinitionSpec {
                platform_version: Some("1.4.0".into()),
                ..spec.clone()
            },
            DefinitionSpec {
                ephemeral_storage_gib: Some(21),
                ..spec.clone()
            },
        ] {
            assert_ne!(other.name(), name, "{other:?}");
        }
        // Each setting apart from the others.
        let names: std::collections::HashSet<String> = [
            public.clone(),
            DefinitionSpec {
                assign_public_ip: Some(false),
                ..public.clone()
            },
            DefinitionSpec {
                platform_version: Some("1.3.0".into()),
                ..public.clone()
            },
            DefinitionSpec {
                platform_version: None,
                ephemeral_storage_gib: Some(30),
                ..public.clone()
            },
        ]
        .iter()
        .map(DefinitionSpec::name)
        .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn regions_are_written_as_aws_names_them() {
        for ok in [
            "us-east-1",
            "eu-west-3",
            "ap-southeast-2",
            "ap-northeast-3",
            "il-central-1",
            "us-gov-west-1",
            "us-isob-east-1",
            "cn-northwest-1",
            "eusc-de-east-1",
            "mx-central-1",
        ] {
            assert_eq!(region(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "us-east1",
            "useast-1",
            "US-EAST-1",
            "us-est-1",
            "us-east-1a",
            "us-east-",
            "east-1",
            "us-east-123",
            "us-gov-isob-west-1",
            "us_east_1",
        ] {
            let e = region(bad).expect_err(bad);
            assert!(e.contains("runner.region") && e.contains("us-east-1"), "{e}");
        }
    }

    #[test]
    fn arns_name_their_region() {
        assert_eq!(
            arn_region("arn:aws:batch:eu-west-1:123456789012:job-queue/q"),
            Some("eu-west-1")
        );
        assert_eq!(
            arn_region("arn:aws-us-gov:batch:us-gov-west-1:123456789012:compute-environment/ce"),
            Some("us-gov-west-1")
        );
        assert_eq!(arn_region("ferry-fargate"), None);
        assert_eq!(arn_region("arn:aws"), None);
    }

    #[test]
    fn fargate_platform_versions_are_latest_or_numbered() {
        for ok in ["LATEST", "1.4.0", "1.3.0"] {
            assert_eq!(platform_version(ok), Ok(()), "{ok}");
        }
        for bad in ["latest", "1.4", "v1.4.0", "1..0", ""] {
            assert!(
                platform_version(bad)
                    .expect_err(bad)
                    .contains("runner.platformVersion"),
                "{bad}"
            );
        }
    }

    #[test]
    fn tag_values_keep_what_aws_accepts() {
        assert_eq!(tag_value("flow-1/a b:c=d+e@f.g"), "flow-1/a b:c=d+e@f.g");
        assert_eq!(tag_value("a,b;c"), "a_b_c");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
    }

    #[test]
    fn fargate_sizes_are_its_combinations_and_errors_name_the_nearest() {
        assert_eq!(size(Fargate, None, None, 0).unwrap(), ("0.25".into(), 512));
        assert_eq!(size(Fargate, Some(1.0), None, 0).unwrap(), ("1".into(), 2048));
        assert_eq!(
            size(Fargate, Some(0.5), Some(3 * GI), 0).unwrap(),
            ("0.5".into(), 3072)
        );
        assert_eq!(size(Fargate, None, Some(5 * GI), 0).unwrap(), ("1".into(), 5120));
        assert_eq!(
            size(Fargate, Some(16.0), Some(120 * GI), 0).unwrap(),
            ("16".into(), 122880)
        );
        let e = size(Fargate, Some(1.0), Some(3000 * MI), 0).unwrap_err();
        assert!(e.contains("nearest one is cpu 1 with memory 3072Mi"), "{e}");
        let e = size(Fargate, Some(3.0), None, 0).unwrap_err();
        assert!(
            e.contains("resources.cpu 3") && e.contains("nearest one is 4"),
            "{e}"
        );
        let e = size(Fargate, Some(0.25), Some(4 * GI), 0).unwrap_err();
        assert!(e.contains("cpu 0.5 with memory 4096Mi"), "{e}");
        let e = size(Fargate, None, Some(700 * MI), 0).unwrap_err();
        assert!(e.contains("1024Mi") && e.contains("cpu 0.25"), "{e}");
        let e = size(Fargate, Some(32.0), None, 0).unwrap_err();
        assert!(
            e.contains("at most 16 vCPUs") && e.contains("platform: ec2"),
            "{e}"
        );
        let e = size(Fargate, None, None, 1).unwrap_err();
        assert!(e.contains("resources.gpu"), "{e}");
    }

    #[test]
    fn ec2_sizes_are_whole_vcpus() {
        assert_eq!(size(Ec2, None, None, 0).unwrap(), ("1".into(), 2048));
        assert_eq!(size(Ec2, Some(3.0), Some(GI + 1), 2).unwrap(), ("3".into(), 1025));
        let e = size(Ec2, Some(0.5), None, 0).unwrap_err();
        assert!(e.contains("whole vCPUs") && e.contains("ask for 1"), "{e}");
        assert!(size(Ec2, Some(-1.0), None, 0).unwrap_err().contains("positive"));
    }
}
