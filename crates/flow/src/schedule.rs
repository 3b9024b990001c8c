//! Schedules: when a trigger's cron expression ticks, read in its time zone.
//!
//! - [`Schedule::parse`] reads a cron expression (5 fields, 6 with seconds first, or an
//!   `@daily`-style name) and an IANA time zone, and says what is wrong with either, naming
//!   the field and what it accepts, or the nearest zone name;
//! - [`Schedule::next_after`] is the first tick strictly after an instant. Daylight saving time
//!   is followed as cron does: a fixed time that a spring-forward day skips (02:30 in
//!   `Europe/Paris` on the last Sunday of March) ticks once, at the first time after the gap
//!   (03:00); a fixed time that a fall-back day repeats ticks once, the first time; a wildcard
//!   or step in the seconds, minutes or hours ticks in real time through both;
//! - [`Tick`] is what a tick gives a trigger's inputs: `{{ trigger.time }}` and
//!   `{{ trigger.date }}`.
//!
//! Ticks are instants ([`DateTime<Utc>`]); the zone decides only which instants they are.

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The `@` names a schedule may be, and what they stand for.
pub const NICKNAMES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// The fields of a 6-field expression, with what each accepts.
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    (
        "day of month",
        "1-31, `L` (the last day) or `15W` (the weekday nearest the 15th)",
    ),
    ("month", "1-12 or JAN-DEC"),
    (
        "day of week",
        "0-7 (0 and 7 are Sunday) or SUN-SAT, `5L` (the last Friday) or `1#2` (the second Monday)",
    ),
];

/// What every field accepts besides its values.
const FORMS: &str = "`*` (any), a list `1,15`, a range `1-5` or a step `*/15`";

/// The default time zone.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A parsed schedule: a cron expression read in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses `expression` in `timezone` (an IANA name; `None` is UTC). The error says what is
    /// wrong: `Err((Some(message), _))` for the expression, `Err((_, Some(message)))` for the
    /// zone; both may be wrong at once.
    pub fn parse(
        expression: &str,
        timezone: Option<&str>,
    ) -> Result<Schedule, (Option<String>, Option<String>)> {
        let cron = parse_expression(expression);
        let zone = parse_zone(timezone.unwrap_or(DEFAULT_TIMEZONE));
        match (cron, zone) {
            (Ok(cron), Ok(zone)) => Ok(Schedule { cron, zone }),
            (c, z) => Err((c.err(), z.err())),
        }
    }

    /// The time zone the expression is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first tick strictly after `after`, if the expression ever ticks again (before the
    /// year 5000).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The ticks in `(after, until]`, in order, at most `limit` of them.
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < limit {
            match self.next_after(at) {
                Some(t) if t <= until => {
                    out.push(t);
                    at = t;
                }
                _ => break,
            }
        }
        out
    }

    /// The latest tick at or before `at`, if there is one (after the year 1).
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// What the tick at `at` gives a trigger's inputs.
    pub fn tick(&self, at: DateTime<Utc>) -> Tick {
        let local = at.with_timezone(&self.zone);
        Tick {
            time: local.to_rfc3339_opts(SecondsFormat::Secs, true),
            date: local.format("%Y-%m-%d").to_string(),
        }
    }
}

/// What a schedule's tick gives a trigger's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// `{{ trigger.time }}`: the tick, RFC 3339 with the offset of the schedule's time zone at
    /// that instant (`2026-12-07T02:00:00+01:00`; `Z` in UTC).
    pub time: String,
    /// `{{ trigger.date }}`: the tick's calendar date in the schedule's time zone, `YYYY-MM-DD`.
    pub date: String,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses a cron expression, or says what is wrong with it: which field, and what it accepts.
