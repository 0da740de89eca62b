//! The README's first command: `iot-connector demo`, headless, as a newcomer would run it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code

use std::{path::Path, process::Stdio, time::Duration};

use iot_connector_tests::{
    bin,
    connector::{kill, status_of},
    free_port, http_get, wait_until,
};
use nix::sys::signal::Signal;

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fills_every_table_survives_a_killed_worker_and_stops_cleanly() {
    let cwd = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut demo = tokio::process::Command::new(bin("iot-connector"))
        .arg("demo")
        .current_dir(cwd.path())
        .env("IOT_CONNECTOR_DEMO_HTTP", &http)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let zerobus = cwd.path().join("demo/zerobus");
    let opcua = zerobus.join("demo.bronze.opcua_events.jsonl");
    let modbus = zerobus.join("demo.bronze.modbus_events.jsonl");
    let mqtt = zerobus.join("demo.bronze.mqtt_events.jsonl");
    let connector_status = zerobus.join("demo.bronze.connector_status.jsonl");
    let tags = |path: &Path, column: &str| -> std::collections::HashSet<String> {
        lines(path)
            .iter()
            .filter_map(|r| r[column].as_str().map(str::to_owned))
            .collect()
    };
    // Every simulated source, by the column that names it in its table.
    let expected: [(&Path, &str, Vec<String>); 3] = [
        (
            &opcua,
            "node_id",
            [
                "Reactor.Temperature",
                "Reactor.Pressure",
                "Cooler.Temperature",
                "Cooler.Pressure",
                "Agitator.Running",
                "Pump.Running",
                "Packer.Count",
            ]
            .map(|n| format!(";s=Plant.{n}"))
            .to_vec(),
        ),
        (
            &mqtt,
            "topic",
            [
                "plant/hall_a/temperature",
                "plant/hall_b/temperature",
                "plant/cold_store/temperature",
                "plant/press_1/vibration",
                // Sparkplug B NDATA carries aliases only: the names come from the NBIRTH.
                "spBv1.0/demo/NDATA/edge1/Conveyor/Speed",
                "spBv1.0/demo/NDATA/edge1/Conveyor/Running",
                "spBv1.0/demo/NDATA/edge1/Conveyor/PartCount",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        (
            &modbus,
            "tag_name",
            [
                "boiler_temp",
                "flow_total",
                "firmware",
                "steam_pressure",
                "burner_on",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
    ];
    let missing = || -> Vec<String> {
        expected
            .iter()
            .flat_map(|(path, column, wanted)| {
                let seen = tags(path, column);
                wanted
                    .iter()
                    .filter(move |w| !seen.iter().any(|s| s.ends_with(w.as_str())))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || missing().is_empty()
            && !lines(&connector_status).is_empty())
        .await,
        "within 30 s, no rows yet from {:?}; status rows: {}",
        missing(),
        lines(&connector_status).len()
    );
    assert!(
        lines(&mqtt)
            .iter()
            .filter(|r| r["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("spBv1.0/")))
            .all(|r| r["parse_error"].is_null()),
        "every Sparkplug metric resolves"
    );
    assert_eq!(http_get(&http, "/health").0, 200);
    let row = lines(&modbus)
        .into_iter()
        .find(|r| r["tag_name"] == "boiler_temp")
        .unwrap();
    let temperature = row["value_num"].as_f64().unwrap();
    assert!(
        (70.0..=90.0).contains(&temperature),
        "a float32 ABCD decodes to a boiler temperature: {row}"
    );

    let config = cwd.path().join("demo/config.toml");
    let before = status_of(&config)
        .into_iter()
        .find(|p| p["name"] == "boiler_plc")
        .unwrap();
    let pid = i32::try_from(before["pid"].as_i64().unwrap()).unwrap();
    kill(pid, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(20), || status_of(&config).iter().any(
            |p| p["name"] == "boiler_plc" && p["restarts"] == 1 && p["state"] == "connected"
        ))
        .await
    );
    let rows = lines(&modbus).len();
    assert!(
        wait_until(Duration::from_secs(20), || lines(&modbus).len() > rows + 3).await,
        "rows keep coming"
    );

    for table in [&opcua, &mqtt] {
        let rows = lines(table).len();
        assert!(
            wait_until(Duration::from_secs(20), || lines(table).len() > rows + 3).await,
            "{} keeps growing",
            table.display()
        );
    }

    // At least 20 s of headless running before the clean stop.
    let ran = started.elapsed();
    if ran < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(20) - ran).await;
    }
    let demo_pid = i32::try_from(demo.id().unwrap()).unwrap();
    kill(demo_pid, Signal::SIGINT);
    let exit = tokio::time::timeout(Duration::from_secs(40), demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut summary = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut demo.stdout.take().unwrap(), &mut summary)
        .await
        .unwrap();
    assert!(
        summary.contains("restarts") && summary.contains("rows at Zerobus"),
        "{summary}"
    );
    assert!(summary.contains(&format!("http://{http}/health")));
}
