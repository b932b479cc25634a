//! The shim's own timings in containerd's log, for the benches: the start-up phases of
//! its `lazyvm timings <cid>: key=value…` lines (one per container; see `log_timings` in
//! src/shim/task.rs) and each sandbox's teardown.

use std::collections::BTreeMap;
use std::time::Duration;

/// One container's phases: name (`vm_boot_ms`, `sandbox_ms`, `create_ms`, …) →
/// milliseconds.
pub type Phases = BTreeMap<String, f64>;

/// Every `lazyvm timings` line of `log`, in order.
pub fn parse(log: &str) -> Vec<Phases> {
    log.lines()
        .filter_map(|l| l.split("lazyvm timings ").nth(1))
        .filter_map(|rest| rest.split_once(": ").map(|(_, kv)| kv))
        .map(|kv| {
            kv.split_whitespace()
                .map(|w| w.trim_end_matches('"'))
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()?)))
                .collect()
        })
        .collect()
}

/// The median of each phase over `runs` (each phase over the runs that have it), as
/// `name median ms` pairs on one line, in the order the shim logs them.
pub fn medians(runs: &[Phases]) -> String {
    const ORDER: [&str; 6] = [
        "nydusd_ready_ms",
        "vm_boot_ms",
        "sandbox_ms",
        "rafs_mount_ms",
        "create_ms",
        "start_ms",
    ];
    let mut out = Vec::new();
    for name in ORDER {
        let mut v: Vec<f64> = runs.iter().filter_map(|p| p.get(name).copied()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        out.push(format!(
            "{} {:.0} ms",
            name.trim_end_matches("_ms"),
            v[v.len() / 2]
        ));
    }
    out.join(" | ")
}

/// Every sandbox teardown the shim logged (`sandbox <id> torn down in <ms> ms …`: from
/// the Shutdown after the last Delete to every helper gone and the directory removed).
pub fn teardowns(log: &str) -> Vec<Duration> {
    log.lines()
        .filter_map(|l| l.split(" torn down in ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect()
}
