//! Request validation: the contract's limits and phone-number rules. Every violation is an
//! INVALID_ARGUMENT carrying a `google.rpc.BadRequest` that names the field.

use std::sync::Arc;

use phonenumber::{country, Mode};
use quick_cache::sync::Cache;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{AssociatedObject, InteractionState};
use crate::proto;

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
    /// Numbers already parsed and validated (separators removed) → their E.164 form.
    /// libphonenumber's validation costs about a third of a StartCall's instructions
    /// (BENCHMARKS.md), and agents dial the same numbers again: redials, callbacks,
    /// retries. The result depends only on the number and `default_region`, which is fixed
    /// for the server's life, so a cached answer is the answer. Bounded, and shared by all
    /// handlers without a lock held across anything but the lookup.
    normalized: Arc<Cache<String, String>>,
}

impl Default for PhoneRules {
    fn default() -> Self {
        Self {
            default_region: None,
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
        Ok(Self {
            default_region,
            ..Self::default()
        })
    }

    /// Loads libphonenumber's metadata, which the crate parses lazily on first use (about a
    /// second in a debug build): better at start-up than in the first StartCall.
    pub fn warm_up(&self) {
        let _ = phonenumber::parse(None, "+12025550100");
    }

    /// The normalized number: E.164 for `+` and national numbers, the digits as dialed for an
    /// internal extension of 2 to 8 digits.
    pub fn normalize(&self, raw: &str) -> Result<String, Status> {
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
            return Ok(digits.to_owned());
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
        if let Some(e164) = self.normalized.get(compact.as_str()) {
            return Ok(e164);
        }
        let parsed = phonenumber::parse(region, &compact)
            .map_err(|e| bad_field(FIELD, format!("is not a valid phone number ({e})")))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(bad_field(FIELD, "is not a possible phone number"));
        }
        let e164 = parsed.format().mode(Mode::E164).to_string();
        self.normalized.insert(compact, e164.clone());
        Ok(e164)
    }
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

/// Page tokens are opaque to clients: `v1.<state filter>.<row before which the page starts>`,
/// hex-encoded. The filter is in the token so that a token is not reused with another filter.
pub fn page_token(token: &str, state: i32) -> Result<Option<i64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        bad_field(
            "page_token",
            "is not a token this server returned for this request",
        )
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(s), Some(before), None) if s.parse::<i32>().ok() == Some(state) => {
            before.parse::<i64>().map(Some).map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}

pub fn next_page_token(before: Option<i64>, state: i32) -> String {
    before.map_or_else(String::new, |before| {
        format!("v1.{state}.{before}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
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

    #[test]
    fn unknown_default_region_is_refused() {
        assert!(PhoneRules::new(Some("XX")).is_err());
        assert!(PhoneRules::new(Some("gb")).is_ok());
    }

    #[test]
    fn page_tokens_round_trip_and_bind_the_filter() {
        let token = next_page_token(Some(42), 2);
        assert_eq!(page_token(&token, 2).unwrap(), Some(42));
        assert!(page_token(&token, 0).is_err());
        assert!(page_token("zz", 0).is_err());
        assert!(page_token("abc", 0).is_err());
        assert_eq!(next_page_token(None, 0), "");
        assert_eq!(page_token("", 0).unwrap(), None);
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
