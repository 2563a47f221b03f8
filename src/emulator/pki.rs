//! Throw-away certificate authority for the emulators: a CA, TLS server certificates for
//! loopback names, and RSA client certificates for the certificate flow.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::Digest;
use std::path::Path;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation failed: {0}")]
    GenerateFailed(#[from] rcgen::Error),
    /// OpenSSL failed to make or convert an RSA key.
    #[error("RSA key generation failed: {0}")]
    RsaFailed(#[from] openssl::error::ErrorStack),
    /// A PEM file could not be written.
    #[error("writing {path} failed: {source}")]
    WriteFailed {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// SHA-1 thumbprint of the certificate (the `x5t` header value, before base64url).
    pub fn sha1_thumbprint(&self) -> Vec<u8> {
        openssl::sha::sha1(&self.cert_der).to_vec()
    }

    /// SHA-256 thumbprint of the certificate (the `x5t#S256` header value, before base64url).
    pub fn sha256_thumbprint(&self) -> Vec<u8> {
        sha2::Sha256::digest(&self.cert_der).to_vec()
    }

    /// Writes the certificate and key to `dir/<stem>.crt` and `dir/<stem>.key`.
    ///
    /// # Errors
    /// When either file cannot be written.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        write_file(&dir.join(format!("{stem}.crt")), &self.cert_pem)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem)
    }
}

/// A certificate authority that signs loopback server certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA whose certificate names `common_name`.
    ///
    /// # Errors
    /// When rcgen cannot generate the key or certificate.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what clients must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a TLS server certificate for `names` (DNS names or IP addresses).
    ///
    /// # Errors
    /// When a name is invalid or signing fails.
    pub fn issue_server(&self, names: &[&str]) -> Result<CertifiedKey, PkiError> {
        let sans: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(names.first().copied().unwrap_or("emulator"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// Writes the CA certificate to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_cert(&self, path: &Path) -> Result<(), PkiError> {
        write_file(path, &self.cert_pem)
    }
}

/// Makes a self-signed RSA-2048 certificate, as an Entra ID application's client
/// certificate is (the certificate flow signs its assertion with RS256).
///
/// # Errors
/// When key generation or signing fails.
pub fn rsa_client_certificate(common_name: &str) -> Result<CertifiedKey, PkiError> {
    let rsa = openssl::rsa::Rsa::generate(2048)?;
    let pkey = openssl::pkey::PKey::from_rsa(rsa)?;
    let key_pem = String::from_utf8_lossy(&pkey.private_key_to_pem_pkcs8()?).into_owned();
    let key = KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(common_name);
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem,
        cert_der: cert.der().to_vec(),
    })
}

/// Makes an RSA-2048 private key, PKCS#8 PEM, for signing JWTs.
///
/// # Errors
/// When OpenSSL fails.
pub fn rsa_private_key_pem() -> Result<String, PkiError> {
    let rsa = openssl::rsa::Rsa::generate(2048)?;
    let pkey = openssl::pkey::PKey::from_rsa(rsa)?;
    Ok(String::from_utf8_lossy(&pkey.private_key_to_pem_pkcs8()?).into_owned())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(|source| PkiError::WriteFailed {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_chains_to_the_ca() {
        let ca = Ca::new("test CA").unwrap();
        let leaf = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let ca_x509 = openssl::x509::X509::from_pem(ca.cert_pem().as_bytes()).unwrap();
        let leaf_x509 = openssl::x509::X509::from_pem(leaf.cert_pem.as_bytes()).unwrap();
        assert!(leaf_x509.verify(&ca_x509.public_key().unwrap()).unwrap());
    }

    #[test]
    fn client_certificate_is_rsa_and_matches_its_key() {
        let c = rsa_client_certificate("app").unwrap();
        let x = openssl::x509::X509::from_pem(c.cert_pem.as_bytes()).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(c.key_pem.as_bytes()).unwrap();
        assert!(x.public_key().unwrap().public_eq(&key));
        assert_eq!(key.id(), openssl::pkey::Id::RSA);
        assert_eq!(c.sha1_thumbprint().len(), 20);
    }

    #[test]
    fn debug_output_hides_the_private_key() {
        let c = rsa_client_certificate("app").unwrap();
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    }
}
