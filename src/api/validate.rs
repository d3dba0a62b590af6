//! Request validation: the contract's limits and phone-number rules. Every violation is an
//! INVALID_ARGUMENT carrying a `google.rpc.BadRequest` that names the field.

mod e164;
mod target;

pub use target::transfer_target;

use std::sync::Arc;

use phonenumber::{country, Mode};
use quick_cache::sync::Cache;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{AssociatedObject, InteractionState};
use crate::proto;
use crate::store::PageTokens;

pub const MAX_PHONE_NUMBER: usize = 32;
pub const MAX_OBJECT_FIELD: usize = 256;
pub const MAX_CUSTOM_FIELDS: usize = 64;
pub const MAX_CUSTOM_KEY: usize = 128;
pub const MAX_CUSTOM_VALUE: usize = 1024;
pub const MAX_DISPOSITION: usize = 256;
pub const MAX_NOTES: usize = 4096;
pub const MAX_REQUEST_ID: usize = 128;
pub const MAX_INTERACTION_ID: usize = 128;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// An INVALID_ARGUMENT naming `field`.
pub fn bad_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

fn at_most(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.chars().count() > max {
        return Err(bad_field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// How many numbers [`PhoneRules`] remembers as already validated.
const NORMALIZED_CACHE: usize = 4096;

/// How phone numbers are read: the server's `--default-region`.
#[derive(Clone)]
pub struct PhoneRules {
    pub default_region: Option<country::Id>,
    /// `default_region` in the numbering metadata, resolved once.
    region: Option<e164::DefaultRegion>,
    /// Numbers already parsed and validated (separators removed) → their E.164 form.
    /// Validating a new number costs a few thousand instructions (e164.rs; it was ~127k
    /// through the crate, BENCHMARKS.md), a lookup here ~120, and agents dial the same
    /// numbers again: redials, callbacks, retries. The result depends only on the number and
    /// `default_region`, which is fixed for the server's life, so a cached answer is the
    /// answer. Bounded, and shared by all handlers without a lock held across anything but
    /// the lookup.
    normalized: Arc<Cache<String, String>>,
}

impl Default for PhoneRules {
    fn default() -> Self {
        Self {
            default_region: None,
            region: None,
            normalized: Arc::new(Cache::new(NORMALIZED_CACHE)),
        }
    }
}

impl std::fmt::Debug for PhoneRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneRules")
            .field("default_region", &self.default_region)
            .finish_non_exhaustive()
    }
}

impl PhoneRules {
    /// Parses `--default-region` (an ISO 3166 alpha-2 code such as `US`).
    pub fn new(default_region: Option<&str>) -> Result<Self, String> {
        let default_region = default_region
            .map(|r| {
                r.to_ascii_uppercase()
                    .parse::<country::Id>()
                    .map_err(|_| format!("--default-region {r:?} is not a known region code"))
            })
            .transpose()?;
        let region = match default_region {
            Some(id) => Some(e164::default_region(id).ok_or_else(|| {
                format!(
                    "--default-region {id:?} has no numbering plan in libphonenumber's metadata"
                )
            })?),
            None => None,
        };
        Ok(Self {
            default_region,
            region,
            ..Self::default()
        })
    }

    /// Loads libphonenumber's metadata, which the crate parses lazily on first use (about a
    /// second in a debug build), and indexes it: better at start-up than in the first
    /// StartCall.
    pub fn warm_up(&self) {
        e164::warm_up();
    }

    /// The normalized number: E.164 for `+` and national numbers, the digits as dialed for an
    /// internal extension of 2 to 8 digits.
    pub fn normalize(&self, raw: &str) -> Result<String, Status> {
        let (compact, region) = match self.read(raw)? {
            Read::Extension(digits) => return Ok(digits),
            Read::Number { compact, region } => (compact, region),
        };
        if let Some(e164) = self.normalized.get(compact.as_str()) {
            return Ok(e164);
        }
        // The crate's own answer, at a cost that does not depend on having seen the number
        // before (e164.rs); for a number that path does not accept, the crate says why.
        let (plus, digits) = match compact.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, compact.as_str()),
        };
        let e164 = match e164::e164(plus, digits, self.region) {
            Some(e164) => e164,
            None => crate_e164(region, &compact)?,
        };
        self.normalized.insert(compact, e164.clone());
        Ok(e164)
    }

    /// The checks before libphonenumber: length, characters, extensions, the default region.
    fn read(&self, raw: &str) -> Result<Read, Status> {
        const FIELD: &str = "phone_number";
        at_most(FIELD, raw, MAX_PHONE_NUMBER)?;
        let compact: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        if compact.is_empty() {
            return Err(bad_field(FIELD, "is required"));
        }
        let (plus, digits) = match compact.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, compact.as_str()),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad_field(
                FIELD,
                "must be a phone number: digits, an optional leading +, and separators ( ) - . space",
            ));
        }
        if !plus && (2..=8).contains(&digits.len()) {
            return Ok(Read::Extension(digits.to_owned()));
        }
        let region = if plus {
            None
        } else {
            match self.default_region {
                Some(region) => Some(region),
                None => {
                    return Err(bad_field(
                        FIELD,
                        "a national number needs the server's --default-region; \
                         give it in international form (+ and country code) instead",
                    ))
                }
            }
        };
        Ok(Read::Number { compact, region })
    }
}

