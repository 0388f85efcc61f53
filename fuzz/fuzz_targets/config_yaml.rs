//! The YAML configuration parser and validator: any text gives a config or a `ConfigError`,
//! never a panic, and an error always names where it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = baton::config::Config::parse(text, "fuzz") {
        assert!(!e.message.is_empty());
    }
});
