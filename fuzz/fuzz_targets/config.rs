//! Any bytes given to the config parser produce a config or an error, never a panic, and an error
//! always names a line and column inside the text.
#![no_main]

use std::path::Path;

use fulcrum::config::{Config, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(Error::Invalid { line, column, .. }) = Config::parse(Path::new("fuzz.toml"), text) {
        assert!(line >= 1 && column >= 1);
        assert!(line <= text.lines().count().max(1) + 1);
    }
});
