//! The pure parts of lazyvm-agent, as a library so that they can be fuzzed (see `fuzz/`)
//! and tested without a VM: only OCI spec handling ([`spec`]), which touches no file,
//! process or device. The agent itself is the `lazyvm-agent` binary (`main.rs`).

pub mod spec;
