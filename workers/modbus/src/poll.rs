//! Polling one device: the connection, the scan schedule, report-by-exception and the status
//! rows. The decisions are sans-IO ([`Schedule`], [`Reporter`], [`block_data`], [`readings`]);
//! [`Poller`] only wires them to tokio-modbus and the sink.
//!
//! - One connection per source, one request in flight (Modbus has no pipelining). Unit ids are
//!   switched per request, so many unit ids share the connection.
//! - Every request and every connect has `timeout_ms`. tokio-modbus has none of its own, and a
//!   late answer would be read as the answer to the next request (TCP) or silently mistaken for
//!   it (RTU), so after a timeout, a transport error or an out-of-step answer the connection is
//!   dropped, a `disconnected` status row is written once, and connecting is retried with
//!   backoff (0.2 s doubling to 30 s, jittered). The backoff starts again from 0.2 s only after a
//!   full round of scans succeeded on the new connection.
//! - `connected` is written when the device first answers on a connection (data or exception),
//!   not when TCP connects: a gateway that accepts connections for a dead device is not up.
//! - An exception answer is not a connection failure: the plan may split the read (see
//!   [`crate::plan`]); otherwise the tags of that read get `bad` records.
//! - Scans run on a grid of their poll interval. A scan that is due while the device is still
//!   busy runs as soon as it is free; slots that passed entirely are counted as missed and never
//!   queued. Missed scans and records skipped because the uplink is behind are reported as
//!   `gap` status rows, at most one of each every 10 s.

use std::{future::Future, io, time::Duration};

use iot_connector_config::{ModbusRegister, ModbusSource, Parity, RegisterKind};
use iot_connector_proto::{Detail, ModbusDetail, Quality, StatusDetail, StatusEvent, Value};
use iot_connector_runtime::{Backoff, LogGate, Sink, WindowFull, health, now_us};
use tokio::{net::TcpStream, time::Instant};
use tokio_modbus::{
    ExceptionCode, ProtocolError, Response, Slave,
    client::{Client as _, Context, rtu, tcp},
    slave::SlaveContext as _,
};

