//! Policy files as palisaded reads them from a request or policies.d: the
//! first byte picks TOML or YAML, the rest is the text. Nothing may panic,
//! overflow the stack or grow without bound; converting what was read back
//! to text must work too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::{policies_from_text, policies_to_yaml, policy_to_toml};

fuzz_target!(|data: &[u8]| {
    let Some((&format, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let name = if format % 2 == 0 {
        "fuzz.toml"
    } else {
        "fuzz.yaml"
    };
    if let Ok(policies) = policies_from_text(name, text) {
        let _ = policies_to_yaml(&policies);
        for policy in &policies {
            let _ = policy_to_toml(policy);
        }
    }
});
