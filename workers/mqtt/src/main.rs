//! `iot-connector-mqtt`: the MQTT worker, one process per broker source. It subscribes to the
//! configured topic filters (MQTT 3.1.1 or 5, `mqtt://` or `mqtts://` with rustls on ring),
//! turns every message into records of the mqtt table (`json`, `text`, `binary` or
//! `sparkplug_b` payloads), pushes them to the uplink through `iot-connector-runtime`, and
//! sends PUBACK/PUBREC only once the uplink holds them durably. With a persistent session a crash
//! anywhere means the broker redelivers: at least once, never lost.
//!
//! Trust: the broker and every publisher behind it are untrusted. Topics, payloads, Sparkplug
//! births and packet ids are decoded without panics, with bounded memory (payload size, bytes
//! in flight, Sparkplug state) and rate-limited logging; a payload that does not parse is kept
//! raw and flagged, never dropped. The supervisor and the uplink are trusted peers. The worker
//! never publishes to the broker. No `unsafe`.
#![forbid(unsafe_code)]

mod payload;
mod session;

use std::{process::ExitCode, sync::Arc};

use iot_connector_config::MqttSource;
use iot_connector_runtime::{Context, InvalidSource, Sink, Worker};

struct Mqtt {
    plan: session::Plan,
    decoder: payload::Decoder,
}

impl Worker for Mqtt {
    type Source = MqttSource;
    type Error = InvalidSource;
    const NAME: &'static str = "MQTT";

    fn prepare(source: MqttSource, context: &Context) -> Result<Self, InvalidSource> {
        // rustls wants one process-wide crypto provider before any TLS configuration is built:
        // ring, the project's one crypto stack (aws-lc is not even compiled in). An error only
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plan = session::Plan::new(&source, &context.connector_id, &context.source_name)
            .map_err(|problems| context.invalid(problems))?;
        let decoder = payload::Decoder::new(&source.topics, payload::Limits::of(&source));
        tracing::info!(source = %context.source_name, plan = ?plan, "Starting.");
        Ok(Self { plan, decoder })
    }

    async fn run(self, _: Context, sink: Arc<Sink>) -> Result<(), InvalidSource> {
        session::run(self.plan, self.decoder, sink).await;
        Ok(())
    }
}

fn main() -> ExitCode {
    iot_connector_runtime::main::<Mqtt>()
}
