//! Where a called number is: its country, its NANP subdivision, and the time zones it may be
//! in, from the number alone.
//!
//! The tables are data (`data/`, written by `scripts/zones-data` from libphonenumber's own
//! timezone map and geocoding, named in each file's header), parsed once on first use. A
//! number's zones are those of its longest listed prefix: `+1 812 424` (Evansville, Indiana)
//! is Central time, `+1 812` as a whole is Central or Eastern.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use jiff::tz::TimeZone;

/// E.164 prefix (digits after `+`) → the zones a number under it may be in.
const NUMBER_ZONES: &str = include_str!("data/number_zones.tsv");
/// NANP area code (`1` + NPA), or an exchange of one that spans several subdivisions → the
/// ISO 3166-2 subdivisions (`US-NY`; `CA-NS CA-PE` for 902) a number under it may be in.
const NANP_SUBDIVISIONS: &str = include_str!("data/nanp_subdivisions.tsv");
/// NANP area code (`1` + NPA) → ISO 3166-1 country (`US`, `CA`, `JM`).
const NANP_COUNTRIES: &str = include_str!("data/nanp_countries.tsv");

/// One possible time zone of a called party.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The IANA name, as shown in refusals (`America/New_York`).
    pub name: &'static str,
    /// The tz database's rules for it (jiff's bundled copy, so that every host agrees).
    pub tz: TimeZone,
}

/// The parsed tables.
struct Tables {
    /// Prefix digits → its zones; looked up from the longest prefix of a number down.
    zones: HashMap<&'static str, Arc<[Zone]>>,
    /// The longest prefix in `zones`, to start the lookup there.
    longest: usize,
    /// NANP prefix (area code, or area code and exchange digits) → the subdivisions a number
    /// under it may be in; looked up from the longest prefix down.
    subdivisions: HashMap<&'static str, Vec<&'static str>>,
    /// The longest prefix in `subdivisions`.
    longest_subdivision_prefix: usize,
    /// NANP area code → country.
    nanp_countries: HashMap<&'static str, &'static str>,
    /// Calling codes other than +1 that several countries share (+44, +7, …), in the
    /// metadata's order with the main country first: each country and what places a national
    /// number there: its leading digits where the metadata names them, else the patterns of
    /// its valid numbers.
    shared_codes: HashMap<u16, Vec<(String, regex::Regex)>>,
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let mut zones = HashMap::new();
    let mut longest = 0;
    for (prefix, names) in rows(NUMBER_ZONES) {
        let list: Vec<Zone> = names
            .split(' ')
            // A name the bundled tz database lacks is skipped; the test below holds the
            // table to the database, so none is.
            .filter_map(|name| TimeZone::get(name).ok().map(|tz| Zone { name, tz }))
            .collect();
        if !list.is_empty() {
            longest = longest.max(prefix.len());
            zones.insert(prefix, list.into());
        }
    }
    let subdivisions: HashMap<&'static str, Vec<&'static str>> = rows(NANP_SUBDIVISIONS)
        .map(|(prefix, codes)| (prefix, codes.split(' ').collect()))
        .collect();
    let longest_subdivision_prefix = subdivisions.keys().map(|p| p.len()).max().unwrap_or(0);
    let nanp_countries = rows(NANP_COUNTRIES).collect();
    let mut shared_codes = HashMap::new();
    for code in 2..1000u16 {
        let Some(regions) = phonenumber::metadata::DATABASE.by_code(&code) else {
            continue;
        };
        if regions.len() > 1 {
            // The main country first: the others are tried on the number, it is the default.
            let mut regions = regions;
            regions.sort_by_key(|meta| !meta.is_main_country_for_code());
            let regions = regions
                .iter()
                .filter_map(|meta| {
                    // The metadata's patterns keep the XML's line breaks and indentation.
                    let compact = |p: &str| p.split_whitespace().collect::<String>();
                    let places = match meta.leading_digits() {
                        Some(leading) => format!("^(?:{})", compact(leading.as_str())),
                        None => {
                            // A number valid there: one of its number types' patterns.
                            let d = meta.descriptors();
                            let types = [
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
                            ];
                            let alternatives: Vec<String> = types
                                .into_iter()
                                .flatten()
                                .map(|t| format!("(?:{})", compact(t.national_number().as_str())))
                                .collect();
                            format!("^(?:{})$", alternatives.join("|"))
                        }
                    };
                    Some((meta.id().to_owned(), regex::Regex::new(&places).ok()?))
                })
                .collect();
            shared_codes.insert(code, regions);
        }
    }
    Tables {
        zones,
        longest,
        subdivisions,
        longest_subdivision_prefix,
        nanp_countries,
        shared_codes,
    }
});

