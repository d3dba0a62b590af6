//! Who is calling, as each leg's INVITE says it: the customer sees the call's caller ID (From
//! user and P-Asserted-Identity, with `--sip-caller-name`), the agent's phone sees the customer
//! (the CRM record's display name, else the number, and the number as the From user), and both
//! legs name the interaction (`X-Calldesk-Interaction-Id`) and, with `--sip-send-uui`, the CRM
//! record (`User-to-User`, RFC 7433). With `--sip-agent-auto-answer` the agent's INVITE asks the
//! phone to answer by itself.
//!
//! Everything here may come from what an agent or a CRM typed (a display name, an object's id),
//! so nothing reaches a header unescaped: display names become RFC 3261 §25.1 quoted-string
//! content, cut to [`MAX_DISPLAY_NAME`] characters; the UUI is hex.

use rsipstack::sip::Header;

use crate::domain::AssociatedObject;
use crate::telephony::Dial;

/// The longest display name sent, in characters: desk phones show 20 to 40, and a header
/// stays small whatever the CRM holds.
pub(super) const MAX_DISPLAY_NAME: usize = 64;

/// The interaction's id on both legs, for the PBX's logs and screen pop.
pub(super) const INTERACTION_ID_HEADER: &str = "X-Calldesk-Interaction-Id";

/// What one leg's INVITE carries about who is calling, beyond its From URI.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Presentation {
    /// The From display name: quoted-string content, already escaped.
    pub display_name: Option<String>,
    /// Headers added to the INVITE.
    pub headers: Vec<Header>,
}

/// The switch's settings that shape the presentation.
#[derive(Debug, Clone, Default)]
pub(super) struct PresentationConfig {
    /// `--sip-caller-name`: the caller ID's display name toward the customer.
    pub caller_name: Option<String>,
    /// `--sip-agent-auto-answer`.
    pub agent_auto_answer: bool,
    /// `--sip-send-uui`.
    pub send_uui: bool,
}

/// The agent leg: the customer's name (the CRM record's display name, else the number);
/// auto-answer headers when asked; `call_info_uri` is calldesk's own address (`sip:host:port`).
pub(super) fn agent_leg(
    config: &PresentationConfig,
    dial: &Dial,
    call_info_uri: &str,
) -> Presentation {
    let name = dial
        .associated_object
        .as_ref()
        .map(|o| o.display_name.as_str())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(&dial.phone_number);
    let mut headers = common_headers(config, dial);
    if config.agent_auto_answer {
        // RFC 5373's predecessors as phones implement them: Call-Info's answer-after (Snom,
        // Yealink, Grandstream, Cisco, baresip) and Alert-Info's alert-autoanswer (Polycom,
        // Yealink).
        headers.push(Header::Other(
            "Call-Info".into(),
            format!("<{call_info_uri}>;answer-after=0"),
        ));
        headers.push(Header::Other(
            "Alert-Info".into(),
            "<http://127.0.0.1/>;info=alert-autoanswer;delay=0".into(),
        ));
    }
    Presentation {
        display_name: quoted_display_name(name),
        headers,
    }
}

/// The customer leg: the caller ID's name (`--sip-caller-name`) and, when there is a caller
/// ID, P-Asserted-Identity (RFC 3325) with it at `host` (the trunk's host[:port]).
pub(super) fn customer_leg(
    config: &PresentationConfig,
    dial: &Dial,
    caller_id: Option<&str>,
    host: &str,
) -> Presentation {
    let display_name = config.caller_name.as_deref().and_then(quoted_display_name);
    let mut headers = common_headers(config, dial);
    if let Some(caller_id) = caller_id {
        let uri = format!("<sip:{caller_id}@{host}>");
        let value = match &display_name {
            Some(name) => format!("\"{name}\" {uri}"),
            None => uri,
        };
        headers.push(Header::Other("P-Asserted-Identity".into(), value));
    }
    Presentation {
        display_name,
        headers,
    }
}

fn common_headers(config: &PresentationConfig, dial: &Dial) -> Vec<Header> {
    let mut headers = vec![Header::Other(
        INTERACTION_ID_HEADER.into(),
        dial.call_id.clone(),
    )];
    if config.send_uui {
        if let Some(uui) = dial.associated_object.as_ref().and_then(user_to_user) {
            headers.push(uui);
        }
    }
    headers
}

