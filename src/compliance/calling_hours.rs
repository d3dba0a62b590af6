//! `--calling-hours FILE`: when a number may be called, in the called party's local time.
//!
//! The file has one `REGION DAYS WINDOWS` line per rule (`#` starts a comment):
//!
//! ```text
//! US      Mon-Sun  08:00-21:00          # a country (ISO 3166-1)
//! US-FL   Mon-Sun  08:00-20:00          # a US state or Canadian province (ISO 3166-2)
//! +1212   Mon-Fri  09:00-12:00,13:00-20:00
//! GB      Sun      closed
//! *       Mon-Sun  09:00-20:00          # every number no other region matches
//! ```
//!
//! A number is governed by the most specific region that matches it: its longest matching
//! `+` prefix, else its subdivision, else its country, else `*`; a number no region matches is
//! not restricted. That region owns the whole week: a day it does not list is closed. The call
//! is allowed when, in every zone the number may be in (`zones.rs`), the local time falls in a
//! window of that local weekday. Windows are `[start, end)`, minutes, end at most `24:00`.
//!
//! [`CallingHours::check`] is pure: the instant is given, so that tests pin any moment.

use std::{collections::HashMap, path::Path};

use jiff::{civil::DateTime, Timestamp};

use super::zones::{self, Zone};
use crate::domain::HoursRefusal;

/// Days the search for the next allowed time looks ahead: a week and a day covers every
/// weekday in every zone.
const LOOK_AHEAD_DAYS: i64 = 8;

/// A window of one local day, in minutes since midnight: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: u16,
    end: u16,
}

/// One region's week: the windows of each weekday, Monday first. A day without windows is
/// closed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Week {
    days: [Vec<Window>; 7],
}

impl Week {
    /// Whether the local moment `at` falls in one of its weekday's windows.
    fn holds(&self, at: DateTime) -> bool {
        let minute = at.hour() as u16 * 60 + at.minute() as u16;
        let day = at.weekday().to_monday_zero_offset() as usize;
        self.days[day]
            .iter()
            .any(|w| w.start <= minute && minute < w.end)
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallingHours {
    /// `+` prefixes (digits) → their week.
    prefixes: HashMap<String, Week>,
    /// The longest key of `prefixes`.
    longest_prefix: usize,
    /// ISO 3166-2 subdivisions (`US-FL`).
    subdivisions: HashMap<String, Week>,
    /// ISO 3166-1 countries (`US`).
    countries: HashMap<String, Week>,
    /// `*`: every other number.
    everywhere: Option<Week>,
    /// Rule lines read, for the log.
    lines: usize,
}

impl CallingHours {
    /// Reads and parses a file; the error names the path and the line at fault.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --calling-hours {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--calling-hours {}: {e}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hours = CallingHours::default();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at_line = |e: String| format!("line {}: {e}", index + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [region, days, windows] = fields[..] else {
                return Err(at_line(format!(
                    "expected REGION DAYS WINDOWS (e.g. `US Mon-Sun 08:00-21:00`), got {line:?}"
                )));
            };
            let days = parse_days(days).map_err(at_line)?;
            let windows = parse_windows(windows).map_err(at_line)?;
            let week = hours.week_of(region).map_err(at_line)?;
            for day in days {
                week.days[day].extend(windows.iter().copied());
            }
            hours.lines += 1;
        }
        Ok(hours)
    }

    /// The week a REGION field names, created empty on first mention.
    fn week_of(&mut self, region: &str) -> Result<&mut Week, String> {
        if region == "*" {
            return Ok(self.everywhere.get_or_insert_with(Week::default));
        }
        if let Some(digits) = region.strip_prefix('+') {
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!("{region:?}: a prefix is + and 1 to 15 digits"));
            }
            self.longest_prefix = self.longest_prefix.max(digits.len());
            return Ok(self.prefixes.entry(digits.to_owned()).or_default());
        }
        let upper = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase());
        match region.split_once('-') {
            None if upper(region) => Ok(self.countries.entry(region.to_owned()).or_default()),
            Some((country, sub))
                if upper(country)
                    && (1..=3).contains(&sub.len())
                    && sub.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(self.subdivisions.entry(region.to_owned()).or_default())
            }
            _ => Err(format!(
                "{region:?} is not a region: a country (US), a subdivision (US-FL), a prefix \
                 (+1212) or *"
            )),
        }
    }

    /// Rule lines read.
    pub fn entries(&self) -> usize {
        self.lines
    }

    /// The region governing a number and its week, if any.
    fn rules_for(&self, e164: &str) -> Option<(String, &Week)> {
        let digits = e164.strip_prefix('+').unwrap_or(e164);
        let mut end = digits.len().min(self.longest_prefix);
        while end > 0 {
            if let Some(week) = digits.get(..end).and_then(|p| self.prefixes.get(p)) {
                return Some((format!("+{}", &digits[..end]), week));
            }
            end -= 1;
        }
        if !self.subdivisions.is_empty() {
            if let Some(sub) = zones::nanp_subdivision(e164) {
                if let Some(week) = self.subdivisions.get(sub) {
                    return Some((sub.to_owned(), week));
                }
            }
        }
        if !self.countries.is_empty() {
            if let Some(country) = zones::country(e164) {
                if let Some(week) = self.countries.get(&country) {
                    return Some((country, week));
                }
            }
        }
        self.everywhere.as_ref().map(|week| ("*".to_owned(), week))
    }

    /// Whether `e164` may be called at `now`; if not, why, and when it may.
    ///
    /// An internal extension (no `+`), or a number in no known zone (international freephone
    /// and satellite codes), is not restricted.
    pub fn check(&self, e164: &str, now: Timestamp) -> Result<(), Box<HoursRefusal>> {
        if !e164.starts_with('+') {
            return Ok(());
        }
        let Some((region, week)) = self.rules_for(e164) else {
            return Ok(());
        };
        let zones = zones::zones(e164);
        if zones.is_empty() || allowed_in_all(week, &zones, now) {
            return Ok(());
        }
        // Shown to the second: the windows are in minutes.
        let shown = Timestamp::from_second(now.as_second()).unwrap_or(now);
        Err(Box::new(HoursRefusal {
            region,
            zones: zones.iter().map(|z| z.name.to_owned()).collect(),
            local_times: zones
                .iter()
                .map(|z| shown.display_with_offset(z.tz.to_offset(now)).to_string())
                .collect(),
            next_allowed: next_allowed(week, &zones, now).map(|t| t.to_string()),
        }))
    }
}

