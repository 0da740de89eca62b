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
    use iot_connector_ipc::{FrameReader, FrameWriter, IpcError, expect, handshake};
    use iot_connector_proto::{Message, Role};
    let mut rig = Rig::builder().offline().start().await;
    let mut settings = rig
        .uplink
        .grant("line1", Table::Mqtt, "count = 10\ntable = \"mqtt\"\n")
        .await
        .unwrap();
    let wrong = iot_connector_ipc::new_token();
    settings.token = wrong.clone();
    rig.workers
        .push(start_worker(TEST_WORKER, settings).await.unwrap());
    // What the uplink answers a Bind with that token, as the worker receives it.
    let stream =
        iot_connector_ipc::connect_data(std::path::Path::new(&rig.uplink.settings.data_socket))
            .await
            .unwrap();
    let (rx, tx) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    handshake(&mut reader, &mut writer, Role::Worker, Role::Uplink)
        .await
        .unwrap();
    writer
        .send(&Message::Bind {
            source: "line1".into(),
            token: wrong,
        })
        .await
        .unwrap();
    match reader.expect(expect::WELCOME).await {
        Err(IpcError::Refused(reason)) => assert!(
            reason.contains("wrong token for source \"line1\""),
            "{reason}"
        ),
        other => panic!("a wrong token was not refused: {other:?}"),
    }
    assert!(
        rig.workers_alive(),
        "a refused worker keeps trying, it does not crash"
    );
    rig.kill_all().await;
    let spool = rig.uplink.open_spool().unwrap();
    assert_eq!(spool.last_seq("line1").unwrap(), None);
}
