//! The real servers the tests talk to, started by the test process itself
//! on loopback from the scripts in `tests/servers/` (jars from Maven Central,
//! cached in `~/.cache/tessera`): an Apache Kafka broker and an Apache
//! Cassandra node. Each shared one starts once per test run, on first use; a
//! watchdog shell stops every server when the test process exits, however
//! it exits. (moto's S3 server is in `support.rs`.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{free_port, workspace_root};

/// A server script run in the background under a watchdog: started over
/// the data in `dir/data` (kept across restarts, removed when the test
/// process ends), its pid in `dir/server.pid`.
struct Watched {
    dir: PathBuf,
    script: &'static str,
    args: Vec<String>,
    ready_line: &'static str,
    what: &'static str,
    starts: u32,
}

impl Watched {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("server.pid")
    }

    /// Starts the server and waits (up to 10 minutes: the first run on a
    /// machine downloads the jars) until its log has `ready_line`.
    fn start(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let data = self.dir.join("data");
        let pid = std::process::id();
        let args: Vec<String> = self.args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "'{}' '{}' {} >'{}' 2>&1 & k=$!; echo $k >'{}'; while kill -0 {pid} 2>/dev/null && kill -0 $k 2>/dev/null; do sleep 0.5; done; kill $k 2>/dev/null; wait $k; kill -0 {pid} 2>/dev/null || rm -rf '{}'",
            workspace_root().join(self.script).display(),
            data.display(),
            args.join(" "),
            log.display(),
            self.pid_file().display(),
            data.display(),
        );
        let _ = std::fs::remove_file(self.pid_file());
        // Not waited for: the watchdog lives as long as the server.
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {}: {e}", self.what));
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(self.ready_line) {
                break;
            }
            let gone = self.starts > 0
                && std::fs::read_to_string(self.pid_file())
                    .is_ok_and(|p| !Path::new(&format!("/proc/{}", p.trim())).exists());
            assert!(
                Instant::now() < deadline && !gone,
                "the {} did not start; its log:\n{text}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's process id, once started.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// SIGKILLs the server if it runs.
    fn sigkill(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }

    /// SIGKILLs the server and waits until `port` is closed.
    fn kill(&mut self, port: u16) {
        self.sigkill();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// An Apache Kafka broker (KRaft, one process: `tests/servers/kafka.sh`) on
/// fixed loopback ports, so that it can be killed and started again over
/// the same data.
pub struct KafkaBroker {
    server: Watched,
    port: u16,
}

impl KafkaBroker {
    /// A broker on free ports in `dir`, not started yet.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        KafkaBroker {
            server: Watched {
                dir: dir.to_path_buf(),
                script: "tests/servers/kafka.sh",
                args: vec![port.to_string(), free_port().to_string()],
                ready_line: "Kafka Server started",
                what: "Kafka broker",
                starts: 0,
            },
            port,
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (over the data of an earlier start, if any) and
    /// waits until it serves.
    pub fn start(&mut self) {
        self.server.start();
    }

    /// SIGKILLs the broker and waits until its port is closed.
    pub fn kill(&mut self) {
        self.server.kill(self.port);
    }
}

/// The broker shared by the whole test run, started on first use; its
/// `bootstrap.servers`.
pub fn kafka_bootstrap() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-kafka-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut broker = KafkaBroker::new(&dir);
        broker.start();
        let addr = broker.bootstrap();
        // Runs until the test process exits (the watchdog stops it).
        std::mem::forget(broker);
        addr
    })
}

/// A single-node Apache Cassandra 5.0 (`tests/servers/cassandra.sh`), the
/// CQL server standing in for ScyllaDB, with password authentication on
/// (superuser `cassandra`/`cassandra`).
pub struct CassandraNode {
    server: Watched,
    port: u16,
}

impl CassandraNode {
    /// A node on free ports in `dir`, not started yet.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        CassandraNode {
            server: Watched {
                dir: dir.to_path_buf(),
                script: "tests/servers/cassandra.sh",
                args: vec![port.to_string(), free_port().to_string()],
                ready_line: "Startup complete",
                what: "Cassandra node",
                starts: 0,
            },
            port,
        }
    }

    pub fn contact_point(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        self.server.start();
    }

    pub fn kill(&mut self) {
        self.server.kill(self.port);
    }

    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.server.pid()
    }
}

