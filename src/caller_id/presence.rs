//! Local presence: of an agent's caller IDs, the one closest to the customer's number, so that
//! the customer sees a number of their own country, area or region. Pure: the numbers in, the
//! choice out; the places come from libphonenumber's metadata ([`crate::compliance::zones`]).
//!
//! The rule, in order (each step only among the numbers that tie on the one before):
//! 1. the same country (`+1 416` is Canada, `+1 212` the United States);
//! 2. in the NANP, the same area code (`+1 212` for a `+1 212` customer);
//! 3. the same region: the same state or province in the NANP (`+1 718` for a `+1 212`
//!    customer: both New York), elsewhere a time zone in common (Sydney and Perth are two
//!    regions of Australia, Moscow and Vladivostok two of Russia);
//! 4. the most leading digits in common with the customer's number: outside the NANP, the
//!    area code (`+44 20` London before `+44 161` Manchester);
//! 5. failing all, the earliest in the agent's list: the default first.
//!
//! A number the tables do not place (an extension, a country they do not know) matches
//! nothing, so the default is chosen.

use crate::compliance::zones;

/// How close `candidate` is to `customer`: greater is closer; the fields compare in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Closeness {
    same_country: bool,
    same_nanp_area_code: bool,
    same_region: bool,
    common_digits: usize,
}

