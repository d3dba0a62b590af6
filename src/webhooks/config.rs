//! The `--webhooks` file: one subscription per line.
//!
//! ```text
//! # NAME     agents=…   url=…   secret=… | secret-file=…   [events=…]
//! crm        agents=*   url=https://crm.example.com/calldesk   secret-file=/run/secrets/crm
//! wallboard  agents=alice,bob   url=https://wall.example.com/hook   secret=whsec_…   events=WRAP_UP,COMPLETED
//! ```
//!
//! `#` starts a comment. NAME (letters, digits, `.`, `_`, `-`; at most 64) names the
//! subscription in the store, logs and metrics: its cursors follow the name, so a changed URL
//! receives what the old one had not. `agents` is `*` or agent ids separated by commas. The
//! secret is `whsec_` and base64 (Standard Webhooks), given in the line or as the first line
//! of a file, which is read again with the file on SIGHUP. `events` keeps the events whose
//! `state` is one of the states named (`DELIVERY_PENDING`, `DELIVERED`, `HOLD`, `WRAP_UP`,
//! `COMPLETED`); without it, every event is sent.
//!
//! What depends on the server's flags ([`Policy`]: plain http, internal addresses) is checked
//! by [`Subscriptions::check`] after the file is read.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{signing::Secret, ssrf};
use crate::{proto::InteractionState, store::webhooks::Agents};

/// Subscriptions a file may hold at most.
const MAX_SUBSCRIPTIONS: usize = 256;
/// The longest subscription name.
const MAX_NAME: usize = 64;
/// The longest agent id (as the API allows).
const MAX_AGENT_ID: usize = 128;

/// One reading of the `--webhooks` file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subscriptions {
    /// The file, for errors that name a line.
    pub path: PathBuf,
    pub subscriptions: Vec<Arc<Subscription>>,
}

/// One subscription: where which events go, signed with what.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Its name: the key of its cursors, and its label in logs and metrics.
    pub name: Arc<str>,
    /// Whose interactions it delivers.
    pub agents: Agents,
    /// Where each event is POSTed.
    pub url: http::Uri,
    /// What signs them.
    pub secret: Secret,
    /// The states whose events are sent (the others are skipped); None: all.
    pub events: Option<Vec<InteractionState>>,
    /// Its line in the file, for errors.
    pub line: usize,
}

/// What the flags allow beyond the file's own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// `--webhook-allow-private`: internal addresses (loopback, private, link-local, …).
    pub allow_private: bool,
    /// `--webhook-allow-http`: plain http to any host, not only to loopback.
    pub allow_http: bool,
}

impl Subscription {
    /// Whether an event entering `state` is sent.
    pub fn wants(&self, state: i32) -> bool {
        self.events
            .as_ref()
            .is_none_or(|states| states.iter().any(|s| *s as i32 == state))
    }

    /// Its URL's scheme, host and port, for logs: the path and query may hold a secret of the
    /// receiver's.
    pub fn origin(&self) -> String {
        let scheme = self.url.scheme_str().unwrap_or("https");
        match self.url.authority() {
            Some(authority) => format!("{scheme}://{authority}"),
            None => format!("{scheme}://"),
        }
    }
}