fn parse_expression(expression: &str) -> Result<Cron, String> {
    let text = expression.trim();
    let accepted = "a cron expression of 5 fields (minute hour day-of-month month day-of-week, e.g. `0 2 * * *`), \
                    6 fields with seconds first (`*/10 * * * * *`), or one of @yearly, @monthly, @weekly, @daily, @hourly";
    if let Some(name) = text.strip_prefix('@') {
        return match NICKNAMES.iter().find(|(n, _)| n[1..].eq_ignore_ascii_case(name)) {
            Some((_, stands_for)) => parser().parse(stands_for).map_err(|e| e.to_string()),
            None => Err(format!(
                "`{text}` is not a schedule name; a schedule is {accepted}"
            )),
        };
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "`{}` has {} fields; a schedule is {accepted}",
            crate::yaml::truncate(text, 60),
            fields.len()
        ));
    }
    let offset = 6 - fields.len();
    // Each field alone, the others any: the first one that fails is the one to name.
    for (i, field) in fields.iter().enumerate() {
        let mut alone = ["0", "*", "*", "*", "*", "*"];
        alone[i + offset] = *field;
        if let Err(e) = parser().parse(&alone.join(" ")) {
            let (name, values) = FIELDS[i + offset];
            return Err(format!(
                "field {} ({name}) `{}` is not valid ({}); it accepts {values}, and {FORMS}",
                i + 1,
                crate::yaml::truncate(field, 40),
                reason(&e)
            ));
        }
    }
    let cron = parser().parse(text).map_err(|e| {
        format!(
            "`{text}` is not a valid schedule ({}); a schedule is {accepted}",
            reason(&e)
        )
    })?;
    // A schedule that never ticks (`0 0 30 2 *`) is a mistake worth saying at once.
    let from = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    if cron.find_next_occurrence(&from, false).is_err() {
        return Err(format!("`{text}` never ticks: no date has all of its fields"));
    }
    Ok(cron)
}

/// croner's message, without its own prefixes.
fn reason(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    match e {
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => {
            m.trim_end_matches('.').to_string()
        }
        other => other.to_string().trim_end_matches('.').to_string(),
    }
}

/// Parses an IANA time zone name, or says which one was likely meant.
fn parse_zone(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(tz);
    }
    // Case aside (`europe/paris`), a name is the zone it names.
    if let Some(tz) = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "unknown time zone `{}` (time zone names are case-sensitive: did you mean `{}`?)",
            crate::yaml::truncate(name, 60),
            tz.name()
        ));
    }
    let nearest = nearest_zone(name);
    Err(format!(
        "unknown time zone `{}`{}; write an IANA time zone name such as `Europe/Paris`, `America/New_York` or `UTC`",
        crate::yaml::truncate(name, 60),
        nearest
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default()
    ))
}

