//! The chaos runs: a real peer feeds one source of `iot-connector run` (the real supervisor,
//! uplink and worker, the Zerobus emulator behind the real SDK) while kill -9 hits the worker,
//! the uplink and the supervisor at random moments (the supervisor is started again at once, as
//! systemd's `Restart=` would). At the end every value the peer gave is accounted for: it reached
//! the emulator, or a kill may take it (see [`Tie`]); anything else is lost. Used by
//! `cargo bench --bench chaos` (1,000 kills of each kind) and, short, by the test suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test harness: a failed step should fail loudly; JSON indexing gives null

mod modbus;
mod mqtt;
mod opcua;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

pub use modbus::Modbus;
pub use mqtt::Mqtt;
use nix::sys::signal::Signal;
pub use opcua::Opcua;
use rand::{Rng, seq::SliceRandom};
use tokio::sync::RwLock;

use crate::{
    connector::{Connector, config_text, kill, source_health, with_binaries, zerobus_section},
    free_port,
};

const SOURCE: &str = "chaos";

/// A peer a chaos run reads from: it gives values to the worker and remembers what it gave.
#[allow(async_fn_in_trait)] // used only through `run`'s generic parameter
pub trait Peer {
    /// The `protocol` of its `[[sources]]` entry.
    const PROTOCOL: &'static str;
    /// The worker binary that reads it.
    const WORKER: &'static str;
    /// Values given to one worker process that a kill of it may take at most: those it had not
    /// pushed yet, its window of records not yet durable, and what the peer queued for it.
    const WINDOW: usize;
    /// Its rows' table.
    const TABLE: iot_connector_proto::Table;

    /// The rest of its `[[sources]]` entry (after `name` and `protocol`).
    fn entry(&self) -> String;

    /// The source is connected: start giving values, about `rate` a second.
    async fn start(&mut self, rate: u64, zerobus: &iot_connector_sim_zerobus::SimState);

    /// Taken for writing around each kill: a peer whose values are tied to the moment they are
    /// made ([`Tie::Sampled`]) makes none while a kill is under way.
    fn quiet(&self) -> Option<Arc<RwLock<()>>> {
        None
    }

    /// Stops giving values and returns what it gave.
    async fn stop(&mut self) -> Given;

    /// The value a row's `value_str` carries, if it is one the peer gave.
    fn value(text: &str) -> Option<u64>;
}

/// What a peer gave, in the order it gave it.
#[derive(Debug, Default, Clone)]
pub struct Given {
    /// Each value with what ties it to a worker process.
    pub values: Vec<(u64, Tie)>,
}

/// How a given value relates to the worker processes, which decides what a kill may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tie {
    /// The peer holds it until the worker acknowledges it as durable (an MQTT QoS 1 message): a
    /// kill never takes it.
    Peer,
    /// Given to the worker process that opened its connection at this moment (a Modbus
    /// answer): a kill may take the last values given to that process, at most its window.
    Process(Instant),
    /// Made at this moment, for whichever worker process is subscribed (an OPC-UA data change):
    /// a kill may take the last values of that process, and the values made while no worker
    /// was subscribed are never sent (the `gap` the worker reports).
    Sampled(Instant),
}

/// Where the given values went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Given and missing although no kill may take them.
    pub lost: u64,
    /// Missing and inside what a kill may take (the last values of a killed process).
    pub window_lost: u64,
    /// Made while no worker was subscribed: never sent.
    pub gap: u64,
    /// Rows beyond one per given value.
    pub duplicates: u64,
}

