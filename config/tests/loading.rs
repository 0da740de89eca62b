//! Loading valid configs: defaults, directories, every form of secret, files the config names,
//! the slices each child receives, and what a reload restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)] // test code: a failed step should fail loudly

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use iot_connector_config::{ConfigErrors, Loaded, Source, load_with_env, parse_with_env, secrets};
use iot_connector_proto::{SourceGrant, SpoolPolicy, Table};

const MINIMAL: &str = "[connector]\nid = \"c1\"\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn with_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn ok(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Loaded {
    match parse_with_env(path, text, env) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("refused:\n{errors}\n---\n{text}"),
    }
}

fn err(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigErrors {
    match parse_with_env(path, text, env) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors,
    }
}

#[test]
fn a_connector_with_only_an_id_starts_with_working_defaults() {
    let cwd = std::env::current_dir().unwrap();
    let loaded = ok(Path::new("/etc/c.toml"), MINIMAL, &no_env);
    assert_eq!(loaded.state_dir, cwd.join("state"));
    assert_eq!(loaded.runtime_dir, cwd.join("run"));
    assert_eq!(loaded.key_file(), cwd.join("state/keys/spool.key"));
    assert_eq!(loaded.http_listen().to_string(), "127.0.0.1:8081");
    assert_eq!(loaded.enabled_sources().count(), 0);
    assert_eq!(loaded.bin_dir(), None);
    let uplink = loaded.uplink_settings(Vec::new());
    assert_eq!(uplink.max_bytes, 10 << 30);
    assert_eq!(uplink.full_policy, SpoolPolicy::DropOldest);
    assert!(uplink.key_file.is_some(), "encrypted by default");
    assert_eq!(uplink.zerobus, None);
}

#[test]
fn systemd_directories_are_used_when_the_file_sets_none() {
    let env = with_env(&[
        ("STATE_DIRECTORY", "/var/lib/iot-connector"),
        ("RUNTIME_DIRECTORY", "/run/iot-connector"),
    ]);
    let loaded = ok(Path::new("/etc/c.toml"), MINIMAL, &env);
    assert_eq!(loaded.state_dir, Path::new("/var/lib/iot-connector"));
    assert_eq!(
        loaded.spool_dir(),
        Path::new("/var/lib/iot-connector/spool")
    );
    assert_eq!(
        loaded.data_socket(),
        Path::new("/run/iot-connector/data.sock")
    );
    assert_eq!(
        loaded.control_socket(),
        Path::new("/run/iot-connector/control.sock")
    );

    // The file wins over the environment; its relative paths are relative to the file.
    let text = "[connector]\nid = \"c1\"\nstate_dir = \"./state\"\nruntime_dir = \"/tmp/r\"\nbin_dir = \"bin\"\n[spool]\nkey_file = \"keys/k\"\n";
    let loaded = ok(Path::new("/etc/iot/c.toml"), text, &env);
    assert_eq!(loaded.state_dir, Path::new("/etc/iot/state"));
    assert_eq!(loaded.runtime_dir, Path::new("/tmp/r"));
    assert_eq!(loaded.bin_dir(), Some(PathBuf::from("/etc/iot/bin")));
    assert_eq!(loaded.key_file(), Path::new("/etc/iot/keys/k"));
}

#[test]
fn env_references_expand_in_any_string_and_dollars_stay() {
    let env = with_env(&[("ID", "plant-b"), ("LEVEL", "debug"), ("POLICY", "block")]);
    let text = r#"
[connector]
id = "${ID}"
log_level = "iot_connector=${LEVEL},info"
[spool]
full_policy = "${POLICY}"
[[sources]]
name = "b"
protocol = "mqtt"
endpoint = "mqtt://broker:1883"
mqtt_version = "5"
topics = [ { filter = "$share/g/$$x/#" }, { filter = "$SYS/broker/#" }, { filter = "a/$${literal}" } ]
"#;
    let loaded = ok(Path::new("/etc/c.toml"), text, &env);
    assert_eq!(loaded.config.connector.id, "plant-b");
    assert_eq!(
        loaded.config.connector.log_level,
        "iot_connector=debug,info"
    );
    assert_eq!(
        loaded.uplink_settings(Vec::new()).full_policy,
        SpoolPolicy::Block
    );
    let Some(Source::Mqtt(mqtt)) = loaded.source("b") else {
        panic!()
    };
    let filters: Vec<&str> = mqtt.topics.iter().map(|t| t.filter.as_str()).collect();
    assert_eq!(filters, ["$share/g/$$x/#", "$SYS/broker/#", "a/${literal}"]);
}