/// The CQL servers the store tests run against: the shared Cassandra node,
/// and the ScyllaDB at `SCYLLA_URI` (`host:port`, with `SCYLLA_USER` and
/// `SCYLLA_PASSWORD` if it needs them) when that is set.
pub fn cql_servers() -> Vec<CqlServer> {
    let mut out = vec![cassandra().clone()];
    if let Ok(uri) = std::env::var("SCYLLA_URI") {
        let uri = uri
            .trim_start_matches("scylla://")
            .trim_end_matches('/')
            .to_string();
        out.push(CqlServer {
            name: "scylla",
            contact_point: uri,
            username: std::env::var("SCYLLA_USER").ok(),
            password: std::env::var("SCYLLA_PASSWORD").ok(),
        });
    }
    out
}

/// How to reach one CQL server as its superuser.
#[derive(Clone, Debug)]
pub struct CqlServer {
    pub name: &'static str,
    pub contact_point: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl CqlServer {
    /// A `[store]` table for a fresh keyspace named after `stem`: the job
    /// as the superuser, the serving API as a read-only role of its own.
    pub fn store_section(&self, stem: &str) -> String {
        let ks = keyspace(stem);
        let auth = |user: &Option<String>, password: &Option<String>| match (user, password) {
            (Some(u), Some(p)) => format!("username = \"{u}\"\npassword = \"{p}\"\n"),
            _ => String::new(),
        };
        let serving = if self.name == "cassandra" {
            auth(&Some("tessera_serving".into()), &Some("serving".into()))
        } else {
            auth(&self.username, &self.password)
        };
        format!(
            "[store]\ntype = \"scylla\"\ncontact_points = [\"{}\"]\nkeyspace = \"{ks}\"\nconnect_retry = \"60s\"\n[store.job]\n{}[store.serving]\n{serving}[store.cache]\nmax_tiles = 64\n",
            self.contact_point,
            auth(&self.username, &self.password)
        )
    }
}

/// A keyspace name unique in this test run.
pub fn keyspace(stem: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{}_{}_{}",
        stem.replace('-', "_"),
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The Cassandra node shared by the whole test run, started on first use,
/// with a read-only login role `tessera_serving` for the serving sessions.
pub fn cassandra() -> &'static CqlServer {
    static SERVER: OnceLock<CqlServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-cassandra-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut node = CassandraNode::new(&dir);
        node.start();
        let server = CqlServer {
            name: "cassandra",
            contact_point: node.contact_point(),
            username: Some("cassandra".into()),
            password: Some("cassandra".into()),
        };
        cql(&server, &[
            "CREATE ROLE IF NOT EXISTS tessera_serving WITH PASSWORD = 'serving' AND LOGIN = true",
            "GRANT SELECT ON ALL KEYSPACES TO tessera_serving",
        ]);
        std::mem::forget(node);
        server
    })
}

/// Runs `f` on a session with `server` as its superuser.
fn with_session<R>(
    server: &CqlServer,
    f: impl AsyncFnOnce(&scylla::client::session::Session) -> R,
) -> R {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut b = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&server.contact_point);
        if let (Some(u), Some(p)) = (&server.username, &server.password) {
            b = b.user(u, p);
        }
        // A fresh node opens its native port before its default superuser
        // role exists (slow on a 2-core CI machine): until then a login
        // fails with an authentication error, so retry for a while.
        let started = Instant::now();
        let session = loop {
            match b.build().await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < Duration::from_secs(120) => {
                    eprintln!("{}: not ready for a login yet ({e}); retrying", server.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("connecting to the CQL server {}: {e}", server.name),
            }
        };
        f(&session).await
    })
}

/// Runs statements on `server` as its superuser.
pub fn cql(server: &CqlServer, statements: &[&str]) {
    with_session(server, async |session| {
        for s in statements {
            session
                .query_unpaged(*s, ())
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    })
}

/// The rows of one query on `server` as its superuser.
pub fn cql_rows<T>(server: &CqlServer, query: &str) -> Vec<T>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    with_session(server, async |session| {
        session
            .query_unpaged(query, ())
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .into_rows_result()
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .rows::<T>()
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .collect::<Result<Vec<T>, _>>()
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    })
}