/// The `prefix<TAB>value` rows of a data file, comments skipped.
fn rows(text: &'static str) -> impl Iterator<Item = (&'static str, &'static str)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split_once('\t'))
}

/// Parses the tables now rather than on the first call (at start-up, when calling hours are on).
pub fn warm_up() {
    LazyLock::force(&TABLES);
}

/// The zones a number (E.164, `+` and digits) may be in; empty when the tables know none.
pub fn zones(e164: &str) -> Arc<[Zone]> {
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    let tables = &*TABLES;
    let mut end = digits.len().min(tables.longest);
    while end > 0 {
        if let Some(zones) = digits.get(..end).and_then(|p| tables.zones.get(p)) {
            return zones.clone();
        }
        end -= 1;
    }
    Arc::from([])
}

/// The ISO 3166-2 subdivisions a US or Canadian number may be in (`US-NY`), from its area
/// code, or its exchange where the area code spans several (902: Nova Scotia or Prince Edward
/// Island); empty when the tables place it nowhere (a toll-free or other non-geographic code,
/// another NANP country).
pub fn nanp_subdivisions(e164: &str) -> &'static [&'static str] {
    let Some(digits) = e164.strip_prefix('+').filter(|d| d.starts_with('1')) else {
        return &[];
    };
    let tables: &'static Tables = &TABLES;
    let mut end = digits.len().min(tables.longest_subdivision_prefix);
    // Area code and longer only: "1" alone or "1" + two digits is no place.
    while end >= 4 {
        if let Some(codes) = digits.get(..end).and_then(|p| tables.subdivisions.get(p)) {
            return codes;
        }
        end -= 1;
    }
    &[]
}

/// The ISO 3166-2 subdivision of a US or Canadian number (`US-NY`) when the tables place it in
/// exactly one.
pub fn nanp_subdivision(e164: &str) -> Option<&'static str> {
    match nanp_subdivisions(e164) {
        [one] => Some(one),
        _ => None,
    }
}

