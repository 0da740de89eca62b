//! `iot-connector-uplink`, started by the supervisor with its control channel on an inherited
//! descriptor. See the library documentation for its role and trust level.
#![forbid(unsafe_code)]

use std::{path::Path, process::ExitCode, sync::Arc};

use iot_connector_ipc::{
    DataListener, ExitStatus, FrameReader, FrameWriter, IpcError, expect, handshake, os,
};
use iot_connector_proto::{ChildReport, Message, Role, UplinkSettings};
use iot_connector_uplink::{
    forward,
    server::Hub,
    spool::{SealKey, Spool, SpoolError},
    stats::Stats,
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
    Forward(#[from] forward::ForwardError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl UplinkError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Control(_) => ExitStatus::Protocol,
            Self::Spool(
                SpoolError::Key { .. }
                | SpoolError::Format { .. }
                | SpoolError::KeyMismatch { .. }
                | SpoolError::Decrypt(_),
            ) => ExitStatus::Config,
            Self::Forward(_) => ExitStatus::Config,
            Self::Spool(_) | Self::Listen { .. } | Self::Runtime(_) => ExitStatus::OsErr,
        }
    }
}

fn main() -> ExitCode {
    iot_connector_ipc::init_logging();
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
    let settings = reader.expect(expect::UPLINK_CONFIG).await?;
    let (hub, listener, shared) = start(&settings)?;
    hub.started(iot_connector_uplink::UPLINK_SOURCE, &settings.start);
    if let Some(aside) = shared.spool.set_aside() {
        hub.status(
            iot_connector_uplink::UPLINK_SOURCE,
            iot_connector_proto::StatusEvent::Dropped,
            aside.describe(),
            aside.rows.unwrap_or(0),
        );
    }
    writer.send(&Message::Ready).await?;
    tokio::spawn(heartbeats(writer, Arc::clone(&shared)));
    tokio::spawn(Arc::clone(&hub).serve(listener));
    let control = async {
        // Until the supervisor is gone: then stop; the spool keeps what is not forwarded yet.
        while let Some(grant) = reader.next(expect::UPLINK_CONTROL).await? {
            hub.started(&grant.source, &grant.start);
            hub.grant(grant);
        }
        Ok(())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(UplinkError::Runtime)?;
    tokio::select! {
        result = control => result,
        _ = terminate.recv() => {
            // The supervisor stops the workers first; commit what they sent, then go. Whatever is
            // not forwarded yet stays in the spool for the next start.
            hub.drain().await;
            tracing::info!("Stopped on SIGTERM; the spool holds the rest.");
            Ok(())
        }
    }
}

/// Tells the supervisor every second that the uplink is alive, with its counters.
async fn heartbeats(
    mut writer: FrameWriter<tokio::net::unix::OwnedWriteHalf>,
    shared: Arc<forward::Shared>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let shared = Arc::clone(&shared);
        let Ok(report) =
            tokio::task::spawn_blocking(move || shared.stats.report(&shared.spool)).await
        else {
            return;
        };
        let message = Message::Heartbeat(ChildReport::Uplink(report));
        if writer.send(&message).await.is_err() {
            return;
        }
    }
}

type Started = (Arc<Hub>, DataListener, Arc<forward::Shared>);

fn start(settings: &UplinkSettings) -> Result<Started, UplinkError> {
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
    let shared = Arc::new(forward::Shared {
        connector_id: settings.connector_id.clone(),
        spool: Arc::clone(&spool),
        committed: Arc::new(tokio::sync::Notify::new()),
        stats: Arc::new(Stats::default()),
    });
    let (requests, queue) = std::sync::mpsc::channel();
    {
        let (spool, connector_id, committed, stats) = (
            Arc::clone(&spool),
            settings.connector_id.clone(),
            Arc::clone(&shared.committed),
            Arc::clone(&shared.stats),
        );
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer::run(spool, connector_id, queue, committed, stats))
            .map_err(UplinkError::Runtime)?;
    }
    let listener = DataListener::bind(Path::new(&settings.data_socket)).map_err(|source| {
        UplinkError::Listen {
            path: settings.data_socket.clone(),
            source,
        }
    })?;
    if let Some(zerobus) = &settings.zerobus {
        forward::start(&shared, zerobus)?;
    }
    tokio::spawn(compact_when_drained(
        Arc::clone(&spool),
        Path::new(&settings.spool_dir).join("spool.redb"),
    ));
    let hub = Arc::new(Hub::new(
        settings.connector_id.clone(),
        requests,
        Arc::clone(&shared.stats),
    ));
    for grant in &settings.grants {
        hub.grant(grant.clone());
    }
    Ok((hub, listener, shared))
}

/// redb keeps its file at the high-water mark; once everything is forwarded, give the disk back.
async fn compact_when_drained(spool: Arc<Spool>, file: std::path::PathBuf) {
    const SLACK_BYTES: u64 = 4 << 20;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        if !std::fs::metadata(&file).is_ok_and(|m| m.len() > SLACK_BYTES) {
            continue;
        }
        // The look at the spool and the compaction block: they run where blocking is allowed.
        let spool = Arc::clone(&spool);
        let compacted = tokio::task::spawn_blocking(move || {
            let drained = spool.stats()?.rows.iter().all(|r| *r == 0);
            drained.then(|| spool.compact()).transpose()
        })
        .await;
        match compacted {
            Ok(Ok(Some(_))) => tracing::info!("Compacted the drained spool."),
            Ok(Err(e)) => tracing::warn!(error = %e, "Spool compaction failed."),
            Ok(Ok(None)) | Err(_) => {}
        }
    }
}
