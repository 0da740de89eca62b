//! The fake Zerobus gRPC service: `EphemeralStream` only, with the SDK's wire rules (create
//! first, per-stream 0-based offsets, cumulative acks for offsets actually received) and the
//! scripted faults of [`crate::Faults`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
#[cfg(test)]
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::faults::{DropDecision, FaultsHandle};
use crate::state::{Row, SimState, StreamMetadata};

#[allow(
    missing_debug_implementations,
    unused_qualifications,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub(crate) mod pb {
    tonic::include_proto!("databricks.zerobus");
}

use pb::zerobus_server::Zerobus;
use pb::{
    CloseStreamSignal, CreateIngestStreamRequest, CreateIngestStreamResponse,
    EphemeralStreamRequest, EphemeralStreamResponse, IngestRecordResponse, PersistentStreamRequest,
    PersistentStreamResponse, RecordType, RetireStreamRequest, RetireStreamResponse,
    ephemeral_stream_request, ephemeral_stream_response, ingest_record_batch_request,
    ingest_record_request,
};

/// Responses buffered per stream before the session waits for the client to read.
const RESPONSE_BUFFER: usize = 256;

type ResponseTx = mpsc::Sender<Result<EphemeralStreamResponse, Status>>;

/// The service handed to tonic; one [`Session`] task runs per `EphemeralStream` call.
#[derive(Debug)]
pub(crate) struct ZerobusService {
    state: SimState,
    faults: FaultsHandle,
    shutdown: watch::Receiver<bool>,
    next_stream_id: Arc<AtomicU64>,
}

