//! Starts warden: binds the proxy and admin listeners (port 0 allowed, the bound address is
//! reported), runs the accept loops that hand each connection to the front door (or the admin
//! app), and drains on shutdown. The binary and the integration tests use the same entry point.

use crate::admin::Admin;
use crate::config::Snapshot;
use crate::proxy::{FrontDoor, Warden};
use crate::state::{LlmConnector, Shared};
use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Why warden could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The config key naming it.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS acceptor could not be built.
    #[error("cannot set up TLS interception: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    /// The state store could not be opened or read.
    #[error("state: {0}")]
    State(#[from] crate::store::StoreError),
    /// `admin.tls` could not be loaded.
    #[error("admin.tls: cannot load {path}: {source}")]
    AdminTls {
        /// The certificate or key file.
        path: std::path::PathBuf,
        /// What OpenSSL said.
        source: openssl::error::ErrorStack,
    },
}

/// A running warden. Dropping it stops accepting; [`Running::shutdown`] also drains.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tracker: TaskTracker,
    lanes: Arc<Lanes>,
}

/// The threads that serve the proxy listener's connections: one single-threaded runtime per
/// core, each with its own engine and so its own upstream pool. A client connection, the
/// tasks it spawns and the upstream connections it dials stay on one thread, and the runtimes
/// never steal work from each other: against a work-stealing runtime over the same cores, an
/// intercepted keep-alive request costs about a fifth less CPU (README, Performance). An
/// origin is dialled once per lane it is used from (as nginx or Envoy do per worker): one
/// engine for all lanes measured no faster, and Pingora could not reuse a connection that
/// another lane's runtime had pooled (its idle watch lets go of the connection on that
/// thread). The accept loop hands connections to the lanes in turn; lanes accepting on a
/// shared socket themselves let one lane take every connection of a burst.
struct Lanes {
    lanes: Vec<Lane>,
    next: std::sync::atomic::AtomicUsize,
}

