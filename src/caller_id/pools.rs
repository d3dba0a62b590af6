//! `--caller-ids FILE`: which numbers each agent may present. One line per agent,
//! `AGENT_ID NUMBER [NUMBER…]` (E.164; the first is the agent's default), or `*` for every agent
//! without a line of its own; `#` starts a comment.

use std::{collections::HashMap, path::Path};

use phonenumber::Mode;

use super::Pool;

/// One reading of the file.
#[derive(Debug, Default)]
pub struct Pools {
    /// By agent id: its numbers, the default first.
    by_agent: HashMap<String, Pool>,
    /// The `*` line: the numbers of agents without a line.
    everyone: Option<Pool>,
}

impl Pools {
    /// Reads and parses the file; the error names the path and the line at fault.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read caller IDs file {}: {e}", path.display()))?;
        parse(path, &text)
    }

    /// The agent's numbers: its own line, else the `*` line.
    pub fn of(&self, agent_id: &str) -> Option<Pool> {
        self.by_agent
            .get(agent_id)
            .or(self.everyone.as_ref())
            .cloned()
    }

    /// How many lines (agents, and `*`) it holds, for log lines.
    pub fn entries(&self) -> usize {
        self.by_agent.len() + usize::from(self.everyone.is_some())
    }
}

/// Parses the file's text; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Pools, String> {
    let mut pools = Pools::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |what: String| format!("{}:{}: {what}", path.display(), n + 1);
        let mut words = line.split_whitespace();
        let agent = words.next().unwrap_or_default();
        let mut numbers: Vec<String> = Vec::new();
        for word in words {
            let number = e164(word).ok_or_else(|| {
                at(format!(
                    "{word:?} is not a valid E.164 number (`+`, country code and number, e.g. \
                     +12025550100)"
                ))
            })?;
            if numbers.contains(&number) {
                return Err(at(format!("{word:?} is listed twice")));
            }
            numbers.push(number);
        }
        if numbers.is_empty() {
            return Err(at(
                "expected `AGENT_ID NUMBER [NUMBER…]` (or `* NUMBER…`)".to_owned()
            ));
        }
        let pool = Pool::from(numbers);
        let twice = if agent == "*" {
            pools.everyone.replace(pool).is_some()
        } else {
            pools.by_agent.insert(agent.to_owned(), pool).is_some()
        };
        if twice {
            return Err(at(format!("agent {agent:?} is listed twice")));
        }
    }
    Ok(pools)
}

/// `word` as E.164 if it is a valid international number (`+` first), per libphonenumber.
fn e164(word: &str) -> Option<String> {
    if !word.starts_with('+') || !word[1..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parsed = phonenumber::parse(None, word).ok()?;
    phonenumber::is_valid(&parsed).then(|| parsed.format().mode(Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_the_star_line() {
        let pools = parse(
            Path::new("ids"),
            "# sales\nann +12125550100 +13105550100 # NY, LA\n\n* +18005550100\n",
        )
        .expect("a good file");
        assert_eq!(pools.entries(), 2);
        assert_eq!(
            pools.of("ann").as_deref(),
            Some(&["+12125550100".to_owned(), "+13105550100".to_owned()][..])
        );
        assert_eq!(
            pools.of("bob").as_deref(),
            Some(&["+18005550100".to_owned()][..])
        );
        let without_star = parse(Path::new("ids"), "ann +12125550100\n").expect("good");
        assert!(without_star.of("bob").is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_their_place() {
        for (text, words) in [
            ("ann\n", "ids:1: expected `AGENT_ID NUMBER"),
            (
                "ann +12125550100\nbob 2125550100\n",
                "ids:2: \"2125550100\" is not a valid E.164",
            ),
            ("ann +1212\n", "ids:1: \"+1212\" is not a valid"),
            ("ann +1-212-555-0100\n", "is not a valid"),
            (
                "ann +12125550100\nann +13105550100\n",
                "ids:2: agent \"ann\" is listed twice",
            ),
            (
                "* +12125550100\n* +13105550100\n",
                "ids:2: agent \"*\" is listed twice",
            ),
            (
                "ann +12125550100 +12125550100\n",
                "ids:1: \"+12125550100\" is listed twice",
            ),
        ] {
            let err = parse(Path::new("ids"), text).err().unwrap_or_default();
            assert!(
                err.starts_with(words) || err.contains(words),
                "{text:?}: {err}"
            );
        }
    }
}
