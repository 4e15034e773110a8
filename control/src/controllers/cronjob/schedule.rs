//! Standard five-field cron schedules as upstream's CronJobs read them (robfig/cron's
//! `ParseStandard`): minute, hour, day of month, month, day of week; `*`, `?`, lists,
//! ranges, steps, month and weekday names, and the `@yearly`…`@hourly` descriptors.
//! Evaluated on wall-clock time in a `jiff` time zone. Our own small parser: the cron
//! crates on crates.io all work on chrono's types, and jiff already holds the time zones.

use jiff::{
    Timestamp, ToSpan,
    civil::{Date, DateTime},
    tz::TimeZone,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected exactly 5 fields, found {found}: [{fields}]")]
    FieldCount { found: usize, fields: String },
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse int from {0}")]
    Number(String),
    #[error("beginning of range ({value}) below minimum ({min}): {field}")]
    BelowMin { value: u32, min: u32, field: String },
    #[error("end of range ({value}) above maximum ({max}): {field}")]
    AboveMax { value: u32, max: u32, field: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {field}")]
    Backwards { start: u32, end: u32, field: String },
    #[error("step of range should be a positive number: {0}")]
    Step(String),
}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day of month or day of week given as `*`/`?`: then both must match (an AND);
    /// when both are restricted, either matching is enough (cron's OR).
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Bounds {
    min: u32,
    max: u32,
    /// Names for `min`, `min+1`, ...
    names: &'static [&'static str],
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Self, ScheduleError> {
        let spec = spec.trim();
        if let Some(descriptor) = spec.strip_prefix('@') {
            let expanded = match descriptor.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(ScheduleError::Descriptor(spec.to_owned())),
            };
            return Self::parse(expanded);
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                fields: fields.join(" "),
            });
        }
        let b = |min, max, names| Bounds { min, max, names };
        let minute = parse_field(fields[0], &b(0, 59, &[]))?;
        let hour = parse_field(fields[1], &b(0, 23, &[]))?;
        let dom = parse_field(fields[2], &b(1, 31, &[]))?;
        let month = parse_field(fields[3], &b(1, 12, MONTHS))?;
        let mut dow = parse_field(fields[4], &b(0, 7, DAYS))?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        let star = |f: &str| f.starts_with('*') || f.starts_with('?');
        Ok(Self {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star: star(fields[2]),
            dow_star: star(fields[4]),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `after` that the schedule names, in `tz`'s wall
    /// clock; None when there is none within five years (`0 0 30 2 *`). A wall time that
    /// a DST change skips runs an hour later (jiff's `compatible`, as Go's time.Date).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut t = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = t.year() + 5;
        loop {
            t = self.next_civil(t, limit)?;
            let ts = tz.to_ambiguous_zoned(t).compatible().ok()?.timestamp();
            if ts > after {
                return Some(ts);
            }
            // A repeated wall hour (DST fold) maps back before `after`: keep looking.
            t = t.checked_add(1.minute()).ok()?;
        }
    }

    /// robfig/cron's search on wall-clock time: advance the largest field that does not
    /// match to its next value, restarting from the month whenever a larger unit rolls over.
    fn next_civil(&self, mut t: DateTime, limit: i16) -> Option<DateTime> {
        'wrap: loop {
            if t.year() > limit {
                return None;
            }
            while self.month & (1 << t.month()) == 0 {
                t = DateTime::from(t.date().first_of_month()).checked_add(1.month()).ok()?;
                if t.month() == 1 {
                    continue 'wrap;
                }
            }
            while !self.day_matches(t.date()) {
                t = DateTime::from(t.date()).checked_add(1.day()).ok()?;
                if t.day() == 1 {
                    continue 'wrap;
                }
            }
            while self.hour & (1 << t.hour()) == 0 {
                t = t.with().minute(0).build().ok()?.checked_add(1.hour()).ok()?;
                if t.hour() == 0 {
                    continue 'wrap;
                }
            }
            while self.minute & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                if t.minute() == 0 {
                    continue 'wrap;
                }
            }
            return Some(t);
        }
    }
}

fn parse_field(field: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    let mut bits = 0u64;
    for part in field.split(',') {
        bits |= parse_range(part, bounds)?;
    }
    Ok(bits)
}

fn parse_value(s: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = bounds.names.iter().position(|n| *n == lower) {
        return Ok(bounds.min + i as u32);
    }
    s.parse::<u32>().map_err(|_| ScheduleError::Number(s.to_owned()))
}

