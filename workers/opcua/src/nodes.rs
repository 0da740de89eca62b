//! Which nodes to monitor: node references as operators write them, their resolution on the
//! server, browse discovery, and the monitored-item requests grouped by publishing interval.
//!
//! Node references (`node_id` in `nodes`, `root` in `browse`):
//! - `ns=<index>;<i|s|g|b>=<id>` (and `i=85`, namespace 0): as the server numbers it.
//! - `nsu=<namespace URI>;<i|s|g|b>=<id>`: the index is looked up in the server's namespace
//!   array after each connect, so it survives a server that renumbers its namespaces.
//! - A browse path: `/` followed by browse names from the Objects folder, `/Plant/Line1/Speed`;
//!   a segment may be qualified with a namespace index, `/2:Plant/2:Line1`. The `browse_path`
//!   column uses the same form, so a column value can be pasted into the config.
//!
//! Browse discovery walks hierarchical references (except properties) from its root through
//! objects and folders, `max_depth` levels deep, and takes the variables whose browse name (or,
//! for a pattern with `/`, whose browse path) matches one of the `include` globs (`*`, `?`), up
//! to `max_nodes`; standard-namespace children (ns=0, e.g. the Server object) are not entered.
//! What it found, took and skipped is logged with counts.
//!
//! The parsing, globbing, grouping and request building are sans-IO and unit-tested; the
//! functions taking a [`Session`] only ask the server.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use iot_connector_config::{OpcuaBrowse, OpcuaNode, OpcuaSource};
use opcua::{
    client::Session,
    types::{
        AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString,
        DataChangeFilter, DataChangeTrigger, DeadbandType, ExtensionObject,
        MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeClass, NodeId,
        ObjectId, QualifiedName, ReadValueId, ReferenceDescription, ReferenceTypeId,
        TimestampsToReturn, VariableId, Variant,
    },
};
use tracing::{error, info, warn};

/// Requests carry at most this many nodes (servers limit operations per request).
const CHUNK: usize = 500;
/// How far up the inverse walk for a node's browse path goes.
const MAX_PATH_DEPTH: usize = 16;

/// The namespace part of a node reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// `ns=<index>`.
    Index(u16),
    /// `nsu=<uri>`.
    Uri(String),
}

/// One segment of a browse path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The namespace index, when the segment is qualified (`2:Name`).
    pub namespace: Option<u16>,
    /// The browse name.
    pub name: String,
}

/// A node reference as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// A node id in either namespace form; `identifier` keeps its `i=`/`s=`/`g=`/`b=` prefix.
    Id {
        /// Where the namespace comes from.
        namespace: Namespace,
        /// `s=Line1.Speed`, `i=1001`, ….
        identifier: String,
    },
    /// A browse path from the Objects folder.
    Path(Vec<Segment>),
}

