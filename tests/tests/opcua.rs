//! The OPC-UA worker end to end: the real `iot-connector-opcua` binary against async-opcua's own
//! server, run in this process with an address space and values the test controls, through the
//! real uplink to the Zerobus emulator, where the tests read the decoded rows.
//!
//! The server's key pair is generated once per test binary (RSA is optimised in the dev
//! profile); the worker creates its own under `<state_dir>/pki` the way it does in production.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should fail loudly
#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iot_connector_proto::Table;
use iot_connector_tests::{
    Rig, TABLES, connector::Connector, free_port, of_source, proc_status_kib, wait_until,
};
use opcua::{
    core::config::Config as _,
    crypto::{CertificateStore, SecurityPolicy, X509, X509Data},
    nodes::Variable,
    server::{
        ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken,
        address_space::AddressSpace,
        diagnostics::NamespaceMetadata,
        node_manager::memory::{SimpleNodeManager, simple_node_manager},
    },
    types::{
        Array, DataValue, DateTime, ExtensionObject, MessageSecurityMode, NodeId, ObjectId,
        QualifiedName, Range, ReferenceTypeId, StatusCode, Variant, VariantScalarTypeId,
    },
};
use serde_json::Value as Json;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

const STATUS: &str = TABLES[3];
const NS_URI: &str = "urn:iot-connector-test:plant";
const SERVER_URI: &str = "urn:iot-connector-test:server";
const USER: &str = "operator";
const PASSWORD: &str = "op-secret";
/// Ticks (100 ns) between 1601 and 1970.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
/// One tick of the test's clock: 100 ms in OPC-UA ticks.
const TICK: i64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// The OPC-UA server.

/// The server's certificate and key, made once for the whole test binary.
fn server_keys() -> &'static Path {
    static KEYS: OnceLock<PathBuf> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let description = builder(0, &dir, Offer::All, ITEMS_PER_SUBSCRIPTION)
            .config()
            .application_description();
        CertificateStore::create_certificate_and_key(
            &(description, None).into(),
            true,
            &dir.join("own/cert.der"),
            &dir.join("private/private.pem"),
        )
        .unwrap();
        dir
    })
}

/// An X.509 user certificate and key the server accepts as user `x509user`.
fn user_keys() -> &'static Path {
    static KEYS: OnceLock<PathBuf> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let data = X509Data {
            key_size: 2048,
            common_name: "x509user".into(),
            organization: "test".into(),
            organizational_unit: "test".into(),
            country: String::new(),
            state: String::new(),
            alt_host_names: X509Data::alt_host_names("urn:x509user", None, false, false, false),
            certificate_duration_days: 30,
        };
        CertificateStore::create_certificate_and_key(
            &data,
            true,
            &dir.join("user.der"),
            &dir.join("user.pem"),
        )
        .unwrap();
        dir
    })
}

/// Which endpoints the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// None, Basic256Sha256, Aes128 and Aes256, Sign and SignAndEncrypt.
    All,
    /// Only security None.
    NoneOnly,
}

/// The server's limit of monitored items per subscription, unless a test sets its own.
const ITEMS_PER_SUBSCRIPTION: usize = 20_000;

fn builder(port: u16, pki: &Path, offer: Offer, items_per_subscription: usize) -> ServerBuilder {
    let users: &[&str] = &[ANONYMOUS_USER_TOKEN_ID, "op", "x509"];
    let mut b = ServerBuilder::new()
        .application_name("test plant")
        .application_uri(SERVER_URI)
        .product_uri(SERVER_URI)
        .host("127.0.0.1")
        .port(port)
        .pki_dir(pki)
        .create_sample_keypair(false)
        .trust_client_certs(true)
        .add_user_token("op", ServerUserToken::user_pass(USER, PASSWORD))
        .add_user_token(
            "x509",
            ServerUserToken::x509("x509user", &user_keys().join("user.der")),
        )
        .discovery_urls(vec!["/".into()])
        .add_endpoint(
            "none",
            ("/", SecurityPolicy::None, MessageSecurityMode::None, users),
        )
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NS_URI.into(),
                ..Default::default()
            },
            "plant",
        ));
    if offer == Offer::All {
        for policy in [
            SecurityPolicy::Basic256Sha256,
            SecurityPolicy::Aes128Sha256RsaOaep,
            SecurityPolicy::Aes256Sha256RsaPss,
        ] {
            for mode in [
                MessageSecurityMode::Sign,
                MessageSecurityMode::SignAndEncrypt,
            ] {
                b = b.add_endpoint(format!("{policy}-{mode:?}"), ("/", policy, mode, users));
            }
        }
    }
    let limits = b.limits_mut();
    // Room for a value larger than one record may be (the worker accepts 16 MiB messages).
    limits.max_message_size = 16 << 20;
    limits.max_chunk_count = 256;
    limits.max_array_length = 1 << 20;
    limits.subscriptions.max_monitored_items_per_sub = items_per_subscription;
    limits.subscriptions.max_queued_notifications = 1000;
    b
}

/// The current server's handles, shared with the ticker (a restart swaps them).
type Live = Arc<Mutex<Option<(Arc<SimpleNodeManager>, ServerHandle)>>>;

/// An OPC-UA server with the plant's address space:
/// `Plant/Line1/V00..V49` (mixed types, ticking at 10 Hz), `Plant/Line2/{MotorSpeed, FanSpeed,
/// Temperature, Spectrum, Drive/{DriveSpeed, Mode}}`, `Plant/Tank/{Pressure, Level (EURange
/// 0..200)}` and, on request, `Plant/Bench/B00000..`.
struct Plant {
    port: u16,
    pki: PathBuf,
    offer: Offer,
    bench: usize,
    items_per_subscription: usize,
    live: Live,
    ns: u16,
    /// Ticks start here (OPC-UA ticks).
    base: i64,
    tick: Arc<AtomicU64>,
    ticking: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

fn line1(i: usize) -> String {
    format!("Line1.V{i:02}")
}

/// The value of `Line1.V<i>` at tick `t`: every type changes at every tick.
fn line1_value(i: usize, t: u64) -> Variant {
    match i % 5 {
        0 => Variant::Double(t as f64 + i as f64 / 100.0),
        1 => Variant::Int32((t * 1000 + i as u64) as i32),
        2 => Variant::Boolean((t + i as u64).is_multiple_of(2)),
        3 => Variant::from(format!("v{t}")),
        _ => Variant::UInt64(t * 1000 + i as u64),
    }
}

fn line1_status(t: u64) -> StatusCode {
    if t % 7 == 3 {
        StatusCode::UncertainLastUsableValue
    } else if t % 11 == 5 {
        StatusCode::BadSensorFailure
    } else {
        StatusCode::Good
    }
}

fn us(ticks: i64) -> i64 {
    (ticks - UNIX_EPOCH_TICKS) / 10
}

impl Plant {
    async fn start(offer: Offer) -> Self {
        Self::start_with(offer, 0).await
    }

