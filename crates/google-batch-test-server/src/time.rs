//! Times and durations in Google's JSON forms: RFC 3339 in UTC with nanoseconds
//! (`2024-05-01T10:00:00.123456789Z`), and `google.protobuf.Duration` as seconds with up to
//! nine fractional digits and an `s` (`"3600s"`, `"12.345s"`).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `12.345s`: whole seconds, then the fraction without trailing zeros.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", d.as_secs());
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0'))
}

/// `"3600s"`, `"1.5s"`; `None` for anything else (no sign, no unit other than `s`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let number = s.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let secs: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_googles_form() {
        assert_eq!(parse_duration("3600s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.000000001s"), Some(Duration::from_nanos(1)));
        for bad in ["", "s", "10", "1m", "-1s", "1.0000000001s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(12_345)), "12.345s");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }
}
