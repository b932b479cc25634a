//! containerd's rootfs mounts, and what lazyvm makes of them.
//!
//! - [`extraoption`] decodes the `extraoption=` of a `fuse.nydus-overlayfs` mount;
//! - [`parse_prefetch_files`] parses the list of files nydusd prefetches for one.

pub mod extraoption;

pub use extraoption::{redact_options, ExtraOption, ExtraOptionError, FsVersion};

/// The mount type containerd's nydus snapshotter gives a nydus container's rootfs.
pub const NYDUS_MOUNT_TYPE: &str = "fuse.nydus-overlayfs";

/// Parses the value of the nydus prefetch annotation: a JSON array of absolute paths, or
/// the paths separated by commas or newlines (trimmed; empty ones skipped). A relative or
/// empty entry is an error, which names it.
pub fn parse_prefetch_files(value: &str) -> Result<Vec<String>, String> {
    let files: Vec<String> = match serde_json::from_str::<Vec<String>>(value) {
        Ok(list) => list,
        Err(_) => value
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if let Some(bad) = files.iter().find(|f| !f.starts_with('/')) {
        return Err(format!("{bad:?} is not an absolute path"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_files_as_json_or_separated() {
        assert_eq!(
            parse_prefetch_files(r#"["/bin/sh", "/etc/a b"]"#).unwrap(),
            ["/bin/sh", "/etc/a b"]
        );
        assert_eq!(
            parse_prefetch_files(" /bin/sh ,\n/etc/hosts,,\n").unwrap(),
            ["/bin/sh", "/etc/hosts"]
        );
        assert!(parse_prefetch_files("").unwrap().is_empty());
        assert_eq!(
            parse_prefetch_files("/a,b").unwrap_err(),
            "\"b\" is not an absolute path"
        );
        assert!(parse_prefetch_files(r#"["/a", ""]"#).is_err());
    }
}