/// What [`PhoneRules::read`] made of a number before libphonenumber.
enum Read {
    /// An internal extension: the digits as dialed.
    Extension(String),
    /// `+` and digits, or digits (separators removed), for libphonenumber with `region`.
    Number {
        compact: String,
        region: Option<country::Id>,
    },
}

/// `phonenumber::parse` + `is_valid` + E.164, as calldesk always asked the crate: the words of
/// its refusals are the contract's.
fn crate_e164(region: Option<country::Id>, compact: &str) -> Result<String, Status> {
    const FIELD: &str = "phone_number";
    let parsed = phonenumber::parse(region, compact)
        .map_err(|e| bad_field(FIELD, format!("is not a valid phone number ({e})")))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(bad_field(FIELD, "is not a possible phone number"));
    }
    Ok(parsed.format().mode(Mode::E164).to_string())
}

/// StartCall's `caller_id`: None when empty, else its E.164 form. Only international numbers
/// (`+` first; separators as in phone numbers) that libphonenumber finds valid: a caller ID is
/// presented to carriers of every country, never read in a default region.
pub fn caller_id(raw: &str) -> Result<Option<String>, Status> {
    const FIELD: &str = "caller_id";
    at_most(FIELD, raw, MAX_PHONE_NUMBER)?;
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if compact.is_empty() {
        return Ok(None);
    }
    let digits = compact.strip_prefix('+').unwrap_or_default();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_field(
            FIELD,
            "must be an E.164 number: + and the country code, then the number",
        ));
    }
    let parsed = phonenumber::parse(None, &compact)
        .map_err(|e| bad_field(FIELD, format!("is not a valid phone number ({e})")))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(bad_field(FIELD, "is not a possible phone number"));
    }
    Ok(Some(parsed.format().mode(Mode::E164).to_string()))
}

