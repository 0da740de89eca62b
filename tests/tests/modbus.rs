//! The Modbus worker end to end: the real `iot-connector-modbus` binary polls tokio-modbus's own
//! server, run in this process with a register map the test controls (TCP on 127.0.0.1, RTU over
//! a `socat` pty pair, RTU over TCP through `socat`), and its records go through the real uplink
//! to the Zerobus emulator, where the tests read the decoded rows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should fail loudly
#![allow(clippy::indexing_slicing, clippy::panic)] // test helpers index rows they just checked

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    time::Duration,
};

use iot_connector_config::{ByteOrder, DataType, ModbusRegister, ModbusSource, RegisterKind};
use iot_connector_proto::Table;
use iot_connector_runtime::now_us;
use iot_connector_tests::{
    Rig, TABLES, base64, free_port, of_source, proc_status_kib, rig::event_names, wait_until,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value as Json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_modbus_server::{ExceptionCode, Request, Response, SlaveRequest, server};

const MODBUS: &str = TABLES[2];
const STATUS: &str = TABLES[3];

// ---------------------------------------------------------------------------------------------
// The device: a register map, counters, and the faults a test switches on.

#[derive(Debug, Default)]
struct Memory {
    holding: HashMap<(u8, u16), u16>,
    input: HashMap<(u8, u16), u16>,
    coils: HashMap<(u8, u16), bool>,
    discrete: HashMap<(u8, u16), bool>,
}

impl Memory {
    fn words(&mut self, kind: RegisterKind) -> &mut HashMap<(u8, u16), u16> {
        match kind {
            RegisterKind::Input => &mut self.input,
            _ => &mut self.holding,
        }
    }

    fn bits(&mut self, kind: RegisterKind) -> &mut HashMap<(u8, u16), bool> {
        match kind {
            RegisterKind::Discrete => &mut self.discrete,
            _ => &mut self.coils,
        }
    }
}

/// A Modbus device as the server in this process plays it.
#[derive(Debug, Default)]
struct Device {
    memory: Mutex<Memory>,
    /// Unit ids that answer; the others stay silent (as on an RTU bus).
    units: Mutex<HashSet<u8>>,
    /// Addresses not in the map raise "illegal data address" (else they read as 0).
    strict: AtomicBool,
    /// Longest read answered; longer ones raise "illegal data value". 0: the protocol maximum.
    max_read: AtomicU16,
    /// Holding addresses whose reads raise "illegal data address".
    broken: Mutex<HashSet<u16>>,
    /// How long every answer takes.
    delay_ms: AtomicU64,
    requests: AtomicU64,
    exceptions: AtomicU64,
    connections: AtomicU64,
}

impl Device {
    fn new(units: &[u8]) -> Arc<Self> {
        let device = Self::default();
        device.units.lock().unwrap().extend(units);
        Arc::new(device)
    }

    fn set_words(&self, unit: u8, kind: RegisterKind, address: u16, words: &[u16]) {
        let mut memory = self.memory.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            memory
                .words(kind)
                .insert((unit, address + u16::try_from(i).unwrap()), *w);
        }
    }

    fn set_bit(&self, unit: u8, kind: RegisterKind, address: u16, bit: bool) {
        self.memory
            .lock()
            .unwrap()
            .bits(kind)
            .insert((unit, address), bit);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn exceptions(&self) -> u64 {
        self.exceptions.load(Ordering::SeqCst)
    }

    fn answer(&self, unit: u8, request: &Request<'_>) -> Result<Option<Response>, ExceptionCode> {
        if !self.units.lock().unwrap().contains(&unit) {
            return Ok(None);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let answer = match *request {
            Request::ReadHoldingRegisters(a, n) => self
                .read_words(unit, RegisterKind::Holding, a, n, 125)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => self
                .read_words(unit, RegisterKind::Input, a, n, 125)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(a, n) => self
                .read_bits(unit, RegisterKind::Coil, a, n)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => self
                .read_bits(unit, RegisterKind::Discrete, a, n)
                .map(Response::ReadDiscreteInputs),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        if answer.is_err() {
            self.exceptions.fetch_add(1, Ordering::SeqCst);
        }
        answer.map(Some)
    }

    fn check_range(
        &self,
        kind: RegisterKind,
        a: u16,
        n: u16,
        max: u16,
    ) -> Result<(), ExceptionCode> {
        let limit = match self.max_read.load(Ordering::SeqCst) {
            0 => max,
            m => m.min(max),
        };
        if n == 0 || n > limit {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if u32::from(a) + u32::from(n) > 65_536 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let broken = self.broken.lock().unwrap();
        if kind == RegisterKind::Holding && (a..a.saturating_add(n)).any(|x| broken.contains(&x)) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(())
    }

    fn read_words(
        &self,
        unit: u8,
        kind: RegisterKind,
        a: u16,
        n: u16,
        max: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        self.check_range(kind, a, n, max)?;
        let strict = self.strict.load(Ordering::SeqCst);
        let mut memory = self.memory.lock().unwrap();
        let table = memory.words(kind);
        (a..a + n)
            .map(|x| match table.get(&(unit, x)) {
                Some(w) => Ok(*w),
                None if strict => Err(ExceptionCode::IllegalDataAddress),
                None => Ok(0),
            })
            .collect()
    }

    fn read_bits(
        &self,
        unit: u8,
        kind: RegisterKind,
        a: u16,
        n: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        self.check_range(kind, a, n, 2000)?;
        let strict = self.strict.load(Ordering::SeqCst);
        let mut memory = self.memory.lock().unwrap();
        let table = memory.bits(kind);
        (a..a + n)
            .map(|x| match table.get(&(unit, x)) {
                Some(b) => Ok(*b),
                None if strict => Err(ExceptionCode::IllegalDataAddress),
                None => Ok(false),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Service(Arc<Device>);

impl server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let device = Arc::clone(&self.0);
        Box::pin(async move {
            let delay = device.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            device.answer(request.slave, &request.request)
        })
    }
}

/// tokio-modbus's TCP server for `device`; aborting the task closes the listener and every
/// connection.
fn serve_tcp(listener: TcpListener, device: Arc<Device>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let server = server::tcp::Server::new(listener);
        let on_connected = |stream, address| {
            let device = Arc::clone(&device);
            async move {
                device.connections.fetch_add(1, Ordering::SeqCst);
                server::tcp::accept_tcp_connection(stream, address, |_| {
                    Ok(Some(Service(Arc::clone(&device))))
                })
            }
        };
        let _ = server.serve(&on_connected, |_error| {}).await;
    })
}

/// A TCP device on a free loopback port.
struct TcpDevice {
    address: SocketAddr,
    task: Option<JoinHandle<()>>,
    device: Arc<Device>,
}

impl TcpDevice {
    async fn start(device: Arc<Device>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = Some(serve_tcp(listener, Arc::clone(&device)));
        Self {
            address,
            task,
            device,
        }
    }

    fn endpoint(&self) -> String {
        format!("tcp://{}", self.address)
    }

    /// The device vanishes: listener and connections closed.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The device is back on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.task = Some(serve_tcp(listener, Arc::clone(&self.device)));
    }
}

impl Drop for TcpDevice {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A `socat` child, killed when dropped.
struct Socat {
    _child: tokio::process::Child,
}

impl Socat {
    fn spawn(args: &[String]) -> Self {
        let child = tokio::process::Command::new("socat")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("socat is installed (apt-get install socat)");
        Self { _child: child }
    }
}

/// Two connected ptys, as `socat -d -d pty,raw,echo=0 pty,raw,echo=0` makes them.
async fn pty_pair(dir: &Path) -> (Socat, PathBuf, PathBuf) {
    let (a, b) = (dir.join("ttyA"), dir.join("ttyB"));
    let socat = Socat::spawn(&[
        "-d".into(),
        "-d".into(),
        format!("pty,raw,echo=0,link={}", a.display()),
        format!("pty,raw,echo=0,link={}", b.display()),
    ]);
    assert!(wait_until(Duration::from_secs(10), || a.exists() && b.exists()).await);
    (socat, a, b)
}

/// tokio-modbus's RTU server for `device` on a serial port (a pty here).
fn serve_rtu(path: &Path, device: Arc<Device>) -> JoinHandle<()> {
    let serial =
        tokio_serial::SerialStream::open(&tokio_serial::new(path.display().to_string(), 115_200))
            .unwrap();
    tokio::spawn(async move {
        let _ = server::rtu::Server::new(serial)
            .serve_forever(Service(device))
            .await;
    })
}

// ---------------------------------------------------------------------------------------------
// The connector side: the shared rig, and the Modbus rows it collects.

/// Starts a Modbus worker for `source`; returns its index in `rig.workers`.
async fn start_worker_for(rig: &mut Rig, source: &ModbusSource) -> usize {
    let config = toml::to_string(source).unwrap();
    rig.worker(&source.name, Table::Modbus, &config).await
}

/// The rows of each tag of `source`, once every tag has at least `n` rows.
async fn wait_for_tags(
    rig: &Rig,
    source: &str,
    tags: usize,
    n: usize,
    timeout: Duration,
) -> BTreeMap<String, Vec<Json>> {
    let complete = |rows: &[Json]| {
        let mut per_tag: BTreeMap<&str, usize> = BTreeMap::new();
        for row in rows {
            *per_tag
                .entry(row["tag_name"].as_str().unwrap_or_default())
                .or_default() += 1;
        }
        per_tag.len() >= tags && per_tag.values().all(|count| *count >= n)
    };
    let what = format!("{n} rows of each of {tags} tags");
    let rows = rig
        .wait_rows(Table::Modbus, source, &what, timeout, complete)
        .await;
    by_tag(rows)
}

fn by_tag(rows: Vec<Json>) -> BTreeMap<String, Vec<Json>> {
    let mut tags: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for row in rows {
        let tag = row["tag_name"].as_str().unwrap_or_default().to_owned();
        tags.entry(tag).or_default().push(row);
    }
    tags
}

fn source(name: &str, endpoint: &str, registers: Vec<ModbusRegister>) -> ModbusSource {
    ModbusSource {
        name: name.into(),
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

fn register(
    name: &str,
    unit_id: u8,
    kind: RegisterKind,
    address: u16,
    data_type: DataType,
) -> ModbusRegister {
    ModbusRegister {
        name: name.into(),
        unit_id,
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

/// Registers as a device with `order` sends a value whose big-endian bytes are `be`.
fn as_sent(be: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    if matches!(order, ByteOrder::CDAB | ByteOrder::DCBA) {
        words.reverse();
    }
    if matches!(order, ByteOrder::BADC | ByteOrder::DCBA) {
        words.iter_mut().for_each(|w| *w = w.swap_bytes());
    }
    words
}

fn raw_of(words: &[u16]) -> String {
    base64(
        &words
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect::<Vec<_>>(),
    )
}

/// What a tag must read as.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
}

fn check_value(row: &Json, expect: &Expect) {
    let tag = &row["tag_name"];
    assert_eq!(row["quality"], "good", "{tag}: {row}");
    match expect {
        Expect::Int(i) => {
            assert_eq!(row["value_type"], "int64", "{tag}");
            assert_eq!(row["value_str"], i.to_string(), "{tag}");
        }
        Expect::UInt(u) => {
            assert_eq!(row["value_type"], "uint64", "{tag}");
            assert_eq!(row["value_str"], u.to_string(), "{tag}");
        }
        Expect::Float(f) => {
            assert_eq!(row["value_type"], "double", "{tag}");
            let got = row["value_num"].as_f64().unwrap();
            assert!((got - f).abs() <= f.abs() * 1e-12, "{tag}: {got} != {f}");
        }
        Expect::Bool(b) => {
            assert_eq!(row["value_type"], "bool", "{tag}");
            assert_eq!(row["value_bool"], *b, "{tag}");
        }
        Expect::Str(s) => {
            assert_eq!(row["value_type"], "string", "{tag}");
            assert_eq!(row["value_str"], s.as_str(), "{tag}");
        }
    }
}

/// Every numeric type × byte order, on `kind`, from `base`; returns the tags, what they must
/// read as and the registers they occupy.
fn numeric_map(
    device: &Device,
    unit: u8,
    kind: RegisterKind,
    base: u16,
    prefix: &str,
) -> Vec<(ModbusRegister, Expect, Vec<u16>)> {
    let values: [(DataType, Vec<u8>, Expect); 8] = [
        (
            DataType::Int16,
            (-12_345i16).to_be_bytes().to_vec(),
            Expect::Int(-12_345),
        ),
        (
            DataType::Uint16,
            54_321u16.to_be_bytes().to_vec(),
            Expect::UInt(54_321),
        ),
        (
            DataType::Int32,
            (-123_456_789i32).to_be_bytes().to_vec(),
            Expect::Int(-123_456_789),
        ),
        (
            DataType::Uint32,
            3_000_000_000u32.to_be_bytes().to_vec(),
            Expect::UInt(3_000_000_000),
        ),
        (
            DataType::Int64,
            (-9_876_543_210_123i64).to_be_bytes().to_vec(),
            Expect::Int(-9_876_543_210_123),
        ),
        (
            DataType::Uint64,
            18_000_000_000_000_000_001u64.to_be_bytes().to_vec(),
            Expect::UInt(18_000_000_000_000_000_001),
        ),
        (
            DataType::Float32,
            123.456f32.to_be_bytes().to_vec(),
            Expect::Float(f64::from(123.456f32)),
        ),
        (
            DataType::Float64,
            (-9_876.543_210_123_45f64).to_be_bytes().to_vec(),
            Expect::Float(-9_876.543_210_123_45),
        ),
    ];
    let mut address = base;
    let mut tags = Vec::new();
    for (data_type, be, expect) in values {
        for order in [
            ByteOrder::ABCD,
            ByteOrder::CDAB,
            ByteOrder::BADC,
            ByteOrder::DCBA,
        ] {
            let words = as_sent(&be, order);
            device.set_words(unit, kind, address, &words);
            let mut reg = register(
                &format!("{prefix}_{data_type:?}_{order:?}").to_lowercase(),
                unit,
                kind,
                address,
                data_type,
            );
            reg.byte_order = order;
            address += u16::try_from(words.len()).unwrap();
            tags.push((reg, expect.clone(), words));
        }
    }
    tags
}

/// A register map with every kind, type and byte order on unit 1, and the same addresses with
/// other values on unit 2.
fn full_map(device: &Device) -> Vec<(ModbusRegister, Expect, Vec<u16>)> {
    let mut tags = numeric_map(device, 1, RegisterKind::Holding, 0, "h");
    tags.extend(numeric_map(device, 1, RegisterKind::Input, 0, "i"));
    for (unit, text) in [(1u8, "PUMP-7"), (2, "VALVE9")] {
        // A 6-character string in 4 registers, high byte first and (at 300) low byte first.
        let be: Vec<u8> = format!("{text}\0\0").into_bytes();
        for (address, order) in [(200u16, ByteOrder::ABCD), (300, ByteOrder::BADC)] {
            let words = as_sent(&be, order);
            device.set_words(unit, RegisterKind::Holding, address, &words);
            let mut reg = register(
                &format!("u{unit}_text_{order:?}").to_lowercase(),
                unit,
                RegisterKind::Holding,
                address,
                DataType::String,
            );
            reg.length = Some(4);
            reg.byte_order = order;
            tags.push((reg, Expect::Str(text.into()), words));
        }
    }
    // Scale, offset and unit: 2345 × 0.1 − 5 = 229.5 degC on unit 1; 1000 → 95 on unit 2.
    for (unit, raw, value) in [(1u8, 2345u16, 229.5), (2, 1000, 95.0)] {
        device.set_words(unit, RegisterKind::Input, 500, &[raw]);
        let mut reg = register(
            &format!("u{unit}_temperature"),
            unit,
            RegisterKind::Input,
            500,
            DataType::Uint16,
        );
        reg.scale = 0.1;
        reg.offset = -5.0;
        reg.unit = Some("degC".into());
        tags.push((reg, Expect::Float(value), vec![raw]));
    }
    // A register read as bool; coils and discrete inputs on both units.
    device.set_words(1, RegisterKind::Holding, 400, &[0x0100]);
    tags.push((
        register("u1_running", 1, RegisterKind::Holding, 400, DataType::Bool),
        Expect::Bool(true),
        vec![0x0100],
    ));
    for (unit, kind, address, bit) in [
        (1u8, RegisterKind::Coil, 10u16, true),
        (1, RegisterKind::Coil, 11, false),
        (1, RegisterKind::Discrete, 3, true),
        (2, RegisterKind::Coil, 10, false),
        (2, RegisterKind::Coil, 11, true),
        (2, RegisterKind::Discrete, 3, false),
    ] {
        device.set_bit(unit, kind, address, bit);
        let name = format!("u{unit}_{kind:?}_{address}").to_lowercase();
        tags.push((
            register(&name, unit, kind, address, DataType::Bool),
            Expect::Bool(bit),
            Vec::new(),
        ));
    }
    tags
}

fn check_full_map(rows: &BTreeMap<String, Vec<Json>>, tags: &[(ModbusRegister, Expect, Vec<u16>)]) {
    for (reg, expect, words) in tags {
        let row = &rows[&reg.name][0];
        check_value(row, expect);
        assert_eq!(row["unit_id"], reg.unit_id, "{}", reg.name);
        assert_eq!(row["address"], reg.address, "{}", reg.name);
        let kind = format!("{:?}", reg.kind).to_lowercase();
        assert_eq!(row["register_kind"], kind, "{}", reg.name);
        let data_type = format!("{:?}", reg.data_type).to_lowercase();
        assert_eq!(row["data_type"], data_type, "{}", reg.name);
        assert_eq!(row["scale"], reg.scale, "{}", reg.name);
        assert_eq!(row["offset"], reg.offset, "{}", reg.name);
        assert_eq!(
            row["unit"].as_str().unwrap_or_default(),
            reg.unit.as_deref().unwrap_or_default(),
            "{}",
            reg.name
        );
        let raw = if words.is_empty() {
            let Expect::Bool(bit) = expect else {
                unreachable!()
            };
            base64(&[u8::from(*bit)])
        } else {
            raw_of(words)
        };
        assert_eq!(row["raw"], raw, "{}", reg.name);
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_type_and_byte_order_decodes_and_two_unit_ids_share_one_connection() {
    let device = Device::new(&[1, 2]);
    let tags = full_map(&device);
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::start().await;
    let registers: Vec<ModbusRegister> = tags.iter().map(|(r, _, _)| r.clone()).collect();
    start_worker_for(&mut rig, &source("plc", &server.endpoint(), registers)).await;

    let rows = wait_for_tags(&rig, "plc", tags.len(), 1, Duration::from_secs(60)).await;
    check_full_map(&rows, &tags);
    let first = &rows["h_float32_abcd"][0];
    assert_eq!(first["device"], server.endpoint());
    assert_eq!(first["connector_id"], "test-connector");
    assert!(
        first["record_id"]
            .as_str()
            .unwrap()
            .starts_with("test-connector/plc/")
    );
    // Unit ids 1 and 2 answered on one connection.
    assert_eq!(device.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        rig.wait_events("plc", 1, Duration::from_secs(60)).await,
        ["connected"]
    );
    rig.stop().await;
}

/// The fewest reads covering `tags` (sorted, non-overlapping, one unit id and kind), over every
/// possible cut: the reference the worker's planner is held to.
fn fewest_reads(tags: &[(u16, u16)], max_gap: u32, max_len: u32) -> u64 {
    let end = |(a, n): (u16, u16)| u32::from(a) + u32::from(n);
    let mut best = vec![u64::MAX; tags.len() + 1];
    best[0] = 0;
    for j in 1..=tags.len() {
        for i in 0..j {
            let run = &tags[i..j];
            let span = end(run[run.len() - 1]) - u32::from(run[0].0);
            let gaps = run
                .windows(2)
                .all(|w| u32::from(w[1].0) - end(w[0]) <= max_gap);
            if span <= max_len && gaps && best[i] != u64::MAX {
                best[j] = best[j].min(best[i] + 1);
            }
        }
    }
    best[tags.len()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_scattered_registers_are_read_with_the_fewest_requests_the_rules_allow() {
    let device = Device::new(&[1, 2]);
    let mut rng = StdRng::seed_from_u64(4);
    let mut registers = Vec::new();
    let mut expected_requests = 0;
    let runs = [
        (1u8, RegisterKind::Holding, 60),
        (2, RegisterKind::Holding, 40),
        (1, RegisterKind::Input, 40),
        (1, RegisterKind::Coil, 30),
        (2, RegisterKind::Discrete, 30),
    ];
    for (unit, kind, count) in runs {
        let bits = matches!(kind, RegisterKind::Coil | RegisterKind::Discrete);
        let mut address: u16 = rng.random_range(0..1000);
        let mut places = Vec::new();
        for i in 0..count {
            let (data_type, length) = if bits {
                (DataType::Bool, 1)
            } else {
                match rng.random_range(0..4) {
                    0 => (DataType::Uint16, 1),
                    1 => (DataType::Float32, 2),
                    2 => (DataType::Int64, 4),
                    _ => (DataType::String, rng.random_range(2..=8)),
                }
            };
            // Mostly small gaps (merged), sometimes one wider than max_gap (a new read).
            let gap = if rng.random_bool(0.7) {
                rng.random_range(0..=10)
            } else {
                rng.random_range(11..=60)
            };
            address += gap;
            let name = format!("u{unit}_{kind:?}_{i}").to_lowercase();
            let mut reg = register(&name, unit, kind, address, data_type);
            if data_type == DataType::String {
                reg.length = Some(length);
            }
            if bits {
                device.set_bit(unit, kind, address, i % 2 == 0);
            } else {
                // Printable bytes: valid text for strings, finite numbers for floats.
                let words: Vec<u16> = (0..length)
                    .map(|_| {
                        u16::from_be_bytes([
                            rng.random_range(0x20..0x7f),
                            rng.random_range(0x20..0x7f),
                        ])
                    })
                    .collect();
                device.set_words(unit, kind, address, &words);
            }
            places.push((address, length));
            registers.push(reg);
            address += length;
        }
        let max_len = if bits { 2000 } else { 125 };
        expected_requests += fewest_reads(&places, 10, max_len);
    }
    assert_eq!(registers.len(), 200);
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::start().await;
    let mut config = source("scattered", &server.endpoint(), registers);
    // One scan only in this test.
    config.poll_interval_ms = 600_000;
    start_worker_for(&mut rig, &config).await;

    let rows = wait_for_tags(&rig, "scattered", 200, 1, Duration::from_secs(60)).await;
    assert!(rows.values().flatten().all(|r| r["quality"] == "good"));
    assert_eq!(device.requests(), expected_requests);
    // Far fewer than one request per register.
    assert!(expected_requests < 100, "{expected_requests}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_rejects_long_reads_and_holes_still_gets_every_register_after_splits() {
    let device = Device::new(&[1]);
    // At most 8 registers per read, and reading an address outside the map is an exception.
    device.max_read.store(8, Ordering::SeqCst);
    device.strict.store(true, Ordering::SeqCst);
    let mut registers = Vec::new();
    let mut expected = BTreeMap::new();
    let mut address = 0u16;
    for i in 0..30u16 {
        let (data_type, words) = if i % 3 == 0 {
            (
                DataType::Float32,
                as_sent(&(f32::from(i) + 0.5).to_be_bytes(), ByteOrder::ABCD),
            )
        } else {
            (DataType::Uint16, vec![1000 + i])
        };
        device.set_words(1, RegisterKind::Holding, address, &words);
        let name = format!("r{i}");
        registers.push(register(
            &name,
            1,
            RegisterKind::Holding,
            address,
            data_type,
        ));
        let value = if data_type == DataType::Float32 {
            Expect::Float(f64::from(i) + 0.5)
        } else {
            Expect::UInt(u64::from(1000 + i))
        };
        expected.insert(name, value);
        // Holes of 0–3 unmapped registers: the planner merges across them (max_gap 10).
        address += u16::try_from(words.len()).unwrap() + i % 4;
    }
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::start().await;
    let mut config = source("picky", &server.endpoint(), registers);
    config.poll_interval_ms = 500;
    start_worker_for(&mut rig, &config).await;

    let rows = wait_for_tags(&rig, "picky", 30, 1, Duration::from_secs(60)).await;
    for (name, expect) in &expected {
        check_value(&rows[name][0], expect);
    }
    assert!(
        device.exceptions() > 0,
        "the device refused the merged reads"
    );
    // The splits are remembered: later scans raise no exceptions, and every tag keeps coming.
    let exceptions = device.exceptions();
    let requests = device.requests();
    wait_for_tags(&rig, "picky", 30, 4, Duration::from_secs(60)).await;
    assert_eq!(device.exceptions(), exceptions);
    assert!(device.requests() > requests);
    let rows = by_tag(rig.rows(Table::Modbus, "picky"));
    for (name, expect) in &expected {
        for row in &rows[name] {
            check_value(row, expect);
        }
    }
    assert_eq!(
        rig.wait_events("picky", 1, Duration::from_secs(60)).await,
        ["connected"]
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_a_pty_pair_and_rtu_over_tcp_read_the_same_values_as_tcp() {
    let device = Device::new(&[1, 2]);
    let tags = full_map(&device);
    let registers: Vec<ModbusRegister> = tags.iter().map(|(r, _, _)| r.clone()).collect();
    let tcp = TcpDevice::start(Arc::clone(&device)).await;
    let scratch = tempfile::tempdir().unwrap();
    // rtu://: the RTU server on one end of a pty pair, the worker on the other.
    let (_pair, server_end, worker_end) = pty_pair(scratch.path()).await;
    let _rtu_server = serve_rtu(&server_end, Arc::clone(&device));
    // rtu+tcp://: socat carries the worker's TCP connection to a pty with the RTU server.
    let bridge_pty = scratch.path().join("ttyBridge");
    let port = free_port();
    let _bridge = Socat::spawn(&[
        "-d".into(),
        "-d".into(),
        format!("pty,raw,echo=0,link={}", bridge_pty.display()),
        format!("tcp-listen:{port},bind=127.0.0.1,reuseaddr"),
    ]);
    assert!(wait_until(Duration::from_secs(10), || bridge_pty.exists()).await);
    let _bridge_server = serve_rtu(&bridge_pty, Arc::clone(&device));

    let mut rig = Rig::start().await;
    start_worker_for(
        &mut rig,
        &source("over_tcp", &tcp.endpoint(), registers.clone()),
    )
    .await;
    let mut rtu = source(
        "over_rtu",
        &format!("rtu://{}", worker_end.display()),
        registers.clone(),
    );
    rtu.baud_rate = Some(115_200);
    start_worker_for(&mut rig, &rtu).await;
    start_worker_for(
        &mut rig,
        &source(
            "over_rtu_tcp",
            &format!("rtu+tcp://127.0.0.1:{port}"),
            registers,
        ),
    )
    .await;

    let columns = |rows: BTreeMap<String, Vec<Json>>| -> BTreeMap<String, Vec<Json>> {
        rows.into_iter()
            .map(|(tag, rows)| {
                let r = &rows[0];
                let picked = [
                    "quality",
                    "value_num",
                    "value_str",
                    "value_bool",
                    "value_type",
                    "raw",
                    "unit_id",
                    "register_kind",
                    "address",
                    "data_type",
                ]
                .map(|c| r[c].clone())
                .to_vec();
                (tag, picked)
            })
            .collect()
    };
    let over_tcp = wait_for_tags(&rig, "over_tcp", tags.len(), 1, Duration::from_secs(60)).await;
    check_full_map(&over_tcp, &tags);
    let over_rtu = wait_for_tags(&rig, "over_rtu", tags.len(), 1, Duration::from_secs(60)).await;
    check_full_map(&over_rtu, &tags);
    let over_rtu_tcp =
        wait_for_tags(&rig, "over_rtu_tcp", tags.len(), 1, Duration::from_secs(60)).await;
    check_full_map(&over_rtu_tcp, &tags);
    let tcp_columns = columns(over_tcp);
    assert_eq!(columns(over_rtu), tcp_columns);
    assert_eq!(columns(over_rtu_tcp), tcp_columns);
    assert_eq!(
        rig.rows(Table::Modbus, "over_rtu")[0]["device"],
        format!("rtu://{}", worker_end.display())
    );
    rig.stop().await;
}

/// Parses the attempts out of a `connected` row written after an outage.
fn attempts(detail: &str) -> u64 {
    let words: Vec<&str> = detail.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "connection")
        .unwrap_or_else(|| panic!("no attempts in {detail:?}"));
    words[at - 1].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_vanishes_for_10_s_is_reconnected_with_backoff_and_others_are_untouched() {
    let flaky_device = Device::new(&[1]);
    flaky_device.set_words(1, RegisterKind::Holding, 0, &[7]);
    let steady_device = Device::new(&[1]);
    steady_device.set_words(1, RegisterKind::Holding, 0, &[9]);
    let mut flaky = TcpDevice::start(Arc::clone(&flaky_device)).await;
    let steady = TcpDevice::start(Arc::clone(&steady_device)).await;
    let mut rig = Rig::start().await;
    for (name, server) in [("flaky", &flaky), ("steady", &steady)] {
        let mut config = source(
            name,
            &server.endpoint(),
            vec![register(
                "level",
                1,
                RegisterKind::Holding,
                0,
                DataType::Uint16,
            )],
        );
        config.poll_interval_ms = 200;
        config.timeout_ms = 500;
        start_worker_for(&mut rig, &config).await;
    }
    wait_for_tags(&rig, "flaky", 1, 3, Duration::from_secs(60)).await;
    wait_for_tags(&rig, "steady", 1, 3, Duration::from_secs(60)).await;

    flaky.stop().await;
    let gone = now_us();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let back = now_us();
    flaky.restart().await;

    let state = rig.zerobus().state().clone();
    let reconnected = state
        .wait_until(Duration::from_secs(60), |s| {
            event_names(&of_source(s.rows(STATUS), "flaky"))
                == ["connected", "disconnected", "connected"]
        })
        .await;
    let status = rig.worker_status("flaky");
    assert!(reconnected, "flaky status rows: {status:?}");
    // The reconnect came after the device was back, paced by the backoff: a handful of
    // attempts over 10 s (0.2, 0.4, 0.8, … s), not a tight loop.
    let reconnect = &status[2];
    assert!(reconnect["event_time"].as_i64().unwrap() >= back);
    let tries = attempts(reconnect["detail"].as_str().unwrap());
    assert!((3..=15).contains(&tries), "{tries} attempts: {reconnect}");
    let disconnect_time = status[1]["event_time"].as_i64().unwrap();
    assert!(
        disconnect_time >= gone && disconnect_time < back,
        "{status:?}"
    );
    // Data flows again.
    let resumed = state
        .wait_until(Duration::from_secs(30), |s| {
            of_source(s.rows(MODBUS), "flaky")
                .iter()
                .any(|r| r["event_time"].as_i64().unwrap() > back && r["value_str"] == "7")
        })
        .await;
    assert!(resumed);
    // Nothing crashed, and the other source never noticed.
    assert!(rig.workers_alive());
    assert_eq!(
        rig.wait_events("steady", 1, Duration::from_secs(60)).await,
        ["connected"]
    );
    let during = rig
        .rows(Table::Modbus, "steady")
        .iter()
        .filter(|r| {
            let t = r["event_time"].as_i64().unwrap();
            t > gone && t < back
        })
        .count();
    assert!(
        during >= 20,
        "only {during} steady records during the outage (50 expected)"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_on_one_register_makes_only_its_record_bad_and_keeps_the_connection() {
    let device = Device::new(&[1]);
    let registers: Vec<ModbusRegister> = (0..11u16)
        .map(|a| {
            device.set_words(1, RegisterKind::Holding, a, &[100 + a]);
            register(
                &format!("r{a}"),
                1,
                RegisterKind::Holding,
                a,
                DataType::Uint16,
            )
        })
        .collect();
    // Any read that covers address 5 is refused.
    device.broken.lock().unwrap().insert(5);
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::start().await;
    let mut config = source("partial", &server.endpoint(), registers);
    config.poll_interval_ms = 300;
    start_worker_for(&mut rig, &config).await;

    let rows = wait_for_tags(&rig, "partial", 11, 3, Duration::from_secs(60)).await;
    for (tag, rows) in &rows {
        for row in rows {
            if tag == "r5" {
                assert_eq!(row["quality"], "bad", "{row}");
                assert_eq!(row["value_type"], "null", "{row}");
                assert!(row["value_num"].is_null(), "{row}");
            } else {
                let address: u64 = tag[1..].parse().unwrap();
                check_value(row, &Expect::UInt(100 + address));
            }
        }
    }
    // The connection stayed up throughout.
    assert_eq!(device.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        rig.wait_events("partial", 1, Duration::from_secs(60)).await,
        ["connected"]
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constant_value_is_sent_every_heartbeat_and_a_change_beyond_the_deadband_at_once() {
    let device = Device::new(&[1]);
    device.set_words(1, RegisterKind::Holding, 0, &[100]);
    device.set_words(1, RegisterKind::Holding, 1, &[100]);
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut steady = register("steady", 1, RegisterKind::Holding, 0, DataType::Uint16);
    steady.heartbeat_ms = Some(2000);
    let mut banded = register("banded", 1, RegisterKind::Holding, 1, DataType::Uint16);
    banded.deadband = Some(5.0);
    banded.heartbeat_ms = Some(600_000);
    let mut rig = Rig::start().await;
    let mut config = source("rbe", &server.endpoint(), vec![steady, banded]);
    config.poll_interval_ms = 200;
    start_worker_for(&mut rig, &config).await;

    let rows = wait_for_tags(&rig, "rbe", 2, 1, Duration::from_secs(60)).await;
    let start = rows["steady"][0]["event_time"].as_i64().unwrap();
    // Within the deadband (3 < 5): suppressed. Beyond it (10 > 5): sent at once.
    device.set_words(1, RegisterKind::Holding, 1, &[103]);
    let within = now_us();
    // Both registers are read in one request: a steady heartbeat stamped after the change shows
    // that the worker has read 103 (and kept it to itself).
    let state = rig.zerobus().state().clone();
    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| {
                of_source(s.rows(MODBUS), "rbe").iter().any(|r| {
                    r["tag_name"] == "steady" && r["event_time"].as_i64().unwrap() > within
                })
            })
            .await
    );
    let changed = now_us();
    device.set_words(1, RegisterKind::Holding, 1, &[110]);

    // Wait until the heartbeat after the 7 s window arrived, so the window is complete.
    let window_end = start + 7_000_000;
    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| {
                of_source(s.rows(MODBUS), "rbe").iter().any(|r| {
                    r["tag_name"] == "steady" && r["event_time"].as_i64().unwrap() >= window_end
                })
            })
            .await
    );
    let rows = by_tag(rig.rows(Table::Modbus, "rbe"));
    let beats = rows["steady"]
        .iter()
        .filter(|r| r["event_time"].as_i64().unwrap() < window_end)
        .count();
    // 2 s heartbeat over a 7 s window: 4 expected (0, 2, 4, 6 s), polled every 0.2 s.
    assert!((3..=5).contains(&beats), "{beats} heartbeats in 7 s");
    assert!(rows["steady"].iter().all(|r| r["value_str"] == "100"));
    let banded: Vec<&str> = rows["banded"]
        .iter()
        .map(|r| r["value_str"].as_str().unwrap())
        .collect();
    assert_eq!(banded, ["100", "110"]);
    let delay = rows["banded"][1]["event_time"].as_i64().unwrap() - changed;
    assert!(
        (0..1_500_000).contains(&delay),
        "the change beyond the deadband came {delay} µs after it happened"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_slower_than_the_poll_interval_has_missed_scans_counted_not_queued() {
    let device = Device::new(&[1]);
    device.set_words(1, RegisterKind::Holding, 0, &[5]);
    // Every answer takes 250 ms; the tag asks for a scan every 100 ms.
    device.delay_ms.store(250, Ordering::SeqCst);
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::start().await;
    let mut config = source(
        "slow",
        &server.endpoint(),
        vec![register(
            "level",
            1,
            RegisterKind::Holding,
            0,
            DataType::Uint16,
        )],
    );
    config.poll_interval_ms = 100;
    start_worker_for(&mut rig, &config).await;

    let state = rig.zerobus().state().clone();
    let gap_reported = state
        .wait_until(Duration::from_secs(60), |s| {
            of_source(s.rows(STATUS), "slow")
                .iter()
                .any(|r| r["event"] == "gap" && r["count"].as_i64().unwrap_or(0) >= 1)
        })
        .await;
    assert!(gap_reported, "{:?}", rig.status("slow"));
    let gap = rig
        .status("slow")
        .into_iter()
        .find(|r| r["event"] == "gap")
        .unwrap();
    assert!(
        gap["detail"].as_str().unwrap().contains("scans missed"),
        "{gap}"
    );
    // Spacing of the records, from their event times: conditions on what arrived, not counts
    // in a fixed window of wall time (a loaded machine only makes the spacing wider).
    let times_after = |from: i64| -> Vec<i64> {
        let mut times: Vec<i64> = rig
            .rows(Table::Modbus, "slow")
            .iter()
            .filter_map(|r| r["event_time"].as_i64())
            .filter(|t| *t > from)
            .collect();
        times.sort_unstable();
        times
    };
    let spacing = |times: &[i64]| -> Vec<i64> { times.windows(2).map(|w| w[1] - w[0]).collect() };
    let wait_records = |from: i64, count: usize| {
        let state = state.clone();
        async move {
            assert!(
                state
                    .wait_until(Duration::from_secs(60), |s| {
                        of_source(s.rows(MODBUS), "slow")
                            .iter()
                            .filter(|r| r["event_time"].as_i64().is_some_and(|t| t > from))
                            .count()
                            >= count
                    })
                    .await,
                "fewer than {count} records after {from}"
            );
        }
    };
    // One record per answer (250 ms), not one per 100 ms slot.
    let slow_from = now_us();
    wait_records(slow_from, 12).await;
    let slow: Vec<i64> = times_after(slow_from).into_iter().take(12).collect();
    let slow_spacing = spacing(&slow);
    assert!(
        slow_spacing.iter().all(|d| *d >= 200_000),
        "records closer than the device answers while it is slow: {slow_spacing:?} µs"
    );
    // The device is fast again: scans return to the 100 ms grid, with no burst of the missed
    // ones (a queue of them would deliver dozens at once). An answer in flight may still take
    // its 250 ms.
    device.delay_ms.store(0, Ordering::SeqCst);
    let fast_from = now_us() + 300_000;
    wait_records(fast_from, 11).await;
    let fast: Vec<i64> = times_after(fast_from).into_iter().take(11).collect();
    let mut fast_spacing = spacing(&fast);
    assert!(
        fast_spacing.iter().all(|d| *d >= 50_000),
        "a burst of queued scans: {fast_spacing:?} µs"
    );
    fast_spacing.sort_unstable();
    let median = fast_spacing[fast_spacing.len() / 2];
    assert!(
        median < 200_000,
        "scans did not return to the 100 ms grid: {fast_spacing:?} µs"
    );
    let events = rig.wait_events("slow", 2, Duration::from_secs(60)).await;
    assert_eq!(events[0], "connected");
    assert!(!events.contains(&"disconnected".to_owned()), "{events:?}");
    rig.stop().await;
}

/// A Modbus TCP "device" that answers reads with malformed frames: wrong lengths, wrong
/// function codes, wrong transaction ids, exceptions, truncated frames and noise; counts the
/// requests it answered in `answered`.
async fn misbehave(listener: TcpListener, answered: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(7);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let seed = rng.random::<u64>();
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut request = [0u8; 12];
            while stream.read_exact(&mut request).await.is_ok() {
                let (tid, unit, function) = ([request[0], request[1]], request[6], request[7]);
                let count = usize::from(u16::from_be_bytes([request[10], request[11]]));
                let mbap = |len: usize| {
                    let len = u16::try_from(len + 1).unwrap_or(u16::MAX).to_be_bytes();
                    vec![tid[0], tid[1], 0, 0, len[0], len[1], unit]
                };
                let mut pdu = vec![function];
                let answer = match rng.random_range(0..9) {
                    // Fewer or more registers than asked.
                    0 | 1 => {
                        let n = if rng.random_bool(0.5) {
                            count.saturating_sub(rng.random_range(1..=count.max(1)))
                        } else {
                            count + rng.random_range(1..5)
                        };
                        pdu.push(u8::try_from(n * 2).unwrap_or(u8::MAX));
                        pdu.extend((0..n * 2).map(|_| rng.random::<u8>()));
                        [mbap(pdu.len()), pdu].concat()
                    }
                    // Another function's answer.
                    2 => {
                        pdu[0] = [1, 2, 3, 4, 5, 6, 15, 16][rng.random_range(0..8)];
                        pdu.extend([2, 0, 1]);
                        [mbap(pdu.len()), pdu].concat()
                    }
                    // An exception, with any code.
                    3 => {
                        pdu[0] |= 0x80;
                        pdu.push(rng.random());
                        [mbap(pdu.len()), pdu].concat()
                    }
                    // Another transaction id.
                    4 => {
                        let mut frame = mbap(2 + count * 2);
                        frame[0] ^= 0x5A;
                        pdu.push(u8::try_from(count * 2).unwrap_or(u8::MAX));
                        pdu.extend(std::iter::repeat_n(0x11, count * 2));
                        [frame, pdu].concat()
                    }
                    // Noise.
                    5 => (0..rng.random_range(0..300))
                        .map(|_| rng.random())
                        .collect(),
                    // A byte count that promises more than the frame holds.
                    6 => {
                        pdu.push(250);
                        pdu.extend([1, 2, 3]);
                        [mbap(pdu.len()), pdu].concat()
                    }
                    // A header that announces a huge frame, then silence or a close.
                    7 => {
                        let mut frame = mbap(0);
                        frame[4] = 0xFF;
                        frame[5] = 0xFF;
                        frame
                    }
                    // Once in a while, a correct answer.
                    _ => {
                        pdu.push(u8::try_from(count * 2).unwrap_or(u8::MAX));
                        pdu.extend(std::iter::repeat_n(0x22, count * 2));
                        [mbap(pdu.len()), pdu].concat()
                    }
                };
                answered.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(&answer).await.is_err() || rng.random_bool(0.1) {
                    break;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_never_panic_the_worker() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(misbehave(listener, Arc::clone(&answered)));
    let mut rig = Rig::start().await;
    let mut config = source(
        "liar",
        &format!("tcp://{address}"),
        vec![
            register("a", 1, RegisterKind::Holding, 0, DataType::Float64),
            register("b", 1, RegisterKind::Holding, 4, DataType::Uint16),
        ],
    );
    config.poll_interval_ms = 50;
    config.timeout_ms = 300;
    start_worker_for(&mut rig, &config).await;

    let enough = wait_until(Duration::from_secs(90), || {
        answered.load(Ordering::SeqCst) >= 100
    })
    .await;
    assert!(
        enough,
        "only {} answers in 90 s",
        answered.load(Ordering::SeqCst)
    );
    assert!(rig.workers_alive(), "the worker died on a malformed answer");
    // Malformed answers that kept the conversation in step became bad records; the correct
    // ones good records.
    let state = rig.zerobus().state().clone();
    assert!(
        state
            .wait_until(Duration::from_secs(30), |s| {
                let rows = of_source(s.rows(MODBUS), "liar");
                rows.iter().any(|r| r["quality"] == "bad")
                    && rows.iter().any(|r| r["quality"] == "good")
            })
            .await
    );
    // Answers out of step (other transaction id, other function, noise) dropped the connection.
    assert!(
        state
            .wait_until(Duration::from_secs(30), |s| {
                event_names(&of_source(s.rows(STATUS), "liar")).contains(&"disconnected".to_owned())
            })
            .await
    );
    server.abort();
    rig.stop().await;
}

/// The register map's rules live in the configuration crate alone: a map the worker could not
/// poll never reaches it, because `iot-connector check` (and `run`, and `reload`) refuse it
/// with the configuration exit status and the line of each problem.
#[test]
fn an_invalid_register_map_is_refused_with_the_config_exit_status_before_any_worker_runs() {
    let mut bad = register("pump", 1, RegisterKind::Coil, 0, DataType::Float32);
    bad.deadband = Some(-1.0);
    let source = source("broken", "tcp://127.0.0.1:1", vec![bad]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    let entry = toml::to_string(&source).unwrap();
    let text = iot_connector_tests::connector::config_text(
        dir.path(),
        "127.0.0.1:8081",
        &format!("[[sources]]\nprotocol = \"modbus\"\n{entry}"),
    );
    std::fs::write(&file, text).unwrap();
    let output = std::process::Command::new(iot_connector_tests::bin("iot-connector"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let prefix = format!("{}:", file.display());
    assert!(
        stderr.lines().count() >= 2 && stderr.lines().all(|l| l.starts_with(&prefix)),
        "every problem (a coil is a bit, a negative deadband) as FILE:LINE: {stderr}"
    );
}

/// Starts `iot-connector-modbus` for `registers` uint16 holding registers polled every
/// `poll_interval_ms`, with `deadband`, against `server`, into the rig's spool; returns its index
/// in `rig.workers`.
async fn bench_worker(
    rig: &mut Rig,
    name: &str,
    server: &TcpDevice,
    registers: u16,
    poll_interval_ms: u64,
    deadband: Option<f64>,
) -> usize {
    let registers = (0..registers)
        .map(|a| ModbusRegister {
            deadband,
            ..register(
                &format!("r{a}"),
                1,
                RegisterKind::Holding,
                a,
                DataType::Uint16,
            )
        })
        .collect();
    let mut config = source(name, &server.endpoint(), registers);
    config.poll_interval_ms = poll_interval_ms;
    start_worker_for(rig, &config).await
}

/// Registers per second polled end to end into the spool over loopback, and the worker's RSS
/// with 10,000 registers. Prints its figures; run with
/// `cargo test -p iot-connector-tests --test modbus -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, takes about a minute"]
async fn bench_registers_per_second_into_the_spool_and_rss_with_10000_registers() {
    const REGISTERS: u16 = 10_000;
    const SECONDS: u64 = 20;
    let device = Device::new(&[1]);
    device.set_words(
        1,
        RegisterKind::Holding,
        0,
        &(0..REGISTERS).collect::<Vec<_>>(),
    );
    let server = TcpDevice::start(Arc::clone(&device)).await;
    let mut rig = Rig::builder().offline().start().await;
    let rss_kib =
        |rig: &Rig, worker: usize| proc_status_kib(rig.workers[worker].pid(), "VmRSS").unwrap();

    // Throughput: scans back to back (poll interval 1 ms).
    let worker = bench_worker(&mut rig, "bench", &server, REGISTERS, 1, None).await;
    let running = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(30), || device.requests() >= 80).await);
    let (requests, started) = (device.requests(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let reads = device.requests() - requests;
    let rss_hot = rss_kib(&rig, worker);
    rig.workers[worker].kill().await;
    let run_time = running.elapsed().as_secs_f64();

    // Memory at a realistic rate (every register once a second), and a one-register baseline.
    // Polling alone: the values never change and a zero deadband reports none of them again, so
    // the uplink does no work and the read rate is the worker's and the device's.
    let polling = bench_worker(&mut rig, "polling", &server, REGISTERS, 1, Some(0.0)).await;
    assert!(
        wait_until(Duration::from_secs(30), || device.requests()
            >= requests + reads + 80)
        .await
    );
    let (polled, polling_started) = (device.requests(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let polling_reads = device.requests() - polled;
    let polling_elapsed = polling_started.elapsed().as_secs_f64();
    rig.workers[polling].kill().await;

    let steady = bench_worker(&mut rig, "steady", &server, REGISTERS, 1000, None).await;
    let baseline = bench_worker(&mut rig, "baseline", &server, 1, 1000, None).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss_steady, rss_baseline) = (rss_kib(&rig, steady), rss_kib(&rig, baseline));
    rig.kill_all().await;

    let spool = rig.uplink.open_spool().unwrap();
    let stored = spool.last_seq("bench").unwrap().unwrap_or(0);
    let target = 8 * 1024 + u64::from(REGISTERS);
    println!(
        "modbus bench: {:.0} reads/s of 125 registers ({:.0} registers/s read); {stored} records \
         in the spool, {:.0} records/s into the spool; polling alone (no change to report): \
         {:.0} reads/s ({:.0} registers/s); worker RSS with {REGISTERS} registers: \
         {rss_steady} KiB polled every second, {rss_hot} KiB polled back to back, {rss_baseline} \
         KiB with one register (target {target} KiB)",
        reads as f64 / elapsed,
        reads as f64 * 125.0 / elapsed,
        stored as f64 / run_time,
        polling_reads as f64 / polling_elapsed,
        polling_reads as f64 * 125.0 / polling_elapsed,
    );
    // The target is for release builds; a debug build's own code and data add megabytes.
    if !cfg!(debug_assertions) {
        assert!(rss_steady <= target, "RSS {rss_steady} KiB");
    }
}
