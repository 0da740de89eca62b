//! The source's configuration checked and turned into what the session needs: broker address,
//! TLS material loaded and parsed, client id, subscriptions. Every problem is reported at once;
//! any problem is a configuration error (exit 78), since no retry can fix it.

use std::{path::Path, sync::Arc};

use iot_connector_config::{MqttSource, MqttVersion, PayloadFormat};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::payload::filter_problem;

/// Everything the session needs to connect and subscribe.
#[derive(Clone)]
pub struct Plan {
    /// The source name (for logs).
    pub source: String,
    /// The endpoint as configured: the `broker` column.
    pub broker: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The TLS client configuration for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether a client certificate is configured (for error messages).
    pub client_certificate: bool,
    /// The MQTT client id.
    pub client_id: String,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// `clean_session` (3.1.1) / clean start (5).
    pub clean_session: bool,
    /// Protocol version.
    pub version: MqttVersion,
    /// MQTT 5 session expiry.
    pub session_expiry_seconds: u32,
    /// Topic filters and their QoS, in configuration order.
    pub subscriptions: Vec<(String, u8)>,
    /// `max_message_bytes`, for the operator's messages.
    pub max_message_bytes: u64,
    /// The largest packet the client reads: `max_message_bytes` and room for the topic and the
    /// properties; a larger one is refused from its header, before it is read.
    pub max_packet_bytes: u32,
}

/// Room in a packet beside its payload: a topic of up to 64 KiB, the packet id, properties.
const PACKET_HEADROOM: u64 = 128 << 10;
/// MQTT's largest packet (the remaining length's four bytes).
const MQTT_MAX_PACKET: u64 = 268_435_455;

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("source", &self.source)
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("user", &self.login.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls.is_some())
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// Checks `config` and loads its certificates; every problem at once on failure.
    pub fn new(config: &MqttSource, connector_id: &str, source: &str) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let endpoint = parse_endpoint(&config.endpoint)
            .map_err(|e| problems.push(e))
            .ok();
        let secure = endpoint.as_ref().is_some_and(|e| e.secure);
        if endpoint.as_ref().is_some_and(|e| !e.secure) {
            for (key, value) in [
                ("ca_file", &config.ca_file),
                ("cert_file", &config.cert_file),
                ("key_file", &config.key_file),
            ] {
                if value.is_some() {
                    problems.push(format!(
                        "{key} is set but endpoint {:?} is plaintext mqtt://: use mqtts:// so that TLS is used",
                        config.endpoint
                    ));
                }
            }
        }
        if config.cert_file.is_some() != config.key_file.is_some() {
            problems.push("cert_file and key_file go together: set both or neither".to_owned());
        }
        if config.password.is_some() && config.username.is_none() {
            problems.push("password is set without username".to_owned());
        }
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("iot-connector-{connector_id}-{source}"));
        if client_id.is_empty() {
            problems.push("client_id is empty: a persistent session needs a stable id".to_owned());
        }
        if config.topics.is_empty() {
            problems.push("topics is empty: there is nothing to subscribe to".to_owned());
        }
        for (i, topic) in config.topics.iter().enumerate() {
            let at = format!("topics[{i}] ({:?})", topic.filter);
            if let Some(problem) = filter_problem(&topic.filter) {
                problems.push(format!("topics[{i}]: {problem}"));
            }
            if topic.qos > 2 {
                problems.push(format!("{at}: qos {} is not 0, 1 or 2", topic.qos));
            }
            for (key, path) in [
                ("value_path", &topic.value_path),
                ("timestamp_path", &topic.timestamp_path),
            ] {
                let Some(path) = path else { continue };
                if topic.payload != PayloadFormat::Json {
                    problems.push(format!("{at}: {key} applies to payload = \"json\" only"));
                } else if !path.is_empty() && !path.starts_with('/') {
                    problems.push(format!(
                        "{at}: {key} {path:?} is not a JSON pointer (it starts with `/`, e.g. \"/value\")"
                    ));
                }
            }
        }
        let tls = if secure {
            tls_config(config).map_err(|e| problems.extend(e)).ok()
        } else {
            None
        };
        let Some(endpoint) = endpoint.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        Ok(Self {
            source: source.to_owned(),
            broker: config.endpoint.clone(),
            host: endpoint.host,
            port: endpoint.port,
            tls,
            client_certificate: config.cert_file.is_some(),
            client_id,
            login: config.username.clone().map(|user| {
                let password = config
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_owned())
                    .unwrap_or_default();
                (user, password)
            }),
            clean_session: config.clean_session,
            version: config.mqtt_version,
            session_expiry_seconds: config.session_expiry_seconds,
            max_message_bytes: config.max_message_bytes.0,
            max_packet_bytes: u32::try_from(
                (config.max_message_bytes.0 + PACKET_HEADROOM).min(MQTT_MAX_PACKET),
            )
            .unwrap_or(u32::MAX),
            subscriptions: config
                .topics
                .iter()
                .map(|t| (t.filter.clone(), t.qos))
                .collect(),
        })
    }
}