#[test]
fn secrets_come_from_files_credentials_sealed_values_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("client-secret"), "from-file\n").unwrap();
    let creds = dir.path().join("creds");
    fs::create_dir(&creds).unwrap();
    fs::write(creds.join("opcua-pw"), "from-credential\r\n").unwrap();
    let key = dir.path().join("spool.key");
    secrets::keygen(&key).unwrap();
    let sealed = secrets::seal(&key, "from-enc").unwrap();
    let env = with_env(&[
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ("CID", "from-env"),
    ]);
    let text = format!(
        r#"
[connector]
id = "c1"
[spool]
key_file = "spool.key"
[zerobus]
endpoint = "https://z.example.com"
workspace_url = "https://w.example.com"
client_id = "${{CID}}"
client_secret = "file:client-secret"
tables = {{ opcua = "a.b.c", mqtt = "a.b.d", modbus = "a.b.e", status = "a.b.f" }}
[[sources]]
name = "ua"
protocol = "opcua"
endpoint = "opc.tcp://ua:4840"
username = "u"
password = "credential:opcua-pw"
[[sources]]
name = "mq"
protocol = "mqtt"
endpoint = "mqtts://mq:8883"
username = "u"
password = "{sealed}"
[[sources]]
name = "lit"
protocol = "mqtt"
endpoint = "mqtts://mq:8883"
username = "u"
password = "plain-literal"
"#
    );
    let loaded = ok(&dir.path().join("c.toml"), &text, &env);
    let zerobus = loaded.uplink_settings(Vec::new()).zerobus.unwrap();
    assert_eq!(zerobus.client_id, "from-env");
    assert_eq!(zerobus.client_secret, "from-file");
    let password = |name: &str| match loaded.source(name).unwrap() {
        Source::Opcua(s) => s.password.clone().unwrap(),
        Source::Mqtt(s) => s.password.clone().unwrap(),
        Source::Modbus(_) => panic!(),
    };
    assert_eq!(password("ua").expose(), "from-credential");
    assert_eq!(password("mq").expose(), "from-enc");
    assert_eq!(password("lit").expose(), "plain-literal");
    assert_eq!(format!("{}", password("ua")), "***");
}

#[test]
fn a_secret_whose_variable_holds_a_prefix_is_taken_literally() {
    let env = with_env(&[("PW", "file:/etc/shadow")]);
    let text = "[connector]\nid = \"c\"\n[[sources]]\nname = \"m\"\nprotocol = \"mqtt\"\nendpoint = \"mqtts://b:8883\"\nusername = \"u\"\npassword = \"${PW}\"\n";
    let loaded = ok(Path::new("/etc/c.toml"), text, &env);
    let Some(Source::Mqtt(mqtt)) = loaded.source("m") else {
        panic!()
    };
    assert_eq!(mqtt.password.as_ref().unwrap().expose(), "file:/etc/shadow");
}

const TEST_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

