//! The shim's start-up phases, from its `lazyvm timings <cid>: key=value…` lines in
//! containerd's log (one per container; see `log_timings` in src/shim/task.rs), for the
//! benches' breakdown of where a start's time goes.

use std::collections::BTreeMap;

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
