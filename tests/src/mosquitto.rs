//! A real mosquitto per test (its own config, port and persistence directory) and a test
//! publisher that counts what the broker took.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step should fail loudly

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::process::{Child, Command};

use crate::{free_port, wait_until};

/// A mosquitto of this test: config and persistence under `dir`, killed when dropped.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    /// Its listener's port.
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    /// A broker with one anonymous listener on a free port.
    pub async fn start(dir: &Path) -> Self {
        let port = free_port();
        Self::start_with(
            dir,
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .await
    }

    /// A broker with one listener on a free port that admits only `user` with `password`.
    pub async fn start_with_password(dir: &Path, user: &str, password: &str) -> Self {
        std::fs::create_dir_all(dir.join("mosquitto")).unwrap();
        let passwords = dir.join("mosquitto/passwd");
        let made = std::process::Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwords)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd comes with mosquitto");
        assert!(made.success());
        let port = free_port();
        Self::start_with(
            dir,
            port,
            &format!(
                "allow_anonymous false\npassword_file {}\nlistener {port} 127.0.0.1\n",
                passwords.display()
            ),
        )
        .await
    }

    /// A broker with the given listener section; `port` is the one to wait for.
    pub async fn start_with(dir: &Path, port: u16, listeners: &str) -> Self {
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // mosquitto started as root switches to the `mosquitto` user unless told otherwise.
        let user = if nix::unistd::geteuid().is_root() {
            "user root\n"
        } else {
            ""
        };
        let config = format!(
            "persistence true\n\
             persistence_location {data}/\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             max_queued_messages 200000\n\
             max_inflight_messages 1000\n\
             {user}{listeners}",
            data = dir.join("data").display(),
            log = dir.join("mosquitto.log").display(),
        );
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        let mut broker = Self {
            dir,
            port,
            child: None,
        };
        broker.spawn().await;
        broker
    }

    pub async fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto is installed (.ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        // A loopback connect is answered at once: blocking for it is fine.
        let ready = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(ready, "mosquitto did not listen on {port}: {}", self.log());
    }

    /// SIGTERM: mosquitto saves its sessions and queued messages, then exits.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            child.wait().await.unwrap();
        }
    }

    /// SIGKILL: whatever was not saved is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// A rumqttc publisher that counts completed publishes (QoS 0 written, QoS 1 PUBACKed, QoS 2
/// PUBCOMPed).
#[derive(Debug)]
pub struct Publisher {
    /// The client, to publish from other tasks.
    pub client: AsyncClient,
    /// Publishes completed since the publisher connected.
    pub done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 10_000);
        let done = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let counter = Arc::clone(&done);
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))
                    | Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("the test publisher connects")
            .unwrap();
        Self { client, done, task }
    }

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
    }

    /// Waits until `count` publishes completed since the publisher connected.
    pub async fn wait_done(&self, count: u64, timeout: Duration) {
        let done = Arc::clone(&self.done);
        assert!(
            wait_until(timeout, || done.load(Ordering::Relaxed) >= count).await,
            "the broker took only {} of {count} publishes",
            done.load(Ordering::Relaxed)
        );
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
