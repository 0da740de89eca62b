//! The whole data path against the Zerobus emulator and the real SDK over TLS: worker → uplink →
//! spool → Zerobus, with the faults the service really has.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should fail loudly

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_proto::Table;
use iot_connector_tests::{Rig, TABLES, read_acked, start_emulator, wait_for_ids, wait_until};
const MQTT: &str = TABLES[1];

/// Starts the test worker as `line1`, pushing `count` MQTT records; returns its acked file.
async fn start_line1(rig: &mut Rig, count: u64) -> PathBuf {
    let acked = rig.dir.path().join("acked");
    let config = format!(
        "count = {count}\ntable = \"mqtt\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    rig.test_worker("line1", Table::Mqtt, &config).await;
    acked
}

/// A rig whose Zerobus is down, with `count` records of line1 acknowledged: they are all in the
/// spool.
async fn spooled_while_zerobus_is_down(count: u64) -> Rig {
    let zerobus = start_emulator().await.unwrap();
    zerobus.faults().update(|f| f.down = true);
    let mut rig = Rig::builder().emulator(zerobus).start().await;
    let acked = start_line1(&mut rig, count).await;
    assert!(
        wait_until(Duration::from_secs(30), || read_acked(&acked)
            == Some(count))
        .await,
        "line1 acked {:?} of {count}",
        read_acked(&acked)
    );
    rig
}

fn expected_ids(source: &str, count: u64) -> HashSet<String> {
    (1..=count)
        .map(|seq| format!("test-connector/{source}/{seq}"))
        .collect()
}

/// The status rows about dead letters (the table also holds the processes' start rows).
fn dead_lettered(state: &iot_connector_sim_zerobus::SimState) -> Vec<serde_json::Value> {
    state
        .rows(TABLES[3])
        .into_iter()
        .filter(|r| r["event"] == "dead_lettered")
        .collect()
}

fn spool_file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("spool/spool.redb"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_delivers_every_record_and_drains_the_spool() {
    let mut rig = Rig::start().await;
    let acked = start_line1(&mut rig, 100_000).await;

    // The spool file's high-water mark, sampled while the records flow.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, spool_dir) = (std::sync::Arc::clone(&peak), rig.dir.path().to_owned());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    spool_file_len(&spool_dir),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let state = rig.zerobus().state().clone();
    let expected = expected_ids("line1", 100_000);
    let ids = wait_for_ids(&state, MQTT, &expected, Duration::from_secs(120)).await;
    assert_eq!(ids, expected);
    let row = state.rows(MQTT).into_iter().next().unwrap();
    assert_eq!(row["source_name"], "line1");
    assert_eq!(row["topic"], "test/seq");
    assert!(row["value_str"].as_str().unwrap().ends_with(":1"));
    assert_eq!(read_acked(&acked), Some(100_000));

    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(30), || spool_file_len(rig.dir.path())
            < peak / 2)
        .await,
        "the drained spool did not give disk back: {} bytes of a {peak}-byte peak",
        spool_file_len(rig.dir.path())
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_zerobus_fills_the_spool_and_drains_when_it_returns() {
    let rig = spooled_while_zerobus_is_down(20_000).await;
    // The uplink keeps trying (token requests answered 503, creates refused) and gets nothing
    // through: a condition, not a fixed wait.
    let tries = |rig: &Rig| {
        let state = rig.zerobus().state();
        state.oauth_calls() as u64 + state.creates_refused()
    };
    let before = tries(&rig);
    assert!(
        wait_until(Duration::from_secs(90), || tries(&rig) >= before + 3).await,
        "the uplink stopped trying while Zerobus was down"
    );
    assert_eq!(rig.zerobus().state().row_count(MQTT), 0);

    rig.zerobus().faults().update(|f| f.down = false);
    let state = rig.zerobus().state().clone();
    assert!(
        state
            .wait_until(Duration::from_secs(90), |s| s.row_count(MQTT) >= 20_000)
            .await,
        "only {} rows arrived after the outage",
        state.row_count(MQTT)
    );
    let ids: HashSet<String> = state.record_ids(MQTT).into_iter().collect();
    assert_eq!(ids, expected_ids("line1", 20_000));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_keep_data_in_the_spool_and_retry_slowly() {
    let zerobus = start_emulator().await.unwrap();
    zerobus.faults().update(|f| f.oauth_status = Some(401));
    let mut rig = Rig::builder().emulator(zerobus).log_uplink().start().await;
    let acked = start_line1(&mut rig, 5_000).await;

    assert!(
        wait_until(Duration::from_secs(30), || read_acked(&acked)
            == Some(5_000))
        .await
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let state = rig.zerobus().state().clone();
    assert_eq!(state.row_count(MQTT), 0);
    // Slow retries: a hot loop would have made hundreds of token requests by now. Two tables
    // hold rows (mqtt and the status rows of the starts), each forwarder retrying after
    // 1..2 s, 2..4 s, 4..8 s: at most 4 requests each in the ~10 s this took.
    let calls = state.oauth_calls();
    assert!(
        (1..=8).contains(&calls),
        "{calls} token requests in about 10 s"
    );
    let text = std::fs::read_to_string(rig.uplink_log()).unwrap();
    let alert = text
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("refused the credentials"));
    let alert = alert.expect("an ERROR line about the refused credentials");
    assert!(
        alert.contains("test-principal") && alert.contains(rig.zerobus().oauth_url()),
        "{alert}"
    );

    rig.zerobus().faults().update(|f| f.oauth_status = None);
    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| s.row_count(MQTT) >= 5_000)
            .await,
        "delivery did not resume: {} rows",
        state.row_count(MQTT)
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_every_other_record_lands() {
    let zerobus = start_emulator().await.unwrap();
    let poison = "test-connector/line1/1234".to_owned();
    zerobus
        .faults()
        .update(|f| f.poison_record_id = Some(poison.clone()));
    let mut rig = Rig::builder().emulator(zerobus).start().await;
    start_line1(&mut rig, 5_000).await;

    let state = rig.zerobus().state().clone();
    let mut expected = expected_ids("line1", 5_000);
    expected.remove(&poison);
    let ids = wait_for_ids(&state, MQTT, &expected, Duration::from_secs(90)).await;
    assert_eq!(ids, expected, "every record but the poisoned one");
    assert!(
        state
            .wait_until(Duration::from_secs(30), |s| !dead_lettered(s).is_empty())
            .await,
        "no status row about the dead letter"
    );
    let row = dead_lettered(&state).into_iter().next().unwrap();
    assert_eq!(row["event"], "dead_lettered");
    assert_eq!(row["count"], 1);
    assert_eq!(row["source_name"], "_uplink");
    assert!(row["detail"].as_str().unwrap().contains(&poison), "{row}");
    rig.kill_all().await;

    let dead = rig.uplink.open_spool().unwrap().dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let row = <iot_connector_proto::table::bronze::MqttEvent as prost::Message>::decode(
        dead[0].row.as_deref().unwrap(),
    )
    .unwrap();
    assert_eq!(row.record_id(), poison);
    assert!(
        dead[0].reason.contains(&poison),
        "the server's reason: {}",
        dead[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_damaged_on_disk_is_dead_lettered_and_its_table_keeps_flowing() {
    let mut rig = spooled_while_zerobus_is_down(3_000).await;
    rig.kill_all().await;

    // One bad block under one stored row, in the middle of the table.
    let damaged = {
        let rows = redb::TableDefinition::<u64, &[u8]>::new("rows/mqtt");
        let db = redb::Database::create(rig.dir.path().join("spool/spool.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let position = {
            let mut table = txn.open_table(rows).unwrap();
            let (position, mut stored) = {
                let (k, v) = redb::ReadableTable::iter(&table)
                    .unwrap()
                    .nth(1500)
                    .unwrap()
                    .unwrap();
                (k.value(), v.value().to_vec())
            };
            stored[7] ^= 0xff;
            table.insert(position, stored.as_slice()).unwrap();
            position
        };
        txn.commit().unwrap();
        position
    };

    rig.zerobus().faults().update(|f| f.down = false);
    rig.uplink.kill_and_restart().await.unwrap();
    let state = rig.zerobus().state().clone();
    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| s.row_count(MQTT) >= 2_999
                && !dead_lettered(s).is_empty())
            .await,
        "{} rows and {} dead-letter rows arrived",
        state.row_count(MQTT),
        dead_lettered(&state).len()
    );
    let ids: HashSet<String> = state.record_ids(MQTT).into_iter().collect();
    let expected = expected_ids("line1", 3_000);
    assert!(ids.is_subset(&expected));
    assert_eq!(ids.len(), 2_999, "every row but the damaged one");
    let row = dead_lettered(&state).into_iter().next().unwrap();
    assert_eq!(row["event"], "dead_lettered");
    assert_eq!(row["count"], 1);
    assert!(
        row["detail"].as_str().unwrap().contains("does not decrypt"),
        "{row}"
    );
    rig.kill_all().await;

    let dead = rig.uplink.open_spool().unwrap().dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].position, dead[0].row.as_ref()), (damaged, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_uplink_at_random_moments_loses_no_acknowledged_record() {
    const COUNT: u64 = 200_000;
    const KILLS: u64 = 20;
    let mut rig = Rig::start().await;
    let acked = start_line1(&mut rig, COUNT).await;

    let mut acked_before_kill = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rand::random_range(20..300))).await;
        acked_before_kill.push(read_acked(&acked).unwrap_or(0));
        // A restart that fails to reopen the spool fails here.
        rig.uplink.kill_and_restart().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(120), || read_acked(&acked)
            == Some(COUNT))
        .await,
        "the worker stalled at {:?}",
        read_acked(&acked)
    );
    let state = rig.zerobus().state().clone();
    let expected = expected_ids("line1", COUNT);
    let ids = wait_for_ids(&state, MQTT, &expected, Duration::from_secs(120)).await;
    assert_eq!(ids, expected, "every acknowledged record arrived");
    // Every kill may replay what was in flight to Zerobus (16 batches of at most 2000 rows) and
    // nothing else: the worker's resent window is deduplicated by the uplink.
    let duplicates = state.row_count(MQTT) as u64 - COUNT;
    println!(
        "kills={KILLS} duplicates={duplicates} acked_at_kill={acked_before_kill:?} streams={}",
        state.streams_opened()
    );
    assert!(
        duplicates <= (KILLS + 1) * 16 * 2000,
        "{duplicates} duplicates"
    );
    rig.stop().await;
}

/// Runs a worker of `count` records into a spool of `max_bytes` under `policy`, with Zerobus
/// unreachable, and stops it; returns the rig, whose spool can then be opened, and the last
/// acknowledged sequence number.
async fn fill_spool(
    policy: iot_connector_proto::SpoolPolicy,
    max_bytes: u64,
    count: u64,
    settle: Duration,
) -> (Rig, Option<u64>) {
    let mut rig = Rig::builder()
        .offline()
        .uplink_settings(move |settings| {
            settings.full_policy = policy;
            settings.max_bytes = max_bytes;
        })
        .start()
        .await;
    let acked = start_line1(&mut rig, count).await;
    wait_until(settle, || read_acked(&acked) == Some(count)).await;
    let last_acked = read_acked(&acked);
    rig.kill_all().await;
    (rig, last_acked)
}

/// The data rows and the policy drops the status rows report.
fn rows_and_reported_drops(spool: &iot_connector_uplink::spool::Spool) -> (u64, u64) {
    use iot_connector_proto::table::bronze::ConnectorStatus;
    let data = spool
        .read(Table::Mqtt, None, usize::MAX, usize::MAX)
        .unwrap()
        .len() as u64;
    let dropped = spool
        .read(Table::Status, None, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| <ConnectorStatus as prost::Message>::decode(r.row.as_slice()).unwrap())
        .filter(|s| s.event() == "dropped")
        .map(|s| s.count() as u64)
        .sum();
    (data, dropped)
}

/// Fills a 200 kB spool with 5,000 records under a dropping policy, checks that the source was
/// never stalled and that every record is either kept or counted as dropped, and returns
/// the kept records with the spool bytes they take.
async fn kept_under(policy: iot_connector_proto::SpoolPolicy) -> (Vec<i64>, usize) {
    let (rig, acked) = fill_spool(policy, 200_000, 5_000, Duration::from_secs(30)).await;
    let spool = rig.uplink.open_spool().unwrap();
    assert_eq!(acked, Some(5_000), "{policy:?} never stalls the source");
    let (data, dropped) = rows_and_reported_drops(&spool);
    assert!(data < 5_000 && data > 0);
    assert!(dropped > 0, "the first drop is reported at once");
    assert_eq!(
        data + dropped + spool.unreported_drops().unwrap(),
        5_000,
        "every record is stored, reported dropped, or counted for the next report"
    );
    let rows = spool
        .read(Table::Mqtt, None, usize::MAX, usize::MAX)
        .unwrap();
    let sealed_bytes = rows.iter().map(|r| r.row.len() + 16).sum();
    let seqs = rows
        .iter()
        .map(|r| {
            <iot_connector_proto::table::bronze::MqttEvent as prost::Message>::decode(
                r.row.as_slice(),
            )
            .unwrap()
            .seq()
        })
        .collect();
    (seqs, sealed_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_drop_newest_keeps_the_oldest_and_counts_every_drop() {
    let (seqs, _) = kept_under(iot_connector_proto::SpoolPolicy::DropNewest).await;
    assert_eq!(
        seqs.first(),
        Some(&1),
        "the oldest records are the ones kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_drop_oldest_keeps_the_newest_and_counts_every_drop() {
    let (seqs, sealed_bytes) = kept_under(iot_connector_proto::SpoolPolicy::DropOldest).await;
    assert!(sealed_bytes <= 200_000, "{sealed_bytes} bytes of data kept");
    assert_eq!(
        seqs.last(),
        Some(&5_000),
        "the newest records are the ones kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_block_stops_acknowledging_and_drops_nothing() {
    let (rig, acked) = fill_spool(
        iot_connector_proto::SpoolPolicy::Block,
        200_000,
        5_000,
        Duration::from_secs(5),
    )
    .await;
    let spool = rig.uplink.open_spool().unwrap();
    let acked = acked.unwrap_or(0);
    assert!(
        acked < 5_000,
        "block must stall the source, yet {acked} were acknowledged"
    );
    let (data, dropped) = rows_and_reported_drops(&spool);
    assert_eq!(dropped, 0);
    assert!(
        data >= acked,
        "every acknowledged record is held: {data} < {acked}"
    );
    assert!(spool.stats().unwrap().live_bytes <= 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_rotation_is_normal_and_loses_nothing() {
    let zerobus = start_emulator().await.unwrap();
    zerobus.faults().update(|f| {
        f.rotate_stream = Some(iot_connector_sim_zerobus::RotateStream {
            after_requests: 5,
            close_after: Duration::from_millis(300),
        });
    });
    let mut rig = Rig::builder().emulator(zerobus).log_uplink().start().await;
    start_line1(&mut rig, 30_000).await;

    let state = rig.zerobus().state().clone();
    let expected = expected_ids("line1", 30_000);
    let ids = wait_for_ids(&state, MQTT, &expected, Duration::from_secs(60)).await;
    assert_eq!(ids, expected);
    assert!(state.streams_opened() >= 2, "the server rotated the stream");
    let text = std::fs::read_to_string(rig.uplink_log()).unwrap();
    // The SDK may log the server's graceful close its own way; the uplink itself must neither
    // warn nor replay.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("iot_connector_uplink")
                && (l.contains("ERROR") || l.contains("WARN"))),
        "rotation must not look like a failure:\n{text}"
    );
    rig.stop().await;
}

/// A minimal HTTP CONNECT proxy on loopback that counts the tunnels it opened.
async fn connect_proxy() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&tunnels);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counted = std::sync::Arc::clone(&counted);
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let mut request = String::new();
                client.read_line(&mut request).await.ok()?;
                let target = request
                    .strip_prefix("CONNECT ")?
                    .split_whitespace()
                    .next()?
                    .to_owned();
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.ok()?;
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let mut upstream = tokio::net::TcpStream::connect(target).await.ok()?;
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                client
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .ok()?;
                let mut client = client.into_inner();
                tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .ok()
            });
        }
    });
    (url, tunnels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_proxy_carries_both_the_token_request_and_the_stream() {
    let zerobus = start_emulator().await.unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let mut rig = Rig::builder()
        .emulator(zerobus)
        .uplink_settings(|settings| {
            if let Some(zerobus) = settings.zerobus.as_mut() {
                zerobus.proxy = Some(proxy);
            }
        })
        .start()
        .await;
    start_line1(&mut rig, 2_000).await;

    let expected = expected_ids("line1", 2_000);
    let state = rig.zerobus().state();
    let ids = wait_for_ids(state, MQTT, &expected, Duration::from_secs(60)).await;
    assert_eq!(ids, expected);
    // One tunnel for the OAuth token, at least one for the gRPC stream.
    let opened = tunnels.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened >= 2, "{opened} tunnels through the proxy");
    rig.stop().await;
}

