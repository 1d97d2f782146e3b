//! The ktstr host.
