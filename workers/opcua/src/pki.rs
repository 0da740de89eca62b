//! The connector's OPC-UA PKI under `<state_dir>/pki`, in async-opcua's layout:
//! `own/cert.der` and `private/private.pem` (this connector's application instance
//! certificate and key), `trusted/` and `rejected/` (server certificates, one file each,
//! named `<CN> [<SHA-1 thumbprint>].der`).
//!
//! All OPC-UA sources of one connector share it: the servers trust one connector
//! certificate, and a server certificate trusted once is trusted for every source. The key
//! pair is created once, under an exclusive file lock (several workers may start at the same
//! moment), and reused on every later start: it is never replaced behind the operator's back.
//!
//! Trust is by pinning: a server certificate is trusted when its exact file is in `trusted/`.
//! An unknown one is written to `rejected/` and reported with its thumbprint and the `mv` that
//! trusts it; the worker checks again on every retry, so moving the file is all it takes.

use std::{
    fs,
    path::{Path, PathBuf},
};

use opcua::{
    crypto::{CertificateStore, X509, X509Data},
    types::DateTime,
};

/// Years the connector's own certificate is valid for.
const OWN_CERT_DAYS: u32 = 5 * 365;

/// Why the PKI could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A directory or the lock file could not be created or locked.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key pair could not be created.
    #[error("cannot create the client certificate in {path}: {reason}")]
    Create {
        /// The PKI directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The existing certificate could not be read.
    #[error("cannot read the client certificate {path}: {reason}")]
    Read {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The prepared PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// `<state_dir>/pki`.
    pub dir: PathBuf,
    /// The application URI in the client certificate (and in every CreateSession).
    pub application_uri: String,
    /// SHA-1 thumbprint of the client certificate (what server trust lists show).
    pub own_thumbprint: String,
    /// Days until the client certificate expires (negative: expired).
    pub days_left: i64,
}

impl Pki {
    /// Creates the folders and, the first time only, the client key pair; reads the
    /// certificate's URI and expiry. Blocking (RSA key generation): run it off the runtime.
    pub fn prepare(dir: &Path, connector_id: &str) -> Result<Self, PkiError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PkiError::Io { path, source }
        };
        for sub in ["own", "private", "trusted", "rejected"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io(&path))?;
        }
        for private in [dir, &dir.join("private")] {
            restrict(private, 0o700).map_err(io(private))?;
        }
        let lock_path = dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let cert_path = dir.join("own/cert.der");
        let key_path = dir.join("private/private.pem");
        let wanted_uri = format!("urn:iot-connector:{connector_id}");
        if !cert_path.exists() || !key_path.exists() {
            tracing::info!(pki = %dir.display(), "Creating the connector's OPC-UA client certificate (once).");
            CertificateStore::create_certificate_and_key(
                &own_cert_data(&wanted_uri),
                true,
                &cert_path,
                &key_path,
            )
            .map_err(|reason| PkiError::Create {
                path: dir.to_owned(),
                reason,
            })?;
        }
        // A key made by an earlier release under a wider umask is narrowed too.
        restrict(&key_path, 0o600).map_err(io(&key_path))?;
        drop(lock);
        let cert = CertificateStore::read_cert(&cert_path).map_err(|reason| PkiError::Read {
            path: cert_path.clone(),
            reason,
        })?;
        if cert.is_application_uri_valid(&wanted_uri).is_err() {
            tracing::warn!(
                pki = %dir.display(),
                application_uri = %wanted_uri,
                "The client certificate was made for another connector id; servers that check it \
                 will refuse the session. Remove own/cert.der and private/private.pem to make a new one."
            );
        }
        let days_left = days_left(&cert);
        Ok(Self {
            dir: dir.to_owned(),
            application_uri: wanted_uri,
            own_thumbprint: cert.thumbprint().as_hex_string(),
            days_left,
        })
    }

    /// Where the client certificate is.
    pub fn own_cert_path(&self) -> PathBuf {
        self.dir.join("own/cert.der")
    }

    /// Whether the server certificate (DER) is trusted (then: its days to expiry); if not, it
    /// is written to `rejected/` (where the operator reviews it) and the report says how to
    /// trust it.
    pub fn check_server(&self, der: &[u8]) -> Result<i64, Untrusted> {
        let cert = X509::from_der(der).map_err(|e| Untrusted {
            message: format!("the server sent a certificate that does not parse: {e}"),
        })?;
        let name = CertificateStore::cert_file_name(&cert);
        let trusted = self.dir.join("trusted").join(&name);
        if fs::read(&trusted).is_ok_and(|on_disk| on_disk == der) {
            return Ok(days_left(&cert));
        }
        let rejected = self.dir.join("rejected").join(&name);
        if !rejected.exists() {
            let _ = fs::write(&rejected, der);
        }
        Err(Untrusted {
            message: untrusted_message(
                &cert.subject_name(),
                &cert.thumbprint().as_hex_string(),
                &rejected,
                &trusted,
            ),
        })
    }
}

fn days_left(cert: &X509) -> i64 {
    cert.not_after()
        .map(|t| (t - DateTime::now().as_chrono()).num_days())
        .unwrap_or(0)
}

/// A server certificate that is not (yet) trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// What to tell the operator.
    pub message: String,
}

/// The operator's instruction for an untrusted server certificate.
pub fn untrusted_message(
    subject: &str,
    thumbprint: &str,
    rejected: &Path,
    trusted: &Path,
) -> String {
    format!(
        "the server certificate {subject} (SHA-1 thumbprint {thumbprint}) is not trusted; \
         after checking the thumbprint with the server's administrator, trust it with: \
         mv '{}' '{}'",
        rejected.display(),
        trusted.display()
    )
}

fn own_cert_data(application_uri: &str) -> X509Data {
    X509Data {
        key_size: 2048,
        common_name: "iot-connector".into(),
        organization: "iot-connector".into(),
        organizational_unit: "OPC-UA client".into(),
        country: String::new(),
        state: String::new(),
        alt_host_names: X509Data::alt_host_names(application_uri, None, true, true, true),
        certificate_duration_days: OWN_CERT_DAYS,
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_untrusted_report_names_fingerprint_and_both_paths() {
        let message = untrusted_message(
            "CN=plc",
            "0a1b2c",
            Path::new("/s/pki/rejected/plc [0a1b2c].der"),
            Path::new("/s/pki/trusted/plc [0a1b2c].der"),
        );
        assert!(message.contains("0a1b2c"));
        assert!(
            message.contains(
                "mv '/s/pki/rejected/plc [0a1b2c].der' '/s/pki/trusted/plc [0a1b2c].der'"
            )
        );
    }
}
