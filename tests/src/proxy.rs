//! A loopback TCP proxy that can turn into a black hole: the connections it holds stop
//! carrying bytes either way but stay open (no FIN, no RST), as with a peer whose host
//! died or a middlebox that lost its state. Neither side learns anything from the
//! socket; only its own timers can tell.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards `addr` → `upstream` until dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    token: CancellationToken,
}

struct Shared {
    upstream: SocketAddr,
    /// Connections numbered below this carry nothing any more.
    stalled_below: AtomicU64,
    next_conn: AtomicU64,
    /// New connections are accepted and closed at once (the far side is unreachable).
    refusing: AtomicBool,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            stalled_below: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        });
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), token.clone()));
        Self { addr, shared, token }
    }

    /// `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection open now stops forwarding (what arrives is discarded, nothing is
    /// closed), and new connections are closed at once until [`Proxy::restore`].
    pub fn blackhole(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.shared.stalled_below.store(self.shared.next_conn.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// New connections are forwarded again; the stalled ones stay stalled.
    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.next_conn.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let (client, _) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let (shared, token) = (shared.clone(), token.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(shared.upstream).await else { return };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                _ = token.cancelled() => {}
                _ = pump(cr, sw, id, &shared) => {}
                _ = pump(sr, cw, id, &shared) => {}
            }
        });
    }
}

/// Copy one direction until EOF or an error; once the connection is stalled, read and
/// discard, so the sender's writes succeed and nothing reaches the other side.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if id < shared.stalled_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // A stalled connection never closes on its own: the other side must not hear of it.
    if id < shared.stalled_below.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}
