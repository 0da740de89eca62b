//! Broken configs: each problem is reported at its `FILE:LINE`, with a message that names the
//! fix, and all problems of a file are reported at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)] // test code: a failed step should fail loudly

use std::collections::HashMap;
use std::path::Path;

use iot_connector_config::{ConfigErrors, parse_with_env};

const FILE: &str = "/etc/iot-connector/broken.toml";

fn env(name: &str) -> Option<String> {
    let vars: HashMap<&str, &str> = [
        ("DATABRICKS_CLIENT_ID", "client"),
        ("DATABRICKS_CLIENT_SECRET", "hunter2-secret"),
        ("PLC_HOST", "10.20.0.7"),
    ]
    .into();
    vars.get(name).map(|v| (*v).to_owned())
}

/// A valid file, line-numbered for the tests below: each test replaces whole lines.
const VALID: &str = r#"[connector]
id = "plant-a"

[zerobus]
endpoint = "https://1234.zerobus.us-west-2.cloud.databricks.com"
workspace_url = "https://dbc-1.cloud.databricks.com"
client_id = "${DATABRICKS_CLIENT_ID}"
client_secret = "${DATABRICKS_CLIENT_SECRET}"
tables = { opcua = "iot.bronze.opcua", mqtt = "iot.bronze.mqtt", modbus = "iot.bronze.modbus", status = "iot.bronze.status" }

[spool]
max_bytes = "1GiB"
full_policy = "drop_oldest"

[[sources]]
name = "press"
protocol = "opcua"
endpoint = "opc.tcp://10.20.0.5:4840"

[[sources]]
name = "broker"
protocol = "mqtt"
endpoint = "mqtt://10.20.0.9:1883"
topics = [ { filter = "plant/#", qos = 1 } ]

[[sources]]
name = "plc"
protocol = "modbus"
endpoint = "tcp://${PLC_HOST}:502"
registers = [
  { name = "temp", kind = "holding", address = 0, data_type = "float32" },
  { name = "pump", kind = "coil", address = 10, data_type = "bool" },
]
"#;