impl Subscriptions {
    /// Reads and parses the file, and the secret files it names.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read webhooks file {}: {e}", path.display()))?;
        parse(path, &text, &|secret_file: &Path| {
            let text = std::fs::read_to_string(secret_file)
                .map_err(|e| format!("cannot read secret file {}: {e}", secret_file.display()))?;
            Ok(text.lines().next().unwrap_or_default().trim().to_owned())
        })
    }

    /// What the flags forbid: plain http to a host that is not loopback, an internal address
    /// in a URL. (A name is checked when it is resolved, at each connection.)
    pub fn check(&self, policy: &Policy) -> Result<(), String> {
        for sub in &self.subscriptions {
            let at = |why: String| format!("{}:{}: {why}", self.path.display(), sub.line);
            let host = sub.url.host().unwrap_or_default();
            let address = ssrf::host_address(host);
            if sub.url.scheme_str() == Some("http")
                && !policy.allow_http
                && !(host == "localhost" || address.is_some_and(|ip| ip.is_loopback()))
            {
                return Err(at(format!(
                    "{} is plain http to a host that is not loopback: use https, or allow it \
                     with --webhook-allow-http",
                    sub.origin()
                )));
            }
            if let Some((ip, why)) = address.and_then(|ip| Some((ip, ssrf::forbidden(ip)?))) {
                if !policy.allow_private {
                    return Err(at(format!(
                        "{ip} is a {why} address: callbacks go to public addresses only, \
                         unless --webhook-allow-private"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Parses the file's text; `read_secret` reads a `secret-file`.
pub fn parse(
    path: &Path,
    text: &str,
    read_secret: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<Subscriptions, String> {
    let mut subscriptions: Vec<Arc<Subscription>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = |why: String| format!("{}:{}: {why}", path.display(), n + 1);
        let sub = parse_line(line, n + 1, read_secret).map_err(at)?;
        if subscriptions.iter().any(|s| s.name == sub.name) {
            return Err(at(format!("subscription {:?} is listed twice", sub.name)));
        }
        if subscriptions.len() == MAX_SUBSCRIPTIONS {
            return Err(at(format!("more than {MAX_SUBSCRIPTIONS} subscriptions")));
        }
        subscriptions.push(Arc::new(sub));
    }
    Ok(Subscriptions {
        path: path.to_owned(),
        subscriptions,
    })
}

fn parse_line(
    line: &str,
    number: usize,
    read_secret: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<Subscription, String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default();
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || name.contains('=')
    {
        return Err(format!(
            "expected `NAME agents=… url=… secret=…|secret-file=… [events=…]`; NAME is 1 to \
             {MAX_NAME} letters, digits, `.`, `_` or `-`"
        ));
    }
    let (mut agents, mut url, mut secret, mut events) = (None, None, None, None);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!("{word:?} is not key=value"));
        };
        let slot = match key {
            "agents" => &mut agents,
            "url" => &mut url,
            "secret" | "secret-file" => &mut secret,
            "events" => &mut events,
            _ => {
                return Err(format!(
                    "unknown key {key:?}: expected agents, url, secret, secret-file or events"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("{key} is given twice (or secret with secret-file)"));
        }
        *slot = Some((key, value));
    }
    let missing = |key: &str| format!("subscription {name:?} has no {key}=");
    let agents = parse_agents(agents.ok_or_else(|| missing("agents"))?.1)?;
    let url = parse_url(url.ok_or_else(|| missing("url"))?.1)?;
    let secret = match secret.ok_or_else(|| missing("secret (or secret-file)"))? {
        ("secret", value) => Secret::parse(value)?,
        (_, file) => Secret::parse(&read_secret(Path::new(file))?)
            .map_err(|e| format!("secret file {file}: {e}"))?,
    };
    let events = events.map(|(_, value)| parse_events(value)).transpose()?;
    Ok(Subscription {
        name: name.into(),
        agents,
        url,
        secret,
        events,
        line: number,
    })
}

fn parse_agents(value: &str) -> Result<Agents, String> {
    if value == "*" {
        return Ok(Agents::All);
    }
    let mut ids = Vec::new();
    for id in value.split(',') {
        if id.is_empty()
            || id.len() > MAX_AGENT_ID
            || id == "*"
            || !id.bytes().all(|b| (0x21..=0x7E).contains(&b))
        {
            return Err(format!(
                "agents={value:?}: expected `*`, or agent ids (1 to {MAX_AGENT_ID} printable \
                 characters, no spaces) separated by commas"
            ));
        }
        ids.push(id.to_owned());
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Agents::Only(ids))
}

fn parse_url(value: &str) -> Result<http::Uri, String> {
    let bad = |why: &str| format!("url={value:?}: {why}");
    let url: http::Uri = value
        .parse()
        .map_err(|_| bad("not a URL (https://host[:port]/path)"))?;
    if !matches!(url.scheme_str(), Some("https" | "http")) {
        return Err(bad("the scheme must be https (or http)"));
    }
    let Some(authority) = url.authority() else {
        return Err(bad("no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "user and password in the URL are not supported (they would be logged and sent \
             in the clear to anyone on the way); the signature authenticates calldesk",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    Ok(url)
}

fn parse_events(value: &str) -> Result<Vec<InteractionState>, String> {
    let mut states = Vec::new();
    for name in value.split(',') {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("INTERACTION_STATE_") {
            upper
        } else {
            format!("INTERACTION_STATE_{upper}")
        };
        match InteractionState::from_str_name(&full) {
            Some(InteractionState::Unspecified) | None => {
                return Err(format!(
                    "events={value:?}: {name:?} is not a state; expected some of \
                     DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP, COMPLETED"
                ))
            }
            Some(state) if !states.contains(&state) => states.push(state),
            Some(_) => {}
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn read(text: &str) -> Result<Subscriptions, String> {
        parse(Path::new("hooks"), text, &|file: &Path| {
            if file == Path::new("/run/crm.secret") {
                Ok(SECRET.to_owned())
            } else {
                Err(format!("cannot read secret file {}", file.display()))
            }
        })
    }

    #[test]
    fn lines_give_subscriptions() {
        let subs = read(&format!(
            "# the CRM\ncrm agents=* url=https://crm.example.com/calldesk?k=1 \
             secret-file=/run/crm.secret\n\n\
             wall agents=bob,alice,bob url=http://127.0.0.1:8080/ secret={SECRET} \
             events=wrap_up,INTERACTION_STATE_COMPLETED # the wallboard\n"
        ))
        .expect("parses");
        let [crm, wall] = &subs.subscriptions[..] else {
            panic!("two subscriptions: {subs:?}");
        };
        assert_eq!(&*crm.name, "crm");
        assert_eq!(crm.agents, Agents::All);
        assert_eq!(crm.origin(), "https://crm.example.com");
        assert!(crm.wants(InteractionState::Hold as i32));
        assert_eq!(
            wall.agents,
            Agents::Only(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(wall.line, 4);
        assert!(wall.wants(InteractionState::WrapUp as i32));
        assert!(wall.wants(InteractionState::Completed as i32));
        assert!(!wall.wants(InteractionState::Delivered as i32));
        assert_eq!(crm.secret, wall.secret);
    }

    #[test]
    fn bad_lines_are_refused_with_their_place_and_never_show_a_secret() {
        let cases = [
            (
                "crm url=https://a.example/ secret=S",
                "hooks:1: subscription \"crm\" has no agents=",
            ),
            ("crm agents=* secret=S", "has no url="),
            ("crm agents=* url=https://a.example/", "has no secret"),
            (
                "crm agents=* url=ftp://a.example/ secret=S",
                "scheme must be https",
            ),
            (
                "crm agents=* url=https://u:p@a.example/ secret=S",
                "user and password",
            ),
            (
                "crm agents=a,,b url=https://a.example/ secret=S",
                "agent ids",
            ),
            (
                "crm agents=* url=https://a.example/ secret=S color=red",
                "unknown key \"color\"",
            ),
            (
                "crm agents=* url=https://a.example/ secret=S secret-file=/x",
                "given twice",
            ),
            (
                "cr/m agents=* url=https://a.example/ secret=S",
                "NAME is 1 to 64",
            ),
            (
                "crm agents=* url=https://a.example/ secret=hunter2hunter2",
                "whsec_",
            ),
            (
                "crm agents=* url=https://a.example/ secret-file=/nope",
                "cannot read secret file /nope",
            ),
            (
                "crm agents=* url=https://a.example/ secret=S events=RINGING",
                "not a state",
            ),
        ];
        for (line, expected) in cases {
            let line = line.replace("secret=S", &format!("secret={SECRET}"));
            let err = read(&line).expect_err(&line);
            assert!(err.contains(expected), "{line}: {err}");
            assert!(
                !err.contains("MfKQ9r8G") && !err.contains("hunter2"),
                "{err}"
            );
        }
        let twice = format!(
            "a agents=* url=https://a.example/ secret={SECRET}\na agents=* url=https://b.example/ secret={SECRET}\n"
        );
        assert!(read(&twice).expect_err("twice").starts_with("hooks:2: "));
    }

    #[test]
    fn the_flags_decide_on_plain_http_and_internal_addresses() {
        let sub =
            |url: &str| read(&format!("s agents=* url={url} secret={SECRET}")).expect("parses");
        let strict = Policy::default();
        let private = Policy {
            allow_private: true,
            allow_http: false,
        };
        assert!(sub("https://crm.example.com/").check(&strict).is_ok());
        // Plain http: only to loopback, and loopback only with --webhook-allow-private.
        let err = sub("http://crm.example.com/")
            .check(&private)
            .expect_err("http");
        assert!(err.contains("--webhook-allow-http"), "{err}");
        assert!(sub("http://crm.example.com/")
            .check(&Policy {
                allow_private: false,
                allow_http: true
            })
            .is_ok());
        let err = sub("http://127.0.0.1:8080/")
            .check(&strict)
            .expect_err("loopback");
        assert!(err.contains("loopback address") && err.contains("--webhook-allow-private"));
        assert!(sub("http://127.0.0.1:8080/").check(&private).is_ok());
        assert!(sub("http://[::1]:8080/").check(&private).is_ok());
        let err = sub("https://169.254.169.254/")
            .check(&strict)
            .expect_err("metadata");
        assert!(err.contains("link-local"), "{err}");
        // A name is checked when it is resolved.
        assert!(sub("https://localhost/").check(&strict).is_ok());
    }
}
