//! `--dnc FILE` (repeatable): numbers never to call.
//!
//! One E.164 number per line (`+12025550100`); a line ending in `*` is a prefix (`+1900*`:
//! every number that starts so); `#` starts a comment. Lists have millions of lines, so a list
//! is kept compact: each number is its digits as one `u64` (E.164 has at most 15 digits and
//! never a leading 0, so equal values are equal numbers), in one sorted array, 8 bytes a
//! number; prefixes likewise, one sorted array per length.
//!
//! A plain binary search over ten million numbers touches ~23 cache lines of an 80 MB array
//! (~3.5 µs here, memory-bound). So the sorted array, whose numbers of one length are
//! contiguous (no leading 0: a longer number is a larger value), gets a small index per
//! length: the range of values is cut into buckets of about [`PER_BUCKET`] numbers, and the
//! index holds where each bucket starts (4 bytes per bucket, half a byte a number). A lookup
//! reads the index, then searches one bucket: two or three cache lines.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

/// The longest E.164 number, in digits.
const MAX_DIGITS: usize = 15;
/// How much of a file is read at a time.
const READ_BUFFER: usize = 1 << 20;
/// Numbers per bucket of the index, on average (a cache line of them).
const PER_BUCKET: usize = 8;
/// Below this many numbers of one length, a plain binary search is as quick.
const INDEXED_FROM: usize = 4096;

/// Where the numbers of one length lie in the sorted array, and their bucket index.
#[derive(Debug, Default)]
struct Segment {
    /// `numbers[start..end]` have this length.
    start: usize,
    end: usize,
    /// The smallest of them; a value's bucket is `(value - min) >> shift`.
    min: u64,
    shift: u32,
    /// `index[b]`: the position of the first number whose bucket is `b` or more (one entry
    /// more than buckets, so that `index[b + 1]` ends bucket `b`). Empty: no index.
    index: Vec<u32>,
}

impl Segment {
    fn new(numbers: &[u64], start: usize, end: usize) -> Self {
        let values = &numbers[start..end];
        let (Some(&min), Some(&max)) = (values.first(), values.last()) else {
            return Segment::default();
        };
        let mut segment = Segment {
            start,
            end,
            min,
            ..Segment::default()
        };
        if values.len() < INDEXED_FROM || end > u32::MAX as usize {
            return segment;
        }
        let buckets_wanted = (values.len() / PER_BUCKET).max(1) as u64;
        let span = max - min;
        while (span >> segment.shift) >= buckets_wanted {
            segment.shift += 1;
        }
        let buckets = (span >> segment.shift) as usize + 1;
        let mut index = Vec::with_capacity(buckets + 1);
        for (i, value) in values.iter().enumerate() {
            let bucket = ((value - min) >> segment.shift) as usize;
            while index.len() <= bucket {
                index.push((start + i) as u32);
            }
        }
        index.resize(buckets + 1, end as u32);
        segment.index = index;
        segment
    }

    /// The part of the sorted array where `value` would be.
    fn range(&self, value: u64) -> std::ops::Range<usize> {
        if self.index.is_empty() {
            return self.start..self.end;
        }
        let Some(offset) = value.checked_sub(self.min) else {
            return 0..0;
        };
        let bucket = (offset >> self.shift) as usize;
        match (self.index.get(bucket), self.index.get(bucket + 1)) {
            (Some(&from), Some(&to)) => from as usize..to as usize,
            _ => 0..0,
        }
    }
}

/// One file's numbers.
#[derive(Debug, Default)]
struct DncList {
    /// The file's name (without its directory), to name the list in refusals and logs.
    name: String,
    /// Whole numbers, sorted, without duplicates.
    numbers: Vec<u64>,
    /// `segments[n]`: where the numbers of n digits are in `numbers`, and their index.
    segments: [Segment; MAX_DIGITS + 1],
    /// `prefixes[n]`: the prefixes of n digits, sorted, without duplicates.
    prefixes: [Vec<u64>; MAX_DIGITS + 1],
}

/// Every `--dnc` file, read together: a reload replaces all of them or none.
#[derive(Debug, Default)]
pub struct DncLists {
    lists: Vec<DncList>,
}