/// `VALID` with line `n` (1-based) replaced by `with` (which may hold several lines or none).
fn edit(edits: &[(usize, &str)]) -> String {
    VALID
        .lines()
        .enumerate()
        .map(|(i, line)| {
            edits
                .iter()
                .find(|(n, _)| *n == i + 1)
                .map_or(line, |(_, with)| *with)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn problems(text: &str) -> ConfigErrors {
    match parse_with_env(Path::new(FILE), text, &env) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors,
    }
}

/// Asserts exactly these problems: each at its line, its message containing every fragment.
#[track_caller]
fn assert_problems(text: &str, expected: &[(usize, &[&str])]) {
    let errors = problems(text);
    let shown = errors.to_string();
    println!("{shown}");
    assert_eq!(
        errors.problems.len(),
        expected.len(),
        "wrong number of problems:\n{shown}"
    );
    for (problem, (line, fragments)) in errors.problems.iter().zip(expected) {
        assert_eq!(problem.file, Path::new(FILE));
        assert_eq!(problem.line, *line, "wrong line:\n{shown}");
        let prefix = format!("{FILE}:{line}: ");
        assert!(shown.contains(&prefix), "no {prefix:?} in:\n{shown}");
        for fragment in *fragments {
            assert!(
                problem.message.contains(fragment),
                "{fragment:?} missing from:\n{shown}"
            );
        }
    }
    assert!(!shown.contains("hunter2"), "a secret leaked:\n{shown}");
}

#[test]
fn the_base_file_is_valid() {
    let loaded = parse_with_env(Path::new(FILE), VALID, &env).unwrap();
    assert_eq!(loaded.config.sources.len(), 3);
}

#[test]
fn an_unknown_key_is_reported_at_its_line_with_the_likely_key() {
    assert_problems(
        &edit(&[(18, "endpont = \"opc.tcp://10.20.0.5:4840\"")]),
        // Not also "missing `endpoint`": the typo is the one problem.
        &[(
            18,
            &[
                "source \"press\"",
                "unknown key `endpont`",
                "did you mean `endpoint`?",
            ],
        )],
    );
}

#[test]
fn every_unknown_key_of_a_table_is_reported() {
    assert_problems(
        &edit(&[(
            2,
            "id = \"plant-a\"\nlog_levl = \"info\"\nstate_dri = \"/tmp\"",
        )]),
        &[
            (
                3,
                &["[connector]", "`log_levl`", "did you mean `log_level`?"],
            ),
            (
                4,
                &["[connector]", "`state_dri`", "did you mean `state_dir`?"],
            ),
        ],
    );
}

#[test]
fn a_bad_endpoint_url_names_the_scheme_to_use() {
    assert_problems(
        &edit(&[(18, "endpoint = \"http://10.20.0.5:4840\"")]),
        &[(
            18,
            &[
                "source \"press\" endpoint",
                "opc.tcp://",
                "opc.tcp://10.20.0.5:4840",
            ],
        )],
    );
    assert_problems(
        &edit(&[(29, "endpoint = \"udp://10.20.0.7:502\"")]),
        &[(
            29,
            &[
                "source \"plc\" endpoint",
                "tcp://HOST:PORT",
                "rtu+tcp://",
                "rtu:///dev/",
            ],
        )],
    );
}

#[test]
fn a_duplicate_source_name_points_at_the_first_use() {
    assert_problems(
        &edit(&[(21, "name = \"press\"")]),
        &[(
            21,
            &[
                "already used by the source on line 16",
                "give each source its own name",
            ],
        )],
    );
}

#[test]
fn a_bad_enum_value_is_reported_at_the_value() {
    assert_problems(
        &edit(&[(13, "full_policy = \"drop_old\"")]),
        &[(
            13,
            &[
                "[spool] full_policy",
                "did you mean \"drop_oldest\"?",
                "\"drop_newest\"",
                "\"block\"",
            ],
        )],
    );
}

#[test]
fn a_missing_required_key_says_what_to_add() {
    assert_problems(
        &edit(&[(2, "")]),
        &[(
            1,
            &["[connector]", "missing required key `id`", "add `id = "],
        )],
    );
    assert_problems(
        &edit(&[(18, "")]),
        &[(
            15,
            &[
                "source \"press\"",
                "missing required key `endpoint`",
                "add `endpoint = ",
            ],
        )],
    );
    assert_problems(
        &edit(&[(17, "")]),
        &[(
            15,
            &["missing required key `protocol`", "\"opcua\"", "\"modbus\""],
        )],
    );
}

#[test]
fn a_plain_http_zerobus_endpoint_is_refused_with_the_reason() {
    assert_problems(
        &edit(&[(
            5,
            "endpoint = \"http://1234.zerobus.us-west-2.cloud.databricks.com\"",
        )]),
        &[(
            5,
            &[
                "[zerobus] endpoint",
                "use https://",
                "client secret",
                "ca_file",
            ],
        )],
    );
    assert_problems(
        &edit(&[(6, "workspace_url = \"http://dbc-1.cloud.databricks.com\"")]),
        &[(
            6,
            &["[zerobus] workspace_url", "use https://", "client secret"],
        )],
    );
}

#[test]
fn an_unset_environment_variable_is_named() {
    assert_problems(
        &edit(&[(29, "endpoint = \"tcp://${PLC_HOSTNAME}:502\"")]),
        &[(
            29,
            &[
                "source \"plc\" endpoint",
                "`PLC_HOSTNAME`",
                "is not set",
                "Environment=",
            ],
        )],
    );
    // A secret from an unset variable, too, without any check complaining about the text.
    assert_problems(
        &edit(&[(8, "client_secret = \"${DBX_SECRET}\"")]),
        &[(
            8,
            &["[zerobus] client_secret", "`DBX_SECRET`", "is not set"],
        )],
    );
}

#[test]
fn a_bad_byte_size_names_the_units() {
    assert_problems(
        &edit(&[(12, "max_bytes = \"10GB!\"")]),
        &[(12, &["[spool] max_bytes", "unknown size unit", "GiB"])],
    );
    assert_problems(
        &edit(&[(12, "max_bytes = \"lots\"")]),
        &[(12, &["[spool] max_bytes", "is not a size like \"10GiB\""])],
    );
}

#[test]
fn a_bad_length_of_time_names_the_units() {
    assert_problems(
        &edit(&[(3, "[http]\ndegraded_after = \"1y\"")]),
        &[(
            4,
            &[
                "[http] degraded_after",
                "unknown time unit \"y\"",
                "ms, s, m, h or d",
            ],
        )],
    );
    assert_problems(
        &edit(&[(3, "[http]\ndegraded_after = 60")]),
        &[(4, &["[http] degraded_after", "like \"60s\""])],
    );
}

#[test]
fn a_modbus_string_without_length_asks_for_it() {
    assert_problems(
        &edit(&[(
            31,
            "  { name = \"temp\", kind = \"holding\", address = 0, data_type = \"string\" },",
        )]),
        &[(
            31,
            &[
                "source \"plc\" registers[0].data_type",
                "needs `length`",
                "add length = N",
            ],
        )],
    );
}

#[test]
fn problems_in_two_sources_and_two_sections_are_reported_together() {
    assert_problems(
        &edit(&[
            (2, "id = \"\""),
            (13, "full_policy = \"newest\""),
            (19, "bogus = 1"),
            (24, "topics = [ { filter = \"plant/#\", qos = 3 } ]"),
            (
                32,
                "  { name = \"pump\", kind = \"coil\", address = 65535, data_type = \"int32\" },",
            ),
        ]),
        &[
            (2, &["[connector] id", "is empty"]),
            (13, &["[spool] full_policy", "\"newest\""]),
            (19, &["source \"press\"", "unknown key `bogus`"]),
            (24, &["source \"broker\" topics[0].qos", "use 0, 1 or 2"]),
            // Two problems on one line: a coil is a bit, and 65535 + 2 registers overflows.
            (32, &["source \"plc\""]),
            (32, &["source \"plc\""]),
        ],
    );
}

#[test]
fn a_bad_register_does_not_hide_the_next_one() {
    assert_problems(
        &edit(&[
            (
                31,
                "  { name = \"temp\", kind = \"holdng\", address = 0, data_type = \"float32\" },",
            ),
            (
                32,
                "  { name = \"pump\", kind = \"coil\", address = 70000, data_type = \"bool\" },",
            ),
        ]),
        &[
            (31, &["registers[0].kind", "did you mean \"holding\"?"]),
            (32, &["registers[1].address", "70000", "0..=65535"]),
        ],
    );
}

#[test]
fn a_reserved_or_malformed_source_name_is_refused() {
    assert_problems(
        &edit(&[(16, "name = \"_uplink\""), (21, "name = \"Broker 1\"")]),
        &[
            (16, &["\"_uplink\"", "reserved"]),
            (21, &["a-z, 0-9", "\"broker_1\""]),
        ],
    );
}

#[test]
fn opcua_security_mode_and_policy_go_together() {
    assert_problems(
        &edit(&[(
            18,
            "endpoint = \"opc.tcp://10.20.0.5:4840\"\nsecurity_mode = \"Sign\"",
        )]),
        &[(
            19,
            &["security_mode", "set security_policy = \"Basic256Sha256\""],
        )],
    );
    assert_problems(
        &edit(&[(
            18,
            "endpoint = \"opc.tcp://10.20.0.5:4840\"\nsecurity_policy = \"Basic256Sha256\"",
        )]),
        &[(
            19,
            &[
                "security_policy",
                "security_mode = \"Sign\" or \"SignAndEncrypt\"",
            ],
        )],
    );
}

#[test]
fn mqtt_topics_and_tls_keys_are_checked() {
    assert_problems(
        &edit(&[
            (
                23,
                "endpoint = \"mqtts://10.20.0.9:8883\"\ncert_file = \"/nonexistent/client.pem\"",
            ),
            (
                24,
                "topics = [ { filter = \"$share/g/plant/#\", qos = 1 } ]",
            ),
        ]),
        &[
            (24, &["cert_file", "cannot read /nonexistent/client.pem"]),
            (24, &["cert_file", "without key_file", "add key_file"]),
            (25, &["topics[0].filter", "set mqtt_version = \"5\""]),
        ],
    );
}

#[test]
fn an_unknown_section_and_a_bad_table_name_are_reported() {
    assert_problems(
        &edit(&[(
            9,
            "tables = { opcua = \"opcua_events\", mqtt = \"iot.bronze.mqtt\", modbus = \"iot.bronze.modbus\", status = \"iot.bronze.status\" }\n[sorces]\nx = 1",
        )]),
        &[
            (9, &["[zerobus] tables.opcua", "CATALOG.SCHEMA.TABLE"]),
            (
                10,
                &["unknown top-level key `sorces`", "did you mean `sources`?"],
            ),
        ],
    );
}

#[test]
fn syntax_errors_are_reported_with_their_line() {
    let errors = problems(&edit(&[(12, "max_bytes = \"1GiB")]));
    assert_eq!(errors.problems[0].line, 12, "{errors}");
    assert!(
        errors.problems[0].message.contains("TOML syntax error"),
        "{errors}"
    );
}

#[test]
fn an_unresolvable_secret_is_reported_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("spool.key");
    iot_connector_config::secrets::keygen(&key).unwrap();
    let sealed = iot_connector_config::secrets::seal(&key, "hunter2-sealed").unwrap();
    let other_key = dir.path().join("other.key");
    iot_connector_config::secrets::keygen(&other_key).unwrap();
    let text = edit(&[
        (7, &format!("client_id = \"{sealed}\"")),
        (8, "client_secret = \"credential:dbx\""),
        (
            13,
            &format!(
                "full_policy = \"drop_oldest\"\nkey_file = \"{}\"",
                other_key.display()
            ),
        ),
        (
            18,
            "endpoint = \"opc.tcp://10.20.0.5:4840\"\nusername = \"u\"\npassword = \"file:/nonexistent/pw\"",
        ),
    ]);
    assert_problems(
        &text,
        &[
            (
                7,
                &[
                    "[zerobus] client_id",
                    "sealed with another key",
                    "iot-connector secret seal",
                ],
            ),
            (
                8,
                &[
                    "[zerobus] client_secret",
                    "$CREDENTIALS_DIRECTORY",
                    "LoadCredential=dbx:",
                ],
            ),
            (
                21,
                &[
                    "source \"press\" password",
                    "cannot read secret file /nonexistent/pw",
                ],
            ),
        ],
    );
}

#[test]
fn every_missing_key_of_a_section_is_reported() {
    assert_problems(
        &edit(&[(6, ""), (7, ""), (9, "")]),
        &[
            (4, &["[zerobus]", "missing required key `workspace_url`"]),
            (4, &["[zerobus]", "missing required key `client_id`"]),
            (4, &["[zerobus]", "missing required key `tables`"]),
        ],
    );
}

#[test]
fn a_section_written_as_a_list_or_a_key_set_twice_is_explained() {
    assert_problems(
        &edit(&[(1, "[[connector]]")]),
        &[(
            1,
            &[
                "[connector] must be a single table",
                "write it as [connector]",
            ],
        )],
    );
    assert_problems(
        &edit(&[(2, "id = \"plant-a\"\nid = \"plant-b\"")]),
        &[(3, &["`id` is set twice", "keep one"])],
    );
}

#[test]
fn a_disabled_source_is_still_validated() {
    // `enabled = false` keeps an entry from running, not from being checked: it must start
    // cleanly the day it is enabled.
    assert_problems(
        &edit(&[(
            18,
            "endpoint = \"opc.tcp://10.20.0.5:4840\"\nenabled = false\nsecurity_mode = \"Sign\"",
        )]),
        &[(20, &["source \"press\" security_mode", "security_policy"])],
    );
}

#[test]
fn a_misspelt_secret_is_reported_without_quoting_it() {
    let errors = problems(&edit(&[(
        18,
        "endpoint = \"opc.tcp://10.20.0.5:4840\"\nusername = \"u\"\npassword = 8675309",
    )]));
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].line, 20);
    assert!(
        errors.problems[0]
            .message
            .contains("write the secret as a string"),
        "{errors}"
    );
    assert!(!errors.to_string().contains("8675309"), "{errors}");

    let errors = problems(&edit(&[(8, "client_secret = \"hunter${2\"")]));
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].line, 8);
    assert!(!errors.to_string().contains("${2"), "{errors}");
}

