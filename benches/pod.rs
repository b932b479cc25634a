//! A Kubernetes pod's start through containerd's CRI, as the kubelet drives it:
//! RunPodSandbox + CreateContainer + StartContainer until the container's first output
//! line is in its CRI log, lazyvm against runc (the baseline) and against the floor of
//! any VM (a bare boot of the same kernel under the same QEMU flags, `common::bare`),
//! alternated in one run, on a private containerd in a network namespace of its own with
//! a CNI bridge. Prints each sample, the medians and the ratios (issue 14's P1 for pods:
//! lazyvm ÷ bare). A third sample, lazyvm-c, takes its VM from a `lazyvm cache` (full
//! before each of its runs; the shims' configuration names the cache only for those).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/cri.rs"]
mod cri;
#[path = "../tests/common/vmcache.rs"]
mod vmcache;

use std::time::{Duration, Instant};

use common::bare::{bare_boot, bare_qemu};
use cri::{CriEnv, LAZYVM, RUNC};

const ROUNDS: usize = 5;
const MARKER: &str = "lazyvm-bench-first-line";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One pod start: the time until the first output line, then the pod is removed.
async fn sample(env: &CriEnv, name: &str, handler: &str) -> Duration {
    let t = Instant::now();
    let pod = env.run_pod(name, handler).await;
    let cid = env
        .create_container(
            &pod,
            "app",
            &["sh", "-c", &format!("echo {MARKER}; sleep 600")],
        )
        .await;
    env.start_container(&cid).await;
    let log = pod.log_dir.join("app.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(MARKER)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handler}: no output in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    env.stop_container(&cid, 0).await;
    env.remove_container(&cid).await;
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    took
}

#[tokio::main]
async fn main() {
    let env = CriEnv::start().await;
    // The shims read their configuration as they start: it names the cache for lazyvm-c's
    // samples only.
    let config = env.dir.join("lazyvm.toml");
    let plain = std::fs::read_to_string(&config).unwrap();
    let cache_config = env.dir.join("cache.toml");
    let socket = env.dir.join("cache.sock");
    std::fs::write(&cache_config, &plain).unwrap();
    vmcache::name_socket(&cache_config, &socket);
    let with_cache = std::fs::read_to_string(&cache_config).unwrap();
    let cache = vmcache::Cache::start(&cache_config, &socket, &env.dir.join("cache.log"));
    let handlers = [("lazyvm", LAZYVM), ("runc", RUNC), ("lazyvm-c", LAZYVM)];
    let mut times: [Vec<Duration>; 3] = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let mut bare_cmd = bare_qemu(tmp.path());
    let mut bare = Vec::new();
    for round in 0..ROUNDS {
        let took = bare_boot(&mut bare_cmd, &tmp.path().join("bare-console.log"));
        println!(
            "round {round} bare    {:>6.0} ms",
            took.as_secs_f64() * 1000.0
        );
        bare.push(took);
        for (i, (name, handler)) in handlers.iter().enumerate() {
            let cached = *name == "lazyvm-c";
            if cached {
                std::fs::write(&config, &with_cache).unwrap();
                tokio::task::block_in_place(|| cache.wait_ready(1));
            }
            let took = sample(&env, &format!("bench{round}{i}{handler}"), handler).await;
            if cached {
                std::fs::write(&config, &plain).unwrap();
            }
            println!(
                "round {round} {name:<8} {:>6.0} ms",
                took.as_secs_f64() * 1000.0
            );
            times[i].push(took);
        }
    }
    // The sandbox (pause) container's line has the VM's phases; the app's has its own.
    let log = std::fs::read_to_string(env.log_path()).unwrap_or_default();
    let (pause, app): (Vec<_>, Vec<_>) = common::timings::parse(&log)
        .into_iter()
        .partition(|p| p.contains_key("vm_boot_ms"));
    assert_eq!(
        (pause.len(), app.len()),
        (2 * ROUNDS, 2 * ROUNDS),
        "timing lines in the shim's log"
    );
    let (cached, pause): (Vec<_>, Vec<_>) =
        pause.into_iter().partition(|p| p.contains_key("cached"));
    assert_eq!(cached.len(), ROUNDS, "every lazyvm-c pod took a cached VM");
    println!(
        "median shim phases of lazyvm, RunPodSandbox (nydusd ready, VM boot to agent, sandbox ready, pause create, start): {}",
        common::timings::medians(&pause)
    );
    println!(
        "median shim phases of lazyvm-c, RunPodSandbox (VM from the cache; vm_boot = its takeover): {}",
        common::timings::medians(&cached)
    );
    println!(
        "median shim phases of lazyvm and lazyvm-c, StartContainer (app create, start): {}",
        common::timings::medians(&app)
    );
    let [lazyvm, runc, lazyvm_c] = times.map(median);
    println!(
        "\nmedian CRI pod start (RunPodSandbox + CreateContainer + StartContainer to the first output line) over {ROUNDS} rounds: lazyvm {:.0} ms | runc {:.0} ms | lazyvm/runc = {:.1}",
        lazyvm.as_secs_f64() * 1000.0,
        runc.as_secs_f64() * 1000.0,
        lazyvm.as_secs_f64() / runc.as_secs_f64()
    );
    let bare = median(bare);
    println!(
        "median bare boot to QEMU's exit (same kernel and QEMU flags, init = reboot -f): {:.0} ms | P1 pod lazyvm/bare = {:.2} (goal ≤ 1.3)",
        bare.as_secs_f64() * 1000.0,
        lazyvm.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "median lazyvm-c (a VM from lazyvm cache) {:.0} ms | P1 pod lazyvm-c/bare = {:.2} (goal ≤ 1.3) | lazyvm-c/runc = {:.1}",
        lazyvm_c.as_secs_f64() * 1000.0,
        lazyvm_c.as_secs_f64() / bare.as_secs_f64(),
        lazyvm_c.as_secs_f64() / runc.as_secs_f64()
    );
    drop(cache);
}
