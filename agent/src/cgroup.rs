//! cgroup v2: the unified hierarchy's setup at boot and a container's numbers (cpu.stat,
//! memory.*, pids.*, cgroup.procs, memory.events).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// Errors of cgroup access.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A value did not parse.
    #[error("{path}: unexpected content {text:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The content.
        text: String,
    },
}

/// Parses flat-keyed files (`key value` lines: cpu.stat, memory.stat, memory.events).
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_owned(), v))
        })
        .collect()
}

/// Parses a single value that may be `max` (returned as 0: no limit).
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        Some(0)
    } else {
        t.parse().ok()
    }
}

/// Parses cgroup.procs.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// One container's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

/// cpu.stat numbers (microseconds and counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cpu {
    /// usage_usec.
    pub usage_usec: u64,
    /// user_usec.
    pub user_usec: u64,
    /// system_usec.
    pub system_usec: u64,
    /// nr_periods.
    pub nr_periods: u64,
    /// nr_throttled.
    pub nr_throttled: u64,
    /// throttled_usec.
    pub throttled_usec: u64,
}

/// Memory numbers.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// memory.current.
    pub usage: u64,
    /// memory.max, 0 = max.
    pub limit: u64,
    /// memory.swap.current.
    pub swap_usage: u64,
    /// memory.events oom_kill.
    pub oom_kills: u64,
    /// memory.stat.
    pub stat: HashMap<String, u64>,
}

/// pids numbers.
#[derive(Debug, Clone, Default)]
pub struct Pids {
    /// pids.current.
    pub current: u64,
    /// pids.max, 0 = max.
    pub limit: u64,
}

impl Cgroup {
    /// The cgroup at `ROOT` + `rel` (e.g. `/lazyvm/<cid>`).
    pub fn new(rel: &str) -> Self {
        Cgroup {
            dir: Path::new(ROOT).join(rel.trim_start_matches('/')),
        }
    }

    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })
    }

    fn read_opt(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }

    fn limit(&self, file: &str) -> Result<u64, CgroupError> {
        let text = self.read(file)?;
        parse_limit(&text).ok_or_else(|| CgroupError::Parse {
            path: self.dir.join(file),
            text,
        })
    }

    /// cpu.stat (the cpu controller's fields are 0 when it is not enabled).
    pub fn cpu(&self) -> Result<Cpu, CgroupError> {
        let m = parse_flat_keyed(&self.read("cpu.stat")?);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        Ok(Cpu {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
        })
    }

    /// memory.current, memory.max, memory.swap.current, memory.events, memory.stat.
    pub fn memory(&self) -> Result<Memory, CgroupError> {
        Ok(Memory {
            usage: self.limit("memory.current")?,
            limit: self.limit("memory.max")?,
            swap_usage: self
                .read_opt("memory.swap.current")
                .and_then(|t| parse_limit(&t))
                .unwrap_or(0),
            oom_kills: self.oom_kills()?,
            stat: parse_flat_keyed(&self.read("memory.stat")?),
        })
    }

    /// The oom_kill counter of memory.events.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        Ok(parse_flat_keyed(&self.read("memory.events")?)
            .get("oom_kill")
            .copied()
            .unwrap_or(0))
    }

    /// pids.current and pids.max.
    pub fn pids(&self) -> Result<Pids, CgroupError> {
        Ok(Pids {
            current: self.limit("pids.current")?,
            limit: self.limit("pids.max")?,
        })
    }

    /// Every pid in the cgroup and its descendants.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            let path = d.join("cgroup.procs");
            let text = std::fs::read_to_string(&path)
                .map_err(|source| CgroupError::Io { path, source })?;
            pids.extend(parse_pids(&text));
            if let Ok(entries) = std::fs::read_dir(&d) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }
}

/// Enables every available controller for children of the root cgroup and of
/// `/lazyvm` (so containers get cpu, memory, pids, ... accounting).
pub fn enable_controllers() -> Result<(), CgroupError> {
    let root = Path::new(ROOT);
    let lazyvm = root.join("lazyvm");
    std::fs::create_dir_all(&lazyvm).map_err(|source| CgroupError::Io {
        path: lazyvm.clone(),
        source,
    })?;
    for dir in [root, lazyvm.as_path()] {
        let path = dir.join("cgroup.controllers");
        let avail =
            std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })?;
        let want: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
        if want.is_empty() {
            continue;
        }
        let path = dir.join("cgroup.subtree_control");
        std::fs::write(&path, want.join(" ")).map_err(|source| CgroupError::Io { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let m = parse_flat_keyed("usage_usec 12\nuser_usec 7\nbogus\nsystem_usec x\n");
        assert_eq!(m.get("usage_usec"), Some(&12));
        assert_eq!(m.get("user_usec"), Some(&7));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn limits_and_pids() {
        assert_eq!(parse_limit("max\n"), Some(0));
        assert_eq!(parse_limit("1048576\n"), Some(1048576));
        assert_eq!(parse_limit("x"), None);
        assert_eq!(parse_pids("1\n22\n\n"), vec![1, 22]);
    }

    #[test]
    fn path() {
        assert_eq!(
            Cgroup::new("/lazyvm/c1").dir,
            PathBuf::from("/sys/fs/cgroup/lazyvm/c1")
        );
    }
}