impl NodeRef {
    /// Parses a configured reference; the error says what is wrong and how it should look.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix('/') {
            let segments: Vec<Segment> = path
                .split('/')
                .map(|raw| match raw.split_once(':') {
                    Some((ns, name))
                        if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        ns.parse().map(|ns| Segment {
                            namespace: Some(ns),
                            name: name.to_owned(),
                        })
                    }
                    _ => Ok(Segment {
                        namespace: None,
                        name: raw.to_owned(),
                    }),
                })
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{text:?}: a namespace index is 0..=65535"))?;
            if segments.iter().any(|s| s.name.is_empty()) {
                return Err(format!(
                    "{text:?} has an empty browse name: write /Folder/Object/Variable"
                ));
            }
            return Ok(Self::Path(segments));
        }
        let (namespace, identifier) = if let Some(rest) = text.strip_prefix("nsu=") {
            let (uri, identifier) = rest.split_once(';').ok_or_else(|| {
                format!("{text:?} has no identifier: write nsu=<namespace URI>;s=<name>")
            })?;
            if uri.is_empty() {
                return Err(format!("{text:?} has an empty namespace URI"));
            }
            let uri = uri
                .replace("%3b", ";")
                .replace("%3B", ";")
                .replace("%25", "%");
            (Namespace::Uri(uri), identifier)
        } else if let Some(rest) = text.strip_prefix("ns=") {
            let (index, identifier) = rest
                .split_once(';')
                .ok_or_else(|| format!("{text:?} has no identifier: write ns=<index>;s=<name>"))?;
            let index = index
                .parse()
                .map_err(|_| format!("{text:?}: the namespace index is a number 0..=65535"))?;
            (Namespace::Index(index), identifier)
        } else {
            (Namespace::Index(0), text)
        };
        let valid = ["i=", "s=", "g=", "b="]
            .iter()
            .any(|p| identifier.starts_with(p) && identifier.len() > 2);
        if !valid {
            return Err(format!(
                "{text:?} is not a node id (ns=2;s=Name, nsu=urn:…;i=42) or a browse path (/Plant/Line1/Speed)"
            ));
        }
        Ok(Self::Id {
            namespace,
            identifier: identifier.to_owned(),
        })
    }

    /// The server's node id, for an id reference, given the server's namespace array.
    pub fn node_id(&self, namespaces: &[String]) -> Result<Option<NodeId>, String> {
        let Self::Id {
            namespace,
            identifier,
        } = self
        else {
            return Ok(None);
        };
        let index = match namespace {
            Namespace::Index(i) => *i,
            Namespace::Uri(uri) => namespaces
                .iter()
                .position(|n| n == uri)
                .and_then(|i| u16::try_from(i).ok())
                .ok_or_else(|| format!("the server has no namespace {uri:?}"))?,
        };
        format!("ns={index};{identifier}")
            .parse::<NodeId>()
            .map(Some)
            .map_err(|e| format!("not a valid node id: {e}"))
    }
}

/// `true` when `text` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                backtrack = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    pi = bp + 1;
                    ti = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Whether a discovered variable is wanted by a rule's `include` list.
pub fn included(include: &[String], name: &str, path: &str) -> bool {
    include.is_empty()
        || include.iter().any(|pattern| {
            if pattern.contains('/') {
                glob_match(pattern, path)
            } else {
                glob_match(pattern, name)
            }
        })
}

/// The server-side queue size that holds two publishing intervals of samples.
pub fn default_queue_size(publishing_ms: u64, sampling_ms: u64) -> u32 {
    let per_publish = publishing_ms.div_ceil(sampling_ms.max(1));
    u32::try_from(per_publish.saturating_mul(2).clamp(2, 10_000)).unwrap_or(10_000)
}

/// A deadband filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// In the value's units.
    Absolute(f64),
    /// In percent of the node's EURange.
    Percent(f64),
}

/// How one node is to be monitored.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitoring {
    /// Sampling interval.
    pub sampling_ms: u64,
    /// Publishing interval of its subscription.
    pub publishing_ms: u64,
    /// Server-side queue size.
    pub queue_size: u32,
    /// Deadband filter.
    pub deadband: Option<Deadband>,
}

/// A configured node, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The reference as written.
    pub text: String,
    /// Parsed.
    pub node: NodeRef,
    /// How (shared by every node it resolves to).
    pub monitoring: Arc<Monitoring>,
}

/// A discovery rule, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The root as written.
    pub text: String,
    /// Parsed.
    pub root: NodeRef,
    /// Levels below the root.
    pub max_depth: u32,
    /// Globs.
    pub include: Vec<String>,
    /// Variables taken at most.
    pub max_nodes: usize,
    /// How the variables found are monitored (shared by all of them).
    pub monitoring: Arc<Monitoring>,
}

/// Everything the source asks to monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Configured nodes.
    pub nodes: Vec<Wanted>,
    /// Discovery rules.
    pub browse: Vec<Rule>,
}

