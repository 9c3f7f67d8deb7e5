//! A small keep-alive HTTP/1.1 receiver on 127.0.0.1 for the examples: a
//! thread per connection, every request handed to a callback that returns
//! the status to answer with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

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
pub(crate) fn start(
    handler: impl Fn(Request) -> u16 + Send + Sync + 'static,
) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || serve(conn, &*handler));
        }
    });
    Ok(url)
}

fn serve(conn: TcpStream, handler: &dyn Fn(Request) -> u16) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    let Ok(clone) = conn.try_clone() else { return };
    let mut r = BufReader::new(clone);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len.min(16 << 20)];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = handler(Request {
            path,
            headers,
            body,
        });
        let reason = if (200..300).contains(&status) {
            "OK"
        } else {
            "Error"
        };
        if w.write_all(
            format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
        )
        .is_err()
        {
            return;
        }
    }
}
