//! What the emulator saw, for tests to assert on: acknowledged rows per table, stream and
//! request counters, the metadata of the last stream and every token request. An optional sink
//! also appends each acknowledged row as one JSON line to `<dir>/<table_name>.jsonl`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;

use crate::SimError;

/// How often `wait_for_rows` looks at the state.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The gRPC metadata and create request of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMetadata {
    /// The id the emulator gave the stream (`sim-stream-N`).
    pub stream_id: String,
    /// `table_name` from the `CreateIngestStreamRequest`.
    pub table_name: String,
    /// The `x-databricks-zerobus-table-name` header.
    pub table_header: Option<String>,
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The `user-agent` header.
    pub user_agent: Option<String>,
    /// `record_type` from the create request (1 = PROTO, 2 = JSON).
    pub record_type: i32,
}

/// One call to the token endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthRequest {
    /// The user name of the HTTP Basic `authorization` header.
    pub client_id: Option<String>,
    /// Form field `grant_type`.
    pub grant_type: Option<String>,
    /// Form field `scope`.
    pub scope: Option<String>,
    /// Form field `resource`.
    pub resource: Option<String>,
    /// Form field `authorization_details` (a JSON array, as sent).
    pub authorization_details: Option<String>,
}

#[derive(Debug, Default)]
struct StateData {
    rows: HashMap<String, Vec<Row>>,
    streams_opened: u64,
    creates_refused: u64,
    ingest_requests: u64,
    last_stream: Option<StreamMetadata>,
    oauth_requests: Vec<OAuthRequest>,
    sink_files: HashMap<String, File>,
}

#[derive(Debug)]
struct Shared {
    data: Mutex<StateData>,
    sink_dir: Option<PathBuf>,
}

/// A cloneable, read-mostly handle on what the emulator saw.
#[derive(Debug, Clone)]
pub struct SimState {
    shared: Arc<Shared>,
}

impl SimState {
    pub(crate) fn new(sink_dir: Option<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                data: Mutex::default(),
                sink_dir,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StateData> {
        self.shared
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every acknowledged row of `table`, decoded to JSON, in acknowledgement order (duplicates
    /// included).
    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.lock()
            .rows
            .get(table)
            .map(|rows| rows.iter().map(Row::to_json).collect())
            .unwrap_or_default()
    }

    /// How many rows of `table` were acknowledged.
    pub fn row_count(&self, table: &str) -> usize {
        self.lock().rows.get(table).map_or(0, Vec::len)
    }

    /// The `record_id` field of every acknowledged row of `table` that has one, in order.
    pub fn record_ids(&self, table: &str) -> Vec<String> {
        self.strings(table, "record_id")
    }

    /// The string field `column` of every acknowledged row of `table` that has one, in order:
    /// what a check of millions of rows needs, without decoding each to JSON.
    pub fn strings(&self, table: &str, column: &str) -> Vec<String> {
        self.lock()
            .rows
            .get(table)
            .map(|rows| rows.iter().filter_map(|r| r.string_field(column)).collect())
            .unwrap_or_default()
    }

    /// Names of the tables that received at least one row.
    pub fn tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self.lock().rows.keys().cloned().collect();
        tables.sort();
        tables
    }

    /// Streams created successfully.
    pub fn streams_opened(&self) -> u64 {
        self.lock().streams_opened
    }

    /// Stream creations refused by a fault.
    pub fn creates_refused(&self) -> u64 {
        self.lock().creates_refused
    }

    /// Ingest requests received (single records and batches, acknowledged or not).
    pub fn ingest_requests(&self) -> u64 {
        self.lock().ingest_requests
    }

    /// Metadata of the last stream that sent a create request (refused or not).
    pub fn last_stream(&self) -> Option<StreamMetadata> {
        self.lock().last_stream.clone()
    }

    /// Every token request, in order.
    pub fn oauth_requests(&self) -> Vec<OAuthRequest> {
        self.lock().oauth_requests.clone()
    }

    /// How many token requests arrived.
    pub fn oauth_calls(&self) -> usize {
        self.lock().oauth_requests.len()
    }

    /// Waits until `table` has at least `count` acknowledged rows and returns them.
    pub async fn wait_for_rows(
        &self,
        table: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, SimError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rows = self.rows(table);
            if rows.len() >= count {
                return Ok(rows);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SimError::WaitForRows {
                    table: table.to_owned(),
                    wanted: count,
                    got: rows.len(),
                    timeout,
                });
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }

    /// Waits until `condition` holds, checking every 10 ms; `false` if it did not within
    /// `timeout`. For example `state.wait_until(t, |s| s.streams_opened() >= 2)`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&SimState) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }

    pub(crate) fn stream_requested(&self, metadata: StreamMetadata, refused: bool) {
        let mut data = self.lock();
        if refused {
            data.creates_refused += 1;
        } else {
            data.streams_opened += 1;
        }
        data.last_stream = Some(metadata);
    }

    pub(crate) fn ingest_request_received(&self) {
        self.lock().ingest_requests += 1;
    }

    pub(crate) fn oauth_request_received(&self, request: OAuthRequest) {
        self.lock().oauth_requests.push(request);
    }

    /// Makes `rows` durable: first the sink (if any), then the in-memory table.
    pub(crate) fn commit(&self, table: &str, rows: Vec<Row>) -> Result<(), SimError> {
        let mut data = self.lock();
        if let Some(dir) = &self.shared.sink_dir {
            let path = dir.join(format!("{}.jsonl", sink_file_stem(table)));
            let mut lines = Vec::new();
            for row in &rows {
                lines.extend_from_slice(row.to_json().to_string().as_bytes());
                lines.push(b'\n');
            }
            let file = match data.sink_files.entry(table.to_owned()) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|source| SimError::Sink {
                            path: path.clone(),
                            source,
                        })?,
                ),
            };
            file.write_all(&lines)
                .map_err(|source| SimError::Sink { path, source })?;
        }
        data.rows.entry(table.to_owned()).or_default().extend(rows);
        Ok(())
    }
}

