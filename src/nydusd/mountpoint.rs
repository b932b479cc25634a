//! Validation of the mountpoints lazyvm asks nydusd to mount filesystems at.
//!
//! Inside nydusd's virtio-fs tree, the shared directory lives at `/containers` and each
//! nydus container's RAFS image at `/rafs/<container-id>/lowerdir`. The check is anchored
//! and the id follows lazyvm's one id rule ([`lazyvm_proto::valid_id`]: a plain file name,
//! never `.` or `..`), so no request can climb out of `/rafs/` or name a nested path.

use super::client::FsType;

/// Where the sandbox's shared directory (`passthrough_fs`) is mounted in nydusd's tree.
pub const PASSTHROUGH_MOUNTPOINT: &str = "/containers";

const RAFS_PREFIX: &str = "/rafs/";
const RAFS_SUFFIX: &str = "/lowerdir";

/// Why a mountpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountpointError {
    /// A passthrough mount asked for somewhere other than `/containers`.
    #[error("passthrough_fs mountpoint {0:?} is invalid: it must be {PASSTHROUGH_MOUNTPOINT:?}")]
    Passthrough(String),
    /// A RAFS mountpoint that is not `/rafs/<id>/lowerdir`.
    #[error("rafs mountpoint {0:?} is invalid: it must be /rafs/<container-id>/lowerdir")]
    RafsShape(String),
    /// A container id that cannot form a RAFS mountpoint.
    #[error("container id {0:?} cannot form a rafs mountpoint: it must match [A-Za-z0-9][A-Za-z0-9_.+-]* (at most 128 bytes)")]
    ContainerId(String),
}

/// Checks that `mountpoint` is a valid place for a filesystem of type `fs_type`.
pub fn validate(mountpoint: &str, fs_type: FsType) -> Result<(), MountpointError> {
    match fs_type {
        FsType::Passthrough if mountpoint == PASSTHROUGH_MOUNTPOINT => Ok(()),
        FsType::Passthrough => Err(MountpointError::Passthrough(mountpoint.to_string())),
        FsType::Rafs => validate_rafs(mountpoint),
    }
}

/// Checks that `mountpoint` is exactly `/rafs/<id>/lowerdir` with a valid id.
pub fn validate_rafs(mountpoint: &str) -> Result<(), MountpointError> {
    let id = mountpoint
        .strip_prefix(RAFS_PREFIX)
        .and_then(|rest| rest.strip_suffix(RAFS_SUFFIX))
        .ok_or_else(|| MountpointError::RafsShape(mountpoint.to_string()))?;
    if valid_container_id(id) {
        Ok(())
    } else {
        Err(MountpointError::RafsShape(mountpoint.to_string()))
    }
}

/// The RAFS mountpoint of container `cid`: `/rafs/<cid>/lowerdir`.
pub fn rafs_mountpoint(cid: &str) -> Result<String, MountpointError> {
    if !valid_container_id(cid) {
        return Err(MountpointError::ContainerId(cid.to_string()));
    }
    Ok(format!("{RAFS_PREFIX}{cid}{RAFS_SUFFIX}"))
}

fn valid_container_id(id: &str) -> bool {
    lazyvm_proto::valid_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_rafs_mountpoints() {
        for mp in [
            "/rafs/c1/lowerdir",
            "/rafs/abc_DEF.1+2-3/lowerdir",
            "/rafs/a..b/lowerdir",
        ] {
            assert_eq!(validate(mp, FsType::Rafs), Ok(()), "{mp}");
        }
    }

    #[test]
    fn refuses_traversal_and_junk() {
        for mp in [
            "/rafs/../lowerdir",
            "/rafs/./lowerdir",
            "/rafs/.../lowerdir",
            "/rafs/-x/lowerdir",
            "/rafs//lowerdir",
            "/rafs/lowerdir",
            "/rafs/a/b/lowerdir",
            "/rafs/../../etc/lowerdir",
            "/rafs/c1/lowerdir/",
            "/rafs/c1/lowerdir/..",
            "/rafs/c1/lowerdirx",
            "x/rafs/c1/lowerdir",
            "/x/rafs/c1/lowerdir",
            "rafs/c1/lowerdir",
            "/rafs/c 1/lowerdir",
            "/rafs/c%2f1/lowerdir",
            "/rafs/c1\n/lowerdir",
            "/rafs/ç/lowerdir",
            "",
            "/",
            "/containers",
        ] {
            assert!(
                matches!(
                    validate(mp, FsType::Rafs),
                    Err(MountpointError::RafsShape(_))
                ),
                "{mp:?} was accepted"
            );
        }
    }

    #[test]
    fn passthrough_only_at_containers() {
        assert_eq!(validate("/containers", FsType::Passthrough), Ok(()));
        for mp in [
            "/containers/",
            "/containers/x",
            "/",
            "",
            "/rafs/c1/lowerdir",
        ] {
            assert!(validate(mp, FsType::Passthrough).is_err(), "{mp:?}");
        }
    }

    #[test]
    fn builds_rafs_mountpoint_from_container_id() {
        assert_eq!(rafs_mountpoint("c1").as_deref(), Ok("/rafs/c1/lowerdir"));
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert_eq!(
                rafs_mountpoint(bad),
                Err(MountpointError::ContainerId(bad.to_string()))
            );
        }
    }
}
