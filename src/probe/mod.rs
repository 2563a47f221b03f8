//! Verifies credentials against Redis for real: TCP, TLS, AUTH, PING, ACL WHOAMI.
pub mod cli;
