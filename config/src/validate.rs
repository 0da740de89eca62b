//! What the types cannot say: URL schemes, unique names, ranges, pairs of keys that go together,
//! files that must exist. Each check reports at the line of the key it is about (the table's
//! header when the key was left at its default) and says what to write instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use crate::load::{Ctx, Dirs, Parts, read_limited};
use crate::problems::Problems;
use crate::secrets::KEY_LEN;
use crate::tree::{self, Seg, Value};
use crate::{
    Connector, DataType, Http, ModbusSource, MqttSource, MqttVersion, OpcuaSource, PayloadFormat,
    RegisterKind, SecurityMode, SecurityPolicy, Source, SpoolConfig, Zerobus,
};
use iot_connector_proto::Table;

/// Largest certificate or key file.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// The slave addresses of a Modbus serial line (0 is broadcast, 248 to 255 are reserved).
const RTU_UNIT_IDS: std::ops::RangeInclusive<u8> = 1..=247;

/// What the checks found that the loaded config keeps.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) ca_pem: Option<String>,
    pub(crate) listen: SocketAddr,
}

/// One part of the file (a section or a source): reports problems about its keys.
struct At<'a, 'i, 'c, 'e> {
    root: &'a Value<'i>,
    ctx: &'c Ctx<'e>,
    prefix: Vec<Seg>,
}

impl At<'_, '_, '_, '_> {
    fn full(&self, rel: &str) -> Vec<Seg> {
        self.prefix.iter().cloned().chain(tree::path(rel)).collect()
    }

    /// The span of a key's value, else of the nearest table that is in the file.
    fn span(&self, rel: &str) -> Range<usize> {
        tree::span_or_ancestor(self.root, &self.full(rel))
    }

    /// Whether the key is written in the file (not left at its default).
    fn written(&self, rel: &str) -> bool {
        tree::get(self.root, &self.full(rel)).is_some()
    }

    fn report(&self, p: &mut Problems, rel: &str, message: impl std::fmt::Display) {
        let place = self.ctx.place(&self.full(rel));
        p.at_value(&self.span(rel), format!("{place}: {message}"));
    }
}

pub(crate) fn check(
    root: &Value<'_>,
    parts: &Parts,
    ctx: &Ctx<'_>,
    dirs: &Dirs,
    p: &mut Problems,
) -> Option<Checked> {
    let at = |prefix: &str| At {
        root,
        ctx,
        prefix: tree::path(prefix),
    };
    if let Some(connector) = &parts.connector {
        check_connector(connector, &at("connector"), p);
    }
    check_directories(dirs, &at("connector"), p);
    let listen = parts
        .http
        .as_ref()
        .and_then(|http| check_http(http, &at("http"), p));
    let ca_pem = match &parts.zerobus {
        Some(Some(zerobus)) => check_zerobus(zerobus, &at("zerobus"), p),
        _ => None,
    };
    if let Some(spool) = &parts.spool {
        check_spool(spool, &at("spool"), dirs, p);
    }
    check_source_names(root, ctx, p);
    for (i, source) in parts.sources.iter().enumerate() {
        let at = at(&format!("sources.{i}"));
        match source {
            Some(Source::Opcua(s)) => check_opcua(s, &at, p),
            Some(Source::Mqtt(s)) => check_mqtt(s, &at, p),
            Some(Source::Modbus(s)) => check_modbus(s, &at, p),
            None => {}
        }
    }
    Some(Checked {
        ca_pem,
        listen: listen?,
    })
}

fn check_connector(c: &Connector, at: &At<'_, '_, '_, '_>, p: &mut Problems) {
    if c.id.trim().is_empty() {
        at.report(p, "id", "is empty: name this connector, e.g. id = \"plant-a-dmz-01\" (it is part of every record_id)");
    } else if c.id.contains('/') || c.id.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        at.report(p, "id", format!("{:?} contains `/`, a space or a control character: record_ids are `<id>/<source>/<seq>`, so use letters, digits, `-`, `_` or `.`", c.id));
    }
    if c.log_level.trim().is_empty() {
        at.report(p, "log_level", "is empty: write a tracing filter such as \"info\" or \"iot_connector_uplink=debug,info\"");
    }
}

