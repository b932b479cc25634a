//! lazyvm's host <-> guest agent protocol: the protobuf messages and the async ttrpc
//! client and server generated from `agent.proto` (see that file for every RPC).
//!
//! The host uses [`agent_ttrpc::AgentClient`]; the guest agent implements
//! [`agent_ttrpc::Agent`] and registers it with [`agent_ttrpc::create_agent`].
//! [`ttrpc`] and [`protobuf`] are re-exported so users link the same versions
//! (those of `containerd-shim-protos` 0.11).

pub use protobuf;
pub use ttrpc;

/// Protobuf messages of `agent.proto`.
#[allow(
    missing_docs,
    unused_mut,
    unused_imports,
    non_camel_case_types,
    non_upper_case_globals,
    unused_results,
    clippy::all
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc service: client, server trait, registration.
#[allow(
    missing_docs,
    unused_mut,
    unused_imports,
    non_camel_case_types,
    non_upper_case_globals,
    unused_results,
    clippy::all
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The kernel command line word of a VM booted ahead of time (the VM cache's): its agent
/// warms crun up with a throwaway container while the VM waits to be claimed.
pub const WARM_CMDLINE_FLAG: &str = "lazyvm.warm";

/// The host's vsock port the agent connects to once it listens, to say so (the host
/// then connects at once instead of at its next retry). vhost-device-vsock hands a
/// guest's connection to host port P to the unix socket `<uds-path>_P`.
pub const AGENT_READY_VSOCK_PORT: u32 = 1025;

/// Full ttrpc service name, as it appears in method paths.
pub const SERVICE_NAME: &str = "lazyvm.agent.v1.Agent";

/// The longest container or exec id lazyvm accepts.
pub const MAX_ID_LEN: usize = 128;

/// The one rule for container and exec ids, checked where ids enter (the shim's Create
/// and Exec) and again by the agent: `[A-Za-z0-9][A-Za-z0-9_.+-]*`, at most
/// [`MAX_ID_LEN`] bytes. Such an id is a plain file name (never `.` or `..`, no `/`), so it
/// can name host directories, nydusd mountpoints and guest paths alike.
pub fn valid_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["c1", "abc-1_2.3+4", "0", &"a".repeat(MAX_ID_LEN)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "a\n",
            "é",
            &"a".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
