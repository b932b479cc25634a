//! The shim's adaptation of a host OCI spec for the guest ([`adapt`]), fed with any JSON
//! that parses as a spec.
//!
//! Invariants: no panic; hooks are gone; mounts keep their order, destinations, types
//! and options; a mount's source changes only to the pod's shm (a bind at `/dev/shm`) or
//! to `<guest mounts dir>/<shared_name>` of the next returned bind, whose host path is
//! the mount's old (absolute) source; so every rewritten source lies directly under the
//! guest mounts dir; `shared_name`s are unique, not empty, not `.` or `..`, and hold no
//! `/` (nor a NUL unless the host path has one).

#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use lazyvm::sandbox::spec::{adapt, GUEST_POD_SHM};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;

const GUEST_MOUNTS_DIR: &str = "/run/lazyvm/shared/containers/c1/mounts";

fuzz_target!(|data: &[u8]| {
    let Ok(mut spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let before = spec.mounts().clone();
    let binds = adapt(&mut spec, GUEST_MOUNTS_DIR);
    assert!(spec.hooks().is_none());

    let mut names = HashSet::new();
    for b in &binds {
        let n = b.shared_name.as_str();
        assert!(
            !n.is_empty() && n != "." && n != ".." && !n.contains('/'),
            "{n:?}"
        );
        // A NUL can only come from the host path, which the host bind then refuses
        // (before the guest sees the spec).
        if n.contains('\0') {
            assert!(b.host.as_os_str().as_encoded_bytes().contains(&0), "{n:?}");
        }
        assert!(names.insert(n), "shared_name {n:?} twice");
        assert!(b.host.is_absolute(), "{:?}", b.host);
    }

    let Some(before) = before else {
        assert!(spec.mounts().is_none());
        assert!(binds.is_empty());
        return;
    };
    let after = spec.mounts().as_ref().expect("mounts stay");
    assert_eq!(before.len(), after.len());
    let mut next = binds.iter();
    for (old, new) in before.iter().zip(after) {
        assert_eq!(old.destination(), new.destination());
        assert_eq!(old.typ(), new.typ());
        assert_eq!(old.options(), new.options());
        if old.source() == new.source() {
            continue;
        }
        let src = new.source().as_deref().expect("a rewritten source");
        if src == Path::new(GUEST_POD_SHM) {
            assert_eq!(old.destination(), Path::new("/dev/shm"));
            continue;
        }
        let b = next
            .next()
            .unwrap_or_else(|| panic!("{src:?} rewritten without a bind"));
        assert_eq!(old.source().as_deref(), Some(b.host.as_path()));
        assert_eq!(
            src.to_str(),
            Some(format!("{GUEST_MOUNTS_DIR}/{}", b.shared_name).as_str())
        );
        // Lexically directly under the guest mounts dir: nothing climbs out.
        assert_eq!(src.parent(), Some(Path::new(GUEST_MOUNTS_DIR)), "{src:?}");
        assert!(
            src.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
            "{src:?}"
        );
        assert_eq!(
            src.file_name().and_then(|n| n.to_str()),
            Some(b.shared_name.as_str())
        );
    }
    // A bind whose mount kept its source (the same path under the guest mounts dir)
    // would be missed above: every bind must have been matched.
    let rest: Vec<_> = next.collect();
    assert!(rest.is_empty(), "binds without a rewritten mount: {rest:?}");
});
