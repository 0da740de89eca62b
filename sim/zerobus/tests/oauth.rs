//! The fake token endpoint over TLS, driven by a plain reqwest client that trusts only the
//! emulator's CA.

use iot_connector_sim_zerobus::{ACCESS_TOKEN, Emulator, EmulatorOptions, TOKEN_PATH, start};

fn client(emulator: &Emulator) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(
            emulator.ca_pem().as_bytes(),
        )?)
        .no_proxy()
        .build()
}

fn token_url(emulator: &Emulator) -> String {
    format!("{}{TOKEN_PATH}", emulator.oauth_url())
}

async fn request_token(emulator: &Emulator) -> reqwest::Result<reqwest::Response> {
    client(emulator)?
        .post(token_url(emulator))
        .basic_auth("client-1", Some("s3cret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "all-apis"),
            (
                "resource",
                "api://databricks/workspaces/127/zerobusDirectWriteApi",
            ),
            (
                "authorization_details",
                r#"[{"type":"unity_catalog_privileges"}]"#,
            ),
        ])
        .send()
        .await
}

#[tokio::test]
async fn token_endpoint_returns_a_bearer_token_and_records_the_request() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();

    let response = request_token(&emulator).await.unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600})
    );
    let calls = emulator.state().oauth_requests();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.client_id.as_deref(), Some("client-1"));
    assert_eq!(call.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(call.scope.as_deref(), Some("all-apis"));
    assert_eq!(
        call.resource.as_deref(),
        Some("api://databricks/workspaces/127/zerobusDirectWriteApi")
    );
    assert_eq!(
        call.authorization_details.as_deref(),
        Some(r#"[{"type":"unity_catalog_privileges"}]"#)
    );
}

#[tokio::test]
async fn oauth_status_knob_makes_the_endpoint_answer_401() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();
    emulator.faults().update(|f| f.oauth_status = Some(401));

    assert_eq!(request_token(&emulator).await.unwrap().status(), 401);

    emulator.faults().update(|f| f.oauth_status = None);
    assert_eq!(request_token(&emulator).await.unwrap().status(), 200);
    assert_eq!(emulator.state().oauth_calls(), 2);
}

#[tokio::test]
async fn outage_makes_the_token_endpoint_answer_503() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();
    emulator.faults().update(|f| f.down = true);

    assert_eq!(request_token(&emulator).await.unwrap().status(), 503);
}

#[tokio::test]
async fn token_endpoint_rejects_other_methods_and_paths() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();
    let client = client(&emulator).unwrap();

    let get = client.get(token_url(&emulator)).send().await.unwrap();
    assert_eq!(get.status(), 405);
    let other = client
        .post(format!("{}/oidc/v1/other", emulator.oauth_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(emulator.state().oauth_calls(), 0);
}

#[tokio::test]
async fn servers_stop_on_shutdown() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();
    let client = client(&emulator).unwrap();
    let url = token_url(&emulator);

    emulator.shutdown().await;

    assert!(client.post(url).send().await.is_err());
}

#[tokio::test]
async fn ca_file_written_for_clients_holds_the_emulator_ca() {
    let emulator = start(EmulatorOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");

    emulator.write_ca_pem(&path).unwrap();

    let pem = std::fs::read_to_string(&path).unwrap();
    assert_eq!(pem, emulator.ca_pem());
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}