fn check_directories(dirs: &Dirs, at: &At<'_, '_, '_, '_>, p: &mut Problems) {
    for (key, dir) in [
        ("state_dir", &dirs.state_dir),
        ("runtime_dir", &dirs.runtime_dir),
    ] {
        if let Some(problem) = crate::directory_problem(dir) {
            at.report(p, key, problem);
        }
    }
}

fn check_http(h: &Http, at: &At<'_, '_, '_, '_>, p: &mut Problems) -> Option<SocketAddr> {
    match h.listen.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            at.report(p, "listen", format!("{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:8081\" or \"[::1]:8081\" (host names are not resolved)", h.listen));
            None
        }
    }
}

/// The parts of `scheme://[user@]host[:port][/path]`.
#[derive(Debug, PartialEq)]
struct Url<'a> {
    scheme: &'a str,
    userinfo: bool,
    host: &'a str,
    port: Option<&'a str>,
    path: &'a str,
}

fn parse_url(text: &str) -> Option<Url<'_>> {
    let (scheme, rest) = text.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((_, hostport)) => (true, hostport),
        None => (false, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    Some(Url {
        scheme,
        userinfo,
        host,
        port,
        path,
    })
}

/// Why `url` is not a `scheme://host[:port]` for one of `schemes`, if it is not; `form` is what
/// to write instead, e.g. `tcp://HOST:PORT`.
fn network_url_problem(url: &str, schemes: &[&str], form: &str, example: &str) -> Option<String> {
    let wanted = format!("{form}, e.g. {example:?}");
    let Some(parsed) = parse_url(url) else {
        return Some(format!("{url:?} is not a URL: write {wanted}"));
    };
    if !schemes.contains(&parsed.scheme) {
        return Some(format!(
            "{url:?} has the scheme `{}://`: write {wanted}",
            parsed.scheme
        ));
    }
    if parsed.userinfo {
        return Some("holds credentials (`user@`): remove them from the URL and use the username/password keys".into());
    }
    if parsed.host.is_empty() || parsed.host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Some(format!("{url:?} has no host: write {wanted}"));
    }
    if let Some(port) = parsed.port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Some(format!(
            "{url:?} has the port {port:?}: use a number in 1..=65535"
        ));
    }
    None
}

/// Why a Zerobus URL is refused, if it is.
fn https_problem(url: &str, example: &str) -> Option<String> {
    if url.starts_with("http://") {
        return Some(format!(
            "{url:?} is plain http: use https:// (the OAuth token request carries the client secret, which must never cross the network unencrypted; for a private or test CA set ca_file), e.g. {example:?}"
        ));
    }
    network_url_problem(url, &["https"], "https://HOST", example)
}

fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Reads a PEM file named by the key `rel`; reports why it cannot be used.
fn read_pem(
    at: &At<'_, '_, '_, '_>,
    rel: &str,
    file: &str,
    pem: Pem,
    p: &mut Problems,
) -> Option<String> {
    let path = at.ctx.absolute(file);
    let text = match read_limited(&path, MAX_PEM_BYTES) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            at.report(
                p,
                rel,
                format!(
                    "cannot read {}: {e}; check the path and that the service user may read it",
                    path.display()
                ),
            );
            return None;
        }
    };
    let (marker, what) = match pem {
        Pem::Certificate => (
            "-----BEGIN CERTIFICATE-----",
            "a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ),
        Pem::PrivateKey => (
            "PRIVATE KEY-----",
            "a PEM private key (-----BEGIN … PRIVATE KEY-----)",
        ),
    };
    if !text.contains(marker) {
        at.report(
            p,
            rel,
            format!(
                "{} holds no {what}: point it at the PEM file",
                path.display()
            ),
        );
        return None;
    }
    Some(text)
}