    async fn start_with(offer: Offer, bench: usize) -> Self {
        Self::start_limited(offer, bench, ITEMS_PER_SUBSCRIPTION).await
    }

    async fn start_limited(offer: Offer, bench: usize, items_per_subscription: usize) -> Self {
        let pki = tempfile::tempdir().unwrap().keep();
        for sub in ["own", "private"] {
            std::fs::create_dir_all(pki.join(sub)).unwrap();
        }
        std::fs::copy(server_keys().join("own/cert.der"), pki.join("own/cert.der")).unwrap();
        std::fs::copy(
            server_keys().join("private/private.pem"),
            pki.join("private/private.pem"),
        )
        .unwrap();
        let mut plant = Self {
            port: free_port(),
            pki,
            offer,
            bench,
            items_per_subscription,
            live: Arc::new(Mutex::new(None)),
            ns: 0,
            base: DateTime::now().checked_ticks() / TICK * TICK,
            tick: Arc::new(AtomicU64::new(0)),
            ticking: Arc::new(AtomicBool::new(true)),
            ticker: None,
        };
        plant.up().await;
        plant.ticker = Some(tokio::spawn(tick_line1(
            Arc::clone(&plant.live),
            Arc::clone(&plant.tick),
            Arc::clone(&plant.ticking),
            plant.base,
        )));
        plant
    }

    /// Builds and starts a server on `self.port` and fills its address space.
    async fn up(&mut self) {
        let (server, handle) = builder(
            self.port,
            &self.pki,
            self.offer,
            self.items_per_subscription,
        )
        .build()
        .unwrap();
        let listener = bind_retrying(self.port).await;
        tokio::spawn(server.run_with(listener));
        let nm = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .unwrap();
        let ns = nm
            .namespaces()
            .iter()
            .find(|(_, uri)| uri.as_str() == NS_URI)
            .map(|(i, _)| *i)
            .unwrap();
        self.ns = ns;
        populate(&mut nm.address_space().write(), ns, self.bench);
        *self.live.lock().unwrap() = Some((nm, handle));
        // Ready once it accepts connections.
        assert!(
            wait_until(Duration::from_secs(60), || std::net::TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_ok())
            .await
        );
    }

    /// Stops the server (its sessions and subscriptions are gone).
    async fn down(&self) {
        let current = self.live.lock().unwrap().take();
        if let Some((_, handle)) = current {
            handle.cancel();
        }
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_err())
            .await,
            "the server still accepts connections"
        );
    }

    fn url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    fn node(&self, id: &str) -> NodeId {
        NodeId::new(self.ns, id)
    }

    fn set(&self, id: &str, value: impl Into<Variant>) {
        let live = self.live.lock().unwrap();
        let (nm, handle) = live.as_ref().unwrap();
        let node = self.node(id);
        nm.set_values(
            handle.subscriptions(),
            [(&node, None, DataValue::new_now(value.into()))].into_iter(),
        )
        .unwrap();
    }

    fn server_cert(&self) -> X509 {
        X509::from_der(&std::fs::read(self.pki.join("own/cert.der")).unwrap()).unwrap()
    }

    /// Places the server certificate in a worker state dir's trust list.
    fn trust_in(&self, state: &Path) {
        let trusted = state.join("pki/trusted");
        std::fs::create_dir_all(&trusted).unwrap();
        let cert = self.server_cert();
        std::fs::write(
            trusted.join(CertificateStore::cert_file_name(&cert)),
            cert.to_der().unwrap(),
        )
        .unwrap();
    }

    fn source_us(&self, t: u64) -> i64 {
        us(self.base + t as i64 * TICK)
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        if let Ok(mut live) = self.live.lock()
            && let Some((_, handle)) = live.take()
        {
            handle.cancel();
        }
    }
}

