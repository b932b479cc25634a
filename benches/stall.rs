//! The boot-stall count (issue 11): sandboxes booted 10 at a time (`LAZYVM_STALL_PARALLEL`)
//! in batches (`LAZYVM_STALL_BOOTS`, default 200 in all), each up to its agent's first
//! answer, then stopped. Prints how many needed a second boot attempt (the shim boots a
//! fresh VM when the agent is unreachable within the connect timeout), with the first
//! attempt's error, and the slowest boots.
//!
//! `cargo bench --bench stall` (after `make deps guest`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use lazyvm::config::Config;
use lazyvm::sandbox::{Sandbox, SandboxSpec};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    common::capture_logs();
    let boots = env_usize("LAZYVM_STALL_BOOTS", 200);
    let parallel = env_usize("LAZYVM_STALL_PARALLEL", 10).max(1);
    let guest = common::guest_dir();
    let config = format!(
        "[hypervisor]\naccel = \"tcg\"\nmachine = \"microvm\"\nkernel = {:?}\ninitramfs = {:?}\n",
        guest.join("vmlinux"),
        guest.join("initramfs.cpio")
    );
    let mut times = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    let mut n = 0;
    while n < boots {
        let batch = parallel.min(boots - n);
        let runs = (0..batch).map(|i| {
            let config = Config::parse(&config).unwrap();
            let id = format!("stall-{}-{}", std::process::id(), n + i);
            async move {
                let t = Instant::now();
                match Sandbox::start(SandboxSpec::new(&id, config)).await {
                    Ok(sandbox) => {
                        let boot = sandbox.timings().vm_boot;
                        sandbox.stop().await;
                        Ok((id, t.elapsed(), boot))
                    }
                    Err(e) => Err(format!("{id}: {e}")),
                }
            }
        });
        for r in futures::future::join_all(runs).await {
            match r {
                Ok((id, total, boot)) => times.push((total, boot, id)),
                Err(e) => {
                    failed += 1;
                    println!("FAILED {e}");
                }
            }
        }
        n += batch;
        let retried = retries().len();
        println!(
            "{n}/{boots} boots, {retried} needed a second attempt, {failed} failed ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let retried = retries();
    println!(
        "\n{boots} boots, {parallel} at a time: {} needed a second attempt, {failed} failed",
        retried.len()
    );
    for r in &retried {
        println!("  {r}");
    }
    times.sort_by_key(|t| std::cmp::Reverse(t.0));
    let median = times.get(times.len() / 2).map(|t| t.0).unwrap_or_default();
    println!(
        "start to agent ready: median {:.2} s; slowest:",
        median.as_secs_f64()
    );
    for (total, boot, id) in times.iter().take(5) {
        println!(
            "  {id}: {:.2} s (last VM boot to agent {:.2} s)",
            total.as_secs_f64(),
            boot.as_secs_f64()
        );
    }
}

/// The logged first-attempt failures.
fn retries() -> Vec<String> {
    common::logged()
        .into_iter()
        .filter(|l| l.contains("boot attempt 1 failed"))
        .map(|l| l.chars().take(600).collect())
        .collect()
}