/// A spool file cut short on disk (a failing disk, a full filesystem under another tool, a bad
/// restore) does not crash-loop the uplink: the file is moved aside, a fresh spool starts, and
/// a status row says what was lost and where the file is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_spool_file_is_moved_aside_and_a_fresh_spool_starts() {
    let mut rig = spooled_while_zerobus_is_down(3_000).await;
    // The row count next to the spool is written with every heartbeat.
    let count_file = rig.dir.path().join("spool/spool.rows");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &count_file
        )
        .is_ok_and(|t| t.trim().parse::<u64>().is_ok_and(|n| n >= 3_000)))
        .await
    );
    rig.kill_all().await;
    rig.uplink.process.kill().await;
    let spool = rig.dir.path().join("spool/spool.redb");
    let len = std::fs::metadata(&spool).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&spool)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    rig.zerobus().faults().update(|f| f.down = false);
    rig.uplink.kill_and_restart().await.unwrap();
    let row = rig
        .wait_event("_uplink", "dropped", "moved aside", Duration::from_secs(60))
        .await;
    let detail = row["detail"].as_str().unwrap();
    assert!(
        detail.contains("did not open (DB corrupted") && detail.contains("rows when last counted"),
        "{detail}"
    );
    let rows: u64 = detail
        .split(" rows when last counted")
        .next()
        .and_then(|head| head.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(rows >= 3_000, "{detail}");
    let aside: Vec<_> = std::fs::read_dir(rig.dir.path().join("spool"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("spool.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    // The fresh spool takes and forwards new records.
    let acked = rig.dir.path().join("line2.acked");
    let config = format!(
        "count = 500\ntable = \"mqtt\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    rig.test_worker("line2", Table::Mqtt, &config).await;
    let expected = expected_ids("line2", 500);
    let ids = wait_for_ids(
        rig.zerobus().state(),
        MQTT,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    assert!(expected.is_subset(&ids), "the fresh spool forwards");
    rig.stop().await;
}

/// A worker that connects before the supervisor's grant for it has reached the uplink (as after
/// an uplink restart) is held until the grant arrives, then accepted: not refused, and no error
/// logged for what is an ordinary race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_faster_than_its_grant_is_accepted_once_the_grant_arrives() {
    let mut rig = Rig::builder().offline().log_uplink().start().await;
    let acked = rig.dir.path().join("acked");
    let config = format!(
        "count = 100\ntable = \"mqtt\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    let (grant, settings) = rig.uplink.issue("early", Table::Mqtt, &config);
    let worker = tokio::spawn(iot_connector_tests::start_worker(
        iot_connector_tests::TEST_WORKER,
        settings,
    ));
    // The worker is connecting (or has bound) while the uplink knows nothing of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.uplink.send_grant(grant).await.unwrap();
    let worker = worker.await.unwrap().unwrap();
    rig.workers.push(worker);
    assert!(
        wait_until(Duration::from_secs(30), || read_acked(&acked) == Some(100)).await,
        "acked {:?} of 100",
        read_acked(&acked)
    );
    let log = std::fs::read_to_string(rig.uplink_log()).unwrap();
    assert!(
        !log.contains("Refused a data connection"),
        "the early worker was refused:\n{log}"
    );
    rig.stop().await;
}
