//! The floor of any VM for issue 14's P1: a bare boot of the same guest kernel under the
//! same QEMU flags (machine, accelerator, memory, seccomp, kernel command line) to a
//! one-line init that reboots (QEMU exits: `-no-reboot`), without the helpers' devices.
//! Shared by the benches.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lazyvm::config::Config;
use lazyvm::hypervisor::qemu::VmFiles;

use super::guest_dir;

/// The bare VM's QEMU command: lazyvm's own arguments for the minimal kernel, with an
/// initramfs whose init is busybox's `reboot -f`, and without the vhost-user devices
/// (their daemons are not there) and QMP.
pub fn bare_qemu(dir: &Path) -> Command {
    let root = dir.join("bare-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static (make deps)");
    std::os::unix::fs::symlink("busybox", root.join("bin/reboot")).unwrap();
    let cpio = dir.join("bare.cpio");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            cpio.display()
        ))
        .status()
        .unwrap();
    assert!(out.success(), "building the bare initramfs");
    let guest = guest_dir();
    let config = Config::parse(&format!(
        "[hypervisor]\naccel = \"tcg\"\nmachine = \"microvm\"\nkernel = {:?}\ninitramfs = {:?}\n",
        guest.join("vmlinux"),
        cpio
    ))
    .unwrap();
    let mut q = config.qemu();
    q.kernel_params = super::test_kernel_params();
    q.kernel_params
        .extend(["rdinit=/bin/reboot", "--", "-f"].map(String::from));
    let files = VmFiles {
        vhost_fs: dir.join("none-fs.sock"),
        vhost_vsock: dir.join("none-vsock.sock"),
        qmp: dir.join("bare-qmp.sock"),
        console: dir.join("bare-console.log"),
        nics: Vec::new(),
    };
    let tsc = q.tsc_khz.or_else(lazyvm::hypervisor::host_tsc_khz);
    let args = q.args(&files, tsc);
    // Drop the vhost-user chardev/device pairs and QMP (flag + value each).
    let mut kept: Vec<OsString> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).map(|v| v.to_string_lossy().into_owned());
        let drop = match (args[i].to_str(), value.as_deref()) {
            (Some("-chardev"), Some(v)) => v.starts_with("socket,"),
            (Some("-device"), Some(v)) => v.starts_with("vhost-user-"),
            (Some("-qmp"), _) => true,
            _ => false,
        };
        if drop {
            i += 2;
        } else {
            kept.push(args[i].clone());
            i += 1;
        }
    }
    let mut cmd = Command::new(&q.binary);
    cmd.args(kept);
    cmd
}

/// One bare boot to QEMU's exit; the init must have run (a kernel that finds no init
/// panics, and `panic=-1` would end QEMU just as well).
pub fn bare_boot(cmd: &mut Command, console: &Path) -> Duration {
    let _ = std::fs::remove_file(console);
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "bare QEMU: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = std::fs::read_to_string(console).unwrap_or_default();
    assert!(
        !printed.contains("Kernel panic"),
        "the bare guest panicked:\n{printed}"
    );
    took
}
