//! A calldesk server inside the test process (`calldesk::server::start`) on a free loopback
//! port, with a throw-away store (SQLite in a temp dir, or a fresh PostgreSQL database: see
//! `Store`) and fast simulated-switch timings.

use std::{net::SocketAddr, time::Duration};

use calldesk::server::{config::Config, RunningServer};
use tempfile::TempDir;
use tonic::transport::Endpoint;

use super::{client_on, endpoint, postgres, Client, Store, WAIT};

/// The test defaults: the contract's defaults with fast simulated-switch timings.
pub fn fast_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        sim_ring: Duration::from_millis(20),
        sim_answer: Duration::from_millis(20),
        sim_no_answer: Duration::from_millis(300),
        sim_talk: Duration::from_millis(150),
        originate_timeout: Duration::from_millis(300),
        ..Config::default()
    }
}

/// A calldesk server running in this process.
pub struct TestServer {
    server: Option<RunningServer>,
    addr: SocketAddr,
    pub config: Config,
    _dir: TempDir,
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults changed by `change`, on the store
    /// `CALLDESK_TEST_STORE` names.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_on(Store::from_env(), change).await
    }

    /// Like [`TestServer::start_with`], always on SQLite: for tests of the SQLite store itself.
    pub async fn start_sqlite_with(change: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_on(Store::Sqlite, change).await
    }

    /// Starts a server with the test defaults on `store`, then changed by `change` (which may
    /// replace the store's settings: `data_dir`, `database_url`, `peer_token_file`).
    pub async fn start_on(store: Store, change: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = fast_config();
        config.data_dir = dir.path().join("data");
        if store == Store::Postgres {
            config.database_url = Some(postgres::PgCluster::shared().database());
            config.peer_token_file = Some(postgres::write_peer_token(dir.path()));
            config.lease_duration = humantime::parse_duration(postgres::TEST_LEASE)
                .expect("the test lease is a duration");
        }
        change(&mut config);
        let server = calldesk::server::start(config.clone())
            .await
            .expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            config,
            _dir: dir,
        }
    }

    /// The SIP address of a server running `--telephony sip`.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(|s| s.sip_addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn endpoint(&self) -> Endpoint {
        endpoint(self.addr)
    }

    /// A client for `agent`, on a connection of its own.
    pub fn client(&self, agent: &str) -> Client {
        client_on(self.endpoint().connect_lazy(), Some(agent))
    }

    /// A client that sends no `x-agent-id` (the agent `default`).
    pub fn anonymous_client(&self) -> Client {
        client_on(self.endpoint().connect_lazy(), None)
    }

    /// A client whose connection has tiny HTTP/2 flow-control windows (64 KiB - 1), so that a
    /// stream nobody reads pushes back on the server quickly.
    pub fn small_window_client(&self, agent: &str) -> Client {
        let channel = self
            .endpoint()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect_lazy();
        client_on(channel, Some(agent))
    }

    /// Takes the running server out, e.g. to shut it down from another task.
    pub fn take_running(&mut self) -> RunningServer {
        self.server.take().expect("server still running")
    }

    /// Stops the server gracefully.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown())
                .await
                .expect("shutdown within the timeout")
                .expect("clean shutdown");
        }
    }
}
