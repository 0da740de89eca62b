//! From text to a [`Loaded`] config, collecting every problem on the way.
//!
//! 1. Parse with spans (`toml::de::DeTable`); syntax errors end it here (all of them reported).
//! 2. Expand `${ENV}` in every string value, except secrets.
//! 3. Work out the directories (state, runtime, key file), which `enc:` secrets need.
//! 4. Resolve secrets (`file:`, `credential:`, `enc:`, `${ENV}`, literal) in the tree.
//! 5. Deserialize section by section and source by source, so one problem does not hide another.
//!    Within a part, a bad key or element is cut out and the part deserialized again, so that
//!    all its unknown keys and bad values are reported too.
//! 6. Check what serde cannot (`validate`), read the files the config names, check that every slice reads back.

use std::borrow::Cow;
use std::fs;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

use crate::expand::expand;
use crate::problems::{
    ConfigErrors, Problems, SerdeProblem, closest, explain_serde, one_of_values,
};
use crate::secrets::{self, KEY_LEN};
use crate::tree::{self, Hit, Seg, Value};
use crate::{Config, Connector, Http, Loaded, Protocol, Source, SpoolConfig, Zerobus, validate};

/// Larger than any sensible config; a guard against pointing `--config` at the wrong file.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest `file:`/`credential:` secret.
const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Rounds of cutting out a bad key and deserializing a part again.
const MAX_ROUNDS: usize = 64;

/// The top-level sections, in the order the README and the examples list them.
pub(crate) const SECTIONS: [&str; 5] = ["connector", "http", "zerobus", "spool", "sources"];
/// The values `protocol` takes.
pub(crate) fn protocol_keys() -> [&'static str; Protocol::ALL.len()] {
    Protocol::ALL.map(Protocol::key)
}

/// What the checks need to know about the world outside the file.
pub(crate) struct Ctx<'e> {
    pub(crate) env: &'e dyn Fn(&str) -> Option<String>,
    pub(crate) cwd: Option<PathBuf>,
    /// The config file's directory: the base of relative paths in it.
    pub(crate) base_dir: PathBuf,
    /// `source "name"` (or `sources[i]`) per `[[sources]]` entry, for messages.
    labels: Vec<String>,
}

impl Ctx<'_> {
    /// A path from the file, absolute.
    pub(crate) fn absolute(&self, path: &str) -> PathBuf {
        clean(&self.base_dir.join(path))
    }

    /// `[section] a.b[2]` or `source "name" registers[2].kind` for a path from the root.
    pub(crate) fn place(&self, path: &[Seg]) -> String {
        let (label, rest) = match path {
            [] => return "top level".into(),
            [Seg::Key(sources), Seg::Index(i), rest @ ..] if sources == "sources" => (
                self.labels
                    .get(*i)
                    .cloned()
                    .unwrap_or_else(|| format!("sources[{i}]")),
                rest,
            ),
            [Seg::Key(section), rest @ ..] => (format!("[{section}]"), rest),
            [Seg::Index(i), rest @ ..] => (format!("[{i}]"), rest),
        };
        if rest.is_empty() {
            label
        } else {
            format!("{label} {}", tree::display(rest))
        }
    }
}

/// `a/./b` → `a/b`.
fn clean(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The directories every process agrees on.
#[derive(Debug)]
pub(crate) struct Dirs {
    pub(crate) state_dir: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// Reads at most `limit` bytes of a file; a longer file is an error.
pub(crate) fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes; is it the right file?"),
        ));
    }
    Ok(bytes)
}

pub(crate) fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let bytes = match read_limited(path, MAX_CONFIG_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => {
            let mut p = Problems::new(path, "");
            p.at_line(
                0,
                format!("cannot read the config file: {e}; check the path given to --config and its permissions"),
            );
            return Err(p.into_errors());
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => parse(path, &text, env),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(e.as_bytes().get(..valid).unwrap_or_default());
            let mut p = Problems::new(path, &prefix);
            p.at(
                valid,
                format!("the file is not UTF-8 text (byte {valid}): save it as UTF-8"),
            );
            Err(p.into_errors())
        }
    }
}

