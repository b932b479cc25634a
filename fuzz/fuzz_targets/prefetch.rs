//! The nydus prefetch annotation parser ([`parse_prefetch_files`], behind the shim's
//! `prefetch_files`).
//!
//! Invariants: no panic; every accepted entry is an absolute path; a JSON array of
//! strings is taken as it is, anything else as entries separated by commas or newlines,
//! each trimmed and none empty; a refusal names a non-absolute entry.

#![no_main]

use lazyvm::rootfs::parse_prefetch_files;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::from_str::<Vec<String>>(value).ok();
    match parse_prefetch_files(value) {
        Ok(files) => {
            assert!(files.iter().all(|f| f.starts_with('/')), "{files:?}");
            match json {
                Some(list) => assert_eq!(files, list),
                None => {
                    for f in &files {
                        assert!(!f.is_empty());
                        assert_eq!(f.trim(), f);
                        assert!(!f.contains([',', '\n']), "{f:?}");
                    }
                }
            }
        }
        Err(msg) => {
            let bad = msg
                .strip_suffix(" is not an absolute path")
                .expect("the one error message");
            let entries: Vec<String> = match json {
                Some(list) => list,
                None => value
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            };
            assert!(
                entries
                    .iter()
                    .any(|e| !e.starts_with('/') && format!("{e:?}") == bad),
                "{msg} names no relative entry of {entries:?}"
            );
        }
    }
});
