//! The Socket.IO gateway. Arrives with the gateway issue; the crate exists so the workspace has its final shape.
