//! The server side: wiring, listeners and the tower layers around the API.
//!
//! [`start`] opens the store, builds the telephony backend the config names
//! ([`telephony::backend`], the one place a backend is chosen), starts the call manager, and
//! serves InteractionService, health and reflection on one port until told to stop, over
//! HTTP/2 (gRPC) and, for browsers, HTTP/1.1 or HTTP/2 (gRPC-Web: each service is wrapped in
//! tonic-web's `GrpcWebLayer`, not the whole server, so that the layers below see every
//! request). Around the services sit the transport's layers, outermost first: CORS (only with
//! `--cors-allow-origin`), [`console`] (the page at `/`), [`metrics`], [`shape`], [`auth`],
//! [`trace`], [`limits`], [`deadline`]; [`net`] shapes the accepted connections, [`http`]
//! serves them (hyper directly rather than tonic's `Server`, to bound what a stream may queue
//! for a client that does not read) and [`config`] holds the flags.
//!
//! A deploy drains first: on SIGTERM [`RunningServer::drain_calls`] marks health NOT_SERVING and
//! has the call manager refuse new calls, then waits (at most `--drain-calls-for`) for the live
//! calls to end, the transport and every watch stream still serving them.
//!
//! Shutdown is a signal passed down, not a global: [`RunningServer::shutdown`] marks health
//! NOT_SERVING, flips the watch channel every watch stream listens to (they end with
//! UNAVAILABLE, as the connections' graceful drain would otherwise wait for them forever),
//! lets in-flight calls finish within the grace period, and finally lets the call manager
//! commit what it has in flight and stop the store writer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic_web::GrpcWebLayer;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub mod auth;
mod batched_writes;
pub mod caller_ids;
pub mod compliance;
pub mod config;
pub mod console;
pub mod deadline;
mod error;
pub mod health;
pub mod http;
mod jwks_fetch;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod peers;
pub mod reload;
pub mod shape;
pub mod sip_agents;
pub mod telephony;
pub mod trace;
pub mod webhooks;

use crate::{
    api::{limits::WatchLimiter, InteractionApi, PhoneRules},
    manager::{CallManager, ManagerConfig},
    proto::{self, interaction_service_server::InteractionServiceServer},
    store,
};
use auth::{AuthLayer, TokenSource};
use config::Config;
pub use error::ServeError;
use health::{Health, Reason};

/// How long StartCall's idempotency keys are remembered (the contract's 24 hours).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// HTTP/2 streams one connection may have open at once (watches are streams too).
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Pings idle connections so that dead peers and half-open NATs are noticed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Of `--shutdown-grace`, the part kept for what follows the transport's drain (SIP hang-ups,
/// the store's last commit), so that the whole shutdown fits in the grace.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(1);
/// Restores h2's guard against reset floods, which tonic's default turned off (hyper's is the
/// same number; kept explicit).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// A store file up to this size is checked in full before the server listens (well under a
/// second); a larger one in the background, NOT_SERVING until the check passes, so that
/// start-up stays fast (≤ 2 s with 1,000,000 interactions).
const SYNC_INTEGRITY_CHECK_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The store's flush ends this long before the grace period does, so that a stalled disk is
/// reported as such before `serve`'s hard bound on the whole shutdown cuts it short (nothing
/// uncommitted was acknowledged either way).
const STORE_FLUSH_MARGIN: Duration = Duration::from_millis(50);

/// The message of a shutdown whose store did not finish its writes in time: the process must
/// exit without waiting for them (`serve` does).
const STORE_DID_NOT_FLUSH: &str = "the store did not finish its writes";

