//! `ctr run --rm IMG echo hello` end to end through a private containerd: lazyvm against
//! runc (the baseline), alternated in one run. Prints the medians and the ratio.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/containerd.rs"]
mod containerd;

use std::path::Path;
use std::time::{Duration, Instant};

use containerd::{Containerd, RUNTIME};

const ROUNDS: usize = 5;
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
    assert!(containerd
        .ctr(&["images", "import", archive.to_str().unwrap()])
        .status
        .success());
    let runtimes = [("lazyvm", RUNTIME), ("runc", "io.containerd.runc.v2")];
    let mut times: [Vec<Duration>; 2] = Default::default();
    for round in 0..ROUNDS {
        for (i, (name, runtime)) in runtimes.iter().enumerate() {
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
    let [lazyvm, runc] = times.map(median);
    println!(
        "\nmedian ctr run --rm ... echo hello over {ROUNDS} rounds: lazyvm {:.0} ms | runc {:.0} ms | lazyvm/runc = {:.1}",
        lazyvm.as_secs_f64() * 1000.0,
        runc.as_secs_f64() * 1000.0,
        lazyvm.as_secs_f64() / runc.as_secs_f64()
    );
}