/// `mqtt[s]://host[:port]`.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    secure: bool,
    host: String,
    port: u16,
}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint, String> {
    let bad = |why: &str| format!("endpoint {endpoint:?}: {why}");
    let (secure, rest) = if let Some(rest) = endpoint.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = endpoint.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(bad("use mqtt://host:port or mqtts://host:port"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("only host and port are allowed after the scheme"));
    }
    let default_port = if secure { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[` in an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after the IPv6 address")),
        };
        (format!("[{host}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("the host is missing"));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
    };
    Ok(Endpoint { secure, host, port })
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("{key} {path:?} cannot be read: {e}"))
}

/// The rustls client configuration: the CA file (else the system trust store), and the client
/// certificate and key when set. Always ring, never the process default provider by accident.
fn tls_config(config: &MqttSource) -> Result<Arc<rustls::ClientConfig>, Vec<String>> {
    let mut problems = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => match read("ca_file", path) {
            Ok(pem) => {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    problems.push(format!("ca_file {path:?} holds no usable PEM certificate"));
                }
            }
            Err(e) => problems.push(e),
        },
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                problems.push(
                    "mqtts:// without ca_file uses the system trust store, but it holds no certificate: set ca_file"
                        .to_owned(),
                );
            }
        }
    }
    let client_auth = match (&config.cert_file, &config.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = read("cert_file", cert_path).and_then(|pem| {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    Err(format!("cert_file {cert_path:?} holds no PEM certificate"))
                } else {
                    Ok(certs)
                }
            });
            let key = read("key_file", key_path).and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    format!("key_file {key_path:?} holds no usable PEM private key: {e}")
                })
            });
            match (certs, key) {
                (Ok(certs), Ok(key)) => Some((certs, key)),
                (certs, key) => {
                    problems.extend(certs.err());
                    problems.extend(key.err());
                    None
                }
            }
        }
        _ => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| vec![format!("TLS set-up: {e}")])?
    .with_root_certificates(roots);
    let tls = match client_auth {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            vec![format!(
                "cert_file/key_file: the certificate and key do not make a usable client identity: {e}"
            )]
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_connector_config::MqttTopic;

    fn source(toml_text: &str) -> MqttSource {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn endpoints_take_scheme_host_and_optional_port() {
        assert_eq!(
            parse_endpoint("mqtt://10.0.0.1:1884"),
            Ok(Endpoint {
                secure: false,
                host: "10.0.0.1".into(),
                port: 1884
            })
        );
        assert_eq!(
            parse_endpoint("mqtts://broker.plant/"),
            Ok(Endpoint {
                secure: true,
                host: "broker.plant".into(),
                port: 8883
            })
        );
        assert_eq!(
            parse_endpoint("mqtt://[::1]:1883"),
            Ok(Endpoint {
                secure: false,
                host: "[::1]".into(),
                port: 1883
            })
        );
        for bad in [
            "tcp://h:1",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h/path",
            "mqtt://u@h",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_valid_source_becomes_a_plan_with_the_default_client_id() {
        let plan = Plan::new(
            &source(
                r#"
                name = "sensors"
                endpoint = "mqtt://127.0.0.1:1883"
                username = "edge"
                password = "secret"
                topics = [{ filter = "plant/+/temp", qos = 2, payload = "json", value_path = "/v" }]
                "#,
            ),
            "plant-a",
            "sensors",
        )
        .unwrap();
        assert_eq!(plan.client_id, "iot-connector-plant-a-sensors");
        assert_eq!(plan.login, Some(("edge".into(), "secret".into())));
        assert_eq!(plan.subscriptions, vec![("plant/+/temp".to_owned(), 2)]);
        assert!(!plan.clean_session);
        assert_eq!(plan.session_expiry_seconds, 604_800);
        assert!(
            !format!("{plan:?}").contains("secret"),
            "the password never prints"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut config = source(
            r#"
            name = "s"
            endpoint = "mqtt://h"
            ca_file = "/ca.pem"
            cert_file = "/c.pem"
            password = "p"
            "#,
        );
        config.topics = vec![
            MqttTopic {
                filter: "a/#/b".into(),
                qos: 3,
                payload: PayloadFormat::Text,
                value_path: Some("/v".into()),
                timestamp_path: None,
            },
            MqttTopic {
                filter: "ok".into(),
                qos: 1,
                payload: PayloadFormat::Json,
                value_path: Some("v".into()),
                timestamp_path: None,
            },
        ];
        let problems = Plan::new(&config, "c", "s").unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "ca_file is set but endpoint",
            "cert_file is set but endpoint",
            "cert_file and key_file go together",
            "password is set without username",
            "`#` must be a whole level",
            "qos 3",
            "value_path applies to payload = \"json\" only",
            "is not a JSON pointer",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn unreadable_certificate_files_are_configuration_problems() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let config = source(&format!(
            r##"
            name = "s"
            endpoint = "mqtts://h"
            ca_file = {garbage:?}
            cert_file = "/nonexistent/c.pem"
            key_file = {garbage:?}
            topics = [{{ filter = "#" }}]
            "##
        ));
        let text = Plan::new(&config, "c", "s").unwrap_err().join("\n");
        assert!(text.contains("holds no usable PEM certificate"), "{text}");
        assert!(text.contains("cannot be read"), "{text}");
        assert!(text.contains("no usable PEM private key"), "{text}");
    }
}
