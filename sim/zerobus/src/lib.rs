//! A local Zerobus emulator for tests and the demo: a fake Zerobus gRPC service and a fake Unity
//! Catalog OAuth token endpoint, both served over TLS on `127.0.0.1` with a CA generated at
//! start, with fault knobs a test can turn at run time.
//!
//! Role: stands in for Databricks so the real `databricks-zerobus-ingest-sdk` (and our uplink on
//! top of it) can be driven through its production TLS path with a custom CA. The gRPC side
//! decodes every record with the schema the client sent at stream creation and keeps each
//! acknowledged row as JSON ([`SimState`]); the token side records each call.
//!
//! Trust level: test-only code, never shipped in the connector. It still treats everything a
//! client sends (metadata, descriptors, records, table names used as sink file names, HTTP
//! requests) as untrusted input: malformed input is answered with a gRPC or HTTP error, never a
//! panic. It uses no `unsafe`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iot_connector_sim_zerobus::SimError> {
//! let emulator = iot_connector_sim_zerobus::start(Default::default()).await?;
//! // Point the SDK at emulator.grpc_url() / emulator.oauth_url(), trusting emulator.ca_pem().
//! emulator.faults().update(|f| f.oauth_status = Some(401));
//! let rows = emulator.state().wait_for_rows("main.edge.telemetry", 10, std::time::Duration::from_secs(5)).await?;
//! # drop(rows); Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod faults;
mod grpc;
mod oauth;
mod pki;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use faults::{DropStream, Faults, FaultsHandle, RotateStream};
pub use oauth::{ACCESS_TOKEN, TOKEN_PATH};
pub use pki::TestPki;
pub use state::{OAuthRequest, SimState, StreamMetadata};
/// gRPC status codes, for [`Faults::refuse_create`].
pub use tonic::Code;

/// Largest gRPC message the emulator accepts. The SDK sends up to 10 MiB per request; tonic's
/// default of 4 MiB would reject large batches.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How to start the emulator. `Default` is an in-memory emulator with no sink.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// When set, every acknowledged row is also appended as one JSON line to
    /// `<sink_dir>/<table_name>.jsonl`. The directory is created if missing.
    pub sink_dir: Option<PathBuf>,
}

/// Everything that can fail while starting or querying the emulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// rcgen could not generate the test CA or server certificate.
    #[error("generating the test certificates failed")]
    Pki(#[source] rcgen::Error),
    /// tonic rejected the server TLS identity.
    #[error("configuring TLS for the gRPC server failed")]
    GrpcTls(#[source] tonic::transport::Error),
    /// rustls rejected the token endpoint's TLS configuration.
    #[error("configuring TLS for the token endpoint failed")]
    OAuthTls(#[source] rustls::Error),
    /// Binding a listener on 127.0.0.1 failed.
    #[error("binding the {server} listener on 127.0.0.1 failed")]
    Bind {
        /// `gRPC` or `token endpoint`.
        server: &'static str,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the CA certificate file failed.
    #[error("writing the CA certificate to {path} failed")]
    WriteCa {
        /// The file that could not be written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Creating the sink directory or appending to a sink file failed.
    #[error("writing the sink file {path} failed")]
    Sink {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `wait_for_rows` gave up.
    #[error("timed out after {timeout:?} waiting for {wanted} rows in {table}: {got} arrived")]
    WaitForRows {
        /// The table waited on.
        table: String,
        /// Rows wanted.
        wanted: usize,
        /// Rows present at the deadline.
        got: usize,
        /// How long it waited.
        timeout: Duration,
    },
}

/// A running emulator. Both servers stop when it is dropped or shut down.
#[derive(Debug)]
pub struct Emulator {
    grpc_url: String,
    oauth_url: String,
    pki: TestPki,
    state: SimState,
    faults: FaultsHandle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Generates a CA, binds both servers on `127.0.0.1:0` and starts serving.
pub async fn start(options: EmulatorOptions) -> Result<Emulator, SimError> {
    if let Some(dir) = &options.sink_dir {
        std::fs::create_dir_all(dir).map_err(|source| SimError::Sink {
            path: dir.clone(),
            source,
        })?;
    }
    let pki = TestPki::generate()?;
    let state = SimState::new(options.sink_dir);
    let faults = FaultsHandle::default();
    let (shutdown, shutdown_rx) = watch::channel(false);

    let grpc_listener = bind("gRPC").await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| SimError::Bind {
            server: "gRPC",
            source,
        })?;
    let service = grpc::ZerobusService::new(state.clone(), faults.clone(), shutdown_rx.clone());
    let router = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(
            pki.server_cert_pem(),
            pki.server_key_pem(),
        )))
        .map_err(SimError::GrpcTls)?
        .add_service(
            grpc::pb::zerobus_server::ZerobusServer::new(service)
                .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES),
        );
    let mut grpc_shutdown = shutdown_rx.clone();
    let grpc_task = tokio::spawn(async move {
        let incoming = TcpListenerStream::new(grpc_listener);
        let stop = async move {
            // An error means the Emulator is gone, which is a stop too.
            let _ = grpc_shutdown.changed().await;
        };
        if let Err(err) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::warn!(error = %err, "Zerobus emulator gRPC server failed.");
        }
    });

    let oauth_listener = bind("token endpoint").await?;
    let oauth_addr = oauth_listener
        .local_addr()
        .map_err(|source| SimError::Bind {
            server: "token endpoint",
            source,
        })?;
    let (chain, key) = pki.server_identity_der();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(SimError::OAuthTls)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(SimError::OAuthTls)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let oauth_task = tokio::spawn(oauth::serve(
        oauth_listener,
        Arc::new(tls),
        state.clone(),
        faults.clone(),
        shutdown_rx,
    ));

    tracing::info!(grpc = %grpc_addr, oauth = %oauth_addr, "Zerobus emulator started.");
    Ok(Emulator {
        grpc_url: format!("https://{grpc_addr}"),
        oauth_url: format!("https://{oauth_addr}"),
        pki,
        state,
        faults,
        shutdown,
        tasks: vec![grpc_task, oauth_task],
    })
}

async fn bind(server: &'static str) -> Result<TcpListener, SimError> {
    TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| SimError::Bind { server, source })
}

impl Emulator {
    /// The Zerobus endpoint, `https://127.0.0.1:PORT` (the SDK derives workspace id `127`).
    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// The Unity Catalog URL whose `/oidc/v1/token` is the fake token endpoint.
    pub fn oauth_url(&self) -> &str {
        &self.oauth_url
    }

    /// The CA certificate both servers chain to, PEM encoded.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// Writes the CA certificate to `path`, for clients configured with a `ca_file`.
    pub fn write_ca_pem(&self, path: &Path) -> Result<(), SimError> {
        self.pki.write_ca_pem(path)
    }

    /// The certificates the servers use.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// What the emulator saw so far.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// The fault knobs.
    pub fn faults(&self) -> &FaultsHandle {
        &self.faults
    }

    /// Stops both servers: open streams end with `UNAVAILABLE`, listeners close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // A cancelled task is the expected outcome.
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}
