//! OAuth machine-to-machine tokens for the Zerobus streams, fetched by the uplink itself so that
//! the token request goes through the same trust anchors (`ca_file`) and proxy as the gRPC
//! channel. The request is the one the SDK's built-in provider makes:
//! client credentials as HTTP Basic, `scope=all-apis`, the workspace's `zerobusDirectWriteApi`
//! resource, and `authorization_details` scoping the token to one table.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use databricks_zerobus_ingest_sdk::{HeadersProvider, ZerobusError};
use iot_connector_proto::ZerobusSettings;

/// Refresh a token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Token lifetime assumed when the endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(900);

/// Failures building the token client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `ca_pem` is not a PEM certificate.
    #[error("zerobus ca_file is not a PEM certificate: {0}")]
    Ca(#[source] reqwest::Error),
    /// `proxy` is not a proxy URL.
    #[error("zerobus proxy {url:?} is not a valid proxy URL: {source}")]
    Proxy {
        /// The configured value.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the OAuth client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The HTTP client for token requests, shared by every table's provider.
pub fn http_client(settings: &ZerobusSettings) -> Result<reqwest::Client, AuthError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(pem) = &settings.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(AuthError::Ca)?;
        builder = builder.add_root_certificate(ca);
    }
    builder = match &settings.proxy {
        Some(url) => {
            let no_proxy = reqwest::NoProxy::from_string(&settings.no_proxy.join(","));
            let proxy = reqwest::Proxy::all(url)
                .map_err(|source| AuthError::Proxy {
                    url: url.clone(),
                    source,
                })?
                .no_proxy(no_proxy);
            builder.proxy(proxy)
        }
        // Only the configured proxy is used: an environment a service happens to inherit must
        // not reroute credentials.
        None => builder.no_proxy(),
    };
    builder.build().map_err(AuthError::Client)
}

/// Tokens for one table's stream.
#[derive(Debug)]
pub struct TableTokens {
    client: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: String,
    table: String,
    form: Vec<(&'static str, String)>,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TableTokens {
    /// A provider for `table` (three-part name).
    pub fn new(client: reqwest::Client, settings: &ZerobusSettings, table: &str) -> Self {
        let workspace_id = settings
            .endpoint
            .rsplit("://")
            .next()
            .and_then(|host| host.split(['.', ':', '/']).next())
            .unwrap_or_default();
        let parts: Vec<&str> = table.split('.').collect();
        let (catalog, schema) = match parts.as_slice() {
            [c, s, _] => (*c, format!("{c}.{s}")),
            _ => ("", String::new()),
        };
        let details = serde_json::json!([
            { "type": "unity_catalog_privileges", "privileges": ["USE CATALOG"], "object_type": "CATALOG", "object_full_path": catalog },
            { "type": "unity_catalog_privileges", "privileges": ["USE SCHEMA"], "object_type": "SCHEMA", "object_full_path": schema },
            { "type": "unity_catalog_privileges", "privileges": ["SELECT", "MODIFY"], "object_type": "TABLE", "object_full_path": table, "operations": ["zerobuswrite"] },
        ]);
        Self {
            client,
            token_url: format!(
                "{}/oidc/v1/token",
                settings.workspace_url.trim_end_matches('/')
            ),
            client_id: settings.client_id.clone(),
            client_secret: settings.client_secret.clone(),
            table: table.to_owned(),
            form: vec![
                ("grant_type", "client_credentials".into()),
                ("scope", "all-apis".into()),
                (
                    "resource",
                    format!("api://databricks/workspaces/{workspace_id}/zerobusDirectWriteApi"),
                ),
                ("authorization_details", details.to_string()),
            ],
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<(String, Instant), ZerobusError> {
        let response = self
            .client
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&self.form)
            .send()
            .await
            .map_err(|e| ZerobusError::TokenFetchError(format!("{}: {e}", self.token_url)))?;
        let status = response.status();
        if status.is_client_error() {
            return Err(ZerobusError::InvalidUCTokenError(format!(
                "{} answered {status} for client id {:?}: check the service principal's client id and secret and its grants on {}",
                self.token_url, self.client_id, self.table
            )));
        }
        if !status.is_success() {
            return Err(ZerobusError::TokenFetchError(format!(
                "{} answered {status}",
                self.token_url
            )));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| {
            ZerobusError::TokenFetchError(format!("{}: bad token response: {e}", self.token_url))
        })?;
        let token = body
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                ZerobusError::TokenFetchError(format!(
                    "{}: no access_token in the response",
                    self.token_url
                ))
            })?;
        let lifetime = body
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        Ok((
            token.to_owned(),
            Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        ))
    }
}

#[async_trait::async_trait]
impl HeadersProvider for TableTokens {
    async fn get_headers(&self) -> Result<HashMap<&'static str, String>, ZerobusError> {
        let mut cached = self.cached.lock().await;
        let token = match cached.as_ref() {
            Some((token, refresh_at)) if Instant::now() < *refresh_at => token.clone(),
            _ => {
                let (token, refresh_at) = self.fetch().await?;
                *cached = Some((token.clone(), refresh_at));
                token
            }
        };
        Ok(HashMap::from([
            ("authorization", format!("Bearer {token}")),
            ("x-databricks-zerobus-table-name", self.table.clone()),
        ]))
    }

    async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