/// Accounts for `given` against the rows that arrived (`delivered`: value → rows), with the
/// moments (`kills`, in order) each worker process ended, its kill complete.
pub fn account(
    given: &Given,
    window: usize,
    delivered: &HashMap<u64, u64>,
    kills: &[Instant],
) -> Account {
    let mut account = Account::default();
    let arrived = |v: &u64| delivered.contains_key(v);
    // The values tied to each worker process: how many kills came before the tie.
    let mut lives: BTreeMap<usize, (bool, Vec<u64>)> = BTreeMap::new();
    for &(value, tie) in &given.values {
        let (at, sampled) = match tie {
            Tie::Peer => {
                account.lost += u64::from(!arrived(&value));
                continue;
            }
            Tie::Process(at) => (at, false),
            Tie::Sampled(at) => (at, true),
        };
        let life = kills.partition_point(|k| *k < at);
        lives
            .entry(life)
            .or_insert((sampled, Vec::new()))
            .1
            .push(value);
    }
    for (life, (sampled, values)) in lives {
        let killed = life < kills.len();
        let (first, last) = (
            values.iter().position(arrived),
            values.iter().rposition(arrived),
        );
        let (head, middle, tail) = match (first, last) {
            (Some(f), Some(l)) => (
                f,
                values[f..=l].iter().filter(|v| !arrived(v)).count(),
                values.len() - l - 1,
            ),
            _ if sampled => (values.len(), 0, 0),
            _ => (0, 0, values.len()),
        };
        let head = head as u64;
        if sampled {
            account.gap += head;
        } else {
            account.lost += head;
        }
        account.lost += middle as u64;
        let taken = if killed { tail.min(window) } else { 0 };
        account.window_lost += taken as u64;
        account.lost += (tail - taken) as u64;
    }
    account.duplicates = given
        .values
        .iter()
        .filter_map(|(v, _)| delivered.get(v))
        .map(|rows| rows - 1)
        .sum();
    account
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// kill -9 of the worker.
    pub kills_worker: usize,
    /// kill -9 of the uplink.
    pub kills_uplink: usize,
    /// kill -9 of the supervisor (its children die with it), then a new `iot-connector run`.
    pub kills_supervisor: usize,
    /// Values the peer gave (messages the broker acknowledged to the publisher, answers of the
    /// Modbus device, data changes of the OPC-UA server).
    pub published: u64,
    /// Where they went.
    pub account: Account,
    /// The longest time from a kill until the source was connected again.
    pub max_recovery_ms: u128,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.account;
        write!(
            f,
            "kills_worker={} kills_uplink={} kills_supervisor={} published={} lost={} duplicates={} max_recovery_ms={} window_lost={} gap={}",
            self.kills_worker,
            self.kills_uplink,
            self.kills_supervisor,
            self.published,
            a.lost,
            a.duplicates,
            self.max_recovery_ms,
            a.window_lost,
            a.gap,
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Worker,
    Uplink,
    Supervisor,
}

fn connected(c: &Connector) -> bool {
    let (status, health) = c.health();
    status == 200 && source_health(&health, SOURCE)["state"] == "connected"
}

/// Whether `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: i32) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(crate::proc_stat_fields)
        .is_none_or(|fields| fields.first().is_some_and(|s| s == "Z" || s == "X"))
}

