//! The MQTT worker end to end: a real mosquitto per test (its own config, port and persistence
//! directory), a test publisher, the real `iot-connector-mqtt` and `iot-connector-uplink`
//! binaries, and the Zerobus emulator where the rows are checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should fail loudly
#![allow(clippy::indexing_slicing)] // test code indexes the workers it started

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use iot_connector_proto::Table;
use iot_connector_tests::{
    Rig, TABLES, base64, free_port,
    mosquitto::{Broker, Publisher},
    wait_until,
};
use rumqttc::QoS;
use serde_json::Value;

const MQTT: &str = TABLES[1];
const SOURCE: &str = "sensors";
/// The worker's bound on QoS 1/2 messages received and not yet acknowledged (`MAX_UNACKED` in
/// `workers/mqtt/src/session/client.rs`): a crash makes the broker redeliver at most these.
const WINDOW: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The connector side: the shared rig, and the MQTT rows it collects

/// A rig whose waits look every 200 ms: the emulator builds JSON rows on each look, and a burst
/// leaves tens of thousands of them, so looking less often leaves the cores to the processes
/// under test.
async fn start_rig() -> Rig {
    Rig::builder()
        .polling_every(Duration::from_millis(200))
        .start()
        .await
}

/// Starts (or restarts, with a new grant) the worker with this source configuration; returns
/// its index in `rig.workers`.
async fn start_worker(rig: &mut Rig, config: &str) -> usize {
    rig.worker(SOURCE, Table::Mqtt, config).await
}

fn rows(rig: &Rig) -> Vec<Value> {
    rig.rows(Table::Mqtt, SOURCE)
}

fn rows_on(rig: &Rig, topic: &str) -> Vec<Value> {
    rows(rig)
        .into_iter()
        .filter(|r| text(r, "topic") == topic)
        .collect()
}

/// Waits until `topic` has at least `count` rows.
async fn wait_rows_on(rig: &Rig, topic: &str, count: usize, timeout: Duration) {
    let what = format!("{count} rows on {topic:?}");
    rig.wait_rows(Table::Mqtt, SOURCE, &what, timeout, |rows| {
        rows.iter().filter(|r| text(r, "topic") == topic).count() >= count
    })
    .await;
}

/// Publishes on `topic` until a row for it arrives: a subscription the broker has not processed
/// yet drops the first messages.
async fn publish_until_delivered(rig: &Rig, publisher: &Publisher, topic: &str) {
    let mut delivered = false;
    for i in 0..100 {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("{i}"))
            .await;
        delivered = rig
            .wait_until(Duration::from_millis(400), |_| {
                !rows_on(rig, topic).is_empty()
            })
            .await;
        if delivered {
            break;
        }
    }
    assert!(delivered, "nothing published on {topic:?} arrived");
}

/// Waits until every payload in `expected` arrived as a text value; returns how many rows
/// carried one of them (duplicates included).
async fn wait_payloads(rig: &Rig, expected: &HashSet<String>, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = rig.zerobus().state();
        if state.row_count(MQTT) >= expected.len() {
            let values: Vec<String> = state
                .rows(MQTT)
                .iter()
                .map(|r| text(r, "value_str").to_owned())
                .filter(|v| expected.contains(v))
                .collect();
            let distinct: HashSet<&String> = values.iter().collect();
            if distinct.len() == expected.len() {
                return values.len();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} payloads arrived; first missing: {:?}",
                distinct.len(),
                expected.len(),
                expected.iter().filter(|e| !distinct.contains(e)).min()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} rows arrived, {} expected",
            state.row_count(MQTT),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn text<'a>(row: &'a Value, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or("")
}