/// `name` as the content of an RFC 3261 §25.1 quoted-string: `"` and `\` as quoted-pairs;
/// CR, LF and every other control character (which a quoted-string may not hold, or which
/// would end the header) as a space; `<` and `>` (legal, but naive parsers take the first `<`
/// as the URI's start) as a space; runs of spaces as one; at most [`MAX_DISPLAY_NAME`]
/// characters; UTF-8 beyond ASCII kept (UTF8-NONASCII). None when nothing is left.
pub(super) fn quoted_display_name(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut kept = 0;
    let mut after_space = true;
    for c in name.chars() {
        let c = if c.is_control() || c.is_whitespace() || c == '<' || c == '>' {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if after_space {
                continue;
            }
            after_space = true;
        } else {
            after_space = false;
        }
        if kept == MAX_DISPLAY_NAME {
            break;
        }
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
        kept += 1;
    }
    // A `\` always goes out with the character it quotes: a cut never splits the pair.
    let trimmed = out.trim_end();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// `User-to-User` (RFC 7433) with the record's id and type as a JSON object, hex-encoded;
/// None when the record has neither.
pub(super) fn user_to_user(object: &AssociatedObject) -> Option<Header> {
    if object.id.is_empty() && object.object_type.is_empty() {
        return None;
    }
    let payload = serde_json::json!({ "id": object.id, "type": object.object_type }).to_string();
    let hex: String = payload.bytes().map(|b| format!("{b:02x}")).collect();
    Some(Header::Other(
        "User-to-User".into(),
        format!("{hex};encoding=hex"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dial(object: Option<AssociatedObject>) -> Dial {
        Dial {
            call_id: "0190-aa".into(),
            agent_id: "ann".into(),
            phone_number: "+12125550100".into(),
            caller_id: "+13105550100".into(),
            associated_object: object,
        }
    }

    fn contact(display_name: &str) -> AssociatedObject {
        AssociatedObject {
            id: "003XX".into(),
            object_type: "contact".into(),
            display_name: display_name.into(),
            ..Default::default()
        }
    }

    fn value<'a>(p: &'a Presentation, name: &str) -> Option<&'a str> {
        p.headers.iter().find_map(|h| match h {
            Header::Other(n, v) if n == name => Some(v.as_str()),
            _ => None,
        })
    }

    #[test]
    fn hostile_display_names_stay_inside_their_quotes() {
        let q = |s: &str| quoted_display_name(s);
        assert_eq!(q("Ann Lee").as_deref(), Some("Ann Lee"));
        assert_eq!(
            q(r#"Ann "Boss" Lee"#).as_deref(),
            Some(r#"Ann \"Boss\" Lee"#)
        );
        assert_eq!(q(r"C:\temp").as_deref(), Some(r"C:\\temp"));
        assert_eq!(
            q("Ann\r\nVia: SIP/2.0/UDP evil\r\n").as_deref(),
            Some("Ann Via: SIP/2.0/UDP evil")
        );
        assert_eq!(q("a<sip:x@evil>b").as_deref(), Some("a sip:x@evil b"));
        assert_eq!(q("Zoë Ærøskøbing 李").as_deref(), Some("Zoë Ærøskøbing 李"));
        assert_eq!(q("  \t\u{0}  "), None);
        let long = q(&"é".repeat(1000)).unwrap();
        assert_eq!(long.chars().count(), MAX_DISPLAY_NAME);
        // The cut counts characters as typed: a quote at the limit goes out whole, escaped.
        let cut = q(&format!("{}\"x", "a".repeat(MAX_DISPLAY_NAME - 1))).unwrap();
        assert_eq!(cut, format!("{}\\\"", "a".repeat(MAX_DISPLAY_NAME - 1)));
        let backslashes = q(&"\\".repeat(200)).unwrap();
        assert!(!backslashes.is_empty() && backslashes.len() % 2 == 0);
        // Every result is a quoted-string's content: no bare `"`, no CR/LF.
        for hostile in [
            "\"",
            "\\",
            "\"\\\"",
            "x\"\r\n;tag=1",
            "\u{7f}\u{85}\u{2028}",
        ] {
            let Some(out) = q(hostile) else { continue };
            assert!(!out.contains(['\r', '\n']));
            let mut chars = out.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    assert!(chars.next().is_some(), "{hostile:?} → {out:?}");
                } else {
                    assert_ne!(c, '"', "{hostile:?} → {out:?}");
                }
            }
        }
    }

    #[test]
    fn the_agent_sees_the_customer_and_may_be_asked_to_answer() {
        let plain = PresentationConfig::default();
        let p = agent_leg(
            &plain,
            &dial(Some(contact("Ann \"VIP\" Lee"))),
            "sip:127.0.0.1:5060",
        );
        assert_eq!(p.display_name.as_deref(), Some("Ann \\\"VIP\\\" Lee"));
        assert_eq!(value(&p, INTERACTION_ID_HEADER), Some("0190-aa"));
        assert_eq!(value(&p, "Call-Info"), None);
        assert_eq!(value(&p, "User-to-User"), None);
        // No record, or no name: the number.
        let p = agent_leg(&plain, &dial(None), "sip:127.0.0.1:5060");
        assert_eq!(p.display_name.as_deref(), Some("+12125550100"));

        let all = PresentationConfig {
            agent_auto_answer: true,
            send_uui: true,
            ..Default::default()
        };
        let p = agent_leg(&all, &dial(Some(contact(""))), "sip:127.0.0.1:5060");
        assert_eq!(p.display_name.as_deref(), Some("+12125550100"));
        assert_eq!(
            value(&p, "Call-Info"),
            Some("<sip:127.0.0.1:5060>;answer-after=0")
        );
        assert!(value(&p, "Alert-Info")
            .unwrap()
            .contains("info=alert-autoanswer"));
        // {"id":"003XX","type":"contact"}
        assert_eq!(
            value(&p, "User-to-User"),
            Some("7b226964223a223030335858222c2274797065223a22636f6e74616374227d;encoding=hex")
        );
    }

    #[test]
    fn the_customer_sees_the_caller_id() {
        let named = PresentationConfig {
            caller_name: Some("Acme \"Support\"".into()),
            ..Default::default()
        };
        let p = customer_leg(
            &named,
            &dial(None),
            Some("+13105550100"),
            "trunk.example:5070",
        );
        assert_eq!(p.display_name.as_deref(), Some("Acme \\\"Support\\\""));
        assert_eq!(
            value(&p, "P-Asserted-Identity"),
            Some("\"Acme \\\"Support\\\"\" <sip:+13105550100@trunk.example:5070>")
        );
        assert_eq!(value(&p, INTERACTION_ID_HEADER), Some("0190-aa"));
        // No caller ID: no identity to assert.
        let p = customer_leg(&PresentationConfig::default(), &dial(None), None, "t");
        assert_eq!(p.display_name, None);
        assert_eq!(value(&p, "P-Asserted-Identity"), None);
        assert_eq!(value(&p, "Privacy"), None);
    }
}
