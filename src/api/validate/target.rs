//! A transfer's, consultation's or conference's `target`: an E.164 number (through the trunk)
//! or `agent:<agent id>` (another agent's phone).

use tonic::Status;

use super::{bad_field, PhoneRules};
use crate::{api::agent, domain::TransferTarget};

const FIELD: &str = "target";
const PREFIX: &str = "agent:";

/// The target, checked; `caller` may not transfer to itself.
pub fn transfer_target(
    rules: &PhoneRules,
    value: &str,
    caller: &str,
) -> Result<TransferTarget, Status> {
    if value.is_empty() {
        return Err(bad_field(FIELD, "is required"));
    }
    if let Some(agent_id) = value.strip_prefix(PREFIX) {
        if !agent::is_valid_id(agent_id) {
            return Err(bad_field(
                FIELD,
                format!("agent:<id> needs an agent id of {}", agent::VALID_ID_RULE),
            ));
        }
        if agent_id == caller {
            return Err(bad_field(FIELD, "names the calling agent itself"));
        }
        return Ok(TransferTarget::Agent(agent_id.to_owned()));
    }
    if !value.trim_start().starts_with('+') {
        return Err(bad_field(
            FIELD,
            "must be an international number (+ and country code) or agent:<agent id>",
        ));
    }
    match rules.normalize(value) {
        Ok(number) => Ok(TransferTarget::Number(number)),
        // The number's own rules said why: said again of this field.
        Err(status) => {
            let why = status.message();
            Err(bad_field(
                FIELD,
                why.strip_prefix("phone_number: ").unwrap_or(why),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str) -> Result<TransferTarget, String> {
        transfer_target(&PhoneRules::default(), value, "me").map_err(|s| s.message().to_owned())
    }

    #[test]
    fn numbers_are_normalized_and_agents_named() {
        assert_eq!(
            check("+1 (202) 555-0100"),
            Ok(TransferTarget::Number("+12025550100".into()))
        );
        assert_eq!(check("agent:bob"), Ok(TransferTarget::Agent("bob".into())));
    }

    #[test]
    fn anything_else_is_refused_naming_the_field() {
        for (value, why) in [
            ("", "target: is required"),
            ("agent:", "target: agent:<id> needs an agent id"),
            ("agent:a b", "target: agent:<id> needs an agent id"),
            ("agent:me", "target: names the calling agent itself"),
            ("2025550100", "target: must be an international number"),
            ("1234", "target: must be an international number"),
            ("+1202555010x", "target: must be a phone number"),
            ("+999", "target: is not a valid phone number"),
        ] {
            let got = check(value).unwrap_err();
            assert!(got.starts_with(why), "{value:?}: {got}");
        }
    }
}