fn number(row: &Value, column: &str) -> f64 {
    row.get(column).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Protobuf JSON leaves a field with its default value out.
fn flag(row: &Value, column: &str) -> bool {
    row.get(column).and_then(Value::as_bool).unwrap_or(false)
}

fn source_config(endpoint: &str, extra: &str, topics: &[&str]) -> String {
    format!(
        "name = \"{SOURCE}\"\nendpoint = \"{endpoint}\"\n{extra}\ntopics = [\n{}\n]\n",
        topics.join(",\n")
    )
}

// ---------------------------------------------------------------------------------------------
// Delivery and columns

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_over_wildcard_filters_arrive_with_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "test-publisher").await;
    // Retained before the worker subscribes: delivered on subscription with retain set.
    publisher
        .publish("line/4/state", QoS::AtLeastOnce, true, "kept")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;

    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "",
        &[
            r#"{ filter = "plant/+/temperature", qos = 0, payload = "json", value_path = "/value", timestamp_path = "/ts" }"#,
            r#"{ filter = "line/#", qos = 1, payload = "text" }"#,
            r#"{ filter = "raw/+/bytes/#", qos = 2, payload = "binary" }"#,
        ],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "line/4/state", 1, Duration::from_secs(30)).await;

    publisher
        .publish(
            "plant/press1/temperature",
            QoS::AtMostOnce,
            false,
            r#"{"value": 21.5, "ts": 1700000000123, "unit": "C"}"#,
        )
        .await;
    publisher
        .publish(
            "plant/press2/temperature",
            QoS::AtMostOnce,
            false,
            "{broken",
        )
        .await;
    publisher
        .publish("line/7/status", QoS::AtLeastOnce, false, "running")
        .await;
    // Delivered at the lower of the publish and subscription QoS.
    publisher
        .publish("line/8/status", QoS::ExactlyOnce, false, "stopped")
        .await;
    publisher
        .publish(
            "raw/cam1/bytes/frame",
            QoS::ExactlyOnce,
            false,
            vec![0u8, 1, 2, 255],
        )
        .await;
    // Matched by no filter: never arrive.
    publisher
        .publish("plant/a/b/temperature", QoS::AtLeastOnce, false, "1")
        .await;
    publisher
        .publish("raw/cam1/other", QoS::AtLeastOnce, false, "x")
        .await;
    publisher.wait_done(8, Duration::from_secs(10)).await;

    assert!(
        rig.wait_until(Duration::from_secs(30), |s| s.row_count(MQTT) >= 6)
            .await,
        "rows: {:#?}",
        rows(&rig)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = rows(&rig);
    let topics: HashSet<&str> = rows.iter().map(|r| text(r, "topic")).collect();
    assert_eq!(
        topics,
        HashSet::from([
            "line/4/state",
            "plant/press1/temperature",
            "plant/press2/temperature",
            "line/7/status",
            "line/8/status",
            "raw/cam1/bytes/frame",
        ]),
        "exactly the matching topics, once each"
    );
    assert_eq!(rows.len(), 6);
    let row = |topic: &str| rows.iter().find(|r| text(r, "topic") == topic).unwrap();

    let retained = row("line/4/state");
    assert!(flag(retained, "retain"));
    assert_eq!(number(retained, "qos"), 1.0);
    assert_eq!(text(retained, "value_str"), "kept");
    assert_eq!(text(retained, "payload_format"), "text");
    assert_eq!(text(retained, "payload"), base64(b"kept"));

    let json = row("plant/press1/temperature");
    assert_eq!(number(json, "qos"), 0.0);
    assert!(!flag(json, "retain"));
    assert_eq!(number(json, "value_num"), 21.5);
    assert_eq!(text(json, "value_type"), "double");
    assert_eq!(number(json, "event_time"), 1_700_000_000_123_000.0);
    assert_eq!(text(json, "quality"), "good");
    assert_eq!(text(json, "payload_format"), "json");
    assert!(json.get("parse_error").is_none());
    assert_eq!(
        text(json, "payload"),
        base64(br#"{"value": 21.5, "ts": 1700000000123, "unit": "C"}"#)
    );
    assert_eq!(text(json, "broker"), broker.endpoint());
    assert_eq!(text(json, "source_name"), SOURCE);
    assert!(text(json, "record_id").starts_with(&format!("test-connector/{SOURCE}/")));

    let broken = row("plant/press2/temperature");
    assert_eq!(text(broken, "quality"), "bad");
    assert!(text(broken, "parse_error").starts_with("not JSON"));
    assert_eq!(text(broken, "payload"), base64(b"{broken"));
    assert!(broken.get("value_num").is_none() && broken.get("value_str").is_none());

    assert_eq!(text(row("line/7/status"), "value_str"), "running");
    assert_eq!(number(row("line/7/status"), "qos"), 1.0);
    assert_eq!(number(row("line/8/status"), "qos"), 1.0);

    let bytes = row("raw/cam1/bytes/frame");
    assert_eq!(number(bytes, "qos"), 2.0);
    assert_eq!(text(bytes, "value_type"), "bytes");
    assert_eq!(text(bytes, "value_str"), "000102ff");
    assert_eq!(text(bytes, "payload"), base64(&[0, 1, 2, 255]));
    assert_eq!(text(bytes, "payload_format"), "binary");

    let connected = rig
        .wait_event(SOURCE, "connected", "new session", Duration::from_secs(10))
        .await;
    assert!(text(&connected, "detail").contains(&broker.endpoint()));
    assert!(
        rig.status(SOURCE).iter().all(|r| text(r, "event") != "gap"),
        "a brand-new source has no gap"
    );
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// Crashes during a burst

enum Crash {
    Worker,
    Uplink,
}

/// Publishes 50,000 QoS 1 messages, crashes one process with SIGKILL in the middle, and checks
/// that every message reaches Zerobus. Returns (MQTT redeliveries, replayed record ids).
async fn burst_with_a_crash(crash: Crash, version: &str) -> (usize, usize) {
    const COUNT: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "burst-publisher").await;
    publisher
        .publish("burst/probe", QoS::AtLeastOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        &format!("mqtt_version = \"{version}\""),
        &[r#"{ filter = "burst/#", qos = 1, payload = "text" }"#],
    );
    let mut worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "burst/probe", 1, Duration::from_secs(30)).await;

    let expected: HashSet<String> = (0..COUNT).map(|i| format!("m{i:06}")).collect();
    let client = publisher.client.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..COUNT {
            client
                .publish("burst/data", QoS::AtLeastOnce, false, format!("m{i:06}"))
                .await
                .unwrap();
        }
    });
    // Crash in the middle: once the broker took half of the burst (so that a worker that never
    // acknowledged would see far more redelivered than any bound below allows).
    let done = Arc::clone(&publisher.done);
    assert!(
        wait_until(Duration::from_secs(60), || done.load(Ordering::Relaxed)
            >= COUNT as u64 / 2)
        .await
    );
    match crash {
        Crash::Worker => {
            rig.workers[worker].kill().await;
            worker = start_worker(&mut rig, &config).await;
        }
        Crash::Uplink => rig.uplink.kill_and_restart().await.unwrap(),
    }
    publishing.await.unwrap();
    publisher
        .wait_done(COUNT as u64 + 1, Duration::from_secs(120))
        .await;

    let delivered = wait_payloads(&rig, &expected, Duration::from_secs(120)).await;
    let rows = rows(&rig);
    let ids: HashSet<&str> = rows.iter().map(|r| text(r, "record_id")).collect();
    let replayed = rows.len() - ids.len();
    let redelivered = delivered - COUNT - rows_with_duplicate_ids(&rows, &expected);
    assert!(rig.alive(worker));
    (redelivered, replayed)
}