/// Parses the TOML with positions and prepares the context every later step needs; `None` after
/// syntax errors (they are in `p`).
fn syntax_tree<'i, 'e>(
    path: &Path,
    text: &'i str,
    env: &'e dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<(Value<'i>, Ctx<'e>)> {
    let cwd = std::env::current_dir().ok();
    let base_dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => match &cwd {
            Some(cwd) => clean(&cwd.join(dir)),
            None => dir.to_owned(),
        },
        None => cwd.clone().unwrap_or_default(),
    };

    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let span = e.span().unwrap_or_default();
            let message = e.message().trim().replace('\n', "; ");
            let message = match text.get(span.clone()) {
                Some(key) if message.starts_with("duplicate key") => {
                    format!("`{key}` is set twice in the same table: keep one")
                }
                _ => format!("TOML syntax error: {message}; fix the syntax (https://toml.io)"),
            };
            p.at(span.start, message);
        }
        return None;
    }
    let span = table.span();
    let root: Value<'_> = Spanned::new(span, DeValue::Table(table.into_inner()));
    let ctx = Ctx {
        env,
        cwd,
        base_dir,
        labels: source_labels(&root),
    };
    Some((root, ctx))
}

/// Where the running supervisor's sockets are, from `[connector] runtime_dir` alone: operator
/// commands must reach a running connector even when the rest of the file is being edited.
pub(crate) fn runtime_dir(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, ConfigErrors> {
    let text = read_limited(path, MAX_CONFIG_BYTES)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| {
            let mut p = Problems::new(path, "");
            p.at_line(
                0,
                format!("cannot read the config file: {e}; check the path given to --config"),
            );
            p.into_errors()
        })?;
    let mut p = Problems::new(path, &text);
    let Some((mut root, ctx)) = syntax_tree(path, &text, env, &mut p) else {
        return Err(p.into_errors());
    };
    expand_values(&mut root, &ctx, &mut p);
    Ok(directories(&root, &ctx, &mut p).runtime_dir)
}

