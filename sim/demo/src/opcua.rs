//! A simulated process plant on OPC-UA (async-opcua's server, in this process): a reactor and a
//! cooler with a temperature and a pressure each (Double), two motor states (Boolean) and a
//! packed-parts counter (UInt32), changing once a second, under `Objects/Plant/<unit>` in the namespace
//! [`NAMESPACE`].
//!
//! Security None with anonymous access and no server certificate: this is a local demo on
//! loopback only, never a pattern for a real server (the `examples/` configs show secured
//! endpoints).

use std::{path::Path, sync::Arc, time::Duration};

use opcua::{
    crypto::SecurityPolicy,
    nodes::Variable,
    server::{
        ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle,
        address_space::AddressSpace,
        diagnostics::NamespaceMetadata,
        node_manager::memory::{SimpleNodeManager, simple_node_manager},
    },
    types::{DataValue, MessageSecurityMode, NodeId, ObjectId, QualifiedName, Variant},
};

/// The namespace of the plant's nodes.
pub const NAMESPACE: &str = "urn:iot-connector-demo:plant";

/// The variables: node id (`s=` identifier), display name.
const NODES: [(&str, &str); 7] = [
    ("Plant.Reactor.Temperature", "Reactor temperature"),
    ("Plant.Reactor.Pressure", "Reactor pressure"),
    ("Plant.Cooler.Temperature", "Cooler temperature"),
    ("Plant.Cooler.Pressure", "Cooler pressure"),
    ("Plant.Agitator.Running", "Agitator running"),
    ("Plant.Pump.Running", "Pump running"),
    ("Plant.Packer.Count", "Parts packed"),
];

/// The value of every variable `t` seconds after the start, in [`NODES`] order.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // simulated values in range
fn values(t: f64) -> [Variant; 7] {
    let round = |x: f64| Variant::Double((x * 100.0).round() / 100.0);
    let seconds = t as u64;
    [
        round(180.0 + 6.0 * (t / 25.0).sin()),
        round(12.0 + 0.8 * (t / 9.0).cos()),
        round(18.0 + 1.5 * (t / 40.0).sin()),
        round(3.2 + 0.2 * (t / 6.0).sin()),
        Variant::Boolean(!(seconds / 20).is_multiple_of(3)),
        Variant::Boolean((seconds / 12).is_multiple_of(2)),
        Variant::UInt32((seconds * 3) as u32),
    ]
}

/// Starts the server on a free loopback port with its (empty) PKI folder under `pki_dir`, and
/// the simulation; returns the port.
pub async fn start(pki_dir: &Path) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (server, handle) = ServerBuilder::new()
        .application_name("iot-connector demo plant")
        .application_uri("urn:iot-connector-demo:server")
        .product_uri("urn:iot-connector-demo:server")
        .host("127.0.0.1")
        .port(port)
        .pki_dir(pki_dir)
        .create_sample_keypair(false)
        .discovery_urls(vec!["/".into()])
        .add_endpoint(
            "none",
            (
                "/",
                SecurityPolicy::None,
                MessageSecurityMode::None,
                &[ANONYMOUS_USER_TOKEN_ID] as &[&str],
            ),
        )
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE.into(),
                ..Default::default()
            },
            "plant",
        ))
        .build()
        .map_err(std::io::Error::other)?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or_else(|| std::io::Error::other("no node manager"))?;
    let ns = manager
        .namespaces()
        .iter()
        .find(|(_, uri)| uri.as_str() == NAMESPACE)
        .map(|(index, _)| *index)
        .ok_or_else(|| std::io::Error::other("the plant namespace is missing"))?;
    populate(&mut manager.address_space().write(), ns);
    tokio::spawn(async move {
        if let Err(e) = server.run_with(listener).await {
            eprintln!("demo: the OPC-UA server stopped: {e}");
        }
    });
    tokio::spawn(simulate(manager, handle, ns));
    Ok(port)
}

fn populate(space: &mut AddressSpace, ns: u16) {
    let objects: NodeId = ObjectId::ObjectsFolder.into();
    space.add_folder(
        &NodeId::new(ns, "Plant"),
        QualifiedName::new(ns, "Plant"),
        "Plant",
        &objects,
    );
    for ((id, display), value) in NODES.iter().zip(values(0.0)) {
        // `Plant.Reactor.Temperature`: variable `Temperature` in folder `Plant/Reactor`.
        let Some((folder, name)) = id.rsplit_once('.') else {
            continue;
        };
        let folder_id = NodeId::new(ns, folder);
        if space.find(&folder_id).is_none() {
            let folder_name = folder.rsplit('.').next().unwrap_or(folder);
            space.add_folder(
                &folder_id,
                QualifiedName::new(ns, folder_name),
                folder_name,
                &NodeId::new(ns, "Plant"),
            );
        }
        let variable = Variable::new(
            &NodeId::new(ns, *id),
            QualifiedName::new(ns, name),
            *display,
            value,
        );
        space.add_variables(vec![variable], &folder_id);
    }
}

/// Writes the next values once a second (subscribed clients get the changes).
async fn simulate(manager: Arc<SimpleNodeManager>, handle: ServerHandle, ns: u16) {
    let ids: Vec<NodeId> = NODES.iter().map(|(id, _)| NodeId::new(ns, *id)).collect();
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = values(started.elapsed().as_secs_f64());
        let updates = ids
            .iter()
            .zip(now)
            .map(|(id, value)| (id, None, DataValue::new_now(value)));
        let _ = manager.set_values(handle.subscriptions(), updates);
    }
}

/// The `[[sources]]` entry for this server.
pub fn source(port: u16) -> String {
    let nodes: Vec<String> = NODES
        .iter()
        .map(|(id, _)| format!("  {{ node_id = \"nsu={NAMESPACE};s={id}\" }},"))
        .collect();
    format!(
        r#"
[[sources]]
name = "process_plant"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/"
publishing_interval_ms = 1000
nodes = [
{}
]
"#,
        nodes.join("\n")
    )
}
