//! `--dnc FILE` (repeatable): numbers never to call.
//!
//! One E.164 number per line (`+12025550100`); a line ending in `*` is a prefix (`+1900*`:
//! every number that starts so); `#` starts a comment. Lists have millions of lines, so a list
//! is kept compact: each number is its digits as one `u64` (E.164 has at most 15 digits and
//! never a leading 0, so equal values are equal numbers), in one sorted array, 8 bytes a
//! number; prefixes likewise, one sorted array per length. A lookup is a binary search (~23
//! steps for ten million) plus one per prefix length in use.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

/// The longest E.164 number, in digits.
const MAX_DIGITS: usize = 15;
/// How much of a file is read at a time.
const READ_BUFFER: usize = 1 << 20;

/// One file's numbers.
#[derive(Debug, Default)]
struct DncList {
    /// The file's name (without its directory), to name the list in refusals and logs.
    name: String,
    /// Whole numbers, sorted, without duplicates.
    numbers: Vec<u64>,
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
        if self.numbers.binary_search(&value).is_ok() {
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