fn allowed_in_all(week: &Week, zones: &[Zone], at: Timestamp) -> bool {
    zones.iter().all(|z| week.holds(z.tz.to_datetime(at)))
}

/// The first instant after `now` at which every zone is inside a window: the allowed instants
/// are an intersection of unions of windows, so the first of them is the start of some zone's
/// window. None when there is none within [`LOOK_AHEAD_DAYS`] (a region closed every day).
fn next_allowed(week: &Week, zones: &[Zone], now: Timestamp) -> Option<Timestamp> {
    let mut candidates = Vec::new();
    for zone in zones {
        let today = zone.tz.to_datetime(now).date();
        for offset in 0..=LOOK_AHEAD_DAYS {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let day = date.weekday().to_monday_zero_offset() as usize;
            for window in &week.days[day] {
                let (hour, minute) = ((window.start / 60) as i8, (window.start % 60) as i8);
                let start = date.at(hour, minute, 0, 0);
                if let Ok(instant) = zone.tz.to_timestamp(start) {
                    if instant > now {
                        candidates.push(instant);
                    }
                }
            }
        }
    }
    candidates.sort_unstable();
    candidates
        .into_iter()
        .find(|&t| allowed_in_all(week, zones, t))
}

/// `Mon-Sun`, `Sat`, `Mon,Wed,Fri`, `Mon-Fri,Sun` → weekday indexes, Monday 0.
fn parse_days(text: &str) -> Result<Vec<usize>, String> {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let day = |name: &str| {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("{name:?} is not a day: Mon Tue Wed Thu Fri Sat Sun"))
    };
    let mut days = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                if to < from {
                    return Err(format!("{part:?}: a range of days runs Mon to Sun"));
                }
                days.extend(from..=to);
            }
            None => days.push(day(part)?),
        }
    }
    Ok(days)
}