struct Lane {
    runtime: tokio::runtime::Handle,
    front: Arc<FrontDoor>,
    http: Arc<pingora_proxy::HttpProxy<Warden>>,
    /// Dropped to end the lane's thread once its connections are done.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Lanes {
    fn start(
        conf: &Arc<ServerConf>,
        shared: &Arc<Shared>,
        tracker: &TaskTracker,
        addr: SocketAddr,
    ) -> Result<Lanes, StartError> {
        let thread_err = |source| StartError::Bind {
            addr,
            key: "proxy.listen",
            source,
        };
        let mut lanes: Vec<Lane> = Vec::new();
        for i in 0..conf.threads.max(1) {
            let mut http = pingora_proxy::http_proxy(conf, Warden::new(shared.clone()));
            // A CONNECT inside an HTTP/2 tunnel must reach `request_filter`, which refuses it
            // with warden's own answer and log line (`unexpected_connect`) instead of
            // Pingora's bare 405. None is ever proxied: admission refuses every CONNECT that
            // reaches the engine, and an HTTP/1.1 one never gets there (the front door and
            // the HTTP/1 loop take it first).
            let mut options = pingora_core::apps::HttpServerOptions::default();
            options.allow_connect_method_proxying = true;
            http.server_options = Some(options);
            let http = Arc::new(http);
            let front = Arc::new(match lanes.first() {
                None => FrontDoor::new(shared.clone(), http.clone())?,
                Some(first) => first.front.for_engine(http.clone()),
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(thread_err)?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let tracker = tracker.clone();
            std::thread::Builder::new()
                .name(format!("warden-{i}"))
                .spawn(move || {
                    // Once stopped, the connections still open are served to their end, as
                    // after a drain (the tracker is closed by then).
                    runtime.block_on(async {
                        let _ = stopped.await;
                        tracker.wait().await;
                    });
                    runtime.shutdown_timeout(LANE_STOP);
                })
                .map_err(thread_err)?;
            lanes.push(Lane {
                runtime: handle,
                front,
                http,
                _stop: stop,
            });
        }
        Ok(Lanes {
            lanes,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Serves an accepted connection on the next lane, registered with that lane's reactor.
    fn serve(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        shutdown: ShutdownWatch,
        tracker: &TaskTracker,
    ) {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                log::debug!("could not hand {peer} to a lane: {e}");
                return;
            }
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.lanes.len();
        let lane = &self.lanes[i];
        let front = lane.front.clone();
        tracker.spawn_on(
            async move {
                match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => front.serve(l4_stream(tcp, peer), shutdown).await,
                    Err(e) => log::debug!("could not hand {peer} to a lane: {e}"),
                }
            },
            &lane.runtime,
        );
    }

    /// Tells every engine's idle keep-alive connections to close.
    async fn cleanup(&self) {
        for lane in &self.lanes {
            lane.http.cleanup().await;
        }
    }
}

/// How long a lane's thread waits, at its end, for tasks that are not connections.
const LANE_STOP: Duration = Duration::from_millis(200);

/// An accepted TCP connection as the engine takes it, with the peer address `accept` gave
/// already in its digest (no `getpeername` later).
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(digest);
    stream
}

/// Binds the listeners named in `snapshot` and starts serving on the current tokio runtime.
pub async fn start(snapshot: Snapshot) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr, key: &'static str, backlog: u32| {
        listen(addr, backlog).map_err(|source| StartError::Bind { addr, key, source })
    };
    let proxy_listener = bind(
        snapshot.proxy_listen,
        "proxy.listen",
        snapshot.proxy_backlog,
    )?;
    let admin_listener = match snapshot.admin_listen {
        Some(addr) => Some(bind(addr, "admin.listen", ADMIN_BACKLOG)?),
        None => None,
    };
    let local = |l: &TcpListener, addr: SocketAddr, key| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, key, source })
    };
    let proxy_addr = local(&proxy_listener, snapshot.proxy_listen, "proxy.listen")?;
    let admin_addr = match (&admin_listener, snapshot.admin_listen) {
        (Some(l), Some(addr)) => Some(local(l, addr, "admin.listen")?),
        _ => None,
    };

    let runtime = crate::runtime::Runtime::new(&snapshot);
    let shared = Arc::new(Shared {
        runtime,
        snapshot: ArcSwap::from_pointee(snapshot),
        own_addrs: std::iter::once(proxy_addr).chain(admin_addr).collect(),
        metrics: crate::telemetry::Metrics::new(),
        generation: std::sync::atomic::AtomicU64::new(1),
        connector: LlmConnector::default(),
    });
    let redis = attach_state(&shared).await?;
    shared.configured();
    let conf = Arc::new(ServerConf {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..ServerConf::default()
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let lanes = Arc::new(Lanes::start(&conf, &shared, &tracker, proxy_addr)?);
    let dispatch = lanes.clone();
    let lane_tracker = tracker.clone();
    tracker.spawn(accept_loop(
        proxy_listener,
        shutdown_rx.clone(),
        shared.clone(),
        move |tcp, peer, shutdown| dispatch.serve(tcp, peer, shutdown, &lane_tracker),
    ));
    tracker.spawn(expire_registrations(shared.clone(), shutdown_rx.clone()));
    if let Some(redis) = redis {
        let on_unavailable = shared.snapshot.load().state.on_unavailable;
        let budgets = Arc::new(crate::store::SharedBudgets::new(
            redis.clone(),
            on_unavailable,
        ));
        shared.runtime.budgets.share(budgets.clone());
        tracker.spawn(sync_budgets(budgets, shutdown_rx.clone()));
        tracker.spawn(follow_state(shared.clone(), redis, shutdown_rx.clone()));
    }
    if let Some(listener) = admin_listener {
        let admin = Arc::new(HttpServer::new_app(Admin::new(shared.clone())));
        let tls = match &shared.snapshot.load().admin_tls {
            Some(t) => Some(Arc::new(admin_acceptor(t)?)),
            None => None,
        };
        let admin_tracker = tracker.clone();
        tracker.spawn(accept_loop(
            listener,
            shutdown_rx,
            shared.clone(),
            move |tcp, peer, shutdown| {
                let admin = admin.clone();
                let tls = tls.clone();
                let stream = l4_stream(tcp, peer);
                admin_tracker.spawn(async move {
                    match tls {
                        None => {
                            admin.process_new(Box::new(stream), &shutdown).await;
                        }
                        Some(acceptor) => {
                            let handshake =
                                pingora_core::protocols::tls::server::handshake(&acceptor, stream);
                            match tokio::time::timeout(ADMIN_HANDSHAKE, handshake).await {
                                Ok(Ok(tls)) => {
                                    admin.process_new(Box::new(tls), &shutdown).await;
                                }
                                Ok(Err(e)) => log::debug!("admin TLS handshake failed: {e}"),
                                Err(_) => log::debug!("admin TLS handshake timed out"),
                            }
                        }
                    }
                });
            },
        ));
    }
    Ok(Running {
        proxy_addr,
        admin_addr,
        shared,
        shutdown_tx,
        tracker,
        lanes,
    })
}

/// The admin listener's TLS (`admin.tls`): the certificate chain and key from their files.
fn admin_acceptor(t: &crate::config::AdminTls) -> Result<openssl::ssl::SslAcceptor, StartError> {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let at = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StartError::AdminTls { path, source }
    };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    b.set_certificate_chain_file(&t.cert).map_err(at(&t.cert))?;
    b.set_private_key_file(&t.key, SslFiletype::PEM)
        .map_err(at(&t.key))?;
    b.check_private_key().map_err(at(&t.key))?;
    Ok(b.build())
}

