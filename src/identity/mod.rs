//! Entra ID flows turned into `azure_identity` credentials, token claims, and the shared cache.

pub mod claims;
