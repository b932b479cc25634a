//! Boot benchmark (`make bench`): the minimal guest kernel against Debian's, alternated in
//! one run, under the configured accelerator (TCG here). Prints the medians of QEMU spawn
//! → agent ready and of `lazyvm run -- true` end to end, and the ratios minimal / Debian.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use lazyvm::config::Config;
use lazyvm::sandbox::{Sandbox, SandboxSpec};

const ROUNDS: usize = 5;

struct Kernel {
    name: &'static str,
    config: String,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let guest = common::guest_dir();
    let debian_kernel = guest.join("vmlinux-debian");
    assert!(
        debian_kernel.is_file(),
        "{} is missing: run `make guest`",
        debian_kernel.display()
    );
    let kernels = [
        Kernel {
            name: "minimal",
            config: format!(
                "[hypervisor]\naccel = \"tcg\"\nmachine = \"microvm\"\nkernel = {:?}\ninitramfs = {:?}\nkernel_params = {:?}\n",
                guest.join("vmlinux"),
                guest.join("initramfs.cpio"),
                common::test_kernel_params()
            ),
        },
        Kernel {
            name: "debian",
            config: format!(
                "[hypervisor]\naccel = \"tcg\"\nmachine = \"pc\"\nkernel = {:?}\ninitramfs = {:?}\n",
                debian_kernel,
                guest.join("initramfs-debian.cpio")
            ),
        },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = common::busybox_rootfs(tmp.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut agent_ready: [Vec<Duration>; 2] = Default::default();
    let mut run_true: [Vec<Duration>; 2] = Default::default();
    let mut failures = 0;
    for round in 0..ROUNDS {
        for (k, kernel) in kernels.iter().enumerate() {
            let config = Config::parse(&kernel.config).unwrap();
            let id = format!("bench-{}-{round}-{}", kernel.name, std::process::id());
            let boot = runtime.block_on(async {
                match Sandbox::start(SandboxSpec::new(&id, config)).await {
                    Ok(sandbox) => {
                        let t = sandbox.timings().vm_boot;
                        sandbox.stop().await;
                        Some(t)
                    }
                    Err(e) => {
                        println!("round {round} {}: sandbox failed: {e}", kernel.name);
                        None
                    }
                }
            });
            let file = tmp.path().join(format!("{}.toml", kernel.name));
            std::fs::write(&file, &kernel.config).unwrap();
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_lazyvm"))
                .arg("--config")
                .arg(&file)
                .args(["run", "--rootfs"])
                .arg(&rootfs)
                .args(["--", "true"])
                .output()
                .unwrap();
            let run = t.elapsed();
            let run = if out.status.success() {
                Some(run)
            } else {
                println!(
                    "round {round} {}: lazyvm run failed: {}",
                    kernel.name,
                    String::from_utf8_lossy(&out.stderr)
                );
                None
            };
            let (Some(boot), Some(run)) = (boot, run) else {
                failures += 1;
                continue;
            };
            agent_ready[k].push(boot);
            run_true[k].push(run);
            println!(
                "round {round} {:<8} spawn->agent ready {:>8}   lazyvm run -- true {:>8}",
                kernel.name,
                ms(boot),
                ms(run)
            );
        }
    }
    let [ready_min, ready_deb] = agent_ready.map(median);
    let [run_min, run_deb] = run_true.map(median);
    println!("\nmedians over {ROUNDS} rounds (alternated; {failures} failed sample(s) left out):");
    println!(
        "  QEMU spawn -> agent ready: minimal {} | debian {} | minimal/debian = {:.2}",
        ms(ready_min),
        ms(ready_deb),
        ready_min.as_secs_f64() / ready_deb.as_secs_f64()
    );
    println!(
        "  lazyvm run -- true:        minimal {} | debian {} | minimal/debian = {:.2}",
        ms(run_min),
        ms(run_deb),
        run_min.as_secs_f64() / run_deb.as_secs_f64()
    );
}
