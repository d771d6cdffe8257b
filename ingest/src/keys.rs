//! Write keys and what each may do.
//!
//! A *server key* (`ingest.write_keys.<name> = "<secret>"`) belongs to a trusted source (a CRM
//! sync, a marketing tool's webhook relay) and may send the whole event format. A *browser key*
//! (`[ingest.browser_keys.<name>]`) ships in every page that carries the tracker, so anyone can
//! read it: it may send only its configured kinds (default `web_visit`), never an explicit
//! `account_id` or `contact.persona` (accounts are resolved from the contact's email or the
//! domain only), from its allowed origins (browsers), and under a rate limit per key and per
//! client address. What breaks a browser key's scope is rejected with reason `not_allowed` and
//! kept, like any bad input.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abm_schemas::{EngagementEvent, EventKind, RejectReason};
use serde::{Deserialize, Serialize};

use crate::validate::Rejection;

/// `[ingest.browser_keys.<name>]`. Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserKeyConfig {
    /// The key as the tracker sends it (`?write_key=`); public by nature.
    pub key: String,
    /// Kinds this key may send (default `["web_visit"]`, what the tracker sends on each page).
    #[serde(default = "default_kinds")]
    pub kinds: Vec<EventKind>,
    /// Origins a browser may send from with this key, as browsers spell them in the `Origin`
    /// header (`https://www.vendor.example`, scheme, host and port if not the default). A
    /// request with another `Origin` is answered 403; one without (not from a browser) is let
    /// through. Empty (the default) allows any origin.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Requests per second for this key from all clients together (default 500), and the burst
    /// above it (default 1000).
    #[serde(default = "default_key_rate")]
    pub requests_per_second: f64,
    #[serde(default = "default_key_burst")]
    pub burst: f64,
    /// Requests per second from one client address with this key (default 5), and the burst
    /// above it (default 20).
    #[serde(default = "default_client_rate")]
    pub client_requests_per_second: f64,
    #[serde(default = "default_client_burst")]
    pub client_burst: f64,
}

impl std::fmt::Debug for BrowserKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserKeyConfig")
            .field("key", &abm::service::REDACTED)
            .field("kinds", &self.kinds)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

fn default_kinds() -> Vec<EventKind> {
    vec![EventKind::WebVisit]
}
fn default_key_rate() -> f64 {
    500.0
}
fn default_key_burst() -> f64 {
    1000.0
}
fn default_client_rate() -> f64 {
    5.0
}
fn default_client_burst() -> f64 {
    20.0
}

impl BrowserKeyConfig {
    /// Why the settings of browser key `name` cannot work, if they cannot.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let at = format!("ingest.browser_keys.{name}");
        if self.key.is_empty() {
            return Err(format!("{at}.key is empty"));
        }
        if self.kinds.is_empty() || self.kinds.contains(&EventKind::Unknown) {
            return Err(format!("{at}.kinds must list kinds (web_visit, ad_click, ...), not be empty or \"unknown\""));
        }
        if self.kinds.contains(&EventKind::Opportunity) {
            return Err(format!(
                "{at}.kinds may not include \"opportunity\": CRM outcomes come from server keys or abm.raw.crm-opportunities, never from a browser"
            ));
        }
        for (what, value) in [
            ("requests_per_second", self.requests_per_second),
            ("burst", self.burst),
            ("client_requests_per_second", self.client_requests_per_second),
            ("client_burst", self.client_burst),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{at}.{what} must be a positive number, not {value}"));
            }
        }
        if let Some(origin) = self.origins.iter().find(|o| o.ends_with('/') || !o.contains("://")) {
            return Err(format!("{at}.origins: {origin:?} is not an origin (scheme://host[:port], no path)"));
        }
        Ok(())
    }
}

/// What a key may send: everything (a server key) or a browser key's scope.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Server,
    Browser { name: &'a str, config: &'a BrowserKeyConfig },
}

impl Scope<'_> {
    /// Rejects `event` when it is outside the scope.
    pub fn allows(&self, event: &EngagementEvent) -> Result<(), Rejection> {
        let Scope::Browser { name, config } = self else { return Ok(()) };
        let refuse = |message: String| Err(Rejection::new(RejectReason::NotAllowed, message));
        if !config.kinds.contains(&event.kind) {
            let allowed: Vec<&str> = config.kinds.iter().map(|kind| kind.as_str()).collect();
            return refuse(format!(
                "kind {} is not allowed for browser key {name:?} (ingest.browser_keys.{name}.kinds: {})",
                event.kind.as_str(),
                allowed.join(", ")
            ));
        }
        if event.account_id.is_some() {
            return refuse(format!(
                "account_id may not be set with browser key {name:?}: accounts are resolved from the contact's email or the domain"
            ));
        }
        if event.contact.as_ref().is_some_and(|contact| contact.persona.is_some()) {
            return refuse(format!("contact.persona may not be set with browser key {name:?}"));
        }
        Ok(())
    }
}

/// Token buckets: `rate` tokens a second up to `burst`, one per request.
#[derive(Debug)]
pub struct RateLimiter<K> {
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
    /// Buckets kept at most; past it, the full ones (idle clients) are forgotten.
    max_buckets: usize,
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(max_buckets: usize) -> RateLimiter<K> {
        RateLimiter { buckets: Mutex::new(HashMap::new()), max_buckets }
    }

