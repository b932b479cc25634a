//! QEMU without root: each sandbox's QEMU runs as a user and group of its own (ids from
//! [`VM_ID_BASE`], one per live sandbox directory), with no other group (under KVM,
//! `/dev/kvm`'s group). It can reach only what is handed to it: the sandbox directory is
//! `root:<its gid>` 0710 (it may pass through, not list or change), the two vhost-user
//! sockets it connects to are its own (0600), and it writes its QMP socket and console
//! log into `<sandbox>/vm/`, a directory of its own (0700). An escape from the VM lands
//! in a user that owns nothing else on the host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::hypervisor::qemu::{Accel, VmUser};

/// The first uid and gid given to a sandbox's QEMU.
pub const VM_ID_BASE: u32 = 2_000_000_000;
/// How many ids there are to give.
const VM_ID_RANGE: u32 = 1_000_000;

/// The directory (in the sandbox directory) QEMU writes to: its QMP socket, the console.
pub const VM_DIR: &str = "vm";

/// An identity for sandbox `key`'s QEMU under `accel`: a uid = gid derived from the key,
/// moved on past the ids other sandbox directories in `run_dir` hold. `None` where QEMU
/// must stay root (a KVM device only root may open).
pub fn vm_user(run_dir: &Path, key: &str, accel: Accel) -> Option<VmUser> {
    let groups = match accel {
        Accel::Tcg => Vec::new(),
        Accel::Kvm => {
            let meta = std::fs::metadata("/dev/kvm").ok()?;
            if meta.permissions().mode() & 0o060 != 0o060 || meta.gid() == 0 {
                log::warn!("/dev/kvm is root's alone: QEMU stays root");
                return None;
            }
            vec![meta.gid()]
        }
    };
    let used: Vec<u32> = std::fs::read_dir(run_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name() != key)
                .filter_map(|e| e.metadata().ok().map(|m| m.gid()))
                .filter(|g| *g >= VM_ID_BASE)
                .collect()
        })
        .unwrap_or_default();
    let mut offset = (super::fnv1a(key) % u64::from(VM_ID_RANGE)) as u32;
    while used.contains(&(VM_ID_BASE + offset)) {
        offset = (offset + 1) % VM_ID_RANGE;
    }
    let id = VM_ID_BASE + offset;
    Some(VmUser {
        uid: id,
        gid: id,
        groups,
    })
}

/// Opens sandbox directory `dir` to `user`'s QEMU (see the module doc) and makes its
/// `vm/` directory; with no user, `vm/` is root's.
pub fn prepare(dir: &Path, user: Option<&VmUser>) -> std::io::Result<()> {
    let vm = dir.join(VM_DIR);
    super::create_private_dir(&vm)?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(0), Some(u.gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))?;
        std::os::unix::fs::chown(&vm, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// Gives socket `path` (in the root-owned sandbox directory) to `user`, mode 0600.
pub fn hand_over(path: &Path, user: &VmUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_not_shared_with_another_sandbox() {
        let tmp = tempfile::tempdir().unwrap();
        let a = vm_user(tmp.path(), "pod-a", Accel::Tcg).unwrap();
        assert_eq!(a, vm_user(tmp.path(), "pod-a", Accel::Tcg).unwrap());
        assert!(a.uid >= VM_ID_BASE && a.uid == a.gid && a.groups.is_empty());
        // Another sandbox already holds pod-a's id: pod-a moves on.
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::chown(&other, None, Some(a.gid)).unwrap();
        let moved = vm_user(tmp.path(), "pod-a", Accel::Tcg).unwrap();
        assert_eq!(moved.uid, a.uid + 1);
        // Its own directory does not count.
        let own = tmp.path().join("pod-b");
        let b = vm_user(tmp.path(), "pod-b", Accel::Tcg).unwrap();
        std::fs::create_dir(&own).unwrap();
        prepare(&own, Some(&b)).unwrap();
        assert_eq!(vm_user(tmp.path(), "pod-b", Accel::Tcg).unwrap(), b);
        let meta = std::fs::metadata(&own).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, b.gid, 0o710)
        );
        let vm = std::fs::metadata(own.join(VM_DIR)).unwrap();
        assert_eq!((vm.uid(), vm.mode() & 0o777), (b.uid, 0o700));
    }
}