#[test]
fn the_zerobus_ca_is_read_at_load_time_and_must_be_pem() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ca.pem"), TEST_PEM).unwrap();
    fs::write(dir.path().join("not.pem"), "hello").unwrap();
    let text = |ca: &str| {
        format!(
            "[connector]\nid = \"c\"\n[zerobus]\nendpoint = \"https://z.example.com\"\nworkspace_url = \"https://w.example.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\nca_file = \"{ca}\"\ntables = {{ opcua = \"a.b.c\", mqtt = \"a.b.d\", modbus = \"a.b.e\", status = \"a.b.f\" }}\n"
        )
    };
    let path = dir.path().join("c.toml");
    let loaded = ok(&path, &text("ca.pem"), &no_env);
    let zerobus = loaded.uplink_settings(Vec::new()).zerobus.unwrap();
    assert_eq!(zerobus.ca_pem.as_deref(), Some(TEST_PEM));
    let ca_file = loaded.config.zerobus.unwrap().ca_file.unwrap();
    assert_eq!(Path::new(&ca_file), dir.path().join("ca.pem"));

    let errors = err(&path, &text("missing.pem"), &no_env);
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].line, 8);
    assert!(
        errors.problems[0].message.contains("cannot read"),
        "{errors}"
    );
    let errors = err(&path, &text("not.pem"), &no_env);
    assert_eq!(errors.problems[0].line, 8);
    assert!(
        errors.problems[0].message.contains("no a PEM certificate")
            || errors.problems[0].message.contains("holds no"),
        "{errors}"
    );
}

#[test]
fn mqtt_tls_files_are_checked_and_passed_absolute() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ca.pem"), TEST_PEM).unwrap();
    fs::write(dir.path().join("client.pem"), TEST_PEM).unwrap();
    fs::write(
        dir.path().join("client.key"),
        "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = "[connector]\nid = \"c\"\n[[sources]]\nname = \"m\"\nprotocol = \"mqtt\"\nendpoint = \"mqtts://b:8883\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n";
    let loaded = ok(&dir.path().join("c.toml"), text, &no_env);
    let source = loaded.source("m").unwrap();
    let slice = Source::from_slice(&loaded.worker_settings(source, Vec::new()).source_config);
    let ca = dir.path().join("ca.pem");
    assert!(
        matches!(&slice, Ok(Source::Mqtt(m)) if m.ca_file.as_deref() == ca.to_str()),
        "{slice:?}"
    );

    // TLS files with a plain endpoint: the operator thinks TLS is on.
    let plain = text.replace("mqtts://b:8883", "mqtt://b:1883");
    let errors = err(&dir.path().join("c.toml"), &plain, &no_env);
    let lines: Vec<usize> = errors.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [7, 8, 9], "{errors}");
    assert!(
        errors
            .problems
            .iter()
            .all(|p| p.message.contains("mqtts://")),
        "{errors}"
    );
}

#[test]
fn a_worker_reads_its_slice_back_as_its_own_source() {
    let text = r#"
[connector]
id = "c"
[[sources]]
name = "plc"
protocol = "modbus"
endpoint = "rtu:///dev/ttyS0"
baud_rate = 9600
parity = "even"
registers = [ { name = "t", kind = "input", address = 3, data_type = "int32", byte_order = "DCBA", scale = 0.5 } ]
[[sources]]
name = "off"
protocol = "modbus"
enabled = false
endpoint = "tcp://plc:502"
"#;
    let loaded = ok(Path::new("/etc/c.toml"), text, &no_env);
    let names: Vec<&str> = loaded.enabled_sources().map(Source::name).collect();
    assert_eq!(names, ["plc"]);
    let source = loaded.source("plc").unwrap();
    assert_eq!(source.table(), Table::Modbus);
    let worker = loaded.worker_settings(source, vec![7; 16]);
    assert_eq!(worker.connector_id, "c");
    assert_eq!(worker.source, "plc");
    assert_eq!(worker.data_socket, loaded.data_socket().to_str().unwrap());
    let back = Source::from_slice(&worker.source_config).unwrap();
    assert_eq!(Some(&back), loaded.source("plc"));

    let grant = SourceGrant {
        source: "plc".into(),
        table: source.table(),
        token: vec![7; 16],
        start: iot_connector_proto::Start::First,
    };
    assert_eq!(loaded.uplink_settings(vec![grant.clone()]).grants, [grant]);
}

