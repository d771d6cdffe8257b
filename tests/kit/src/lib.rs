//! Test support shared by the services' integration tests, the cross-service tests (`tests/`)
//! and the benchmarks (`benches/`): the broker under test, free ports, a service binary run as a
//! real process, plain HTTP requests and metric reads, and the lifecycle checks every service
//! binary must pass. A dev-dependency only: no service binary links it.

pub mod program;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository's root (this crate is `tests/kit`): where `deploy/local/kafka.sh` is.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Bootstrap servers of the broker under test: `KAFKA_BOOTSTRAP_SERVERS`, else the local
/// broker that `deploy/local/kafka.sh start` runs.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The secured listeners of the broker under test (`deploy/local/kafka.sh` serves them): the
/// SASL_SSL and mTLS addresses and the directory of its CA, client certificate and SCRAM
/// password. From `KAFKA_SASL_BOOTSTRAP_SERVERS`, `KAFKA_SSL_BOOTSTRAP_SERVERS` and
/// `KAFKA_TLS_DIR` (the test command sets them), else asked of `kafka.sh`.
#[derive(Debug, Clone)]
pub struct SecureListeners {
    pub sasl_bootstrap: String,
    pub ssl_bootstrap: String,
    pub tls_dir: PathBuf,
}

impl SecureListeners {
    pub fn of_broker_under_test() -> SecureListeners {
        let ask = |variable: &str, command: &str| {
            std::env::var(variable).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
                let script = repository_root().join("deploy/local/kafka.sh");
                let output = Command::new("bash").arg(script).arg(command).output().expect("kafka.sh runs");
                assert!(
                    output.status.success(),
                    "{variable} is not set and `kafka.sh {command}` failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout).trim().to_owned()
            })
        };
        SecureListeners {
            sasl_bootstrap: ask("KAFKA_SASL_BOOTSTRAP_SERVERS", "bootstrap-sasl"),
            ssl_bootstrap: ask("KAFKA_SSL_BOOTSTRAP_SERVERS", "bootstrap-ssl"),
            tls_dir: PathBuf::from(ask("KAFKA_TLS_DIR", "tls-dir")),
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.tls_dir.join(name).display().to_string()
    }

    /// The SCRAM password of user `abm`.
    pub fn password(&self) -> String {
        std::fs::read_to_string(self.tls_dir.join("sasl-password")).expect("sasl-password").trim().to_owned()
    }

    /// Service environment for SASL_SSL with SCRAM-SHA-512 as user `abm` (`password` given, so
    /// a test can also pass a wrong one), trusting `ca` (a file of the TLS dir).
    pub fn sasl_env(&self, password: &str, ca: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ABM_KAFKA__BOOTSTRAP_SERVERS", self.sasl_bootstrap.clone()),
            ("ABM_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL", "SASL_SSL".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_MECHANISMS", "SCRAM-SHA-512".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_USERNAME", "abm".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_PASSWORD", password.into()),
            ("ABM_KAFKA__LIBRDKAFKA__SSL_CA_LOCATION", self.file(ca)),
        ]
    }

    /// Service environment for SASL_SSL with OAUTHBEARER: librdkafka fetches its tokens from
    /// `endpoint` (an OIDC client-credentials grant), the broker checks them against its
    /// issuer's keys.
    pub fn oauth_env(&self, endpoint: &TokenEndpoint, client_secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ABM_KAFKA__BOOTSTRAP_SERVERS", self.sasl_bootstrap.clone()),
            ("ABM_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL", "SASL_SSL".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_MECHANISMS", "OAUTHBEARER".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_OAUTHBEARER_METHOD", "oidc".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_OAUTHBEARER_CLIENT_ID", endpoint.client_id.clone()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_OAUTHBEARER_CLIENT_SECRET", client_secret.into()),
            ("ABM_KAFKA__LIBRDKAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", endpoint.url.clone()),
            ("ABM_KAFKA__LIBRDKAFKA__SSL_CA_LOCATION", self.file("ca.pem")),
        ]
    }

    /// Service environment for mTLS: the CA and the client certificate and key.
    pub fn mtls_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ABM_KAFKA__BOOTSTRAP_SERVERS", self.ssl_bootstrap.clone()),
            ("ABM_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL", "SSL".into()),
            ("ABM_KAFKA__LIBRDKAFKA__SSL_CA_LOCATION", self.file("ca.pem")),
            ("ABM_KAFKA__LIBRDKAFKA__SSL_CERTIFICATE_LOCATION", self.file("client.pem")),
            ("ABM_KAFKA__LIBRDKAFKA__SSL_KEY_LOCATION", self.file("client.key")),
        ]
    }
}

