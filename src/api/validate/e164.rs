//! The `phonenumber` crate's parse + `is_valid` + E.164 formatting, for the only inputs calldesk
//! gives it, at a cost that does not depend on having seen the number before.
//!
//! The crate keeps its compiled regexes in one LRU cache behind a global mutex, keyed by the
//! pattern's source text: every lookup hashes the pattern (some are kilobytes) with SipHash.
//! A first validation makes dozens of such lookups (~127k instructions for a US, GB or DE
//! number, BENCHMARKS.md). This module runs the same steps over the crate's own metadata
//! (`phonenumber::metadata::DATABASE`), reached by index (country code → regions → pattern),
//! with each pattern compiled once, on first use, into a `regex::Regex` ([`Pattern`]).
//!
//! Scope: `normalize` (the parent module) calls this with `+` and ASCII digits, or ASCII
//! digits and the server's default region; nothing else. On those inputs the crate's text
//! parsers (RFC 3966, "natural" text, extensions) reduce to "the digits, after an optional
//! `+`", which is where this module starts. It answers only acceptance: [`e164`] returns
//! `None` for every number it does not accept, and the caller then asks the crate itself, so
//! that a refusal carries the crate's own words. The parent module's test
//! `normalize_matches_the_crate_on_a_varied_sample` checks both directions over a large
//! sample.

use std::sync::{LazyLock, OnceLock};

use phonenumber::{country, metadata::DATABASE, Metadata, Validation};
use regex::{Regex, RegexBuilder};

/// The crate's bounds on a national significant number (`consts.rs`).
const MIN_LENGTH_FOR_NSN: usize = 2;
const MAX_LENGTH_FOR_NSN: usize = 17;
const MAX_LENGTH_FOR_COUNTRY_CODE: usize = 3;

/// One pattern of the metadata, compiled on first use. Compiling them all would cost 0.1 s
/// (release) and 16 MiB for regions no one dials; a pattern, once compiled, is kept for the
/// server's life (there are 1,723 in all, each compiled at most once per use below).
struct Pattern {
    source: &'static str,
    /// As the crate searches with it (`find`, `captures`, `replace`).
    compiled: OnceLock<Option<Regex>>,
    /// `^(?:source)`: "does a match start at 0" in one forward search that stops at the first
    /// match, instead of `find`'s forward and reverse searches for the leftmost match.
    anchored: OnceLock<Option<Regex>>,
}

impl Pattern {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            compiled: OnceLock::new(),
            anchored: OnceLock::new(),
        }
    }

    /// `source` compiled with the options `regex_cache` gives every metadata pattern in the
    /// crate (`Database::from`: ignore_whitespace; the rest `regex_cache`'s defaults) but one:
    /// Unicode classes off. Every text these patterns see is ASCII digits, on which `\d`
    /// means the same either way, and a Unicode `\d` costs each compiled pattern an automaton
    /// for every script's digits: all of the metadata's patterns took 97 MiB with it. A pattern
    /// that would not compile without Unicode keeps it. `None` if it does not compile at all,
    /// where the crate would panic: the caller defers.
    fn build(source: &str) -> Option<Regex> {
        let build = |unicode| {
            RegexBuilder::new(source)
                .case_insensitive(false)
                .multi_line(false)
                .dot_matches_new_line(false)
                .swap_greed(false)
                .ignore_whitespace(true)
                .unicode(unicode)
                .size_limit(10 * (1 << 20))
                .dfa_size_limit(2 * (1 << 20))
                .build()
        };
        build(false).or_else(|_| build(true)).ok()
    }

    fn regex(&self) -> Option<&Regex> {
        self.compiled
            .get_or_init(|| Self::build(self.source))
            .as_ref()
    }

    /// Where the leftmost match starts and ends (`CachedRegex::find`).
    fn find(&self, text: &str) -> Result<Option<(usize, usize)>, Defer> {
        Ok(self
            .regex()
            .ok_or(Defer)?
            .find(text)
            .map(|m| (m.start(), m.end())))
    }

    /// The crate's test `find(text).start() == 0` (not anchored at the end): the leftmost
    /// match starts at 0 exactly when some match does. The newline ends a `#` comment of
    /// ignore_whitespace mode, should the pattern end in one. A pattern that does not compile
    /// plain does not compile anchored either: both defer.
    fn matches_at_start(&self, text: &str) -> Result<bool, Defer> {
        let anchored = self
            .anchored
            .get_or_init(|| Self::build(&format!("^(?:{}\n)", self.source)))
            .as_ref()
            .ok_or(Defer)?;
        Ok(anchored.is_match(text))
    }
}