/// The keys the running supervisor takes only at its start, with their values as an operator
/// reads them.
fn restart_keys(loaded: &Loaded) -> [(&'static str, String); 7] {
    let connector = &loaded.config.connector;
    [
        (
            "connector.state_dir",
            loaded.state_dir.display().to_string(),
        ),
        (
            "connector.runtime_dir",
            loaded.runtime_dir.display().to_string(),
        ),
        (
            "connector.bin_dir",
            loaded.bin_dir().map_or_else(
                || "next to iot-connector".to_owned(),
                |dir| dir.display().to_string(),
            ),
        ),
        ("connector.log_level", connector.log_level.clone()),
        (
            "connector.log_format",
            format!("{:?}", connector.log_format).to_lowercase(),
        ),
        ("http.listen", loaded.config.http.listen.clone()),
        (
            "http.degraded_after",
            String::from(loaded.config.http.degraded_after),
        ),
    ]
}

pub(crate) fn restart_needed(running: &Loaded, new: &Loaded) -> Result<(), ConfigErrors> {
    let changed: Vec<_> = restart_keys(running)
        .into_iter()
        .zip(restart_keys(new))
        .filter(|((_, old), (_, new))| old != new)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    // The positions come from the file as it is now; it was read a moment ago.
    let text = read_limited(&new.path, MAX_CONFIG_BYTES)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let mut p = Problems::new(&new.path, &text);
    let mut positions = Problems::new(&new.path, &text);
    let root = syntax_tree(&new.path, &text, &|_| None, &mut positions).map(|(root, _)| root);
    for ((key, old), (_, value)) in changed {
        let message = format!(
            "`{key}` changed from {old:?} to {value:?}: the running connector takes it only at a restart (`systemctl restart iot-connector`); nothing was reloaded, put the old value back to reload the rest"
        );
        match &root {
            Some(root) => p.at(
                tree::span_or_ancestor(root, &tree::path(key)).start,
                message,
            ),
            None => p.at_line(0, message),
        }
    }
    Err(p.into_errors())
}

pub(crate) fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let mut p = Problems::new(path, text);
    let Some((mut root, ctx)) = syntax_tree(path, text, env, &mut p) else {
        return Err(p.into_errors());
    };
    expand_values(&mut root, &ctx, &mut p);
    let dirs = directories(&root, &ctx, &mut p);
    resolve_secrets(&mut root, &ctx, &dirs, &mut p);
    let parts = Parts::deserialize(&root, &ctx, &mut p);
    let checked = validate::check(&root, &parts, &ctx, &dirs, &mut p);

    let (Some(connector), Some(http), Some(zerobus), Some(spool)) =
        (parts.connector, parts.http, parts.zerobus, parts.spool)
    else {
        return Err(p.into_errors());
    };
    let Some(sources) = parts.sources.into_iter().collect::<Option<Vec<Source>>>() else {
        return Err(p.into_errors());
    };
    let mut config = Config {
        connector,
        http,
        zerobus,
        spool,
        sources,
    };
    absolute_paths(&mut config, &ctx);
    check_slices(&root, &config, &ctx, &mut p);
    match checked {
        Some(checked) if p.is_empty() => Ok(Loaded {
            config,
            path: path.to_owned(),
            state_dir: dirs.state_dir,
            runtime_dir: dirs.runtime_dir,
            ca_pem: checked.ca_pem,
            listen: checked.listen,
        }),
        _ => Err(p.into_errors()),
    }
}

fn source_labels(root: &Value<'_>) -> Vec<String> {
    let Some(DeValue::Array(sources)) =
        tree::get(root, &tree::path("sources")).map(|v| v.get_ref())
    else {
        return Vec::new();
    };
    (0..sources.len())
        .map(
            |i| match tree::string(root, &tree::path(&format!("sources.{i}.name"))) {
                Some(name) => format!("source {name:?}"),
                None => format!("sources[{i}]"),
            },
        )
        .collect()
}

/// Keys whose value is a [`crate::Secret`]: resolved by `resolve_secrets`, not expanded here.
fn is_secret(path: &[Seg]) -> bool {
    let key = match path.last() {
        Some(Seg::Key(key)) => key.as_str(),
        _ => return false,
    };
    key == "password"
        || key == "client_secret"
        || key.ends_with("_password")
        || key.ends_with("_secret")
        || key.ends_with("_token")
        || matches!(path, [Seg::Key(z), Seg::Key(id)] if z == "zerobus" && id == "client_id")
}

fn expand_values(root: &mut Value<'_>, ctx: &Ctx<'_>, p: &mut Problems) {
    tree::for_each_string_mut(root, &mut |path, span, value| {
        if is_secret(path) {
            return;
        }
        match expand(value, ctx.env) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(expanded)) => *value = Cow::Owned(expanded),
            Err(errors) => {
                for e in errors {
                    p.at(span.start, e.explain(&ctx.place(path)));
                }
                p.taint(span);
            }
        }
    });
}