/// A server that is up and answering on `local_addr()`.
pub struct RunningServer {
    /// The bound address (the real port when `--listen` asked for port 0).
    local_addr: SocketAddr,
    /// Flipped to true to stop: the server's drain and every watch stream listen to it.
    stop: watch::Sender<bool>,
    /// To report NOT_SERVING before anything else stops.
    health: Health,
    /// To flush the store once no request can reach it any more.
    manager: CallManager,
    /// To close its reads before the writer stops (SQLite then leaves one file).
    store: store::Store,
    /// The serve loop ([`http::serve`]), which owns every connection.
    serving: JoinHandle<()>,
    /// How long in-flight calls get to finish.
    grace: Duration,
    /// SQLite: the retention thread, stopped with the server (PostgreSQL's runs with the
    /// lease).
    retention: Option<store::Retention>,
    /// PostgreSQL: this replica's lease, released after a clean stop.
    replica: Option<store::postgres::Replica>,
    /// The store's faults, to notice that this replica was fenced.
    faults: store::FaultState,
    /// The backend's lines: with SIP, every live leg is hung up at shutdown (no orphan
    /// calls).
    lines: telephony::Lines,
    /// SQLite: held while the server runs, one process per data dir.
    data_dir_lock: Option<DataDirLock>,
    /// `--webhooks`: the deliveries, stopped first at shutdown.
    webhooks: Option<crate::webhooks::Webhooks>,
    /// PostgreSQL, after a drain that ran out: stop without hanging up the live calls, for a
    /// survivor to take them over and recover them (docs/api.md §8.3, §9.2).
    hand_over: bool,
}

impl RunningServer {
    /// The address the server answers on (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The SIP switch's address (UDP and TCP), with `--telephony sip`.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.lines.sip_addr()
    }

    /// Resolves if this replica is fenced (PostgreSQL: its lease expired and another replica
    /// took over its interactions): it must stop, and a new one take its place. Never with
    /// SQLite.
    pub async fn fenced(&self) -> String {
        let mut faults = self.faults.subscribe();
        let fenced = faults
            .wait_for(|f| f.contains_key(&store::StoreFault::Fenced))
            .await
            .ok()
            .and_then(|f| f.get(&store::StoreFault::Fenced).cloned());
        match fenced {
            Some(detail) => detail,
            None => std::future::pending().await,
        }
    }

    /// Drains (SIGTERM, before [`RunningServer::shutdown_for`]): health NOT_SERVING at once,
    /// StartCall and DialStaged refused (`UNAVAILABLE`: the client starts the call elsewhere),
    /// while the live calls go on — agents end, hold, resume, complete and watch them as ever —
    /// until none is left or `limit` has passed. Returns how many calls were still live then
    /// (the shutdown hangs them up). Dropping the future ends the wait; new calls stay refused.
    pub async fn drain_calls(&self, why: &str, limit: Duration) -> usize {
        self.health.set(Reason::ShuttingDown, why);
        self.health.report().await;
        if self.manager.drain().await.is_err() {
            return 0;
        }
        let mut live = self.manager.live_calls();
        let calls = *live.borrow_and_update();
        if calls == 0 {
            return 0;
        }
        tracing::info!(
            calls,
            limit = %humantime::format_duration(limit),
            "draining: new calls are refused; waiting for the live calls to end"
        );
        let started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(limit, live.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if drained {
            let took = Duration::from_millis(started.elapsed().as_millis() as u64);
            tracing::info!(
                took = %humantime::format_duration(took),
                "drained: every live call has ended"
            );
            return 0;
        }
        let left = *live.borrow();
        if self.replica.is_some() {
            tracing::warn!(
                calls = left,
                limit = %humantime::format_duration(limit),
                "calls still live after --drain-calls-for; handing them over to another replica"
            );
        } else {
            tracing::warn!(
                calls = left,
                limit = %humantime::format_duration(limit),
                "calls still live after --drain-calls-for; hanging them up"
            );
        }
        left
    }

    /// After a drain that ran out (`drain_calls` left calls live): with replicas (PostgreSQL),
    /// the shutdown then leaves the live calls up for a survivor to take over and recover,
    /// instead of hanging them up; true when it will. A single node (SQLite) hangs up.
    pub fn hand_over_calls(&mut self) -> bool {
        self.hand_over = self.replica.is_some();
        self.hand_over
    }

    /// Stops gracefully: health NOT_SERVING, open watch streams end with UNAVAILABLE,
    /// in-flight unary calls finish (within the grace period), the store is flushed.
    /// If the store cannot commit what is in flight by the end of the grace period (a stalled
    /// disk), this returns an error without waiting for it: nothing uncommitted was
    /// acknowledged.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown_for("shutdown requested").await
    }

    /// [`RunningServer::shutdown`], with why (the signal) for health's log line.
    pub async fn shutdown_for(self, why: &str) -> Result<(), ServeError> {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.health.set(Reason::ShuttingDown, why);
        self.health.report().await;
        if let Some(webhooks) = self.webhooks {
            webhooks.stop();
        }
        let _ = self.stop.send(true);
        // Nobody may be left ringing or talking on a line calldesk placed: CANCEL or BYE every
        // leg, at once and beside the drain, so that it fits in the grace (at most 4 s). After
        // a crash the restart ends these interactions (SERVER_RESTART).
        let lines = self.lines.clone();
        let hand_over = self.hand_over;
        let hanging_up = tokio::spawn(async move {
            if !hand_over {
                lines.hang_up_all().await;
            }
        });
        let mut serving = self.serving;
        // The transport gets the grace less what the rest of the shutdown needs.
        let transport_grace = self.grace - SHUTDOWN_RESERVE.min(self.grace / 4);
        let outcome = match tokio::time::timeout(transport_grace, &mut serving).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError(format!("server task failed: {e}"))),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "calls still running after the grace period; stopping anyway");
                serving.abort();
                Ok(())
            }
        };
        let _ = hanging_up.await;
        let flush = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(STORE_FLUSH_MARGIN);
        // Every other connection to the store first: SQLite removes the -wal and -shm files
        // when the last connection closes, and the writer's must be that one.
        let retention = self.retention;
        let store = self.store;
        let manager = self.manager;
        let flushing = async move {
            if let Some(retention) = retention {
                let _ = tokio::task::spawn_blocking(move || retention.stop()).await;
            }
            store.close_reads();
            manager.shutdown().await;
        };
        if tokio::time::timeout(flush, flushing).await.is_err() {
            tracing::error!(
                waited = ?flush,
                "the store did not finish its writes (the disk stalls); exiting without them: \
                 none of them was acknowledged"
            );
            return Err(ServeError(format!(
                "{STORE_DID_NOT_FLUSH} within {flush:?} after the grace period"
            )));
        }
        if let Some(replica) = self.replica {
            if self.faults.has(store::StoreFault::Fenced) {
                tracing::warn!("fenced: the lease is another replica's now; not releasing it");
            } else {
                replica.release().await;
            }
        }
        drop(self.data_dir_lock);
        outcome
    }
}

