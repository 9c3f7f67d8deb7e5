//! A TCP proxy for fault tests: it sits between the bus and a real server
//! on 127.0.0.1 and can cut every connection, stall (stop forwarding
//! without closing), or refuse new connections for a while.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

struct Shared {
    upstream: SocketAddr,
    refuse: AtomicBool,
    stall: AtomicBool,
    stop: AtomicBool,
    /// Open connections: the client side and the upstream side.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
}

/// The proxy; it stops (and cuts what is open) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (a free port) to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        assert!(upstream.ip().is_loopback(), "fault tests stay on loopback");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            refuse: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if s.refuse.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&s.upstream, Duration::from_secs(5))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                s.conns.lock().unwrap().push((c2, s2));
                let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let a = s.clone();
                thread::spawn(move || pump(client, s3, &a));
                let b = s.clone();
                thread::spawn(move || pump(server, c3, &b));
            }
        });
        Proxy { addr, shared }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection, both ways (new ones are taken).
    pub fn cut(&self) {
        for (c, s) in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// While on, new connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// While on, nothing is forwarded either way (connections stay open).
    pub fn stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }

    /// The local ports of the proxy's open connections to the server (as
    /// the server sees them: `pg_stat_activity.client_port`).
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.shared
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, s)| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.cut();
    }
}

/// Copies `from` to `to` until either ends, holding back while stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, s: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        if s.stall.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
