//! The Kubernetes controller: reconcile AmrCredentials into Secrets.
