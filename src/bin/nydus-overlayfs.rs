//! `nydus-overlayfs SOURCE TARGET -o OPTIONS`: the mount helper `mount.fuse` runs for a
//! `fuse.nydus-overlayfs` mount on the host. It mounts a plain overlay with the options
//! minus `extraoption=` (see `lazyvm_snapshotter::overlayfs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match lazyvm_snapshotter::overlayfs::mount(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nydus-overlayfs: {e}");
            ExitCode::from(32)
        }
    }
}