fn directories(root: &Value<'_>, ctx: &Ctx<'_>, p: &mut Problems) -> Dirs {
    let mut dir = |key: &str, var: &str, default: &str| -> PathBuf {
        let path = tree::path(key);
        if let Some(value) = tree::string(root, &path) {
            if value.trim().is_empty() {
                let span = tree::span_or_ancestor(root, &path);
                p.at_value(
                    &span,
                    format!(
                        "{}: is empty: remove it to use the default",
                        ctx.place(&path)
                    ),
                );
            }
            return ctx.absolute(value);
        }
        let base = match (ctx.env)(var).filter(|v| !v.is_empty()) {
            Some(from_env) => PathBuf::from(from_env),
            None => PathBuf::from(default),
        };
        match &ctx.cwd {
            Some(cwd) => clean(&cwd.join(base)),
            None if base.is_absolute() => base,
            None => {
                p.at_line(
                    0,
                    format!(
                        "cannot find the working directory to place {}: set {key}",
                        base.display()
                    ),
                );
                base
            }
        }
    };
    let state_dir = dir("connector.state_dir", "STATE_DIRECTORY", "state");
    let runtime_dir = dir("connector.runtime_dir", "RUNTIME_DIRECTORY", "run");
    let key_file = match tree::string(root, &tree::path("spool.key_file")) {
        Some(file) => ctx.absolute(file),
        None => state_dir.join("keys").join("spool.key"),
    };
    Dirs {
        state_dir,
        runtime_dir,
        key_file,
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let bytes = read_limited(path, MAX_SECRET_BYTES).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Resolves one secret as written; every error message already names the place and the fix.
fn resolve_secret(
    raw: &str,
    place: &str,
    ctx: &Ctx<'_>,
    dirs: &Dirs,
    key: &mut Option<Result<[u8; KEY_LEN], String>>,
) -> Result<String, Vec<String>> {
    if let Some(file) = raw.strip_prefix("file:") {
        let file = expand(file, ctx.env)
            .map_err(|errors| errors.iter().map(|e| e.explain(place)).collect::<Vec<_>>())?;
        let path = ctx.absolute(&file);
        return read_secret_file(&path).map_err(|e| {
            vec![format!(
                "{place}: cannot read secret file {}: {e}; check the path and that the service user may read it",
                path.display()
            )]
        });
    }
    if let Some(name) = raw.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(vec![format!(
                "{place}: `credential:{name}` is not a credential name: write the NAME of LoadCredential=NAME:… in the unit"
            )]);
        }
        let Some(dir) = (ctx.env)("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
            return Err(vec![format!(
                "{place}: `credential:{name}` needs $CREDENTIALS_DIRECTORY, which systemd sets when the unit has LoadCredential={name}:/path; outside systemd use file:PATH"
            )]);
        };
        let path = Path::new(&dir).join(name);
        return read_secret_file(&path).map_err(|e| {
            vec![format!(
                "{place}: cannot read credential {name} ({}): {e}; check LoadCredential={name}:… in the unit",
                path.display()
            )]
        });
    }
    if raw.starts_with(secrets::SEALED_PREFIX) {
        let key =
            key.get_or_insert_with(|| secrets::read_key(&dirs.key_file).map_err(|e| e.to_string()));
        return match key {
            Ok(key) => secrets::open_with(key, raw).map_err(|e| vec![format!("{place}: {e}")]),
            Err(e) => Err(vec![format!("{place}: cannot open the enc: value: {e}")]),
        };
    }
    expand(raw, ctx.env)
        .map(Cow::into_owned)
        .map_err(|errors| errors.iter().map(|e| e.explain_secret(place)).collect())
}

fn resolve_secrets(root: &mut Value<'_>, ctx: &Ctx<'_>, dirs: &Dirs, p: &mut Problems) {
    let mut key = None;
    tree::for_each_string_mut(root, &mut |path, span, value| {
        if !is_secret(path) {
            return;
        }
        match resolve_secret(value, &ctx.place(path), ctx, dirs, &mut key) {
            Ok(resolved) => *value = Cow::Owned(resolved),
            Err(messages) => {
                for message in messages {
                    p.at(span.start, message);
                }
                p.taint(span);
            }
        }
    });
}

