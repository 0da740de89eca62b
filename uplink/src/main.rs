//! `iot-connector-uplink`, started by the supervisor with its control channel on an inherited
//! descriptor. See the library documentation for its role and trust level.
#![forbid(unsafe_code)]

use std::{path::Path, process::ExitCode, sync::Arc};

use iot_connector_ipc::{ExitStatus, FrameReader, FrameWriter, IpcError, Phase, handshake, os};
use iot_connector_proto::{Message, Role, UplinkSettings};
use iot_connector_uplink::{
    server::Hub,
    spool::{SealKey, Spool, SpoolError},
    writer,
};

#[derive(Debug, thiserror::Error)]
enum UplinkError {
    #[error("control channel: {0}")]
    Control(#[from] IpcError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("cannot listen on data socket {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Forward(#[from] iot_connector_uplink::forward::ForwardError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl UplinkError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Control(_) => ExitStatus::Protocol,
            Self::Spool(
                SpoolError::Key { .. } | SpoolError::Format { .. } | SpoolError::Decrypt(_),
            ) => ExitStatus::Config,
            Self::Forward(_) => ExitStatus::Config,
            Self::Spool(_) | Self::Listen { .. } | Self::Runtime(_) => ExitStatus::OsErr,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitStatus::Ok.into(),
        Err(e) => {
            tracing::error!(error = %e, "Uplink stopped.");
            e.exit_status().into()
        }
    }
}

fn run() -> Result<(), UplinkError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(UplinkError::Runtime)?;
    runtime.block_on(serve())
}

async fn serve() -> Result<(), UplinkError> {
    let control = os::inherited_control().map_err(IpcError::Io)?;
    let (rx, tx) = control.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    handshake(&mut reader, &mut writer, Role::Uplink, Role::Supervisor).await?;
    let Message::ConfigureUplink(settings) = reader.recv_in(Phase::ChildAwaitingConfig).await?
    else {
        return Err(IpcError::Handshake("expected ConfigureUplink".into()).into());
    };
    let hub = start(&settings).await?;
    writer.send(&Message::Ready).await?;
    loop {
        match reader.recv().await? {
            // The supervisor is gone: stop; the spool keeps whatever is not forwarded yet.
            None => return Ok(()),
            Some(message) => {
                if let Message::Grant(grant) = Phase::UplinkControl.check(message)? {
                    hub.grant(grant);
                }
            }
        }
    }
}

async fn start(settings: &UplinkSettings) -> Result<Arc<Hub>, UplinkError> {
    let key = settings
        .key_file
        .as_deref()
        .map(|f| SealKey::load_or_create(Path::new(f)))
        .transpose()?;
    let spool = Arc::new(Spool::open(
        Path::new(&settings.spool_dir),
        key,
        settings.max_bytes,
        settings.full_policy,
    )?);
    let (requests, queue) = std::sync::mpsc::channel();
    let committed = Arc::new(tokio::sync::Notify::new());
    {
        let (spool, connector_id, committed) = (
            Arc::clone(&spool),
            settings.connector_id.clone(),
            Arc::clone(&committed),
        );
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer::run(spool, connector_id, queue, committed))
            .map_err(UplinkError::Runtime)?;
    }
    let listener = iot_connector_ipc::DataListener::bind(Path::new(&settings.data_socket))
        .map_err(|source| UplinkError::Listen {
            path: settings.data_socket.clone(),
            source,
        })?;
    if let Some(zerobus) = &settings.zerobus {
        iot_connector_uplink::forward::start(&settings.connector_id, &spool, zerobus, &committed)?;
    }
    tokio::spawn(compact_when_drained(
        Arc::clone(&spool),
        Path::new(&settings.spool_dir).join("spool.redb"),
    ));
    let hub = Arc::new(Hub::new(settings.connector_id.clone(), requests));
    for grant in &settings.grants {
        hub.grant(grant.clone());
    }
    let serving = Arc::clone(&hub);
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            tracing::error!(error = %e, "Data socket failed.");
        }
    });
    Ok(hub)
}

/// redb keeps its file at the high-water mark; once everything is forwarded, give the disk back.
async fn compact_when_drained(spool: Arc<Spool>, file: std::path::PathBuf) {
    const SLACK_BYTES: u64 = 4 << 20;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let drained = spool.stats().is_ok_and(|s| s.rows.iter().all(|r| *r == 0));
        let large = std::fs::metadata(&file).is_ok_and(|m| m.len() > SLACK_BYTES);
        if drained && large {
            let spool = Arc::clone(&spool);
            match tokio::task::spawn_blocking(move || spool.compact()).await {
                Ok(Ok(_)) => tracing::info!("Compacted the drained spool."),
                Ok(Err(e)) => tracing::warn!(error = %e, "Spool compaction failed."),
                Err(_) => {}
            }
        }
    }
}
