//! `ctr run --rm IMG echo hello` end to end through a private containerd: lazyvm against
//! runc (the baseline) and against the floor of any VM, a bare boot of the same guest
//! kernel under the same QEMU flags (machine, accelerator, memory, seccomp, kernel command
//! line) to a one-line init that reboots (QEMU exits: `-no-reboot`), without the helpers'
//! devices. Alternated in one run; prints the medians, the ratios (issue 14's P1:
//! lazyvm ÷ bare) and the shim's teardown time. A third sample, lazyvm-c, runs through a
//! second containerd whose shims take a booted VM from a `lazyvm cache` (the cache is
//! full before each of its runs: the boot happened between two containers).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/containerd.rs"]
mod containerd;
#[path = "../tests/common/vmcache.rs"]
mod vmcache;

use std::path::Path;
use std::time::{Duration, Instant};

use common::bare::{bare_boot, bare_qemu};
use containerd::{Containerd, RUNTIME};

const ROUNDS: usize = 9;
const IMAGE: &str = "docker.io/library/lazyvm-busybox:bench";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("lazyvm.toml");
    common::write_config(&config, &common::guest_dir());
    let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-lazyvm-v2"))
        .parent()
        .unwrap();
    let containerd = Containerd::start(tmp.path(), &config, shim_dir);
    let archive = tmp.path().join("image.tar");
    common::oci_image_archive(&common::busybox_rootfs(tmp.path()), IMAGE, &archive);
    containerd.import(&archive);
    let cached_dir = tmp.path().join("cached");
    std::fs::create_dir_all(&cached_dir).unwrap();
    let cached_config = cached_dir.join("lazyvm.toml");
    let socket = cached_dir.join("cache.sock");
    std::fs::copy(&config, &cached_config).unwrap();
    vmcache::name_socket(&cached_config, &socket);
    let cache = vmcache::Cache::start(&cached_config, &socket, &cached_dir.join("cache.log"));
    let cached = Containerd::start(&cached_dir, &cached_config, shim_dir);
    cached.import(&archive);
    let runtimes = [
        ("lazyvm", RUNTIME, &containerd),
        ("runc", "io.containerd.runc.v2", &containerd),
        ("lazyvm-c", RUNTIME, &cached),
    ];
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut bare_cmd = bare_qemu(tmp.path());
    let mut bare = Vec::new();
    for round in 0..ROUNDS {
        let took = bare_boot(&mut bare_cmd, &tmp.path().join("bare-console.log"));
        println!(
            "round {round} bare    {:>6.0} ms",
            took.as_secs_f64() * 1000.0
        );
        bare.push(took);
        for (i, (name, runtime, containerd)) in runtimes.iter().enumerate() {
            if *name == "lazyvm-c" {
                cache.wait_ready(1);
            }
            let id = format!("{}b{round}{name}", common::test_prefix());
            let t = Instant::now();
            let out = containerd.ctr(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                IMAGE,
                &id,
                "echo",
                "hello",
            ]);
            let took = t.elapsed();
            assert!(
                out.status.success() && out.stdout == b"hello\n",
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!(
                "round {round} {name:<7} {:>6.0} ms",
                took.as_secs_f64() * 1000.0
            );
            times[i].push(took);
        }
    }
    // A shim tears its sandbox down on the Shutdown that follows the Delete, which
    // containerd may send after `ctr run --rm` returned: the last lines can come late.
    let read_log =
        || std::fs::read_to_string(containerd.dir.join("containerd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::timings::teardowns(&read_log()).len() < ROUNDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = read_log();
    let teardowns = common::timings::teardowns(&log);
    assert_eq!(
        teardowns.len(),
        ROUNDS,
        "teardown lines in the shim's log:\n{}",
        log.lines()
            .filter(|l| l.contains("torn down") || l.contains("shutdown") || l.contains("Shutdown"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let teardown = median(teardowns);
    let phases = common::timings::parse(&log);
    assert_eq!(phases.len(), ROUNDS, "timing lines in the shim's log");
    println!(
        "median shim phases of lazyvm (nydusd ready, VM boot to agent, sandbox ready, container create, start): {}",
        common::timings::medians(&phases)
    );
    println!(
        "median lazyvm teardown (last Delete's Shutdown → every helper gone): {:.0} ms (goal ≤ 300 ms)",
        teardown.as_secs_f64() * 1000.0
    );
    let cached_log = std::fs::read_to_string(cached.dir.join("containerd.log")).unwrap_or_default();
    let cached_phases = common::timings::parse(&cached_log);
    assert_eq!(
        cached_phases
            .iter()
            .filter(|p| p.contains_key("cached"))
            .count(),
        ROUNDS,
        "every lazyvm-c run took a VM from the cache"
    );
    println!(
        "median shim phases of lazyvm-c (VM from the cache; vm_boot = its takeover): {}",
        common::timings::medians(&cached_phases)
    );
    let [lazyvm, runc, lazyvm_c] = times.map(median);
    let bare = median(bare);
    println!(
        "\nmedian ctr run --rm ... echo hello over {ROUNDS} rounds: lazyvm {:.0} ms | runc {:.0} ms | lazyvm/runc = {:.1}",
        lazyvm.as_secs_f64() * 1000.0,
        runc.as_secs_f64() * 1000.0,
        lazyvm.as_secs_f64() / runc.as_secs_f64()
    );
    println!(
        "median bare boot to QEMU's exit (same kernel and QEMU flags, init = reboot -f): {:.0} ms | P1 lazyvm/bare = {:.2} (goal ≤ 1.3)",
        bare.as_secs_f64() * 1000.0,
        lazyvm.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "median lazyvm-c (a VM from lazyvm cache) {:.0} ms | P1 lazyvm-c/bare = {:.2} (goal ≤ 1.3) | lazyvm-c/runc = {:.1}",
        lazyvm_c.as_secs_f64() * 1000.0,
        lazyvm_c.as_secs_f64() / bare.as_secs_f64(),
        lazyvm_c.as_secs_f64() / runc.as_secs_f64()
    );
    drop(cached);
    drop(cache);
}