/// The typed sections; `None` where a section had problems.
pub(crate) struct Parts {
    pub(crate) connector: Option<Connector>,
    pub(crate) http: Option<Http>,
    pub(crate) zerobus: Option<Option<Zerobus>>,
    pub(crate) spool: Option<SpoolConfig>,
    /// One per `[[sources]]` entry, in file order.
    pub(crate) sources: Vec<Option<Source>>,
}

impl Parts {
    fn deserialize(root: &Value<'_>, ctx: &Ctx<'_>, p: &mut Problems) -> Self {
        if let DeValue::Table(table) = root.get_ref() {
            for (key, _) in table.iter() {
                let key_name: &str = key.get_ref();
                if !SECTIONS.contains(&key_name) {
                    let hint = closest(key_name, &SECTIONS)
                        .map(|near| format!("did you mean `{near}`? "))
                        .unwrap_or_default();
                    p.at(
                        key.span().start,
                        format!(
                            "unknown top-level key `{key_name}`: {hint}every key belongs in [connector], [http], [zerobus], [spool] or a [[sources]] entry"
                        ),
                    );
                }
            }
        }
        let section = |name: &str| tree::get(root, &tree::path(name));
        let connector = match section("connector") {
            Some(value) => part(value, &tree::path("connector"), ctx, p),
            None => {
                p.at_line(
                    1,
                    "missing section [connector]: add it, with at least `id = \"…\"` (the connector's name, part of every record_id)",
                );
                None
            }
        };
        let http = match section("http") {
            Some(value) => part(value, &tree::path("http"), ctx, p),
            None => Some(Http::default()),
        };
        let zerobus = match section("zerobus") {
            Some(value) => part(value, &tree::path("zerobus"), ctx, p).map(Some),
            None => Some(None),
        };
        let spool = match section("spool") {
            Some(value) => part(value, &tree::path("spool"), ctx, p),
            None => Some(SpoolConfig::default()),
        };
        let sources = match section("sources") {
            None => Vec::new(),
            Some(value) => match value.get_ref() {
                DeValue::Array(entries) => entries
                    .iter()
                    .enumerate()
                    .map(|(i, entry)| source(entry, i, ctx, p))
                    .collect(),
                _ => {
                    p.at(
                        value.span().start,
                        "`sources` must be a list of tables: write each source as a [[sources]] table",
                    );
                    vec![None]
                }
            },
        };
        Self {
            connector,
            http,
            zerobus,
            spool,
            sources,
        }
    }
}

fn source(entry: &Value<'_>, i: usize, ctx: &Ctx<'_>, p: &mut Problems) -> Option<Source> {
    let at = tree::path(&format!("sources.{i}"));
    let place = ctx.place(&at);
    let DeValue::Table(table) = entry.get_ref() else {
        p.at(
            entry.span().start,
            format!("{place}: each source must be a table: write it as a [[sources]] table"),
        );
        return None;
    };
    let protocol = match table.get("protocol") {
        None => {
            p.at(
                entry.span().start,
                format!(
                    "{place}: missing required key `protocol`: add protocol = {}",
                    one_of_values(&protocol_keys())
                ),
            );
            return None;
        }
        Some(value) => match value.get_ref() {
            DeValue::String(key) if let Some(protocol) = Protocol::from_key(key) => protocol,
            DeValue::String(protocol) => {
                let hint = closest(protocol, &protocol_keys())
                    .map(|near| format!("did you mean \"{near}\"? "))
                    .unwrap_or_default();
                p.at_value(
                    &value.span(),
                    format!(
                        "{place} protocol: \"{protocol}\" is not a protocol: {hint}use {}",
                        one_of_values(&protocol_keys())
                    ),
                );
                return None;
            }
            _ => {
                p.at(
                    value.span().start,
                    format!(
                        "{place} protocol: write it as a string: {}",
                        one_of_values(&protocol_keys())
                    ),
                );
                return None;
            }
        },
    };
    // The inner struct denies unknown keys with their spans, which the internally tagged enum
    // would lose; so the tag is taken off here and the struct deserialized directly.
    let mut inner = entry.clone();
    tree::remove(&mut inner, &tree::path("protocol"));
    match protocol {
        Protocol::Opcua => part(&inner, &at, ctx, p).map(Source::Opcua),
        Protocol::Mqtt => part(&inner, &at, ctx, p).map(Source::Mqtt),
        Protocol::Modbus => part(&inner, &at, ctx, p).map(Source::Modbus),
    }
}

