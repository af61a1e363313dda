//! The accept loop: TCP connections, TLS handshakes in parallel (a reconnect storm
//! of thousands of agents must not queue behind one slow client), each finished
//! connection handed to tonic with its [`PeerInfo`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::peer::PeerInfo;
use super::{HANDSHAKE_TIMEOUT, TlsMaterial};

/// One accepted connection, plaintext or TLS, with who is on the other end.
pub struct Conn {
    io: Io,
    info: PeerInfo,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub fn plain(stream: TcpStream) -> io::Result<Self> {
        let remote = stream.peer_addr()?;
        let _ = stream.set_nodelay(true);
        Ok(Self { io: Io::Plain(stream), info: PeerInfo::plaintext(remote) })
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accept plaintext connections (loopback development) until shutdown.
pub fn serve_plain(listener: TcpListener, shutdown: CancellationToken) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => { accept_failed(e).await; continue }
                },
            };
            if let Ok(conn) = Conn::plain(stream)
                && tx.send(Ok(conn)).await.is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Accept TLS connections until shutdown. Each handshake runs in its own task with
/// a deadline; a failed one is logged at debug (scanners, wrong CA) and dropped.
pub fn serve_tls(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => { accept_failed(e).await; continue }
                },
            };
            let _ = stream.set_nodelay(true);
            let material = material.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // The config current at this handshake: a reload applies to the next one.
                let acceptor = tokio_rustls::TlsAcceptor::from(material.server_config());
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                // Chain validation costs about what the handshake's own signature check
                // does; it runs here, once per connection, not per request.
                let cert = material.classify(tls.get_ref().1.peer_certificates());
                let info =
                    PeerInfo { remote, tls: true, cert, streams: Default::default(), token_memo: Default::default() };
                let _ = tx.send(Ok(Conn { io: Io::Tls(Box::new(tls)), info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Out of file descriptors and the like: say so and give the system a moment,
/// instead of spinning on accept.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
