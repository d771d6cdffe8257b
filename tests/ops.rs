//! The operations files with real tools: `promtool` checks the scrape config and the alerting
//! rules and runs their unit tests; every metric the rules and the Grafana dashboard use exists
//! in some service's `/metrics`; a real Prometheus scrapes the three running services.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use abm_testkit::{ServiceProcess, TestTopics, free_port, http_get, unique, wait_for_status, workspace_binary};

fn deploy(path: &str) -> PathBuf {
    abm_testkit::repository_root().join("deploy").join(path)
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!("{name} not found: install Debian's `prometheus` package (deploy/local/test.sh does)")
    })
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_their_unit_tests_pass() {
    let promtool = tool("promtool");
    run(Command::new(&promtool).arg("check").arg("config").arg(deploy("prometheus/prometheus.yml")));
    let rules = run(Command::new(&promtool).arg("check").arg("rules").arg(deploy("prometheus/rules.yml")));
    // Every alert in the file is a rule promtool found.
    let text = std::fs::read_to_string(deploy("prometheus/rules.yml")).expect("rules.yml");
    let alerts = text.lines().filter(|line| line.trim_start().starts_with("- alert:")).count();
    assert!(alerts >= 9, "{alerts} alerts in rules.yml");
    assert!(rules.contains(&format!("SUCCESS: {alerts} rules found")), "{rules}");
    // ... and each has a unit test.
    let unit_tests = std::fs::read_to_string(deploy("prometheus/rules_test.yml")).expect("rules_test.yml");
    for name in text.lines().filter_map(|line| line.trim_start().strip_prefix("- alert:")).map(str::trim) {
        assert!(unit_tests.contains(&format!("alertname: {name}")), "{name} has no test in rules_test.yml");
    }
    let tests = run(Command::new(&promtool).arg("test").arg("rules").arg(deploy("prometheus/rules_test.yml")));
    assert!(tests.contains("SUCCESS"), "{tests}");
}

/// `abm_*` metric names used in a text (PromQL in YAML or JSON), histogram suffixes removed.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (index, _) in text.match_indices("abm_") {
        let name: String = text[index..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name).to_owned();
        names.insert(base);
    }
    names
}