/// Deserializes one part (a section or a source), reporting all its problems: after each error
/// the offending key, or the list element containing it, is cut out and the part tried again.
/// `Some` only if the part had no problem at all.
fn part<T: DeserializeOwned>(
    original: &Value<'_>,
    at: &[Seg],
    ctx: &Ctx<'_>,
    p: &mut Problems,
) -> Option<T> {
    if !matches!(original.get_ref(), DeValue::Table(_)) {
        let hint = match at {
            [Seg::Key(section)] => format!(": write it as [{section}] followed by its keys"),
            _ => String::new(),
        };
        p.at(
            original.span().start,
            format!("{} must be a single table{hint}", ctx.place(at)),
        );
        return None;
    }
    let mut value = original.clone();
    let mut clean = true;
    // Keys cut out of the original, and the keys that unknown keys are likely typos of: their
    // absence is not reported as well.
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    let mut missing_key = None;
    for _ in 0..MAX_ROUNDS {
        let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(typed) => return clean.then_some(typed),
            Err(error) => error,
        };
        clean = false;
        let span: Range<usize> = error.span().unwrap_or_else(|| value.span());
        if span.start >= PLACEHOLDER.start {
            // A stand-in for a missing key did not fit after all; its absence is reported.
            return None;
        }
        // Spans do not change when elements are cut out, so the place is named by its path in
        // the original (the file's numbering) and cut out by its path in the current value.
        let (here, is_key) = split_hit(tree::locate(original, &span));
        let table_path = if is_key {
            here.get(..here.len().saturating_sub(1)).unwrap_or_default()
        } else {
            &here[..]
        };
        let full: Vec<Seg> = at.iter().chain(table_path).cloned().collect();
        match explain_serde(error.message(), &ctx.place(&full)) {
            SerdeProblem::UnknownKey { near, message, .. } => {
                if let Some(near) = near {
                    let mut meant: Vec<Seg> = table_path.to_vec();
                    meant.push(Seg::Key(near));
                    removed.push(meant);
                }
                p.at(span.start, message);
            }
            SerdeProblem::MissingKey { key, message } => {
                let mut missing = here.clone();
                missing.push(Seg::Key(key.clone()));
                if !removed.contains(&missing) {
                    p.at(span.start, message);
                }
                missing_key = Some(key);
            }
            SerdeProblem::BadValue { message } => {
                if is_secret(&full) {
                    // Serde quotes the value it found; a secret's must not be shown.
                    p.at_value(&span, format!("{}: write the secret as a string: the value, \"${{NAME}}\", \"file:PATH\", \"credential:NAME\" or \"enc:…\"", ctx.place(&full)));
                } else {
                    p.at_value(&span, message);
                }
            }
        }
        let (current, is_key) = split_hit(tree::locate(&value, &span));
        if let Some(key) = missing_key.take() {
            // Serde names one missing key at a time: stand one in, to hear of the next.
            if let Some(filled) = stand_in::<T>(&value, &current, &key) {
                value = filled;
                continue;
            }
        }
        let target = cut_target(current, is_key);
        if target.is_empty() || !tree::remove(&mut value, &target) {
            return None;
        }
        removed.push(cut_target(here, is_key));
    }
    None
}

/// The span given to stand-ins for missing keys: past the end of any file.
const PLACEHOLDER: Range<usize> = usize::MAX / 2..usize::MAX / 2;

