//! The main job on the path a Kubernetes user takes: a pod in a lazyvm micro-VM, started
//! from a nydus image that is pulled lazily from a registry.
//!
//! In a network namespace of its own, the demo starts Debian's docker-registry, converts
//! a busybox rootfs plus 100 MiB of data the container never reads into a nydus image
//! with `lazyvm image convert` and pushes it, starts lazyvm-snapshotter and a private
//! containerd with the CRI (snapshotter `lazyvm`, runtime handler `lazyvm`), pulls the
//! image through the CRI, runs a pod from it, and prints what the pull fetched, the
//! pod's output, the start-up phase timings and what nydusd fetched for the run against
//! the image's size. Everything is stopped and removed afterwards.
//!
//! `make demo` runs it (as root, after `make deps guest`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/cri.rs"]
mod cri;

use std::path::Path;
use std::time::Instant;

use common::registry::{Registry, REGISTRY};
use cri::{CriEnv, LAZYVM};

const MIB: f64 = (1 << 20) as f64;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = CriEnv::start_lazy(None).await;
    let registry = &env.lazy.as_ref().ok_or("no registry")?.registry;
    println!("started docker-registry at {REGISTRY}, lazyvm-snapshotter and containerd (CRI) in netns {}", env.netns);

    let work = env.dir.join("demo");
    let rootfs = cri::app_rootfs(&work);
    std::fs::write(
        rootfs.join("etc/motd"),
        "Hello from a pod started lazily from a nydus image in a registry.\n",
    )?;
    common::write_incompressible(&rootfs.join("data"), 2, 50);
    let image = format!("{REGISTRY}/lazyvm/demo:latest");
    print!(
        "{}",
        registry.convert(&format!("dir:{}", rootfs.display()), &image, "nydus")
    );
    let manifest = registry.manifest("lazyvm/demo", "latest");
    let layers = manifest["layers"].as_array().ok_or("no layers")?;
    let blob = layers[0]["digest"]
        .as_str()
        .ok_or("no blob digest")?
        .to_string();
    let blob_size = layers[0]["size"].as_u64().unwrap_or(1);

    let mark = registry.log_mark();
    let t = Instant::now();
    env.pull_image(&image).await?;
    let pull = t.elapsed();
    let pulled = registry.requests_since(mark);
    println!(
        "--- PullImage through the CRI ({:.2} s) fetched ---",
        pull.as_secs_f64()
    );
    for r in pulled.iter().filter(|r| r.method == "GET") {
        let what = if r.path.contains("/manifests/") {
            "manifest"
        } else if r
            .path
            .ends_with(manifest["config"]["digest"].as_str().unwrap_or("-"))
        {
            "config"
        } else if r.path.ends_with(&blob) {
            "DATA BLOB"
        } else {
            "bootstrap layer"
        };
        println!("  {what:16} {:>9} bytes", r.bytes);
    }
    let (pull_blob, _) = Registry::blob_reads(&pulled, &blob);
    println!(
        "  data blob ({:.1} MiB): {pull_blob} bytes",
        blob_size as f64 / MIB
    );

    let mark = registry.log_mark();
    let t = Instant::now();
    let pod = env.run_pod("demo", LAZYVM).await;
    let config = {
        let mut c = env.container_config(
            "demo",
            &[
                "sh",
                "-c",
                "cat /etc/motd; echo \"hostname: $(hostname), kernel: $(uname -r)\"",
            ],
            k8s_cri::v1::NamespaceMode::Container,
        );
        c.image = Some(k8s_cri::v1::ImageSpec {
            image: image.clone(),
            ..Default::default()
        });
        c
    };
    let cid = env.create_container_with(&pod, config).await?;
    env.start_container(&cid).await;
    let status = env.wait_exited(&cid, 120).await;
    let run = t.elapsed();
    let (read, ranged) = Registry::blob_reads(&registry.requests_since(mark), &blob);

    println!(
        "--- the pod's output (exit status {}) ---",
        status.exit_code
    );
    for line in cri::cri_log_lines(&pod.log_dir.join("demo.log"), "stdout") {
        println!("{line}");
    }
    println!(
        "--- start-up phases (RunPodSandbox to exit: {:.2} s) ---",
        run.as_secs_f64()
    );
    let log = std::fs::read_to_string(env.log_path())?;
    for line in log.lines().filter(|l| l.contains("lazyvm timings")) {
        if let Some(t) = line.split("lazyvm timings ").nth(1) {
            println!("{}", t.trim_end_matches('"'));
        }
    }
    println!(
        "--- laziness ---\nnydusd fetched {read} of {blob_size} data blob bytes ({:.2}%) in {ranged} ranged reads",
        read as f64 * 100.0 / blob_size as f64
    );
    env.remove_container(&cid).await;
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    env.remove_image(&image).await;
    let dir = env.dir.clone();
    drop(env);
    println!(
        "cleaned up: containerd, the snapshotter and the registry stopped, {} removed: {}",
        dir.display(),
        !Path::new(&dir).exists()
    );
    if status.exit_code == 0 {
        Ok(())
    } else {
        Err(format!("the container exited with {}", status.exit_code).into())
    }
}
