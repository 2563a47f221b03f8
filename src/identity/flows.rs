//! Turns a flow and its gathered inputs into an `azure_identity` credential.

use super::transport::Transport;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{SecretBytes, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions, RetryOptions};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientCertificateCredential, ClientCertificateCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use url::Url;

/// Why a credential could not be built from its inputs.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The certificate or key could not be parsed.
    #[error("the client certificate is not usable: {0}")]
    CertificateInvalid(String),
    /// The private key does not belong to the certificate.
    #[error("the client certificate's private key does not match the certificate")]
    CertificateKeyMismatch,
    /// The certificate's thumbprint differs from the expected one.
    #[error("the client certificate's SHA-256 thumbprint is {actual}, not {expected}")]
    ThumbprintMismatch {
        /// What the spec expects.
        expected: String,
        /// What the certificate has.
        actual: String,
    },
    /// A value the flow needs is missing.
    #[error("{0}")]
    MissingValue(String),
    /// `azure_identity` refused the configuration.
    #[error("the credential could not be created: {0}")]
    CredentialRejected(String),
}

/// A certificate as PEM (certificate and private key) or PKCS#12.
pub enum CertificateInput {
    /// PEM certificate and PEM private key.
    Pem {
        /// Certificate (the first certificate in the data is the client's).
        cert: Vec<u8>,
        /// Private key.
        key: SecretBytes,
    },
    /// A PKCS#12 bundle and its password.
    Pkcs12 {
        /// The bundle.
        bundle: SecretBytes,
        /// Its password, if any.
        password: Option<SecretString>,
    },
}

impl fmt::Debug for CertificateInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateInput::Pem { .. } => f.write_str("CertificateInput::Pem(<redacted>)"),
            CertificateInput::Pkcs12 { .. } => f.write_str("CertificateInput::Pkcs12(<redacted>)"),
        }
    }
}

/// Produces a fresh client assertion (a ServiceAccount token) for every exchange.
#[async_trait::async_trait]
pub trait AssertionSource: Send + Sync + fmt::Debug + 'static {
    /// A new assertion.
    async fn assertion(&self) -> Result<SecretString, String>;
}

/// Everything needed to build one credential.
#[derive(Debug)]
pub enum CredentialInput {
    /// Service principal with a client secret.
    ClientSecret {
        /// Tenant.
        tenant: String,
        /// Application id.
        client_id: String,
        /// The secret.
        secret: SecretString,
    },
    /// Service principal with a certificate.
    Certificate {
        /// Tenant.
        tenant: String,
        /// Application id.
        client_id: String,
        /// Certificate and key.
        certificate: CertificateInput,
        /// Expected SHA-256 thumbprint, hex.
        thumbprint_sha256: Option<String>,
    },
    /// A federated assertion, such as a ServiceAccount token.
    Assertion {
        /// Tenant.
        tenant: String,
        /// Application id.
        client_id: String,
        /// Where assertions come from.
        source: Arc<dyn AssertionSource>,
    },
    /// Workload identity from a projected token file (the operator's own).
    WorkloadIdentityFile {
        /// Tenant.
        tenant: String,
        /// Application id.
        client_id: String,
        /// The token file.
        token_file: PathBuf,
    },
    /// A managed identity: system-assigned when `user_assigned` is `None`.
    ManagedIdentity {
        /// The user-assigned identity.
        user_assigned: Option<UserAssignedId>,
    },
}

/// What every credential shares: where the authority is and how requests are sent.
#[derive(Debug, Clone)]
pub struct CredentialContext {
    /// Authority host; `None` leaves the `azure_identity` default.
    pub authority_host: Option<Url>,
    /// The HTTP transport.
    pub transport: Arc<Transport>,
}

impl CredentialContext {
    fn client_options(&self) -> ClientOptions {
        let mut options = ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(azure_core::http::Transport::new(self.transport.clone())),
            ..Default::default()
        };
        if let Some(host) = &self.authority_host {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.as_str().trim_end_matches('/').to_string();
            options.cloud = Some(Arc::new(CloudConfiguration::Custom(custom)));
        }
        options
    }
}

/// Builds the credential for `input`.
///
/// # Errors
/// When the inputs are unusable or `azure_identity` refuses them.
pub fn build(
    ctx: &CredentialContext,
    input: CredentialInput,
) -> Result<Arc<dyn TokenCredential>, FlowError> {
    let rejected = |e: azure_core::Error| FlowError::CredentialRejected(e.to_string());
    let client_options = ctx.client_options();
    Ok(match input {
        CredentialInput::ClientSecret {
            tenant,
            client_id,
            secret,
        } => {
            let options = ClientSecretCredentialOptions { client_options };
            let secret = azure_core::credentials::Secret::new(secret.expose_secret().to_string());
            ClientSecretCredential::new(&tenant, client_id, secret, Some(options))
                .map_err(rejected)?
        }
        CredentialInput::Certificate {
            tenant,
            client_id,
            certificate,
            thumbprint_sha256,
        } => {
            let (bundle, password) = to_pkcs12(certificate, thumbprint_sha256.as_deref())?;
            let options = ClientCertificateCredentialOptions {
                client_options,
                password,
            };
            ClientCertificateCredential::new(tenant, client_id, bundle, Some(options))
                .map_err(rejected)?
        }
        CredentialInput::Assertion {
            tenant,
            client_id,
            source,
        } => {
            let options = ClientAssertionCredentialOptions { client_options };
            ClientAssertionCredential::new(
                tenant,
                client_id,
                SourceAssertion(source),
                Some(options),
            )
            .map_err(rejected)?
        }
        CredentialInput::WorkloadIdentityFile {
            tenant,
            client_id,
            token_file,
        } => {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(client_id),
                tenant_id: Some(tenant),
                token_file_path: Some(token_file),
            };
            WorkloadIdentityCredential::new(Some(options)).map_err(rejected)?
        }
        CredentialInput::ManagedIdentity { user_assigned } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: user_assigned,
                client_options,
            };
            ManagedIdentityCredential::new(Some(options)).map_err(rejected)?
        }
    })
}

