//! The main job: a container in a lazyvm micro-VM, started from a nydus image before the
//! image has been read.
//!
//! Builds a RAFS image with nydus-image from a local rootfs (busybox plus 100 MiB of data
//! the container never reads), starts a private containerd with lazyvm registered,
//! creates a container whose rootfs is a `fuse.nydus-overlayfs` mount through
//! containerd's gRPC API, runs it, prints its output, the start-up phase timings and how
//! much of the image nydusd actually read, and cleans everything up.
//!
//! `make demo` runs it (as root, after `make deps guest`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/containerd.rs"]
mod containerd;

use std::path::{Path, PathBuf};

use common::*;
use containerd::*;

fn guest() -> PathBuf {
    let installed = Path::new(lazyvm::config::SHARE_DIR);
    if installed.join("vmlinux").is_file() && installed.join("initramfs.cpio.gz").is_file() {
        installed.to_path_buf()
    } else {
        guest_dir()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let rootfs = busybox_rootfs(tmp.path());
    std::fs::write(
        rootfs.join("etc/motd"),
        "Hello from a container started lazily from a nydus image.\n",
    )?;
    write_incompressible(&rootfs.join("data"), 10, 10);
    let image = RafsImage::build(&rootfs, &tmp.path().join("image"));
    println!(
        "built a RAFS v6 image with nydus-image: {} blob bytes",
        image.blob_bytes
    );

    let config = tmp.path().join("lazyvm.toml");
    write_config(&config, &guest());
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/demo -> target/<profile>/
    let shim_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the shim beside the demo")?;
    let containerd = Containerd::start(tmp.path(), &config, shim_dir);
    println!(
        "started a private containerd at {}",
        containerd.socket.display()
    );

    let pod = PodClient {
        channel: containerd_client::connect(&containerd.socket).await?,
        id: format!("{}demo", test_prefix()),
        out_dir: tmp.path().to_path_buf(),
    };
    let cid = pod.id.clone();
    let stdout = pod
        .create(
            &cid,
            &[
                "sh",
                "-c",
                "cat /etc/motd; echo \"hostname: $(hostname), pid: $$\"",
            ],
            vec![nydus_mount(&image, &snapshotdir(tmp.path(), "demo"))],
            &[],
        )
        .await?;
    pod.start(&cid).await;
    let status = pod.wait(&cid).await;
    let api = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &cid)
        .join("nydusd-api.sock");
    let read = lazyvm::nydusd::NydusClient::new(api)
        .backend_metrics(None)
        .await
        .map(|m| m.read_amount_total)
        .unwrap_or_default();
    pod.delete(&cid).await;

    println!("--- container output (exit status {status}) ---");
    print!("{}", std::fs::read_to_string(stdout)?);
    println!("--- start-up phases ---");
    let log = std::fs::read_to_string(containerd.dir.join("containerd.log"))?;
    for line in log.lines().filter(|l| l.contains("lazyvm timings")) {
        if let Some(t) = line.split("lazyvm timings ").nth(1) {
            println!("{}", t.trim_end_matches('"'));
        }
    }
    println!(
        "--- laziness ---\nnydusd read {read} of {} image bytes ({:.2}%)",
        image.blob_bytes,
        read as f64 * 100.0 / image.blob_bytes.max(1) as f64
    );
    drop(containerd);
    println!("cleaned up: containerd stopped, sandbox removed");
    if status == 0 {
        Ok(())
    } else {
        Err(format!("the container exited with {status}").into())
    }
}