/// The initial object, within its limits.
pub fn associated_object(object: proto::AssociatedObject) -> Result<AssociatedObject, Status> {
    at_most("initial_object.id", &object.id, MAX_OBJECT_FIELD)?;
    at_most("initial_object.type", &object.r#type, MAX_OBJECT_FIELD)?;
    at_most(
        "initial_object.display_name",
        &object.display_name,
        MAX_OBJECT_FIELD,
    )?;
    at_most(
        "initial_object.display_type",
        &object.display_type,
        MAX_OBJECT_FIELD,
    )?;
    const FIELDS: &str = "initial_object.custom_fields";
    if object.custom_fields.len() > MAX_CUSTOM_FIELDS {
        return Err(bad_field(
            FIELDS,
            format!("must have at most {MAX_CUSTOM_FIELDS} entries"),
        ));
    }
    for (key, value) in &object.custom_fields {
        // Neither keys nor values are echoed: they are customer data.
        if key.chars().count() > MAX_CUSTOM_KEY {
            return Err(bad_field(
                FIELDS,
                format!("keys must be at most {MAX_CUSTOM_KEY} characters"),
            ));
        }
        if value.chars().count() > MAX_CUSTOM_VALUE {
            return Err(bad_field(
                FIELDS,
                format!("values must be at most {MAX_CUSTOM_VALUE} characters"),
            ));
        }
    }
    Ok(object.into())
}

/// The idempotency key: empty means none.
pub fn request_id(value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    // Say which rule was broken: a key that is too long and one with a stray character need
    // different fixes.
    if let Some((at, c)) = value.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
        return Err(bad_field(
            "request_id",
            format!(
                "must be printable ASCII (space to '~'); character {} is {c:?} (U+{:04X})",
                value[..at].chars().count() + 1,
                u32::from(c)
            ),
        ));
    }
    if value.len() > MAX_REQUEST_ID {
        return Err(bad_field(
            "request_id",
            format!(
                "must be at most {MAX_REQUEST_ID} characters; it has {}",
                value.len()
            ),
        ));
    }
    Ok(Some(value.to_owned()))
}

pub fn interaction_id(value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(bad_field("interaction_id", "is required"));
    }
    at_most("interaction_id", value, MAX_INTERACTION_ID)
}

pub fn disposition_and_notes(disposition: &str, notes: &str) -> Result<(), Status> {
    at_most("disposition", disposition, MAX_DISPOSITION)?;
    at_most("notes", notes, MAX_NOTES)
}

pub fn page_size(value: i32) -> Result<usize, Status> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 || n as usize > MAX_PAGE_SIZE => Err(bad_field(
            "page_size",
            format!(
                "must be between 1 and {MAX_PAGE_SIZE} (0 for the default, {DEFAULT_PAGE_SIZE})"
            ),
        )),
        n => Ok(n as usize),
    }
}

/// The state filter: UNSPECIFIED is none.
pub fn state_filter(value: i32) -> Result<Option<InteractionState>, Status> {
    match proto::InteractionState::try_from(value) {
        Ok(proto::InteractionState::Unspecified) => Ok(None),
        Ok(s) => Ok(InteractionState::try_from(s).ok()),
        Err(_) => Err(bad_field("state", "is not an InteractionState")),
    }
}

/// The row a page token names, for this agent and filter (`store::page_token`: sealed, bound
/// to both); a token the server did not issue for them is INVALID_ARGUMENT on `page_token`.
pub fn page_token(
    tokens: &PageTokens,
    token: &str,
    agent_id: &str,
    state: i32,
) -> Result<Option<i64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    tokens
        .open(token, agent_id, state)
        .map(Some)
        .ok_or_else(|| {
            bad_field(
                "page_token",
                "is not a token this server returned for this request",
            )
        })
}