/// A number description (`metadata::Descriptor`).
struct Descriptor {
    possible_length: &'static [u16],
    possible_local_length: &'static [u16],
    national_number: Pattern,
}

impl Descriptor {
    fn new(d: &'static phonenumber::metadata::Descriptor) -> Self {
        Self {
            possible_length: d.possible_length(),
            possible_local_length: d.possible_local_length(),
            national_number: Pattern::new(d.national_number().as_str()),
        }
    }

    /// `Descriptor::is_match`: a possible length (when the metadata lists them), then the
    /// pattern.
    fn is_match(&self, value: &str) -> Result<bool, Defer> {
        if !self.possible_length.is_empty() && !self.possible_length.contains(&(value.len() as u16))
        {
            return Ok(false);
        }
        self.national_number.matches_at_start(value)
    }
}

/// One region's metadata (`Metadata`), its patterns compiled on first use.
struct Region {
    /// Its place in `Numbering::regions`.
    index: usize,
    meta: &'static Metadata,
    /// The country calling code as text (for the "national number starts with its country
    /// code" rule).
    code_text: String,
    /// Whether the crate's `country::Id` parses this region's id (`source_for` gives up on a
    /// single region that does not, and panics on one of several).
    id_parses: bool,
    general: Descriptor,
    /// Every descriptor `number_type` tries: a match on any makes the type known, which is
    /// all `is_valid` asks. Fixed line and mobile first: most numbers dialed are one of them,
    /// and the first match ends the search.
    typed: Vec<Descriptor>,
    international_prefix: Option<Pattern>,
    national_prefix_for_parsing: Option<Pattern>,
    leading_digits: Option<Pattern>,
}

impl Region {
    fn new(index: usize, meta: &'static Metadata) -> Self {
        let d = meta.descriptors();
        let typed = [
            d.fixed_line(),
            d.mobile(),
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
        ]
        .into_iter()
        .flatten()
        .map(Descriptor::new)
        .collect();
        Self {
            index,
            meta,
            code_text: meta.country_code().to_string(),
            id_parses: meta.id().parse::<country::Id>().is_ok(),
            general: Descriptor::new(d.general()),
            typed,
            international_prefix: meta
                .international_prefix()
                .map(|p| Pattern::new(p.as_str())),
            national_prefix_for_parsing: meta
                .national_prefix_for_parsing()
                .map(|p| Pattern::new(p.as_str())),
            leading_digits: meta.leading_digits().map(|p| Pattern::new(p.as_str())),
        }
    }

