//! Kernel module loading for Debian's kernel: every module listed in
//! `/lib/modules/<release>/modules.dep` is loaded, dependencies first. With the minimal
//! kernel everything is built in and there is no `modules.dep`: nothing to do.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors of module loading.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// `modules.dep` could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `modules.dep` line is malformed.
    #[error("modules.dep line {line}: {text:?} is not `module.ko: deps...`")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A module depends on itself, directly or not.
    #[error("dependency cycle through {0}")]
    Cycle(String),
    /// A dependency is not listed in `modules.dep`.
    #[error("{module} needs {dep}, which modules.dep does not list")]
    Missing {
        /// The module.
        module: String,
        /// Its missing dependency.
        dep: String,
    },
    /// The kernel refused a module.
    #[error("loading {path}: {source}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Parses `modules.dep` into module path -> dependency paths (relative to the module dir).
pub fn parse_modules_dep(text: &str) -> Result<BTreeMap<String, Vec<String>>, ModuleError> {
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((module, deps)) = line.split_once(':') else {
            return Err(ModuleError::Parse {
                line: i + 1,
                text: line.to_owned(),
            });
        };
        let module = module.trim();
        if module.is_empty() {
            return Err(ModuleError::Parse {
                line: i + 1,
                text: line.to_owned(),
            });
        }
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        map.insert(module.to_owned(), deps);
    }
    Ok(map)
}

/// Orders every module of `deps` so that each comes after all of its dependencies.
/// The order is deterministic (alphabetical where free).
pub fn load_order(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, ModuleError> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        active: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(m) {
            return Ok(());
        }
        if !active.insert(m.to_owned()) {
            return Err(ModuleError::Cycle(m.to_owned()));
        }
        let mine = deps.get(m).map(Vec::as_slice).unwrap_or_default();
        let mut sorted: Vec<&String> = mine.iter().collect();
        sorted.sort();
        for d in sorted {
            if !deps.contains_key(d) {
                return Err(ModuleError::Missing {
                    module: m.to_owned(),
                    dep: d.clone(),
                });
            }
            visit(d, deps, done, active, out)?;
        }
        active.remove(m);
        done.insert(m.to_owned());
        out.push(m.to_owned());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut active = BTreeSet::new();
    let mut out = Vec::new();
    for m in deps.keys() {
        visit(m, deps, &mut done, &mut active, &mut out)?;
    }
    Ok(out)
}

/// The module name the kernel uses (`/sys/module/<name>`) for a path like
/// `kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Loads every module of `<dir>/modules.dep` in dependency order, skipping modules already
/// loaded. Returns the names loaded. A missing `modules.dep` means "all built in".
pub fn load_all(dir: &Path) -> Result<Vec<String>, ModuleError> {
    let dep_path = dir.join("modules.dep");
    let text = match std::fs::read_to_string(&dep_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ModuleError::Read {
                path: dep_path,
                source,
            })
        }
    };
    let deps = parse_modules_dep(&text)?;
    let mut loaded = Vec::new();
    for m in load_order(&deps)? {
        let name = module_name(&m);
        if Path::new("/sys/module").join(&name).exists() {
            continue;
        }
        let path = dir.join(&m);
        insmod(&path).map_err(|source| ModuleError::Load { path, source })?;
        loaded.push(name);
    }
    Ok(loaded)
}

fn insmod(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    let params = CString::default();
    // SAFETY: finit_module reads the open fd and a NUL-terminated parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
kernel/drivers/virtio/virtio.ko:
";

    #[test]
    fn orders_dependencies_first() {
        let deps = parse_modules_dep(DEP).unwrap();
        let order = load_order(&deps).unwrap();
        assert_eq!(order.len(), 6);
        let pos = |m: &str| order.iter().position(|o| o.ends_with(m)).unwrap();
        assert!(pos("/vsock.ko") < pos("vmw_vsock_virtio_transport_common.ko"));
        assert!(pos("vmw_vsock_virtio_transport_common.ko") < pos("vmw_vsock_virtio_transport.ko"));
        assert!(pos("/virtio.ko") < pos("virtiofs.ko"));
        assert!(pos("/fuse.ko") < pos("virtiofs.ko"));
    }

    #[test]
    fn detects_cycles_and_missing() {
        let deps = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(matches!(load_order(&deps), Err(ModuleError::Cycle(_))));
        let deps = parse_modules_dep("a.ko: c.ko\n").unwrap();
        assert!(matches!(
            load_order(&deps),
            Err(ModuleError::Missing { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_modules_dep("no colon here").is_err());
        assert!(parse_modules_dep(": x.ko").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko"), "virtiofs");
        assert_eq!(module_name("kernel/x/vmw-vsock.ko.xz"), "vmw_vsock");
    }

    #[test]
    fn no_modules_dep_means_built_in() {
        let dir = std::env::temp_dir().join("lazyvm-agent-no-modules");
        assert!(load_all(&dir).unwrap().is_empty());
    }
}
