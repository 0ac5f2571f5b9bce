//! palisade.toml as palisaded and `palisadectl policy explain --config`
//! read it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = palisade_policy::from_toml::<Config>("fuzz.toml", text) {
        let _ = config.conflicts();
        let _ = config.strict_prefixes();
    }
});