impl Plan {
    /// Parses the source's nodes and rules; every problem is reported.
    pub fn new(source: &OpcuaSource) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut nodes = Vec::new();
        for (i, node) in source.nodes.iter().enumerate() {
            match NodeRef::parse(&node.node_id) {
                Ok(parsed) => nodes.push(Wanted {
                    text: node.node_id.clone(),
                    node: parsed,
                    monitoring: Arc::new(node_monitoring(source, node)),
                }),
                Err(e) => problems.push(format!("nodes[{i}].node_id: {e}")),
            }
        }
        let mut browse = Vec::new();
        for (i, rule) in source.browse.iter().enumerate() {
            match NodeRef::parse(&rule.root) {
                Ok(root) => browse.push(Rule {
                    text: rule.root.clone(),
                    root,
                    max_depth: rule.max_depth,
                    include: rule.include.clone(),
                    max_nodes: usize::try_from(rule.max_nodes).unwrap_or(usize::MAX),
                    monitoring: Arc::new(rule_monitoring(source, rule)),
                }),
                Err(e) => problems.push(format!("browse[{i}].root: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Self { nodes, browse })
        } else {
            Err(problems)
        }
    }
}

fn node_monitoring(source: &OpcuaSource, node: &OpcuaNode) -> Monitoring {
    let publishing_ms = node
        .publishing_interval_ms
        .unwrap_or(source.publishing_interval_ms)
        .max(1);
    let sampling_ms = node.sampling_interval_ms.unwrap_or(publishing_ms).max(1);
    Monitoring {
        sampling_ms,
        publishing_ms,
        queue_size: node
            .queue_size
            .or(source.queue_size)
            .unwrap_or_else(|| default_queue_size(publishing_ms, sampling_ms)),
        deadband: node
            .deadband_absolute
            .map(Deadband::Absolute)
            .or(node.deadband_percent.map(Deadband::Percent)),
    }
}

fn rule_monitoring(source: &OpcuaSource, rule: &OpcuaBrowse) -> Monitoring {
    let publishing_ms = rule
        .publishing_interval_ms
        .unwrap_or(source.publishing_interval_ms)
        .max(1);
    let sampling_ms = rule.sampling_interval_ms.unwrap_or(publishing_ms).max(1);
    Monitoring {
        sampling_ms,
        publishing_ms,
        queue_size: source
            .queue_size
            .unwrap_or_else(|| default_queue_size(publishing_ms, sampling_ms)),
        deadband: None,
    }
}

/// A node resolved on the server, with the columns every record of it carries. Kept for every
/// monitored item for the session's life, so it is small: text is boxed (no spare capacity),
/// the namespace URI and the monitoring settings are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitored {
    /// The server's node id.
    pub node_id: NodeId,
    /// The URI of the node's namespace.
    pub namespace_uri: Arc<str>,
    /// `/Plant/Line1/Speed`, or empty when the server does not lead there from Objects.
    pub browse_path: Box<str>,
    /// The node's display name.
    pub display_name: Box<str>,
    /// How.
    pub monitoring: Arc<Monitoring>,
}

impl Monitored {
    /// A resolved node.
    pub fn new(
        node_id: NodeId,
        namespace_uri: Arc<str>,
        browse_path: String,
        display_name: String,
        monitoring: &Arc<Monitoring>,
    ) -> Self {
        Self {
            node_id,
            namespace_uri,
            browse_path: browse_path.into_boxed_str(),
            display_name: display_name.into_boxed_str(),
            monitoring: Arc::clone(monitoring),
        }
    }

    /// The CreateMonitoredItems entry, reporting under `client_handle`.
    pub fn create_request(&self, client_handle: u32) -> MonitoredItemCreateRequest {
        let filter = match self.monitoring.deadband {
            None => ExtensionObject::null(),
            Some(deadband) => {
                let (deadband_type, deadband_value) = match deadband {
                    Deadband::Absolute(v) => (DeadbandType::Absolute, v),
                    Deadband::Percent(v) => (DeadbandType::Percent, v),
                };
                ExtensionObject::from_message(DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: deadband_type as u32,
                    deadband_value,
                })
            }
        };
        MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: self.node_id.clone(),
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle,
                sampling_interval: self.monitoring.sampling_ms as f64,
                filter,
                queue_size: self.monitoring.queue_size,
                discard_oldest: true,
            },
        }
    }
}

/// The client handle of the node at `index` (handles start at 1; 0 asks the library to pick).
pub fn handle_of(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The node of a client handle.
pub fn index_of(handle: u32) -> Option<usize> {
    usize::try_from(handle).ok()?.checked_sub(1)
}

/// Client handles grouped by publishing interval: one subscription per group.
pub fn groups(nodes: &[Monitored]) -> Vec<(u64, Vec<u32>)> {
    let mut by_interval: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        by_interval
            .entry(node.monitoring.publishing_ms)
            .or_default()
            .push(handle_of(i));
    }
    by_interval.into_iter().collect()
}