    /// Takes a token of `key`'s bucket; when there is none, how long until there is one.
    pub fn take(&self, key: &K, rate: f64, burst: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_buckets && !buckets.contains_key(key) {
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
            if buckets.len() >= self.max_buckets {
                // Every bucket is in use: the newcomer shares the strictest answer, none.
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// The write keys of ingest, and the rate limits of its browser keys. Its `Debug` shows names.
pub struct Keys {
    pub server: BTreeMap<String, String>,
    pub browser: BTreeMap<String, BrowserKeyConfig>,
    per_key: RateLimiter<String>,
    per_client: RateLimiter<(String, IpAddr)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("server", &self.server.keys().collect::<Vec<_>>())
            .field("browser", &self.browser.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Client addresses tracked per browser key at most (their buckets).
const MAX_CLIENT_BUCKETS: usize = 100_000;

impl Keys {
    pub fn new(server: BTreeMap<String, String>, browser: BTreeMap<String, BrowserKeyConfig>) -> Result<Keys, String> {
        for (name, config) in &browser {
            config.check(name)?;
            if server.contains_key(name) {
                return Err(format!("the key name {name:?} is both in ingest.write_keys and ingest.browser_keys"));
            }
        }
        Ok(Keys {
            server,
            browser,
            per_key: RateLimiter::new(MAX_CLIENT_BUCKETS),
            per_client: RateLimiter::new(MAX_CLIENT_BUCKETS),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.browser.is_empty()
    }

    /// Every browser key's settings (the CORS preflight asks whether any allows an origin).
    pub fn browser_configs(&self) -> impl Iterator<Item = &BrowserKeyConfig> {
        self.browser.values()
    }

    /// The key `presented` is, by name, with its scope. Every key is compared, each in constant
    /// time: the time taken says nothing of how much of a key was right, nor of which matched.
    pub fn find(&self, presented: &str) -> Option<(&str, Scope<'_>)> {
        let mut found = None;
        let secrets = self.server.iter().map(|(name, secret)| (name, secret.as_str(), Scope::Server)).chain(
            self.browser.iter().map(|(name, config)| (name, config.key.as_str(), Scope::Browser { name, config })),
        );
        for (name, secret, scope) in secrets {
            let equal: bool = subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), presented.as_bytes()).into();
            if equal && !secret.is_empty() && found.is_none() {
                found = Some((name.as_str(), scope));
            }
        }
        found
    }

    /// Takes a request of browser key `name` from `client` out of its rate limits.
    pub fn admit(&self, name: &str, config: &BrowserKeyConfig, client: IpAddr) -> Result<(), Duration> {
        self.per_client.take(&(name.to_owned(), client), config.client_requests_per_second, config.client_burst)?;
        self.per_key.take(&name.to_owned(), config.requests_per_second, config.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser() -> BrowserKeyConfig {
        BrowserKeyConfig {
            key: "pub-key".into(),
            kinds: default_kinds(),
            origins: vec!["https://www.vendor.example".into()],
            requests_per_second: 500.0,
            burst: 1000.0,
            client_requests_per_second: 2.0,
            client_burst: 3.0,
        }
    }

    #[test]
    fn a_browser_key_may_send_only_its_kinds_and_never_an_account_or_a_persona() {
        let config = browser();
        let scope = Scope::Browser { name: "site", config: &config };
        let mut event = EngagementEvent::new("e1", EventKind::WebVisit, 0, "http:site");
        assert!(scope.allows(&event).is_ok());
        event.kind = EventKind::DemoRequest;
        let refused = scope.allows(&event).expect_err("demo requests are not a browser key's");
        assert_eq!(refused.reason, RejectReason::NotAllowed);
        assert!(refused.message.contains("demo_request"), "{}", refused.message);
        event.kind = EventKind::WebVisit;
        event.account_id = Some("acme".into());
        assert!(scope.allows(&event).expect_err("no account").message.contains("account_id"));
        event.account_id = None;
        event.contact = Some(abm_schemas::Contact { persona: Some("economic_buyer".into()), ..Default::default() });
        assert!(scope.allows(&event).expect_err("no persona").message.contains("persona"));
        assert!(Scope::Server.allows(&event).is_ok(), "a server key sends anything");
    }

    #[test]
    fn a_browser_key_can_never_be_allowed_crm_outcomes() {
        let mut config = browser();
        config.kinds = vec![EventKind::WebVisit, EventKind::Opportunity];
        let error = config.check("site").expect_err("opportunity is for server keys");
        assert!(error.contains("ingest.browser_keys.site.kinds") && error.contains("opportunity"), "{error}");
        let event = EngagementEvent::new("o1", EventKind::Opportunity, 0, "http:site");
        assert_eq!(
            Scope::Browser { name: "site", config: &browser() }.allows(&event).expect_err("refused").reason,
            RejectReason::NotAllowed
        );
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_rate() {
        let keys = Keys::new(BTreeMap::new(), [("site".to_owned(), browser())].into()).expect("valid");
        let config = &keys.browser["site"];
        let client: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(keys.admit("site", config, client).is_ok());
        }
        let wait = keys.admit("site", config, client).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        assert!(keys.admit("site", config, [10, 0, 0, 2].into()).is_ok(), "another client has its own bucket");
    }

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let keys =
            Keys::new([("crm".to_owned(), "server-secret".to_owned())].into(), [("site".to_owned(), browser())].into())
                .expect("valid");
        assert!(matches!(keys.find("server-secret"), Some(("crm", Scope::Server))));
        assert!(matches!(keys.find("pub-key"), Some(("site", Scope::Browser { .. }))));
        assert!(keys.find("pub-ke").is_none());
        assert!(keys.find("").is_none());
        let mut bad = browser();
        bad.kinds = vec![];
        assert!(Keys::new(BTreeMap::new(), [("x".to_owned(), bad)].into()).is_err());
    }
}
