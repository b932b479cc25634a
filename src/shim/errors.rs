//! ttrpc statuses the shim answers with, and lazyvm's id rule at the edge.

use containerd_shim::TtrpcResult;
use containerd_shim_protos::ttrpc::{Code, Error as TtrpcError, Status};

/// A ttrpc status error.
pub(super) fn status_error(code: Code, message: impl Into<String>) -> TtrpcError {
    let mut s = Status::new();
    s.set_code(code);
    s.set_message(message.into());
    TtrpcError::RpcStatus(s)
}

/// NOT_FOUND for `what`.
pub(super) fn not_found(what: &str) -> TtrpcError {
    status_error(Code::NOT_FOUND, format!("{what} not found"))
}

/// lazyvm's one id rule ([`lazyvm_proto::valid_id`]), checked here where ids enter, so
/// that no id passes the shim and is refused later, after host mounts were made.
pub(super) fn check_id(what: &str, id: &str) -> TtrpcResult<()> {
    if lazyvm_proto::valid_id(id) {
        Ok(())
    } else {
        Err(status_error(
            Code::INVALID_ARGUMENT,
            format!(
                "invalid {what} {id:?}: lazyvm wants [A-Za-z0-9][A-Za-z0-9_.+-]*, at most {} bytes",
                lazyvm_proto::MAX_ID_LEN
            ),
        ))
    }
}

/// INTERNAL with `e`'s message.
pub(super) fn internal(e: impl std::fmt::Display) -> TtrpcError {
    status_error(Code::INTERNAL, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_at_the_edge() {
        assert!(check_id("container id", "c1").is_ok());
        let e = check_id("exec id", "../x").unwrap_err();
        assert!(e.to_string().contains("invalid exec id"), "{e}");
        assert!(check_id("container id", &"a".repeat(129)).is_err());
    }
}