/// A stand-in for an OIDC provider's token endpoint (the client-credentials grant, RFC 6749
/// 4.4): a POST with client `client_id` and its secret in HTTP Basic auth gets a JWT that the
/// broker under test accepts (`kafka.sh oauth-token`, signed with its issuer's key); anything
/// else gets 401 `invalid_client`. Counts what it handed out and refused.
#[derive(Debug)]
pub struct TokenEndpoint {
    pub url: String,
    pub client_id: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenEndpoint {
    pub fn start(secure: &SecureListeners, client_id: &str, client_secret: &str) -> TokenEndpoint {
        use base64::Engine as _;
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("token endpoint binds");
        let url = format!("http://{}/oauth2/token", listener.local_addr().expect("address"));
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"));
        // Header name and scheme are case-insensitive; the base64 credentials are not.
        let expected = format!("basic {credentials}");
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (issued_here, refused_here, tls_dir) = (issued.clone(), refused.clone(), secure.tls_dir.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let request = read_http_request(&mut stream);
                let head = request.to_ascii_lowercase();
                let authorized = request.lines().filter_map(|line| line.split_once(':')).any(|(name, value)| {
                    let value = value.trim();
                    name.trim().eq_ignore_ascii_case("authorization")
                        && value.get(..6).is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic "))
                        && value.get(6..) == expected.get(6..)
                });
                let granted = head.starts_with("post ") && authorized && head.contains("grant_type=client_credentials");
                let (status, body) = if granted {
                    issued_here.fetch_add(1, Ordering::Relaxed);
                    let token = oauth_token(&tls_dir);
                    ("200 OK", format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#))
                } else {
                    refused_here.fetch_add(1, Ordering::Relaxed);
                    ("401 Unauthorized", r#"{"error":"invalid_client"}"#.to_owned())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenEndpoint { url, client_id: client_id.to_owned(), issued, refused }
    }

    /// Tokens handed out so far.
    pub fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests refused so far (wrong client or secret).
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One HTTP/1.1 request (head and a `Content-Length` body) as text.
fn read_http_request(stream: &mut TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut bytes = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&bytes).into_owned(),
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
}

/// A JWT of the broker's issuer for subject `abm`: `kafka.sh oauth-token`, with the key of
/// `tls_dir` (the broker under test's).
fn oauth_token(tls_dir: &Path) -> String {
    let script = repository_root().join("deploy/local/kafka.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(["oauth-token", "abm", "3600"])
        .env("KAFKA_TLS_DIR", tls_dir)
        .output()
        .expect("kafka.sh runs");
    assert!(output.status.success(), "kafka.sh oauth-token failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Replaces (or adds) `overrides` in a service environment.
pub fn with_env(
    mut env: Vec<(&'static str, String)>,
    overrides: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    env.retain(|(key, _)| !overrides.iter().any(|(other, _)| other == key));
    env.extend_from_slice(overrides);
    env
}

/// A name no other test run uses (topics, groups).
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A TCP port that was free a moment ago, and never given out before by this process: the
/// kernel may hand the same free port to two tests running in parallel (seen once: two
/// services of two end-to-end tests on one port, the second failing to listen).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        if GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}

/// Account `acme` (domain `acme.example`, tier 1) for a test's TAL.
pub fn acme_account() -> abm_schemas::Account {
    abm_schemas::Account {
        account_id: "acme".into(),
        name: "Acme".into(),
        domains: vec!["acme.example".into()],
        tier: abm_schemas::Tier::Tier1,
        owner: "sdr@vendor.example".into(),
        industry: None,
        employees: None,
        committee: None,
        updated_at: 0,
    }
}

/// The data-API token every service started by [`ServiceProcess::start`] accepts, and that
/// [`http_get`] sends.
pub const TEST_API_TOKEN: &str = "testkit-api-token";

/// `GET http://127.0.0.1:port/path`: status code and body, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_API_TOKEN}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned());
    Some((status, body))
}

/// One HTTP/1.1 request (`Connection: close`): status, headers (lower-cased names) and body.
/// Status 0 when nothing listens or the server closed the connection without answering.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, std::collections::BTreeMap::new(), String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("writes");
    // A 413 may close the connection before the whole body is sent.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned())).collect();
    (status, headers, body.to_owned())
}

/// Polls `path` until it answers `status`, or panics after `timeout` with `context`.
pub fn wait_for_status(port: u16, path: &str, status: u16, timeout: Duration, context: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((got, body)) = http_get(port, path)
            && got == status
        {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} did not answer {status} within {timeout:?}\n{context}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls metric `name` (with `labels`) until it equals `value`, or panics after `timeout`
/// with `context`.
pub fn wait_for_metric(port: u16, name: &str, labels: &[&str], value: f64, timeout: Duration, context: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = metric(port, name, labels);
        if got == value {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, not {value}, after {timeout:?}\n{context}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service binary running as a child process, its stderr kept in a file.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    stderr_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and the extra `env` (on top of a cleaned environment: no
    /// inherited `ABM_` variables), and the API token [`TEST_API_TOKEN`] unless `env` sets
    /// API tokens itself.
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, String)]) -> ServiceProcess {
        let stderr_path = std::env::temp_dir().join(format!("{}.stderr", unique("abm-service")));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(binary);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("ABM_")) {
            command.env_remove(key);
        }
        command.env("RUST_LOG", "info");
        if !env.iter().any(|(key, _)| key.starts_with("ABM_HTTP__API_")) {
            command.env("ABM_HTTP__API_TOKENS__TESTKIT", TEST_API_TOKEN);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        ServiceProcess { child, stderr_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the service's `/readyz` on `port` answers 200; otherwise panics with what it
    /// wrote to stderr (and whether it exited), so a failed start explains itself.
    pub fn wait_ready(&mut self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while http_get(port, "/readyz").map(|(status, _)| status) != Some(200) {
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "not ready on port {port} within {timeout:?} (exit status: {exited:?}); stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit, or kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // ABM_TEST_KEEP_LOGS=1 keeps the services' stderr files for a post-mortem.
        if std::env::var_os("ABM_TEST_KEEP_LOGS").is_none_or(|v| v.is_empty() || v == "0") {
            let _ = std::fs::remove_file(&self.stderr_path);
        }
    }
}

/// Runs `binary` to completion with `args` and `env`: exit status and stderr.
pub fn run_to_exit(binary: &Path, args: &[&str], env: &[(&str, String)], timeout: Duration) -> (ExitStatus, String) {
    let mut process = ServiceProcess::start(binary, args, env);
    let status = process.wait(timeout);
    (status, process.stderr())
}

/// The lifecycle every service binary must have: `--help`; starts with defaults against the
/// broker under test; serves `/healthz`, `/readyz` and `/metrics` (with its build info);
/// on SIGTERM stops cleanly (exit 0) within a bounded time.
pub fn check_service_lifecycle(binary: &str, service: &str) {
    let binary = Path::new(binary);
    let help = Command::new(binary).arg("--help").output().expect("--help runs");
    assert!(help.status.success(), "{service} --help failed");
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(help_text.contains("--config") && help_text.contains(&format!("Usage: {service}")), "{help_text}");

    let port = free_port();
    let mut process = ServiceProcess::start(
        binary,
        &[],
        &[("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")), ("ABM_KAFKA__BOOTSTRAP_SERVERS", bootstrap_servers())],
    );
    let context = || format!("{service} stderr:\n{}", process.stderr());
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), &context());
    assert_eq!(http_get(port, "/healthz").map(|(status, _)| status), Some(200));
    let (status, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("abm_build_info{{service=\"{service}\"")), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");

    process.signal("TERM");
    let status = process.wait(Duration::from_secs(30));
    assert!(status.success(), "{service} exited with {status} after SIGTERM\n{}", process.stderr());
    let stderr = process.stderr();
    assert!(stderr.contains("SIGTERM") && stderr.contains("stopped cleanly"), "{stderr}");
}

/// Bad configuration of every kind ends the process with exit code != 0 and exactly one
/// line on stderr, `<service>: error: ...`, naming what is wrong.
pub fn check_bad_config(binary: &str, service: &str) {
    let binary = Path::new(binary);
    let expect_one_line = |env: &[(&str, String)], args: &[&str], needle: &str| {
        let (status, stderr) = run_to_exit(binary, args, env, Duration::from_secs(60));
        assert!(!status.success(), "{service} should fail for {needle}; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{service}: want one error line for {needle}, got:\n{stderr}");
        assert!(lines[0].starts_with(&format!("{service}: error: ")), "{}", lines[0]);
        assert!(lines[0].contains(needle), "{service}: error should mention {needle}: {}", lines[0]);
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    // Unknown key, from the environment and from a file.
    expect_one_line(&[("ABM_KAFKA__BOOTSTRAP_SERVRES", "x:1".into())], &[], "bootstrap_servres");
    let file = std::env::temp_dir().join(format!("{}.toml", unique("bad-config")));
    std::fs::write(&file, "[http]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n").expect("write config");
    let path = file.display().to_string();
    expect_one_line(&[], &["--config", &path], "listen_backlog");
    // Wrong type.
    std::fs::write(&file, "[kafka]\nconnect_timeout_ms = \"soon\"\n").expect("write config");
    expect_one_line(&[], &["--config", &path], "connect_timeout_ms");
    let _ = std::fs::remove_file(&file);
    // Missing file.
    expect_one_line(&[], &["--config", "/nonexistent/abm.toml"], "/nonexistent/abm.toml");
    // Unreachable broker: nothing listens on a port that was just free.
    let dead = format!("127.0.0.1:{}", free_port());
    expect_one_line(
        &[
            ("ABM_KAFKA__BOOTSTRAP_SERVERS", dead.clone()),
            ("ABM_KAFKA__CONNECT_TIMEOUT_MS", "1500".into()),
            ("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", free_port())),
        ],
        &[],
        &dead,
    );
}

/// Topics of one test: every role of the declared list, renamed `<prefix>.<role>`, so tests
/// running at once never share a topic. When the last clone is dropped (the test ends, passing
/// or panicking), every topic whose name starts with the prefix is deleted, including topics the
/// services or the Kafka Streams peer created under it: the shared broker does not pile up
/// partitions run after run (thousands of them make its start-up take minutes). Set
/// `ABM_TEST_KEEP_TOPICS=1` to keep them for a post-mortem.
#[derive(Debug, Clone)]
pub struct TestTopics {
    pub prefix: String,
    _cleanup: std::sync::Arc<DeleteOnDrop>,
}

/// Deletes the topics named `<prefix>.*` or `<prefix>-*` when dropped.
#[derive(Debug)]
struct DeleteOnDrop {
    prefix: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("ABM_TEST_KEEP_TOPICS").is_some_and(|v| !v.is_empty() && v != "0") {
            return;
        }
        let prefix = self.prefix.clone();
        // A thread of its own: the drop may run inside a test's tokio runtime.
        let deleted = std::thread::spawn(move || delete_topics_with_prefix(&bootstrap_servers(), &prefix)).join();
        if let Ok(Err(error)) = deleted {
            eprintln!("testkit: could not delete the topics of {}: {error}", self.prefix);
        }
    }
}

/// Deletes every topic whose name is `prefix` followed by `.` or `-`; returns how many.
pub fn delete_topics_with_prefix(bootstrap: &str, prefix: &str) -> Result<usize, String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        kafka_at(bootstrap).client_config("test-cleanup").create().map_err(|e| e.to_string())?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(['.', '-'])))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = runtime.block_on(admin.delete_topics(&refs, &options)).map_err(|e| e.to_string())?;
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|(t, e)| format!("{t}: {e}")).collect();
    if failed.is_empty() { Ok(names.len()) } else { Err(failed.join(", ")) }
}

impl TestTopics {
    pub fn new(name: &str) -> TestTopics {
        let prefix = unique(name);
        TestTopics { _cleanup: std::sync::Arc::new(DeleteOnDrop { prefix: prefix.clone() }), prefix }
    }

    pub fn name(&self, role: abm::topics::TopicRole) -> String {
        format!("{}.{}", self.prefix, role.key())
    }

    /// The topics in effect for a service configured with [`TestTopics::env`].
    pub fn topics(&self) -> abm::topics::Topics {
        let overrides = Self::roles().into_iter().map(|(role, _)| (role, self.name(role))).collect();
        abm::topics::Topics::resolve(&overrides)
    }

    /// Every role with its environment variable (`ABM_TOPICS__<KEY>`), built once per process.
    fn roles() -> Vec<(abm::topics::TopicRole, &'static str)> {
        static ROLES: std::sync::LazyLock<Vec<(abm::topics::TopicRole, &'static str)>> =
            std::sync::LazyLock::new(|| {
                abm::topics::TopicRole::ALL
                    .into_iter()
                    .map(|role| {
                        let var: &'static str = format!("ABM_TOPICS__{}", role.key().to_uppercase()).leak();
                        (role, var)
                    })
                    .collect()
            });
        ROLES.clone()
    }

    /// Environment variables that point a service at these topics and the broker under test.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars: Vec<(&'static str, String)> =
            Self::roles().into_iter().map(|(role, key)| (key, self.name(role))).collect();
        vars.push(("ABM_KAFKA__BOOTSTRAP_SERVERS", bootstrap_servers()));
        vars
    }

    /// Creates every topic now (services would create them too; tests often write first).
    pub fn create(&self) {
        self.create_on(&bootstrap_servers());
    }

    /// Creates every topic on the broker at `bootstrap` (a [`PrivateBroker`], say).
    pub fn create_on(&self, bootstrap: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(kafka_at(bootstrap).ensure_topics("test", self.topics().specs())).expect("topics created");
    }
}

/// Client settings for the broker under test.
pub fn kafka() -> abm::kafka::KafkaConfig {
    kafka_at(&bootstrap_servers())
}

/// Client settings for the broker at `bootstrap`.
pub fn kafka_at(bootstrap: &str) -> abm::kafka::KafkaConfig {
    abm::kafka::KafkaConfig { bootstrap_servers: bootstrap.into(), ..abm::kafka::KafkaConfig::default() }
}

/// A producer for test input.
pub type TestProducer = rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

pub fn producer() -> TestProducer {
    producer_to(&bootstrap_servers())
}

/// A producer for test input to the broker at `bootstrap`.
pub fn producer_to(bootstrap: &str) -> TestProducer {
    kafka_at(bootstrap).producer_config("test-producer").create().expect("producer")
}

/// Queues one record (waiting while the local queue is full).
pub fn send_bytes(producer: &TestProducer, topic: &str, key: &str, payload: &[u8]) {
    let mut record = rdkafka::producer::BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Queues one Avro record.
pub fn send<T: abm_schemas::AvroRecord>(producer: &TestProducer, topic: &str, key: &str, value: &T) {
    send_bytes(producer, topic, key, &abm_schemas::encode(value).expect("encodes"));
}

/// Waits until everything queued is acknowledged.
pub fn flush(producer: &TestProducer) {
    use rdkafka::producer::Producer as _;
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// Every record of `topic` (key, raw value), read with `read_committed` from the beginning to
/// the end of every partition.
pub fn read_all_bytes(topic: &str) -> Vec<(String, Vec<u8>)> {
    read_all_bytes_from(&bootstrap_servers(), topic)
}

/// [`read_all_bytes`] from the broker at `bootstrap`.
pub fn read_all_bytes_from(bootstrap: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    read_all_records_from(bootstrap, topic).into_iter().map(|(key, value, _)| (key, value)).collect()
}

/// A record as read back: key, value, headers (name, value as text).
pub type ReadRecord = (String, Vec<u8>, Vec<(String, String)>);

/// Every record of `topic` with its headers.
pub fn read_all_with_headers(topic: &str) -> Vec<ReadRecord> {
    read_all_records_from(&bootstrap_servers(), topic)
}

fn read_all_records_from(bootstrap: &str, topic: &str) -> Vec<ReadRecord> {
    use rdkafka::Message;
    use rdkafka::message::Headers as _;
    let mut records = Vec::new();
    // Every transaction written so far decided first: a commit's markers land after
    // `commit_transaction` returns, and a reader that looked earlier would stop short of it.
    let settings = abm::kafka::ReadToEnd { deadline: Duration::from_secs(60), ..Default::default() };
    abm::kafka::read_messages_to_end(&kafka_at(bootstrap), &unique("test-reader"), topic, &settings, |message| {
        records.push((
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            message.payload().unwrap_or_default().to_vec(),
            message.headers().map_or_else(Vec::new, |headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            }),
        ));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("reading {topic}: {e:#}"));
    records
}

/// Every record of `topic`, decoded.
pub fn read_all<T: abm_schemas::AvroRecord>(topic: &str) -> Vec<(String, T)> {
    read_all_from(&bootstrap_servers(), topic)
}

/// [`read_all`] from the broker at `bootstrap`.
pub fn read_all_from<T: abm_schemas::AvroRecord>(bootstrap: &str, topic: &str) -> Vec<(String, T)> {
    read_all_bytes_from(bootstrap, topic)
        .into_iter()
        .map(|(key, bytes)| (key, abm_schemas::decode::<T>(&bytes).expect("decodes")))
        .collect()
}

/// The value of an unlabelled metric, or the sum over the series whose labels contain every
/// `label="value"` pair in `labels`.
pub fn metric(port: u16, name: &str, labels: &[&str]) -> f64 {
    let body = http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default();
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A second, private Apache Kafka broker from `deploy/local/kafka.sh`, for tests that stop and
/// start the broker without disturbing the shared one. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
}

impl PrivateBroker {
    fn script(&self, command: &str) -> std::process::Output {
        let script = repository_root().join("deploy/local/kafka.sh");
        Command::new("bash")
            .arg(script)
            .arg(command)
            .env("LOCAL_KAFKA_PORT", self.port.to_string())
            .env("LOCAL_KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env("LOCAL_KAFKA_HEAP", "384m")
            .output()
            .expect("kafka.sh runs")
    }

    /// Starts a broker on four free ports in a row (client, controller, SASL_SSL, mTLS).
    ///
    /// The ports come from below Linux's ephemeral range (32768 and up): a port the kernel hands
    /// out to outgoing connections can be taken by any client in the seconds before the broker
    /// binds it (seen: "failed to bind to 127.0.0.1:<port+1>: Address already in use").
    pub fn start() -> PrivateBroker {
        const FIRST: u16 = 20_000;
        const SLOTS: u16 = 3_000; // 20000..32000, four ports each
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let start = ((u64::from(std::process::id()) * 7_919 + u64::from(nanos)) % u64::from(SLOTS)) as u16;
        let port = (0..SLOTS)
            .map(|i| FIRST + ((start + i) % SLOTS) * 4)
            // kafka.sh also binds port+1 (controller), port+2 (SASL_SSL) and port+3 (mTLS).
            .find(|port| (0..=3).all(|offset| TcpListener::bind(("127.0.0.1", port + offset)).is_ok()))
            .expect("four free ports in a row below 32000");
        let broker = PrivateBroker { port };
        broker.resume();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (its data stays).
    pub fn stop(&self) {
        let output = self.script("stop");
        assert!(output.status.success(), "kafka.sh stop: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts it again with its data.
    pub fn resume(&self) {
        let output = self.script("start");
        assert!(output.status.success(), "kafka.sh start: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.script("reset");
    }
}

/// A binary of this workspace next to the running test or benchmark (same target directory and
/// profile): built by the same `cargo test` run, or by `cargo build --release --bins` for benches.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` (the test command does)",
        path.display()
    );
    path
}

/// Resident memory of process `pid`, in bytes (0 when it cannot be read).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user + system) process `pid` has used so far (Linux `/proc`), for benchmarks.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `tests/node/<script>` with Node, whose client libraries `deploy/local/test.sh`
/// installs (`npm ci`): (exited 0, stdout, stderr). The script bounds its own run time.
pub fn run_node(script: &str, args: &[&str]) -> (bool, String, String) {
    let path = repository_root().join("tests/node").join(script);
    assert!(
        repository_root().join("tests/node/node_modules").is_dir(),
        "tests/node/node_modules is missing: run deploy/local/test.sh (or npm ci --prefix tests/node)"
    );
    let output = Command::new("node").arg(&path).args(args).output().expect("node runs (Node 20: see the README)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The Confluent-compatible API of the schema registry under test: `SCHEMA_REGISTRY_URL` (the
/// test command sets it), else the local registry's (`deploy/local/registry.sh url`).
pub fn registry_url() -> String {
    ask_registry("SCHEMA_REGISTRY_URL", "url")
}

/// The same API over TLS, with a certificate signed by the local Kafka's CA
/// ([`SecureListeners::file`]`("ca.pem")`): `SCHEMA_REGISTRY_TLS_URL`, else `registry.sh url-tls`.
pub fn registry_tls_url() -> String {
    ask_registry("SCHEMA_REGISTRY_TLS_URL", "url-tls")
}

fn ask_registry(variable: &str, command: &str) -> String {
    std::env::var(variable).ok().filter(|url| !url.is_empty()).unwrap_or_else(|| {
        let script = repository_root().join("deploy/local/registry.sh");
        let output = Command::new("bash").arg(script).arg(command).output().expect("registry.sh runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    })
}

/// Lets this test process read Confluent-framed records (`abm_schemas::decode` looks registry
/// ids up in the registry under test), as the services do with `registry.url` set.
pub fn use_registry() {
    let config = abm::registry::RegistryConfig { url: registry_url(), ..abm::registry::RegistryConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(abm::registry::prepare(&config, &[], &[])).expect("the registry under test answers");
}

/// Runs `tests/python/<script>` with the virtual environment's Python, whose client libraries
/// `deploy/local/test.sh` installs (`tests/python/requirements.txt`): (exited 0, stdout,
/// stderr). The script bounds its own run time.
pub fn run_python(script: &str, args: &[&str]) -> (bool, String, String) {
    let python = repository_root().join("tests/python/.venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run deploy/local/test.sh (it installs tests/python/requirements.txt)"
    );
    let path = repository_root().join("tests/python").join(script);
    let output = Command::new(python).arg(&path).args(args).output().expect("python runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Seconds a bare consumer (the same client library, no work per message) takes to read
/// `count` messages of `topic`, from the first it gets: what the benchmarks compare with.
pub fn bare_read_seconds(topic: &str, count: u64) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        kafka().consumer_config("bench-bare", &unique("bench-bare")).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut seen, mut first) = (0, None);
    while seen < count {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    first.map_or(0.0, |f| f.elapsed().as_secs_f64())
}

/// The whole pipeline on `topics`: the simulator's TAL of `accounts` accounts imported, then
/// ingest (accepting `write_key`), the scorer and the alerter started and ready, each on a
/// port of its own, with groups and instance ids of the topics' prefix.
#[derive(Debug)]
pub struct Pipeline {
    pub ingest: ServiceProcess,
    pub scorer: ServiceProcess,
    pub alerter: ServiceProcess,
    pub ingest_port: u16,
    pub scorer_port: u16,
    pub alerter_port: u16,
    accounts: String,
    write_key: String,
    env: Vec<(&'static str, String)>,
}

impl Pipeline {
    pub fn start(topics: &TestTopics, accounts: &str, write_key: &str) -> Pipeline {
        let csv = std::env::temp_dir().join(format!("{}.csv", topics.prefix));
        let (status, stderr) = run_to_exit(
            &workspace_binary("simulate"),
            &["tal", "--accounts", accounts, "--out", &csv.display().to_string()],
            &[],
            Duration::from_secs(30),
        );
        assert!(status.success(), "{stderr}");
        let (status, stderr) = run_to_exit(
            &workspace_binary("ingest"),
            &["import-tal", &csv.display().to_string()],
            &topics.env(),
            Duration::from_secs(60),
        );
        assert!(status.success(), "{stderr}");
        let _ = std::fs::remove_file(&csv);
        let prefix = topics.prefix.clone();
        let (ingest_port, scorer_port, alerter_port) = (free_port(), free_port(), free_port());
        let start = |binary: &str, port: u16, extra: &[(&'static str, String)]| {
            let mut env = with_env(topics.env(), extra);
            env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
            let process = ServiceProcess::start(&workspace_binary(binary), &[], &env);
            wait_for_status(port, "/readyz", 200, Duration::from_secs(60), binary);
            process
        };
        let ingest = start(
            "ingest",
            ingest_port,
            &[("ABM_INGEST__WRITE_KEYS__TEST", write_key.into()), ("ABM_INGEST__GROUP_ID", format!("{prefix}-ingest"))],
        );
        let scorer = start(
            "scorer",
            scorer_port,
            &[
                ("ABM_SCORER__GROUP_ID", format!("{prefix}-scorer")),
                ("ABM_SCORER__INSTANCE_ID", format!("{prefix}-scorer")),
                ("ABM_SCORER__ADVERTISED_URL", format!("http://127.0.0.1:{scorer_port}")),
            ],
        );
        let alerter = start(
            "alerter",
            alerter_port,
            &[
                ("ABM_ALERTER__GROUP_ID", format!("{prefix}-alerter")),
                ("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-alerter")),
            ],
        );
        Pipeline {
            ingest,
            scorer,
            alerter,
            ingest_port,
            scorer_port,
            alerter_port,
            accounts: accounts.to_owned(),
            write_key: write_key.to_owned(),
            env: topics.env(),
        }
    }

    /// Runs the simulator's world of the pipeline's accounts into it (`events` events, as
    /// fast as it takes them, over ingest's HTTP collector and the raw topics), with `extra`
    /// arguments; panics with its stderr if it fails.
    pub fn simulate(&self, events: &str, extra: &[&str]) {
        let (ingest_url, bootstrap, prefix) =
            (format!("http://127.0.0.1:{}", self.ingest_port), bootstrap_servers(), unique("sim"));
        let mut args = vec![
            "run",
            "--accounts",
            &self.accounts,
            "--events",
            events,
            "--rate",
            "0",
            "--ingest-url",
            &ingest_url,
            "--write-key",
            &self.write_key,
            "--bootstrap-servers",
            &bootstrap,
            "--id-prefix",
            &prefix,
        ];
        args.extend_from_slice(extra);
        let (status, stderr) = run_to_exit(&workspace_binary("simulate"), &args, &self.env, Duration::from_secs(180));
        assert!(status.success(), "the simulator failed: {stderr}");
    }
}
