//! Any text: loading a configuration never panics, and every diagnostic's
//! span lies inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::config::{self, KeyFileFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = config::load(text, std::path::Path::new(""), &|_| KeyFileFacts::Present { len: 32, mode: 0o600 });
    for d in &loaded.diagnostics {
        if let Some(s) = &d.span {
            assert!(s.start <= s.end && s.end <= text.len(), "span {s:?} outside {} bytes", text.len());
        }
    }
    let _ = tandem_core::diagnostic::render("fuzz.toml", text, &loaded.diagnostics);
});