fn check_zerobus(z: &Zerobus, at: &At<'_, '_, '_, '_>, p: &mut Problems) -> Option<String> {
    if let Some(problem) = https_problem(
        &z.endpoint,
        "https://1234567890123456.zerobus.us-west-2.cloud.databricks.com",
    ) {
        at.report(p, "endpoint", problem);
    }
    if let Some(problem) = https_problem(
        &z.workspace_url,
        "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com",
    ) {
        at.report(p, "workspace_url", problem);
    }
    if z.client_id.expose().trim().is_empty() {
        at.report(p, "client_id", "is empty: set the service principal's client id (check the variable or file it comes from)");
    }
    if z.client_secret.expose().trim().is_empty() {
        at.report(p, "client_secret", "is empty: set the service principal's secret (check the variable or file it comes from)");
    }
    if let Some(proxy) = &z.proxy
        && let Some(problem) = network_url_problem(
            proxy,
            &["http", "https"],
            "http://HOST:PORT",
            "http://proxy.corp:3128",
        )
    {
        at.report(p, "proxy", problem);
    }
    for (i, host) in z.no_proxy.iter().enumerate() {
        if host.trim().is_empty() {
            at.report(
                p,
                &format!("no_proxy.{i}"),
                "is empty: write a host name or a domain suffix such as \".corp\"",
            );
        }
    }
    for table in Table::ALL {
        let (key, name) = (table.key(), z.tables.of(table));
        if !is_table_name(name) {
            at.report(p, &format!("tables.{key}"), format!("{name:?} is not a table name: write CATALOG.SCHEMA.TABLE with letters, digits and `_`, e.g. \"iot.bronze.{key}_events\""));
        }
    }
    let file = z.ca_file.as_deref()?;
    read_pem(at, "ca_file", file, Pem::Certificate, p)
}

fn check_spool(s: &SpoolConfig, at: &At<'_, '_, '_, '_>, dirs: &Dirs, p: &mut Problems) {
    if s.max_bytes.0 == 0 {
        at.report(
            p,
            "max_bytes",
            "is 0: the spool could hold nothing; write a size such as \"10GiB\"",
        );
    }
    if let Some(file) = &s.key_file
        && file.trim().is_empty()
    {
        at.report(
            p,
            "key_file",
            "is empty: remove it to use <state_dir>/keys/spool.key",
        );
    }
    // A missing key is created on first start; a wrong one would stop the uplink.
    if s.encrypt
        && let Ok(meta) = std::fs::metadata(&dirs.key_file)
        && (!meta.is_file() || meta.len() != KEY_LEN as u64)
    {
        at.report(p, "key_file", format!("{} is not a {KEY_LEN}-byte key file: restore the right key, or point key_file at one made by `iot-connector secret keygen`", dirs.key_file.display()));
    }
}