/// Opens `state`'s store and loads the clients registered in it.
/// A Redis store comes back with the follower that keeps this instance in step with it.
async fn attach_state(
    shared: &Shared,
) -> Result<Option<Arc<crate::store::RedisStore>>, StartError> {
    use crate::store::{Backend, Embedded, Memory, RedisStore, Store};
    let snap = shared.snapshot.load_full();
    let st = &snap.state;
    let registry = &shared.runtime.registry;
    let (store, redis): (Arc<dyn Store>, _) = match (st.backend, &st.path, &st.url) {
        (Backend::Embedded, Some(path), _) => (Arc::new(Embedded::open(path)?), None),
        (Backend::Redis, _, Some(url)) => {
            let redis = Arc::new(RedisStore::new(url, &st.key_prefix)?);
            (redis.clone() as Arc<dyn Store>, Some(redis))
        }
        _ => (Arc::new(Memory), None),
    };
    match registry.attach(store, st.sealer.clone(), &snap).await {
        Ok(0) => {}
        Ok(n) => log::info!("state: {n} registered clients loaded"),
        // A fleet's shared store may be down when one instance starts: it starts anyway and
        // takes the registrations in when the store answers.
        Err(e) if redis.is_some() => {
            shared.metrics.state_available.set(0);
            log::warn!("{e}; starting without registered clients until redis answers");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(redis)
}

/// Keeps this instance's registered clients in step with a Redis store: every announced
/// change is taken in, and after each (re)connection the whole set is read again, so what
/// changed while the connection was down is not missed.
async fn follow_state(
    shared: Arc<Shared>,
    redis: Arc<crate::store::RedisStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::store::Store;
    use futures_util::StreamExt;
    let registry = &shared.runtime.registry;
    let mut down = false;
    loop {
        match redis.subscribe().await {
            Ok(mut changes) => {
                match redis.load().await {
                    Ok(all) => {
                        registry.reconcile(&all, &shared.snapshot.load());
                        shared.metrics.state_available.set(1);
                        if std::mem::take(&mut down) {
                            log::info!("state: redis answers again; registrations resynced");
                        }
                    }
                    // Try the whole subscription again: nothing may be missed in between.
                    Err(e) => {
                        log::debug!("state: resync failed: {e}");
                        down = true;
                        tokio::select! {
                            _ = tokio::time::sleep(FOLLOW_RETRY) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                loop {
                    let change = tokio::select! {
                        c = changes.next() => c,
                        _ = shutdown.changed() => return,
                    };
                    let Some(change) = change else { break };
                    let Ok(name) = change.get_payload::<String>() else {
                        continue;
                    };
                    match redis.get(&name).await {
                        Ok(Some(c)) => registry.apply(&c, &shared.snapshot.load()),
                        Ok(None) => registry.remove(&name),
                        Err(e) => log::warn!("state: reading client `{name}` failed: {e}"),
                    }
                }
            }
            Err(e) => log::debug!("state: {e}"),
        }
        if !down {
            down = true;
            shared.metrics.state_available.set(0);
            log::warn!("state: lost redis; known clients keep working, registration answers 503 until it is back");
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Hands budget counts to Redis and takes the fleet's totals back, every [`BUDGET_SYNC`].
async fn sync_budgets(
    budgets: Arc<crate::store::SharedBudgets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BUDGET_SYNC) => {}
            _ = shutdown.changed() => return,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match budgets.sync(now).await {
            Ok(()) if std::mem::take(&mut failing) => {
                log::info!("state: budget counts are shared through redis again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                log::warn!("{e}; budgets follow state.on_unavailable until redis is back");
            }
            Err(_) => {}
        }
    }
}

/// How often budget counts are exchanged with Redis: the most a fleet's budget can be passed
/// by, in time, before every instance knows.
const BUDGET_SYNC: Duration = Duration::from_millis(200);

/// How soon the follower tries Redis again after losing it.
const FOLLOW_RETRY: Duration = Duration::from_millis(250);

/// Revokes registered clients as they expire, until shutdown.
async fn expire_registrations(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::registry::SWEEP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        shared
            .runtime
            .registry
            .expire(std::time::SystemTime::now())
            .await;
    }
}

/// How long a client of the admin listener may take over its TLS handshake.
const ADMIN_HANDSHAKE: Duration = Duration::from_secs(10);

/// The admin listener serves a scraper and an operator, not a fleet of agents.
const ADMIN_BACKLOG: u32 = 128;

/// How often a persisting accept failure is logged: once per interval, with a count.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A listening socket with `backlog` queued connections (std's `bind` fixes 128, so a
/// burst of connects beyond it was dropped while accepts stalled).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Logs accept failures at most once per interval, with how many there were.
struct AcceptErrors {
    since: Option<std::time::Instant>,
    count: u64,
}

impl AcceptErrors {
    fn record(&mut self, e: &std::io::Error, metrics: &crate::telemetry::Metrics) {
        let fds = matches!(e.raw_os_error(), Some(23 | 24));
        metrics.accept_error(fds);
        self.count += 1;
        let now = std::time::Instant::now();
        match self.since {
            Some(t) if now.duration_since(t) < ACCEPT_ERROR_LOG_INTERVAL => {}
            _ => {
                log::warn!(
                    "accept failed {} time(s) in the last {:?}: {e}",
                    self.count,
                    ACCEPT_ERROR_LOG_INTERVAL
                );
                self.since = Some(now);
                self.count = 0;
            }
        }
    }
}

async fn accept_loop<F>(
    listener: TcpListener,
    mut shutdown: ShutdownWatch,
    shared: Arc<Shared>,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, ShutdownWatch),
{
    let mut errors = AcceptErrors {
        since: None,
        count: 0,
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    log::debug!("TCP_NODELAY failed: {e}");
                }
                handle(stream, peer, shutdown.clone());
            }
            Err(e) => {
                errors.record(&e, &shared.metrics);
                // Out of descriptors: back off instead of spinning on the error.
                if matches!(e.raw_os_error(), Some(23 | 24)) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Running {
    /// The bound proxy address (the real port when the config said port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The bound admin address, if an admin listener is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// How many lanes (threads, each with its own engine and upstream pool) serve the proxy.
    pub fn lanes(&self) -> usize {
        self.lanes.lanes.len()
    }

    /// The live config snapshot holder.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, tells idle keep-alive connections to close, and waits up to `grace`
    /// for in-flight work. Returns true when everything finished within the grace period.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let _ = self.shutdown_tx.send(true);
        self.lanes.cleanup().await;
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        self.tracker.close();
    }
}