/// Rows of `expected` payloads whose record id appeared before (the uplink's replay to Zerobus).
fn rows_with_duplicate_ids(rows: &[Value], expected: &HashSet<String>) -> usize {
    let mut seen = HashSet::new();
    rows.iter()
        .filter(|r| expected.contains(text(r, "value_str")))
        .filter(|r| !seen.insert(text(r, "record_id").to_owned()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_during_a_qos1_burst_loses_no_message() {
    let (redelivered, replayed) = burst_with_a_crash(Crash::Worker, "3.1.1").await;
    println!(
        "worker kill: {redelivered} messages redelivered by the broker, {replayed} rows replayed to Zerobus"
    );
    assert!(
        redelivered <= WINDOW,
        "{redelivered} duplicates exceed the window of {WINDOW}"
    );
}

/// MQTT 5 acknowledges through rumqttc's request queue, and its window is the receive maximum
/// the broker must respect. Debian's mosquitto 2.0.11 does not hold it once acks trickle in, so
/// the bound is the worker's own: records not yet durable (the sink's window, 8,192), durable
/// ones whose acknowledgement waits in the client's request queue (1,024), and as many again
/// for what the sockets' buffers hold in both directions (messages read by nobody yet, acks not
/// yet at the broker). A worker that never acknowledged would see about 25,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_during_an_mqtt5_qos1_burst_loses_no_message() {
    const WORKER_BOUND: usize = 2 * (8192 + 1024);
    let (redelivered, replayed) = burst_with_a_crash(Crash::Worker, "5").await;
    println!(
        "MQTT 5 worker kill: {redelivered} messages redelivered by the broker, {replayed} rows replayed to Zerobus"
    );
    assert!(
        redelivered <= WORKER_BOUND,
        "{redelivered} duplicates exceed what the worker holds unacknowledged ({WORKER_BOUND})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_uplink_during_a_qos1_burst_loses_no_message() {
    let (redelivered, replayed) = burst_with_a_crash(Crash::Uplink, "3.1.1").await;
    println!(
        "uplink kill: {redelivered} messages redelivered by the broker, {replayed} rows replayed to Zerobus"
    );
    assert!(
        redelivered <= WINDOW,
        "{redelivered} duplicates exceed the window of {WINDOW}"
    );
    // What the killed uplink had in flight to Zerobus, at most (see delivery.rs).
    assert!(replayed <= 2 * 16 * 2000, "{replayed} rows replayed");
}

// ---------------------------------------------------------------------------------------------
// Broker restarts and sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_worker_was_cut_off_arrive_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "restart-publisher").await;
    publisher
        .publish("restart/probe", QoS::AtLeastOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "",
        &[r#"{ filter = "restart/#", qos = 1, payload = "text" }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "restart/probe", 1, Duration::from_secs(30)).await;

    // The worker freezes; its connection stays open while the broker queues for it.
    rig.workers[worker].signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..1500 {
        publisher
            .publish("restart/a", QoS::AtLeastOnce, false, format!("a{i}"))
            .await;
    }
    publisher.wait_done(1501, Duration::from_secs(30)).await;
    drop(publisher);
    // A clean restart: mosquitto saves the session and its queue, and loads them again.
    broker.stop().await;
    broker.spawn().await;
    let publisher = Publisher::connect(broker.port, "restart-publisher-2").await;
    for i in 0..1500 {
        publisher
            .publish("restart/b", QoS::AtLeastOnce, false, format!("b{i}"))
            .await;
    }
    publisher.wait_done(1500, Duration::from_secs(30)).await;
    // 3000 queued: more than mosquitto's default max_queued_messages of 1000.
    rig.workers[worker].signal(nix::sys::signal::Signal::SIGCONT);

    let expected: HashSet<String> = (0..1500)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    wait_payloads(&rig, &expected, Duration::from_secs(60)).await;
    rig.wait_event(
        SOURCE,
        "disconnected",
        "connection to",
        Duration::from_secs(10),
    )
    .await;
    rig.wait_event(
        SOURCE,
        "connected",
        "session resumed",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        rig.status(SOURCE).iter().all(|r| text(r, "event") != "gap"),
        "the session survived: no gap; {:#?}",
        rig.status(SOURCE)
    );
    assert!(rig.alive(worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_the_session_gets_a_new_subscription_and_a_gap_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "lost-publisher").await;
    publisher
        .publish("lost/probe", QoS::AtLeastOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    drop(publisher);
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "",
        &[r#"{ filter = "lost/#", qos = 1, payload = "text" }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "lost/probe", 1, Duration::from_secs(30)).await;

    // SIGKILL before any autosave: the restarted broker knows neither session nor retained
    // messages.
    broker.kill().await;
    broker.spawn().await;
    let gap = rig
        .wait_event(SOURCE, "gap", "no session", Duration::from_secs(60))
        .await;
    assert!(text(&gap, "detail").contains("may be lost"));

    // The worker subscribed again: new messages arrive.
    let publisher = Publisher::connect(broker.port, "lost-publisher-2").await;
    publish_until_delivered(&rig, &publisher, "lost/after").await;
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// TLS and authentication

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let dir = dir.join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mqtt test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "edge-client-1");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_delivers_and_a_missing_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let _broker = Broker::start_with(
        dir.path(),
        tls,
        &format!(
            "allow_anonymous true\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    )
    .await;
    let publisher = Publisher::connect(plain, "tls-publisher").await;
    publisher
        .publish("secure/probe", QoS::AtLeastOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let mut rig = start_rig().await;
    let endpoint = format!("mqtts://127.0.0.1:{tls}");
    let topics = [r#"{ filter = "secure/#", qos = 1, payload = "text" }"#];

    // Without a client certificate the broker refuses the handshake: a configuration problem.
    let without = source_config(
        &endpoint,
        &format!("ca_file = {:?}", pki.ca.display().to_string()),
        &topics,
    );
    let worker = start_worker(&mut rig, &without).await;
    let refused = rig
        .wait_event(
            SOURCE,
            "disconnected",
            "configuration problem",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        text(&refused, "detail").contains("client certificate"),
        "{refused}"
    );
    assert!(rig.alive(worker), "no crash loop");
    rig.workers[worker].kill().await;

    let with = source_config(
        &endpoint,
        &format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
            pki.ca.display().to_string(),
            pki.client_cert.display().to_string(),
            pki.client_key.display().to_string()
        ),
        &topics,
    );
    let worker = start_worker(&mut rig, &with).await;
    wait_rows_on(&rig, "secure/probe", 1, Duration::from_secs(30)).await;
    publisher
        .publish("secure/reading", QoS::AtLeastOnce, false, "42")
        .await;
    wait_rows_on(&rig, "secure/reading", 1, Duration::from_secs(30)).await;
    let row = &rows_on(&rig, "secure/reading")[0];
    assert_eq!(text(row, "value_str"), "42");
    assert_eq!(text(row, "broker"), endpoint);
    assert!(rig.alive(worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_as_a_configuration_problem_and_retried_slowly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with_password(dir.path(), "edge", "secret123").await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "username = \"edge\"\npassword = \"not-the-password\"\nallow_plaintext_password = true",
        &[r#"{ filter = "plant/#", qos = 1 }"#],
    );
    let started = tokio::time::Instant::now();
    let worker = start_worker(&mut rig, &config).await;
    let row = rig
        .wait_event(
            SOURCE,
            "disconnected",
            "configuration problem",
            Duration::from_secs(30),
        )
        .await;
    let detail = text(&row, "detail");
    assert!(
        detail.contains("refused the credentials of user \"edge\"")
            && detail.contains("check username and password")
            && detail.contains("next attempt in"),
        "{detail}"
    );
    // Slow retries: a hot loop would have knocked dozens of times by now.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(started.elapsed())).await;
    let attempts = broker.log().matches("not authorised").count();
    assert_eq!(
        attempts,
        1,
        "{attempts} refused attempts in 12 s:\n{}",
        broker.log()
    );
    assert!(rig.alive(worker), "no crash loop");
    let refusals = rig
        .status(SOURCE)
        .iter()
        .filter(|r| text(r, "event") == "disconnected")
        .count();
    assert_eq!(refusals, 1, "one status row per outage, not per attempt");
}

/// A broker that accepts every connection, answers CONNACK and closes it at once (as brokers do
/// that hit a poison message in the session): the worker's pauses between attempts grow instead
/// of knocking every half second forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_drops_every_session_after_connack_gets_growing_pauses() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let endpoint = format!("mqtt://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let times = Arc::clone(&accepted);
    let broker = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            times.lock().unwrap().push(tokio::time::Instant::now());
            let mut connect = [0_u8; 512];
            if stream.read(&mut connect).await.unwrap_or(0) > 0 {
                // CONNACK, MQTT 3.1.1: no session present, accepted.
                let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            }
        }
    });
    let mut rig = start_rig().await;
    let config = source_config(&endpoint, "", &[r#"{ filter = "plant/#", qos = 1 }"#]);
    let worker = start_worker(&mut rig, &config).await;
    let count = || accepted.lock().unwrap().len();
    assert!(
        wait_until(Duration::from_secs(60), || count() >= 6).await,
        "only {} connections",
        count()
    );
    let times = accepted.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Pauses start at 0.5 s and double, each drawn from [d/2, d]: the fifth is at least 2 s,
    // where a backoff reset by every CONNACK stays at 0.25..0.5 s.
    assert!(
        gaps[4] >= Duration::from_millis(1900),
        "pauses between attempts: {gaps:?}"
    );
    assert!(rig.alive(worker), "no crash loop");
    broker.abort();
}

/// `max_message_bytes` is a real bound. MQTT 5: the broker is told and drops larger messages
/// itself; a message above the limit but within the packet headroom is a row without its bytes;
/// delivery carries on. MQTT 3.1.1: a larger message is refused from its header, unread, and
/// the status row says what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_above_max_message_bytes_are_refused_unread_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "test-publisher").await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "mqtt_version = \"5\"\nmax_message_bytes = \"1KiB\"",
        &[r#"{ filter = "plant/#", qos = 1 }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    publish_until_delivered(&rig, &publisher, "plant/ready").await;
    publisher
        .publish("plant/mid", QoS::AtLeastOnce, false, vec![b'm'; 4 << 10])
        .await;
    publisher
        .publish("plant/big", QoS::AtLeastOnce, false, vec![b'b'; 300 << 10])
        .await;
    publisher
        .publish("plant/after", QoS::AtLeastOnce, false, "after")
        .await;
    wait_rows_on(&rig, "plant/after", 1, Duration::from_secs(30)).await;
    let mid = rows_on(&rig, "plant/mid");
    assert_eq!(mid.len(), 1);
    assert!(
        text(&mid[0], "parse_error").contains("exceeds max_message_bytes (1024)")
            && text(&mid[0], "payload").is_empty(),
        "{}",
        mid[0]
    );
    assert!(rows_on(&rig, "plant/big").is_empty(), "the broker keeps it");
    assert!(
        rig.events(SOURCE, "disconnected").is_empty(),
        "the session stayed up"
    );
    assert!(rig.alive(worker));

    // MQTT 3.1.1 cannot tell the broker: the client refuses the packet from its header.
    let config = source_config(
        &broker.endpoint(),
        "client_id = \"small-311\"\nmax_message_bytes = \"1KiB\"",
        &[r#"{ filter = "line/#", qos = 1 }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    publish_until_delivered(&rig, &publisher, "line/ready").await;
    publisher
        .publish("line/big", QoS::AtLeastOnce, false, vec![b'b'; 300 << 10])
        .await;
    let row = rig
        .wait_event(
            SOURCE,
            "disconnected",
            "max_message_bytes",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        text(&row, "detail").contains("refused unread")
            && text(&row, "detail").contains("raise max_message_bytes"),
        "{row}"
    );
    assert!(rows_on(&rig, "line/big").is_empty());
    assert!(rig.alive(worker), "no crash loop");
}

/// The worker's wall clock steps an hour forward, then two hours back (an NTP step, a mis-set
/// RTC): delivery goes on without a reconnect, sequence numbers keep increasing, and event
/// times stay the payloads' own. The clock moves for the worker alone (libfaketime, which
/// leaves the monotonic clock that timers and backoff run on alone); the rows' ingest times
/// show that it did move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_changes_neither_delivery_nor_event_times() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is installed (the faketime package; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "test-publisher").await;
    let mut rig = start_rig().await;
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_file = offset.display().to_string();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let config = source_config(
        &broker.endpoint(),
        "",
        &[
            r#"{ filter = "clock/#", qos = 1, payload = "json", value_path = "/v", timestamp_path = "/ts" }"#,
        ],
    );
    let worker = rig
        .worker_with_env(SOURCE, Table::Mqtt, &config, &env)
        .await;
    publish_until_delivered(&rig, &publisher, "clock/ready").await;

    const PER_STEP: usize = 40;
    const BASE_MS: i64 = 1_700_000_000_000;
    let mut sent = 0;
    for (step, (shift, topic)) in [("+0", "clock/a"), ("+1h", "clock/b"), ("-1h", "clock/c")]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&offset, format!("{shift}\n")).unwrap();
        for _ in 0..PER_STEP {
            let payload = format!(r#"{{"v": {sent}, "ts": {}}}"#, BASE_MS + sent as i64);
            publisher
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await;
            sent += 1;
        }
        wait_rows_on(&rig, topic, PER_STEP, Duration::from_secs(60)).await;
        let now_us = iot_connector_proto::now_us();
        let ingest: Vec<f64> = rows_on(&rig, topic)
            .iter()
            .map(|r| number(r, "ingest_time"))
            .collect();
        let hour = 3_600e6;
        let moved = match step {
            0 => ingest
                .iter()
                .all(|t| (t - now_us as f64).abs() < hour / 2.0),
            1 => ingest.iter().all(|t| *t > now_us as f64 + hour / 2.0),
            _ => ingest.iter().all(|t| *t < now_us as f64 - hour / 2.0),
        };
        assert!(
            moved,
            "step {shift}: the worker's clock did not move as told: {ingest:?}"
        );
    }
    let data: Vec<Value> = rows(&rig)
        .into_iter()
        .filter(|r| text(r, "topic").starts_with("clock/") && text(r, "topic") != "clock/ready")
        .collect();
    assert_eq!(data.len(), 3 * PER_STEP, "every message once");
    for row in &data {
        let n = number(row, "value_num");
        assert_eq!(
            number(row, "event_time"),
            (BASE_MS as f64 + n) * 1000.0,
            "the event time is the payload's: {row}"
        );
    }
    let seqs: Vec<u64> = rows(&rig)
        .iter()
        .filter_map(|r| text(r, "record_id").rsplit('/').next()?.parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers keep increasing across the steps: {seqs:?}"
    );
    assert!(
        rig.events(SOURCE, "disconnected").is_empty(),
        "no reconnect"
    );
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// MQTT 5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_shared_subscriptions_deliver_and_the_session_outlives_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "v5-publisher").await;
    let mut rig = start_rig().await;
    publisher
        .publish("v5/direct/probe", QoS::AtLeastOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let config = source_config(
        &broker.endpoint(),
        "mqtt_version = \"5\"\nsession_expiry_seconds = 600",
        &[
            r#"{ filter = "$share/connector/v5/shared/#", qos = 1, payload = "json" }"#,
            r#"{ filter = "v5/direct/#", qos = 1, payload = "text" }"#,
        ],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "v5/direct/probe", 1, Duration::from_secs(30)).await;
    // The shared subscription may be processed just after the probe was delivered.
    publish_until_delivered(&rig, &publisher, "v5/shared/line1").await;
    let row = &rows_on(&rig, "v5/shared/line1")[0];
    assert_eq!(text(row, "payload_format"), "json");
    assert_eq!(text(row, "value_type"), "int64");

    rig.workers[worker].kill().await;
    for i in 0..200 {
        publisher
            .publish(
                "v5/direct/offline",
                QoS::AtLeastOnce,
                false,
                format!("off{i}"),
            )
            .await;
    }
    publisher.wait_done(1 + 200, Duration::from_secs(30)).await;
    let worker = start_worker(&mut rig, &config).await;
    let expected: HashSet<String> = (0..200).map(|i| format!("off{i}")).collect();
    wait_payloads(&rig, &expected, Duration::from_secs(30)).await;
    rig.wait_event(
        SOURCE,
        "connected",
        "session resumed",
        Duration::from_secs(10),
    )
    .await;
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// QoS 2 across a crash

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_messages_survive_a_worker_kill_and_delivery_continues() {
    const COUNT: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "qos2-publisher").await;
    publisher
        .publish("q2/probe", QoS::ExactlyOnce, true, "probe")
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "",
        &[r#"{ filter = "q2/#", qos = 2, payload = "text" }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(&rig, "q2/probe", 1, Duration::from_secs(30)).await;
    let client = publisher.client.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..COUNT {
            client
                .publish("q2/data", QoS::ExactlyOnce, false, format!("q{i}"))
                .await
                .unwrap();
        }
    });
    assert!(
        rig.wait_until(Duration::from_secs(60), |s| s.row_count(MQTT) >= COUNT / 4)
            .await
    );
    // Killed with QoS 2 exchanges half done: the broker resends PUBLISH or PUBREL to the next
    // worker, which must complete them instead of disconnecting on every PUBREL.
    rig.workers[worker].kill().await;
    let worker = start_worker(&mut rig, &config).await;
    publishing.await.unwrap();
    publisher
        .wait_done(COUNT as u64 + 1, Duration::from_secs(60))
        .await;
    let expected: HashSet<String> = (0..COUNT).map(|i| format!("q{i}")).collect();
    wait_payloads(&rig, &expected, Duration::from_secs(60)).await;
    publisher
        .publish("q2/after", QoS::ExactlyOnce, false, "after")
        .await;
    wait_rows_on(&rig, "q2/after", 1, Duration::from_secs(30)).await;
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// Sparkplug B

/// The Sparkplug B messages a test edge node publishes, encoded independently of the worker
/// (field numbers from the Eclipse Tahu schema).
mod sparkplug {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(uint64, optional, tag = "1")]
        pub timestamp: Option<u64>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        #[prost(uint64, optional, tag = "3")]
        pub seq: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(uint64, optional, tag = "2")]
        pub alias: Option<u64>,
        #[prost(uint64, optional, tag = "3")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "4")]
        pub datatype: Option<u32>,
        #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(uint32, tag = "10")]
        Int(u32),
        #[prost(uint64, tag = "11")]
        Long(u64),
        #[prost(float, tag = "12")]
        Float(f32),
        #[prost(double, tag = "13")]
        Double(f64),
        #[prost(bool, tag = "14")]
        Boolean(bool),
        #[prost(string, tag = "15")]
        String(String),
    }

    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;

    pub fn birth(name: &str, alias: u64, datatype: u32, value: Value) -> Metric {
        Metric {
            name: Some(name.into()),
            alias: Some(alias),
            timestamp: None,
            datatype: Some(datatype),
            value: Some(value),
        }
    }

    pub fn data(alias: u64, timestamp: u64, value: Value) -> Metric {
        Metric {
            name: None,
            alias: Some(alias),
            timestamp: Some(timestamp),
            datatype: None,
            value: Some(value),
        }
    }

    pub fn payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        prost::Message::encode_to_vec(&Payload {
            timestamp: Some(1_700_000_000_000),
            metrics,
            seq: Some(seq),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_b_births_then_aliased_data_decode_to_named_metrics() {
    use sparkplug::{
        BOOLEAN, DOUBLE, FLOAT, INT32, INT64, STRING, Value as V, birth, data, payload,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).await;
    let publisher = Publisher::connect(broker.port, "edge-node-1").await;
    // A retained birth of another node is the subscription probe.
    publisher
        .publish(
            "spBv1.0/plant/NBIRTH/probe",
            QoS::AtLeastOnce,
            true,
            payload(0, vec![birth("Probe", 1, BOOLEAN, V::Boolean(true))]),
        )
        .await;
    publisher.wait_done(1, Duration::from_secs(10)).await;
    let mut rig = start_rig().await;
    let config = source_config(
        &broker.endpoint(),
        "",
        &[r#"{ filter = "spBv1.0/plant/#", qos = 1, payload = "sparkplug_b" }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    wait_rows_on(
        &rig,
        "spBv1.0/plant/NBIRTH/probe/Probe",
        1,
        Duration::from_secs(30),
    )
    .await;

    let messages = [
        (
            "spBv1.0/plant/NBIRTH/edge1",
            payload(
                0,
                vec![
                    birth("bdSeq", 0, INT64, V::Long(1)),
                    birth("Line/Temperature", 1, DOUBLE, V::Double(20.0)),
                    birth("Line/Count", 2, INT32, V::Int(0)),
                    birth("Line/Running", 3, BOOLEAN, V::Boolean(false)),
                    birth("Line/Recipe", 4, STRING, V::String("none".into())),
                ],
            ),
        ),
        (
            "spBv1.0/plant/DBIRTH/edge1/press7",
            payload(1, vec![birth("Pressure", 10, FLOAT, V::Float(1.0))]),
        ),
        (
            "spBv1.0/plant/NDATA/edge1",
            payload(
                2,
                vec![
                    data(1, 1_700_000_000_500, V::Double(21.5)),
                    // Int32 -7 travels as its unsigned two's complement.
                    data(2, 1_700_000_000_501, V::Int(u32::MAX - 6)),
                    data(3, 1_700_000_000_502, V::Boolean(true)),
                    data(4, 1_700_000_000_503, V::String("PVC-40".into())),
                ],
            ),
        ),
        (
            "spBv1.0/plant/DDATA/edge1/press7",
            payload(3, vec![data(10, 1_700_000_000_600, V::Float(3.25))]),
        ),
        // Sequence 4 and 5 never arrive: a gap of two messages.
        (
            "spBv1.0/plant/NDATA/edge1",
            payload(6, vec![data(1, 1_700_000_000_700, V::Double(22.0))]),
        ),
    ];
    for (topic, bytes) in &messages {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, bytes.clone())
            .await;
    }
    publisher
        .wait_done(1 + messages.len() as u64, Duration::from_secs(10))
        .await;
    wait_rows_on(
        &rig,
        "spBv1.0/plant/NDATA/edge1/Line/Temperature",
        2,
        Duration::from_secs(30),
    )
    .await;

    let rows = rows(&rig);
    let by_topic: HashMap<&str, Vec<&Value>> = rows.iter().fold(HashMap::new(), |mut map, r| {
        map.entry(text(r, "topic")).or_default().push(r);
        map
    });
    let one = |topic: &str| {
        let found = by_topic
            .get(topic)
            .unwrap_or_else(|| panic!("no row for {topic}"));
        found[0]
    };
    let temperature = &by_topic["spBv1.0/plant/NDATA/edge1/Line/Temperature"];
    assert_eq!(number(temperature[0], "value_num"), 21.5);
    assert_eq!(
        number(temperature[0], "event_time"),
        1_700_000_000_500_000.0
    );
    assert_eq!(number(temperature[1], "value_num"), 22.0);
    let count = one("spBv1.0/plant/NDATA/edge1/Line/Count");
    assert_eq!(number(count, "value_num"), -7.0);
    assert_eq!(text(count, "value_str"), "-7");
    assert_eq!(text(count, "value_type"), "int64");
    assert_eq!(number(count, "event_time"), 1_700_000_000_501_000.0);
    assert!(flag(
        one("spBv1.0/plant/NDATA/edge1/Line/Running"),
        "value_bool"
    ));
    assert_eq!(
        text(one("spBv1.0/plant/NDATA/edge1/Line/Recipe"), "value_str"),
        "PVC-40"
    );
    let pressure = one("spBv1.0/plant/DDATA/edge1/press7/Pressure");
    assert_eq!(number(pressure, "value_num"), 3.25);
    assert_eq!(number(pressure, "event_time"), 1_700_000_000_600_000.0);
    assert_eq!(text(pressure, "payload_format"), "sparkplug_b");
    assert_eq!(text(pressure, "quality"), "good");
    // Births are records too, with the birth values.
    assert_eq!(
        number(
            one("spBv1.0/plant/NBIRTH/edge1/Line/Temperature"),
            "value_num"
        ),
        20.0
    );
    assert_eq!(
        number(
            one("spBv1.0/plant/DBIRTH/edge1/press7/Pressure"),
            "value_num"
        ),
        1.0
    );
    assert!(
        rows.iter()
            .filter(|r| text(r, "payload_format") == "sparkplug_b")
            .all(|r| r.get("parse_error").is_none()),
        "every alias resolved"
    );

    let gap = rig
        .wait_event(SOURCE, "gap", "sequence gap", Duration::from_secs(10))
        .await;
    assert_eq!(number(&gap, "count"), 2.0);
    assert!(text(&gap, "detail").contains("plant/edge1"));
    assert!(rig.alive(worker));
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_source_configuration_exits_with_the_configuration_status() {
    let mut rig = start_rig().await;
    let config = source_config(
        "tcp://127.0.0.1:1883",
        "ca_file = \"/nonexistent/ca.pem\"",
        &[r#"{ filter = "a/#/b", qos = 3 }"#],
    );
    let worker = start_worker(&mut rig, &config).await;
    let status = tokio::time::timeout(Duration::from_secs(30), rig.workers[worker].child.wait())
        .await
        .expect("the worker exits instead of retrying")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(78),
        "EX_CONFIG: the supervisor waits for a configuration change"
    );
}

/// The same refusal through the real supervisor: `iot-connector status` and `GET /health` show
/// the worker's last error while it keeps running and retrying slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_in_status_and_health_without_a_restart() {
    use iot_connector_tests::{
        bin,
        connector::{Connector, config_text, source_health},
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with_password(broker_dir.path(), "edge", "secret123").await;

    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["iot-connector-uplink", "iot-connector-mqtt"] {
        std::os::unix::fs::symlink(bin(name), bins.join(name)).unwrap();
    }
    let http = format!("127.0.0.1:{}", free_port());
    let sources = format!(
        "[[sources]]\nname = \"{SOURCE}\"\nprotocol = \"mqtt\"\nendpoint = \"{}\"\n\
         username = \"edge\"\npassword = \"not-the-password\"\nallow_plaintext_password = true\ntopics = [{{ filter = \"plant/#\" }}]\n",
        broker.endpoint()
    );
    let config = config_text(dir.path(), &http, &sources);
    let supervised = Connector::launch(dir, http, &config);
    let refused = |error: &Value| {
        error
            .as_str()
            .is_some_and(|e| e.contains("refused the credentials of user \"edge\""))
    };
    assert!(
        supervised
            .wait_for(Duration::from_secs(30), |c| refused(
                &c.process(SOURCE)["last_error"]
            ))
            .await,
        "status never showed the refusal: {:?}",
        supervised.status()
    );
    let (code, health) = supervised.health();
    let source = source_health(&health, SOURCE);
    assert_eq!(
        code, 200,
        "a refused source does not take the host down: {health}"
    );
    assert!(refused(&source["last_error"]), "{health}");
    assert_eq!(source["state"], "connecting", "{health}");

    let pid = supervised.process(SOURCE)["pid"].clone();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let process = supervised.process(SOURCE);
    assert_eq!(process["restarts"], 0, "no crash loop: {process}");
    assert_eq!(
        process["pid"], pid,
        "the same worker keeps retrying: {process}"
    );
    let attempts = broker.log().matches("not authorised").count();
    assert!(
        attempts <= 2,
        "{attempts} refused attempts:\n{}",
        broker.log()
    );
}