fn check_source_names(root: &Value<'_>, ctx: &Ctx<'_>, p: &mut Problems) {
    let Some(count) = tree::get(root, &tree::path("sources")).and_then(|v| match v.get_ref() {
        toml::de::DeValue::Array(a) => Some(a.len()),
        _ => None,
    }) else {
        return;
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..count {
        let path = tree::path(&format!("sources.{i}.name"));
        let Some(name) = tree::string(root, &path) else {
            continue;
        };
        let span = tree::span_or_ancestor(root, &path);
        if p.is_tainted(&span) {
            continue;
        }
        let place = ctx.place(&path);
        if name.is_empty() {
            p.at(
                span.start,
                format!(
                    "{place}: is empty: name the source with [a-z0-9_-], e.g. \"press_line_1\""
                ),
            );
        } else if name.starts_with('_') {
            p.at(span.start, format!("{place}: {name:?} starts with `_`, which is reserved for the connector's own status rows (`_uplink`): rename it"));
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            let suggestion: String = name
                .to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            p.at(span.start, format!("{place}: {name:?} may only use a-z, 0-9, `_` and `-` (it is part of every record_id): e.g. {suggestion:?}"));
        }
        let line = p.line_of(span.start);
        if let Some(first) = seen.get(name) {
            p.at(span.start, format!("{place}: the name {name:?} is already used by the source on line {first}: give each source its own name"));
        } else {
            seen.insert(name.to_owned(), line);
        }
    }
}

/// Longest interval or timeout any key in milliseconds may have: one day. Beyond that no device
/// means it; it is a unit mix-up (seconds written as µs) or a typo.
const MAX_MILLIS: u64 = 24 * 3600 * 1000;

fn check_millis(at: &At<'_, '_, '_, '_>, p: &mut Problems, rel: &str, value: u64) {
    if value == 0 {
        at.report(p, rel, "is 0: use a positive number of milliseconds");
    } else if value > MAX_MILLIS {
        at.report(
            p,
            rel,
            format!("is {value} ms, more than a day: write milliseconds, at most {MAX_MILLIS}"),
        );
    }
}

fn check_finite(
    at: &At<'_, '_, '_, '_>,
    p: &mut Problems,
    rel: &str,
    value: f64,
    non_negative: bool,
) {
    if !value.is_finite() {
        at.report(p, rel, "is not a finite number: write an ordinary number");
    } else if non_negative && value < 0.0 {
        at.report(p, rel, format!("is {value}: use 0 or more"));
    }
}

fn check_opcua(s: &OpcuaSource, at: &At<'_, '_, '_, '_>, p: &mut Problems) {
    if let Some(problem) = network_url_problem(
        &s.endpoint,
        &["opc.tcp"],
        "opc.tcp://HOST:PORT[/PATH]",
        "opc.tcp://10.20.0.5:4840",
    ) {
        at.report(p, "endpoint", problem);
    }
    match (s.security_policy, s.security_mode) {
        (SecurityPolicy::None, SecurityMode::None) => {}
        (SecurityPolicy::None, mode) => at.report(
            p,
            "security_mode",
            format!("{mode:?} needs a security_policy: set security_policy = \"Basic256Sha256\" (or another policy), or security_mode = \"None\""),
        ),
        (policy, SecurityMode::None) => {
            let rel = if at.written("security_mode") { "security_mode" } else { "security_policy" };
            at.report(
                p,
                rel,
                format!("{policy:?} needs security_mode = \"Sign\" or \"SignAndEncrypt\" (or security_policy = \"None\" for no security)"),
            );
        }
        _ => {}
    }
    if s.password.is_some() && s.username.is_none() {
        at.report(
            p,
            "password",
            "is set without username: add username = \"…\" or remove password",
        );
    }
    if matches!(
        s.security_policy,
        SecurityPolicy::Basic128Rsa15 | SecurityPolicy::Basic256
    ) && !s.allow_deprecated_security
    {
        at.report(
            p,
            "security_policy",
            format!("{:?} is deprecated (broken SHA-1/PKCS#1 v1.5): use \"Basic256Sha256\" or newer, or set allow_deprecated_security = true if the server offers nothing else", s.security_policy),
        );
    }
    if s.username.is_some() && s.user_certificate_file.is_some() {
        at.report(
            p,
            "user_certificate_file",
            "and username are two identities: keep one of them",
        );
    }
    if s.user_certificate_file.is_some() != s.user_private_key_file.is_some() {
        let key = if s.user_certificate_file.is_some() {
            "user_certificate_file"
        } else {
            "user_private_key_file"
        };
        at.report(
            p,
            key,
            "needs its pair: set both user_certificate_file and user_private_key_file",
        );
    }
    check_millis(at, p, "connect_timeout_ms", s.connect_timeout_ms);
    check_millis(at, p, "publishing_interval_ms", s.publishing_interval_ms);
    for (i, node) in s.nodes.iter().enumerate() {
        if node.node_id.trim().is_empty() {
            at.report(
                p,
                &format!("nodes.{i}.node_id"),
                "is empty: write a node id such as \"ns=2;s=Press1.Temperature\"",
            );
        }
        if let Some(ms) = node.sampling_interval_ms {
            check_millis(at, p, &format!("nodes.{i}.sampling_interval_ms"), ms);
        }
        if let Some(deadband) = node.deadband_absolute {
            check_finite(
                at,
                p,
                &format!("nodes.{i}.deadband_absolute"),
                deadband,
                true,
            );
        }
        if let Some(percent) = node.deadband_percent {
            if !(0.0..=100.0).contains(&percent) {
                at.report(
                    p,
                    &format!("nodes.{i}.deadband_percent"),
                    format!("is {percent}: use a percentage in 0..=100"),
                );
            }
            if node.deadband_absolute.is_some() {
                at.report(
                    p,
                    &format!("nodes.{i}.deadband_percent"),
                    "and deadband_absolute are both set: keep one of them",
                );
            }
        }
    }
    for (i, browse) in s.browse.iter().enumerate() {
        if browse.root.trim().is_empty() {
            at.report(
                p,
                &format!("browse.{i}.root"),
                "is empty: write the node id to browse from, e.g. \"ns=2;s=Press1\"",
            );
        }
    }
}

/// Why an MQTT topic filter is invalid, if it is.
fn topic_filter_problem(filter: &str, version: MqttVersion) -> Option<String> {
    let mut rest = filter;
    if let Some(shared) = filter.strip_prefix("$share/") {
        if version != MqttVersion::V5 {
            return Some("is a shared subscription ($share/…), which needs MQTT 5: set mqtt_version = \"5\" on this source".into());
        }
        let Some((group, inner)) = shared.split_once('/') else {
            return Some("is not $share/GROUP/FILTER: add the group name and the filter".into());
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Some("has a shared-subscription group that is empty or holds a wildcard: name the group, e.g. $share/connectors/plant/#".into());
        }
        rest = inner;
    }
    if rest.is_empty() {
        return Some("is empty: write a topic filter such as \"plant/+/temperature/#\"".into());
    }
    if rest.contains('\0') {
        return Some("contains a NUL character: remove it".into());
    }
    let levels: Vec<&str> = rest.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some(
                "uses `#` other than as the whole last level: write …/# at the end only".into(),
            );
        }
        if level.contains('+') && *level != "+" {
            return Some(
                "uses `+` inside a level: `+` must be a whole level, as in plant/+/temperature"
                    .into(),
            );
        }
    }
    None
}