/// One acknowledged row: decoded (and so validated) when it arrived, turned into JSON only when a
/// test or the sink asks, so that the emulator stays cheap next to the connector it measures.
#[derive(Debug, Clone)]
pub(crate) enum Row {
    /// A compiled-proto record.
    Proto(prost_reflect::DynamicMessage),
    /// A JSON record.
    Json(Value),
}

impl Row {
    /// The row as a JSON object keyed by proto field names, 64-bit integers as numbers.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Json(value) => value.clone(),
            Self::Proto(message) => {
                let options = prost_reflect::SerializeOptions::new()
                    .use_proto_field_name(true)
                    .stringify_64_bit_integers(false);
                message
                    .serialize_with_options(serde_json::value::Serializer, &options)
                    .unwrap_or(Value::Null)
            }
        }
    }

    /// The string field `name`, if the row has one.
    pub(crate) fn string_field(&self, name: &str) -> Option<String> {
        match self {
            Self::Json(value) => value.get(name).and_then(Value::as_str).map(str::to_owned),
            Self::Proto(message) => message
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned)),
        }
    }
}

/// The table name with every character outside `[A-Za-z0-9._-]` replaced, so a name sent by a
/// client can never leave the sink directory.
fn sink_file_stem(table: &str) -> String {
    let stem: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.starts_with('.') {
        format!("_{stem}")
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sink_file_names_cannot_escape_the_directory() {
        assert_eq!(sink_file_stem("main.edge.telemetry"), "main.edge.telemetry");
        assert_eq!(sink_file_stem("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(sink_file_stem(".."), "_..");
    }

    #[test]
    fn sink_appends_one_json_line_per_committed_row() {
        let dir = tempfile::tempdir().unwrap();
        let state = SimState::new(Some(dir.path().to_path_buf()));
        state
            .commit(
                "c.s.t",
                vec![
                    Row::Json(json!({"record_id": "a"})),
                    Row::Json(json!({"record_id": "b"})),
                ],
            )
            .unwrap();
        state
            .commit("c.s.t", vec![Row::Json(json!({"seq": 3}))])
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("c.s.t.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"record_id\":\"a\"}\n{\"record_id\":\"b\"}\n{\"seq\":3}\n"
        );
        assert_eq!(state.record_ids("c.s.t"), ["a", "b"]);
        assert_eq!(state.row_count("c.s.t"), 3);
    }

    #[tokio::test]
    async fn wait_for_rows_times_out_with_the_count_reached() {
        let state = SimState::new(None);
        state.commit("c.s.t", vec![Row::Json(json!({}))]).unwrap();
        let err = state
            .wait_for_rows("c.s.t", 2, Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            SimError::WaitForRows {
                got: 1,
                wanted: 2,
                ..
            }
        ));
    }
}