/// `/a/b/c` from browse names.
pub fn format_path<S: AsRef<str>>(names: &[S]) -> String {
    names.iter().fold(String::new(), |mut path, name| {
        path.push('/');
        path.push_str(name.as_ref());
        path
    })
}

// ---------------------------------------------------------------------------------------------
// Asking the server.

/// The server's namespace array (index → URI).
pub async fn namespaces(session: &Session) -> Result<Vec<String>, String> {
    let read = session
        .read(
            &[ReadValueId {
                node_id: VariableId::Server_NamespaceArray.into(),
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .map_err(|e| format!("reading the namespace array failed: {e}"))?;
    match read.into_iter().next().and_then(|dv| dv.value) {
        Some(Variant::Array(array)) => Ok(array
            .values
            .into_iter()
            .map(|v| match v {
                Variant::String(s) => s.to_string(),
                _ => String::new(),
            })
            .collect()),
        _ => Err("the server's namespace array is not an array of strings".into()),
    }
}

/// Forward hierarchical children (objects and variables, no properties) of each node.
async fn children(
    session: &Session,
    parents: &[NodeId],
) -> Result<Vec<Vec<ReferenceDescription>>, String> {
    browse(session, parents, BrowseDirection::Forward).await
}

async fn browse(
    session: &Session,
    nodes: &[NodeId],
    direction: BrowseDirection,
) -> Result<Vec<Vec<ReferenceDescription>>, String> {
    let mut all = Vec::with_capacity(nodes.len());
    for chunk in nodes.chunks(CHUNK) {
        let descriptions: Vec<BrowseDescription> = chunk
            .iter()
            .map(|node_id| BrowseDescription {
                node_id: node_id.clone(),
                browse_direction: direction,
                reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                include_subtypes: true,
                node_class_mask: NodeClass::Object as u32 | NodeClass::Variable as u32,
                result_mask: BrowseResultMask::All as u32,
            })
            .collect();
        let results = session
            .browse(&descriptions, 1000, None)
            .await
            .map_err(|e| format!("browse failed: {e}"))?;
        for result in results {
            let mut references = result.references.unwrap_or_default();
            let mut point = result.continuation_point;
            while !point.is_null_or_empty() {
                let next = session
                    .browse_next(false, std::slice::from_ref(&point))
                    .await
                    .map_err(|e| format!("browse next failed: {e}"))?;
                point = ByteString::null();
                if let Some(next) = next.into_iter().next() {
                    references.extend(next.references.unwrap_or_default());
                    point = next.continuation_point;
                }
            }
            let property: NodeId = ReferenceTypeId::HasProperty.into();
            references.retain(|r| r.reference_type_id != property);
            all.push(references);
        }
    }
    Ok(all)
}

fn local_node_id(reference: &ReferenceDescription) -> Option<NodeId> {
    (reference.node_id.server_index == 0 && reference.node_id.namespace_uri.is_null())
        .then(|| reference.node_id.node_id.clone())
}

fn segment_matches(segment: &Segment, name: &QualifiedName) -> bool {
    name.name.as_ref() == segment.name
        && segment
            .namespace
            .is_none_or(|ns| ns == name.namespace_index)
}

/// A node found by browse path: its id, display name and browse path text.
async fn follow_path(
    session: &Session,
    segments: &[Segment],
) -> Result<(NodeId, String, String), String> {
    let mut current: NodeId = ObjectId::ObjectsFolder.into();
    let mut display = String::new();
    let mut names = Vec::with_capacity(segments.len());
    for segment in segments {
        let found = children(session, std::slice::from_ref(&current))
            .await?
            .into_iter()
            .flatten()
            .find(|r| segment_matches(segment, &r.browse_name))
            .ok_or_else(|| {
                format!(
                    "{} has no child {:?}",
                    if names.is_empty() {
                        "/".to_owned()
                    } else {
                        format_path(&names)
                    },
                    segment.name
                )
            })?;
        current = local_node_id(&found)
            .ok_or_else(|| format!("{:?} is on another server", segment.name))?;
        display = found.display_name.text.to_string();
        names.push(found.browse_name.name.to_string());
    }
    Ok((current, display, format_path(&names)))
}

/// Browse name and display name of each node (empty when the server does not say).
async fn names(session: &Session, nodes: &[NodeId]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(nodes.len());
    for chunk in nodes.chunks(CHUNK) {
        let reads: Vec<ReadValueId> = chunk
            .iter()
            .flat_map(|node_id| {
                [AttributeId::BrowseName, AttributeId::DisplayName].map(|a| ReadValueId {
                    node_id: node_id.clone(),
                    attribute_id: a as u32,
                    ..Default::default()
                })
            })
            .collect();
        let values = session
            .read(&reads, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("reading names failed: {e}"))?;
        let mut values = values.into_iter();
        for _ in chunk {
            let browse = match values.next().and_then(|d| d.value) {
                Some(Variant::QualifiedName(q)) => q.name.to_string(),
                _ => String::new(),
            };
            let display = match values.next().and_then(|d| d.value) {
                Some(Variant::LocalizedText(t)) => t.text.to_string(),
                _ => String::new(),
            };
            out.push((browse, display));
        }
    }
    Ok(out)
}

/// The browse path of each node, by walking inverse hierarchical references up to Objects;
/// empty for a node the server does not lead to from Objects.
async fn paths(session: &Session, nodes: &[NodeId], own_names: &[String]) -> Vec<String> {
    let objects: NodeId = ObjectId::ObjectsFolder.into();
    // node → (parent, parent's browse name), learned level by level for all nodes at once.
    let mut parent_of: HashMap<NodeId, Option<(NodeId, String)>> = HashMap::new();
    let mut frontier: Vec<NodeId> = nodes.to_vec();
    for _ in 0..MAX_PATH_DEPTH {
        let unknown: Vec<NodeId> = frontier
            .iter()
            .filter(|n| **n != objects && !parent_of.contains_key(*n))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            break;
        }
        let Ok(results) = browse(session, &unknown, BrowseDirection::Inverse).await else {
            break;
        };
        frontier.clear();
        for (node, refs) in unknown.into_iter().zip(results) {
            let parent = refs
                .into_iter()
                .find_map(|r| local_node_id(&r).map(|id| (id, r.browse_name.name.to_string())));
            if let Some((id, _)) = &parent {
                frontier.push(id.clone());
            }
            parent_of.insert(node, parent);
        }
    }
    nodes
        .iter()
        .zip(own_names)
        .map(|(node, own)| {
            let mut names = vec![own.clone()];
            let mut current = node.clone();
            for _ in 0..MAX_PATH_DEPTH {
                if current == objects {
                    names.pop(); // "Objects" itself is the path's root
                    names.reverse();
                    return format_path(&names);
                }
                match parent_of.get(&current) {
                    Some(Some((parent, name))) => {
                        names.push(name.clone());
                        current = parent.clone();
                    }
                    _ => break,
                }
            }
            String::new()
        })
        .collect()
}

/// A variable found by discovery.
struct Found {
    node_id: NodeId,
    display_name: String,
    browse_path: String,
}

/// Runs one discovery rule.
async fn discover(
    session: &Session,
    rule: &Rule,
    root: NodeId,
    root_path: &str,
) -> Result<(Vec<Found>, usize), String> {
    let mut level: Vec<(NodeId, String)> = vec![(root, root_path.to_owned())];
    let mut seen: HashSet<NodeId> = level.iter().map(|(n, _)| n.clone()).collect();
    let mut found = Vec::new();
    let mut matched = 0usize;
    for _ in 0..rule.max_depth {
        if level.is_empty() {
            break;
        }
        let ids: Vec<NodeId> = level.iter().map(|(n, _)| n.clone()).collect();
        let results = children(session, &ids).await?;
        let mut next = Vec::new();
        for ((_, parent_path), refs) in level.iter().zip(results) {
            for r in refs {
                let Some(id) = local_node_id(&r) else {
                    continue;
                };
                if id.namespace == 0 || !seen.insert(id.clone()) {
                    continue;
                }
                let name = r.browse_name.name.to_string();
                let path = format!("{parent_path}/{name}");
                match r.node_class {
                    NodeClass::Variable if included(&rule.include, &name, &path) => {
                        matched += 1;
                        if found.len() < rule.max_nodes {
                            found.push(Found {
                                node_id: id,
                                display_name: r.display_name.text.to_string(),
                                browse_path: path,
                            });
                        }
                    }
                    NodeClass::Object => next.push((id, path)),
                    _ => {}
                }
            }
        }
        level = next;
    }
    Ok((found, matched))
}

/// Resolves every configured node and runs every discovery rule. Nodes that cannot be
/// resolved are logged (ERROR: their data is missing until the config or server changes) and
/// returned as problems; the others are monitored. Each node is monitored once, configured
/// settings first.
pub async fn resolve(
    session: &Session,
    plan: &Plan,
    source: &str,
) -> Result<(Vec<Monitored>, Vec<String>), String> {
    let namespaces = namespaces(session).await?;
    let shared: Vec<Arc<str>> = namespaces.iter().map(|n| Arc::from(n.as_str())).collect();
    let uri_of = |node: &NodeId| {
        shared
            .get(usize::from(node.namespace))
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    };
    let mut problems = Vec::new();
    let mut out: Vec<Monitored> = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();

    // Configured by id: names and paths asked in bulk.
    let mut by_id: Vec<(&Wanted, NodeId)> = Vec::new();
    for wanted in &plan.nodes {
        match &wanted.node {
            NodeRef::Id { .. } => match wanted.node.node_id(&namespaces) {
                Ok(Some(id)) => by_id.push((wanted, id)),
                Ok(None) => {}
                Err(e) => problems.push(format!("{}: {e}", wanted.text)),
            },
            NodeRef::Path(segments) => match follow_path(session, segments).await {
                Ok((id, display_name, browse_path)) => {
                    if seen.insert(id.clone()) {
                        let uri = uri_of(&id);
                        out.push(Monitored::new(
                            id,
                            uri,
                            browse_path,
                            display_name,
                            &wanted.monitoring,
                        ));
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", wanted.text)),
            },
        }
    }
    let ids: Vec<NodeId> = by_id.iter().map(|(_, id)| id.clone()).collect();
    let name_pairs = names(session, &ids).await?;
    let browse_names: Vec<String> = name_pairs.iter().map(|(b, _)| b.clone()).collect();
    let path_list = paths(session, &ids, &browse_names).await;
    for (((wanted, id), (browse_name, display_name)), path) in
        by_id.into_iter().zip(name_pairs).zip(path_list)
    {
        if browse_name.is_empty() {
            problems.push(format!("{}: the server has no such node", wanted.text));
            continue;
        }
        if seen.insert(id.clone()) {
            let uri = uri_of(&id);
            out.push(Monitored::new(
                id,
                uri,
                path,
                display_name,
                &wanted.monitoring,
            ));
        }
    }

    for rule in &plan.browse {
        let root: Result<(NodeId, String), String> = match &rule.root {
            NodeRef::Id { .. } => match rule.root.node_id(&namespaces) {
                Ok(Some(id)) => {
                    let own = names(session, std::slice::from_ref(&id)).await?;
                    let own: Vec<String> = own.into_iter().map(|(b, _)| b).collect();
                    let path = paths(session, std::slice::from_ref(&id), &own).await;
                    Ok((id, path.into_iter().next().unwrap_or_default()))
                }
                Ok(None) => Err("not a node id".to_owned()),
                Err(e) => Err(e),
            },
            NodeRef::Path(segments) => follow_path(session, segments)
                .await
                .map(|(id, _, path)| (id, path)),
        };
        let (root, root_path) = match root {
            Ok(root) => root,
            Err(e) => {
                problems.push(format!("browse root {}: {e}", rule.text));
                continue;
            }
        };
        let (found, matched) = discover(session, rule, root, &root_path).await?;
        let taken = found.len();
        let mut new = 0usize;
        for f in found {
            if seen.insert(f.node_id.clone()) {
                new += 1;
                let uri = uri_of(&f.node_id);
                out.push(Monitored::new(
                    f.node_id,
                    uri,
                    f.browse_path,
                    f.display_name,
                    &rule.monitoring,
                ));
            }
        }
        info!(
            source,
            root = %rule.text,
            matched,
            taken,
            new,
            "Browse discovery finished."
        );
        if matched > taken {
            warn!(
                source,
                root = %rule.text,
                matched,
                max_nodes = rule.max_nodes,
                skipped = matched - taken,
                "Browse discovery found more variables than max_nodes; the rest are not monitored."
            );
        }
    }
    for problem in &problems {
        error!(source, problem = %problem, "A configured node is not monitored.");
    }
    // Kept for the session's life: no room for nodes that will never come.
    out.shrink_to_fit();
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn node_references_parse_in_every_form() {
        assert_eq!(
            NodeRef::parse("ns=2;s=Press1.Temperature").unwrap(),
            NodeRef::Id {
                namespace: Namespace::Index(2),
                identifier: "s=Press1.Temperature".into()
            }
        );
        assert_eq!(
            NodeRef::parse("nsu=urn:acme:press;i=42").unwrap(),
            NodeRef::Id {
                namespace: Namespace::Uri("urn:acme:press".into()),
                identifier: "i=42".into()
            }
        );
        assert_eq!(
            NodeRef::parse("nsu=urn:a%3bb;s=X").unwrap(),
            NodeRef::Id {
                namespace: Namespace::Uri("urn:a;b".into()),
                identifier: "s=X".into()
            }
        );
        assert_eq!(
            NodeRef::parse("i=85").unwrap(),
            NodeRef::Id {
                namespace: Namespace::Index(0),
                identifier: "i=85".into()
            }
        );
        assert_eq!(
            NodeRef::parse("/Plant/2:Line1/Speed").unwrap(),
            NodeRef::Path(vec![
                Segment {
                    namespace: None,
                    name: "Plant".into()
                },
                Segment {
                    namespace: Some(2),
                    name: "Line1".into()
                },
                Segment {
                    namespace: None,
                    name: "Speed".into()
                },
            ])
        );
        // A colon that is not an index prefix is part of the name.
        assert_eq!(
            NodeRef::parse("/Line:A").unwrap(),
            NodeRef::Path(vec![Segment {
                namespace: None,
                name: "Line:A".into()
            }])
        );
    }

    #[test]
    fn malformed_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "Press1.Temperature",
            "ns=x;s=A",
            "ns=2",
            "ns=2;q=A",
            "nsu=;s=A",
            "nsu=urn:x",
            "/Plant//Speed",
            "/",
            "ns=70000;i=1",
        ] {
            assert!(NodeRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn namespace_uris_resolve_to_the_servers_index() {
        let namespaces = vec![
            "http://opcfoundation.org/UA/".to_owned(),
            "urn:server".to_owned(),
            "urn:acme:press".to_owned(),
        ];
        let node = NodeRef::parse("nsu=urn:acme:press;s=Press1.Pressure").unwrap();
        assert_eq!(
            node.node_id(&namespaces).unwrap(),
            Some(NodeId::new(2, "Press1.Pressure"))
        );
        let node = NodeRef::parse("nsu=urn:other;i=1").unwrap();
        assert!(node.node_id(&namespaces).unwrap_err().contains("urn:other"));
        let node = NodeRef::parse("ns=1;i=7").unwrap();
        assert_eq!(node.node_id(&[]).unwrap(), Some(NodeId::new(1, 7u32)));
        assert_eq!(NodeRef::parse("/A").unwrap().node_id(&[]).unwrap(), None);
    }

    #[test]
    fn globs_match_names_and_paths() {
        assert!(glob_match("*Speed*", "MotorSpeedRpm"));
        assert!(glob_match("Temp?", "Temp1"));
        assert!(!glob_match("Temp?", "Temp12"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("Line1.*", "Line1.Counter"));
        assert!(!glob_match("Line1", "Line10"));
        assert!(included(&[], "anything", "/x"));
        assert!(included(&["*Speed".into()], "Speed", "/P/L/Speed"));
        assert!(included(&["/P/*/Speed".into()], "Speed", "/P/L/Speed"));
        assert!(!included(&["/Q/*".into()], "Speed", "/P/L/Speed"));
    }

    #[test]
    fn queue_size_holds_two_publishing_intervals_of_samples() {
        assert_eq!(default_queue_size(1000, 100), 20);
        assert_eq!(default_queue_size(1000, 1000), 2);
        assert_eq!(default_queue_size(1000, 300), 8);
        assert_eq!(default_queue_size(100, 1000), 2);
        assert_eq!(default_queue_size(u64::MAX, 1), 10_000);
    }

    fn source(toml_text: &str) -> OpcuaSource {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_plan_takes_defaults_from_the_source_and_reports_every_problem() {
        let s = source(
            r#"
            name = "p"
            endpoint = "opc.tcp://h:4840"
            publishing_interval_ms = 500
            nodes = [
              { node_id = "ns=2;s=A", sampling_interval_ms = 100, deadband_absolute = 0.5 },
              { node_id = "ns=2;s=B", publishing_interval_ms = 2000, queue_size = 7, deadband_percent = 10.0 },
            ]
            browse = [ { root = "/Plant", include = ["*Speed*"], max_nodes = 5 } ]
            "#,
        );
        let plan = Plan::new(&s).unwrap();
        assert_eq!(
            *plan.nodes[0].monitoring,
            Monitoring {
                sampling_ms: 100,
                publishing_ms: 500,
                queue_size: 10,
                deadband: Some(Deadband::Absolute(0.5))
            }
        );
        assert_eq!(
            *plan.nodes[1].monitoring,
            Monitoring {
                sampling_ms: 2000,
                publishing_ms: 2000,
                queue_size: 7,
                deadband: Some(Deadband::Percent(10.0))
            }
        );
        assert_eq!(plan.browse[0].max_nodes, 5);
        assert_eq!(plan.browse[0].max_depth, 3);

        let s = source(
            r#"
            name = "p"
            endpoint = "opc.tcp://h:4840"
            nodes = [ { node_id = "Temperature" }, { node_id = "ns=2;s=ok" } ]
            browse = [ { root = "ns=x;s=R" } ]
            "#,
        );
        let problems = Plan::new(&s).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("nodes[0].node_id"));
        assert!(problems[1].starts_with("browse[0].root"));
    }

    fn monitored(id: u32, publishing_ms: u64) -> Monitored {
        Monitored::new(
            NodeId::new(2, id),
            "urn:x".into(),
            String::new(),
            String::new(),
            &Arc::new(Monitoring {
                sampling_ms: 100,
                publishing_ms,
                queue_size: 10,
                deadband: None,
            }),
        )
    }

    #[test]
    fn nodes_are_grouped_by_publishing_interval() {
        let nodes = [
            monitored(1, 1000),
            monitored(2, 100),
            monitored(3, 1000),
            monitored(4, 5000),
        ];
        assert_eq!(
            groups(&nodes),
            vec![(100, vec![2]), (1000, vec![1, 3]), (5000, vec![4])]
        );
        assert_eq!(index_of(handle_of(7)), Some(7));
        assert_eq!(index_of(0), None);
    }

    #[test]
    fn monitored_item_requests_carry_sampling_queue_and_deadband() {
        let mut node = monitored(9, 1000);
        let request = node.create_request(3);
        assert_eq!(request.requested_parameters.client_handle, 3);
        assert_eq!(request.requested_parameters.sampling_interval, 100.0);
        assert_eq!(request.requested_parameters.queue_size, 10);
        assert!(request.requested_parameters.discard_oldest);
        assert!(request.requested_parameters.filter.is_null());
        assert_eq!(request.monitoring_mode, MonitoringMode::Reporting);

        Arc::make_mut(&mut node.monitoring).deadband = Some(Deadband::Percent(2.5));
        let request = node.create_request(4);
        let filter = request
            .requested_parameters
            .filter
            .into_inner_as::<DataChangeFilter>()
            .unwrap();
        assert_eq!(filter.deadband_type, DeadbandType::Percent as u32);
        assert_eq!(filter.deadband_value, 2.5);
        assert_eq!(filter.trigger, DataChangeTrigger::StatusValue);
    }

    #[test]
    fn paths_are_slash_separated_from_objects() {
        assert_eq!(
            format_path(&["Plant", "Line1", "Speed"]),
            "/Plant/Line1/Speed"
        );
        assert_eq!(format_path::<&str>(&[]), "");
    }
}