/// The largest `max_message_bytes`: MQTT's largest packet, less room for topic and properties.
const MAX_MQTT_MESSAGE_BYTES: u64 = 256 << 20;

fn check_mqtt(s: &MqttSource, at: &At<'_, '_, '_, '_>, p: &mut Problems) {
    if let Some(problem) = network_url_problem(
        &s.endpoint,
        &["mqtt", "mqtts"],
        "mqtts://HOST:PORT (TLS) or mqtt://HOST:PORT",
        "mqtts://10.20.0.9:8883",
    ) {
        at.report(p, "endpoint", problem);
    } else if parse_url(&s.endpoint).is_some_and(|url| !url.path.is_empty() && url.path != "/") {
        at.report(
            p,
            "endpoint",
            format!(
                "{:?} has a path: an MQTT endpoint is mqtt(s)://HOST:PORT only",
                s.endpoint
            ),
        );
    }
    let tls = s.endpoint.starts_with("mqtts://");
    for key in ["ca_file", "cert_file", "key_file"] {
        let file = match key {
            "ca_file" => &s.ca_file,
            "cert_file" => &s.cert_file,
            _ => &s.key_file,
        };
        let Some(file) = file else { continue };
        if !tls {
            at.report(
                p,
                key,
                "is only used with TLS: change the endpoint to mqtts://, or remove it",
            );
            continue;
        }
        let pem = if key == "key_file" {
            Pem::PrivateKey
        } else {
            Pem::Certificate
        };
        read_pem(at, key, file, pem, p);
    }
    match (&s.cert_file, &s.key_file) {
        (Some(_), None) => at.report(
            p,
            "cert_file",
            "is set without key_file: client authentication needs both; add key_file = \"…\"",
        ),
        (None, Some(_)) => at.report(
            p,
            "key_file",
            "is set without cert_file: client authentication needs both; add cert_file = \"…\"",
        ),
        _ => {}
    }
    if !(1024..=MAX_MQTT_MESSAGE_BYTES).contains(&s.max_message_bytes.0) {
        at.report(
            p,
            "max_message_bytes",
            format!(
                "is {} bytes: write a size from \"1KiB\" to \"256MiB\"",
                s.max_message_bytes.0
            ),
        );
    }
    if s.sparkplug_max_names == 0 || s.sparkplug_max_names > 10_000_000 {
        at.report(
            p,
            "sparkplug_max_names",
            "must be 1 to 10000000 (each name takes about 100 bytes of memory)",
        );
    }
    if s.password.is_some() && !tls && !s.allow_plaintext_password {
        at.report(
            p,
            "password",
            "would cross the network in clear text over mqtt://: use mqtts://, or set allow_plaintext_password = true on a network you trust",
        );
    }
    if s.password.is_some() && s.username.is_none() {
        at.report(
            p,
            "password",
            "is set without username: add username = \"…\" or remove password",
        );
    }
    if let Some(client_id) = &s.client_id
        && client_id.is_empty()
    {
        at.report(
            p,
            "client_id",
            "is empty: remove it for the default iot-connector-<connector.id>-<source>, or name it",
        );
    }
    for (i, topic) in s.topics.iter().enumerate() {
        if topic.qos > 2 {
            at.report(
                p,
                &format!("topics.{i}.qos"),
                format!("is {}: use 0, 1 or 2", topic.qos),
            );
        }
        if let Some(problem) = topic_filter_problem(&topic.filter, s.mqtt_version) {
            at.report(p, &format!("topics.{i}.filter"), problem);
        }
        for (key, pointer) in [
            ("value_path", &topic.value_path),
            ("timestamp_path", &topic.timestamp_path),
        ] {
            let Some(pointer) = pointer else { continue };
            let rel = format!("topics.{i}.{key}");
            if topic.payload != PayloadFormat::Json {
                at.report(
                    p,
                    &rel,
                    "only applies to payload = \"json\": remove it or change payload",
                );
            } else if !pointer.is_empty() && !pointer.starts_with('/') {
                at.report(
                    p,
                    &rel,
                    format!(
                        "{pointer:?} is not a JSON pointer: start it with `/`, e.g. \"/{pointer}\""
                    ),
                );
            }
        }
    }
}

