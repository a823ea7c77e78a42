//! The servers under test, each started on the server runtime on a free loopback port:
//! the actix-web floor, the naive one-`INCR`-per-visit handlers, and tally-server itself.
//!
//! Every target is an actix-web `HttpServer` with the settings tally-server uses (default
//! worker count, signals off), spawned the way tally-server spawns it, so the only
//! difference between targets is what the handlers do.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use deadpool_redis::redis;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

/// Connections per Redis node of the naive pool: tally-server's `REDIS_POOL_SIZE` default.
const NAIVE_POOL_SIZE: usize = 16;

/// Longest a server gets to stop (drain, and for tally flush) before the harness gives up.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What runs behind the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A bare actix-web handler answering a small JSON: the ceiling for any handler.
    Floor,
    /// One `INCR` per visit through a deadpool-redis pool per node.
    Naive,
    /// One `INCR` per visit on one shared multiplexed connection per node (no pool).
    NaiveMux,
    /// tally-server on `tally_counter::MemoryStore` (`STORE=memory`): counts in this
    /// process only, the reference the embedded store is measured against.
    TallyMemory,
    /// `tally-memory` with `ENABLE_DASHBOARD=false`: what the dashboard's per-request
    /// figures cost, measured against `tally-memory` (dashboard on, the default) in the
    /// same run.
    TallyMemoryNoDashboard,
    /// tally-server on its default store, `tally_embedded::EmbeddedStore` (one redb file in
    /// a fresh temporary `DATA_DIR`).
    TallyEmbedded,
    /// tally-server on the three Redis nodes.
    TallyRedis,
    /// tally-server on a Redis Cluster of six nodes (`REDIS_CLUSTER`): three primaries
    /// with a replica each, every batch confirmed by `WAIT` on one replica.
    TallyCluster,
}

impl Kind {
    /// Every target, in the order they run.
    pub const ALL: [Kind; 8] = [
        Kind::Floor,
        Kind::Naive,
        Kind::NaiveMux,
        Kind::TallyMemory,
        Kind::TallyMemoryNoDashboard,
        Kind::TallyEmbedded,
        Kind::TallyRedis,
        Kind::TallyCluster,
    ];