/// Starts a server; returns once it is listening.
pub async fn start(config: Config) -> Result<RunningServer, ServeError> {
    let authenticates = config.auth_tokens.is_some() || config.jwt_jwks.is_some();
    if !authenticates && !config.insecure && !config.listen.ip().is_loopback() {
        return Err(ServeError(format!(
            "refusing to listen on {} without --auth-tokens or --jwt-jwks: anyone who reaches \
             it could act as any agent. Give --auth-tokens FILE or --jwt-jwks, listen on a \
             loopback address, or pass --insecure if the network in front of it authenticates \
             callers",
            config.listen
        )));
    }
    let tokens = config
        .auth_tokens
        .as_deref()
        .map(TokenSource::from_file)
        .transpose()
        .map_err(ServeError)?;
    let jwt = match (&config.jwt_jwks, &config.jwt_issuer, &config.jwt_audience) {
        (Some(source), Some(issuer), Some(audience)) => {
            let settings = jwt::JwtSettings {
                issuer: issuer.clone(),
                audience: audience.clone(),
                agent_claim: config.jwt_agent_claim.clone(),
            };
            Some(
                jwt::JwtVerifier::start(source, &settings)
                    .await
                    .map_err(ServeError)?,
            )
        }
        (Some(_), _, _) => {
            return Err(ServeError(
                "--jwt-jwks needs --jwt-issuer and --jwt-audience".to_owned(),
            ))
        }
        _ => None,
    };
    let tls = tls_config(&config)?;
    let webhooks = webhooks::load(&config)?;
    // With --database-url: the replicas' shared secret, read once (the auth layer checks it on
    // forwarded requests, the peer client sends it on this replica's own).
    let peer_secret = match (&config.database_url, &config.peer_token_file) {
        (Some(_), Some(path)) => Some(auth::PeerSecret::from_file(path).map_err(ServeError)?),
        _ => None,
    };
    if let Some(addr) = config.metrics_listen {
        metrics::install(addr).map_err(ServeError)?;
    }
    let phone_rules = PhoneRules::new(config.default_region.as_deref()).map_err(ServeError)?;
    let warming = phone_rules.clone();
    tokio::task::spawn_blocking(move || warming.warm_up())
        .await
        .map_err(|e| ServeError(format!("phone number metadata: {e}")))?;
    // The port before the data dir: a start that fails because the port is taken leaves no
    // empty data dir behind. Connections that arrive meanwhile wait in the backlog.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError(format!("cannot listen on {}: {e}", config.listen)))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServeError(format!("cannot listen on {}: {e}", config.listen)))?;
    let opened = match &config.database_url {
        None => open_sqlite(&config).await?,
        Some(url) => open_postgres(&config, url, local_addr, peer_secret.clone()).await?,
    };
    let OpenedStore {
        store,
        writer_conn,
        recovered,
        retention,
        data_dir_lock,
        mut replica,
        peers,
        shown,
    } = opened;
    if config.metrics_listen.is_some() {
        metrics::expose_at_zero(store.is_shared());
    }
    let webhooks = webhooks::start(webhooks, &store).await?;
    let backend = telephony::backend(&config).await?;
    let manager = CallManager::start(
        ManagerConfig {
            deferred_dial: config.deferred_dial,
            originate_timeout: config.originate_timeout,
            wrap_up_timeout: config.wrap_up_timeout,
            max_active_calls: config.max_active_calls,
            idempotency_ttl: IDEMPOTENCY_TTL,
            compliance: compliance::load(&config)?,
            pacing_wait: backend.pacing_wait,
            idempotency_cache_keys: config.idempotency_cache_keys as usize,
            caller_ids: caller_ids::load(&config)?,
            conference_uri: config.sip.sip_conference_uri.clone(),
        },
        store.clone(),
        writer_conn,
        recovered,
        backend.telephony,
    );
    let manager = match peers {
        Some(peers) => manager.with_peers(Arc::new(peers)),
        None => manager,
    };
    // Trunk pacing's limits are the deployment's: each replica paces its share of them.
    if let (Some(replica), Some(pacer)) = (&replica, &backend.pacer) {
        let mut membership = replica.membership();
        let pacer = pacer.clone();
        tokio::spawn(async move {
            loop {
                let now = *membership.borrow_and_update();
                pacer.set_share(now.replicas, now.rank);
                if membership.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some(mut adopted) = replica.as_mut().and_then(|r| r.adopted()) {
        let adopting = manager.clone();
        tokio::spawn(async move {
            while let Some(taken) = adopted.recv().await {
                if adopting.adopt(taken).await.is_err() {
                    return;
                }
            }
        });
    }

    let (stop, stopped) = watch::channel(false);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::start(reporter).await;
    tokio::spawn(follow_store(
        store.faults().subscribe(),
        health.clone(),
        stopped.clone(),
    ));
    if let Some(trunk_up) = backend.lines.trunk_up() {
        tokio::spawn(follow_trunk(trunk_up, health.clone(), stopped.clone()));
    }
    // Both versions: grpcurl 1.8 asks v1alpha, buf curl v1 (then v1alpha). Beside the services,
    // the google.rpc messages calldesk puts in error details (tonic-types' error_details.proto
    // and status.proto), so that a tool that resolves `Any` through reflection decodes them.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError(format!("reflection: {e}")))?;

    let api = InteractionApi::new(
        manager.clone(),
        phone_rules,
        stopped.clone(),
        WatchLimiter::new(config.max_watch_streams, config.max_watch_streams_per_agent),
        config.request_timeout,
        store.page_tokens().clone(),
    );
    let interactions = GrpcWebLayer::new().layer(
        InteractionServiceServer::new(api).max_decoding_message_size(limits::MAX_REQUEST_BYTES),
    );
    let health_service = GrpcWebLayer::new().layer(health_service);

    let layers = tower::ServiceBuilder::new()
        .option_layer(cors_layer(&config.cors_allow_origins))
        .layer(console::ConsoleLayer::new(authenticates))
        .layer(metrics::MetricsLayer)
        .layer(shape::RequestShape)
        .layer(AuthLayer::new(tokens, jwt, peer_secret))
        .layer(trace::TraceLayer::default())
        .layer(limits::TonicStatuses)
        .layer(deadline::Deadlines {
            request_timeout: config.request_timeout,
        })
        .into_inner();
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(interactions)
        .prepare();
    // As tonic's `Server` stacks them: its per-request layers outside calldesk's.
    let service = tower::ServiceBuilder::new()
        .layer(tonic::service::RecoverErrorLayer::new())
        .layer(http::GrpcTimeoutLayer)
        .layer(layers)
        .service(routes);
    let service = tower::util::BoxCloneService::new(
        ServiceExt::<::http::Request<tonic::body::Body>>::map_response(service, |response| {
            response.map(tonic::body::Body::new)
        }),
    );
    let settings = http::Settings {
        max_concurrent_streams: MAX_CONCURRENT_STREAMS,
        keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
        keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
        max_local_error_resets: MAX_LOCAL_ERROR_RESETS,
        max_header_list_size: shape::MAX_HEADER_LIST_BYTES,
        max_http1_header_fields: shape::MAX_HTTP1_HEADER_FIELDS,
        max_send_buffer: config.max_stream_send_buffer,
    };
    let serving = tokio::spawn(http::serve(
        net::incoming(
            listener,
            net::ConnectionLimits {
                tcp_keepalive: TCP_KEEPALIVE,
                handshake_timeout: config.idle_connection_timeout,
                max_connections: config.max_connections as usize,
                tls: config.tls_cert.is_some(),
            },
        ),
        tls,
        service,
        settings,
        stopped,
    ));
    tracing::info!(%local_addr, store = %shown, "serving");
    Ok(RunningServer {
        local_addr,
        stop,
        health,
        manager,
        serving,
        faults: store.faults().clone(),
        store,
        grace: config.shutdown_grace,
        retention,
        replica,
        lines: backend.lines,
        data_dir_lock,
        webhooks,
        hand_over: false,
    })
}

/// The store `start` opened, with what runs beside it.
struct OpenedStore {
    store: store::Store,
    writer_conn: store::WriterConn,
    recovered: store::Recovered,
    retention: Option<store::Retention>,
    data_dir_lock: Option<DataDirLock>,
    replica: Option<store::postgres::Replica>,
    /// PostgreSQL: how the call manager forwards to the replicas that own interactions.
    peers: Option<peers::PeerClient>,
    /// How logs name the store.
    shown: String,
}

/// SQLite in `--data-dir`: locked, opened (created or migrated), checked.
async fn open_sqlite(config: &Config) -> Result<OpenedStore, ServeError> {
    // The lock first: nothing looks at, creates or migrates the store before this process
    // is the only calldesk on the data dir.
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let (store, writer_conn, recovered) = match store::open(&config.data_dir, config.durability) {
        Ok(opened) => opened,
        Err(e) => {
            data_dir_lock.release_refused();
            return Err(ServeError(e.message));
        }
    };
    check_integrity(&config.data_dir, &store).await?;
    let retention = store::Retention::start(
        config.data_dir.join(store::DB_FILE),
        config.retention,
        store::retention_interval(config.retention),
    )
    .map_err(|e| ServeError(e.message))?;
    Ok(OpenedStore {
        store,
        writer_conn,
        recovered,
        retention: Some(retention),
        data_dir_lock: Some(data_dir_lock),
        replica: None,
        peers: None,
        shown: config.data_dir.join(store::DB_FILE).display().to_string(),
    })
}

/// PostgreSQL at `--database-url`: this process is one replica among any number, with a lease,
/// an address its peers reach it at, and the secret they forward with.
async fn open_postgres(
    config: &Config,
    url: &str,
    local_addr: SocketAddr,
    secret: Option<auth::PeerSecret>,
) -> Result<OpenedStore, ServeError> {
    let Some(secret) = secret else {
        return Err(ServeError(
            "--database-url needs --peer-token-file: replicas forward operations on the calls \
             they own to each other, authenticated by that shared secret (a file whose first \
             line is e.g. the output of `openssl rand -hex 32`; the same file for every \
             replica)"
                .into(),
        ));
    };
    let peer_tls = peers::tls(config)?;
    let advertise_address = match &config.advertise_address {
        Some(address) => address.clone(),
        None if !local_addr.ip().is_unspecified() => local_addr.to_string(),
        None => {
            return Err(ServeError(format!(
                "--database-url with --listen {} needs --advertise-address HOST:PORT: the \
                 address the other replicas reach this one at (e.g. the pod IP and port {})",
                config.listen,
                local_addr.port()
            )))
        }
    };
    let lease = config
        .lease_duration
        .max(std::time::Duration::from_millis(300));
    let (store, writer_conn, recovered, replica) =
        store::open_postgres(store::postgres::Settings {
            url: url.to_owned(),
            advertise_address,
            lease,
            retention: config.retention,
        })
        .await
        .map_err(|e| ServeError(e.message))?;
    let shown = store.faults().path().display().to_string();
    Ok(OpenedStore {
        store,
        writer_conn,
        recovered,
        retention: None,
        data_dir_lock: None,
        replica: Some(replica),
        peers: Some(peers::PeerClient::new(secret, peer_tls)),
        shown,
    })
}

/// The request headers a gRPC-Web page sends: its content-type, gRPC-Web's own, the deadline,
/// who is calling, and the W3C trace context of a page that traces its requests.
const CORS_REQUEST_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-agent-id",
    "traceparent",
    "tracestate",
];
/// The response headers a gRPC-Web page must read: a trailers-only answer's status.
const CORS_EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
/// How long a browser may reuse a preflight's answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// CORS for the pages of `origins` (`--cors-allow-origin`): exactly those origins (never
/// whichever one asks), `POST` only. None without origins: no CORS header at all.
fn cors_layer(origins: &[::http::HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([::http::Method::POST])
            .allow_headers(CORS_REQUEST_HEADERS.map(::http::HeaderName::from_static))
            .expose_headers(CORS_EXPOSED_HEADERS.map(::http::HeaderName::from_static))
            .max_age(CORS_MAX_AGE),
    )
}

/// Health NOT_SERVING while the SIP trunk leaves OPTIONS unanswered, so that a mesh routes new
/// calls elsewhere, and SERVING again (unless something else holds) once it answers.
async fn follow_trunk(
    mut trunk_up: watch::Receiver<bool>,
    health: Health,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let up = *trunk_up.borrow_and_update();
        health.hold(Reason::Trunk, !up, "no answer to OPTIONS");
        tokio::select! {
            changed = trunk_up.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// Health NOT_SERVING for each fault of the store while it holds.
async fn follow_store(
    mut faults: watch::Receiver<store::Faults>,
    health: Health,
    mut stopped: watch::Receiver<bool>,
) {
    let mut shown = store::Faults::new();
    loop {
        let now = faults.borrow_and_update().clone();
        for fault in shown.keys().filter(|f| !now.contains_key(f)) {
            health.clear(Reason::Store(*fault));
        }
        for (fault, detail) in &now {
            health.set(Reason::Store(*fault), detail);
        }
        shown = now;
        tokio::select! {
            changed = faults.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// SQLite's check of the store (`quick_check`): before listening for a small file (a damaged
/// one is refused, with how to recover), in the background for a large one.
async fn check_integrity(
    data_dir: &std::path::Path,
    store: &store::Store,
) -> Result<(), ServeError> {
    let Some(store) = store.sqlite() else {
        return Ok(());
    };
    let path = data_dir.join(store::DB_FILE);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size > SYNC_INTEGRITY_CHECK_MAX_BYTES {
        store.check_integrity_in_background();
        return Ok(());
    }
    let checked = store.clone();
    tokio::task::spawn_blocking(move || checked.check_integrity())
        .await
        .map_err(|e| ServeError(format!("integrity check: {e}")))?
        .map_err(|e| ServeError(e.message))
}

/// The data dir's lock: held while the server runs, released by the OS when the process dies,
/// however it dies.
struct DataDirLock {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// This process made the lock file (the data dir had none).
    created: bool,
}

impl DataDirLock {
    /// The store was refused: leave the data dir as it was found (no lock file beside a
    /// foreign file), removing the lock file while still holding it.
    fn release_refused(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.file);
    }
}

/// Creates the data dir if needed and takes its lock file, so that a second calldesk on the
/// same store refuses to start instead of creating or migrating the schema beside the first,
/// or recovering (and ending) its live calls.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<DataDirLock, ServeError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        ServeError(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join("calldesk.lock");
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServeError(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock {
            file,
            path,
            created,
        }),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError(format!(
            "another calldesk is using data dir {} (it holds {})",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ServeError(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// The TLS settings of `--tls-cert`, `--tls-key` and `--tls-client-ca`, if given.
fn tls_config(config: &Config) -> Result<Option<http::Tls>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServeError(format!("cannot read {}: {e}", path.display())))
    };
    let client_ca = config.tls_client_ca.as_deref().map(read).transpose()?;
    // A client that stalls in the TLS handshake is closed as one that stalls in HTTP/2's.
    http::Tls::new(
        &read(cert)?,
        &read(key)?,
        client_ca.as_deref(),
        config.idle_connection_timeout,
    )
    .map(Some)
}

/// `calldesk serve`: starts, prints `calldesk listening on ADDR` on stdout, and runs until
/// SIGTERM or SIGINT, then shuts down gracefully: after SIGTERM, once the live calls have
/// ended (at most `--drain-calls-for`; another signal cuts the wait short). A signal during the
/// shutdown itself exits at once.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // Registered before the server says it is listening: a signal sent right after that line
    // must shut it down gracefully, not kill it.
    let mut stop = StopSignals::register()?;
    // SIGHUP's default action ends the process; with --auth-tokens it reloads the tokens,
    // without it there is nothing to reload and a stray HUP must not stop the server.
    #[cfg(unix)]
    let _ignore_hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // A file-size limit (`ulimit -f`, `prlimit --fsize`) must fail the write that crosses it
    // (EFBIG: the store's STORE_WRITE_FAILED, which passes by itself, docs/api.md §9.1), not
    // kill the process with SIGXFSZ's default action.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let grace = config.shutdown_grace;
    let drain_calls_for = config.drain_calls_for;
    let mut server = start(config).await?;
    println!("calldesk listening on {}", server.local_addr());
    let (mut fenced, why) = tokio::select! {
        signal = stop.recv() => (None, signal),
        detail = server.fenced() => (Some(detail), "fenced"),
    };
    let stopping = std::time::Instant::now();
    match &fenced {
        None => tracing::info!(signal = why, "shutting down"),
        Some(detail) => tracing::error!("fenced: {detail}; stopping this replica"),
    }
    // SIGTERM (a deploy, a node drain) lets the live calls end first; SIGINT (someone at the
    // terminal) and a fenced replica stop at once, hanging up.
    if fenced.is_none() && why == "SIGTERM" && !drain_calls_for.is_zero() {
        let mut left = 0;
        tokio::select! {
            n = server.drain_calls(why, drain_calls_for) => left = n,
            signal = stop.recv() => tracing::warn!(
                signal,
                "signal while draining: hanging up the live calls and stopping now"
            ),
            detail = server.fenced() => {
                tracing::error!("fenced while draining: {detail}; stopping this replica");
                fenced = Some(detail);
            }
        }
        // The drain ran out: with replicas, a survivor takes the calls over (§9.2).
        if left > 0 {
            server.hand_over_calls();
        }
    }
    tokio::spawn(async move {
        stop.recv().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
    // The grace is a hard bound on the whole shutdown, whatever clients or the disk do.
    // Exiting mid-way is a crash as far as the store is concerned, which loses nothing
    // acknowledged; the process exits here rather than wait for blocking threads.
    match tokio::time::timeout(grace, server.shutdown_for(why)).await {
        Ok(Err(e)) if e.0.starts_with(STORE_DID_NOT_FLUSH) => {
            // Returning would wait for the threads stuck on the disk (the runtime's blocking
            // pool): exit now. A thread stuck inside the kernel (a frozen file system) ends
            // when the disk answers; nothing it finishes then was acknowledged.
            eprintln!("calldesk: {e}");
            std::process::exit(1);
        }
        Ok(outcome) => match fenced {
            Some(detail) => Err(ServeError(format!("this replica was fenced: {detail}"))),
            None => {
                if outcome.is_ok() {
                    // The last line of a deliberate stop: it went as asked.
                    let took =
                        std::time::Duration::from_millis(stopping.elapsed().as_millis() as u64);
                    tracing::info!(
                        took_ms = took.as_millis() as u64,
                        "stopped cleanly in {}",
                        humantime::format_duration(took)
                    );
                }
                outcome
            }
        },
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown did not finish within --shutdown-grace; exiting now"
            );
            std::process::exit(1);
        }
    }
}

/// SIGTERM and SIGINT, registered up front.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> Result<Self, ServeError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let cannot = |e: std::io::Error| ServeError(format!("cannot handle signals: {e}"));
            Ok(Self {
                term: signal(SignalKind::terminate()).map_err(cannot)?,
                int: signal(SignalKind::interrupt()).map_err(cannot)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next SIGTERM or SIGINT, with its name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
