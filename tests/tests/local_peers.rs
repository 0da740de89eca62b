//! The uplink's data socket and the supervisor's control socket against local processes that
//! misbehave: huge frames before the handshake, silent connections, floods of connections,
//! exhausted descriptors. The connector and every well-behaved worker carry on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a failed step should fail loudly

use std::{
    io::{ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use iot_connector_ipc::{HANDSHAKE_TIMEOUT, MAX_FRAME_BYTES};
use iot_connector_proto::Table;
use iot_connector_tests::{Rig, connector::Connector, read_acked, wait_until};

fn connect(rig: &Rig) -> UnixStream {
    UnixStream::connect(&rig.uplink.settings.data_socket).unwrap()
}

/// Whether the uplink closes `stream` within `within` (a read sees the end or a reset).
fn closed_within(mut stream: &UnixStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            // The uplink's Hello: keep reading until it hangs up.
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The test worker delivers `count` records through the uplink.
async fn a_worker_still_delivers(rig: &mut Rig, source: &str, count: u64) {
    let acked = rig.dir.path().join(format!("{source}.acked"));
    let config = format!(
        "count = {count}\ntable = \"mqtt\"\nacked_file = {:?}\n",
        acked.display().to_string()
    );
    rig.test_worker(source, Table::Mqtt, &config).await;
    assert!(
        wait_until(Duration::from_secs(60), || read_acked(&acked)
            == Some(count))
        .await,
        "{source}: acked {:?} of {count}",
        read_acked(&acked)
    );
}

fn uplink_alive(rig: &mut Rig) -> bool {
    rig.uplink.process.child.try_wait().unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_a_large_frame_before_its_handshake_is_dropped_at_once() {
    let mut rig = Rig::builder().offline().start().await;
    let mut peers: Vec<UnixStream> = (0..20).map(|_| connect(&rig)).collect();
    for peer in &mut peers {
        let announce = u32::try_from(MAX_FRAME_BYTES).unwrap().to_be_bytes();
        peer.write_all(&announce).unwrap();
    }
    for (i, peer) in peers.iter().enumerate() {
        assert!(
            closed_within(peer, Duration::from_secs(2)),
            "peer {i} announcing {MAX_FRAME_BYTES} bytes was kept waiting"
        );
    }
    assert!(uplink_alive(&mut rig));
    a_worker_still_delivers(&mut rig, "line1", 1_000).await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let mut rig = Rig::builder().offline().start().await;
    let silent = connect(&rig);
    let opened = Instant::now();
    assert!(
        closed_within(&silent, HANDSHAKE_TIMEOUT + Duration::from_secs(5)),
        "a connection that never says Hello was kept for {:?}",
        opened.elapsed()
    );
    assert!(opened.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    assert!(uplink_alive(&mut rig));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_handshake_cap_are_closed_and_a_worker_gets_through_later() {
    let mut rig = Rig::builder().offline().start().await;
    let idle: Vec<UnixStream> = (0..100).map(|_| connect(&rig)).collect();
    let connected = Instant::now();
    // The uplink accepts them as fast as it can and closes those beyond its cap of 64; the
    // others stay open until the handshake timeout, so look until then (less a margin).
    let mut closed = vec![false; idle.len()];
    while closed.iter().filter(|c| **c).count() < 36
        && connected.elapsed() < HANDSHAKE_TIMEOUT - Duration::from_secs(1)
    {
        for (peer, closed) in idle.iter().zip(&mut closed) {
            *closed = *closed || closed_within(peer, Duration::from_millis(1));
        }
    }
    let closed = closed.iter().filter(|c| **c).count();
    assert_eq!(
        closed, 36,
        "{closed} of 100 idle connections were closed before the handshake timeout; the cap is 64"
    );
    // The worker's first attempts find the cap full; it retries until the idle ones time out.
    a_worker_still_delivers(&mut rig, "line1", 1_000).await;
    drop(idle);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_descriptors_pause_the_uplink_which_serves_again_once_they_are_free() {
    let mut rig = Rig::builder().offline().log_uplink().start().await;
    let pid = rig.uplink.process.pid();
    let limited = std::process::Command::new("prlimit")
        .args(["--nofile=48:48", "--pid", &pid.to_string()])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    let peers: Vec<UnixStream> = (0..80).map(|_| connect(&rig)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        uplink_alive(&mut rig),
        "the uplink ended when accept failed with EMFILE"
    );
    let log = std::fs::read_to_string(rig.uplink_log()).unwrap();
    assert!(log.contains("Cannot accept connections"), "{log}");
    drop(peers);
    a_worker_still_delivers(&mut rig, "line1", 1_000).await;
    let log = std::fs::read_to_string(rig.uplink_log()).unwrap();
    assert!(log.contains("Accepting connections again"), "{log}");
    rig.stop().await;
}

/// CPU seconds (user + system) `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap();
    ticks as f64 / hz as f64
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_drops_a_large_frame_before_the_handshake_and_still_answers() {
    let connector = Connector::start("").await;
    let socket = connector.dir.path().join("run/control.sock");
    let peers: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut peer = UnixStream::connect(&socket).unwrap();
            peer.write_all(&u32::try_from(MAX_FRAME_BYTES).unwrap().to_be_bytes())
                .unwrap();
            peer
        })
        .collect();
    for (i, peer) in peers.iter().enumerate() {
        assert!(
            closed_within(peer, Duration::from_secs(2)),
            "control peer {i} announcing {MAX_FRAME_BYTES} bytes was kept waiting"
        );
    }
    let (code, out) = connector.command(&["status"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_descriptors_do_not_make_the_supervisor_spin_and_it_recovers() {
    let connector = Connector::start("").await;
    let pid = i32::try_from(connector.process.id().unwrap()).unwrap();
    let limit = open_descriptors(pid) + 4;
    let limited = std::process::Command::new("prlimit")
        .args([
            &format!("--nofile={limit}:{limit}"),
            "--pid",
            &pid.to_string(),
        ])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    let socket = connector.dir.path().join("run/control.sock");
    let peers: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_seconds(pid) - before;
    // A loop retrying EMFILE at once burns a whole core: about 3 s here.
    assert!(used < 0.5, "the supervisor used {used:.2} s of CPU in 3 s");
    drop(peers);
    assert!(
        connector
            .wait_for(Duration::from_secs(30), |c| c.get("/health").0 == 200)
            .await,
        "/health never answered again"
    );
    let (code, out) = connector.command(&["status"]);
    assert_eq!(code, 0, "{out}");
}

/// A local user who can put a socket of their own where the uplink's was (a runtime directory
/// they could write) receives nothing: the worker checks who is behind the socket before its
/// first byte, and `status` says why it does not deliver. Needs root to run the impostor as
/// another user; without root there is no other user to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sends_nothing_to_a_data_socket_of_another_user() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running a peer as another user needs root");
        return;
    }
    let c = Connector::start(&iot_connector_tests::connector::modbus_source("plc1", 1502)).await;
    let lair = tempfile::tempdir().unwrap();
    std::fs::set_permissions(lair.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let impostor_socket = lair.path().join("data.sock");
    let heard = lair.path().join("heard");
    let mut impostor = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "socat",
            "-u",
        ])
        .arg(format!("UNIX-LISTEN:{},fork", impostor_socket.display()))
        .arg("STDOUT")
        .stdout(std::fs::File::create(&heard).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv and socat run");
    assert!(
        wait_until(Duration::from_secs(10), || impostor_socket.exists()).await,
        "the impostor never listened"
    );
    // Writable by anyone, so that the worker (uid 0 without capabilities, so without
    // CAP_DAC_OVERRIDE) can connect and the credential check is what refuses it.
    std::fs::set_permissions(&impostor_socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::rename(&impostor_socket, c.dir.path().join("run/data.sock")).unwrap();
    let (code, out) = c.command(&["restart", "plc1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c.process("plc1")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("runs as uid 65534")))
            .await,
        "status never said why: {}",
        c.process("plc1")
    );
    assert_eq!(
        std::fs::metadata(&heard).unwrap().len(),
        0,
        "the impostor heard from the worker"
    );
    impostor.kill().await.unwrap();
}

/// A client that keeps 64 idle connections to the HTTP listener open, opening a new one for
/// each the listener closes, does not keep health probes out: every probe is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hoarding_idle_http_connections_does_not_keep_health_probes_out() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let c = Connector::start(&iot_connector_tests::connector::modbus_source("plc1", 1502)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let hoarder = std::thread::spawn({
        let (address, stop, opened) = (c.http.clone(), Arc::clone(&stop), Arc::clone(&opened));
        move || {
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.retain(|s| {
                    let mut byte = [0u8; 1];
                    match s.peek(&mut byte) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == ErrorKind::WouldBlock,
                    }
                });
                while held.len() < 64 {
                    let Ok(stream) = std::net::TcpStream::connect(&address) else {
                        break;
                    };
                    stream.set_nonblocking(true).unwrap();
                    held.push(stream);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || opened.load(Ordering::Relaxed)
            >= 64)
        .await
    );
    let probes = 50;
    let answered =
        tokio::task::block_in_place(|| (0..probes).filter(|_| c.get("/health").0 == 200).count());
    stop.store(true, Ordering::Relaxed);
    hoarder.join().unwrap();
    assert_eq!(
        answered, probes,
        "health probes answered while 64 idle connections were held"
    );
}