#[test]
fn every_metric_of_the_rules_and_dashboard_exists_and_prometheus_scrapes_all_three_services() {
    let topics = TestTopics::new("ops");
    topics.create();
    let prefix = topics.prefix.clone();
    let ports = [free_port(), free_port(), free_port()];
    // One webhook (to a dead port) so the webhook series exist.
    let config = std::env::temp_dir().join(format!("{prefix}-alerter.toml"));
    std::fs::write(
        &config,
        format!("[[alerter.webhooks]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{}/\"\n", free_port()),
    )
    .expect("config");
    let mut processes = Vec::new();
    for (i, name) in ["ingest", "scorer", "alerter"].into_iter().enumerate() {
        let mut env = topics.env();
        env.push(("ABM_HTTP__LISTEN", format!("127.0.0.1:{}", ports[i])));
        let mut args = Vec::new();
        match name {
            "scorer" => {
                env.push(("ABM_SCORER__GROUP_ID", format!("{prefix}-s")));
                env.push(("ABM_SCORER__INSTANCE_ID", format!("{prefix}-s")));
            }
            "alerter" => {
                env.push(("ABM_ALERTER__GROUP_ID", format!("{prefix}-a")));
                env.push(("ABM_ALERTER__INSTANCE_ID", format!("{prefix}-a")));
                args = vec!["--config".to_owned(), config.display().to_string()];
            }
            _ => env.push(("ABM_INGEST__GROUP_ID", format!("{prefix}-i"))),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        processes.push(ServiceProcess::start(&workspace_binary(name), &args, &env));
        wait_for_status(ports[i], "/readyz", 200, Duration::from_secs(60), name);
    }

    // Names every service exposes (HELP lines), once the consumer-lag gauges have appeared
    // (librdkafka's statistics come every 5 s after the partitions are assigned).
    let exposed = || -> BTreeSet<String> {
        ports
            .iter()
            .flat_map(|port| {
                http_get(*port, "/metrics")
                    .map(|(_, body)| body)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|line| line.strip_prefix("# HELP ").and_then(|rest| rest.split(' ').next()).map(str::to_owned))
            .collect()
    };
    // One CRM outcome, so that the program's per-currency gauges have a series.
    let mut deal =
        abm_schemas::EngagementEvent::new("ops-deal", abm_schemas::EventKind::Opportunity, 1_700_000_000_000, "ops");
    deal.account_id = Some("ops-account".into());
    deal.opportunity = Some(abm_schemas::Opportunity {
        opportunity_id: "ops-o1".into(),
        stage: abm_schemas::OpportunityStage::Open,
        stage_name: None,
        amount: 1_000.0,
        currency: "USD".into(),
    });
    let kafka = abm_testkit::producer();
    abm_testkit::send(&kafka, &topics.name(abm::topics::TopicRole::Engagement), "ops-account", &deal);
    abm_testkit::flush(&kafka);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exposed().contains("abm_scorer_consumer_lag")
        || !exposed().contains("abm_alerter_consumer_lag")
        || !exposed().contains("abm_scorer_program_open_pipeline")
    {
        assert!(Instant::now() < deadline, "consumer lag or program gauges never appeared");
        std::thread::sleep(Duration::from_millis(500));
    }
    let exposed = exposed();
    let rules = std::fs::read_to_string(deploy("prometheus/rules.yml")).expect("rules");
    let dashboard = std::fs::read_to_string(deploy("grafana/abm-dashboard.json")).expect("dashboard");
    let used: BTreeSet<String> = referenced(&rules).into_iter().chain(referenced(&dashboard)).collect();
    assert!(used.len() > 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|name| !exposed.contains(*name)).collect();
    assert!(missing.is_empty(), "metrics used by rules or dashboard but exposed by no service: {missing:?}");

    // A real Prometheus scrapes the three services.
    let prometheus = tool("prometheus");
    let port = free_port();
    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).expect("dir");
    let scrape = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}",
        ["ingest", "scorer", "alerter"]
            .iter()
            .zip(ports)
            .map(|(name, p)| format!(
                "  - job_name: abm-{name}\n    static_configs:\n      - targets: [\"127.0.0.1:{p}\"]\n"
            ))
            .collect::<String>()
    );
    std::fs::write(dir.join("prometheus.yml"), scrape).expect("config");
    let mut server = ServiceProcess::start(
        &prometheus,
        &[
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
    );
    let query = |q: &str| -> serde_json::Value {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace(' ', "%20").replace('{', "%7B").replace('}', "%7D").replace('"', "%22")
        );
        http_get(port, &path).and_then(|(_, body)| serde_json::from_str(&body).ok()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("up");
        let results = up["data"]["result"].as_array().cloned().unwrap_or_default();
        let all_up = results.len() == 3 && results.iter().all(|r| r["value"][1] == "1");
        if all_up {
            break;
        }
        assert!(Instant::now() < deadline, "targets not all up in Prometheus: {up}\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(500));
    }
    for series in [
        "abm_ingest_events_received_total",
        "abm_scorer_snapshot_age_seconds",
        "abm_scorer_consumer_lag",
        "abm_alerter_alerts_total",
        "abm_alerter_webhook_deliveries_total",
        "process_resident_memory_bytes",
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = query(series);
            if result["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "Prometheus has no samples of {series}: {result}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    server.signal("TERM");
    let _ = server.wait(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}

#[test]
fn the_compose_file_validates_with_docker_compose() {
    let compose = tool("docker-compose");
    run(Command::new(compose).arg("-f").arg(deploy("docker/compose.yaml")).arg("config").arg("-q"));
}

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validate = tool("kubernetes-validate");
    let files: Vec<PathBuf> = ["config.yaml", "ingest.yaml", "scorer.yaml", "alerter.yaml"]
        .iter()
        .map(|f| deploy(&format!("k8s/{f}")))
        .collect();
    let output = run(Command::new(validate).arg("--strict").args(&files));
    assert_eq!(output.matches(" passed for resource ").count(), 11, "{output}");
}

#[test]
fn the_service_configs_shipped_for_kubernetes_load_in_each_binary() {
    let manifest = std::fs::read_to_string(deploy("k8s/config.yaml")).expect("config.yaml");
    for service in ["ingest", "scorer", "alerter"] {
        // The block under `<service>.toml: |`, indented by four spaces.
        let start = manifest.find(&format!("{service}.toml: |")).expect("block");
        let toml: String = manifest[start..]
            .lines()
            .skip(1)
            .take_while(|line| line.starts_with("    "))
            .map(|line| format!("{}\n", &line[4..]))
            .collect();
        let file = std::env::temp_dir().join(format!("{}-{service}.toml", unique("k8s")));
        std::fs::write(&file, toml).expect("toml");
        let output = Command::new(workspace_binary(service))
            .args(["--config", &file.display().to_string(), "--print-config"])
            .env("ABM_KAFKA__LIBRDKAFKA__SASL_PASSWORD", "k8s-secret-value")
            .output()
            .expect("runs");
        let _ = std::fs::remove_file(&file);
        assert!(output.status.success(), "{service}: {}", String::from_utf8_lossy(&output.stderr));
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.contains("kafka-bootstrap.kafka.svc:9092")
                && printed.contains("sasl_password = \"<redacted>\"")
                && !printed.contains("k8s-secret-value")
                && printed.contains("\"ssl.ca.location\" = \"/etc/abm/kafka-ca/ca.pem\"")
                && printed.contains("\"security.protocol\" = \"SASL_SSL\""),
            "{printed}"
        );
    }
}

/// `--print-config` of each service, given every kind of secret, shows none of them.
#[test]
fn print_config_shows_no_secret() {
    let secrets = [
        (
            "ingest",
            "[ingest.write_keys]\ncrm = \"SECRET-write-key\"\n[ingest.browser_keys.site]\nkey = \"SECRET-browser-key\"\norigins = [\"https://www.vendor.example\"]\n",
        ),
        (
            "scorer",
            "[kafka.librdkafka]\n\"sasl.oauthbearer.client.secret\" = \"SECRET-oauth\"\n\"ssl.key.password\" = \"SECRET-key-password\"\n\"ssl.key.passphrase\" = \"SECRET-passphrase\"\n[http.api_tokens]\nconsole = \"SECRET-api-token\"\n[registry]\nurl = \"https://abm:SECRET-in-url@registry.example\"\nbasic_auth_user_info = \"abm:SECRET-registry\"\n",
        ),
        (
            "alerter",
            "[[alerter.webhooks]]\nname = \"slack\"\nurl = \"https://hooks.slack.com/services/SECRET-slack\"\n[alerter.webhooks.headers]\nAuthorization = \"Bearer SECRET-header\"\n",
        ),
    ];
    for (service, toml) in secrets {
        let file = std::env::temp_dir().join(format!("{}-{service}.toml", unique("secrets")));
        std::fs::write(&file, toml).expect("toml");
        let output = Command::new(workspace_binary(service))
            .args(["--config", &file.display().to_string(), "--print-config"])
            .env("ABM_KAFKA__LIBRDKAFKA__SASL_PASSWORD", "SECRET-sasl")
            .output()
            .expect("runs");
        let _ = std::fs::remove_file(&file);
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{service}: {printed}");
        assert!(!printed.contains("SECRET"), "{service} printed a secret:\n{printed}");
        assert!(printed.matches("<redacted>").count() >= 2, "{service}: {printed}");
        // What is not secret is still shown.
        assert!(printed.contains("bootstrap_servers"), "{printed}");
        if service == "ingest" {
            assert!(printed.contains("https://www.vendor.example") && printed.contains("web_visit"), "{printed}");
        }
    }
}

/// Maps whose keys the operator names (documented as `<name>`, `<setting>`, `<role>`), and lists
/// of tables: documented as a whole, by their prefix.
const NAMED_MAPS: [&str; 13] = [
    "kafka.librdkafka",
    "topics",
    "http.api_tokens",
    "ingest.write_keys",
    "ingest.browser_keys",
    "scoring.rules",
    "scoring.persona_weights",
    "scoring.title_personas",
    "alerter.webhooks",
    "alerter.cooldown_hours_by_tier",
    "alerter.tier_topics",
    "registry.topics",
    "ingest.segment.track",
];

/// The dotted keys of `table` (under `prefix`), stopping at the named maps.
fn config_keys(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match value {
            toml::Value::Table(inner) if !NAMED_MAPS.contains(&key.as_str()) => config_keys(&key, inner, keys),
            _ => keys.push(key),
        }
    }
}

/// Adding a config key means documenting it: every key each service's `--print-config` shows
/// is in the README's configuration reference (a table row whose first cell names it, in full
/// or as a leaf after its section's prefix, e.g. `` `scoring.max_contacts` `` or
/// `` `scoring.max_recent_events`, `max_contacts` ``).
#[test]
fn every_config_key_is_in_the_readme_configuration_reference() {
    let readme = std::fs::read_to_string(abm_testkit::repository_root().join("README.md")).expect("README.md");
    let first_cells: Vec<&str> =
        readme.lines().filter(|line| line.starts_with("| `")).filter_map(|line| line.split(" | ").next()).collect();
    for service in ["ingest", "scorer", "alerter"] {
        let output = Command::new(workspace_binary(service)).arg("--print-config").output().expect("runs");
        assert!(output.status.success(), "{service}: {}", String::from_utf8_lossy(&output.stderr));
        let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("TOML");
        let mut keys = Vec::new();
        config_keys("", &printed, &mut keys);
        assert!(keys.len() > 20, "{service}: {keys:?}");
        for key in keys {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
            let documented = first_cells.iter().any(|cell| {
                cell.contains(&format!("`{key}`"))
                    || cell.contains(&format!("`{key}.<"))
                    || (cell.contains(&format!("`{section}."))
                        && (cell.contains(&format!("`{leaf}`")) || cell.contains(&format!("`.{leaf}`"))))
            });
            assert!(documented, "{service}: config key `{key}` is not in the README's configuration reference");
        }
    }
}

/// The top level is the card's (plus the lock file, the architecture notes and rustfmt's
/// settings): crates live inside these folders.
#[test]
fn the_top_level_is_the_documented_layout() {
    let allowed = [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "ARCHITECTURE.md",
        "rustfmt.toml",
        "ingest",
        "scorer",
        "alerter",
        "schemas",
        "deploy",
        "benches",
        "tests",
        "target",
    ];
    let root = abm_testkit::repository_root();
    for entry in std::fs::read_dir(&root).expect("repository root") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(name.starts_with('.') || allowed.contains(&name.as_str()), "{name} at the top level");
    }
}