use crate::{
    decode::{self, Reading},
    plan::{self, Block, Plan, Tag},
};

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often missed scans and skipped records are reported at most.
const GAP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Serial line settings of `rtu://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serial {
    /// Bits per second.
    pub baud_rate: u32,
    /// Parity bit.
    pub parity: Parity,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
}

impl Serial {
    /// The 3.5-character silence that ends an RTU frame (1.75 ms above 19200 baud, as the
    /// Modbus serial line spec fixes it). tokio-modbus does not keep it, so the worker waits
    /// this long before every request.
    pub fn frame_gap(&self) -> Duration {
        if self.baud_rate > 19_200 || self.baud_rate == 0 {
            return Duration::from_micros(1750);
        }
        let parity_bits = u32::from(self.parity != Parity::None);
        let char_bits = 1 + u32::from(self.data_bits) + parity_bits + u32::from(self.stop_bits);
        Duration::from_micros(u64::from(char_bits) * 3_500_000 / u64::from(self.baud_rate))
    }
}

/// Where the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Modbus TCP, `host:port`.
    Tcp(String),
    /// RTU frames over a TCP connection (serial device servers), `host:port`.
    RtuOverTcp(String),
    /// RTU over a local serial port.
    Rtu {
        /// The device path.
        path: String,
        /// Line settings.
        serial: Serial,
    },
}

impl Endpoint {
    /// The endpoint of a source the supervisor validated (`iot-connector-config` holds the
    /// rules and reports them with their place); what is left to fail here is a slice that
    /// was never validated.
    pub fn parse(source: &ModbusSource) -> Result<Self, String> {
        let text = source.endpoint.trim();
        if let Some(rest) = text.strip_prefix("tcp://") {
            host_port(rest).map(Self::Tcp)
        } else if let Some(rest) = text.strip_prefix("rtu+tcp://") {
            host_port(rest).map(Self::RtuOverTcp)
        } else if let Some(path) = text.strip_prefix("rtu://").filter(|p| p.starts_with('/')) {
            Ok(Self::Rtu {
                path: path.to_owned(),
                serial: Serial {
                    baud_rate: source.baud_rate.unwrap_or(9600),
                    parity: source.parity.unwrap_or(Parity::None),
                    data_bits: source.data_bits.unwrap_or(8),
                    stop_bits: source.stop_bits.unwrap_or(1),
                },
            })
        } else {
            Err(format!(
                "endpoint {text:?}: use tcp://host:port, rtu:///dev/ttyX or rtu+tcp://host:port"
            ))
        }
    }

    fn frame_gap(&self) -> Duration {
        match self {
            Self::Rtu { serial, .. } => serial.frame_gap(),
            _ => Duration::ZERO,
        }
    }
}

/// `host:port` or `host` (port 502); IPv6 hosts in brackets.
fn host_port(text: &str) -> Result<String, String> {
    let text = text.trim_end_matches('/');
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (text, None),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "endpoint host {text:?} is not a host name or address"
        ));
    }
    match port {
        None => Ok(format!("{host}:502")),
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
            _ => Err(format!("endpoint port {port:?} is not a port number")),
        },
    }
}

/// A validated Modbus source: what to poll, where, and how.
#[derive(Debug, Clone)]
pub struct Device {
    /// The endpoint as configured: the `device` column.
    pub name: String,
    /// Where it is.
    pub endpoint: Endpoint,
    /// Timeout of every connect and request.
    pub timeout: Duration,
    /// Largest gap a merged read may span.
    pub max_gap: u16,
    /// The tags as configured.
    pub registers: Vec<ModbusRegister>,
    /// Their places, in the same order.
    pub tags: Vec<Tag>,
}

impl Device {
    /// The device of a source the supervisor validated.
    pub fn new(source: ModbusSource) -> Result<Self, String> {
        let endpoint = Endpoint::parse(&source)?;
        let tags = source
            .registers
            .iter()
            .map(|register| tag(register, source.poll_interval_ms))
            .collect();
        Ok(Self {
            name: source.endpoint.trim().to_owned(),
            endpoint,
            timeout: Duration::from_millis(source.timeout_ms),
            max_gap: source.max_gap,
            registers: source.registers,
            tags,
        })
    }
}

fn tag(register: &ModbusRegister, default_interval_ms: u64) -> Tag {
    Tag {
        unit_id: register.unit_id,
        kind: register.kind,
        address: register.address,
        count: register.data_type.register_count(register.length).max(1),
        interval_ms: register.poll_interval_ms.unwrap_or(default_interval_ms),
    }
}

/// When each poll interval's scan is due. Sans-IO: callers pass the time.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Per plan group: its interval and when its next scan is due.
    slots: Vec<(Duration, Instant)>,
}

impl Schedule {
    /// Every group due at `now`.
    pub fn new(plan: &Plan, now: Instant) -> Self {
        Self {
            slots: plan
                .groups
                .iter()
                .map(|g| (Duration::from_millis(g.interval_ms.max(1)), now))
                .collect(),
        }
    }

    /// When the earliest scan is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.iter().map(|(_, due)| *due).min()
    }

    /// The groups due at `now`, the most overdue first.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        let mut due: Vec<(Instant, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(i, (_, at))| (*at, i))
            .collect();
        due.sort();
        due.into_iter().map(|(_, i)| i).collect()
    }

    /// Group `group` finished its scan at `now`: moves it to its next slot and returns how many
    /// slots passed entirely while it was busy (missed; never made up). A slot that began while
    /// the scan ran is due at once.
    pub fn done(&mut self, group: usize, now: Instant) -> u64 {
        let Some((interval, due)) = self.slots.get_mut(group) else {
            return 0;
        };
        let passed = now.saturating_duration_since(*due).as_nanos() / interval.as_nanos().max(1);
        if passed == 0 {
            *due += *interval;
            return 0;
        }
        *due += interval.saturating_mul(u32::try_from(passed).unwrap_or(u32::MAX));
        u64::try_from(passed - 1).unwrap_or(u64::MAX)
    }
}

/// Report-by-exception for one tag. Without `deadband` and `heartbeat_ms` every read is sent.
/// With either, a read is sent when it is the first on a connection, when its quality changed,
/// when its value moved by more than `deadband` (any change when only `heartbeat_ms` is set)
/// from the last value *sent*, or when the last record is about `heartbeat_ms` old (to within
/// half a poll interval, so poll jitter cannot stretch a 2 s heartbeat to 3 s).
#[derive(Debug, Clone)]
pub struct Reporter {
    deadband: Option<f64>,
    heartbeat: Option<Duration>,
    slack: Duration,
    last: Option<(Quality, Value, Instant)>,
}

impl Reporter {
    /// The rules of `register`, polled every `interval_ms`.
    pub fn new(register: &ModbusRegister, interval_ms: u64) -> Self {
        Self {
            deadband: register.deadband,
            heartbeat: register.heartbeat_ms.map(Duration::from_millis),
            slack: Duration::from_millis(interval_ms) / 2,
            last: None,
        }
    }

    fn by_exception(&self) -> bool {
        self.deadband.is_some() || self.heartbeat.is_some()
    }

    /// Whether a reading of `quality` and `value` at `now` is sent.
    pub fn due(&self, quality: Quality, value: &Value, now: Instant) -> bool {
        if !self.by_exception() {
            return true;
        }
        let Some((last_quality, last_value, at)) = &self.last else {
            return true;
        };
        if *last_quality != quality {
            return true;
        }
        if let Some(heartbeat) = self.heartbeat
            && now.saturating_duration_since(*at) + self.slack >= heartbeat
        {
            return true;
        }
        moved(last_value, value, self.deadband.unwrap_or(0.0))
    }

    /// The reading was sent (only then does it become the reference).
    pub fn sent(&mut self, quality: Quality, value: &Value, now: Instant) {
        if self.by_exception() {
            self.last = Some((quality, value.clone(), now));
        }
    }

    /// Forgets the last record: the next read is sent whatever it is.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[allow(clippy::cast_precision_loss)] // deadbands compare doubles
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn moved(from: &Value, to: &Value, deadband: f64) -> bool {
    match (number(from), number(to)) {
        (Some(a), Some(b)) if a.is_nan() || b.is_nan() => a.is_nan() != b.is_nan(),
        (Some(a), Some(b)) => (b - a).abs() > deadband,
        _ => from != to,
    }
}

/// The data of one read, checked against what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockData {
    /// Registers.
    Words(Vec<u16>),
    /// Coils or discrete inputs, exactly as many as asked.
    Bits(Vec<bool>),
}

/// Why a read's answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedError {
    /// The answer is to another function.
    #[error("the answer is to another function ({0})")]
    WrongFunction(&'static str),
    /// The answer holds another number of registers or bits than asked.
    #[error("asked for {asked}, the answer holds {got}")]
    WrongLength {
        /// Addresses asked for.
        asked: u16,
        /// Registers or bits in the answer.
        got: usize,
    },
}

/// Checks an answer to a read of `count` addresses of `kind`. Bits come padded to whole bytes.
pub fn block_data(
    kind: RegisterKind,
    count: u16,
    response: Response,
) -> Result<BlockData, MalformedError> {
    let asked = usize::from(count);
    let words = |words: Vec<u16>| {
        if words.len() == asked {
            Ok(BlockData::Words(words))
        } else {
            Err(MalformedError::WrongLength {
                asked: count,
                got: words.len(),
            })
        }
    };
    let bits = |mut bits: Vec<bool>| {
        if bits.len() < asked || bits.len() > asked.div_ceil(8) * 8 {
            return Err(MalformedError::WrongLength {
                asked: count,
                got: bits.len(),
            });
        }
        bits.truncate(asked);
        Ok(BlockData::Bits(bits))
    };
    match (kind, response) {
        (RegisterKind::Holding, Response::ReadHoldingRegisters(w))
        | (RegisterKind::Input, Response::ReadInputRegisters(w)) => words(w),
        (RegisterKind::Coil, Response::ReadCoils(b))
        | (RegisterKind::Discrete, Response::ReadDiscreteInputs(b)) => bits(b),
        (_, other) => Err(MalformedError::WrongFunction(response_name(&other))),
    }
}

fn response_name(response: &Response) -> &'static str {
    match response {
        Response::ReadCoils(_) => "read coils",
        Response::ReadDiscreteInputs(_) => "read discrete inputs",
        Response::ReadHoldingRegisters(_) => "read holding registers",
        Response::ReadInputRegisters(_) => "read input registers",
        _ => "not a read",
    }
}

/// One reading per tag of `block` from its data. A tag the data does not cover is `bad`.
pub fn readings(
    block: &Block,
    data: &BlockData,
    tags: &[Tag],
    registers: &[ModbusRegister],
) -> Vec<(usize, Reading)> {
    block
        .tags
        .iter()
        .map(|&i| {
            let reading = match (tags.get(i), registers.get(i)) {
                (Some(tag), Some(register)) => tag_reading(block, data, tag, register),
                _ => Reading::bad(),
            };
            (i, reading)
        })
        .collect()
}

fn tag_reading(block: &Block, data: &BlockData, tag: &Tag, register: &ModbusRegister) -> Reading {
    let Some(offset) = tag.address.checked_sub(block.start).map(usize::from) else {
        return Reading::bad();
    };
    match data {
        BlockData::Words(words) => words
            .get(offset..offset + usize::from(tag.count))
            .map_or_else(Reading::bad, |w| decode::decode_registers(w, register)),
        BlockData::Bits(bits) => bits
            .get(offset)
            .map_or_else(Reading::bad, |b| decode::decode_bit(*b)),
    }
}

/// Where records go: the uplink's [`Sink`], or a collector in tests.
pub trait Output {
    /// Queues a record if there is room (scans are skipped, never queued).
    fn try_push(
        &self,
        event_time_us: i64,
        quality: Quality,
        value: Value,
        detail: Detail,
    ) -> Result<u64, WindowFull>;

    /// Queues a status row, waiting for room.
    fn status(&self, event: StatusEvent, detail: String, count: u64) -> impl Future<Output = u64>;
}

impl Output for Sink {
    fn try_push(
        &self,
        event_time_us: i64,
        quality: Quality,
        value: Value,
        detail: Detail,
    ) -> Result<u64, WindowFull> {
        Sink::try_push(self, event_time_us, quality, value, detail)
    }

    fn status(&self, event: StatusEvent, detail: String, count: u64) -> impl Future<Output = u64> {
        Sink::status(self, event, detail, count)
    }
}

/// Which read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadName {
    unit_id: u8,
    kind: RegisterKind,
    start: u16,
    count: u16,
}

impl std::fmt::Display for ReadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reading {} {} from address {} of unit {}",
            self.count,
            plan::kind_name(self.kind),
            self.start,
            self.unit_id
        )
    }
}

impl From<&Block> for ReadName {
    fn from(block: &Block) -> Self {
        Self {
            unit_id: block.unit_id,
            kind: block.kind,
            start: block.start,
            count: block.count,
        }
    }
}

/// Why the connection to the device was given up. The text is the `disconnected` row's detail.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP connect failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// TCP connect took longer than `timeout_ms`.
    #[error("connecting to {endpoint} took longer than {timeout_ms} ms")]
    ConnectTimeout {
        /// `host:port`.
        endpoint: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// The serial port could not be opened or set up.
    #[error("cannot open serial port {path}: {source}")]
    OpenSerial {
        /// The device path.
        path: String,
        /// The serial port error.
        #[source]
        source: tokio_serial::Error,
    },
    /// No answer within `timeout_ms`.
    #[error("no answer within {timeout_ms} ms {read}")]
    Timeout {
        /// The read.
        read: ReadName,
        /// The timeout.
        timeout_ms: u128,
    },
    /// The connection broke or the answer did not parse.
    #[error("connection failed {read}: {source}")]
    Transport {
        /// The read.
        read: ReadName,
        /// The I/O or framing error.
        #[source]
        source: io::Error,
    },
    /// The answer belongs to another request: the conversation is out of step.
    #[error("answer out of step {read}: {summary}")]
    OutOfStep {
        /// The read.
        read: ReadName,
        /// The mismatch, without the answer's data.
        summary: String,
        /// What tokio-modbus reported.
        #[source]
        source: ProtocolError,
    },
}

impl LinkError {
    /// Every link error is retried: devices come back.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

fn out_of_step(read: ReadName, source: ProtocolError) -> LinkError {
    let summary = match &source {
        ProtocolError::HeaderMismatch { message, .. } => format!("header mismatch ({message})"),
        ProtocolError::FunctionCodeMismatch { request, .. } => {
            format!("the answer is not to function {request}")
        }
    };
    LinkError::OutOfStep {
        read,
        summary,
        source,
    }
}

/// An exception as operators look it up in device manuals: name and code.
fn exception_text(code: ExceptionCode) -> String {
    format!("{code} (0x{:02X})", u8::from(code))
}

/// tokio-modbus 0.17 reports a connection the device closed as `io::Error::last_os_error()`,
/// usually a stale `EAGAIN` (fixed upstream, unreleased). An
/// async read never surfaces a real `WouldBlock`, so that one is said plainly. Only the text
/// changes: every transport error drops the connection the same way.
fn closed_or(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the device closed the connection",
        )
    } else {
        error
    }
}

/// Opens a connection to the device.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Context, LinkError> {
    let tcp_stream = |addr: String| async move {
        match tokio::time::timeout(timeout, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(source)) => Err(LinkError::Connect {
                endpoint: addr,
                source,
            }),
            Err(_) => Err(LinkError::ConnectTimeout {
                endpoint: addr,
                timeout_ms: timeout.as_millis(),
            }),
        }
    };
    match endpoint {
        Endpoint::Tcp(addr) => Ok(tcp::attach_slave(tcp_stream(addr.clone()).await?, Slave(1))),
        Endpoint::RtuOverTcp(addr) => {
            Ok(rtu::attach_slave(tcp_stream(addr.clone()).await?, Slave(1)))
        }
        Endpoint::Rtu { path, serial } => {
            use tokio_serial::{DataBits, SerialPort as _, StopBits};
            let builder = tokio_serial::new(path, serial.baud_rate)
                .parity(match serial.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if serial.data_bits == 7 {
                    DataBits::Seven
                } else {
                    DataBits::Eight
                })
                .stop_bits(if serial.stop_bits == 2 {
                    StopBits::Two
                } else {
                    StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(|source| {
                LinkError::OpenSerial {
                    path: path.clone(),
                    source,
                }
            })?;
            // Bytes left from before (a late answer to a timed-out request) must not be read
            // as the answer to the next one: RTU frames carry no transaction id.
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            Ok(rtu::attach_slave(port, Slave(1)))
        }
    }
}

/// What the status table was last told about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Connected,
    /// Disconnected at that time, after that many connection attempts since.
    Disconnected {
        since: Instant,
        attempts: u32,
    },
}

/// Counts reported as `gap` rows.
#[derive(Debug, Default)]
struct Gaps {
    missed_scans: u64,
    skipped_records: u64,
    next_report: Option<Instant>,
}

/// Polls one device forever, reconnecting as needed.
#[derive(Debug)]
pub struct Poller<'a, O> {
    device: Device,
    plan: Plan,
    reporters: Vec<Reporter>,
    out: &'a O,
    told: Told,
    gaps: Gaps,
    exception_log: LogGate,
    malformed_log: LogGate,
}

impl<'a, O: Output> Poller<'a, O> {
    /// Plans the reads of `device`; records go to `out`.
    pub fn new(device: Device, out: &'a O) -> Self {
        let plan = Plan::new(&device.tags, device.max_gap);
        let reporters = device
            .registers
            .iter()
            .zip(&device.tags)
            .map(|(register, tag)| Reporter::new(register, tag.interval_ms))
            .collect();
        tracing::info!(
            device = %device.name,
            tags = device.tags.len(),
            requests_per_scan = plan.requests(),
            intervals = plan.groups.len(),
            "Planned the reads."
        );
        Self {
            device,
            plan,
            reporters,
            out,
            told: Told::Nothing,
            gaps: Gaps::default(),
            exception_log: LogGate::default(),
            malformed_log: LogGate::default(),
        }
    }

    /// Connects, polls, and on any link failure reports it, backs off and starts again.
    pub async fn run(&mut self) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            if let Told::Disconnected { attempts, .. } = &mut self.told {
                *attempts = attempts.saturating_add(1);
            }
            let failure = match connect(&self.device.endpoint, self.device.timeout).await {
                Ok(mut context) => {
                    let failure = self.poll(&mut context, &mut backoff).await;
                    // Close politely; the connection is given up either way.
                    let _ = tokio::time::timeout(self.device.timeout, context.disconnect()).await;
                    failure
                }
                Err(failure) => failure,
            };
            self.lost(&failure).await;
            let delay = backoff.next_delay();
            tracing::debug!(
                device = %self.device.name,
                retry_ms = delay.as_millis(),
                "Reconnecting after a pause."
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Scans on schedule until the link fails.
    async fn poll(&mut self, context: &mut Context, backoff: &mut Backoff) -> LinkError {
        self.reporters.iter_mut().for_each(Reporter::reset);
        let mut schedule = Schedule::new(&self.plan, Instant::now());
        // Groups not yet scanned once on this connection.
        let mut unproven = schedule.due(Instant::now());
        loop {
            self.report_gaps();
            if let Some(due) = schedule.next_due() {
                tokio::time::sleep_until(due).await;
            }
            for group in schedule.due(Instant::now()) {
                if let Err(failure) = self.scan(context, group).await {
                    return failure;
                }
                let missed = schedule.done(group, Instant::now());
                if missed > 0 {
                    self.gaps.missed_scans += missed;
                    health().dropped("missed_scan", missed);
                }
                if !unproven.is_empty() {
                    unproven.retain(|g| *g != group);
                    if unproven.is_empty() {
                        // Every read of the plan answered on this connection: it is healthy.
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Reads every block of group `group` once.
    async fn scan(&mut self, context: &mut Context, group: usize) -> Result<(), LinkError> {
        let gap = self.device.endpoint.frame_gap();
        let mut index = 0;
        while let Some(block) = self
            .plan
            .groups
            .get(group)
            .and_then(|g| g.blocks.get(index))
            .cloned()
        {
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let read = ReadName::from(&block);
            context.set_slave(Slave(block.unit_id));
            let answer =
                tokio::time::timeout(self.device.timeout, context.call(block.request())).await;
            let (at_us, now) = (now_us(), Instant::now());
            match answer {
                Err(_) => {
                    return Err(LinkError::Timeout {
                        read,
                        timeout_ms: self.device.timeout.as_millis(),
                    });
                }
                Ok(Err(tokio_modbus::Error::Transport(source))) => {
                    return Err(LinkError::Transport {
                        read,
                        source: closed_or(source),
                    });
                }
                Ok(Err(tokio_modbus::Error::Protocol(source))) => {
                    return Err(out_of_step(read, source));
                }
                Ok(Ok(Err(code))) => {
                    self.answered().await;
                    if plan::split_helps(code) && self.plan.split(&self.device.tags, group, index) {
                        tracing::info!(
                            device = %self.device.name,
                            %read,
                            exception = %exception_text(code),
                            "Split a read the device refused; the split is kept."
                        );
                        continue;
                    }
                    self.exception(&block, read, code, at_us, now);
                }
                Ok(Ok(Ok(response))) => {
                    self.answered().await;
                    match block_data(block.kind, block.count, response) {
                        Ok(data) => {
                            for (tag, reading) in
                                readings(&block, &data, &self.device.tags, &self.device.registers)
                            {
                                self.emit(tag, reading, at_us, now);
                            }
                        }
                        Err(malformed) => {
                            health().parse_error();
                            if let Some(suppressed) = self.malformed_log.open(now) {
                                tracing::warn!(
                                    device = %self.device.name,
                                    %read,
                                    error = %malformed,
                                    suppressed,
                                    "Malformed answer: its tags get bad records."
                                );
                            }
                            self.all_bad(&block, at_us, now);
                        }
                    }
                }
            }
            index += 1;
        }
        Ok(())
    }

    fn exception(
        &mut self,
        block: &Block,
        read: ReadName,
        code: ExceptionCode,
        at_us: i64,
        now: Instant,
    ) {
        if let Some(suppressed) = self.exception_log.open(now) {
            tracing::warn!(
                device = %self.device.name,
                %read,
                exception = %exception_text(code),
                suppressed,
                "Exception answer: its tags get bad records."
            );
        }
        self.all_bad(block, at_us, now);
    }

    fn all_bad(&mut self, block: &Block, at_us: i64, now: Instant) {
        for &tag in &block.tags {
            self.emit(tag, Reading::bad(), at_us, now);
        }
    }

    /// Sends one reading if report-by-exception lets it through and the uplink has room.
    fn emit(&mut self, tag: usize, reading: Reading, at_us: i64, now: Instant) {
        let (Some(register), Some(place), Some(reporter)) = (
            self.device.registers.get(tag),
            self.device.tags.get(tag),
            self.reporters.get_mut(tag),
        ) else {
            return;
        };
        if !reporter.due(reading.quality, &reading.value, now) {
            return;
        }
        let detail = Detail::Modbus(ModbusDetail {
            device: self.device.name.clone(),
            unit_id: place.unit_id,
            register_kind: plan::kind_name(place.kind).to_owned(),
            address: place.address,
            tag_name: register.name.clone(),
            data_type: decode::data_type_name(register.data_type).to_owned(),
            raw: reading.raw,
            scale: register.scale,
            offset: register.offset,
            unit: register.unit.clone().unwrap_or_default(),
        });
        let value = if reporter.by_exception() {
            reporter.sent(reading.quality, &reading.value, now);
            reading.value.clone()
        } else {
            reading.value
        };
        if self
            .out
            .try_push(at_us, reading.quality, value, detail)
            .is_err()
        {
            // Not sent after all: the next read must be compared with what really went out.
            reporter.reset();
            self.gaps.skipped_records += 1;
            health().dropped("window_full", 1);
        }
    }

    /// The device answered: write `connected` if the table does not know yet.
    async fn answered(&mut self) {
        let detail = match self.told {
            Told::Connected => return,
            Told::Nothing => format!("{} answers", self.device.name),
            Told::Disconnected { since, attempts } => format!(
                "{} answers again after {attempts} connection attempts over {:.1} s",
                self.device.name,
                since.elapsed().as_secs_f64()
            ),
        };
        tracing::info!(device = %self.device.name, "{detail}.");
        health().set_connected(true);
        if matches!(self.told, Told::Disconnected { .. }) {
            health().reconnected();
        }
        self.out.status(StatusEvent::Connected, detail, 0).await;
        self.told = Told::Connected;
    }

    /// The link failed: write `disconnected` once per outage.
    async fn lost(&mut self, failure: &LinkError) {
        health().set_connected(false);
        health().error(failure.to_string());
        match self.told {
            Told::Disconnected { attempts, .. } => {
                tracing::debug!(
                    device = %self.device.name,
                    attempts,
                    error = %failure,
                    "Still no connection."
                );
            }
            Told::Nothing | Told::Connected => {
                tracing::warn!(
                    device = %self.device.name,
                    error = %failure,
                    retryable = failure.is_retryable(),
                    "Lost the device; reconnecting with backoff."
                );
                self.out
                    .status(StatusEvent::Disconnected, failure.to_string(), 0)
                    .await;
                self.told = Told::Disconnected {
                    since: Instant::now(),
                    attempts: 0,
                };
            }
        }
    }

    /// Writes `gap` rows for missed scans and skipped records, at most every 10 s.
    fn report_gaps(&mut self) {
        let now = Instant::now();
        if self.gaps.next_report.is_some_and(|next| now < next)
            || self.gaps.missed_scans + self.gaps.skipped_records == 0
        {
            return;
        }
        self.gaps.next_report = Some(now + GAP_REPORT_EVERY);
        let missed = std::mem::take(&mut self.gaps.missed_scans);
        if !self.gap_row(
            missed,
            "scans missed: the device answers slower than the poll interval asks",
        ) {
            self.gaps.missed_scans += missed;
        }
        let skipped = std::mem::take(&mut self.gaps.skipped_records);
        if !self.gap_row(skipped, "records skipped: the uplink is behind") {
            self.gaps.skipped_records += skipped;
        }
    }

    /// One `gap` row; `false` if it could not be queued (it is retried with the next report).
    fn gap_row(&self, count: u64, why: &str) -> bool {
        if count == 0 {
            return true;
        }
        tracing::warn!(device = %self.device.name, count, "{count} {why}.");
        let row = Detail::Status(StatusDetail {
            event: StatusEvent::Gap,
            detail: format!("{count} {why}"),
            count,
        });
        self.out
            .try_push(now_us(), Quality::Good, Value::Null, row)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use iot_connector_config::{ByteOrder, DataType};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn register(
        name: &str,
        kind: RegisterKind,
        address: u16,
        data_type: DataType,
    ) -> ModbusRegister {
        ModbusRegister {
            name: name.into(),
            unit_id: 1,
            kind,
            address,
            data_type,
            length: None,
            byte_order: ByteOrder::ABCD,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            poll_interval_ms: None,
            deadband: None,
            heartbeat_ms: None,
        }
    }

    fn source(endpoint: &str, registers: Vec<ModbusRegister>) -> ModbusSource {
        ModbusSource {
            name: "plc".into(),
            enabled: true,
            endpoint: endpoint.into(),
            poll_interval_ms: 1000,
            timeout_ms: 1000,
            baud_rate: None,
            parity: None,
            data_bits: None,
            stop_bits: None,
            max_gap: 10,
            registers,
        }
    }

    fn holding(name: &str, address: u16) -> ModbusRegister {
        register(name, RegisterKind::Holding, address, DataType::Uint16)
    }

    #[test]
    fn endpoints_parse_with_their_defaults() {
        let parse = |endpoint: &str| Endpoint::parse(&source(endpoint, Vec::new()));
        assert_eq!(
            parse("tcp://10.0.0.7:5020"),
            Ok(Endpoint::Tcp("10.0.0.7:5020".into()))
        );
        assert_eq!(
            parse("tcp://plc.local"),
            Ok(Endpoint::Tcp("plc.local:502".into()))
        );
        assert_eq!(
            parse("tcp://[::1]:503"),
            Ok(Endpoint::Tcp("[::1]:503".into()))
        );
        assert_eq!(parse("tcp://[::1]"), Ok(Endpoint::Tcp("[::1]:502".into())));
        assert_eq!(
            parse("rtu+tcp://gw:4001"),
            Ok(Endpoint::RtuOverTcp("gw:4001".into()))
        );
        let Ok(Endpoint::Rtu { path, serial }) = parse("rtu:///dev/ttyUSB0") else {
            panic!("rtu endpoint")
        };
        assert_eq!(path, "/dev/ttyUSB0");
        assert_eq!(
            serial,
            Serial {
                baud_rate: 9600,
                parity: Parity::None,
                data_bits: 8,
                stop_bits: 1
            }
        );
        assert!(parse("udp://x:1").is_err());
        assert!(parse("rtu://dev/ttyUSB0").is_err());
        assert!(parse("tcp://:502").is_err());
        assert!(parse("tcp://plc:99999").is_err());
    }

    #[test]
    fn each_endpoint_form_names_its_link_and_serial_settings_default_to_9600_8n1() {
        let mut rtu = source("rtu:///dev/ttyS0", Vec::new());
        rtu.parity = Some(Parity::Even);
        assert_eq!(
            Endpoint::parse(&rtu),
            Ok(Endpoint::Rtu {
                path: "/dev/ttyS0".into(),
                serial: Serial {
                    baud_rate: 9600,
                    parity: Parity::Even,
                    data_bits: 8,
                    stop_bits: 1,
                },
            })
        );
        assert_eq!(
            Endpoint::parse(&source("tcp://plc", Vec::new())),
            Ok(Endpoint::Tcp("plc:502".into()))
        );
        assert_eq!(
            Endpoint::parse(&source("rtu+tcp://gw:4001", Vec::new())),
            Ok(Endpoint::RtuOverTcp("gw:4001".into()))
        );
        assert!(Endpoint::parse(&source("udp://plc", Vec::new())).is_err());
    }

    #[test]
    fn the_rtu_frame_gap_is_three_and_a_half_characters() {
        let serial = |baud_rate, parity| Serial {
            baud_rate,
            parity,
            data_bits: 8,
            stop_bits: 1,
        };
        assert_eq!(
            serial(9600, Parity::None).frame_gap(),
            Duration::from_micros(3645)
        );
        assert_eq!(
            serial(9600, Parity::Even).frame_gap(),
            Duration::from_micros(4010)
        );
        assert_eq!(
            serial(115_200, Parity::None).frame_gap(),
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn a_scan_on_time_is_due_one_interval_later() {
        let plan = Plan::new(
            &[Tag {
                unit_id: 1,
                kind: RegisterKind::Holding,
                address: 0,
                count: 1,
                interval_ms: 100,
            }],
            10,
        );
        let t0 = Instant::now();
        let mut schedule = Schedule::new(&plan, t0);
        assert_eq!(schedule.due(t0), vec![0]);
        assert_eq!(schedule.done(0, t0 + Duration::from_millis(30)), 0);
        assert_eq!(schedule.next_due(), Some(t0 + Duration::from_millis(100)));
        assert!(schedule.due(t0 + Duration::from_millis(99)).is_empty());
    }

    #[test]
    fn a_slow_device_misses_scans_which_are_counted_not_queued() {
        let ms = Duration::from_millis;
        let tag = |interval_ms| Tag {
            unit_id: 1,
            kind: RegisterKind::Holding,
            address: 0,
            count: 1,
            interval_ms,
        };
        let plan = Plan::new(&[tag(100), tag(1000)], 10);
        let t0 = Instant::now();
        let mut schedule = Schedule::new(&plan, t0);
        // A scan that took 150 ms: the slot at 100 began during it and runs at once, late.
        assert_eq!(schedule.done(0, t0 + ms(150)), 0);
        assert_eq!(schedule.next_due(), Some(t0));
        assert_eq!(schedule.done(1, t0 + ms(150)), 0);
        assert_eq!(schedule.next_due(), Some(t0 + ms(100)));
        // The next one took until 420: slots 200 and 300 passed entirely.
        assert_eq!(schedule.done(0, t0 + ms(420)), 2);
        assert_eq!(schedule.due(t0 + ms(420)), vec![0]);
        assert_eq!(schedule.next_due(), Some(t0 + ms(400)));
    }

    #[test]
    fn without_deadband_or_heartbeat_every_read_is_sent() {
        let mut reporter = Reporter::new(&holding("t", 0), 1000);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(reporter.due(Quality::Good, &Value::UInt(1), now));
            reporter.sent(Quality::Good, &Value::UInt(1), now);
        }
    }

    #[test]
    fn a_constant_value_is_sent_once_per_heartbeat() {
        let mut reg = holding("t", 0);
        reg.heartbeat_ms = Some(2000);
        let mut reporter = Reporter::new(&reg, 1000);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut sent = Vec::new();
        // Reads every second, with jitter either way.
        for (i, jitter) in [0i64, 3, -4, 8, -2, 5, -9, 1, 0].iter().enumerate() {
            let at =
                t0 + ms(u64::try_from(i64::try_from(i).unwrap() * 1000 + 10 + jitter).unwrap());
            if reporter.due(Quality::Good, &Value::UInt(7), at) {
                reporter.sent(Quality::Good, &Value::UInt(7), at);
                sent.push(i);
            }
        }
        assert_eq!(sent, vec![0, 2, 4, 6, 8]);
    }

    #[test]
    fn the_deadband_is_measured_from_the_last_value_sent() {
        let mut reg = holding("t", 0);
        reg.deadband = Some(0.5);
        let mut reporter = Reporter::new(&reg, 1000);
        let now = Instant::now();
        let mut sent = Vec::new();
        for v in [
            10.0,
            10.3,
            10.5,
            10.6,
            10.9,
            11.2,
            9.0,
            f64::NAN,
            f64::NAN,
            3.0,
        ] {
            if reporter.due(Quality::Good, &Value::Float(v), now) {
                reporter.sent(Quality::Good, &Value::Float(v), now);
                sent.push(v);
            }
        }
        // 10.3 and 10.5 are within 0.5 of 10.0; 10.6 is beyond; 10.9 within 0.5 of 10.6.
        assert_eq!(sent.len(), 6, "{sent:?}");
        assert_eq!(&sent[..4], &[10.0, 10.6, 11.2, 9.0]);
        assert!(sent[4].is_nan());
        assert_eq!(sent[5], 3.0);
    }

    #[test]
    fn a_quality_change_or_a_reconnect_is_always_sent() {
        let mut reg = holding("t", 0);
        reg.deadband = Some(100.0);
        reg.heartbeat_ms = Some(60_000);
        let mut reporter = Reporter::new(&reg, 1000);
        let now = Instant::now();
        reporter.sent(Quality::Good, &Value::UInt(1), now);
        assert!(!reporter.due(Quality::Good, &Value::UInt(2), now));
        assert!(reporter.due(Quality::Bad, &Value::Null, now));
        reporter.sent(Quality::Bad, &Value::Null, now);
        assert!(!reporter.due(Quality::Bad, &Value::Null, now));
        assert!(reporter.due(Quality::Good, &Value::UInt(1), now));
        reporter.reset();
        assert!(reporter.due(Quality::Bad, &Value::Null, now));
        // Text and bools have no deadband: any change is sent.
        reporter.sent(Quality::Good, &Value::Str("a".into()), now);
        assert!(!reporter.due(Quality::Good, &Value::Str("a".into()), now));
        assert!(reporter.due(Quality::Good, &Value::Str("b".into()), now));
    }

    #[test]
    fn answers_are_checked_against_their_request() {
        use RegisterKind::{Coil, Discrete, Holding, Input};
        assert_eq!(
            block_data(Holding, 2, Response::ReadHoldingRegisters(vec![1, 2])),
            Ok(BlockData::Words(vec![1, 2]))
        );
        assert_eq!(
            block_data(Holding, 3, Response::ReadHoldingRegisters(vec![1, 2])),
            Err(MalformedError::WrongLength { asked: 3, got: 2 })
        );
        assert!(matches!(
            block_data(Input, 2, Response::ReadHoldingRegisters(vec![1, 2])),
            Err(MalformedError::WrongFunction(_))
        ));
        // Bits come padded to whole bytes; the padding is dropped.
        assert_eq!(
            block_data(
                Coil,
                3,
                Response::ReadCoils(vec![true, false, true, false, false, false, false, false])
            ),
            Ok(BlockData::Bits(vec![true, false, true]))
        );
        assert!(block_data(Coil, 3, Response::ReadCoils(vec![true; 16])).is_err());
        assert!(block_data(Discrete, 9, Response::ReadDiscreteInputs(vec![true; 8])).is_err());
        assert!(block_data(Discrete, 9, Response::WriteSingleCoil(0, true)).is_err());
    }

    #[test]
    fn each_tag_takes_its_own_registers_from_the_block() {
        let mut float = register("f", RegisterKind::Holding, 12, DataType::Float32);
        float.byte_order = ByteOrder::CDAB;
        let registers = vec![holding("a", 10), float];
        let tags: Vec<Tag> = registers.iter().map(|r| tag(r, 1000)).collect();
        let plan = Plan::new(&tags, 10);
        let block = &plan.groups[0].blocks[0];
        assert_eq!((block.start, block.count), (10, 4));
        let data = BlockData::Words(vec![42, 0xFFFF, 0xE979, 0x42F6]);
        let got = readings(block, &data, &tags, &registers);
        assert_eq!(got[0], (0, decode::decode_registers(&[42], &registers[0])));
        assert_eq!(got[1].1.value, Value::Float(f64::from(123.456f32)));
        assert_eq!(got[1].1.raw, vec![0xE9, 0x79, 0x42, 0xF6]);
    }

    fn any_kind() -> impl Strategy<Value = RegisterKind> {
        prop_oneof![
            Just(RegisterKind::Holding),
            Just(RegisterKind::Input),
            Just(RegisterKind::Coil),
            Just(RegisterKind::Discrete),
        ]
    }

    fn any_response() -> impl Strategy<Value = Response> {
        let words = proptest::collection::vec(any::<u16>(), 0..300);
        let bits = proptest::collection::vec(any::<bool>(), 0..2100);
        prop_oneof![
            words.clone().prop_map(Response::ReadHoldingRegisters),
            words.prop_map(Response::ReadInputRegisters),
            bits.clone().prop_map(Response::ReadCoils),
            bits.prop_map(Response::ReadDiscreteInputs),
            (any::<u16>(), any::<u16>()).prop_map(|(a, w)| Response::WriteSingleRegister(a, w)),
        ]
    }

    proptest! {
        /// The response-to-record mapping, fed answers of any function and length for any
        /// block and tags (even tags the block does not cover): never a panic, one reading per
        /// tag, and good readings carry exactly their registers.
        #[test]
        fn any_answer_maps_to_one_reading_per_tag_without_panicking(
            kind in any_kind(),
            start in any::<u16>(),
            count in 0u16..2100,
            layout in proptest::collection::vec((any::<u16>(), 0usize..10, 0u16..10), 1..20),
            response in any_response(),
        ) {
            let types = [
                DataType::Bool, DataType::Int16, DataType::Uint16, DataType::Int32,
                DataType::Uint32, DataType::Int64, DataType::Uint64, DataType::Float32,
                DataType::Float64, DataType::String,
            ];
            let mut registers = Vec::new();
            let mut tags = Vec::new();
            for (i, (address, t, length)) in layout.iter().enumerate() {
                let mut reg = register(&format!("t{i}"), kind, *address, types[*t]);
                reg.length = Some(*length);
                tags.push(Tag {
                    unit_id: 1,
                    kind,
                    address: *address,
                    count: reg.data_type.register_count(reg.length),
                    interval_ms: 1000,
                });
                registers.push(reg);
            }
            let block = Block { unit_id: 1, kind, start, count, tags: (0..tags.len()).collect() };
            match block_data(kind, count, response) {
                Ok(data) => {
                    let got = readings(&block, &data, &tags, &registers);
                    prop_assert_eq!(got.len(), tags.len());
                    for (i, reading) in got {
                        if reading.quality != Quality::Bad && matches!(data, BlockData::Words(_)) {
                            prop_assert_eq!(reading.raw.len(), usize::from(tags[i].count) * 2);
                        }
                    }
                }
                Err(MalformedError::WrongLength { .. } | MalformedError::WrongFunction(_)) => {}
            }
        }
    }

    /// Collects records like the uplink's sink would take them, with a window of `room`.
    #[derive(Debug, Default)]
    struct Collect {
        records: RefCell<Vec<(Quality, Value, Detail)>>,
    }

    impl Output for Collect {
        fn try_push(
            &self,
            _: i64,
            quality: Quality,
            value: Value,
            detail: Detail,
        ) -> Result<u64, WindowFull> {
            let mut records = self.records.borrow_mut();
            records.push((quality, value, detail));
            Ok(records.len() as u64)
        }

        fn status(
            &self,
            event: StatusEvent,
            detail: String,
            count: u64,
        ) -> impl Future<Output = u64> {
            let detail = Detail::Status(StatusDetail {
                event,
                detail,
                count,
            });
            std::future::ready(
                self.try_push(0, Quality::Good, Value::Null, detail)
                    .unwrap_or(0),
            )
        }
    }

    /// One scan against a TCP "device" that answers the first request with `answer` (after an
    /// MBAP header echoing the request's transaction and unit id when `framed`).
    async fn scan_against(answer: Vec<u8>, framed: bool) -> (Result<(), LinkError>, Collect) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 12];
            if stream.read_exact(&mut request).await.is_ok() {
                let mut frame = Vec::new();
                if framed {
                    let len = u16::try_from(answer.len() + 1)
                        .unwrap_or(u16::MAX)
                        .to_be_bytes();
                    frame.extend([request[0], request[1], 0, 0, len[0], len[1], request[6]]);
                }
                frame.extend(answer);
                let _ = stream.write_all(&frame).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let mut string = register("s", RegisterKind::Holding, 5, DataType::String);
        string.length = Some(3);
        let mut config = source(
            &format!("tcp://{address}"),
            vec![
                register("f", RegisterKind::Holding, 0, DataType::Float64),
                holding("u", 4),
                string,
            ],
        );
        config.timeout_ms = 100;
        let device = Device::new(config).unwrap();
        let out = Collect::default();
        let mut poller = Poller::new(device, &out);
        assert_eq!(poller.plan.requests(), 1);
        let mut context = connect(&poller.device.endpoint, poller.device.timeout)
            .await
            .unwrap();
        let result = poller.scan(&mut context, 0).await;
        drop(poller);
        server.abort();
        (result, out)
    }

    #[tokio::test]
    async fn a_well_formed_answer_becomes_good_records_through_the_real_codec() {
        let mut pdu = vec![3, 16];
        for w in [0x4028u16, 0, 0, 0, 77, 0x4142, 0x4300, 0] {
            pdu.extend(w.to_be_bytes());
        }
        let (result, out) = scan_against(pdu, true).await;
        result.unwrap();
        let records = out.records.into_inner();
        let values: Vec<&Value> = records
            .iter()
            .filter(|r| matches!(r.2, Detail::Modbus(_)))
            .map(|r| &r.1)
            .collect();
        assert_eq!(
            values,
            [
                &Value::Float(12.0),
                &Value::UInt(77),
                &Value::Str("ABC".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_short_answer_makes_bad_records_and_keeps_the_connection() {
        let (result, out) = scan_against(vec![3, 4, 0, 1, 0, 2], true).await;
        assert!(result.is_ok());
        let records = out.records.into_inner();
        let data: Vec<_> = records
            .iter()
            .filter(|r| matches!(r.2, Detail::Modbus(_)))
            .collect();
        assert_eq!(data.len(), 3);
        assert!(
            data.iter()
                .all(|r| r.0 == Quality::Bad && r.1 == Value::Null)
        );
    }

    #[tokio::test]
    async fn an_answer_out_of_step_drops_the_connection() {
        let mut other_function = vec![4, 16];
        other_function.extend([0u8; 16]);
        let (result, _) = scan_against(other_function, true).await;
        assert!(
            matches!(result, Err(LinkError::OutOfStep { .. })),
            "{result:?}"
        );
        let (result, _) = scan_against(vec![0x83], true).await;
        assert!(result.is_err(), "{result:?}");
        let (result, _) = scan_against(Vec::new(), false).await;
        assert!(
            matches!(result, Err(LinkError::Timeout { .. })),
            "{result:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Any bytes a misbehaving device sends, framed or not, through tokio-modbus's codec and
        /// our mapping: a link error or one record per tag, never a panic.
        #[test]
        fn any_bytes_from_a_device_never_panic(
            answer in proptest::collection::vec(any::<u8>(), 0..300),
            framed in any::<bool>(),
            function in prop_oneof![Just(None), (0u8..=255).prop_map(Some)],
        ) {
            let mut answer = answer;
            if let (Some(function), true) = (function, framed) {
                answer.insert(0, function);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (result, out) = runtime.block_on(scan_against(answer, framed));
            if result.is_ok() {
                let records = out.records.into_inner();
                let data = records.iter().filter(|r| matches!(r.2, Detail::Modbus(_))).count();
                prop_assert_eq!(data, 3);
            }
        }
    }
}