#[test]
fn a_deprecated_opcua_policy_needs_an_explicit_opt_in_and_one_identity_is_allowed() {
    assert_problems(
        &edit(&[(
            18,
            "endpoint = \"opc.tcp://10.20.0.5:4840\"\nsecurity_policy = \"Basic256\"\nsecurity_mode = \"Sign\"\nusername = \"u\"\nuser_certificate_file = \"u.der\"",
        )]),
        &[
            (19, &["deprecated", "allow_deprecated_security"]),
            (22, &["two identities"]),
            (22, &["user_private_key_file"]),
        ],
    );
}

#[test]
fn an_rtu_register_needs_a_slave_address_and_tcp_allows_broadcast() {
    // Lines 29 to 32 of VALID: the Modbus source's endpoint and its two registers.
    let rtu = edit(&[
        (29, "endpoint = \"rtu+tcp://gw:502\""),
        (
            31,
            "  { name = \"temp\", unit_id = 0, kind = \"holding\", address = 0, data_type = \"float32\" },",
        ),
        (
            32,
            "  { name = \"pump\", unit_id = 248, kind = \"coil\", address = 10, data_type = \"bool\" },",
        ),
    ]);
    assert_problems(
        &rtu,
        &[
            (31, &["registers[0].unit_id", "unit_id 0", "1 to 247"]),
            (32, &["registers[1].unit_id", "unit_id 248", "1 to 247"]),
        ],
    );
    let tcp = rtu.replace("rtu+tcp://gw:502", "tcp://gw:502");
    assert!(parse_with_env(Path::new(FILE), &tcp, &env).is_ok());
}

