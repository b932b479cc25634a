//! The RAFS mountpoint check ([`rafs_mountpoint`], [`validate_rafs`], [`validate`]).
//!
//! Invariants: no panic; an accepted container id gives exactly `/rafs/<id>/lowerdir`,
//! whose components are `/`, `rafs`, the id and `lowerdir` (so the id is never `.` or
//! `..`, is not empty and holds no `/` or NUL), and which `validate_rafs` accepts; a
//! mountpoint `validate_rafs` accepts is the one of its id; only `/containers` is a
//! passthrough mountpoint.

#![no_main]

use std::path::{Component, Path};

use lazyvm::nydusd::mountpoint::{rafs_mountpoint, validate, validate_rafs, MountpointError};
use lazyvm::nydusd::FsType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match rafs_mountpoint(s) {
        Ok(mp) => {
            assert_eq!(mp, format!("/rafs/{s}/lowerdir"));
            assert!(!s.is_empty() && s != "." && s != "..", "{s:?}");
            assert!(!s.contains('/') && !s.contains('\0'), "{s:?}");
            let components: Vec<Component> = Path::new(&mp).components().collect();
            assert_eq!(
                components,
                [
                    Component::RootDir,
                    Component::Normal("rafs".as_ref()),
                    Component::Normal(s.as_ref()),
                    Component::Normal("lowerdir".as_ref()),
                ],
                "{mp:?}"
            );
            assert_eq!(validate_rafs(&mp), Ok(()));
            assert_eq!(validate(&mp, FsType::Rafs), Ok(()));
        }
        Err(e) => assert_eq!(e, MountpointError::ContainerId(s.to_owned())),
    }
    // The input as a mountpoint.
    match validate_rafs(s) {
        Ok(()) => {
            let id = s
                .strip_prefix("/rafs/")
                .and_then(|r| r.strip_suffix("/lowerdir"))
                .expect("an accepted mountpoint has the shape");
            assert_eq!(rafs_mountpoint(id).as_deref(), Ok(s));
        }
        Err(e) => assert_eq!(e, MountpointError::RafsShape(s.to_owned())),
    }
    assert_eq!(validate(s, FsType::Rafs), validate_rafs(s));
    assert_eq!(
        validate(s, FsType::Passthrough).is_ok(),
        s == "/containers",
        "{s:?}"
    );
});
