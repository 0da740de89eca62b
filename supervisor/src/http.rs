//! The health and metrics listener: hyper, HTTP/1.1, GET only, small header limit, timeouts and a
//! bound on open connections that closes the oldest to admit a new one, so that neither a
//! scanner nor a client hoarding idle connections keeps a load balancer's probe out.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use iot_connector_ipc::Admission;
use tokio::{net::TcpListener, sync::Notify};

use crate::{board::Board, health, metrics};

/// Open connections kept at most; a new one beyond it closes the oldest (see [`Open`]).
const MAX_CONNECTIONS: usize = 64;
/// Connections at all, counting those being closed: the hard bound on tasks and descriptors.
const MAX_SOCKETS: usize = 2 * MAX_CONNECTIONS;
/// A connection lives this long at most.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The open connections, oldest first. A full listener makes room for a new connection by
/// closing the oldest one gracefully (an answer being written is finished first): a client
/// that holds every slot with idle connections cannot lock out a load balancer's health
/// probe, which connects, asks and is answered at once.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: VecDeque<(u64, Arc<Notify>)>,
}

impl Open {
    /// Registers a new connection; returns its id and the signal that tells it to close.
    fn admit(&mut self) -> (u64, Arc<Notify>) {
        if self.connections.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = self.connections.pop_front()
        {
            oldest.notify_one();
        }
        self.next_id += 1;
        let close = Arc::new(Notify::new());
        self.connections
            .push_back((self.next_id, Arc::clone(&close)));
        (self.next_id, close)
    }

    fn remove(&mut self, id: u64) {
        self.connections.retain(|(open, _)| *open != id);
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Answers one request.
pub fn route<B>(board: &Board, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/health" => {
            let (status, body) = health::health(board);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            respond(status, "application/json", format!("{body}\n"))
        }
        "/metrics" => respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(board),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health or /metrics\n".into(),
        ),
    }
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, board: Board) {
    let mut admission = Admission::new("http", MAX_SOCKETS);
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let ((stream, _), permit) = admission.admit(|| listener.accept()).await;
        let (id, close) = lock(&open).admit();
        let board = board.clone();
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = route(&board, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let served = async {
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = close.notified() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
            lock(&open).remove(id);
            drop(permit);
        });
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds the configured address.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