fn check_modbus(s: &ModbusSource, at: &At<'_, '_, '_, '_>, p: &mut Problems) {
    let serial = s.endpoint.starts_with("rtu://");
    if serial {
        let device = s.endpoint.trim_start_matches("rtu://");
        if !device.starts_with('/') || device.len() < 2 {
            at.report(p, "endpoint", format!("{:?} names no serial device: write rtu:///dev/ttyUSB0 (three slashes: the device path is absolute)", s.endpoint));
        }
    } else if let Some(problem) = network_url_problem(
        &s.endpoint,
        &["tcp", "rtu+tcp"],
        "tcp://HOST:PORT, rtu+tcp://HOST:PORT (RTU through a gateway) or rtu:///dev/DEVICE (serial)",
        "tcp://10.20.0.7:502",
    ) {
        at.report(p, "endpoint", problem);
    } else if parse_url(&s.endpoint).is_some_and(|url| !url.path.is_empty() && url.path != "/") {
        at.report(
            p,
            "endpoint",
            format!(
                "{:?} has a path: write tcp://HOST:PORT or rtu+tcp://HOST:PORT",
                s.endpoint
            ),
        );
    }
    for (key, set) in [
        ("baud_rate", s.baud_rate.is_some()),
        ("parity", s.parity.is_some()),
        ("data_bits", s.data_bits.is_some()),
        ("stop_bits", s.stop_bits.is_some()),
    ] {
        if set && !serial {
            at.report(
                p,
                key,
                "only applies to serial (rtu://) endpoints: remove it",
            );
        }
    }
    if s.baud_rate == Some(0) {
        at.report(
            p,
            "baud_rate",
            "is 0: use the device's line speed, e.g. 9600 or 19200",
        );
    }
    if let Some(bits) = s.data_bits.filter(|b| !matches!(b, 7 | 8)) {
        at.report(p, "data_bits", format!("is {bits}: use 7 or 8"));
    }
    if let Some(bits) = s.stop_bits.filter(|b| !matches!(b, 1 | 2)) {
        at.report(p, "stop_bits", format!("is {bits}: use 1 or 2"));
    }
    check_millis(at, p, "poll_interval_ms", s.poll_interval_ms);
    check_millis(at, p, "timeout_ms", s.timeout_ms);
    if s.enabled && s.registers.is_empty() {
        at.report(
            p,
            "endpoint",
            "the source has no registers: add registers = [ { name = ..., kind = ..., address = ... } ], or set enabled = false",
        );
    }
    let rtu = serial || s.endpoint.starts_with("rtu+tcp://");

    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, register) in s.registers.iter().enumerate() {
        let rel = |key: &str| format!("registers.{i}.{key}");
        if register.name.trim().is_empty() {
            at.report(
                p,
                &rel("name"),
                "is empty: name the tag, e.g. \"boiler_temp\"",
            );
        } else if let Some(first) = names.get(register.name.as_str()) {
            let line = p.line_of(at.span(&format!("registers.{first}.name")).start);
            at.report(p, &rel("name"), format!("{:?} is already used by the register on line {line}: give each register of a source its own name", register.name));
        } else {
            names.insert(&register.name, i);
        }
        let bits = matches!(register.kind, RegisterKind::Coil | RegisterKind::Discrete);
        if bits && register.data_type != DataType::Bool {
            let rel = if at.written(&rel("data_type")) {
                rel("data_type")
            } else {
                rel("kind")
            };
            at.report(
                p,
                &rel,
                format!(
                    "a {} is a single bit: set data_type = \"bool\"",
                    if register.kind == RegisterKind::Coil {
                        "coil"
                    } else {
                        "discrete input"
                    }
                ),
            );
        }
        match (register.data_type, register.length) {
            (DataType::String, None) => at.report(
                p,
                &rel("data_type"),
                "\"string\" needs `length`, the number of registers it spans: add length = N",
            ),
            (DataType::String, Some(0)) => at.report(
                p,
                &rel("length"),
                "is 0: a string spans at least one register",
            ),
            (DataType::String, Some(n)) if n > RegisterKind::Holding.max_read() => at.report(
                p,
                &rel("length"),
                format!(
                    "is {n}: one Modbus read returns at most {} registers",
                    RegisterKind::Holding.max_read()
                ),
            ),
            (DataType::String, Some(_)) | (_, None) => {}
            (_, Some(_)) => at.report(
                p,
                &rel("length"),
                "only applies to data_type = \"string\": remove it",
            ),
        }
        let count = register.data_type.register_count(register.length);
        if count > 0 {
            let last = u32::from(register.address) + u32::from(count) - 1;
            if last > u32::from(u16::MAX) {
                at.report(p, &rel("address"), format!("{} plus {count} registers ends at {last}, past the last address 65535: lower the address", register.address));
            }
        }
        check_finite(at, p, &rel("scale"), register.scale, false);
        check_finite(at, p, &rel("offset"), register.offset, false);
        if let Some(deadband) = register.deadband {
            check_finite(at, p, &rel("deadband"), deadband, true);
        }
        if let Some(ms) = register.poll_interval_ms {
            check_millis(at, p, &rel("poll_interval_ms"), ms);
        }
        if let Some(ms) = register.heartbeat_ms {
            check_millis(at, p, &rel("heartbeat_ms"), ms);
        }
        if rtu && !RTU_UNIT_IDS.contains(&register.unit_id) {
            at.report(
                p,
                &if at.written(&rel("unit_id")) {
                    rel("unit_id")
                } else {
                    rel("name")
                },
                format!(
                    "unit_id {} is not an RTU slave address: use 1 to 247 (0 is broadcast, which answers nothing)",
                    register.unit_id
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        assert_eq!(
            parse_url("opc.tcp://10.0.0.1:4840/UA/Server"),
            Some(Url {
                scheme: "opc.tcp",
                userinfo: false,
                host: "10.0.0.1",
                port: Some("4840"),
                path: "/UA/Server"
            })
        );
        assert_eq!(
            parse_url("mqtts://[::1]:8883"),
            Some(Url {
                scheme: "mqtts",
                userinfo: false,
                host: "::1",
                port: Some("8883"),
                path: ""
            })
        );
        assert_eq!(
            parse_url("rtu:///dev/ttyUSB0"),
            Some(Url {
                scheme: "rtu",
                userinfo: false,
                host: "",
                port: None,
                path: "/dev/ttyUSB0"
            })
        );
        assert_eq!(parse_url("10.0.0.1:502"), None);
    }

    #[test]
    fn endpoint_urls_are_checked() {
        assert_eq!(network_url_problem("tcp://plc:502", &["tcp"], "", ""), None);
        assert_eq!(network_url_problem("tcp://plc", &["tcp"], "", ""), None);
        assert!(network_url_problem("tcp://plc:0", &["tcp"], "", "").is_some());
        assert!(network_url_problem("tcp://plc:99999", &["tcp"], "", "").is_some());
        assert!(network_url_problem("tcp://:502", &["tcp"], "", "").is_some());
        assert!(network_url_problem("tcp://u:p@plc:502", &["tcp"], "", "").is_some());
        assert!(network_url_problem("udp://plc:502", &["tcp"], "", "").is_some());
        assert!(
            https_problem("http://x", "")
                .unwrap()
                .contains("client secret")
        );
        assert_eq!(https_problem("https://x.cloud.databricks.com", ""), None);
    }

    #[test]
    fn topic_filters_are_checked() {
        let v3 = MqttVersion::V311;
        assert_eq!(topic_filter_problem("plant/+/temp/#", v3), None);
        assert_eq!(topic_filter_problem("#", v3), None);
        assert_eq!(topic_filter_problem("$SYS/#", v3), None);
        assert!(topic_filter_problem("a/#/b", v3).is_some());
        assert!(topic_filter_problem("a/b#", v3).is_some());
        assert!(topic_filter_problem("a/+b", v3).is_some());
        assert!(topic_filter_problem("", v3).is_some());
        assert!(
            topic_filter_problem("$share/g/a/#", v3)
                .unwrap()
                .contains("mqtt_version")
        );
        assert_eq!(topic_filter_problem("$share/g/a/#", MqttVersion::V5), None);
        assert!(topic_filter_problem("$share//a", MqttVersion::V5).is_some());
    }

    #[test]
    fn table_names_have_three_parts() {
        assert!(is_table_name("iot.bronze.opcua_events"));
        assert!(!is_table_name("bronze.opcua_events"));
        assert!(!is_table_name("iot.bronze.opcua-events"));
        assert!(!is_table_name("iot..x"));
    }
}