impl ZerobusService {
    pub(crate) fn new(
        state: SimState,
        faults: FaultsHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            state,
            faults,
            shutdown,
            next_stream_id: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl Zerobus for ZerobusService {
    type EphemeralStreamStream = ReceiverStream<Result<EphemeralStreamResponse, Status>>;
    type PersistentStreamStream = ReceiverStream<Result<PersistentStreamResponse, Status>>;

    async fn ephemeral_stream(
        &self,
        request: Request<Streaming<EphemeralStreamRequest>>,
    ) -> Result<Response<Self::EphemeralStreamStream>, Status> {
        let headers = Headers::from_metadata(request.metadata());
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let session = Session {
            state: self.state.clone(),
            faults: self.faults.clone(),
            shutdown: self.shutdown.clone(),
            stream_id: format!(
                "sim-stream-{}",
                self.next_stream_id.fetch_add(1, Ordering::Relaxed) + 1
            ),
        };
        tokio::spawn(session.run(headers, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn persistent_stream(
        &self,
        _request: Request<Streaming<PersistentStreamRequest>>,
    ) -> Result<Response<Self::PersistentStreamStream>, Status> {
        Err(Status::unimplemented(
            "the emulator implements EphemeralStream only",
        ))
    }

    async fn retire_stream(
        &self,
        _request: Request<RetireStreamRequest>,
    ) -> Result<Response<RetireStreamResponse>, Status> {
        Err(Status::unimplemented(
            "the emulator implements EphemeralStream only",
        ))
    }
}

/// The request headers the emulator records.
struct Headers {
    authorization: Option<String>,
    table_name: Option<String>,
    user_agent: Option<String>,
}

impl Headers {
    fn from_metadata(metadata: &MetadataMap) -> Self {
        let get = |key: &str| {
            metadata
                .get(key)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            authorization: get("authorization"),
            table_name: get("x-databricks-zerobus-table-name"),
            user_agent: get("user-agent"),
        }
    }
}

struct Session {
    state: SimState,
    faults: FaultsHandle,
    shutdown: watch::Receiver<bool>,
    stream_id: String,
}

impl Session {
    async fn run(
        mut self,
        headers: Headers,
        mut inbound: Streaming<EphemeralStreamRequest>,
        tx: ResponseTx,
    ) {
        if let Err(status) = self.serve(headers, &mut inbound, &tx).await {
            tracing::debug!(stream_id = %self.stream_id, code = ?status.code(), message = status.message(), "Ending stream with an error.");
            // The client may already be gone; nobody is left to tell then.
            let _ = tx.send(Err(status)).await;
        }
    }

    /// Serves one stream. `Ok` ends it with status OK, `Err` with that status.
    async fn serve(
        &mut self,
        headers: Headers,
        inbound: &mut Streaming<EphemeralStreamRequest>,
        tx: &ResponseTx,
    ) -> Result<(), Status> {
        let create = match inbound.message().await? {
            Some(EphemeralStreamRequest {
                payload: Some(ephemeral_stream_request::Payload::CreateStream(create)),
            }) => create,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be create_stream",
                ));
            }
            None => return Ok(()),
        };
        let table = create.table_name.clone().unwrap_or_default();
        let metadata = StreamMetadata {
            stream_id: self.stream_id.clone(),
            table_name: table.clone(),
            table_header: headers.table_name,
            authorization: headers.authorization,
            user_agent: headers.user_agent,
            record_type: create.record_type.unwrap_or_default(),
        };
        let refusal = if *self.shutdown.borrow() {
            Some(tonic::Code::Unavailable)
        } else {
            self.faults.take_create_refusal()
        };
        self.state.stream_requested(metadata, refusal.is_some());
        if let Some(code) = refusal {
            return Err(Status::new(
                code,
                "the emulator refuses stream creation (fault knob)",
            ));
        }
        if table.is_empty() {
            return Err(Status::invalid_argument("table_name is required"));
        }
        let decoder = Decoder::from_create(&create)?;
        send(
            tx,
            ephemeral_stream_response::Payload::CreateStreamResponse(CreateIngestStreamResponse {
                stream_id: Some(self.stream_id.clone()),
            }),
        )
        .await?;

        let mut expected_offset: i64 = 0;
        let mut requests: u64 = 0;
        let mut close_at: Option<tokio::time::Instant> = None;
        loop {
            let closing = async {
                match close_at {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = inbound.message() => message?,
                () = closing => return Ok(()),
                _ = self.shutdown.changed() => {
                    return Err(Status::unavailable("the emulator is shutting down"));
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            requests += 1;
            self.state.ingest_request_received();
            if self.faults.is_down() {
                return Err(Status::unavailable("the emulator is down (fault knob)"));
            }

            let (offset, rows) = decoder.decode_request(message)?;
            if offset != expected_offset {
                return Err(Status::invalid_argument(format!(
                    "offset_id {offset} out of order: expected {expected_offset}"
                )));
            }
            expected_offset += 1;
            if let Some(poison) = self.faults.poison_record_id()
                && let Some(index) = rows
                    .iter()
                    .position(|r| r.string_field("record_id").as_deref() == Some(&poison))
            {
                return Err(Status::invalid_argument(format!(
                    "record {index} of the request with offset_id {offset} has record_id \
                     \"{poison}\", which the emulator rejects (poison fault)"
                )));
            }

            let decision = self.faults.drop_decision(requests);
            if matches!(
                decision,
                DropDecision::Withhold | DropDecision::WithholdThenDrop
            ) {
                self.commit(&table, rows)?;
            } else {
                let delay = self.faults.take_ack_delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // Reserve first so rows count only when their ack really goes out, and are
                // committed before the client can observe the ack.
                let Ok(permit) = tx.reserve().await else {
                    return Ok(());
                };
                self.commit(&table, rows)?;
                permit.send(Ok(response(
                    ephemeral_stream_response::Payload::IngestRecordResponse(
                        IngestRecordResponse {
                            durability_ack_up_to_offset: Some(offset),
                        },
                    ),
                )));
            }
            if matches!(
                decision,
                DropDecision::AckThenDrop | DropDecision::WithholdThenDrop
            ) {
                return Err(Status::unavailable(
                    "the emulator dropped the stream (fault knob)",
                ));
            }

            if close_at.is_none()
                && let Some(close_after) = self.faults.take_rotation(requests)
            {
                send(
                    tx,
                    ephemeral_stream_response::Payload::CloseStreamSignal(CloseStreamSignal {
                        duration: Some(proto_duration(close_after)),
                    }),
                )
                .await?;
                close_at = Some(tokio::time::Instant::now() + close_after);
            }
        }
    }

    fn commit(&self, table: &str, rows: Vec<Row>) -> Result<(), Status> {
        self.state.commit(table, rows).map_err(|err| {
            tracing::error!(error = %err, "Sink write failed.");
            Status::internal(format!("the emulator could not store the records: {err}"))
        })
    }
}

fn response(payload: ephemeral_stream_response::Payload) -> EphemeralStreamResponse {
    EphemeralStreamResponse {
        payload: Some(payload),
    }
}

/// Sends one response; a client that went away ends the stream quietly.
async fn send(tx: &ResponseTx, payload: ephemeral_stream_response::Payload) -> Result<(), Status> {
    tx.send(Ok(response(payload)))
        .await
        .map_err(|_| Status::cancelled("the client went away"))
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// Turns the records of one stream into JSON rows, with the schema sent at create.
#[derive(Debug)]
enum Decoder {
    Proto(MessageDescriptor),
    Json,
}

impl Decoder {
    fn from_create(create: &CreateIngestStreamRequest) -> Result<Self, Status> {
        match create.record_type() {
            RecordType::Proto => {
                let bytes = create.descriptor_proto.as_deref().ok_or_else(|| {
                    Status::invalid_argument("descriptor_proto is required for PROTO streams")
                })?;
                message_descriptor(bytes)
                    .map(Self::Proto)
                    .map_err(|err| Status::invalid_argument(format!("bad descriptor_proto: {err}")))
            }
            RecordType::Json => Ok(Self::Json),
            other => Err(Status::invalid_argument(format!(
                "record_type {other:?} is not supported by the emulator"
            ))),
        }
    }

    /// The wire offset of one ingest request and its records as rows.
    fn decode_request(&self, message: EphemeralStreamRequest) -> Result<(i64, Vec<Row>), Status> {
        use ephemeral_stream_request::Payload;
        use ingest_record_batch_request::Batch;
        use ingest_record_request::Record;

        let (offset, records) = match message.payload {
            Some(Payload::IngestRecord(request)) => {
                let record = match request.record {
                    Some(Record::ProtoEncodedRecord(bytes)) => RawRecords::Proto(vec![bytes]),
                    Some(Record::JsonRecord(json)) => RawRecords::Json(vec![json]),
                    Some(Record::AvroEncodedRecord(_)) => RawRecords::Avro,
                    None => RawRecords::Proto(Vec::new()),
                };
                (request.offset_id, record)
            }
            Some(Payload::IngestRecordBatch(request)) => {
                let batch = match request.batch {
                    Some(Batch::ProtoEncodedBatch(batch)) => RawRecords::Proto(batch.records),
                    Some(Batch::JsonBatch(batch)) => RawRecords::Json(batch.records),
                    Some(Batch::AvroBatch(_)) => RawRecords::Avro,
                    None => RawRecords::Proto(Vec::new()),
                };
                (request.offset_id, batch)
            }
            Some(Payload::CreateStream(_)) => {
                return Err(Status::invalid_argument("create_stream sent twice"));
            }
            None => return Err(Status::invalid_argument("empty request")),
        };
        let offset = offset.ok_or_else(|| Status::invalid_argument("offset_id is required"))?;
        let bad = |index: usize, err: String| {
            Status::invalid_argument(format!(
                "record {index} of the request with offset_id {offset}: {err}"
            ))
        };
        let rows = match (self, records) {
            (Self::Proto(descriptor), RawRecords::Proto(records)) => records
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    DynamicMessage::decode(descriptor.clone(), bytes.as_slice())
                        .map(Row::Proto)
                        .map_err(|err| bad(i, err.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            (Self::Json, RawRecords::Json(records)) => records
                .iter()
                .enumerate()
                .map(|(i, json)| {
                    serde_json::from_str(json)
                        .map(Row::Json)
                        .map_err(|err| bad(i, format!("bad JSON: {err}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(Status::invalid_argument(
                    "the record kind does not match the stream's record_type",
                ));
            }
        };
        if rows.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the request with offset_id {offset} carries no record"
            )));
        }
        Ok((offset, rows))
    }
}

enum RawRecords {
    Proto(Vec<Vec<u8>>),
    Json(Vec<String>),
    Avro,
}

/// Resolves the serialized `DescriptorProto` a client sent at create. It describes one message
/// (nested types included); the file around it is rebuilt here. References to nested types
/// carry the original package, which is recovered from them.
pub(crate) fn message_descriptor(bytes: &[u8]) -> Result<MessageDescriptor, String> {
    let descriptor = DescriptorProto::decode(bytes).map_err(|err| err.to_string())?;
    let name = descriptor
        .name
        .clone()
        .ok_or_else(|| "the message has no name".to_owned())?;
    let package = guess_package(&descriptor, &name);
    let file = FileDescriptorProto {
        name: Some("zerobus_emulator_record.proto".to_owned()),
        package: package.clone(),
        message_type: vec![descriptor],
        syntax: Some("proto2".to_owned()),
        ..FileDescriptorProto::default()
    };
    let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
        .map_err(|err| err.to_string())?;
    let full_name = match package {
        Some(package) => format!("{package}.{name}"),
        None => name,
    };
    pool.get_message_by_name(&full_name)
        .ok_or_else(|| format!("message {full_name} not found"))
}

/// The package named by the first fully-qualified reference to the message or its nested
/// types, e.g. `.pkg.Telemetry.Point` → `pkg`.
fn guess_package(descriptor: &DescriptorProto, name: &str) -> Option<String> {
    let mut pending = vec![descriptor];
    while let Some(message) = pending.pop() {
        for type_name in message.field.iter().filter_map(|f| f.type_name.as_deref()) {
            let segments: Vec<&str> = type_name.trim_start_matches('.').split('.').collect();
            if let Some(index) = segments.iter().position(|s| *s == name) {
                return segments
                    .get(..index)
                    .filter(|package| !package.is_empty())
                    .map(|package| package.join("."));
            }
        }
        pending.extend(&message.nested_type);
    }
    None
}

/// One record as a JSON object keyed by proto field names, 64-bit integers as numbers.
#[cfg(test)]
fn decode_proto(descriptor: &MessageDescriptor, bytes: &[u8]) -> Result<Value, String> {
    let message =
        DynamicMessage::decode(descriptor.clone(), bytes).map_err(|err| err.to_string())?;
    Ok(Row::Proto(message).to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::FieldDescriptorProto;
    use prost_types::field_descriptor_proto::{Label, Type};
    use serde_json::json;

    fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.to_owned()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            type_name: type_name.map(str::to_owned),
            ..FieldDescriptorProto::default()
        }
    }

    #[test]
    fn decodes_records_with_proto_field_names_and_numeric_int64() {
        let descriptor = DescriptorProto {
            name: Some("Telemetry".to_owned()),
            field: vec![
                field("record_id", 1, Type::String, None),
                field("seq", 2, Type::Int64, None),
            ],
            ..DescriptorProto::default()
        };
        let message = message_descriptor(&descriptor.encode_to_vec()).unwrap();
        // record_id = "r1", seq = 300
        let record = [0x0a, 0x02, b'r', b'1', 0x10, 0xac, 0x02];
        assert_eq!(
            decode_proto(&message, &record).unwrap(),
            json!({"record_id": "r1", "seq": 300})
        );
    }

    #[test]
    fn resolves_nested_types_referenced_with_their_package() {
        let point = DescriptorProto {
            name: Some("Point".to_owned()),
            field: vec![field("value", 1, Type::Double, None)],
            ..DescriptorProto::default()
        };
        let descriptor = DescriptorProto {
            name: Some("Telemetry".to_owned()),
            field: vec![field(
                "point",
                1,
                Type::Message,
                Some(".acme.edge.Telemetry.Point"),
            )],
            nested_type: vec![point],
            ..DescriptorProto::default()
        };
        let message = message_descriptor(&descriptor.encode_to_vec()).unwrap();
        assert_eq!(message.full_name(), "acme.edge.Telemetry");
        // point = { value = 1.5 }
        let record = [0x0a, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f];
        assert_eq!(
            decode_proto(&message, &record).unwrap(),
            json!({"point": {"value": 1.5}})
        );
    }

    #[test]
    fn undecodable_record_is_an_error() {
        let descriptor = DescriptorProto {
            name: Some("Telemetry".to_owned()),
            field: vec![field("record_id", 1, Type::String, None)],
            ..DescriptorProto::default()
        };
        let message = message_descriptor(&descriptor.encode_to_vec()).unwrap();
        assert!(decode_proto(&message, &[0x0a, 0x05, b'x']).is_err());
    }
}
