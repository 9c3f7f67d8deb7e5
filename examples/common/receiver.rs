//! A small keep-alive HTTP/1.1 receiver on 127.0.0.1 for the examples: an
//! axum server on a current-thread tokio runtime of its own (one thread),
//! every request handed to a callback that returns the status to answer
//! with.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};

/// One request as received.
pub(crate) struct Request {
    pub(crate) path: String,
    /// Header names in lowercase.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Starts the receiver; returns its base URL (`http://127.0.0.1:PORT`).
/// It runs until the process ends. The callback must not block for long:
/// one thread serves every connection.
pub(crate) fn start(
    handler: impl Fn(Request) -> u16 + Send + Sync + 'static,
) -> std::io::Result<String> {
    start_on(std::net::TcpListener::bind("127.0.0.1:0")?, handler)
}

/// [`start`] on a listener of the caller's (an address it chose).
pub(crate) fn start_on(
    listener: std::net::TcpListener,
    handler: impl Fn(Request) -> u16 + Send + Sync + 'static,
) -> std::io::Result<String> {
    listener.set_nonblocking(true)?;
    let url = format!("http://{}", listener.local_addr()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handler = Arc::new(handler);
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let handler = handler.clone();
        async move {
            let status = handler(Request {
                path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        (n.as_str().to_owned(), v)
                    })
                    .collect(),
                body: body.to_vec(),
            });
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    });
    std::thread::Builder::new()
        .name("example-receiver".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                // A body as large as the bus may send (the default limit
                // is 2 MiB).
                let app = app.layer(axum::extract::DefaultBodyLimit::max(16 << 20));
                axum::serve(listener, app).await
            })
        })?;
    Ok(url)
}
