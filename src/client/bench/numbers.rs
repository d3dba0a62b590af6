//! The numbers `calldesk bench` dials: one repeated, or a pool of distinct valid numbers.
//!
//! The pool is 1,000,000 numbers, generated (not stored) from their index, so that every run
//! dials the same ones: a third each in the US (16 area codes), the UK (London, 020) and
//! Germany (Berlin, 030). All are valid to libphonenumber, and none is one of the simulated
//! switch's scripted numbers (`+1202555010x`, docs/api.md §8.1): the simulator rings and
//! answers them like any customer, and they stay DELIVERED until EndCall.

/// How many distinct numbers the pool holds.
pub const POOL: usize = 1_000_000;

/// US area codes of the pool: geographic, none of them 202 (the simulator's scripted numbers
/// are in 202).
const US_AREA_CODES: [u16; 16] = [
    212, 213, 305, 312, 404, 415, 503, 512, 617, 702, 713, 804, 808, 919, 971, 303,
];

/// The pool's number `index` (taken modulo [`POOL`]), in E.164.
pub fn pool_number(index: usize) -> String {
    let index = index % POOL;
    // Consecutive indexes go to different countries, area codes and exchanges.
    let k = index / 3;
    match index % 3 {
        0 => {
            let area = US_AREA_CODES[k % US_AREA_CODES.len()];
            let rest = k / US_AREA_CODES.len();
            // Exchanges 230–299 (never N11), 10,000 lines each.
            let exchange = 230 + rest % 70;
            let line = rest / 70 % 10_000;
            format!("+1{area}{exchange}{line:04}")
        }
        1 => {
            // London: 020 3xxx xxxx, 7xxx xxxx, 8xxx xxxx.
            let first = [3, 7, 8][k % 3];
            format!("+4420{first}{:07}", k / 3 * 7 % 10_000_000)
        }
        _ => {
            // Berlin: 030 and 8 digits, the first 2–9.
            format!("+4930{}{:07}", 2 + k % 8, k / 8 * 13 % 10_000_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_pool_is_distinct_and_avoids_the_scripted_numbers() {
        let all: HashSet<String> = (0..POOL).map(pool_number).collect();
        assert_eq!(all.len(), POOL);
        // The simulator's scripted numbers are +12025550101 to +12025550105 (docs/api.md §8.1).
        assert!(all.iter().all(|n| !n.starts_with("+1202")));
        assert_eq!(pool_number(POOL), pool_number(0));
    }

    /// Every area code, exchange and first local digit, with libphonenumber itself; all
    /// 1,000,000: `CALLDESK_POOL_CHECK=all cargo test --release --lib the_pool_is_valid`.
    #[test]
    fn the_pool_is_valid() {
        let stride = match std::env::var("CALLDESK_POOL_CHECK").as_deref() {
            Ok("all") => 1,
            _ => 331,
        };
        let mut checked = 0;
        for index in (0..POOL).step_by(stride) {
            let number = pool_number(index);
            let parsed = phonenumber::parse(None, &number).expect(&number);
            assert!(phonenumber::is_valid(&parsed), "{number}");
            assert_eq!(
                parsed.format().mode(phonenumber::Mode::E164).to_string(),
                number
            );
            checked += 1;
        }
        println!("{checked} pool numbers valid");
    }
}