/// Production binaries link no simulator or test code: the services and the runtime have the
/// simulator and the test kit as dev-dependencies at most. (The runtime's one HTTP client,
/// reqwest, is the schema registry's: every service may talk to one.)
#[test]
fn no_service_depends_on_the_simulator_or_the_test_kit() {
    let root = abm_testkit::repository_root();
    for (manifest, forbidden) in [
        ("deploy/runtime/Cargo.toml", &["abm-sim", "abm-testkit"][..]),
        ("schemas/Cargo.toml", &["abm-sim", "abm-testkit"][..]),
        ("ingest/Cargo.toml", &["abm-sim", "abm-testkit"][..]),
        ("scorer/Cargo.toml", &["abm-sim", "abm-testkit"][..]),
        ("alerter/Cargo.toml", &["abm-sim", "abm-testkit"][..]),
    ] {
        let text = std::fs::read_to_string(root.join(manifest)).expect("manifest");
        let parsed: toml::Table = toml::from_str(&text).expect("TOML");
        let dependencies = parsed.get("dependencies").and_then(toml::Value::as_table).expect("[dependencies]");
        for name in forbidden {
            assert!(!dependencies.contains_key(*name), "{manifest}: {name} is a normal dependency");
        }
        assert!(dependencies.contains_key("abm") || manifest.starts_with("deploy") || manifest.starts_with("schemas"));
    }
}
