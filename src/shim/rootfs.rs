//! A container's rootfs from containerd's mounts, and the nydus prefetch annotation.

use std::path::{Path, PathBuf};

use containerd_shim::TtrpcResult;
use containerd_shim_protos::ttrpc::Code;
use oci_spec::runtime::Spec;

use super::errors::{internal, status_error};
use crate::rootfs::ExtraOption;
use crate::sandbox::Rootfs;

/// The annotation listing files nydusd prefetches for a nydus rootfs: a JSON array of
/// absolute paths, or the paths separated by commas or newlines.
pub const PREFETCH_ANNOTATION: &str = "io.lazyvm.nydus.prefetch-files";

/// The prefetch list of the spec's annotation; relative or empty entries are an error.
pub fn prefetch_files(spec: &Spec) -> TtrpcResult<Vec<String>> {
    let Some(value) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(PREFETCH_ANNOTATION))
    else {
        return Ok(Vec::new());
    };
    crate::rootfs::parse_prefetch_files(value).map_err(|e| {
        status_error(
            Code::INVALID_ARGUMENT,
            format!("{PREFETCH_ANNOTATION}: {e}"),
        )
    })
}

/// The container's rootfs from containerd's mounts: a nydus image is handed to the
/// sandbox as it is; anything else is mounted on the host at `<bundle>/rootfs` (returned
/// second, to unmount on delete); no mounts means the bundle's own root directory.
pub(super) fn rootfs_of(
    bundle: &Path,
    spec: &Spec,
    mounts: &[containerd_shim_protos::types::mount::Mount],
) -> TtrpcResult<(Rootfs, Option<PathBuf>)> {
    if let Some(m) = mounts
        .iter()
        .find(|m| m.type_ == crate::rootfs::NYDUS_MOUNT_TYPE)
    {
        let extra = ExtraOption::from_mount_options(&m.options)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        let prefetch_files = prefetch_files(spec)?;
        return Ok((
            Rootfs::Nydus {
                extra,
                prefetch_files,
            },
            None,
        ));
    }
    if mounts.is_empty() {
        let root = spec.root().as_ref().map(|r| r.path().clone());
        let root = root.unwrap_or_else(|| PathBuf::from("rootfs"));
        let dir = if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        };
        return Ok((Rootfs::HostDir(dir), None));
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(internal)?;
    for m in mounts {
        if let Err(e) = containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            &target,
        ) {
            unmount_rootfs(&target);
            return Err(internal(format!("mounting the rootfs ({}): {e}", m.type_)));
        }
    }
    Ok((Rootfs::HostDir(target.clone()), Some(target)))
}

/// Unmounts everything under a host rootfs we mounted.
pub(super) fn unmount_rootfs(target: &Path) {
    if let Err(e) = crate::mounts::unmount_all_under(target) {
        log::warn!("unmounting {}: {e}", target.display());
    }
}