#[test]
fn a_reload_restarts_only_what_changed() {
    let before = r#"
[connector]
id = "c"
[[sources]]
name = "a"
protocol = "modbus"
endpoint = "tcp://a:502"
registers = [ { name = "t", kind = "holding", address = 0 } ]
[[sources]]
name = "b"
protocol = "modbus"
endpoint = "tcp://b:502"
registers = [ { name = "t", kind = "holding", address = 0 } ]
[[sources]]
name = "gone"
protocol = "modbus"
endpoint = "tcp://g:502"
registers = [ { name = "t", kind = "holding", address = 0 } ]
"#;
    let after = before
        .replace("tcp://b:502", "tcp://b2:502")
        .replace("name = \"gone\"", "name = \"new\"");
    let path = Path::new("/etc/c.toml");
    let old = ok(path, before, &no_env);
    let new = ok(path, &after, &no_env);
    assert!(!old.source_changed(&new, "a"));
    assert!(old.source_changed(&new, "b"));
    assert!(old.source_changed(&new, "gone"));
    assert!(old.source_changed(&new, "new"));
    assert!(!old.source_changed(&new, "never-there"));
    assert!(!old.uplink_changed(&new));

    // A new connector id changes every record_id: everything restarts.
    let renamed = ok(path, &before.replace("id = \"c\"", "id = \"d\""), &no_env);
    assert!(old.source_changed(&renamed, "a"));
    assert!(old.uplink_changed(&renamed));

    // A rotated secret is a changed slice.
    let mqtt = |password: &str| {
        format!(
            "[connector]\nid = \"c\"\n[[sources]]\nname = \"m\"\nprotocol = \"mqtt\"\nendpoint = \"mqtts://b:8883\"\nusername = \"u\"\npassword = \"{password}\"\n"
        )
    };
    let one = ok(path, &mqtt("one"), &no_env);
    let two = ok(path, &mqtt("two"), &no_env);
    assert!(one.source_changed(&two, "m"));
    assert!(!one.source_changed(&one.clone(), "m"));
}

#[test]
fn an_unencrypted_spool_has_no_key() {
    let loaded = ok(
        Path::new("/etc/c.toml"),
        "[connector]\nid = \"c\"\n[spool]\nencrypt = false\nmax_bytes = 1048576\nfull_policy = \"drop_newest\"\n",
        &no_env,
    );
    let uplink = loaded.uplink_settings(Vec::new());
    assert_eq!(uplink.key_file, None);
    assert_eq!(uplink.max_bytes, 1 << 20);
    assert_eq!(uplink.full_policy, SpoolPolicy::DropNewest);
}

#[test]
fn a_key_file_of_the_wrong_size_is_caught_before_the_uplink_starts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("k"), [0u8; 16]).unwrap();
    let errors = err(
        &dir.path().join("c.toml"),
        "[connector]\nid = \"c\"\n[spool]\nkey_file = \"k\"\n",
        &no_env,
    );
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].line, 4);
    assert!(
        errors.problems[0].message.contains("secret keygen"),
        "{errors}"
    );
}

#[test]
fn load_reports_an_unreadable_or_non_utf8_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let errors = load_with_env(&missing, &no_env).unwrap_err();
    assert_eq!(errors.problems[0].line, 0);
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );

    let latin1 = dir.path().join("latin1.toml");
    fs::write(&latin1, b"[connector]\nid = \"caf\xe9\"\n").unwrap();
    let errors = load_with_env(&latin1, &no_env).unwrap_err();
    assert_eq!(errors.problems[0].line, 2);
    assert!(errors.problems[0].message.contains("UTF-8"), "{errors}");

    let good = dir.path().join("good.toml");
    fs::write(&good, MINIMAL).unwrap();
    let loaded = load_with_env(&good, &no_env).unwrap();
    assert_eq!(loaded.path, good);
    // The default is relative to the working directory, not to the file.
    assert_eq!(
        loaded.state_dir,
        std::env::current_dir().unwrap().join("state")
    );
}

#[test]
fn the_connector_may_start_without_sources_or_zerobus() {
    let loaded = ok(Path::new("/etc/c.toml"), MINIMAL, &no_env);
    assert!(loaded.config.sources.is_empty());
    assert!(loaded.config.zerobus.is_none());
}