    /// `validator::number_type(..) != Type::Unknown`.
    fn has_known_type(&self, value: &str) -> Result<bool, Defer> {
        if !self.general.is_match(value)? {
            return Ok(false);
        }
        for d in &self.typed {
            if d.is_match(value)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `validator::length(meta, number, Type::Unknown)`.
    fn length(&self, national: &str) -> Validation {
        let length = national.len() as u16;
        let local = self.general.possible_local_length;
        let possible = self.general.possible_length;
        let (Some(&minimum), Some(&maximum)) = (possible.first(), possible.last()) else {
            return Validation::InvalidLength;
        };
        if local.contains(&length) {
            Validation::IsPossibleLocalOnly
        } else if length == minimum {
            Validation::IsPossible
        } else if length < minimum {
            Validation::TooShort
        } else if length > maximum {
            Validation::TooLong
        } else if possible.contains(&length) {
            Validation::IsPossible
        } else {
            Validation::InvalidLength
        }
    }
}

/// The `number_type(..) != Unknown` answers of one validation: the crate asks it of the same
/// region and number up to three times (`source_for` in `parse`, then `source_for` and
/// `number_type` in `is_valid`), and each answer costs a few regex searches.
#[derive(Default)]
struct Known(Vec<(usize, String, bool)>);

impl Known {
    fn has_known_type(&mut self, r: &Region, value: &str) -> Result<bool, Defer> {
        if let Some((_, _, known)) = self.0.iter().find(|(i, v, _)| *i == r.index && v == value) {
            return Ok(*known);
        }
        let known = r.has_known_type(value)?;
        self.0.push((r.index, value.to_owned(), known));
        Ok(known)
    }
}

/// "Ask the crate": a step where the crate would panic or where this module could not follow
/// it exactly. Never an answer by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defer;

/// The metadata by country calling code, in the crate's order (the main country first).
struct Numbering {
    regions: Vec<Region>,
    /// Country calling code (< 1000) → indexes into `regions`, in `Database::by_code` order.
    by_code: Vec<Vec<usize>>,
}

static NUMBERING: LazyLock<Numbering> = LazyLock::new(|| {
    let database: &'static phonenumber::metadata::Database = &DATABASE;
    let mut regions = Vec::new();
    let mut by_code = vec![Vec::new(); 1000];
    for (code, slot) in by_code.iter_mut().enumerate() {
        let Some(metas) = database.by_code(&(code as u16)) else {
            continue;
        };
        for meta in metas {
            slot.push(regions.len());
            regions.push(Region::new(regions.len(), meta));
        }
    }
    Numbering { regions, by_code }
});

/// A default region, resolved once (`--default-region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRegion(usize);

/// Loads the crate's metadata and indexes it (no pattern is compiled yet).
pub fn warm_up() {
    LazyLock::force(&NUMBERING);
}

/// The region `id` as the crate's `Database::by_id` finds it, if the metadata has it.
pub fn default_region(id: country::Id) -> Option<DefaultRegion> {
    let numbering = &*NUMBERING;
    let wanted = DATABASE.by_id(id.as_ref())?;
    numbering
        .regions
        .iter()
        .position(|r| std::ptr::eq(r.meta, wanted))
        .map(DefaultRegion)
}

/// The number's E.164 form if the crate's `parse` accepts it and `is_valid` holds, else `None`
/// (also where this module defers to the crate: the caller asks the crate then).
///
/// `digits` is ASCII digits only, non-empty. With `plus` the number is international and the
/// default region plays no part (as `normalize` calls the crate: `parse(None, "+…")`);
/// without it, `region` is the default region.
pub fn e164(plus: bool, digits: &str, region: Option<DefaultRegion>) -> Option<String> {
    let numbering = &*NUMBERING;
    let mut known = Known::default();
    let (code, national) = numbering.parse(plus, digits, region, &mut known).ok()??;
    if !numbering.is_valid(code, &national, &mut known).ok()? {
        return None;
    }
    Some(format!("+{code}{national}"))
}

impl Numbering {
    fn region(&self, code: u16) -> &[usize] {
        self.by_code
            .get(usize::from(code))
            .map_or(&[][..], Vec::as_slice)
    }

    /// `phonenumber::parse` → (country code, national significant number as the crate's
    /// `NationalNumber` prints it); `Ok(None)` where the crate returns an error.
    fn parse(
        &self,
        plus: bool,
        digits: &str,
        region: Option<DefaultRegion>,
        known: &mut Known,
    ) -> Result<Option<(u16, String)>, Defer> {
        // `is_viable`: with a '+', three digits at least (its `long` rule); without, two.
        if digits.len() < if plus { 3 } else { MIN_LENGTH_FOR_NSN } {
            return Ok(None);
        }
        let (code, mut national, meta): (u16, &str, Option<&Region>) = if plus {
            // `helper::country_code` with `Source::Plus` (no IDD: no region is given).
            let Some((code, national)) = self.country_code_from(digits) else {
                return Ok(None);
            };
            let meta = self.source_for(code, national.trim_start_matches('0'), known)?;
            (code, national, meta)
        } else {
            let Some(DefaultRegion(index)) = region else {
                return Err(Defer);
            };
            let r = &self.regions[index];
            // `helper::international_prefix`: an IDD at the start, not followed by a 0.
            let after_idd = match &r.international_prefix {
                Some(idd) => match idd.find(digits)? {
                    Some((0, end)) if !digits[end..].starts_with('0') => Some(&digits[end..]),
                    _ => None,
                },
                None => None,
            };
            match after_idd {
                // `Source::Idd`: the country code follows; the metadata stays the default
                // region's (as in the crate).
                Some(rest) => {
                    let Some((code, national)) = self.country_code_from(rest) else {
                        return Ok(None);
                    };
                    (code, national, Some(r))
                }
                // `Source::Default`: the region's code, stripped if the number starts with
                // it and is not a national number as it stands.
                None => {
                    let code = r.meta.country_code();
                    let mut national = digits;
                    if digits.starts_with(&r.code_text)
                        && (!r.general.is_match(digits)? || !r.length(digits).is_possible())
                    {
                        national = &digits[r.code_text.len()..];
                    }
                    (code, national, Some(r))
                }
            }
        };

        let mut owned = None;
        if let Some(meta) = meta {
            let mut potential = meta.national_number(national)?;
            // The national prefix is stripped once more if it is still there (as in the crate).
            if let Some(prefix) = meta.meta.national_prefix() {
                if let Some(rest) = potential.strip_prefix(prefix) {
                    potential = rest.to_owned();
                }
            }
            if meta.length(&potential) != Validation::TooShort {
                owned = Some(potential);
            }
        }
        if let Some(potential) = &owned {
            national = potential;
        }

        if national.len() < MIN_LENGTH_FOR_NSN || national.len() > MAX_LENGTH_FOR_NSN {
            return Ok(None);
        }
        // `NationalNumber::from_str`: leading zeros, then a u64 below 2^56.
        let significant = national.trim_start_matches('0');
        match significant.parse::<u64>() {
            Ok(value) if value < 1 << 56 => {}
            _ => return Ok(None),
        }
        Ok(Some((code, national.to_owned())))
    }

    /// `helper::country_code` for `Source::Plus`/`Idd` without an extracted prefix: the first
    /// 1, 2 or 3 digits that are a known country code.
    fn country_code_from<'a>(&self, digits: &'a str) -> Option<(u16, &'a str)> {
        if digits.len() <= MIN_LENGTH_FOR_NSN || digits.starts_with('0') {
            return None;
        }
        (1..=MAX_LENGTH_FOR_COUNTRY_CODE).find_map(|len| {
            let code: u16 = digits[..len].parse().ok()?;
            (!self.region(code).is_empty()).then(|| (code, &digits[len..]))
        })
    }

    /// `validator::source_for` + the metadata lookup after it.
    fn source_for(
        &self,
        code: u16,
        national: &str,
        known: &mut Known,
    ) -> Result<Option<&Region>, Defer> {
        let regions = self.region(code);
        if let [only] = regions {
            let r = &self.regions[*only];
            return Ok((r.meta.id() == "001" || r.id_parses).then_some(r));
        }
        for &i in regions {
            let r = &self.regions[i];
            let found = match &r.leading_digits {
                Some(pattern) => pattern.matches_at_start(national)?,
                None => known.has_known_type(r, national)?,
            };
            if found {
                // The crate unwraps the id's parse here.
                return if r.id_parses { Ok(Some(r)) } else { Err(Defer) };
            }
        }
        Ok(None)
    }

    /// `validator::is_valid`.
    fn is_valid(&self, code: u16, national: &str, known: &mut Known) -> Result<bool, Defer> {
        match self.source_for(code, national, known)? {
            Some(r) => known.has_known_type(r, national),
            None => Ok(false),
        }
    }
}

impl Region {
    /// `helper::national_number`: the national prefix (and carrier code) stripped as the
    /// region's `national_prefix_for_parsing` and transform rule say.
    fn national_number(&self, national: &str) -> Result<String, Defer> {
        let Some(parsing) = &self.national_prefix_for_parsing else {
            let stripped = self
                .meta
                .national_prefix()
                .and_then(|prefix| national.strip_prefix(prefix));
            return Ok(stripped.unwrap_or(national).to_owned());
        };
        let end = match parsing.find(national)? {
            Some((0, end)) => end,
            _ => return Ok(national.to_owned()),
        };
        let viable = self.general.is_match(national)?;
        let regex = parsing.regex().ok_or(Defer)?;
        let captures = regex.captures(national).ok_or(Defer)?;
        let first = captures.get(1);
        let last = captures.get(captures.len() - 1);
        match (self.meta.national_prefix_transform_rule(), last) {
            (Some(transform), Some(_)) => {
                let transformed = regex.replace(national, transform).into_owned();
                if viable && !self.general.is_match(&transformed)? {
                    return Ok(national.to_owned());
                }
                // The crate unwraps the first group (the carrier code) here.
                if first.is_none() {
                    return Err(Defer);
                }
                Ok(transformed)
            }
            // The crate also tests `viable && !general.is_match(&national[0..])` here, which
            // is never true: the prefix (and carrier code) go.
            _ => Ok(national[end..].to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Every pattern of every region compiles with the options the crate uses (less Unicode),
    /// plain and anchored; and what a server holds once numbers of every region were dialed
    /// (descriptors and leading digits anchored, IDD and national prefixes plain):
    /// `cargo test --release --lib every_pattern -- --ignored --nocapture`. Ignored by
    /// default: it takes minutes in a debug build.
    #[test]
    #[ignore]
    fn every_pattern_compiles() {
        warm_up();
        let before = rss_kib();
        let started = std::time::Instant::now();
        let mut patterns = 0;
        for r in &NUMBERING.regions {
            let id = r.meta.id();
            let anchored = [&r.general.national_number]
                .into_iter()
                .chain(r.typed.iter().map(|d| &d.national_number))
                .chain(r.leading_digits.iter());
            for p in anchored {
                assert!(p.matches_at_start("0").is_ok(), "{id} {}", p.source);
                patterns += 1;
            }
            for p in r
                .international_prefix
                .iter()
                .chain(&r.national_prefix_for_parsing)
            {
                assert!(p.regex().is_some(), "{id} {}", p.source);
                patterns += 1;
            }
        }
        let held = rss_kib().saturating_sub(before);
        let elapsed = started.elapsed();
        let mut with_unicode = 0;
        for r in &NUMBERING.regions {
            let all = [&r.general.national_number]
                .into_iter()
                .chain(r.typed.iter().map(|d| &d.national_number))
                .chain(&r.leading_digits)
                .chain(&r.international_prefix)
                .chain(&r.national_prefix_for_parsing);
            for p in all {
                assert!(
                    Pattern::build(p.source).is_some(),
                    "{} {}",
                    r.meta.id(),
                    p.source
                );
                let anchored = format!("^(?:{}\n)", p.source);
                assert!(Pattern::build(&anchored).is_some(), "{anchored}");
                let ascii = RegexBuilder::new(p.source)
                    .ignore_whitespace(true)
                    .unicode(false)
                    .build();
                with_unicode += usize::from(ascii.is_err());
            }
        }
        println!(
            "{patterns} patterns of {} regions ({with_unicode} needing Unicode) compiled in {elapsed:?}: RSS +{held} KiB",
            NUMBERING.regions.len(),
        );
    }

    #[test]
    fn every_region_of_the_crate_can_be_the_default() {
        let mut ids = Vec::new();
        for meta in DATABASE.iter() {
            if let Ok(id) = meta.id().parse::<country::Id>() {
                assert!(default_region(id).is_some(), "{id:?}");
                ids.push(id);
            }
        }
        assert!(ids.len() > 200, "{}", ids.len());
        assert!(default_region(country::Id::US).is_some());
    }
}