#[test]
fn an_enabled_modbus_source_without_registers_is_refused() {
    let text = edit(&[(30, "registers = []"), (31, ""), (32, ""), (33, "")]);
    assert_problems(&text, &[(29, &["source \"plc\" endpoint", "no registers"])]);
    let disabled = text.replace(
        "protocol = \"modbus\"",
        "protocol = \"modbus\"\nenabled = false",
    );
    assert!(parse_with_env(Path::new(FILE), &disabled, &env).is_ok());
}

#[test]
fn serial_keys_are_checked_and_belong_to_rtu_only() {
    let tcp = edit(&[(29, "endpoint = \"tcp://plc:502\"\nbaud_rate = 19200")]);
    assert_problems(&tcp, &[(30, &["baud_rate", "rtu://"])]);
    let rtu = edit(&[(
        29,
        "endpoint = \"rtu:///dev/ttyS0\"\ndata_bits = 9\nstop_bits = 3",
    )]);
    assert_problems(
        &rtu,
        &[
            (30, &["data_bits", "7 or 8"]),
            (31, &["stop_bits", "1 or 2"]),
        ],
    );
}

#[test]
fn values_no_device_could_mean_are_refused() {
    let password = "topics = [ { filter = \"plant/#\", qos = 1 } ]\nusername = \"edge\"\npassword = \"plain-pw\"";
    assert_problems(
        &edit(&[
            (24, password),
            (
                29,
                "endpoint = \"tcp://${PLC_HOST}:502\"\npoll_interval_ms = 9223372036854775807",
            ),
        ]),
        &[
            (
                26,
                &[
                    "source \"broker\" password",
                    "clear text over mqtt://",
                    "allow_plaintext_password = true",
                ],
            ),
            (32, &["poll_interval_ms", "more than a day"]),
        ],
    );
    let trusted = format!("{password}\nallow_plaintext_password = true");
    let loaded = parse_with_env(Path::new(FILE), &edit(&[(24, &trusted)]), &env);
    assert!(loaded.is_ok(), "{:?}", loaded.err());
}
