//! Network faults between a client and a real broker: a TCP proxy on 127.0.0.1 that forwards
//! to the broker, with added latency if asked, until told to stall (a partition: connections stay open, no byte gets
//! through either way, as when packets are dropped) or to cut (every connection reset, new
//! ones refused, as when the broker's host is unreachable), then heals.
//!
//! The proxy runs on a thread and runtime of its own, so a test whose runtime is busy (or
//! blocked) does not slow the network down. Dropping it closes every connection.
//!
//! ```no_run
//! use messaging_testkit::netfault::TcpProxy;
//!
//! let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).unwrap();
//! let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
//! // … connect through `url`, then:
//! proxy.stall();
//! proxy.heal();
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Up,
    /// Connections stay open; bytes are held (not lost) until the link is up again.
    Stalled,
    /// Every connection is closed; new ones are accepted and closed at once.
    Cut,
}

/// A fault-injecting TCP proxy to one upstream address; see the [module docs](self).
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    link: watch::Sender<Link>,
    accepted: Arc<AtomicU64>,
    latency_us: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (link, watch) = watch::channel(Link::Up);
        let accepted = Arc::new(AtomicU64::new(0));
        let latency_us = Arc::new(AtomicU64::new(0));
        let latency = latency_us.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let count = accepted.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = accept(listener, upstream, watch, count, latency) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            port,
            link,
            accepted,
            latency_us,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds every byte in both directions; connections stay open.
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    /// Closes every connection and refuses new ones (accepts and closes them at once).
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Lets bytes flow again (held bytes first).
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }

    /// Delays every chunk of bytes by `latency` in each direction (a round trip takes twice
    /// as long); zero (the default) forwards at once.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The link's state.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Connections accepted so far (a reconnecting client opens new ones).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    link: watch::Receiver<Link>,
    accepted: Arc<AtomicU64>,
    latency: Arc<AtomicU64>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        if *link.borrow() == Link::Cut {
            drop(client);
            continue;
        }
        let link = link.clone();
        let latency = latency.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_r, client_w) = client.into_split();
            let (server_r, server_w) = server.into_split();
            // Either direction ending (EOF, error, cut) closes both sockets.
            tokio::select! {
                () = pump(client_r, server_w, link.clone(), latency.clone()) => {}
                () = pump(server_r, client_w, link, latency) => {}
            }
        });
        // Reap finished connections.
        while connections.try_join_next().is_some() {}
    }
}

/// Waits until the link is up; `false` when it is cut (or the proxy stops).
async fn up(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Up => return true,
            Link::Cut => return false,
            Link::Stalled => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    latency: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !up(&mut link).await {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let delay = latency.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                }
                // Bytes read just before a stall are held until it ends.
                if !up(&mut link).await || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn echo(s: &mut TcpStream, what: &[u8], within: Duration) -> io::Result<Vec<u8>> {
        s.write_all(what).await?;
        let mut got = vec![0u8; what.len()];
        tokio::time::timeout(within, s.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_stalls_holding_the_bytes_then_cuts() {
        let proxy = TcpProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert_eq!(
            echo(&mut s, b"one", Duration::from_secs(5)).await.unwrap(),
            b"one"
        );

        proxy.set_latency(Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(
            echo(&mut s, b"slow", Duration::from_secs(5)).await.unwrap(),
            b"slow"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "a round trip takes both directions' latency: {:?}",
            started.elapsed()
        );
        proxy.set_latency(Duration::ZERO);

        proxy.stall();
        let held = echo(&mut s, b"two", Duration::from_millis(300)).await;
        assert_eq!(held.unwrap_err().kind(), io::ErrorKind::TimedOut);
        proxy.heal();
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("held bytes arrive once healed")
            .unwrap();
        assert_eq!(&got, b"two");

        proxy.cut();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a cut closes the connection");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert!(
            echo(&mut again, b"x", Duration::from_secs(1))
                .await
                .is_err(),
            "a cut link refuses new connections"
        );
        proxy.heal();
        let mut healed = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert_eq!(
            echo(&mut healed, b"three", Duration::from_secs(5))
                .await
                .unwrap(),
            b"three"
        );
        assert_eq!(proxy.accepted(), 3);
    }
}