fn closeness(candidate: &str, customer: &str, customer_country: Option<&str>) -> Closeness {
    let same_country =
        customer_country.is_some() && zones::country(candidate).as_deref() == customer_country;
    if !same_country {
        return Closeness {
            same_country,
            same_nanp_area_code: false,
            same_region: false,
            common_digits: 0,
        };
    }
    let nanp = customer.starts_with("+1");
    let area_code = |n: &str| n.get(..5).map(str::to_owned);
    let same_nanp_area_code = nanp && area_code(candidate) == area_code(customer);
    let same_region = if nanp {
        // A subdivision in common: 902 may be Nova Scotia or Prince Edward Island.
        let ours = zones::nanp_subdivisions(candidate);
        zones::nanp_subdivisions(customer)
            .iter()
            .any(|region| ours.contains(region))
    } else {
        let theirs = zones::zones(customer);
        let ours = zones::zones(candidate);
        theirs.iter().any(|z| ours.iter().any(|o| o.name == z.name))
    };
    let common_digits = candidate
        .bytes()
        .zip(customer.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    Closeness {
        same_country,
        same_nanp_area_code,
        same_region,
        common_digits,
    }
}

/// The number of `pool` (E.164, the default first) closest to `customer`; the default when
/// none is closer than another; None when the pool is empty.
pub fn closest<'a>(pool: &'a [String], customer: &str) -> Option<&'a str> {
    let (default, others) = pool.split_first()?;
    if others.is_empty() {
        return Some(default);
    }
    let country = zones::country(customer);
    let mut best = (
        default.as_str(),
        closeness(default, customer, country.as_deref()),
    );
    for number in others {
        let score = closeness(number, customer, country.as_deref());
        // Strictly closer only: a tie keeps the earlier number (the default first).
        if score > best.1 {
            best = (number, score);
        }
    }
    Some(best.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(numbers: &[&str]) -> Vec<String> {
        numbers.iter().map(|n| (*n).to_owned()).collect()
    }

    fn pick(numbers: &[&str], customer: &str) -> String {
        closest(&pool(numbers), customer)
            .unwrap_or("none")
            .to_owned()
    }

    // Real numbering: New York (212, 917, 646, 718), Los Angeles (213, 310, 424), San
    // Francisco (415), Houston (713), Dallas (214), Toronto (416, 647, 905), Vancouver (604),
    // Miami (305), Nova Scotia and Prince Edward Island (902, 782), London (20), Manchester
    // (161), Sydney (2), Perth (8), Paris (1), Lyon (4), Berlin (30), Munich (89).
    const NY_212: &str = "+12125550100";
    const NY_917: &str = "+19175550100";
    const LA: &str = "+12135550100";
    const LA_310: &str = "+13105550100";
    const HOUSTON: &str = "+17135550100";
    const PEI_782: &str = "+17825550100";
    const SF: &str = "+14155550100";
    const TORONTO: &str = "+14165550100";
    const LONDON: &str = "+442079460000";
    const MANCHESTER: &str = "+441614960000";
    const SYDNEY: &str = "+61293744000";
    const PERTH: &str = "+61892221234";
    const PARIS: &str = "+33142685300";
    const LYON: &str = "+33472101010";
    const BERLIN: &str = "+493012345678";
    const MUNICH: &str = "+498912345678";

    #[test]
    fn the_same_nanp_area_code_wins() {
        assert_eq!(pick(&[SF, NY_917, NY_212], "+12125550199"), NY_212);
        assert_eq!(pick(&[NY_212, LA], "+12135559999"), LA);
    }

    #[test]
    fn then_the_same_state_or_province() {
        // 646 is Manhattan: New York's 917 over California's numbers.
        assert_eq!(pick(&[LA, SF, NY_917], "+16465550100"), NY_917);
        // 212 and 213 share more digits, but 917 is the same state.
        assert_eq!(pick(&[LA, NY_917], "+12125550100"), NY_917);
        // 647 is Toronto too: Ontario.
        assert_eq!(pick(&[LA, TORONTO], "+16475550100"), TORONTO);
        // San Diego (619): California, Los Angeles or San Francisco alike: the earlier.
        assert_eq!(pick(&[NY_212, SF, LA], "+16195550100"), SF);
        // Area codes libphonenumber geocodes only by exchange: Brooklyn's 718 is New York,
        // Los Angeles' 310 and 424 are California, Houston's 713 Texas (not Dallas' 214 by
        // digits), Ontario's 905 Ontario.
        assert_eq!(pick(&[LA_310, NY_212], "+17185550100"), NY_212);
        assert_eq!(pick(&[NY_212, LA_310], "+14245550100"), LA_310);
        assert_eq!(pick(&[NY_212, LA_310], "+12135550100"), LA_310);
        assert_eq!(pick(&[NY_212, HOUSTON], "+12145550100"), HOUSTON);
        assert_eq!(pick(&[LA, TORONTO], "+19055550100"), TORONTO);
        // 902 is Nova Scotia or Prince Edward Island; 782 too: a subdivision in common.
        assert_eq!(pick(&[TORONTO, PEI_782], "+19025660100"), PEI_782);
    }

    #[test]
    fn then_the_same_country() {
        // Vancouver (British Columbia): no number in BC, Toronto is Canada.
        assert_eq!(pick(&[LA, TORONTO], "+16045550100"), TORONTO);
        // A US customer outside every pool number's state: still a US number, not Canada's.
        assert_eq!(pick(&[TORONTO, LA], "+13055550100"), LA);
        assert_eq!(pick(&[NY_212, LONDON, PARIS], "+33612345678"), PARIS);
    }

    #[test]
    fn outside_the_nanp_the_region_and_then_the_area_code() {
        assert_eq!(pick(&[NY_212, SYDNEY, PERTH], "+61892345678"), PERTH);
        assert_eq!(pick(&[PERTH, SYDNEY], "+61298765432"), SYDNEY);
        assert_eq!(pick(&[MANCHESTER, LONDON], "+442071234567"), LONDON);
        assert_eq!(pick(&[LONDON, MANCHESTER], "+441619998888"), MANCHESTER);
        assert_eq!(pick(&[PARIS, LYON], "+33478000000"), LYON);
        assert_eq!(pick(&[BERLIN, MUNICH], "+498998765432"), MUNICH);
    }

    #[test]
    fn failing_all_the_default() {
        // No number of the customer's country: the first (the default).
        assert_eq!(pick(&[LA, LONDON], "+493012345678"), LA);
        // A UK mobile has nothing in common with either London or Manchester beyond +44.
        assert_eq!(pick(&[MANCHESTER, LONDON], "+447700900123"), MANCHESTER);
        // An extension, or a number the tables do not place.
        assert_eq!(pick(&[LA, NY_212], "1234"), LA);
        assert_eq!(pick(&[LA], "+12125550100"), LA);
        assert_eq!(closest(&[], "+12125550100"), None);
    }
}