async fn bind_retrying(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() > deadline => panic!("cannot bind {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn populate(space: &mut AddressSpace, ns: u16, bench: usize) {
    let id = |s: &str| NodeId::new(ns, s);
    let name = |s: &str| QualifiedName::new(ns, s);
    let objects: NodeId = ObjectId::ObjectsFolder.into();
    space.add_folder(&id("Plant"), name("Plant"), "Plant", &objects);
    space.add_folder(&id("Line1"), name("Line1"), "Line1", &id("Plant"));
    space.add_folder(&id("Line2"), name("Line2"), "Line2", &id("Plant"));
    space.add_folder(&id("Line2.Drive"), name("Drive"), "Drive", &id("Line2"));
    space.add_folder(&id("Tank"), name("Tank"), "Tank", &id("Plant"));
    let line1: Vec<Variable> = (0..50)
        .map(|i| {
            let n = format!("V{i:02}");
            Variable::new(&id(&line1(i)), name(&n), n.as_str(), line1_value(i, 0))
        })
        .collect();
    space.add_variables(line1, &id("Line1"));
    let spectrum = Array::new(
        VariantScalarTypeId::Double,
        vec![
            Variant::Double(1.5),
            Variant::Double(2.5),
            Variant::Double(-3.0),
        ],
    )
    .unwrap();
    space.add_variables(
        vec![
            Variable::new(
                &id("Line2.MotorSpeed"),
                name("MotorSpeed"),
                "Motor speed",
                0.0,
            ),
            Variable::new(&id("Line2.FanSpeed"), name("FanSpeed"), "Fan speed", 0.0),
            Variable::new(
                &id("Line2.Temperature"),
                name("Temperature"),
                "Temperature",
                20.0,
            ),
            Variable::new(
                &id("Line2.Spectrum"),
                name("Spectrum"),
                "Spectrum",
                Variant::Array(Box::new(spectrum)),
            ),
        ],
        &id("Line2"),
    );
    space.add_variables(
        vec![
            Variable::new(
                &id("Line2.Drive.DriveSpeed"),
                name("DriveSpeed"),
                "Drive speed",
                0.0,
            ),
            Variable::new(&id("Line2.Drive.Mode"), name("Mode"), "Mode", "auto"),
        ],
        &id("Line2.Drive"),
    );
    space.add_variables(
        vec![
            Variable::new(&id("Tank.Pressure"), name("Pressure"), "Pressure", 10.0),
            Variable::new(&id("Tank.Level"), name("Level"), "Level", 100.0),
        ],
        &id("Tank"),
    );
    // Percent deadbands need the node's EURange property.
    let range = Variable::new(
        &id("Tank.Level.EURange"),
        "EURange",
        "EURange",
        Variant::ExtensionObject(ExtensionObject::from_message(Range {
            low: 0.0,
            high: 200.0,
        })),
    );
    space.insert::<_, NodeId>(range, None);
    space.insert_reference(
        &id("Tank.Level"),
        &id("Tank.Level.EURange"),
        ReferenceTypeId::HasProperty,
    );
    if bench > 0 {
        space.add_folder(&id("Bench"), name("Bench"), "Bench", &id("Plant"));
        let vars: Vec<Variable> = (0..bench)
            .map(|i| {
                let n = format!("B{i:05}");
                Variable::new(&id(&format!("Bench.{n}")), name(&n), n.as_str(), 0.0)
            })
            .collect();
        space.add_variables(vars, &id("Bench"));
    }
}

/// Sets every `Line1` variable at 10 Hz with source timestamps on the test's clock.
async fn tick_line1(live: Live, tick: Arc<AtomicU64>, ticking: Arc<AtomicBool>, base: i64) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        if !ticking.load(Ordering::Relaxed) {
            continue;
        }
        let t = tick.fetch_add(1, Ordering::Relaxed) + 1;
        let current = live.lock().unwrap().clone();
        let Some((nm, handle)) = current else {
            continue;
        };
        let source = DateTime::from(base + t as i64 * TICK);
        let ids: Vec<NodeId> = (0..50).map(|i| NodeId::new(ns_of(&nm), line1(i))).collect();
        let values = ids.iter().enumerate().map(|(i, id)| {
            (
                id,
                None,
                DataValue {
                    value: Some(line1_value(i, t)),
                    status: Some(line1_status(t)),
                    source_timestamp: Some(source),
                    server_timestamp: Some(DateTime::now()),
                    ..Default::default()
                },
            )
        });
        let _ = nm.set_values(handle.subscriptions(), values);
    }
}

fn ns_of(nm: &SimpleNodeManager) -> u16 {
    nm.namespaces()
        .iter()
        .find(|(_, uri)| uri.as_str() == NS_URI)
        .map_or(0, |(i, _)| *i)
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy whose connections the test can reset.

struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {
                            let _ = a.shutdown().await;
                            let _ = b.shutdown().await;
                        }
                        _ = cuts.changed() => {
                            // SO_LINGER 0: the close sends a RST, as a firewall or a cable would.
                            #[allow(deprecated)] // a blocking close is what a reset needs
                            {
                                let _ = a.set_linger(Some(Duration::ZERO));
                                let _ = b.set_linger(Some(Duration::ZERO));
                            }
                        }
                    }
                });
            }
        });
        Self { port, cut, task }
    }

    /// Resets every open connection.
    fn reset(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the rows.

fn with_node<'a>(rows: &'a [Json], node_suffix: &str) -> Vec<&'a Json> {
    rows.iter()
        .filter(|r| {
            r["node_id"]
                .as_str()
                .is_some_and(|n| n.ends_with(node_suffix))
        })
        .collect()
}

fn int(row: &Json, column: &str) -> i64 {
    row[column]
        .as_i64()
        .unwrap_or_else(|| panic!("{column} in {row}"))
}