/// The ISO 3166-1 alpha-2 code of the number's country (`US`, `GB`), as libphonenumber's
/// metadata places it: by area code in the NANP (a table), by calling code elsewhere, and by
/// the leading digits where several countries share a calling code (+44 1481: Guernsey).
pub fn country(e164: &str) -> Option<String> {
    let digits = e164.strip_prefix('+')?;
    let tables = &*TABLES;
    if digits.starts_with('1') {
        let area_code = digits.get(..4)?;
        return tables
            .nanp_countries
            .get(area_code)
            .map(|c| (*c).to_owned());
    }
    for len in 1..=3.min(digits.len()) {
        let code: u16 = digits[..len].parse().ok()?;
        let national = &digits[len..];
        if let Some(regions) = tables.shared_codes.get(&code) {
            // As libphonenumber places it: the first country, main one first, whose leading
            // digits or numbering the number fits; failing all, the main one.
            let (main, _) = regions.first()?;
            let placed = regions.iter().find(|(_, places)| places.is_match(national));
            return Some(placed.map_or(main, |(id, _)| id).clone());
        }
        if let Some(regions) = phonenumber::metadata::DATABASE.by_code(&code) {
            return regions.first().map(|meta| meta.id().to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e164: &str) -> Vec<&'static str> {
        zones(e164).iter().map(|z| z.name).collect()
    }

    #[test]
    fn every_zone_of_the_table_is_in_the_tz_database() {
        for (prefix, names) in rows(NUMBER_ZONES) {
            for name in names.split(' ') {
                assert!(TimeZone::get(name).is_ok(), "{prefix}: {name}");
            }
        }
    }

    #[test]
    fn known_numbers_are_in_their_zones() {
        // New York, Los Angeles, Phoenix (no DST), Honolulu.
        assert_eq!(names("+12125550100"), ["America/New_York"]);
        assert_eq!(names("+12135550100"), ["America/Los_Angeles"]);
        assert_eq!(names("+16025550100"), ["America/Phoenix"]);
        assert_eq!(names("+18085550100"), ["Pacific/Honolulu"]);
        // Indiana: Indianapolis is Eastern; 812 spans Eastern and Central, but Evansville's
        // exchange 424 is Central; Gary's 219 is Central or Eastern.
        assert_eq!(names("+13175550100"), ["America/New_York"]);
        assert_eq!(
            names("+18125550100"),
            ["America/Chicago", "America/New_York"]
        );
        assert_eq!(names("+18124240000"), ["America/Chicago"]);
        assert_eq!(
            names("+12195550100"),
            ["America/Chicago", "America/New_York"]
        );
        // London; Sydney; Perth (+61 8 is Western and Central Australia alike).
        assert_eq!(names("+442079460000"), ["Europe/London"]);
        assert_eq!(names("+61293744000"), ["Australia/Sydney"]);
        assert_eq!(
            names("+61892221234"),
            ["Australia/Adelaide", "Australia/Perth"]
        );
    }

    #[test]
    fn countries_and_subdivisions() {
        assert_eq!(country("+12125550100").as_deref(), Some("US"));
        assert_eq!(country("+14165550100").as_deref(), Some("CA"));
        assert_eq!(country("+18765550100").as_deref(), Some("JM"));
        assert_eq!(country("+442079460000").as_deref(), Some("GB"));
        assert_eq!(country("+33142685300").as_deref(), Some("FR"));
        assert_eq!(country("+61293744000").as_deref(), Some("AU"));
        // Shared calling codes: Guernsey in +44, Kazakhstan in +7, the Vatican in +39.
        assert_eq!(country("+441481200000").as_deref(), Some("GG"));
        assert_eq!(country("+74951234567").as_deref(), Some("RU"));
        assert_eq!(country("+77012345678").as_deref(), Some("KZ"));
        assert_eq!(country("+390669812345").as_deref(), Some("VA"));
        assert_eq!(country("+390612345678").as_deref(), Some("IT"));
        assert_eq!(nanp_subdivision("+12125550100"), Some("US-NY"));
        assert_eq!(nanp_subdivision("+18125550100"), Some("US-IN"));
        assert_eq!(nanp_subdivision("+14165550100"), Some("CA-ON"));
        assert_eq!(nanp_subdivision("+442079460000"), None);
    }

    #[test]
    fn area_codes_geocoded_only_by_exchange_and_those_of_several_subdivisions() {
        // 718 (Brooklyn), 310 (Los Angeles), 203 (Connecticut), 713 (Houston), 905 (Ontario):
        // libphonenumber geocodes them by exchange only.
        assert_eq!(nanp_subdivision("+17185550100"), Some("US-NY"));
        assert_eq!(nanp_subdivision("+13105550100"), Some("US-CA"));
        assert_eq!(nanp_subdivision("+12035550100"), Some("US-CT"));
        assert_eq!(nanp_subdivision("+17135550100"), Some("US-TX"));
        assert_eq!(nanp_subdivision("+19055550100"), Some("CA-ON"));
        // 902: Halifax (Nova Scotia), Charlottetown's 566 (Prince Edward Island), and an
        // exchange the data does not place: either.
        assert_eq!(nanp_subdivision("+19024250000"), Some("CA-NS"));
        assert_eq!(nanp_subdivision("+19025660000"), Some("CA-PE"));
        assert_eq!(nanp_subdivisions("+19025550100"), ["CA-NS", "CA-PE"]);
        // 867: Whitehorse's 667 is Yukon; the area code is the three territories.
        assert_eq!(nanp_subdivision("+18676670000"), Some("CA-YT"));
        assert_eq!(
            nanp_subdivisions("+18675550100"),
            ["CA-NT", "CA-NU", "CA-YT"]
        );
        // Toll-free, another NANP country, a short or foreign number: nowhere.
        assert!(nanp_subdivisions("+18005550100").is_empty());
        assert!(nanp_subdivisions("+18765550100").is_empty());
        assert!(nanp_subdivisions("+1").is_empty());
        assert!(nanp_subdivisions("+442079460000").is_empty());
    }

    /// Every US and Canadian area code libphonenumber knows (nanp_countries.tsv) is in the
    /// subdivision table, but the non-geographic ones: NANPA's personal-communications 5XX
    /// codes, Canada's non-geographic 600/622/633, 700 and 710, toll-free 8XX and 900.
    #[test]
    fn every_geographic_us_and_canadian_area_code_is_placed() {
        let non_geographic = [
            "500", "521", "522", "523", "524", "525", "526", "527", "528", "529", "532", "533",
            "544", "566", "577", "588", "600", "622", "633", "700", "710", "800", "833", "844",
            "855", "866", "877", "888", "900",
        ];
        let mut placed = 0;
        for (area_code, country) in rows(NANP_COUNTRIES) {
            if !matches!(country, "US" | "CA") || non_geographic.contains(&&area_code[1..]) {
                continue;
            }
            let codes = nanp_subdivisions(&format!("+{area_code}5550100"));
            assert!(
                !codes.is_empty(),
                "{area_code} ({country}) is in no subdivision"
            );
            assert!(
                codes.iter().all(|c| c.starts_with(country)),
                "{area_code} ({country}) placed in {codes:?}"
            );
            placed += 1;
        }
        // 2025's count: the test must not pass on an empty table.
        assert!(placed > 400, "only {placed} area codes placed");
    }
}
