//! The main job, for now: build a RAFS image with nydus-image from a busybox rootfs, start
//! nydusd, mount the image through its API at /rafs/demo/lowerdir, read a file and run
//! busybox from the lazily-fetched image, print what nydusd fetched, and clean up.
//!
//! `make demo` runs it (as root: it makes a FUSE mount).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use lazyvm::nydusd::{rafs_mountpoint, DaemonConfig, Mode, MountRequest, Nydusd};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let rootfs = common::busybox_rootfs(tmp.path());
    let image = common::RafsImage::build(&rootfs, &tmp.path().join("image"));
    println!(
        "built RAFS v6 image: bootstrap {}, blob {} bytes",
        image.bootstrap.display(),
        image.blob_bytes
    );

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let config = DaemonConfig::new(
        common::nydusd_path(),
        tmp.path().join("api.sock"),
        Mode::Fuse {
            mountpoint: mnt.clone(),
        },
    );
    let daemon = Nydusd::start(config, None).await?;
    println!(
        "nydusd pid {} RUNNING {:?} after spawn",
        daemon.pid(),
        daemon.ready_after()
    );

    let result = async {
        let mountpoint = rafs_mountpoint("demo")?;
        let t = Instant::now();
        let req = MountRequest::rafs(image.bootstrap.to_string_lossy(), image.config(""));
        daemon.client().mount(&mountpoint, &req).await?;
        println!("mounted the image at {mountpoint} in {:?}", t.elapsed());
        let lower = mnt.join("rafs/demo/lowerdir");
        print!(
            "/etc/hello.txt: {}",
            std::fs::read_to_string(lower.join("etc/hello.txt"))?
        );
        let out = Command::new(lower.join("bin/busybox"))
            .args(["sh", "-c", "echo busybox runs from the RAFS image"])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        let backend = daemon.client().backend_metrics(None).await?;
        println!(
            "nydusd read {} of {} blob bytes from the backend",
            backend.read_amount_total, image.blob_bytes
        );
        daemon.client().umount(&mountpoint).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    daemon.stop().await?;
    println!("nydusd stopped, nothing left behind");
    result
}
