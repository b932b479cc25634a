//! Endurance ("soak", `make soak`; not in CI, whose 20-cycle version is tests/soak.rs):
//! `SOAK_CYCLES` (default 200) cycles of each kind, on the same fixtures and against the
//! same bounds as the test (`tests/common/soak.rs`):
//!
//! 1. container create/start/exec/stop/remove in ONE long-lived lazyvm pod through the
//!    CRI: containerd, the pod's shim, QEMU, nydusd, vhost-device-vsock and the guest
//!    agent sampled;
//! 2. whole lazyvm pods through the CRI (RunPodSandbox … RemovePodSandbox): containerd
//!    and what the pods leave sampled;
//! 3. `ctr run --rm` with lazyvm on a containerd without the CRI: containerd sampled.
//!
//! A sample (open fds, threads, RSS from /proc; counts of shims, sandbox directories,
//! mounts, netns, ...) is printed after every `SOAK_REPORT_EVERY` (default 50) cycles, the
//! whole table with the growth against each bound at the end of each kind. Exits 1 if a
//! bound was exceeded or anything was left behind.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/containerd.rs"]
mod containerd;
#[path = "../tests/common/cri.rs"]
mod cri;
#[path = "../tests/common/soak.rs"]
mod soak;

use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={v:?}: a positive number of cycles")),
        Err(_) => default,
    }
}

fn main() {
    let cycles = env_usize("SOAK_CYCLES", 200);
    let every = env_usize("SOAK_REPORT_EVERY", 50);
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = rt.block_on(async {
        let env = cri::CriEnv::start().await;
        let in_pod = soak::containers_in_one_pod(&env, cycles, every).await;
        in_pod.print_growth();
        let pods = soak::whole_pods(&env, cycles, every).await;
        pods.print_growth();
        vec![in_pod, pods]
    });
    // The CRI env is gone (dropped inside): the ctr cycles have the machine to themselves.
    let env = soak::CtrEnv::start();
    let ctr = soak::ctr_runs(&env, cycles, every);
    ctr.print_growth();
    drop(env);
    reports.push(ctr);

    // Every table once more, together.
    for r in &reports {
        r.print();
    }
    println!(
        "\n== soak: {cycles} cycles of each kind in {:.0} s ==",
        t0.elapsed().as_secs_f64()
    );
    let mut failed = false;
    for r in &reports {
        if r.problems.is_empty() {
            println!("ok    {}", r.title);
        } else {
            failed = true;
            println!("FAIL  {}", r.title);
            for p in &r.problems {
                println!("      {p}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
