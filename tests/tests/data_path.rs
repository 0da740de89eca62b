//! The durable data path without the cloud: worker → data socket → uplink → spool.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should fail loudly

use std::time::Duration;

use iot_connector_proto::Table;
use iot_connector_tests::{Rig, TEST_WORKER, read_acked, start_worker, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_in_the_spool() {
    let mut rig = Rig::builder().offline().start().await;
    let acked = rig.dir.path().join("acked");
    let config = format!(
        "count = 20000\ntable = \"mqtt\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    rig.test_worker("line1", Table::Mqtt, &config).await;
    assert!(
        wait_until(Duration::from_secs(60), || read_acked(&acked)
            == Some(20000))
        .await
    );
    rig.kill_all().await;

    let spool = rig.uplink.open_spool().unwrap();
    assert_eq!(spool.last_seq("line1").unwrap(), Some(20000));
    let rows = spool
        .read(Table::Mqtt, None, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(rows.len(), 20000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_resumes_after_the_last_durable_seq() {
    let mut rig = Rig::builder().offline().start().await;
    let acked = rig.dir.path().join("acked");
    let config = format!(
        "count = 30000\ntable = \"modbus\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    for _ in 0..3 {
        let worker = rig.test_worker("plc", Table::Modbus, &config).await;
        let before = read_acked(&acked).unwrap_or(0);
        wait_until(Duration::from_secs(30), || {
            read_acked(&acked).unwrap_or(0) > before + 2000
        })
        .await;
        rig.workers[worker].kill().await;
    }
    rig.test_worker("plc", Table::Modbus, &config).await;
    assert!(
        wait_until(Duration::from_secs(60), || read_acked(&acked)
            == Some(30000))
        .await
    );
    rig.kill_all().await;

    let spool = rig.uplink.open_spool().unwrap();
    let rows = spool
        .read(Table::Modbus, None, usize::MAX, usize::MAX)
        .unwrap();
    let mut seqs: Vec<i64> = rows
        .iter()
        .map(|r| {
            <iot_connector_proto::table::bronze::ModbusEvent as prost::Message>::decode(
                r.row.as_slice(),
            )
            .unwrap()
            .seq()
        })
        .collect();
    let stored = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), stored, "a sequence number was stored twice");
    assert_eq!(
        seqs,
        (1..=30000).collect::<Vec<i64>>(),
        "every sequence number exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_token_is_refused() {
    let mut rig = Rig::builder().offline().log_uplink().start().await;
    let mut settings = rig
        .uplink
        .grant("line1", Table::Mqtt, "count = 10\ntable = \"mqtt\"\n")
        .await
        .unwrap();
    settings.token = iot_connector_ipc::new_token();
    rig.workers
        .push(start_worker(TEST_WORKER, settings).await.unwrap());
    let log = rig.uplink_log();
    let refused = || {
        std::fs::read_to_string(&log).is_ok_and(|text| {
            text.contains("Refused a data connection")
                && text.contains("wrong token for source \"line1\"")
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), refused).await,
        "the uplink never refused the token: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        rig.workers_alive(),
        "a refused worker keeps trying, it does not crash"
    );
    rig.kill_all().await;
    let spool = rig.uplink.open_spool().unwrap();
    assert_eq!(spool.last_seq("line1").unwrap(), None);
}