/// `08:00-21:00`, `09:00-12:00,13:00-20:00`, or `closed`.
fn parse_windows(text: &str) -> Result<Vec<Window>, String> {
    if text == "closed" {
        return Ok(Vec::new());
    }
    let minutes = |hhmm: &str| -> Result<u16, String> {
        let bad = || format!("{hhmm:?} is not a time HH:MM (00:00 to 24:00)");
        let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m > 59 || h > 24 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    text.split(',')
        .map(|part| {
            let (start, end) = part
                .split_once('-')
                .ok_or_else(|| format!("{part:?} is not a window HH:MM-HH:MM"))?;
            let window = Window {
                start: minutes(start)?,
                end: minutes(end)?,
            };
            if window.end <= window.start {
                return Err(format!(
                    "{part:?}: a window ends after it starts, within the day (split one that \
                     crosses midnight in two)"
                ));
            }
            Ok(window)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    const US: &str = "US Mon-Sun 08:00-21:00\n";

    #[test]
    fn new_york_is_allowed_from_eight_to_nine_local() {
        let hours = CallingHours::parse(US).unwrap();
        let ny = "+12125550100";
        // 2026-07-15 is a Wednesday; New York is UTC-4 in July.
        assert!(hours.check(ny, at("2026-07-15T12:00:00Z")).is_ok()); // 08:00
        assert!(hours.check(ny, at("2026-07-16T00:59:00Z")).is_ok()); // 20:59
        let refused = hours
            .check(ny, at("2026-07-16T01:00:00.25Z")) // 21:00
            .unwrap_err();
        assert_eq!(refused.region, "US");
        assert_eq!(refused.zones, ["America/New_York"]);
        assert_eq!(refused.local_times, ["2026-07-15T21:00:00-04:00"]);
        assert_eq!(
            refused.next_allowed.as_deref(),
            Some("2026-07-16T12:00:00Z")
        );
        assert!(hours.check(ny, at("2026-07-15T11:59:00Z")).is_err()); // 07:59
    }

    #[test]
    fn phoenix_keeps_standard_time_and_honolulu_is_far_west() {
        let hours = CallingHours::parse(US).unwrap();
        // 14:30Z in July: 07:30 in Phoenix (UTC-7 all year), while Los Angeles (UTC-7 in
        // summer) is also 07:30; in January Los Angeles is UTC-8 and Phoenix still UTC-7.
        assert!(hours
            .check("+16025550100", at("2026-01-14T15:00:00Z"))
            .is_ok()); // 08:00
        assert!(hours
            .check("+12135550100", at("2026-01-14T15:00:00Z"))
            .is_err()); // 07:00
        assert!(hours
            .check("+16025550100", at("2026-07-15T15:00:00Z"))
            .is_ok()); // 08:00
        assert!(hours
            .check("+12135550100", at("2026-07-15T15:00:00Z"))
            .is_ok()); // 08:00
                       // Honolulu, UTC-10: 17:59Z is 07:59 there, 18:00Z is 08:00.
        assert!(hours
            .check("+18085550100", at("2026-07-15T17:59:00Z"))
            .is_err());
        assert!(hours
            .check("+18085550100", at("2026-07-15T18:00:00Z"))
            .is_ok());
    }

    #[test]
    fn a_number_in_two_zones_is_allowed_only_when_both_are_in_hours() {
        let hours = CallingHours::parse(US).unwrap();
        // +1 812 555: Eastern or Central. 12:30Z in July: 08:30 Eastern, 07:30 Central.
        let refused = hours
            .check("+18125550100", at("2026-07-15T12:30:00Z"))
            .unwrap_err();
        assert_eq!(refused.zones, ["America/Chicago", "America/New_York"]);
        assert_eq!(
            refused.local_times,
            ["2026-07-15T07:30:00-05:00", "2026-07-15T08:30:00-04:00"]
        );
        // Next: 08:00 Central.
        assert_eq!(
            refused.next_allowed.as_deref(),
            Some("2026-07-15T13:00:00Z")
        );
        // Indianapolis (Eastern only) is in hours then.
        assert!(hours
            .check("+13175550100", at("2026-07-15T12:30:00Z"))
            .is_ok());
        // 00:30Z: 20:30 Eastern but 19:30 Central... fine in both; 01:30Z: 21:30 Eastern.
        assert!(hours
            .check("+18125550100", at("2026-07-16T00:30:00Z"))
            .is_ok());
        assert!(hours
            .check("+18125550100", at("2026-07-16T01:30:00Z"))
            .is_err());
    }

    #[test]
    fn london_sydney_and_perth() {
        let hours =
            CallingHours::parse("GB Mon-Fri 09:00-20:00\nAU Mon-Sun 09:00-20:00\n").unwrap();
        // Friday 2026-07-17 19:30 BST = 18:30Z; Saturday is closed in GB (not listed).
        assert!(hours
            .check("+442079460000", at("2026-07-17T18:30:00Z"))
            .is_ok());
        let refused = hours
            .check("+442079460000", at("2026-07-18T10:00:00Z"))
            .unwrap_err();
        assert_eq!(
            refused.next_allowed.as_deref(),
            Some("2026-07-20T08:00:00Z") // Monday 09:00 BST
        );
        // 2026-01-14 23:00Z: 10:00 in Sydney (UTC+11, summer), 07:00 in Perth (UTC+8).
        assert!(hours
            .check("+61293744000", at("2026-01-14T23:00:00Z"))
            .is_ok());
        let perth = hours
            .check("+61892221234", at("2026-01-14T23:00:00Z"))
            .unwrap_err();
        assert_eq!(perth.zones, ["Australia/Adelaide", "Australia/Perth"]);
        // 09:00 in Perth is 01:00Z (Adelaide, UTC+10:30, is at 11:30 then).
        assert_eq!(perth.next_allowed.as_deref(), Some("2026-01-15T01:00:00Z"));
    }

    #[test]
    fn the_most_specific_region_owns_the_week() {
        let hours = CallingHours::parse(
            "US Mon-Sun 08:00-21:00\nUS-NY Mon-Fri 09:00-20:00\n+1212 Sat 10:00-12:00\n\
             * Mon-Sun 10:00-11:00\n",
        )
        .unwrap();
        let wednesday_0830_ny = at("2026-07-15T12:30:00Z");
        // Manhattan (+1212): its prefix rule has only Saturday.
        assert_eq!(
            hours
                .check("+12125550100", wednesday_0830_ny)
                .unwrap_err()
                .region,
            "+1212"
        );
        // Buffalo (+1716, New York state): US-NY, from 09:00.
        assert_eq!(
            hours
                .check("+17165550100", wednesday_0830_ny)
                .unwrap_err()
                .region,
            "US-NY"
        );
        // Boston: the US rule.
        assert!(hours.check("+16175550100", wednesday_0830_ny).is_ok());
        // Paris: `*`, 10:00-11:00 local (UTC+2): 12:30Z is 14:30.
        assert_eq!(
            hours
                .check("+33142685300", wednesday_0830_ny)
                .unwrap_err()
                .region,
            "*"
        );
        // An internal extension is never restricted.
        assert!(hours.check("1234", wednesday_0830_ny).is_ok());
    }

    #[test]
    fn without_a_matching_region_nothing_is_restricted() {
        let hours = CallingHours::parse(US).unwrap();
        assert!(hours
            .check("+33142685300", at("2026-07-15T02:00:00Z"))
            .is_ok());
    }

    #[test]
    fn a_region_closed_every_day_has_no_next_time() {
        let hours = CallingHours::parse("FR Mon-Sun closed\n").unwrap();
        let refused = hours
            .check("+33142685300", at("2026-07-15T12:00:00Z"))
            .unwrap_err();
        assert_eq!(refused.next_allowed, None);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, words) in [
            ("US Mon-Sun", "line 1: expected REGION DAYS WINDOWS"),
            ("USA Mon 08:00-21:00", "\"USA\" is not a region"),
            ("US Mon-Fun 08:00-21:00", "\"Fun\" is not a day"),
            ("US Fri-Mon 08:00-21:00", "a range of days runs Mon to Sun"),
            ("US Mon 8:00-21:00", "\"8:00\" is not a time"),
            ("US Mon 22:00-02:00", "crosses midnight"),
            ("US Mon 08:00-24:01", "\"24:01\" is not a time"),
            (
                "# fine\n+1x Mon 08:00-21:00",
                "line 2: \"+1x\": a prefix is",
            ),
        ] {
            let error = CallingHours::parse(text).unwrap_err();
            assert!(error.contains(words), "{text:?}: {error}");
        }
        let fine = CallingHours::parse("US Mon-Sun 08:00-24:00 # all evening\n\n").unwrap();
        assert_eq!(fine.entries(), 1);
    }
}
