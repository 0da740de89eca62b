//! A throw-away certificate authority and a server certificate for `localhost` and `127.0.0.1`,
//! so the emulator serves TLS exactly like the production path expects (custom CA file, no
//! plaintext). The keys live only in memory and die with the emulator.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::SimError;

/// A freshly generated CA and a server certificate it signed, all PEM encoded.
#[derive(Clone)]
pub struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_pem", &self.ca_pem)
            .field("server_key_pem", &"***")
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// Generates a CA and a server certificate valid for `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<Self, SimError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(SimError::Pki)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "iot-connector Zerobus emulator test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(SimError::Pki)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(SimError::Pki)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(SimError::Pki)?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().map_err(SimError::Pki)?;
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(SimError::Pki)?;

        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_cert_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
        })
    }

    /// The CA certificate a client must trust, PEM encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate (signed by the CA), PEM encoded.
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// The server's private key, PEM encoded (PKCS#8).
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    /// The server certificate chain and key in the form rustls takes them.
    pub(crate) fn server_identity_der(
        &self,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.server_cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
        )
    }

    /// Writes the CA certificate to `path`, for clients configured with a `ca_file`.
    pub fn write_ca_pem(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, &self.ca_pem).map_err(|source| SimError::WriteCa {
            path: path.to_path_buf(),
            source,
        })
    }
}