/// Anonymous, security None, the given extra keys.
fn source_none(plant: &Plant, extra: &str) -> String {
    format!("name = \"x\"\nendpoint = \"{}\"\n{extra}\n", plant.url())
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_variables_at_10_hz_arrive_with_value_timestamps_and_quality() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    // Half by index, half by namespace URI.
    let nodes: Vec<String> = (0..50)
        .map(|i| {
            let ns = if i % 2 == 0 {
                format!("ns={}", plant.ns)
            } else {
                format!("nsu={NS_URI}")
            };
            format!(
                "{{ node_id = \"{ns};s={}\", sampling_interval_ms = 100 }}",
                line1(i)
            )
        })
        .collect();
    let config = source_none(
        &plant,
        &format!(
            "publishing_interval_ms = 200\nnodes = [{}]",
            nodes.join(", ")
        ),
    );
    rig.worker("line1", Table::Opcua, &config).await;

    // Wait until every variable reports, then let it run for 4 s more.
    rig.wait_rows(
        Table::Opcua,
        "line1",
        "all 50 variables",
        Duration::from_secs(60),
        |rows| (0..50).all(|i| !with_node(rows, &line1(i)).is_empty()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    plant.ticking.store(false, Ordering::Relaxed);
    let last = plant.tick.load(Ordering::Relaxed);
    let last_us = plant.source_us(last);
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "line1",
            "the last tick of every variable",
            Duration::from_secs(60),
            |rows| {
                (0..50).all(|i| {
                    with_node(rows, &line1(i))
                        .iter()
                        .any(|r| r["source_time"].as_i64() == Some(last_us))
                })
            },
        )
        .await;

    for i in 0..50 {
        let mine = with_node(&rows, &line1(i));
        let mut ticks = BTreeSet::new();
        for row in &mine {
            assert_eq!(row["endpoint"], plant.url().as_str());
            assert_eq!(row["namespace_uri"], NS_URI);
            assert_eq!(
                row["node_id"],
                format!("ns={};s={}", plant.ns, line1(i)).as_str()
            );
            assert_eq!(
                row["browse_path"],
                format!("/Plant/Line1/V{i:02}").as_str(),
                "{row}"
            );
            assert_eq!(row["display_name"], format!("V{i:02}").as_str());
            let source = int(row, "source_time");
            assert_eq!(
                int(row, "event_time"),
                source,
                "event time is the source time"
            );
            assert!(row["server_time"].as_i64().is_some(), "{row}");
            let offset = source - plant.source_us(0);
            if offset == 0 {
                continue; // the value the variable was created with
            }
            assert_eq!(offset % 100_000, 0, "{row}");
            let t = (offset / 100_000) as u64;
            ticks.insert(t);
            let status = line1_status(t);
            assert_eq!(int(row, "status_code"), i64::from(status.bits()), "{row}");
            let quality = if status.is_good() {
                "good"
            } else if status.is_uncertain() {
                "uncertain"
            } else {
                "bad"
            };
            assert_eq!(row["quality"], quality, "{row}");
            match line1_value(i, t) {
                Variant::Double(v) => {
                    assert_eq!(row["value_type"], "double");
                    assert_eq!(row["value_num"].as_f64(), Some(v), "{row}");
                }
                Variant::Int32(v) => {
                    assert_eq!(row["value_type"], "int64");
                    assert_eq!(row["value_str"], v.to_string().as_str(), "{row}");
                }
                Variant::UInt64(v) => {
                    assert_eq!(row["value_type"], "uint64");
                    assert_eq!(row["value_str"], v.to_string().as_str(), "{row}");
                }
                Variant::Boolean(v) => {
                    assert_eq!(row["value_type"], "bool");
                    assert_eq!(row["value_bool"], v, "{row}");
                }
                Variant::String(v) => {
                    assert_eq!(row["value_type"], "string");
                    assert_eq!(row["value_str"], v.as_ref(), "{row}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Every change from the first one seen to the last one arrived.
        let first = *ticks.first().unwrap();
        let missing: Vec<u64> = (first..=last).filter(|t| !ticks.contains(t)).collect();
        assert!(
            missing.is_empty(),
            "V{i:02}: ticks {missing:?} missing of {first}..={last}"
        );
        assert!(last - first >= 30, "V{i:02}: only {first}..={last}");
    }
    rig.stop().await;
}

fn secure_source(plant: &Plant, policy: &str) -> String {
    format!(
        "name = \"x\"\nendpoint = \"{}\"\nsecurity_policy = \"{policy}\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         username = \"{USER}\"\npassword = \"{PASSWORD}\"\npublishing_interval_ms = 100\n\
         nodes = [ {{ node_id = \"nsu={NS_URI};s=Line1.V00\", sampling_interval_ms = 100 }} ]\n",
        plant.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_and_aes256_sign_and_encrypt_with_a_username_or_x509_user_deliver_data() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    plant.trust_in(&rig.state_dir());
    // Both workers share the state dir: the client key pair is made once, under a lock.
    rig.worker(
        "b256",
        Table::Opcua,
        &secure_source(&plant, "Basic256Sha256"),
    )
    .await;
    rig.worker(
        "aes256",
        Table::Opcua,
        &secure_source(&plant, "Aes256_Sha256_RsaPss"),
    )
    .await;
    let x509 = secure_source(&plant, "Basic256Sha256").replace(
        &format!("username = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
        &format!(
            "user_certificate_file = {:?}\nuser_private_key_file = {:?}\n",
            user_keys().join("user.der").display().to_string(),
            user_keys().join("user.pem").display().to_string()
        ),
    );
    assert!(x509.contains("user_certificate_file"));
    rig.worker("x509", Table::Opcua, &x509).await;
    for source in ["b256", "aes256", "x509"] {
        rig.wait_rows(
            Table::Opcua,
            source,
            "10 values",
            Duration::from_secs(90),
            |rows| rows.len() >= 10,
        )
        .await;
        let connected = rig.events(source, "connected");
        assert!(!connected.is_empty());
        assert!(
            connected[0]["detail"]
                .as_str()
                .unwrap()
                .contains("SignAndEncrypt"),
            "{:?}",
            connected[0]
        );
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_offering_only_none_is_refused_when_sign_is_configured() {
    let plant = Plant::start(Offer::NoneOnly).await;
    let mut rig = Rig::start().await;
    plant.trust_in(&rig.state_dir());
    let signed = format!(
        "name = \"x\"\nendpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"Sign\"\n\
         nodes = [ {{ node_id = \"ns={};s=Line1.V00\" }} ]\n",
        plant.url(),
        plant.ns
    );
    let secure = rig.worker("signed", Table::Opcua, &signed).await;
    // A worker without security on the same server gets data: the server is fine.
    let plain = source_none(
        &plant,
        &format!(
            "nodes = [ {{ node_id = \"ns={};s=Line1.V00\" }} ]",
            plant.ns
        ),
    );
    rig.worker("plain", Table::Opcua, &plain).await;
    rig.wait_rows(
        Table::Opcua,
        "plain",
        "data",
        Duration::from_secs(60),
        |rows| rows.len() >= 5,
    )
    .await;
    // Refused for the reason that matters, not for any failure at all.
    let row = rig
        .wait_event(
            "signed",
            "disconnected",
            "offers no endpoint with",
            Duration::from_secs(60),
        )
        .await;
    let detail = row["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("Sign") && detail.contains("refusing to connect with other security"),
        "{detail}"
    );
    assert!(
        rig.rows(Table::Opcua, "signed").is_empty(),
        "{:?}",
        rig.rows(Table::Opcua, "signed")
    );
    assert!(rig.events("signed", "connected").is_empty());
    assert!(
        rig.alive(secure),
        "a refused server is retried, not a crash"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_reported_and_trusted_without_a_restart() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    let config = format!(
        "name = \"x\"\nendpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         nodes = [ {{ node_id = \"ns={};s=Line1.V00\" }} ]\n",
        plant.url(),
        plant.ns
    );
    let worker = rig.worker("pinned", Table::Opcua, &config).await;
    let pid = rig.workers[worker].pid();
    let cert = plant.server_cert();
    let thumbprint = cert.thumbprint().as_hex_string();
    let name = CertificateStore::cert_file_name(&cert);
    let rejected = rig.state_dir().join("pki/rejected").join(&name);
    assert!(name.contains(&thumbprint), "{name}");
    assert!(
        wait_until(Duration::from_secs(60), || rejected.exists()).await,
        "the server certificate was not put in {}",
        rejected.display()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        rig.rows(Table::Opcua, "pinned").is_empty(),
        "no data before the certificate is trusted"
    );

    std::fs::rename(&rejected, rig.state_dir().join("pki/trusted").join(&name)).unwrap();
    rig.wait_rows(
        Table::Opcua,
        "pinned",
        "data once trusted",
        Duration::from_secs(90),
        |rows| !rows.is_empty(),
    )
    .await;
    assert!(rig.alive(worker));
    assert_eq!(rig.workers[worker].pid(), pid, "no restart");
    rig.stop().await;
}

/// The real supervisor (which finds the real workers next to itself) with one OPC-UA source
/// `plc` (the rest of its `[[sources]]` entry given); also returns the state dir.
fn supervised(source: &str) -> (Connector, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[connector]\nid = \"opcua-test\"\nstate_dir = {:?}\nruntime_dir = {:?}\nlog_level = \"warn\"\n\n\
         [http]\nlisten = \"{http}\"\n\n\
         [[sources]]\nname = \"plc\"\nprotocol = \"opcua\"\n{source}\n",
        state.display().to_string(),
        dir.path().join("run").display().to_string(),
    );
    (Connector::launch(dir, http, &config), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_reported_after_the_connect_timeout() {
    // Accepts connections and never answers, as a hung gateway does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (connector, _) = supervised(&format!(
        "endpoint = \"opc.tcp://127.0.0.1:{port}/\"\nconnect_timeout_ms = 1000\n\
         nodes = [ {{ node_id = \"ns=2;s=A\" }} ]"
    ));
    assert!(
        connector
            .wait_for(Duration::from_secs(60), |c| {
                c.health_of("plc")["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("did not answer"))
            })
            .await,
        "{}",
        connector.health_of("plc")
    );
    assert_eq!(connector.health_of("plc")["state"], "connecting");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_untrusted_certificate_report_reaches_status_and_health_through_the_supervisor() {
    let plant = Plant::start(Offer::All).await;
    let (connector, state) = supervised(&format!(
        "endpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         nodes = [ {{ node_id = \"nsu={NS_URI};s=Line1.V00\" }} ]",
        plant.url()
    ));
    let cert = plant.server_cert();
    let thumbprint = cert.thumbprint().as_hex_string();
    let name = CertificateStore::cert_file_name(&cert);
    let rejected = state.join("pki/rejected").join(&name);
    let trusted = state.join("pki/trusted").join(&name);
    let instruction = format!("mv '{}' '{}'", rejected.display(), trusted.display());
    assert!(
        connector
            .wait_for(Duration::from_secs(90), |c| c
                .get("/health")
                .1
                .contains(&thumbprint))
            .await,
        "/health never named the thumbprint: {}",
        connector.get("/health").1
    );
    let source = connector.health_of("plc");
    let error = source["last_error"].as_str().unwrap();
    assert!(error.contains(&instruction), "{error}");
    assert!(rejected.exists());
    let status = connector.process("plc");
    assert!(
        status["last_error"].as_str().unwrap().contains(&thumbprint),
        "{status}"
    );
    let pid = status["pid"].clone();

    std::fs::rename(&rejected, &trusted).unwrap();
    assert!(
        connector
            .wait_for(Duration::from_secs(90), |c| {
                let p = c.process("plc");
                p["state"] == "connected" && p["last_error"].is_null()
            })
            .await,
        "{}",
        connector.process("plc")
    );
    assert_eq!(connector.process("plc")["pid"], pid, "no restart");
}

fn recovery_source(url: &str, ns: u16) -> String {
    format!(
        "name = \"x\"\nendpoint = \"{url}\"\npublishing_interval_ms = 100\nwatchdog_intervals = 100000\n\
         nodes = [ {{ node_id = \"ns={ns};s=Line1.V00\", sampling_interval_ms = 100 }}, \
         {{ node_id = \"ns={ns};s=Line2.Drive.Mode\" }} ]\n"
    )
}

/// Rows of `Line1.V00` whose source time is after `after_us`.
fn fresh(rows: &[Json], after_us: i64) -> usize {
    with_node(rows, &line1(0))
        .iter()
        .filter(|r| r["source_time"].as_i64().is_some_and(|t| t > after_us))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_resumes_within_5_s_after_a_server_restart_and_a_gap_row_is_written() {
    let mut plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    // The watchdog is off (100000 intervals): only the publish-stall workaround can resume data.
    rig.worker(
        "restart",
        Table::Opcua,
        &recovery_source(&plant.url(), plant.ns),
    )
    .await;
    rig.wait_rows(
        Table::Opcua,
        "restart",
        "data",
        Duration::from_secs(60),
        |rows| fresh(rows, 0) >= 10,
    )
    .await;

    for round in 1..=2 {
        plant.down().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gaps_before = rig.events("restart", "gap").len();
        plant.up().await;
        let up_at = Instant::now();
        let now_us = plant.source_us(plant.tick.load(Ordering::Relaxed));
        rig.wait_rows(
            Table::Opcua,
            "restart",
            "data after the restart",
            Duration::from_secs(30),
            |rows| fresh(rows, now_us) >= 3,
        )
        .await;
        let took = up_at.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "round {round}: data resumed after {took:?}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || rig
                .events("restart", "gap")
                .len()
                > gaps_before)
            .await,
            "round {round}: no gap row"
        );
        assert!(!rig.events("restart", "disconnected").is_empty());
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_recreates_a_subscription_that_stays_silent_while_connected() {
    let mut plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    // Without the publish-stall workaround, a restart leaves the subscription silent on a
    // live session: exactly the failure the watchdog exists for.
    let config = format!(
        "name = \"x\"\nendpoint = \"{}\"\npublishing_interval_ms = 200\nwatchdog_intervals = 10\n\
         nodes = [ {{ node_id = \"ns={};s=Line1.V00\", sampling_interval_ms = 100 }} ]\n",
        plant.url(),
        plant.ns
    );
    rig.worker_with_env(
        "watched",
        Table::Opcua,
        &config,
        &[("IOT_CONNECTOR_OPCUA_TEST_NO_PUBLISH_WORKAROUND", "1")],
    )
    .await;
    rig.wait_rows(
        Table::Opcua,
        "watched",
        "data",
        Duration::from_secs(60),
        |rows| fresh(rows, 0) >= 5,
    )
    .await;
    plant.down().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    plant.up().await;
    let up_at = Instant::now();
    let now_us = plant.source_us(plant.tick.load(Ordering::Relaxed));
    rig.wait_rows(
        Table::Opcua,
        "watched",
        "data after the watchdog",
        Duration::from_secs(30),
        |rows| fresh(rows, now_us) >= 3,
    )
    .await;
    let took = up_at.elapsed();
    // 10 intervals of 200 ms, at least two keep-alive periods (2 × 2 s), at least 5 s.
    assert!(
        took >= Duration::from_secs(4),
        "resumed after {took:?}: not the watchdog"
    );
    let recreated = rig
        .events("watched", "gap")
        .into_iter()
        .filter(|r| r["detail"].as_str().unwrap().contains("silent"))
        .count();
    assert_eq!(recreated, 1, "{:?}", rig.status("watched"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_resumes_within_5_s_after_a_tcp_reset_and_current_values_are_read_again() {
    let plant = Plant::start(Offer::All).await;
    let proxy = Proxy::start(plant.port).await;
    let mut rig = Rig::start().await;
    let url = format!("opc.tcp://127.0.0.1:{}/", proxy.port);
    rig.worker("reset", Table::Opcua, &recovery_source(&url, plant.ns))
        .await;
    rig.wait_rows(
        Table::Opcua,
        "reset",
        "data",
        Duration::from_secs(60),
        |rows| fresh(rows, 0) >= 10 && !with_node(rows, "Drive.Mode").is_empty(),
    )
    .await;

    for round in 1..=2 {
        let modes = with_node(&rig.rows(Table::Opcua, "reset"), "Drive.Mode").len();
        let gaps_before = rig.events("reset", "gap").len();
        proxy.reset();
        let cut_at = Instant::now();
        let now_us = plant.source_us(plant.tick.load(Ordering::Relaxed));
        rig.wait_rows(
            Table::Opcua,
            "reset",
            "data after the reset",
            Duration::from_secs(30),
            |rows| fresh(rows, now_us + 500_000) >= 3,
        )
        .await;
        let took = cut_at.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "round {round}: data resumed after {took:?}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || rig.events("reset", "gap").len()
                > gaps_before)
            .await,
            "round {round}: no gap row"
        );
        // The static value is read once more after the reconnect.
        rig.wait_rows(
            Table::Opcua,
            "reset",
            "the static value read again",
            Duration::from_secs(10),
            |rows| with_node(rows, "Drive.Mode").len() > modes,
        )
        .await;
    }
    let gap = &rig.events("reset", "gap")[0];
    assert!(gap["detail"].as_str().unwrap().contains("lost"), "{gap}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_large_for_one_record_becomes_a_dropped_row_and_the_source_carries_on() {
    let plant = Plant::start(Offer::NoneOnly).await;
    let mut rig = Rig::start().await;
    let ns = plant.ns;
    let config = source_none(
        &plant,
        &format!(
            "publishing_interval_ms = 100\nnodes = [ {{ node_id = \"ns={ns};s=Line2.Spectrum\" }}, \
             {{ node_id = \"ns={ns};s=Line2.Temperature\" }} ]"
        ),
    );
    rig.worker("big", Table::Opcua, &config).await;
    rig.wait_rows(
        Table::Opcua,
        "big",
        "both nodes",
        Duration::from_secs(60),
        |rows| {
            !with_node(rows, "Line2.Spectrum").is_empty()
                && !with_node(rows, "Line2.Temperature").is_empty()
        },
    )
    .await;

    // A million doubles: 8 MB in OPC-UA's binary encoding, about 14 MB as JSON text, more
    // than one IPC frame holds.
    let huge: Vec<Variant> = (0..1_000_000)
        .map(|i| Variant::Double(f64::from(i) + 0.123_456))
        .collect();
    let huge = Array::new(VariantScalarTypeId::Double, huge).unwrap();
    plant.set("Line2.Spectrum", Variant::Array(Box::new(huge)));
    let status = rig
        .wait_status("big", "a dropped row", Duration::from_secs(60), |rows| {
            rows.iter().any(|r| r["event"] == "dropped")
        })
        .await;
    let dropped: Vec<_> = status.iter().filter(|r| r["event"] == "dropped").collect();
    assert_eq!(dropped.len(), 1, "{dropped:#?}");
    let detail = dropped[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("ns={ns};s=Line2.Spectrum")),
        "{detail}"
    );
    assert!(detail.contains("bytes, over the"), "{detail}");
    assert_eq!(dropped[0]["count"], 1);

    // The source carries on: the next values of both nodes arrive.
    let small = Array::new(
        VariantScalarTypeId::Double,
        vec![Variant::Double(7.25), Variant::Double(8.5)],
    )
    .unwrap();
    plant.set("Line2.Spectrum", Variant::Array(Box::new(small)));
    plant.set("Line2.Temperature", 42.5);
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "big",
            "values after the large one",
            Duration::from_secs(30),
            |rows| {
                with_node(rows, "Line2.Spectrum")
                    .iter()
                    .any(|r| r["value_str"] == "[7.25,8.5]")
                    && with_node(rows, "Line2.Temperature")
                        .iter()
                        .any(|r| r["value_num"].as_f64() == Some(42.5))
            },
        )
        .await;
    assert!(
        rows.iter()
            .all(|r| r["value_str"].as_str().is_none_or(|v| v.len() < 1 << 20)),
        "no part of the large value reached the table"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsu_and_browse_path_node_ids_resolve() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        &format!(
            "publishing_interval_ms = 100\nnodes = [ {{ node_id = \"nsu={NS_URI};s=Line2.MotorSpeed\", publishing_interval_ms = 500 }}, \
             {{ node_id = \"/Plant/Line2/Drive/DriveSpeed\" }}, {{ node_id = \"/Plant/{}:Line2/Spectrum\" }} ]",
            plant.ns
        ),
    );
    rig.worker("paths", Table::Opcua, &config).await;
    plant.set("Line2.MotorSpeed", 1450.0);
    plant.set("Line2.Drive.DriveSpeed", 12.5);
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "paths",
            "the three nodes",
            Duration::from_secs(60),
            |rows| {
                with_node(rows, "MotorSpeed")
                    .iter()
                    .any(|r| r["value_num"] == 1450.0)
                    && with_node(rows, "DriveSpeed")
                        .iter()
                        .any(|r| r["value_num"] == 12.5)
                    && !with_node(rows, "Spectrum").is_empty()
            },
        )
        .await;
    // Two publishing intervals (100 ms and 500 ms): two subscriptions.
    let connected = &rig.events("paths", "connected")[0];
    assert!(
        connected["detail"]
            .as_str()
            .unwrap()
            .contains("2 subscription(s)"),
        "{connected}"
    );
    let motor = with_node(&rows, "MotorSpeed")[0];
    assert_eq!(
        motor["node_id"],
        format!("ns={};s=Line2.MotorSpeed", plant.ns).as_str()
    );
    assert_eq!(motor["namespace_uri"], NS_URI);
    assert_eq!(motor["browse_path"], "/Plant/Line2/MotorSpeed");
    assert_eq!(motor["display_name"], "Motor speed");
    let drive = with_node(&rows, "DriveSpeed")[0];
    assert_eq!(
        drive["node_id"],
        format!("ns={};s=Line2.Drive.DriveSpeed", plant.ns).as_str()
    );
    assert_eq!(drive["browse_path"], "/Plant/Line2/Drive/DriveSpeed");
    let spectrum = with_node(&rows, "Spectrum")[0];
    assert_eq!(spectrum["value_type"], "json");
    let values: Json = serde_json::from_str(spectrum["value_str"].as_str().unwrap()).unwrap();
    let values: Vec<f64> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.5, 2.5, -3.0]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_discovery_finds_exactly_the_expected_variables() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        &format!(
            "browse = [ {{ root = \"nsu={NS_URI};s=Plant\", max_depth = 4, include = [\"*Speed*\"] }}, \
             {{ root = \"/Plant/Line1\", include = [\"V0?\"], max_nodes = 4 }} ]"
        ),
    );
    rig.worker("found", Table::Opcua, &config).await;
    let state = rig.zerobus().state().clone();
    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| of_source(
                s.rows(STATUS),
                "found"
            )
            .iter()
            .any(|r| r["event"] == "connected"))
            .await
    );
    let connected = &rig.events("found", "connected")[0];
    assert_eq!(int(connected, "count"), 3 + 4, "{connected}");
    // Every monitored item reports its initial value: the set of nodes is what was found.
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "found",
            "7 nodes",
            Duration::from_secs(30),
            |rows| {
                rows.iter()
                    .map(|r| r["node_id"].to_string())
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= 7
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = if rows.is_empty() {
        rows
    } else {
        rig.rows(Table::Opcua, "found")
    };
    let paths: BTreeSet<String> = rows
        .iter()
        .map(|r| r["browse_path"].as_str().unwrap().to_owned())
        .collect();
    let speeds: BTreeSet<&str> = paths
        .iter()
        .map(String::as_str)
        .filter(|p| p.contains("Speed"))
        .collect();
    assert_eq!(
        speeds,
        BTreeSet::from([
            "/Plant/Line2/MotorSpeed",
            "/Plant/Line2/FanSpeed",
            "/Plant/Line2/Drive/DriveSpeed"
        ])
    );
    let line1: Vec<&String> = paths
        .iter()
        .filter(|p| p.starts_with("/Plant/Line1/"))
        .collect();
    assert_eq!(line1.len(), 4, "{line1:?}");
    assert!(
        line1.iter().all(|p| p.starts_with("/Plant/Line1/V0")),
        "{line1:?}"
    );
    assert_eq!(paths.len(), 7, "{paths:?}");
    rig.stop().await;
}

/// The server takes 20 items per subscription (it answers BadTooManyMonitoredItems beyond):
/// 50 items at one interval fill three subscriptions, and every item reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_filled_to_the_servers_limit_and_every_item_is_monitored() {
    let plant = Plant::start_limited(Offer::All, 50, 20).await;
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        "browse = [ { root = \"/Plant/Bench\", max_depth = 1 } ]",
    );
    rig.worker("filled", Table::Opcua, &config).await;
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "filled",
            "50 nodes",
            Duration::from_secs(60),
            |rows| {
                rows.iter()
                    .map(|r| r["node_id"].to_string())
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= 50
            },
        )
        .await;
    let nodes: BTreeSet<String> = rows.iter().map(|r| r["node_id"].to_string()).collect();
    assert_eq!(nodes.len(), 50, "{nodes:?}");
    let connected = &rig.events("filled", "connected")[0];
    assert_eq!(int(connected, "count"), 50, "{connected}");
    assert!(
        connected["detail"]
            .as_str()
            .unwrap()
            .ends_with(", 3 subscription(s)"),
        "{connected}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_changes_within_the_band_are_not_reported_changes_beyond_are() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        &format!(
            "publishing_interval_ms = 100\nnodes = [ \
             {{ node_id = \"ns={ns};s=Tank.Pressure\", sampling_interval_ms = 100, deadband_absolute = 1.0 }}, \
             {{ node_id = \"ns={ns};s=Tank.Level\", sampling_interval_ms = 100, deadband_percent = 10.0 }} ]",
            ns = plant.ns
        ),
    );
    rig.worker("band", Table::Opcua, &config).await;
    rig.wait_rows(
        Table::Opcua,
        "band",
        "initial values",
        Duration::from_secs(60),
        |rows| !with_node(rows, "Pressure").is_empty() && !with_node(rows, "Level").is_empty(),
    )
    .await;
    // Pressure: band 1.0 around the last reported value. Level: 10 % of 0..200 = 20.
    for (pressure, level) in [
        (10.4, 110.0),
        (10.8, 119.0),
        (11.5, 125.0),
        (11.9, 130.0),
        (13.0, 150.0),
    ] {
        plant.set("Tank.Pressure", pressure);
        plant.set("Tank.Level", level);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let rows = rig
        .wait_rows(
            Table::Opcua,
            "band",
            "the last changes",
            Duration::from_secs(30),
            |rows| {
                with_node(rows, "Pressure")
                    .iter()
                    .any(|r| r["value_num"] == 13.0)
                    && with_node(rows, "Level")
                        .iter()
                        .any(|r| r["value_num"] == 150.0)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = if rows.is_empty() {
        rows
    } else {
        rig.rows(Table::Opcua, "band")
    };
    let values = |node: &str| -> Vec<f64> {
        with_node(&rows, node)
            .iter()
            .map(|r| r["value_num"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(values("Pressure"), vec![10.0, 11.5, 13.0]);
    assert_eq!(values("Level"), vec![100.0, 125.0, 150.0]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_is_created_once_and_reused() {
    let plant = Plant::start(Offer::All).await;
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        &format!(
            "nodes = [ {{ node_id = \"ns={};s=Line1.V00\" }} ]",
            plant.ns
        ),
    );
    let first = rig.worker("reuse", Table::Opcua, &config).await;
    let cert = rig.state_dir().join("pki/own/cert.der");
    rig.wait_rows(
        Table::Opcua,
        "reuse",
        "data",
        Duration::from_secs(60),
        |rows| !rows.is_empty(),
    )
    .await;
    let before = std::fs::read(&cert).unwrap();
    rig.workers[first].kill().await;
    let seen = rig.rows(Table::Opcua, "reuse").len();
    rig.worker("reuse", Table::Opcua, &config).await;
    rig.wait_rows(
        Table::Opcua,
        "reuse",
        "data after the restart",
        Duration::from_secs(60),
        |rows| rows.len() > seen + 3,
    )
    .await;
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        before,
        "the key pair was replaced"
    );
    rig.stop().await;
}

/// `cargo test -p iot-connector-tests --test opcua -- --ignored --nocapture bench`
/// (`OPCUA_BENCH_ITEMS` sets the number of monitored items, 10 000 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand"]
async fn bench_ten_thousand_monitored_items() {
    let items: usize = std::env::var("OPCUA_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let plant = Plant::start_with(Offer::All, items).await;
    plant.ticking.store(false, Ordering::Relaxed);
    let mut rig = Rig::start().await;
    let config = source_none(
        &plant,
        "publishing_interval_ms = 500\nbrowse = [ { root = \"/Plant/Bench\", max_depth = 1, max_nodes = 20000, sampling_interval_ms = 100 } ]",
    );
    let worker = rig.worker("bench", Table::Opcua, &config).await;
    let started = Instant::now();
    rig.wait_rows(
        Table::Opcua,
        "bench",
        "initial values",
        Duration::from_secs(300),
        |rows| rows.len() >= items,
    )
    .await;
    eprintln!(
        "bench: {items} items subscribed and initial values delivered in {:?}",
        started.elapsed()
    );
    let pid = rig.workers[worker].pid();
    eprintln!(
        "bench: worker RSS after subscribing: {} KiB ({} KiB anonymous, {} KiB file-backed: code)",
        proc_status_kib(pid, "VmRSS").unwrap(),
        proc_status_kib(pid, "RssAnon").unwrap(),
        proc_status_kib(pid, "RssFile").unwrap()
    );

    // Change every item once per round; count rows delivered end to end.
    let ids: Vec<NodeId> = (0..items)
        .map(|i| plant.node(&format!("Bench.B{i:05}")))
        .collect();
    let before = rig.rows(Table::Opcua, "bench").len();
    let rounds = 20u32;
    let started = Instant::now();
    for round in 1..=rounds {
        {
            let live = plant.live.lock().unwrap();
            let (nm, handle) = live.as_ref().unwrap();
            let values = ids
                .iter()
                .map(|id| (id, None, DataValue::new_now(f64::from(round))));
            nm.set_values(handle.subscriptions(), values).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Rows arrive until the pipeline has drained; when it cannot keep up, the server's queues
    // (queue_size values per item) overflow and drop the oldest values, as designed.
    let offered = items * rounds as usize;
    let mut last = (rig.rows(Table::Opcua, "bench").len(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = rig.rows(Table::Opcua, "bench").len();
        if now >= before + offered || (now == last.0 && last.1.elapsed() >= Duration::from_secs(6))
        {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let delivered = rig.rows(Table::Opcua, "bench").len() - before;
    let took = last.1.duration_since(started);
    let overflow = rig
        .rows(Table::Opcua, "bench")
        .iter()
        .filter(|r| r["status_code"].as_i64().is_some_and(|c| c & 0x80 != 0))
        .count();
    eprintln!(
        "bench: {delivered} of {offered} changes delivered end to end (worker → uplink spool → \
         Zerobus emulator) in {took:?}: {:.0}/s; {overflow} rows flagged Overflow; \
         {} gap rows",
        delivered as f64 / took.as_secs_f64(),
        rig.events("bench", "gap").len()
    );
    let (rss_kb, hwm_kb) = (
        proc_status_kib(pid, "VmRSS").unwrap(),
        proc_status_kib(pid, "VmHWM").unwrap(),
    );
    let target_kb = 8 * 1024 + items as u64;
    eprintln!(
        "bench: worker RSS {rss_kb} KiB (peak {hwm_kb} KiB; {} KiB anonymous, {} KiB file-backed), target {target_kb} KiB",
        proc_status_kib(pid, "RssAnon").unwrap(),
        proc_status_kib(pid, "RssFile").unwrap()
    );
    // The target is for release builds; a debug build's code alone is 19 MB.
    if !cfg!(debug_assertions) {
        assert!(rss_kb <= target_kb, "RSS {rss_kb} KiB");
    }
    rig.stop().await;
}