/// The zone name nearest to `name`: by the whole name, or by its city alone (`Paris`).
fn nearest_zone(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    let city = |z: &str| z.rsplit('/').next().unwrap_or(z).to_lowercase();
    let mut best: Option<(usize, &'static str)> = None;
    for tz in chrono_tz::TZ_VARIANTS.iter() {
        let zone = tz.name();
        let d = strsim::damerau_levenshtein(&lower, &zone.to_lowercase())
            .min(strsim::damerau_levenshtein(&city(&lower), &city(zone)) + usize::from(lower.contains('/')));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, zone));
        }
    }
    let longest = lower.chars().count().max(3);
    best.filter(|(d, _)| *d <= (longest / 3).max(2)).map(|(_, z)| z)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(expr: &str, zone: Option<&str>) -> Schedule {
        Schedule::parse(expr, zone).unwrap()
    }

    #[test]
    fn five_six_fields_and_names_tick_as_cron_does() {
        let s = schedule("0 2 * * *", None);
        assert_eq!(
            s.next_after(utc("2026-12-06T21:37:00Z")),
            Some(utc("2026-12-07T02:00:00Z"))
        );
        // Strictly after: a tick is never its own next tick.
        assert_eq!(
            s.next_after(utc("2026-12-07T02:00:00Z")),
            Some(utc("2026-12-08T02:00:00Z"))
        );
        let every_10s = schedule("*/10 * * * * *", None);
        assert_eq!(
            every_10s.ticks_between(utc("2026-12-06T00:00:00Z"), utc("2026-12-06T00:00:30Z"), 100),
            vec![
                utc("2026-12-06T00:00:10Z"),
                utc("2026-12-06T00:00:20Z"),
                utc("2026-12-06T00:00:30Z")
            ]
        );
        assert_eq!(
            schedule("@daily", None).next_after(utc("2026-12-06T10:00:00Z")),
            Some(utc("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            schedule("@HOURLY", None).next_after(utc("2026-12-06T10:00:00Z")),
            Some(utc("2026-12-06T11:00:00Z"))
        );
        // Monday to Friday at 09:30, named days.
        assert_eq!(
            schedule("30 9 * * MON-FRI", None).next_after(utc("2026-12-05T12:00:00Z")),
            Some(utc("2026-12-07T09:30:00Z"))
        );
        assert_eq!(
            every_10s.last_at_or_before(utc("2026-12-06T00:00:15Z")),
            Some(utc("2026-12-06T00:00:10Z"))
        );
    }

    #[test]
    fn a_zone_decides_which_instants_tick() {
        let paris = schedule("0 2 * * *", Some("Europe/Paris"));
        // Winter: UTC+1.
        assert_eq!(
            paris.next_after(utc("2026-12-06T12:00:00Z")),
            Some(utc("2026-12-07T01:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            paris.next_after(utc("2026-07-01T12:00:00Z")),
            Some(utc("2026-07-02T00:00:00Z"))
        );
        let tick = paris.tick(utc("2026-12-07T01:00:00Z"));
        assert_eq!(tick.time, "2026-12-07T02:00:00+01:00");
        assert_eq!(tick.date, "2026-12-07");
        // The date is the zone's: 23:30 UTC is the next day in Tokyo.
        let tokyo = schedule("30 8 * * *", Some("Asia/Tokyo"));
        let t = tokyo.next_after(utc("2026-12-06T12:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-12-06T23:30:00Z"));
        assert_eq!(tokyo.tick(t).date, "2026-12-07");
        assert_eq!(
            schedule("0 2 * * *", None).tick(utc("2026-12-07T02:00:00Z")).time,
            "2026-12-07T02:00:00Z"
        );
    }

    #[test]
    fn a_time_the_spring_forward_skips_ticks_once_after_the_gap() {
        // 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist.
        let s = schedule("30 2 * * *", Some("Europe/Paris"));
        let ticks = s.ticks_between(utc("2026-03-27T12:00:00Z"), utc("2026-03-31T12:00:00Z"), 10);
        assert_eq!(
            ticks,
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first time after the gap
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
                utc("2026-03-31T00:30:00Z"),
            ]
        );
        assert_eq!(s.tick(ticks[1]).time, "2026-03-29T03:00:00+02:00");
        // An hourly wildcard skips the hour that does not exist.
        let hourly = schedule("0 * * * *", Some("Europe/Paris"));
        let ticks = hourly.ticks_between(utc("2026-03-28T23:30:00Z"), utc("2026-03-29T02:30:00Z"), 10);
        let local: Vec<String> = ticks.iter().map(|t| hourly.tick(*t).time).collect();
        assert_eq!(
            local,
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T04:00:00+02:00"
            ]
        );
    }

    #[test]
    fn a_time_the_fall_back_repeats_ticks_once() {
        // 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
        let s = schedule("30 2 * * *", Some("Europe/Paris"));
        let ticks = s.ticks_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"), 10);
        assert_eq!(
            ticks,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn a_bad_expression_names_the_field_and_what_it_accepts() {
        let err = |e: &str| Schedule::parse(e, None).unwrap_err().0.unwrap();
        let m = err("0 25 * * *");
        assert!(m.starts_with("field 2 (hour) `25` is not valid"), "{m}");
        assert!(m.contains("0-23"), "{m}");
        let m = err("0 2 * * * * *");
        assert!(m.contains("has 7 fields"), "{m}");
        assert!(m.contains("5 fields"), "{m}");
        let m = err("61 * * * * *");
        assert!(m.starts_with("field 1 (second)"), "{m}");
        let m = err("* * * 13 *");
        assert!(m.starts_with("field 4 (month)"), "{m}");
        let m = err("* * * * funday");
        assert!(m.starts_with("field 5 (day of week)"), "{m}");
        let m = err("@fortnightly");
        assert!(m.contains("not a schedule name"), "{m}");
        assert!(m.contains("@daily"), "{m}");
        let m = err("0 0 30 2 *");
        assert!(m.contains("never ticks"), "{m}");
        assert!(Schedule::parse("", None).unwrap_err().0.is_some());
    }

    #[test]
    fn an_unknown_zone_suggests_the_nearest() {
        let err = |z: &str| Schedule::parse("0 2 * * *", Some(z)).unwrap_err().1.unwrap();
        let m = err("Europe/Pariss");
        assert!(m.contains("did you mean `Europe/Paris`?"), "{m}");
        let m = err("europe/paris");
        assert!(m.contains("case-sensitive: did you mean `Europe/Paris`?"), "{m}");
        let m = err("Paris");
        assert!(m.contains("did you mean `Europe/Paris`?"), "{m}");
        let m = err("Mars/Olympus_Mons");
        assert!(m.contains("unknown time zone `Mars/Olympus_Mons`"), "{m}");
        assert!(m.contains("IANA"), "{m}");
        // Both wrong at once: both said.
        let (c, z) = Schedule::parse("0 99 * * *", Some("Nowhere")).unwrap_err();
        assert!(c.is_some() && z.is_some());
    }
}
