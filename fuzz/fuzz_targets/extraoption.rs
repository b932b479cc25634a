//! The nydus `extraoption=` decoder ([`ExtraOption::decode`] and
//! [`ExtraOption::from_mount_options`]).
//!
//! The first byte picks what the rest is:
//! - 0: the JSON, base64-encoded here as the snapshotter does (so the fuzzer works on the
//!   JSON itself);
//! - 1: the option's value as it is (base64 and its errors);
//! - 2: a mount's options, one per line.
//!
//! Invariants: no panic; a decoded extraoption has its three required fields non-empty,
//! shows its config in neither `Debug` nor `Display` and survives a round trip; the
//! config never changes an error's message (no error quotes it); exactly one
//! `extraoption=` is accepted among a mount's options.

#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use lazyvm::rootfs::{ExtraOption, ExtraOptionError, FsVersion};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const KEY: &str = "extraoption=";

fn fs_version_name(v: FsVersion) -> &'static str {
    match v {
        FsVersion::V5 => "v5",
        FsVersion::V6 => "v6",
    }
}

/// What must hold of any successful decode.
fn check_decoded(e: &ExtraOption) {
    assert!(!e.source.is_empty());
    assert!(!e.config().is_empty());
    assert!(!e.snapshotdir.as_os_str().is_empty());

    // Debug and Display show exactly the other fields: the config only as its length.
    let debug = format!(
        "ExtraOption {{ source: {:?}, config: <{} bytes, not shown>, snapshotdir: {:?}, fs_version: {:?} }}",
        e.source,
        e.config().len(),
        e.snapshotdir,
        e.fs_version
    );
    assert_eq!(format!("{e:?}"), debug);
    let mut display = format!(
        "source={} snapshotdir={}",
        e.source,
        e.snapshotdir.display()
    );
    if let Some(v) = e.fs_version {
        display.push_str(" fs_version=");
        display.push_str(fs_version_name(v));
    }
    assert_eq!(format!("{e}"), display);

    // Round trip.
    let mut obj = serde_json::Map::new();
    obj.insert("source".into(), Value::String(e.source.clone()));
    obj.insert("config".into(), Value::String(e.config().to_owned()));
    obj.insert(
        "snapshotdir".into(),
        Value::String(
            e.snapshotdir
                .to_str()
                .expect("decoded from a JSON string")
                .to_owned(),
        ),
    );
    if let Some(v) = e.fs_version {
        obj.insert(
            "fs_version".into(),
            Value::String(fs_version_name(v).into()),
        );
    }
    let again = ExtraOption::decode(&STANDARD.encode(Value::Object(obj).to_string()))
        .expect("a decoded extraoption encodes to one that decodes");
    assert_eq!(&again, e);
}

fn check(result: &Result<ExtraOption, ExtraOptionError>) {
    match result {
        Ok(e) => check_decoded(e),
        Err(err) => {
            let _ = err.to_string();
        }
    }
}

/// Same outcome: equal values or equal error messages.
fn same(a: &Result<ExtraOption, ExtraOptionError>, b: &Result<ExtraOption, ExtraOptionError>) {
    match (a, b) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("different outcomes: {a:?} and {b:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let encoded = STANDARD.encode(rest);
            let decoded = ExtraOption::decode(&encoded);
            check(&decoded);
            let options = ["lowerdir=/a".to_owned(), format!("{KEY}{encoded}")];
            same(&decoded, &ExtraOption::from_mount_options(&options));

            // The config never shows in an error: another config gives the same message.
            if let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(rest) {
                if matches!(obj.get("config"), Some(Value::String(c)) if !c.is_empty()) {
                    let config = obj["config"].as_str().unwrap().to_owned();
                    obj.insert("config".into(), Value::String(format!("{config}-another")));
                    let other =
                        ExtraOption::decode(&STANDARD.encode(Value::Object(obj).to_string()));
                    match (&decoded, &other) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a.source, b.source);
                            assert_eq!(a.snapshotdir, b.snapshotdir);
                            assert_eq!(a.fs_version, b.fs_version);
                            assert_eq!(b.config(), format!("{config}-another"));
                        }
                        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                        _ => panic!("the config changed the outcome: {decoded:?} and {other:?}"),
                    }
                }
            }
        }
        1 => {
            let value = String::from_utf8_lossy(rest);
            let decoded = ExtraOption::decode(&value);
            check(&decoded);
            // Whitespace around the value does not matter.
            same(&decoded, &ExtraOption::decode(&format!(" {value}\n")));
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let options: Vec<&str> = text.split('\n').collect();
            let found: Vec<&str> = options.iter().filter_map(|o| o.strip_prefix(KEY)).collect();
            let result = ExtraOption::from_mount_options(&options);
            check(&result);
            match found.len() {
                0 => assert!(matches!(result, Err(ExtraOptionError::Missing))),
                1 => same(&result, &ExtraOption::decode(found[0])),
                n => assert!(matches!(result, Err(ExtraOptionError::Duplicate(k)) if k == n)),
            }
        }
    }
});