/// `*`, `?`, `a`, `a-b`, each optionally `/step`.
fn parse_range(part: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => {
            let step = s.parse::<u32>().map_err(|_| ScheduleError::Number(s.to_owned()))?;
            if step == 0 {
                return Err(ScheduleError::Step(part.to_owned()));
            }
            (r, Some(step))
        }
        None => (part, None),
    };
    let (start, end) = if range == "*" || range == "?" {
        (bounds.min, bounds.max)
    } else if let Some((a, b)) = range.split_once('-') {
        (parse_value(a, bounds)?, parse_value(b, bounds)?)
    } else {
        let v = parse_value(range, bounds)?;
        // `a/n` runs from a to the field's end.
        (v, if step.is_some() { bounds.max } else { v })
    };
    let field = part.to_owned();
    if start < bounds.min {
        return Err(ScheduleError::BelowMin {
            value: start,
            min: bounds.min,
            field,
        });
    }
    if end > bounds.max {
        return Err(ScheduleError::AboveMax {
            value: end,
            max: bounds.max,
            field,
        });
    }
    if start > end {
        return Err(ScheduleError::Backwards { start, end, field });
    }
    let step = step.unwrap_or(1);
    Ok((start..=end)
        .step_by(step as usize)
        .fold(0, |bits, v| bits | (1u64 << v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(spec: &str, after: &str) -> Option<String> {
        Schedule::parse(spec)
            .expect("parses")
            .next_after(at(after), &TimeZone::UTC)
            .map(|t| t.to_string())
    }

    #[test]
    fn next_times_follow_each_field() {
        assert_eq!(
            next("* * * * *", "2024-05-01T10:07:30Z").as_deref(),
            Some("2024-05-01T10:08:00Z")
        );
        assert_eq!(
            next("* * * * *", "2024-05-01T10:07:00Z").as_deref(),
            Some("2024-05-01T10:08:00Z")
        );
        assert_eq!(
            next("*/15 * * * *", "2024-05-01T10:07:00Z").as_deref(),
            Some("2024-05-01T10:15:00Z")
        );
        assert_eq!(
            next("5/20 * * * *", "2024-05-01T10:46:00Z").as_deref(),
            Some("2024-05-01T11:05:00Z")
        );
        // 2024-05-03 is a Friday: weekdays at 9 go to Monday.
        assert_eq!(
            next("0 9 * * MON-FRI", "2024-05-03T10:00:00Z").as_deref(),
            Some("2024-05-06T09:00:00Z")
        );
        assert_eq!(
            next("30 23 31 12 *", "2024-05-01T00:00:00Z").as_deref(),
            Some("2024-12-31T23:30:00Z")
        );
        assert_eq!(
            next("@monthly", "2024-12-15T00:00:00Z").as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        // Leap day, years away.
        assert_eq!(
            next("0 0 29 feb *", "2024-03-01T00:00:00Z").as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
        assert_eq!(next("0 0 30 2 *", "2024-03-01T00:00:00Z"), None);
    }

    #[test]
    fn restricted_day_fields_match_either_and_a_star_means_both() {
        // The 13th, or any Friday: 2024-09-06 is a Friday before the 13th.
        assert_eq!(
            next("0 0 13 * 5", "2024-09-01T00:00:00Z").as_deref(),
            Some("2024-09-06T00:00:00Z")
        );
        // Sunday as 7, and as 0.
        assert_eq!(
            next("0 0 * * 7", "2024-09-01T00:00:00Z").as_deref(),
            Some("2024-09-08T00:00:00Z")
        );
        assert_eq!(
            next("0 0 ? * 0", "2024-09-01T00:00:00Z").as_deref(),
            Some("2024-09-08T00:00:00Z")
        );
    }

    #[test]
    fn time_zones_move_the_wall_clock() {
        let s = Schedule::parse("0 9 * * *").expect("parses");
        let ny = TimeZone::get("America/New_York").expect("tzdb");
        // 09:00 EDT is 13:00 UTC.
        assert_eq!(
            s.next_after(at("2024-07-01T12:00:00Z"), &ny),
            Some(at("2024-07-01T13:00:00Z"))
        );
        // 02:30 on the spring-forward day does not exist: it runs at 03:30 EDT.
        let gap = Schedule::parse("30 2 * * *").expect("parses");
        assert_eq!(
            gap.next_after(at("2024-03-10T05:00:00Z"), &ny),
            Some(at("2024-03-10T07:30:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let err = |s: &str| Schedule::parse(s).expect_err(s).to_string();
        assert_eq!(err("* * * *"), "expected exactly 5 fields, found 4: [* * * *]");
        assert_eq!(err("61 * * * *"), "end of range (61) above maximum (59): 61");
        assert_eq!(err("* * 0 * *"), "beginning of range (0) below minimum (1): 0");
        assert_eq!(err("x * * * *"), "failed to parse int from x");
        assert_eq!(
            err("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(err("*/0 * * * *"), "step of range should be a positive number: */0");
        assert_eq!(err("@sometimes"), "unrecognized descriptor: @sometimes");
    }
}
