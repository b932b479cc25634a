//! The VM: QEMU and its vhost-user vsock device process.
//!
//! - [`qemu`] builds QEMU's command line, starts it, talks QMP to stop it, and reports an
//!   early exit with the tail of the guest console;
//! - [`vsock`] runs `vhost-device-vsock`, the host end of the host<->guest channel.

pub mod qemu;
pub mod vsock;

pub use qemu::{Accel, Machine, NetDevice, Qemu, QemuConfig, QemuError, VmFiles};
pub use vsock::{VhostVsock, VsockError};

/// The host's TSC frequency in kHz, which a microvm guest must be told
/// (`tsc_early_khz=`): from sysfs where the kernel exports it, else from the first
/// `cpu MHz` of /proc/cpuinfo.
pub fn host_tsc_khz() -> Option<u64> {
    if let Ok(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(khz) = khz.trim().parse() {
            return Some(khz);
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpuinfo_khz(&cpuinfo)
}

fn parse_cpuinfo_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_from_cpuinfo() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 1996.249\ncache size\t: 512 KB\n";
        assert_eq!(parse_cpuinfo_khz(cpuinfo), Some(1_996_249));
        assert_eq!(parse_cpuinfo_khz("processor : 0\n"), None);
        assert_eq!(parse_cpuinfo_khz("cpu MHz : zero\n"), None);
        assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
    }
}
