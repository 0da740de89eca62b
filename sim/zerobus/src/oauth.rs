//! The fake Unity Catalog token endpoint, `POST /oidc/v1/token`, as the SDK's built-in OAuth
//! calls it: HTTP/1.1 over TLS, Basic client credentials, a form body. It records every call
//! and answers a fixed bearer token, or the status set by [`crate::Faults::oauth_status`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::faults::FaultsHandle;
use crate::state::{OAuthRequest, SimState};

/// The path the SDK posts to, relative to `unity_catalog_url`.
pub const TOKEN_PATH: &str = "/oidc/v1/token";
/// The access token every successful call returns.
pub const ACCESS_TOKEN: &str = "sim-access-token";
/// Largest request body read; a token request is a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Accepts TLS connections until `shutdown` changes; connections die with this task.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: SimState,
    faults: FaultsHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(err) => {
                tracing::warn!(error = %err, "Token endpoint accept failed.");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let faults = faults.clone();
        connections.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(error = %err, "Token endpoint TLS handshake failed.");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let state = state.clone();
                let faults = faults.clone();
                async move { Ok::<_, Infallible>(handle(request, &state, &faults).await) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(error = %err, "Token endpoint connection ended with an error.");
            }
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    state: &SimState,
    faults: &FaultsHandle,
) -> Response<Full<Bytes>> {
    if request.uri().path() != TOKEN_PATH {
        return reply(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#);
    }
    if request.method() != Method::POST {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed"}"#,
        );
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("POST"));
        return response;
    }
    let client_id = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(basic_auth_user);
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#),
    };
    let form = parse_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    state.oauth_request_received(OAuthRequest {
        client_id,
        grant_type: field("grant_type"),
        scope: field("scope"),
        resource: field("resource"),
        authorization_details: field("authorization_details"),
    });
    if let Some(code) = faults.oauth_failure() {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return reply(
            status,
            r#"{"error":"simulated_failure","error_description":"fault knob set on the emulator"}"#,
        );
    }
    let token = serde_json::json!({
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 3600,
    });
    reply(StatusCode::OK, &token.to_string())
}

fn reply(status: StatusCode, json: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(json.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The user name of an HTTP Basic `authorization` header value.
fn basic_auth_user(header: &str) -> Option<String> {
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(decode_base64(encoded.trim())?).ok()?;
    let (user, _password) = decoded.split_once(':')?;
    Some(user.to_owned())
}

/// Standard-alphabet base64 with optional padding; `None` on any other byte.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` pairs, percent- and `+`-decoded.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let key = percent_decode(parts.next().unwrap_or_default());
            let value = percent_decode(parts.next().unwrap_or_default());
            (key, value)
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter().copied();
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let mut lookahead = bytes.clone();
                let hex = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
                match (hex(lookahead.next()), hex(lookahead.next())) {
                    (Some(high), Some(low)) => {
                        out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                        bytes = lookahead;
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_yields_the_client_id() {
        // "client-1:s3cret"
        assert_eq!(
            basic_auth_user("Basic Y2xpZW50LTE6czNjcmV0").as_deref(),
            Some("client-1")
        );
        assert_eq!(basic_auth_user("Bearer abc"), None);
        assert_eq!(basic_auth_user("Basic !!!"), None);
    }

    #[test]
    fn form_fields_are_percent_decoded() {
        let form = parse_form(
            b"grant_type=client_credentials&scope=all-apis&x=%5B%7B%22a%22%3A1%7D%5D+b%2",
        );
        assert_eq!(
            form,
            [
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("scope".to_owned(), "all-apis".to_owned()),
                ("x".to_owned(), "[{\"a\":1}] b%2".to_owned()),
            ]
        );
    }
}