/// Runs `kills` kill -9s of each kind while `peer` gives about `rate` values a second.
pub async fn run<P: Peer>(mut peer: P, kills: usize, rate: u64) -> Report {
    let (zerobus, _ca, zerobus_block) = zerobus_section().await;
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        (P::WORKER, P::WORKER),
    ]);
    let http = format!("127.0.0.1:{}", free_port());
    let source = format!(
        "{zerobus_block}[[sources]]\nname = \"{SOURCE}\"\nprotocol = \"{}\"\n{}",
        P::PROTOCOL,
        peer.entry()
    );
    let config = config_text(dir.path(), &http, &source);
    let mut c = Connector::launch(dir, http, &config);
    assert!(
        c.wait_for(Duration::from_secs(60), connected).await,
        "the source never connected: {}",
        c.health().1
    );
    let state = zerobus.state().clone();
    peer.start(rate, &state).await;

    let mut order: Vec<Kill> = (0..kills)
        .flat_map(|_| [Kill::Worker, Kill::Uplink, Kill::Supervisor])
        .collect();
    order.shuffle(&mut rand::rng());
    let mut report = Report::default();
    // When each worker process ended, its kill complete.
    let mut ends: Vec<Instant> = Vec::new();
    let (total, started) = (order.len(), Instant::now());
    for (done, kind) in order.into_iter().enumerate() {
        if done > 0 && done % 100 == 0 {
            // A long run says how far it got, for whoever watches it.
            eprintln!(
                "chaos: {done} of {total} kills in {} s",
                started.elapsed().as_secs()
            );
        }
        let pause = rand::rng().random_range(100..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let mut quiet = match peer.quiet() {
            Some(lock) => Some(lock.write_owned().await),
            None => None,
        };
        let killed = Instant::now();
        match kind {
            Kill::Worker => {
                if let Some(pid) = c.pid(SOURCE) {
                    kill(pid, Signal::SIGKILL);
                    assert!(
                        crate::wait_until(Duration::from_secs(10), || ended(pid)).await,
                        "the worker outlived kill -9"
                    );
                    ends.push(Instant::now());
                    report.kills_worker += 1;
                }
            }
            Kill::Uplink => {
                if let Some(pid) = c.pid("uplink") {
                    kill(pid, Signal::SIGKILL);
                    report.kills_uplink += 1;
                }
            }
            Kill::Supervisor => {
                let _ = c.process.start_kill();
                let _ = c.process.wait().await;
                assert!(
                    c.wait_for(Duration::from_secs(30), |c| c.children().is_empty())
                        .await,
                    "the children outlived the supervisor"
                );
                ends.push(Instant::now());
                drop(quiet.take());
                c.rerun().await;
                report.kills_supervisor += 1;
            }
        }
        drop(quiet);
        // Give the kill time to be seen before asking whether all is well again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            c.wait_for(Duration::from_secs(60), connected).await,
            "not connected again after a {kind:?} kill: {}",
            c.health().1
        );
        report.max_recovery_ms = report.max_recovery_ms.max(killed.elapsed().as_millis());
    }
    let given = peer.stop().await;
    report.published = given.values.len() as u64;

    let table = crate::table_name(P::TABLE);
    let delivered = |s: &iot_connector_sim_zerobus::SimState| {
        let mut rows: HashMap<u64, u64> = HashMap::new();
        for value in s
            .strings(table, "value_str")
            .iter()
            .filter_map(|t| P::value(t))
        {
            *rows.entry(value).or_default() += 1;
        }
        rows
    };
    state
        .wait_until(Duration::from_secs(180), |s| {
            account(&given, P::WINDOW, &delivered(s), &ends).lost == 0
        })
        .await;
    report.account = account(&given, P::WINDOW, &delivered(&state), &ends);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(values: &[u64]) -> HashMap<u64, u64> {
        let mut rows = HashMap::new();
        for v in values {
            *rows.entry(*v).or_default() += 1;
        }
        rows
    }

    #[test]
    fn only_the_last_values_of_a_killed_process_may_be_missing() {
        let t0 = Instant::now();
        let (kill, after) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let given = Given {
            values: (1..=4)
                .map(|v| (v, Tie::Process(t0)))
                .chain((5..=6).map(|v| (v, Tie::Process(after))))
                .collect(),
        };
        let tail = account(&given, 2, &delivered(&[1, 2, 5, 6, 6]), &[kill]);
        assert_eq!(
            tail,
            Account {
                window_lost: 2,
                duplicates: 1,
                ..Account::default()
            }
        );
        let hole = account(&given, 2, &delivered(&[1, 3, 4, 5, 6]), &[kill]);
        assert_eq!(hole.lost, 1, "a value in the middle of a process's values");
        let too_many = account(&given, 1, &delivered(&[1, 2, 5, 6]), &[kill]);
        assert_eq!(
            (too_many.lost, too_many.window_lost),
            (1, 1),
            "beyond the window"
        );
        let last = account(&given, 2, &delivered(&[1, 2, 3, 4, 5]), &[kill]);
        assert_eq!(last.lost, 1, "the running process has no kill to blame");
        let first = account(&given, 2, &delivered(&[1, 2, 3, 4, 6]), &[kill]);
        assert_eq!(first.lost, 1, "a connection's first answer");
    }

    #[test]
    fn sampled_values_may_miss_the_start_of_a_process_and_held_ones_nothing() {
        let t0 = Instant::now();
        let kill = t0 + Duration::from_secs(1);
        let given = Given {
            values: vec![
                (1, Tie::Sampled(t0)),
                (2, Tie::Sampled(kill + Duration::from_millis(1))),
                (3, Tie::Sampled(kill + Duration::from_millis(2))),
                (4, Tie::Peer),
            ],
        };
        let gap = account(&given, 10, &delivered(&[1, 3, 4]), &[kill]);
        assert_eq!(
            gap,
            Account {
                gap: 1,
                ..Account::default()
            }
        );
        let held = account(&given, 10, &delivered(&[1, 3]), &[kill]);
        assert_eq!(held.lost, 1, "a held value is never the kill's to take");
    }
}