impl DncLists {
    /// Reads every file; the error names the file and the line at fault.
    pub fn load(paths: &[PathBuf]) -> Result<Self, String> {
        let lists = paths
            .iter()
            .map(|path| DncList::load(path))
            .collect::<Result<_, _>>()?;
        Ok(Self { lists })
    }

    /// Numbers and prefixes held, for log lines.
    pub fn entries(&self) -> usize {
        self.lists
            .iter()
            .map(|l| l.numbers.len() + l.prefixes.iter().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The name of the first list holding `e164` (or a prefix of it); None if it may be called.
    /// An internal extension (no `+`) is on no list.
    pub fn lookup(&self, e164: &str) -> Option<&str> {
        let (value, digits) = digits_value(e164.strip_prefix('+')?.as_bytes())?;
        self.lists
            .iter()
            .find(|list| list.holds(value, digits))
            .map(|list| list.name.as_str())
    }
}

impl DncList {
    fn load(path: &Path) -> Result<Self, String> {
        let cannot = |e: std::io::Error| format!("cannot read --dnc {}: {e}", path.display());
        // Counting the lines first sizes the array once: growing it by doubling would hold
        // both the old and the new array at the last step (1.5 times the memory).
        let lines = count_lines(&mut File::open(path).map_err(cannot)?).map_err(cannot)?;
        let mut list = DncList {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            numbers: Vec::with_capacity(lines),
            ..DncList::default()
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER, File::open(path).map_err(cannot)?);
        let mut line = Vec::with_capacity(64);
        let mut number = 0usize;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(cannot)? == 0 {
                break;
            }
            number += 1;
            list.add(&line)
                .map_err(|why| format!("--dnc {} line {number}: {why}", path.display()))?;
        }
        list.numbers.sort_unstable();
        list.numbers.dedup();
        list.numbers.shrink_to_fit();
        let mut start = 0;
        for digits in 1..=MAX_DIGITS {
            // The numbers of `digits` digits are those below 10^digits (and at least
            // 10^(digits - 1): the ones before were shorter).
            let limit = 10u64.pow(digits as u32);
            let end = start + list.numbers[start..].partition_point(|&n| n < limit);
            list.segments[digits] = Segment::new(&list.numbers, start, end);
            start = end;
        }
        for prefixes in &mut list.prefixes {
            prefixes.sort_unstable();
            prefixes.dedup();
        }
        Ok(list)
    }

    /// Adds one line of the file.
    fn add(&mut self, raw: &[u8]) -> Result<(), String> {
        let line = match raw.iter().position(|&b| b == b'#') {
            Some(comment) => &raw[..comment],
            None => raw,
        };
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        let bad = || {
            format!(
                "{:?} is not an E.164 number (+ and 1 to 15 digits, the first not 0) or a \
                 prefix ending in *",
                String::from_utf8_lossy(line)
            )
        };
        let body = line.strip_prefix(b"+").ok_or_else(bad)?;
        let (body, prefix) = match body.strip_suffix(b"*") {
            Some(body) => (body, true),
            None => (body, false),
        };
        let (value, digits) = digits_value(body).ok_or_else(bad)?;
        if prefix {
            self.prefixes[digits].push(value);
        } else {
            self.numbers.push(value);
        }
        Ok(())
    }

    fn holds(&self, value: u64, digits: usize) -> bool {
        let range = self.segments[digits].range(value);
        if self
            .numbers
            .get(range)
            .is_some_and(|bucket| bucket.binary_search(&value).is_ok())
        {
            return true;
        }
        let mut shortened = value;
        for length in (1..=digits).rev() {
            if self.prefixes[length].binary_search(&shortened).is_ok() {
                return true;
            }
            shortened /= 10;
        }
        false
    }
}

/// 1 to 15 ASCII digits, the first not 0, as a number and its length.
fn digits_value(digits: &[u8]) -> Option<(u64, usize)> {
    if digits.is_empty() || digits.len() > MAX_DIGITS || digits[0] == b'0' {
        return None;
    }
    let mut value = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, digits.len()))
}

