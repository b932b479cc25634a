//! A minimal logger for PID 1: lines go to stderr, which is the VM's console.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Seconds since boot, comparable with the kernel's log timestamps.
        let uptime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| format!("{}.{:03}", t.tv_sec(), t.tv_nsec() / 1_000_000))
            .unwrap_or_default();
        let line = format!(
            "lazyvm-agent[{uptime}] {} {}: {}\n",
            record.level(),
            record.target(),
            record.args()
        );
        // One write per line so concurrent lines do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the console logger. `debug` raises the level from info to debug.
pub fn init(debug: bool) {
    static LOGGER: ConsoleLogger = ConsoleLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(if debug {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}
