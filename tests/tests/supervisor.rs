//! The supervisor end to end: `iot-connector run` with the real uplink and stand-in workers (the
//! test worker in place of the Modbus worker, `/bin/false` as a crash-looping one, a script that
//! exits with the configuration-error code), driven through its command line, signals and HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)] // test code: a failed step should fail loudly

use std::{
    path::Path,
    time::{Duration, Instant},
};

use iot_connector_supervisor::{Metric, MetricKind};
use iot_connector_tests::{
    bin,
    connector::{Connector, config_text, kill, modbus_source, with_binaries, zerobus_section},
    wait_until,
};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_back_at_once_and_the_others_are_untouched() {
    let sources = format!(
        "{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    );
    let c = Connector::start(&sources).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    let old = c.pid("plc1").unwrap();
    let plc2 = c.pid("plc2");
    let killed = Instant::now();
    kill(old, Signal::SIGKILL);
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c
            .pid("plc1")
            .is_some_and(|p| p != old)
            && c.process("plc1")["state"] == "connected")
            .await
    );
    println!(
        "plc1 reconnected {} ms after kill -9",
        killed.elapsed().as_millis()
    );
    let plc1 = c.process("plc1");
    assert_eq!(plc1["restarts"], 1);
    assert_eq!(c.pid("plc2"), plc2, "the other worker kept running");
    assert_eq!(c.process("plc2")["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_worker_is_failed_and_health_is_degraded_not_down() {
    let sources = format!(
        "{}[[sources]]\nname = \"broker\"\nprotocol = \"mqtt\"\nendpoint = \"mqtt://127.0.0.1:1883\"\ntopics = [{{ filter = \"a/#\" }}]\n",
        modbus_source("plc1", 1502)
    );
    let c = Connector::start(&sources).await;
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.process("broker")["state"]
            == "failed")
            .await
    );
    let (status, body) = c.get("/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded");
    let broker = health["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "broker")
        .unwrap()
        .clone();
    assert_eq!(broker["state"], "failed");
    // The intervals grow: after the first burst, restarts slow down to seconds apart.
    let restarts = c.process("broker")["restarts"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = c.process("broker")["restarts"].as_u64().unwrap();
    assert!(
        restarts >= 5 && later - restarts <= 2,
        "restarts {restarts} then {later}"
    );
    assert_eq!(c.process("plc1")["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_connects_degrades_health_after_the_grace_period() {
    // The real Modbus worker, polling a port nothing listens on.
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        ("iot-connector-modbus", "iot-connector-modbus"),
    ]);
    let http = format!("127.0.0.1:{}", iot_connector_tests::free_port());
    let sources = format!(
        "degraded_after = \"10s\"\n\n{}",
        modbus_source("plc1", iot_connector_tests::free_port())
    );
    let config = config_text(dir.path(), &http, &sources);
    let c = Connector::launch(dir, http, &config);
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.health().1["status"]
            == "healthy")
            .await,
        "healthy within the grace period"
    );
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.health().1["status"]
            == "degraded")
            .await,
        "never degraded: {}",
        c.health().1
    );
    let (status, health) = c.health();
    assert_eq!(
        status, 200,
        "a source that cannot connect must not take the host down"
    );
    let plc1 = iot_connector_tests::connector::source_health(&health, "plc1");
    assert_eq!(plc1["state"], "connecting");
    assert!(
        plc1["not_connected_seconds"].as_u64().unwrap() >= 10,
        "{plc1}"
    );
    let reason = plc1["last_error"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "no reason given: {plc1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_that_never_gets_ready_shows_in_status_and_health_and_signals_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    // An uplink that starts and never says a word.
    let script = bins.join("iot-connector-uplink");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(
        bin("iot-connector-testworker"),
        bins.join("iot-connector-modbus"),
    )
    .unwrap();
    let http = format!("127.0.0.1:{}", iot_connector_tests::free_port());
    let config = config_text(dir.path(), &http, &modbus_source("plc1", 1502));
    let mut c = Connector::launch(dir, http, &config);

    assert!(
        c.wait_for(Duration::from_secs(15), |c| c.process("uplink")["state"]
            == "connecting")
            .await,
        "status does not answer while the uplink starts"
    );
    assert_eq!(c.get("/health").0, 503);
    // plc1 waits for the uplink.
    assert!(c.process("plc1")["pid"].is_null(), "{}", c.process("plc1"));

    let pid = c.process.id().unwrap() as i32;
    kill(pid, Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        c.process.try_wait().unwrap().is_none(),
        "SIGHUP ended the supervisor"
    );
    let (code, out) = c.command(&["status"]);
    assert_eq!(code, 0, "{out}");

    kill(pid, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), c.process.wait())
        .await
        .expect("SIGTERM stops a supervisor whose uplink never started")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_watchdog_is_fed_only_while_the_uplink_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET", notify.display().to_string()),
        // Pings every 0.5 s.
        ("WATCHDOG_USEC", "1000000".to_owned()),
    ];
    let c = Connector::start_with_env(&modbus_source("plc1", 1502), &env).await;
    let pings_within = |window: Duration| {
        let end = Instant::now() + window;
        let mut pings = 0;
        let mut buf = [0u8; 512];
        while Instant::now() < end {
            if let Ok(n) = socket.recv(&mut buf) {
                pings += usize::from(&buf[..n] == b"WATCHDOG=1");
            }
        }
        pings
    };
    assert!(
        pings_within(Duration::from_secs(2)) >= 2,
        "no watchdog pings"
    );

    let uplink = c.pid("uplink").unwrap();
    kill(uplink, Signal::SIGSTOP);
    // Its last heartbeat goes stale after 3 s.
    let _ = pings_within(Duration::from_secs(4));
    let while_frozen = pings_within(Duration::from_secs(3));
    kill(uplink, Signal::SIGCONT);
    assert_eq!(
        while_frozen, 0,
        "the watchdog was fed while the uplink was frozen"
    );
    assert!(
        pings_within(Duration::from_secs(15)) >= 1,
        "the pings never resumed once the uplink was back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_exit_waits_for_a_configuration_change() {
    let sources = format!(
        "{}[[sources]]\nname = \"press\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\n",
        modbus_source("plc1", 1502)
    );
    let c = Connector::start(&sources).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("press")["state"]
            == "waiting_for_config_change")
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.process("press")["restarts"],
        1,
        "no restart until the configuration changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_by_the_watchdog_and_restarted() {
    let c = Connector::start(&modbus_source("plc1", 1502)).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    let old = c.pid("plc1").unwrap();
    kill(old, Signal::SIGSTOP);
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c
            .pid("plc1")
            .is_some_and(|p| p != old))
            .await,
        "the stopped worker was not replaced"
    );
    assert!(c.process("plc1")["restarts"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_act_on_one_source_only() {
    let sources = format!(
        "{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    );
    let c = Connector::start(&sources).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    let plc2 = c.pid("plc2");

    let (code, text) = c.command(&["stop", "plc1"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.process("plc1")["state"]
            == "stopped")
            .await
    );
    let (code, _) = c.command(&["start", "plc1"]);
    assert_eq!(code, 0);
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    let before = c.pid("plc1");
    let (code, _) = c.command(&["restart", "plc1"]);
    assert_eq!(code, 0);
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.pid("plc1").is_some()
            && c.pid("plc1") != before)
            .await
    );

    let (code, text) = c.command(&["restart", "no-such-source"]);
    assert_eq!(code, 65, "{text}");
    assert_eq!(c.pid("plc2"), plc2, "plc2 was never touched");
    assert_eq!(c.process("plc2")["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_restarts_only_what_changed_and_refuses_an_invalid_file() {
    let sources = format!(
        "{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    );
    let c = Connector::start(&sources).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.pid("plc1").is_some()
            && c.pid("plc2").is_some())
            .await
    );
    let (plc1, plc2) = (c.pid("plc1"), c.pid("plc2"));

    let changed = format!(
        "{}{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1599),
        modbus_source("plc3", 1504)
    );
    std::fs::write(&c.config, config_text(c.dir.path(), &c.http, &changed)).unwrap();
    let (code, text) = c.command(&["reload"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.pid("plc2").is_some()
            && c.pid("plc2") != plc2)
            .await
    );
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c
            .status()
            .iter()
            .any(|p| p["name"] == "plc3"))
            .await
    );
    assert_eq!(c.pid("plc1"), plc1, "an unchanged source keeps running");

    std::fs::write(
        &c.config,
        config_text(c.dir.path(), &c.http, &changed).replace("[http]", "[http]\nbogus = 1"),
    )
    .unwrap();
    let (code, text) = c.command(&["reload"]);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains(&format!("{}:", c.config.display())),
        "FILE:LINE in {text}"
    );
    assert_eq!(c.pid("plc1"), plc1, "an invalid file changes nothing");
    assert_eq!(c.get("/health").0, 200);

    // New directories take a restart: the sockets and the spool stay where they are, so the
    // reload is refused (SIGHUP: logged; the command: 78 at the key's line) instead of
    // restarting the uplink somewhere the workers do not look.
    let uplink = c.pid("uplink");
    let text = config_text(c.dir.path(), &c.http, &changed);
    std::fs::write(&c.config, text.replace("/run\"", "/run2\"")).unwrap();
    kill(c.process.id().unwrap() as i32, Signal::SIGHUP);
    let moved = text.replace("/state\"", "/state2\"");
    std::fs::write(&c.config, &moved).unwrap();
    let (code, text) = c.command(&["reload"]);
    assert_eq!(code, 78, "{text}");
    let line = moved
        .lines()
        .position(|l| l.starts_with("state_dir"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!(
            "{}:{line}: `connector.state_dir` changed",
            c.config.display()
        )) && text.contains("only at a restart"),
        "{text}"
    );
    assert_eq!(c.pid("uplink"), uplink, "a refused reload restarts nothing");
    assert_eq!(c.pid("plc1"), plc1);
    assert_eq!(c.get("/health").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_the_uplink_is_down() {
    let c = Connector::start(&modbus_source("plc1", 1502)).await;
    let uplink = c.pid("uplink").unwrap();
    kill(uplink, Signal::SIGSTOP);
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.get("/health").0 == 503)
            .await,
        "a hung uplink must fail the health check"
    );
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.get("/health").0 == 200)
            .await,
        "health recovers once the uplink is back"
    );
    assert_ne!(c.pid("uplink"), Some(uplink));
    let uplink = c.pid("uplink").unwrap();
    kill(uplink, Signal::SIGKILL);
    // Between the kill and the new uplink's first report the load balancer must see 503.
    let mut saw_503 = false;
    for _ in 0..500 {
        if c.get("/health").0 == 503 {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        saw_503,
        "/health never answered 503 while the uplink was down"
    );
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c
            .pid("uplink")
            .is_some_and(|p| p != uplink)
            && c.get("/health").0 == 200)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_child_outlives_a_killed_supervisor() {
    let mut c = Connector::start(&format!(
        "{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    ))
    .await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.children().len() >= 3)
            .await
    );
    kill(c.process.id().unwrap() as i32, Signal::SIGKILL);
    let _ = c.process.wait().await;
    assert!(
        wait_until(Duration::from_secs(10), || c.children().is_empty()).await,
        "orphans: {:?}",
        c.children()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_everything_and_exits_zero() {
    let mut c = Connector::start(&format!(
        "{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    ))
    .await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    kill(c.process.id().unwrap() as i32, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), c.process.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(c.children().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_name_every_declared_metric_with_source_labels() {
    let c = Connector::start(&modbus_source("plc1", 1502)).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.process("plc1")["state"]
            == "connected")
            .await
    );
    // The uplink reports what it wrote, the worker what it read, each with its next heartbeat.
    let counted = |body: &str, prefix: &str| sample(body, prefix).is_some_and(|v| v >= 1.0);
    assert!(
        c.wait_for(Duration::from_secs(20), |c| {
            let body = c.get("/metrics").1;
            counted(
                &body,
                "iot_connector_records_written_total{source=\"plc1\"}",
            ) && counted(&body, "iot_connector_records_read_total{source=\"plc1\"")
        })
        .await
    );
    let (status, body) = c.get("/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    // Only a source with a certificate (OPC-UA, MQTT over TLS) has an expiry; this one has none.
    for metric in Metric::ALL
        .into_iter()
        .filter(|m| *m != Metric::CertificateExpiryDays)
    {
        let name = metric.name();
        let metric = if metric.kind() == MetricKind::Histogram {
            format!("{name}_count")
        } else {
            name.to_owned()
        };
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == metric || s.metric == name),
            "{name} missing from /metrics"
        );
    }
    let read = scrape
        .samples
        .iter()
        .find(|s| s.metric == "iot_connector_records_read_total")
        .unwrap();
    assert_eq!(read.labels.get("source"), Some("plc1"));
    assert_eq!(read.labels.get("protocol"), Some("modbus"));
    // The values say what the connector is doing, not only that the names exist.
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {metric} {labels:?}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a number"),
        }
    };
    let plc1 = [("source", "plc1")];
    assert_eq!(value("iot_connector_up", &[]), 1.0);
    assert_eq!(
        value(
            "iot_connector_source_state",
            &[("source", "plc1"), ("state", "connected")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "iot_connector_source_state",
            &[("source", "plc1"), ("state", "failed")]
        ),
        0.0
    );
    // The worker counts what it read, the uplink what it wrote (status rows included), each in
    // its own heartbeat: both count, neither bounds the other at one instant.
    assert!(value("iot_connector_records_read_total", &plc1) >= 1.0);
    assert!(value("iot_connector_records_written_total", &plc1) >= 1.0);
    assert_eq!(value("iot_connector_worker_restarts_total", &plc1), 0.0);
    let (status, _) = c.get("/nope");
    assert_eq!(status, 404);
}

#[test]
fn the_systemd_unit_scores_at_most_1_5() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/iot-connector.service");
    let output = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (the systemd package; .ci/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for iot-connector.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("an overall exposure score");
    assert!(score <= 1.5, "exposure {score}");
}

#[test]
fn check_accepts_every_example_and_names_the_line_of_each_problem() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let output = std::process::Command::new(bin("iot-connector"))
            .args(["check", "--config"])
            .arg(&path)
            .env("DATABRICKS_CLIENT_ID", "example-id")
            .env("DATABRICKS_CLIENT_SECRET", "example-secret")
            .env("OPCUA_PASSWORD", "example")
            .env("MQTT_PASSWORD", "example")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "examples/ holds one config per protocol and one with all three"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = config_text(dir.path(), "127.0.0.1:8081", &modbus_source("plc1", 1502))
        .replace("[http]", "[http]\nlisten_address = \"x\"")
        .replace(
            "protocol = \"modbus\"",
            "protocol = \"modbus\"\npoll_interval = 5",
        );
    std::fs::write(&broken, text).unwrap();
    let output = std::process::Command::new(bin("iot-connector"))
        .args(["check", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "both problems at once: {stderr}");
    for line in lines {
        let rest = line
            .strip_prefix(&format!("{}:", broken.display()))
            .expect("FILE:LINE: message");
        assert!(
            rest.split(':').next().unwrap().parse::<usize>().is_ok(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_crashes_and_restarts_reach_the_status_table() {
    let (zerobus, _ca, zerobus_block) = zerobus_section().await;
    let tables = iot_connector_tests::TABLES;
    let sources = format!(
        "{zerobus_block}{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    );
    let c = Connector::start(&sources).await;
    let state = zerobus.state().clone();
    let events = |source: &str| -> Vec<(String, String)> {
        state
            .rows(tables[3])
            .iter()
            .filter(|r| r["source_name"] == source)
            .map(|r| {
                (
                    r["event"].as_str().unwrap_or_default().to_owned(),
                    r["detail"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let has = |source: &str, event: &str| events(source).iter().any(|(e, _)| e == event);
    assert!(
        wait_until(Duration::from_secs(30), || has("plc1", "started")
            && has("plc2", "started")
            && has("_uplink", "started"))
        .await,
        "started rows: plc1 {:?}, _uplink {:?}",
        events("plc1"),
        events("_uplink")
    );

    let pid = c.pid("plc1").unwrap();
    kill(pid, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(30), || has("plc1", "crashed")
            && has("plc1", "restarted"))
        .await,
        "plc1 after kill -9: {:?}",
        events("plc1")
    );
    let plc1 = events("plc1");
    let crashed = plc1.iter().find(|(e, _)| e == "crashed").unwrap();
    assert!(crashed.1.contains("killed by a signal"), "{crashed:?}");

    let (code, out) = c.command(&["restart", "plc2"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || events("plc2")
            .iter()
            .any(|(e, d)| e == "restarted" && d.contains("operator")))
        .await,
        "plc2 after an operator restart: {:?}",
        events("plc2")
    );
    assert!(!has("plc2", "crashed"), "{:?}", events("plc2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_killed_and_a_stopped_supervisor() {
    let (zerobus, _ca, zerobus_block) = zerobus_section().await;
    let tables = iot_connector_tests::TABLES;
    let sources = format!(
        "{zerobus_block}{}{}",
        modbus_source("plc1", 1502),
        modbus_source("plc2", 1503)
    );
    let mut c = Connector::start(&sources).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    kill(c.process.id().unwrap() as i32, Signal::SIGKILL);
    let _ = c.process.wait().await;
    assert!(wait_until(Duration::from_secs(10), || c.children().is_empty()).await);
    c.rerun().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    kill(c.process.id().unwrap() as i32, Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), c.process.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    c.rerun().await;

    // Every sequence number up to the highest delivered arrived: nothing acknowledged was lost
    // across the kill and the stop, and a restarted worker never skipped or reused a number.
    let state = zerobus.state().clone();
    for source in ["plc1", "plc2"] {
        let contiguous = |state: &iot_connector_sim_zerobus::SimState| {
            let seqs: std::collections::BTreeSet<i64> = state
                .rows(tables[2])
                .iter()
                .filter(|r| r["source_name"] == source)
                .filter_map(|r| r["seq"].as_i64())
                .collect();
            let max = seqs.last().copied().unwrap_or(0);
            (max > 1_000 && seqs.len() as i64 == max).then_some(max)
        };
        let mut delivered = None;
        for _ in 0..60 {
            delivered = contiguous(&state);
            if delivered.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            delivered.is_some(),
            "{source}: a gap in the delivered sequence numbers"
        );
    }
}

/// `check` and `run` refuse a state or runtime directory that others could change or that is
/// no directory at all, at the key's line; `run` leaves the mode of such a directory alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_foreign_or_kernel_directories_are_refused_and_left_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let mut cases = vec![
        (shared.clone(), "(mode 1777)"),
        ("/tmp".into(), "/tmp"),
        ("/proc/self/fd".into(), "kernel file system"),
        (file, "is not a directory"),
    ];
    if nix::unistd::geteuid().is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        cases.push((theirs, "belongs to uid 65534"));
    }
    let config = dir.path().join("config.toml");
    let write = |runtime_dir: &Path| {
        let text = format!(
            "[connector]\nid = \"dirs\"\nstate_dir = {:?}\nruntime_dir = {:?}\n\n{}",
            dir.path().join("state").display().to_string(),
            runtime_dir.display().to_string(),
            modbus_source("plc1", 1502)
        );
        std::fs::write(&config, text).unwrap();
    };
    for (runtime_dir, expected) in &cases {
        write(runtime_dir);
        let output = std::process::Command::new(bin("iot-connector"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{}: {stderr}",
            runtime_dir.display()
        );
        assert!(
            stderr.contains(&format!("{}:4: ", config.display()))
                && stderr.contains("runtime_dir")
                && stderr.contains(expected),
            "{}: {stderr}",
            runtime_dir.display()
        );
    }
    write(&shared);
    let run = tokio::process::Command::new(bin("iot-connector"))
        .args(["run", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run exits at once")
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o1777,
        "a directory the connector did not create keeps its mode"
    );
}

/// Whatever the umask it was started with, the connector's secrets are 0600 and their
/// directories 0700: the spool, its key and the OPC-UA client's private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_their_directories_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // The umask of a hand start or a container; the supervisor inherits it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        ("iot-connector-opcua", "iot-connector-opcua"),
    ]);
    let http = format!("127.0.0.1:{}", iot_connector_tests::free_port());
    let source = "[[sources]]\nname = \"ua1\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:1\"\n\
                  nodes = [{ node_id = \"ns=2;s=T\" }]\n";
    let config = config_text(dir.path(), &http, source);
    let c = Connector::launch(dir, http, &config);
    let state = c.dir.path().join("state");
    let find = |name: &str| {
        walk(&state)
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
    };
    assert!(
        c.wait_for(Duration::from_secs(60), |_| find("private.pem").is_some()
            && find("spool.redb").is_some())
            .await,
        "the OPC-UA key and the spool were never made under {}",
        state.display()
    );
    let key = find("private.pem").unwrap();
    let spool = find("spool.redb").unwrap();
    let pki = key.parent().unwrap().parent().unwrap().to_owned();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for (path, wanted) in [
        (key.clone(), 0o600),
        (key.parent().unwrap().to_owned(), 0o700),
        (pki, 0o700),
        (spool.clone(), 0o600),
        (spool.parent().unwrap().to_owned(), 0o700),
        (state.join("keys/spool.key"), 0o600),
    ] {
        assert_eq!(mode(&path), wanted, "{}: {:o}", path.display(), mode(&path));
    }
}

/// The value of the first `/metrics` sample line that starts with `prefix`.
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

/// An operator command from a user who may not use the control socket says so, instead of
/// claiming that nothing runs. Needs root to be another user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_without_access_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: being another user needs root");
        return;
    }
    let c = Connector::start(&modbus_source("plc1", 1502)).await;
    let readable = tempfile::tempdir().unwrap();
    std::fs::set_permissions(readable.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = readable.path().join("config.toml");
    std::fs::copy(&c.config, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A copy the other user can run wherever the checkout is.
    let cli = readable.path().join("iot-connector");
    std::fs::copy(bin("iot-connector"), &cli).unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&cli)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("permission denied") && !stderr.contains("no connector is running"),
        "{stderr}"
    );
}

/// A spool file overwritten on disk is moved aside at the next start, and `/health` stays
/// `degraded`, naming the file, until an operator removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_keeps_health_degraded_until_the_operator_removes_it() {
    let mut c = Connector::start(&modbus_source("plc1", 1502)).await;
    let spool_dir = c.dir.path().join("state/spool");
    assert!(
        c.wait_for(Duration::from_secs(30), |_| spool_dir
            .join("spool.rows")
            .exists())
            .await
    );
    kill(c.process.id().unwrap() as i32, Signal::SIGKILL);
    let _ = c.process.wait().await;
    assert!(
        c.wait_for(Duration::from_secs(10), |c| c.children().is_empty())
            .await,
        "the children die with the supervisor"
    );
    let spool = spool_dir.join("spool.redb");
    let mut bytes = std::fs::read(&spool).unwrap();
    bytes.iter_mut().take(64).for_each(|b| *b ^= 0xff);
    std::fs::write(&spool, bytes).unwrap();

    c.rerun().await;
    let attention = |c: &Connector| {
        let (_, health) = c.health();
        (health["status"] == "degraded")
            .then(|| {
                health["uplink"]["needs_attention"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten()
    };
    assert!(
        c.wait_for(Duration::from_secs(30), |c| attention(c).is_some())
            .await,
        "{}",
        c.health().1
    );
    let text = attention(&c).unwrap();
    let aside: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("spool.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(text.contains(&aside[0].display().to_string()), "{text}");
    std::fs::remove_file(&aside[0]).unwrap();
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.health().1["status"]
            == "healthy")
            .await,
        "{}",
        c.health().1
    );
}

/// The spool's filesystem fills up: commits fail cleanly, `/health` says 503 with the reason, no
/// record is acknowledged that is not stored, and writing resumes by itself once there is room.
/// Needs root to mount a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_and_writing_resumes_when_space_returns() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        ("iot-connector-modbus", "iot-connector-testworker"),
    ]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0750", "tmpfs"])
        .arg(&state)
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mount a tmpfs at {}", state.display());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(state.clone());
    let http = format!("127.0.0.1:{}", iot_connector_tests::free_port());
    let config = config_text(dir.path(), &http, &modbus_source("plc1", 1502));
    let c = Connector::launch(dir, http, &config);
    let written = |c: &Connector| {
        sample(
            &c.get("/metrics").1,
            "iot_connector_records_written_total{source=\"plc1\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(
        c.wait_for(Duration::from_secs(30), |c| written(c) > 0.0)
            .await
    );

    // Everything but a few KiB taken by another file.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    assert!(
        c.wait_for(Duration::from_secs(60), |c| {
            let (status, health) = c.health();
            status == 503
                && health["uplink"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("spool commit failed"))
        })
        .await,
        "{}",
        c.health().1
    );
    let stuck = written(&c);
    std::fs::remove_file(&filler).unwrap();
    assert!(
        c.wait_for(Duration::from_secs(60), |c| c.get("/health").0 == 200
            && written(c) > stuck)
            .await,
        "writing did not resume: {} written, {}",
        written(&c),
        c.health().1
    );

    // Stop, then count: every stored record of plc1 once, none missing below the last one.
    let (code, _) = c.command(&["stop", "plc1"]);
    assert_eq!(code, 0);
    kill(c.process.id().unwrap() as i32, Signal::SIGTERM);
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.children().is_empty())
            .await
    );
    let spool = iot_connector_uplink::spool::Spool::open(
        &state.join("spool"),
        Some(
            iot_connector_uplink::spool::SealKey::load_or_create(&state.join("keys/spool.key"))
                .unwrap(),
        ),
        u64::MAX,
        iot_connector_proto::SpoolPolicy::Block,
    )
    .unwrap();
    let last = spool.last_seq("plc1").unwrap().unwrap();
    let modbus = iot_connector_proto::Table::ALL
        .iter()
        .position(|t| *t == iot_connector_proto::Table::Modbus)
        .unwrap();
    assert_eq!(
        spool.stats().unwrap().rows[modbus],
        last,
        "rows 1..={last}, each once"
    );
}

/// The lines of `/proc/<pid>/status` this test reads: capability sets and `NoNewPrivs`.
fn privileges(pid: i32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs")
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// A connector started by hand as root gives its children neither capabilities nor a way to
/// gain them, and cannot gain any itself; as a service user the same holds for the children's
/// effective, permitted, inheritable and ambient sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_hold_no_capability_and_cannot_gain_privileges() {
    let c = Connector::start(&modbus_source("plc1", 1502)).await;
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c.pid("plc1").is_some()
            && c.pid("uplink").is_some())
            .await
    );
    let root = nix::unistd::geteuid().is_root();
    let none = "0000000000000000";
    for name in ["uplink", "plc1"] {
        let pid = c.pid(name).unwrap();
        for (key, value) in privileges(pid) {
            let wanted = match key.as_str() {
                "NoNewPrivs" => "1",
                "CapBnd" if !root => continue,
                _ => none,
            };
            assert_eq!(value, wanted, "{name} (pid {pid}) {key}");
        }
    }
    let supervisor = i32::try_from(c.process.id().unwrap()).unwrap();
    assert!(
        privileges(supervisor).contains(&("NoNewPrivs".into(), "1".into())),
        "the supervisor itself: {:?}",
        privileges(supervisor)
    );
}

/// A secret reaches only the process that needs it: no child's environment or command line
/// holds any secret, a worker's slice holds its own source's password and nothing else secret,
/// and the uplink's slice holds the Databricks secret and no source's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_secret_reaches_only_the_process_that_needs_it() {
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        ("iot-connector-mqtt", "iot-connector-mqtt"),
        ("iot-connector-opcua", "iot-connector-opcua"),
    ]);
    let http = format!("127.0.0.1:{}", iot_connector_tests::free_port());
    let (_zerobus, _ca, zerobus) = zerobus_section().await;
    let zerobus = zerobus.replace(
        "client_secret = \"secret\"",
        "client_secret = \"zb-7e1f-secret\"",
    );
    let sources = "[[sources]]\nname = \"a\"\nprotocol = \"mqtt\"\nendpoint = \"mqtt://127.0.0.1:1\"\n\
         username = \"u\"\npassword = \"pw-a-41c9\"\nallow_plaintext_password = true\n\
         topics = [{ filter = \"a/#\" }]\n\n\
         [[sources]]\nname = \"b\"\nprotocol = \"mqtt\"\nendpoint = \"mqtt://127.0.0.1:1\"\n\
         username = \"u\"\npassword = \"pw-b-d2e0\"\nallow_plaintext_password = true\n\
         topics = [{ filter = \"b/#\" }]\n\n\
         [[sources]]\nname = \"c\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:1\"\n\
         security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         username = \"u\"\npassword = \"pw-c-90ab\"\nnodes = [{ node_id = \"ns=2;s=T\" }]\n";
    let config = config_text(dir.path(), &http, &format!("{zerobus}{sources}"));
    let c = Connector::launch(dir, http, &config);
    let secrets = [
        ("a", "pw-a-41c9"),
        ("b", "pw-b-d2e0"),
        ("c", "pw-c-90ab"),
        ("uplink", "zb-7e1f-secret"),
    ];
    assert!(
        c.wait_for(Duration::from_secs(60), |c| secrets
            .iter()
            .all(|(name, _)| c.pid(name).is_some()))
            .await,
        "{:?}",
        c.status()
    );
    let holds =
        |bytes: &[u8], secret: &str| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
    for (name, _) in secrets {
        let pid = c.pid(name).unwrap();
        for file in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
            for (_, secret) in secrets {
                assert!(!holds(&bytes, secret), "{name}'s {file} holds {secret}");
            }
        }
    }
    // The slices, made by the code the supervisor sends them with.
    let loaded = iot_connector_config::load(&c.config).unwrap();
    let uplink = iot_connector_ipc::encode(&iot_connector_proto::Message::ConfigureUplink(
        Box::new(loaded.uplink_settings(Vec::new())),
    ))
    .unwrap();
    for source in &loaded.config.sources {
        let slice = iot_connector_ipc::encode(&iot_connector_proto::Message::ConfigureWorker(
            loaded.worker_settings(source, Vec::new()),
        ))
        .unwrap();
        for (owner, secret) in secrets {
            assert_eq!(
                holds(&slice, secret),
                owner == source.name(),
                "the slice of {} and {secret}",
                source.name()
            );
        }
    }
    for (owner, secret) in secrets {
        assert_eq!(
            holds(&uplink, secret),
            owner == "uplink",
            "the uplink's slice and {secret}"
        );
    }
}