    /// The name used on the command line and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Naive => "naive",
            Kind::NaiveMux => "naive-mux",
            Kind::TallyMemory => "tally-memory",
            Kind::TallyMemoryNoDashboard => "tally-memory-no-dashboard",
            Kind::TallyEmbedded => "tally-embedded",
            Kind::TallyRedis => "tally-redis",
            Kind::TallyCluster => "tally-cluster",
        }
    }

    /// Whether the target is tally-server (on any store).
    pub fn is_tally(self) -> bool {
        matches!(
            self,
            Kind::TallyMemory
                | Kind::TallyMemoryNoDashboard
                | Kind::TallyEmbedded
                | Kind::TallyRedis
                | Kind::TallyCluster
        )
    }

    /// Whether the target talks to the three standalone Redis nodes.
    pub fn uses_redis(self) -> bool {
        matches!(self, Kind::Naive | Kind::NaiveMux | Kind::TallyRedis)
    }

    /// Whether the target talks to the Redis Cluster.
    pub fn uses_cluster(self) -> bool {
        self == Kind::TallyCluster
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A started server: its address and how to stop it.
pub struct Running {
    /// Where it listens (127.0.0.1, a free port).
    pub address: SocketAddr,
    stop: Stop,
    /// tally-server's `DATA_DIR` (its embedded store's file), removed after the server
    /// stops.
    _data: Option<tempfile::TempDir>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

enum Stop {
    Actix {
        handle: ServerHandle,
        task: JoinHandle<std::io::Result<()>>,
    },
    Tally {
        signal: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<tally_server::ShutdownReport>>,
    },
}

/// Starts `kind`; `redis_urls` are the nodes it counts on (`redis://127.0.0.1:PORT`):
/// the standalone nodes, or for `tally-cluster` the cluster's seeds; `metrics` is
/// tally-server's `ENABLE_METRICS`. Call inside the server runtime: the server's tasks are
/// spawned on it.
pub async fn start(kind: Kind, redis_urls: &[String], metrics: bool) -> anyhow::Result<Running> {
    match kind {
        Kind::Floor => start_actix(None),
        Kind::Naive => {
            let pools = redis_urls
                .iter()
                .map(|url| {
                    deadpool_redis::Config::from_url(url.as_str())
                        .builder()
                        .context("naive pool config")?
                        .max_size(NAIVE_POOL_SIZE)
                        .runtime(deadpool_redis::Runtime::Tokio1)
                        .build()
                        .context("naive pool")
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            start_actix(Some(Naive::Pooled(pools)))
        }
        Kind::NaiveMux => {
            let mut conns = Vec::with_capacity(redis_urls.len());
            for url in redis_urls {
                let client = redis::Client::open(url.as_str()).context("naive node url")?;
                conns.push(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .with_context(|| format!("cannot connect to {url}"))?,
                );
            }
            start_actix(Some(Naive::Multiplexed(conns)))
        }
        Kind::TallyMemory => start_tally(TallyStore::Memory, metrics).await,
        Kind::TallyMemoryNoDashboard => start_tally(TallyStore::MemoryNoDashboard, metrics).await,
        Kind::TallyEmbedded => {
            let data = tempfile::tempdir().context("a temporary DATA_DIR")?;
            start_tally(TallyStore::Embedded(data), metrics).await
        }
        Kind::TallyRedis => start_tally(TallyStore::Redis(redis_urls.join(",")), metrics).await,
        Kind::TallyCluster => start_tally(TallyStore::Cluster(redis_urls.join(",")), metrics).await,
    }
}

/// Starts tally-server on the embedded store already in `data` (e.g. seeded by the
/// `/stats/` scale scenario, which closed it first: one process holds the file at a time).
/// The directory is removed once the server has stopped.
pub async fn start_tally_embedded(
    data: tempfile::TempDir,
    metrics: bool,
) -> anyhow::Result<Running> {
    start_tally(TallyStore::Embedded(data), metrics).await
}

/// How a server stopped.
#[derive(Clone, Debug, Default)]
pub struct Stopped {
    /// From the stop signal to the server's end: draining, and for tally the flush of its
    /// pending counts.
    pub took: Duration,
    /// tally-server's flush of pending visits (its request statistics' flush is in its
    /// log only); `None` for the other targets.
    pub flush: Option<tally_server::ShutdownReport>,
}

impl Stopped {
    /// Pages whose acknowledged visits tally-server could not write before its shutdown
    /// deadline (0 for the other targets).
    pub fn pages_unwritten(&self) -> usize {
        self.flush.as_ref().map_or(0, |f| f.keys_unwritten)
    }

    /// Visits acknowledged but not written.
    pub fn visits_unwritten(&self) -> u64 {
        self.flush.as_ref().map_or(0, |f| f.increments_unwritten)
    }

    /// Fails when tally-server left visits unwritten: for the scenarios that count none,
    /// where that can only be a fault.
    pub fn all_written(&self) -> anyhow::Result<()> {
        let days = self.flush.as_ref().map_or(0, |f| f.subkeys_unwritten);
        anyhow::ensure!(
            self.pages_unwritten() == 0 && days == 0,
            "tally-server could not write {} pages ({days} page days) at shutdown",
            self.pages_unwritten()
        );
        Ok(())
    }
}

impl Running {
    /// Stops the server (tally also flushes its pending counts, within its
    /// `SHUTDOWN_TIMEOUT_SECONDS`, 25 s), within [`STOP_TIMEOUT`]. Visits tally could not
    /// write in time are reported in [`Stopped`], not an error: under a load its store
    /// cannot keep up with, that is a figure of the run.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        let started = Instant::now();
        let stopped = async {
            match self.stop {
                Stop::Actix { handle, task } => {
                    handle.stop(true).await;
                    task.await?.context("the server failed")?;
                    anyhow::Ok(None)
                }
                Stop::Tally { signal, task } => {
                    let _ = signal.send(());
                    Ok(Some(task.await??))
                }
            }
        };
        let flush = tokio::time::timeout(STOP_TIMEOUT, stopped)
            .await
            .context("the server did not stop within 30 s")??;
        Ok(Stopped {
            took: started.elapsed(),
            flush,
        })
    }
}

/// Where tally-server counts.
enum TallyStore {
    /// The embedded store, its file in this directory (`DATA_DIR`).
    Embedded(tempfile::TempDir),
    /// `STORE=memory`.
    Memory,
    /// `STORE=memory` and `ENABLE_DASHBOARD=false`.
    MemoryNoDashboard,
    /// `REDIS_NODES`, comma-separated.
    Redis(String),
    /// `REDIS_CLUSTER`, comma-separated; `REDIS_WAIT_REPLICAS` left to its default (1
    /// on a cluster with replicas).
    Cluster(String),
}

async fn start_tally(store: TallyStore, metrics: bool) -> anyhow::Result<Running> {
    // Defaults for everything else, as `cargo run -p tally-server` with only these set.
    // The embedded store's file goes to a temporary directory, never the working
    // directory's `./tally-data`.
    let mut vars = vec![
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("ENABLE_METRICS", metrics.to_string()),
    ];
    let data = match store {
        TallyStore::Embedded(data) => {
            vars.push(("DATA_DIR", data.path().display().to_string()));
            Some(data)
        }
        TallyStore::Memory => {
            vars.push(("STORE", "memory".to_owned()));
            None
        }
        TallyStore::MemoryNoDashboard => {
            vars.push(("STORE", "memory".to_owned()));
            vars.push(("ENABLE_DASHBOARD", "false".to_owned()));
            None
        }
        TallyStore::Redis(nodes) => {
            vars.push(("REDIS_NODES", nodes));
            None
        }
        TallyStore::Cluster(seeds) => {
            vars.push(("REDIS_CLUSTER", seeds));
            None
        }
    };
    let config = tally_server::Config::from_vars(vars).context("tally-server config")?;
    let app = tally_server::run(config)
        .await
        .context("cannot start tally-server")?;
    let address = app.address();
    let (signal, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Ok(Running {
        address,
        stop: Stop::Tally { signal, task },
        _data: data,
    })
}

/// The naive handlers' connections to the nodes.
#[derive(Clone)]
enum Naive {
    /// What the deadpool-redis docs show: a pool per node, a connection checked out per
    /// command (deadpool pings it on checkout).
    Pooled(Vec<deadpool_redis::Pool>),
    /// A multiplexed connection per node, shared by every request.
    Multiplexed(Vec<redis::aio::MultiplexedConnection>),
}

impl Naive {
    async fn incr(&self, page_id: &str) -> anyhow::Result<u64> {
        let key = format!("naive:v:{page_id}");
        let mut command = redis::cmd("INCR");
        command.arg(&key);
        // Routing: xxh3 of the page id modulo the node count (a simple hash, not the ring).
        let hash = xxh3_64(page_id.as_bytes());
        match self {
            Naive::Pooled(pools) => {
                let pool = &pools[(hash % pools.len() as u64) as usize];
                let mut conn = pool.get().await?;
                Ok(command.query_async(&mut *conn).await?)
            }
            Naive::Multiplexed(conns) => {
                let mut conn = conns[(hash % conns.len() as u64) as usize].clone();
                Ok(command.query_async(&mut conn).await?)
            }
        }
    }
}

#[derive(Serialize)]
struct Echo<'a> {
    status: &'static str,
    path: &'a str,
}

/// The floor: answers every route with a small JSON, nothing else.
async fn floor(req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(Echo {
        status: "success",
        path: req.path(),
    })
}

#[derive(Serialize)]
struct Counted<'a> {
    status: &'static str,
    page_id: &'a str,
    visits: u64,
}

/// The naive visit: one `INCR` on the page's node, awaited before answering.
async fn naive_visit(naive: web::Data<Naive>, page_id: web::Path<String>) -> HttpResponse {
    match naive.incr(&page_id).await {
        Ok(visits) => HttpResponse::Ok().json(Counted {
            status: "success",
            page_id: &page_id,
            visits,
        }),
        Err(e) => HttpResponse::ServiceUnavailable().json(Echo {
            status: "error",
            path: &e.to_string(),
        }),
    }
}

/// An actix-web server on a free loopback port: the floor's routes, or with `naive` the
/// visit route counting through Redis.
fn start_actix(naive: Option<Naive>) -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let server = HttpServer::new(move || {
        let app = actix_web::App::new();
        match &naive {
            Some(naive) => app.app_data(web::Data::new(naive.clone())).route(
                "/api/v1/counter/visit/{page_id}",
                web::post().to(naive_visit),
            ),
            None => app
                .route("/api/v1/counter/visit/{page_id}", web::post().to(floor))
                .route("/api/v1/counter/visits/{page_id}", web::get().to(floor))
                .route("/api/{tail:.*}", web::get().to(floor))
                .route("/health", web::get().to(floor)),
        }
    })
    // As tally-server: the harness owns signals.
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .context("cannot start the HTTP server")?
    .run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    Ok(Running {
        address,
        stop: Stop::Actix { handle, task },
        _data: None,
    })
}