/// `value` with `key` added to the table at `table` as the first stand-in value that
/// deserializes there, if any does.
fn stand_in<'i, T: DeserializeOwned>(
    value: &Value<'i>,
    table: &[Seg],
    key: &str,
) -> Option<Value<'i>> {
    let candidates = [
        DeValue::String(Cow::Borrowed("")),
        DeValue::Integer(Default::default()),
        DeValue::Boolean(false),
        DeValue::Array(DeArray::new()),
        DeValue::Table(DeTable::new()),
    ];
    for candidate in candidates {
        let mut filled = value.clone();
        if !tree::insert(
            &mut filled,
            table,
            key,
            Spanned::new(PLACEHOLDER, candidate),
        ) {
            return None;
        }
        match T::deserialize(ValueDeserializer::from(filled.clone())) {
            Err(e) if e.span() == Some(PLACEHOLDER) => {}
            _ => return Some(filled),
        }
    }
    None
}

fn split_hit(hit: Option<Hit>) -> (Vec<Seg>, bool) {
    match hit {
        Some(Hit::Key(path)) => (path, true),
        Some(Hit::Value(path)) => (path, false),
        None => (Vec::new(), false),
    }
}

/// What to cut out after an error: an unknown key itself; for a bad value, the list element
/// containing it (a register, a topic, …), else the key.
fn cut_target(path: Vec<Seg>, is_key: bool) -> Vec<Seg> {
    if is_key {
        return path;
    }
    match path.iter().rposition(|seg| matches!(seg, Seg::Index(_))) {
        Some(last_index) => path.get(..=last_index).unwrap_or_default().to_vec(),
        None => path,
    }
}

/// Every path-valued key, absolute (relative ones are relative to the config file).
fn absolute_paths(config: &mut Config, ctx: &Ctx<'_>) {
    let fix = |path: &mut Option<String>| {
        if let Some(p) = path.as_mut() {
            *p = ctx.absolute(p).to_string_lossy().into_owned();
        }
    };
    fix(&mut config.connector.state_dir);
    fix(&mut config.connector.runtime_dir);
    fix(&mut config.connector.bin_dir);
    fix(&mut config.spool.key_file);
    if let Some(zerobus) = config.zerobus.as_mut() {
        fix(&mut zerobus.ca_file);
    }
    for source in &mut config.sources {
        match source {
            Source::Mqtt(mqtt) => {
                fix(&mut mqtt.ca_file);
                fix(&mut mqtt.cert_file);
                fix(&mut mqtt.key_file);
            }
            Source::Opcua(opcua) => {
                fix(&mut opcua.user_certificate_file);
                fix(&mut opcua.user_private_key_file);
            }
            Source::Modbus(_) => {}
        }
    }
}

/// Checks that each source reads back from its slice as the same source in its worker (a NaN,
/// which equals nothing, does not).
fn check_slices(root: &Value<'_>, config: &Config, ctx: &Ctx<'_>, p: &mut Problems) {
    for (i, source) in config.sources.iter().enumerate() {
        let problem = match Source::from_slice(&source.to_slice()) {
            Ok(back) if back == *source => continue,
            Ok(_) => "it reads back differently".to_owned(),
            Err(e) => e.to_string(),
        };
        let at = tree::path(&format!("sources.{i}"));
        p.at(
            tree::span_or_ancestor(root, &at).start,
            format!(
                "{}: cannot be passed to its worker ({problem}); check its numbers are finite",
                ctx.place(&at)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_recognised() {
        for (path, secret) in [
            ("zerobus.client_id", true),
            ("zerobus.client_secret", true),
            ("sources.0.password", true),
            ("sources.0.client_id", false),
            ("sources.0.username", false),
            ("sources.0.api_token", true),
        ] {
            assert_eq!(is_secret(&tree::path(path)), secret, "{path}");
        }
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(
            clean(Path::new("/etc/x/./state")),
            PathBuf::from("/etc/x/state")
        );
    }
}
