//! Secured Kafka against the real broker's SASL_SSL (SCRAM, OAUTHBEARER) and mTLS listeners: a
//! service runs over mTLS and over SCRAM-SHA-256, and a wrong password, a wrong OAuth client
//! secret or an untrusted broker certificate ends start-up with one clear line and exit code 1
//! (the end-to-end runs over SASL_SSL, SCRAM-SHA-512 and OAUTHBEARER, are in `end_to_end.rs`).

use std::time::Duration;

use abm_testkit::{
    SecureListeners, ServiceProcess, TestTopics, TokenEndpoint, free_port, run_to_exit, wait_for_status, with_env,
    workspace_binary,
};

/// Runs `service` with `kafka_env` until it exits; returns its exit code and stderr.
fn start_up(service: &str, kafka_env: &[(&'static str, String)]) -> (Option<i32>, String) {
    let topics = TestTopics::new("secure");
    let mut env = with_env(topics.env(), kafka_env);
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", free_port())));
    // Far beyond the wait below: a refusal must end start-up at once, not by timing out.
    env.push(("ABM_KAFKA__CONNECT_TIMEOUT_MS", "600000".into()));
    let (status, stderr) = run_to_exit(&workspace_binary(service), &[], &env, Duration::from_secs(60));
    (status.code(), stderr)
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default()
}

/// Start-up ended with exit code 1 and a last line that starts with `start` and names the
/// settings to check (`hint`); the cause is said once.
fn assert_one_clear_line(code: Option<i32>, stderr: &str, start: &str, hint: &str) {
    assert_eq!(code, Some(1), "{stderr}");
    let line = last_line(stderr);
    assert!(line.starts_with(start), "{stderr}");
    assert!(line.contains(hint), "the line says what to check: {line}");
    let cause = start.split_once(": error: ").map_or(start, |(_, cause)| cause);
    assert_eq!(stderr.matches(cause).count(), 1, "one line: {stderr}");
}

#[test]
fn a_wrong_scram_password_ends_start_up_with_one_clear_line() {
    let secure = SecureListeners::of_broker_under_test();
    let wrong = format!("{}-wrong", secure.password());
    for service in ["ingest", "scorer", "alerter"] {
        let (code, stderr) = start_up(service, &secure.sasl_env(&wrong, "ca.pem"));
        let start = format!("{service}: error: Kafka at {} refused the login", secure.sasl_bootstrap);
        assert_one_clear_line(code, &stderr, &start, "sasl.password");
        assert!(!stderr.contains(&wrong), "the password is never printed: {stderr}");
    }
}

#[test]
fn a_wrong_oauth_client_secret_ends_start_up_with_one_clear_line() {
    let secure = SecureListeners::of_broker_under_test();
    let endpoint = TokenEndpoint::start(&secure, "abm-scorer", "the-secret");
    let (code, stderr) = start_up("scorer", &secure.oauth_env(&endpoint, "not-the-secret"));
    let start = format!("scorer: error: Kafka at {} refused the login", secure.sasl_bootstrap);
    assert_one_clear_line(code, &stderr, &start, "sasl.oauthbearer");
    assert!(endpoint.refused() >= 1, "the token endpoint was asked");
    assert_eq!(endpoint.issued(), 0);
    assert!(!stderr.contains("not-the-secret"), "the secret is never printed: {stderr}");
}

/// librdkafka would abort on this (an assertion, exit 134) once its OIDC thread runs.
#[test]
fn with_oauth_a_ca_file_that_cannot_be_read_ends_start_up_with_one_clear_line() {
    let secure = SecureListeners::of_broker_under_test();
    let endpoint = TokenEndpoint::start(&secure, "abm-scorer", "the-secret");
    let missing = secure.file("no-such-ca.pem");
    let env = with_env(
        secure.oauth_env(&endpoint, "the-secret"),
        &[("ABM_KAFKA__LIBRDKAFKA__SSL_CA_LOCATION", missing.clone())],
    );
    let (code, stderr) = start_up("alerter", &env);
    assert_one_clear_line(code, &stderr, "alerter: error: invalid Kafka client setting: ", "ssl.ca.location");
    assert!(last_line(&stderr).contains(&missing), "names the file: {stderr}");
}

#[test]
fn a_service_runs_over_sasl_ssl_with_scram_sha_256() {
    let secure = SecureListeners::of_broker_under_test();
    let env = with_env(
        secure.sasl_env(&secure.password(), "ca.pem"),
        &[("ABM_KAFKA__LIBRDKAFKA__SASL_MECHANISMS", "SCRAM-SHA-256".into())],
    );
    accepts_an_event_through_ingest("scram256", &env);
}

#[test]
fn an_untrusted_broker_certificate_ends_start_up_with_one_clear_line() {
    let secure = SecureListeners::of_broker_under_test();
    let (code, stderr) = start_up("scorer", &secure.sasl_env(&secure.password(), "untrusted-ca.pem"));
    let start = format!("scorer: error: TLS handshake with Kafka at {} failed", secure.sasl_bootstrap);
    assert_one_clear_line(code, &stderr, &start, "ssl.ca.location");
}

#[test]
fn a_client_without_a_certificate_is_refused_by_the_mtls_listener() {
    let secure = SecureListeners::of_broker_under_test();
    let mut env = secure.mtls_env();
    env.retain(|(key, _)| !key.contains("CERTIFICATE_LOCATION") && !key.contains("KEY_LOCATION"));
    let (code, stderr) = start_up("ingest", &env);
    let start = format!("ingest: error: TLS handshake with Kafka at {} failed", secure.ssl_bootstrap);
    assert_one_clear_line(code, &stderr, &start, "client certificate");
}

#[test]
fn a_service_runs_over_mtls_with_its_client_certificate() {
    accepts_an_event_through_ingest("mtls", &SecureListeners::of_broker_under_test().mtls_env());
}

/// Ingest, connected with `kafka_env`, answers ready and has an event acknowledged by the broker.
fn accepts_an_event_through_ingest(name: &str, kafka_env: &[(&'static str, String)]) {
    let topics = TestTopics::new(name);
    topics.create();
    let port = free_port();
    let mut env = with_env(topics.env(), kafka_env);
    env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{port}")));
    env.push(("ABM_INGEST__WRITE_KEYS__T", "secured-key".into()));
    let mut ingest = ServiceProcess::start(&workspace_binary("ingest"), &[], &env);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60), &ingest.stderr());
    // An event through the secured connection, acknowledged by the broker.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let event = format!(
        r#"{{"event_id":"m1","kind":"web_visit","occurred_at":{now},"account_id":"acc-1","properties":{{"url":"https://x.example/pricing"}}}}"#
    );
    let (status, body) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .bearer_auth("secured-key")
            .body(event)
            .send()
            .await
            .expect("posted");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    });
    assert_eq!(status, 200, "{body}");
    ingest.signal("TERM");
    assert!(ingest.wait(Duration::from_secs(30)).success(), "{}", ingest.stderr());
}