/// The token of the page that starts before `before` (none without one).
pub fn next_page_token(
    tokens: &PageTokens,
    before: Option<i64>,
    agent_id: &str,
    state: i32,
) -> Result<String, Status> {
    let Some(before) = before else {
        return Ok(String::new());
    };
    tokens
        .seal(agent_id, state, before)
        .map_err(|_| Status::internal("cannot seal a page token: the system has no random source"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> PhoneRules {
        PhoneRules::new(Some("US")).unwrap()
    }

    #[test]
    fn numbers_normalize_to_e164_or_stay_extensions() {
        let none = PhoneRules::default();
        assert_eq!(none.normalize("+1 (202) 555-0100").unwrap(), "+12025550100");
        assert_eq!(none.normalize("+1.202.555.0101").unwrap(), "+12025550101");
        assert_eq!(none.normalize("1234").unwrap(), "1234");
        assert_eq!(none.normalize("12").unwrap(), "12");
        assert_eq!(us().normalize("(202) 555-0100").unwrap(), "+12025550100");
    }

    #[test]
    fn a_number_validated_once_is_answered_from_the_cache() {
        let rules = us();
        let first = rules.normalize("(202) 555-0100").unwrap();
        assert_eq!(rules.normalized.len(), 1);
        assert_eq!(rules.normalize("(202) 555-0100").unwrap(), first);
        assert_eq!(rules.normalize("202 555 0100").unwrap(), first);
        // Separators are removed before the lookup: both spellings share one entry.
        assert_eq!(rules.normalized.len(), 1);
        // Refusals are not remembered: they are cheap to repeat and never answered "valid".
        assert!(rules.normalize("(000) 000-0000").is_err());
        assert!(rules.normalize("(000) 000-0000").is_err());
        assert_eq!(rules.normalized.len(), 1);
    }

    #[test]
    fn bad_numbers_are_refused_naming_the_field() {
        let none = PhoneRules::default();
        for bad in [
            "",
            " - ",
            "abc",
            "+",
            "+1999",
            "1",
            "2025550100",
            "+1 202 555 0100 x12",
            "++12025550100",
        ] {
            let status = none.normalize(bad).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
            let details = status.get_details_bad_request().expect("BadRequest");
            assert_eq!(details.field_violations[0].field, "phone_number");
        }
        assert!(us().normalize("999").is_ok(), "3 digits is an extension");
        assert!(us().normalize("555").is_ok());
        assert!(us().normalize("(000) 000-0000").is_err());
        assert!(none.normalize(&"1".repeat(33)).is_err());
    }

    /// The answer calldesk gave before e164.rs: the same checks, then every number through the
    /// crate.
    fn crate_normalize(default_region: Option<country::Id>, raw: &str) -> Result<String, Status> {
        let plain = PhoneRules {
            default_region,
            ..PhoneRules::default()
        };
        match plain.read(raw)? {
            Read::Extension(digits) => Ok(digits),
            Read::Number { compact, region } => crate_e164(region, &compact),
        }
    }

    /// A refusal as the client sees it: code, message and the BadRequest's (field,
    /// description) violations.
    type Seen = (Code, String, Vec<(String, String)>);

    fn seen(answer: &Result<String, Status>) -> Result<String, Seen> {
        answer.clone().map_err(|s| {
            let violations = s
                .get_details_bad_request()
                .map(|b| {
                    b.field_violations
                        .into_iter()
                        .map(|v| (v.field, v.description))
                        .collect()
                })
                .unwrap_or_default();
            (s.code(), s.message().to_owned(), violations)
        })
    }

    /// A small deterministic generator (xorshift64*), so that a failure names a reproducible
    /// sample.
    struct Sample(u64);

    impl Sample {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn digits(&mut self, n: usize) -> String {
            (0..n)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// Numbers to compare: every region's example numbers (valid by construction) in
    /// international, national, IDD and country-code-first forms, each also with a digit
    /// changed, dropped, added; numbers with real country codes and random digits; random
    /// digit strings of every length; and separators. Each with a default region drawn from
    /// a few with unusual rules (national prefixes, carrier codes, transform rules) and None.
    fn varied_numbers(count: usize) -> Vec<(Option<country::Id>, String)> {
        use phonenumber::metadata::DATABASE;
        let mut rng = Sample(0x9E37_79B9_7F4A_7C15);
        let mut metas: Vec<_> = DATABASE.iter().collect();
        metas.sort_by_key(|m| (m.country_code(), m.id().to_owned()));
        let ids: Vec<country::Id> = metas.iter().filter_map(|m| m.id().parse().ok()).collect();
        let codes: Vec<u16> = metas.iter().map(|m| m.country_code()).collect();
        let unusual = [
            "US", "GB", "DE", "FR", "IT", "BR", "AR", "MX", "RU", "JP", "IN", "CN", "AU", "NZ",
            "CO", "KR", "SG", "CH",
        ];
        let mut out = Vec::new();
        let push =
            |out: &mut Vec<_>, rng: &mut Sample, number: String, own: Option<country::Id>| {
                let region = match rng.below(4) {
                    0 => None,
                    1 => own.or_else(|| Some(ids[rng.below(ids.len())])),
                    2 => Some(ids[rng.below(ids.len())]),
                    _ => unusual[rng.below(unusual.len())].parse().ok(),
                };
                out.push((region, number));
            };
        let mutate = |rng: &mut Sample, n: &str| -> String {
            let mut d: Vec<u8> = n.bytes().collect();
            if d.is_empty() {
                return n.to_owned();
            }
            let at = rng.below(d.len());
            match rng.below(3) {
                0 => d[at] = b'0' + rng.below(10) as u8,
                1 => {
                    d.remove(at);
                }
                _ => d.insert(at, b'0' + rng.below(10) as u8),
            }
            String::from_utf8(d).unwrap_or_default()
        };
        let mut examples = Vec::new();
        for meta in &metas {
            let own: Option<country::Id> = meta.id().parse().ok();
            let d = meta.descriptors();
            let descriptors = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
                d.short_code(),
                d.emergency(),
                d.no_international(),
            ];
            for example in descriptors
                .into_iter()
                .flatten()
                .filter_map(|d| d.example())
            {
                let cc = meta.country_code();
                examples.push((cc, example));
                let np = meta.national_prefix().unwrap_or("");
                let idd = meta.preferred_international_prefix().unwrap_or("00");
                for form in [
                    format!("+{cc}{example}"),
                    format!("+{cc}{np}{example}"),
                    format!("{np}{example}"),
                    example.to_owned(),
                    format!("{cc}{example}"),
                    format!("{idd}{cc}{example}"),
                ] {
                    let mutated = mutate(&mut rng, &form);
                    push(&mut out, &mut rng, form.clone(), own);
                    push(&mut out, &mut rng, mutated, own);
                }
            }
        }
        // Half the sample from the examples (~20,000 numbers in all), half random.
        while out.len() > count / 2 {
            let at = rng.below(out.len());
            out.swap_remove(at);
        }
        while out.len() < count {
            let number = match rng.below(5) {
                0 => {
                    let cc = codes[rng.below(codes.len())];
                    let len = 1 + rng.below(15);
                    format!("+{cc}{}", rng.digits(len))
                }
                4 => {
                    // An example with its last digits random: often valid, often not.
                    let (cc, example) = &examples[rng.below(examples.len())];
                    let keep = example.len().saturating_sub(1 + rng.below(4));
                    let tail = example.len() - keep;
                    format!("+{cc}{}{}", &example[..keep], rng.digits(tail))
                }
                1 => {
                    let len = 1 + rng.below(20);
                    format!("+{}", rng.digits(len))
                }
                2 => {
                    let len = 1 + rng.below(20);
                    rng.digits(len)
                }
                _ => {
                    // Separators as agents type them.
                    let cc = codes[rng.below(codes.len())];
                    let (a, b) = (rng.digits(3), rng.digits(4));
                    let tail = 1 + rng.below(4);
                    format!("+{cc} ({a}) {b}-{}", rng.digits(tail))
                }
            };
            push(&mut out, &mut rng, number, None);
        }
        // Grouped by region and country code: the crate's regex cache holds 100 patterns, and
        // a random order would recompile them for nearly every number (slow in a debug build).
        out.sort_by(|a, b| {
            (a.0.map(|r| r.as_ref().to_owned()), &a.1)
                .cmp(&(b.0.map(|r| r.as_ref().to_owned()), &b.1))
        });
        out
    }

    /// The equivalence check the fast path rests on: over a large varied sample, `normalize`
    /// answers exactly what the crate answered (the same E.164 form, or the same code,
    /// message and BadRequest), and the fast path alone accepts every number the crate
    /// accepts (so that no valid number pays the crate's price). A bigger sample:
    /// `CALLDESK_E164_SAMPLE=1000000 cargo test --release --lib matches_the_crate`.
    #[test]
    fn normalize_matches_the_crate_on_a_varied_sample() {
        let count = std::env::var("CALLDESK_E164_SAMPLE")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3_000);
        let sample = varied_numbers(count);
        let mut rules_by_region = std::collections::HashMap::new();
        let (mut accepted, mut refused, mut fast) = (0, 0, 0);
        for (region, raw) in &sample {
            let rules = rules_by_region
                .entry(*region)
                .or_insert_with(|| PhoneRules {
                    default_region: *region,
                    region: region.and_then(e164::default_region),
                    ..PhoneRules::default()
                });
            let ours = seen(&rules.normalize(raw));
            let theirs = seen(&crate_normalize(*region, raw));
            assert_eq!(ours, theirs, "{raw:?} with --default-region {region:?}");
            match &theirs {
                Ok(e164) => {
                    accepted += 1;
                    let compact: String = raw
                        .chars()
                        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
                        .collect();
                    let (plus, digits) = match compact.strip_prefix('+') {
                        Some(rest) => (true, rest),
                        None => (false, compact.as_str()),
                    };
                    if digits.len() > 8 || plus {
                        let region = if plus { None } else { rules.region };
                        assert_eq!(
                            e164::e164(plus, digits, region).as_ref(),
                            Some(e164),
                            "the fast path alone accepts {raw:?} (--default-region {region:?})"
                        );
                        fast += 1;
                    }
                }
                Err(_) => refused += 1,
            }
        }
        println!(
            "{} numbers: {accepted} accepted ({fast} of them by the fast path alone), {refused} refused, all as the crate answers",
            sample.len()
        );
        assert!(
            accepted > count / 10 && refused > count / 10,
            "a varied sample"
        );
    }

    #[test]
    fn caller_ids_are_international_numbers_or_empty() {
        assert_eq!(caller_id("").ok(), Some(None));
        assert_eq!(caller_id("  ").ok(), Some(None));
        assert_eq!(
            caller_id("+1 (212) 555-0100").ok(),
            Some(Some("+12125550100".to_owned()))
        );
        assert_eq!(
            caller_id("+44 20 7946 0000").ok(),
            Some(Some("+442079460000".to_owned()))
        );
        for bad in [
            "2125550100",
            "+",
            "+1212",
            "+1212555010x",
            "sip:+12125550100",
            "+12125550100123456789012345678901",
        ] {
            let status = caller_id(bad).expect_err(bad);
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
            assert!(status.message().starts_with("caller_id: "), "{bad}");
        }
    }

    #[test]
    fn unknown_default_region_is_refused() {
        assert!(PhoneRules::new(Some("XX")).is_err());
        assert!(PhoneRules::new(Some("gb")).is_ok());
    }

    #[test]
    fn page_tokens_bind_the_agent_and_the_filter() {
        let tokens = PageTokens::with_key(&PageTokens::new_key().unwrap()).unwrap();
        let token = next_page_token(&tokens, Some(42), "alice", 2).unwrap();
        assert_eq!(page_token(&tokens, &token, "alice", 2).unwrap(), Some(42));
        assert!(page_token(&tokens, &token, "alice", 0).is_err());
        assert!(page_token(&tokens, &token, "bob", 2).is_err());
        assert!(page_token(&tokens, "zz", "alice", 0).is_err());
        assert_eq!(next_page_token(&tokens, None, "alice", 0).unwrap(), "");
        assert_eq!(page_token(&tokens, "", "alice", 0).unwrap(), None);
    }

    #[test]
    fn request_ids_are_printable_ascii_up_to_128() {
        assert_eq!(request_id("").unwrap(), None);
        assert_eq!(request_id("abc-1").unwrap().as_deref(), Some("abc-1"));
        assert!(request_id(&"a".repeat(128)).is_ok());
        assert!(request_id(&"a".repeat(129)).is_err());
        assert!(request_id("tab\there").is_err());
        let message = |v: &str| request_id(v).err().map(|s| s.message().to_owned());
        assert_eq!(
            message("caf\u{e9}-1").as_deref(),
            Some("request_id: must be printable ASCII (space to '~'); character 4 is '\u{e9}' (U+00E9)")
        );
        assert_eq!(
            message(&"a".repeat(129)).as_deref(),
            Some("request_id: must be at most 128 characters; it has 129")
        );
    }
}