#[derive(Debug)]
struct SourceAssertion(Arc<dyn AssertionSource>);

#[async_trait::async_trait]
impl ClientAssertion for SourceAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.0
            .assertion()
            .await
            .map(|s| s.expose_secret().to_string())
            .map_err(|message| {
                azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message)
            })
    }
}

/// Converts certificate input to the PKCS#12 bundle `azure_identity` takes, checking that the
/// key matches the certificate and, when given, the thumbprint.
fn to_pkcs12(
    input: CertificateInput,
    thumbprint_sha256: Option<&str>,
) -> Result<(SecretBytes, Option<azure_core::credentials::Secret>), FlowError> {
    use openssl::{pkcs12::Pkcs12, pkey::PKey, x509::X509};
    let invalid = |e: openssl::error::ErrorStack| FlowError::CertificateInvalid(short(&e));
    let (cert, key, password) = match input {
        CertificateInput::Pem { cert, key } => {
            let cert = X509::from_pem(&cert).map_err(invalid)?;
            let key = PKey::private_key_from_pem(key.bytes()).map_err(invalid)?;
            (cert, key, None)
        }
        CertificateInput::Pkcs12 { bundle, password } => {
            let pass = password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            let parsed = Pkcs12::from_der(bundle.bytes())
                .and_then(|p| p.parse2(&pass))
                .map_err(invalid)?;
            let (Some(cert), Some(key)) = (parsed.cert, parsed.pkey) else {
                return Err(FlowError::CertificateInvalid(
                    "the bundle lacks a certificate or key".into(),
                ));
            };
            (cert, key, password)
        }
    };
    let public = cert.public_key().map_err(invalid)?;
    if !public.public_eq(&key) {
        return Err(FlowError::CertificateKeyMismatch);
    }
    if let Some(expected) = thumbprint_sha256 {
        let actual = hex::encode(
            cert.digest(openssl::hash::MessageDigest::sha256())
                .map_err(invalid)?,
        );
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(FlowError::ThumbprintMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
    }
    let pass = password
        .as_ref()
        .map(|p| p.expose_secret().to_string())
        .unwrap_or_default();
    let bundle = Pkcs12::builder()
        .pkey(&key)
        .cert(&cert)
        .build2(&pass)
        .map_err(invalid)?;
    let der = bundle.to_der().map_err(invalid)?;
    let password =
        password.map(|p| azure_core::credentials::Secret::new(p.expose_secret().to_string()));
    Ok((SecretBytes::new(der), password))
}

/// The first reason OpenSSL gives, which never contains key material.
fn short(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|x| x.reason().map(str::to_string))
        .unwrap_or_else(|| "unreadable data".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::pki;

    fn pem(c: &pki::CertifiedKey) -> CertificateInput {
        CertificateInput::Pem {
            cert: c.cert_pem.clone().into_bytes(),
            key: SecretBytes::new(c.key_pem.clone().into_bytes()),
        }
    }

    #[test]
    fn a_pem_certificate_and_key_become_a_pkcs12_bundle() {
        let c = pki::rsa_client_certificate("app").unwrap();
        let (bundle, _) = to_pkcs12(pem(&c), None).unwrap();
        assert!(openssl::pkcs12::Pkcs12::from_der(bundle.bytes()).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = pki::rsa_client_certificate("a").unwrap();
        let b = pki::rsa_client_certificate("b").unwrap();
        let input = CertificateInput::Pem {
            cert: a.cert_pem.into_bytes(),
            key: SecretBytes::new(b.key_pem.into_bytes()),
        };
        assert!(matches!(
            to_pkcs12(input, None),
            Err(FlowError::CertificateKeyMismatch)
        ));
    }

    #[test]
    fn a_certificate_that_does_not_parse_is_refused_without_echoing_it() {
        let input = CertificateInput::Pem {
            cert: b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----".to_vec(),
            key: SecretBytes::new(b"secret-key-material".to_vec()),
        };
        let e = to_pkcs12(input, None).unwrap_err();
        assert!(matches!(e, FlowError::CertificateInvalid(_)));
        assert!(!e.to_string().contains("secret-key-material"));
    }

    #[test]
    fn a_thumbprint_mismatch_is_reported() {
        let c = pki::rsa_client_certificate("app").unwrap();
        let right = hex::encode(c.sha256_thumbprint());
        assert!(to_pkcs12(pem(&c), Some(&right)).is_ok());
        let wrong = "0".repeat(64);
        assert!(matches!(
            to_pkcs12(pem(&c), Some(&wrong)),
            Err(FlowError::ThumbprintMismatch { .. })
        ));
    }
}