/// Lines in a file (a last line without a newline counts).
fn count_lines(file: &mut File) -> std::io::Result<usize> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let (mut lines, mut last) = (0, b'\n');
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(lines + usize::from(last != b'\n'));
        }
        lines += buffer[..n].iter().filter(|&&b| b == b'\n').count();
        last = buffer[n - 1];
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lists(files: &[&str]) -> (tempfile::TempDir, Result<DncLists, String>) {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.path().join(format!("list{i}.txt"));
                File::create(&path)
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                path
            })
            .collect();
        let loaded = DncLists::load(&paths);
        (dir, loaded)
    }

    #[test]
    fn numbers_and_prefixes_are_found() {
        let (_dir, loaded) = lists(&[
            "# national list\n+12025550100\n  +12025550199  # with a comment\r\n+1900*\n",
            "+442079460000\n+12025550100\n+3361234*",
        ]);
        let dnc = loaded.unwrap();
        assert_eq!(dnc.entries(), 6);
        assert_eq!(dnc.lookup("+12025550100"), Some("list0.txt"));
        assert_eq!(dnc.lookup("+12025550199"), Some("list0.txt"));
        assert_eq!(dnc.lookup("+19005550100"), Some("list0.txt"));
        assert_eq!(dnc.lookup("+442079460000"), Some("list1.txt"));
        assert_eq!(dnc.lookup("+33612345678"), Some("list1.txt"));
        // Neighbours, a longer and a shorter number, an extension: not listed.
        assert_eq!(dnc.lookup("+12025550101"), None);
        assert_eq!(dnc.lookup("+120255501000"), None);
        assert_eq!(dnc.lookup("+1202555010"), None);
        assert_eq!(dnc.lookup("+18005550100"), None);
        assert_eq!(dnc.lookup("1234"), None);
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        for (text, words) in [
            (
                "+12025550100\n12025550101\n",
                "line 2: \"12025550101\" is not",
            ),
            ("+1202555010x\n", "line 1"),
            ("+012025550100\n", "line 1"),
            ("+1234567890123456\n", "line 1"),
            ("+\n", "line 1"),
            ("+1*2\n", "line 1"),
        ] {
            let (_dir, loaded) = lists(&[text]);
            let error = loaded.unwrap_err();
            assert!(
                error.contains(words) && error.contains("list0.txt"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn the_index_finds_every_number_of_a_large_list_and_no_other() {
        // 20,000 numbers of two lengths, spread unevenly (two clusters), with a few neighbours.
        let mut text = String::new();
        let mut listed = Vec::new();
        for i in 0..10_000u64 {
            listed.push(12_025_550_000 + i * 3); // one US exchange range
            listed.push(447_700_900_000 + i * i); // UK mobiles, spreading out
        }
        for n in &listed {
            text.push_str(&format!("+{n}\n"));
        }
        let (_dir, loaded) = lists(&[&text]);
        let dnc = loaded.unwrap();
        assert!(dnc.lists[0].segments[11].index.len() > 1);
        assert!(dnc.lists[0].segments[12].index.len() > 1);
        let set: std::collections::HashSet<u64> = listed.iter().copied().collect();
        for n in &listed {
            assert!(dnc.lookup(&format!("+{n}")).is_some(), "{n}");
            let next = n + 1;
            assert_eq!(
                dnc.lookup(&format!("+{next}")).is_some(),
                set.contains(&next),
                "{next}"
            );
        }
        for outside in [
            10_000_000_000_u64,
            99_999_999_999,
            100_000_000_000,
            999_999_999_999,
        ] {
            assert!(dnc.lookup(&format!("+{outside}")).is_none(), "{outside}");
        }
    }

    #[test]
    fn an_empty_file_and_a_missing_one() {
        let (_dir, loaded) = lists(&["", "# nothing\n\n"]);
        assert_eq!(loaded.unwrap().entries(), 0);
        let missing = DncLists::load(&[PathBuf::from("/nonexistent/dnc.txt")]).unwrap_err();
        assert!(
            missing.contains("cannot read --dnc /nonexistent/dnc.txt"),
            "{missing}"
        );
    }
}
