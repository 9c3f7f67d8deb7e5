//! How the task transport opens a connection: the SSRF guard on the
//! resolved addresses (the connection goes to exactly the addresses that
//! passed, so a DNS answer that changes between check and connect cannot
//! slip past; names are looked up by [`Lookups`], once per host at a
//! time), a connect timeout, then TLS (rustls with the webpki roots,
//! certificate verification never turned off) for `https`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ssrf::Guard;

use super::resolve::Lookups;

/// The error inside the `io::Error` a connection fails with when its host
/// name does not resolve (an attempt's `Dns` kind).
#[derive(Debug)]
pub(crate) struct NotFound {
    host: String,
    reason: String,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` does not resolve: {}", self.host, self.reason)
    }
}

impl std::error::Error for NotFound {}

/// Opens guarded connections for the hyper client.
#[derive(Clone)]
pub(crate) struct Connector {
    guard: Arc<Guard>,
    lookups: Lookups,
    tls: TlsConnector,
    connect_timeout: Duration,
    /// The most a whole connection may take (lookup, TCP, TLS): a new
    /// connection the client keeps opening in the background after its
    /// request took another (pooled) one is bounded too.
    setup_timeout: Duration,
    https_only: bool,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("guard", &self.guard)
            .field("connect_timeout", &self.connect_timeout)
            .field("https_only", &self.https_only)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The connector for `config`'s target policy, host overrides and
    /// timeouts.
    pub(crate) fn new(config: &Config) -> Result<Connector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            guard: Arc::new(Guard::new(
                config.target_policy(),
                config.dns_overrides.clone(),
            )),
            lookups: Lookups::system(),
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout: config.connect_timeout,
            setup_timeout: config.request_timeout.max(config.connect_timeout),
            https_only: config.https_only,
        })
    }

    async fn connect(self, uri: Uri) -> io::Result<Stream> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if !self.https_only => false,
            Some("http") => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only https URLs are allowed (Builder::https_only)",
                ));
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the URL's scheme is neither http nor https",
                ));
            }
        };
        let raw_host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host"))?;
        let host = Guard::normalize(raw_host);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let candidates = match self.guard.fixed(&host, port) {
            Some(fixed) => fixed,
            None => self.resolve(&host, port).await?,
        };
        let addrs = self.guard.keep(raw_host, candidates)?;
        let tcp = tokio::time::timeout(self.connect_timeout, connect_any(&addrs))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting timed out after {:?}", self.connect_timeout),
                )
            })??;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(Stream(TokioIo::new(Box::pin(tcp))));
        }
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = self.tls.connect(name, tcp).await?;
        Ok(Stream(TokioIo::new(Box::pin(tls))))
    }
}

impl Connector {
    /// The host's addresses (at most 16) from the system resolver, one
    /// lookup per host at a time and answers kept a while ([`Lookups`]).
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match self.lookups.resolve(host).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            Err(why) => Err(not_found(host, why.to_string())),
        }
    }
}

fn not_found(host: &str, reason: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        NotFound {
            host: host.to_owned(),
            reason,
        },
    )
}

/// Connects to the first address that answers, in order.
async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "no address")))
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.setup_timeout;
        let connecting = self.clone().connect(uri);
        Box::pin(async move {
            tokio::time::timeout(limit, connecting).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("setting up the connection took more than {limit:?}"),
                )
            })?
        })
    }
}

/// A byte stream the client can use: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection of the client's pool.
pub(crate) struct Stream(TokioIo<Pin<Box<dyn Io>>>);

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stream")
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    // Vectored writes let hyper queue the body's bytes as they are
    // instead of copying each payload into the connection's write buffer
    // (which would keep its capacity for as long as the connection lives).
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
