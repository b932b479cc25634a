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

/// Full ttrpc service name, as it appears in method paths.
pub const SERVICE_NAME: &str = "lazyvm.agent.v1.Agent";
