//! A deterministic (seeded) ABM world for the simulator, the demo, tests and benchmarks.
//!
//! A TAL of accounts across tiers, each with owners, domains and a buying committee of 3-12
//! contacts (personas and titles); Zipf-skewed activity; a fraction of accounts "in market"
//! (surges of pricing-page visits, ad clicks and email replies, then demo requests); and the
//! noise real trackers send: bots, free-mail and unknown-company visitors (unresolved),
//! duplicates (the same event sent twice) and malformed events. Events are tracker JSON, each
//! with the channel it is sent on (HTTP or a raw topic) and what ingest should make of it.
//!
//! No event makes a contact exceed the default scoring config's `web_visit` cap (per contact per
//! UTC day, read from `scorer::engine::ScoringConfig::default()`), so final scores do not depend
//! on the order in which the two channels deliver.

use serde::{Deserialize, Serialize};

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimContact {
    pub id: String,
    pub email: String,
    pub title: String,
    pub persona: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimAccount {
    pub id: String,
    pub name: String,
    pub domain: String,
    /// 1, 2 or 3.
    pub tier: u8,
    pub owner: String,
    pub in_market: bool,
    pub contacts: Vec<SimContact>,
    /// The buying committee the TAL names for it (the CSV's `committee` column); `None`: its
    /// tier's default. Every third tier-1 account requires `legal` too, a persona none of the
    /// simulated contacts has, so its coverage never reaches 1.
    #[serde(default)]
    pub committee: Option<Vec<String>>,
}

/// How an event is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Http,
    /// The raw topic of the event's kind.
    Raw,
}

/// What ingest should make of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Valid and resolved to `account`.
    Engaged,
    /// Valid, no account (free mail, unknown company).
    Unresolved,
    /// A repeat of an earlier event (same `event_id`): absorbed downstream.
    Duplicate,
    /// Refused with this reason code.
    Bot,
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimEvent {
    pub json: String,
    pub kind: String,
    pub channel: Channel,
    pub expect: Expect,
    /// The account it resolves to, for `Engaged` and `Duplicate`.
    pub account: Option<String>,
}

/// World parameters.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub accounts: usize,
    /// Event time of the first event and the span the events cover.
    pub start_ms: i64,
    pub span_ms: i64,
    pub in_market_share: f64,
    pub http_share: f64,
    pub bot_share: f64,
    pub free_mail_share: f64,
    pub unknown_company_share: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
}

impl WorldConfig {
    pub fn new(seed: u64, accounts: usize, start_ms: i64, span_ms: i64) -> WorldConfig {
        WorldConfig {
            seed,
            accounts,
            start_ms,
            span_ms,
            in_market_share: 0.1,
            http_share: 0.7,
            bot_share: 0.02,
            free_mail_share: 0.03,
            unknown_company_share: 0.03,
            duplicate_share: 0.02,
            malformed_share: 0.01,
        }
    }
}

const WORDS: [&str; 16] = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Vandelay",
    "Wonka",
    "Gringotts",
    "Oscorp",
    "Aperture",
    "Massive",
];
const FIRST: [&str; 12] = ["ana", "ben", "chen", "dana", "eli", "fatima", "gus", "hana", "ivan", "jo", "kai", "lena"];
const PERSONAS: [(&str, &str); 5] = [
    ("economic_buyer", "VP Finance"),
    ("champion", "Director of Data Engineering"),
    ("technical_evaluator", "Staff Engineer"),
    ("end_user", "Data Analyst"),
    ("unknown", "Consultant"),
];

/// Builds the TAL deterministically from the seed.
pub fn accounts(config: &WorldConfig) -> Vec<SimAccount> {
    let mut rng = Rng::new(config.seed ^ 0xACC0_0000);
    (0..config.accounts)
        .map(|i| {
            let tier = match rng.below(100) {
                0..=4 => 1,
                5..=29 => 2,
                _ => 3,
            };
            let name =
                format!("{} {}", WORDS[i % WORDS.len()], ["Corp", "Labs", "Systems", "Group"][(i / WORDS.len()) % 4]);
            let domain = format!("acct{i}.example");
            let size = 3 + rng.below(10) as usize;
            let contacts = (0..size)
                .map(|j| {
                    let (persona, title) = PERSONAS[(j + i) % PERSONAS.len()];
                    let first = FIRST[(i + j * 7) % FIRST.len()];
                    SimContact {
                        id: format!("acc-{i:05}-c{j}"),
                        email: format!("{first}.{j}@{domain}"),
                        title: title.into(),
                        persona: persona.into(),
                    }
                })
                .collect();
            SimAccount {
                id: format!("acc-{i:05}"),
                name,
                domain,
                tier,
                owner: format!("sdr{}@vendor.example", i % 7),
                in_market: rng.chance(config.in_market_share),
                contacts,
                committee: (tier == 1 && i % 3 == 0)
                    .then(|| ["economic_buyer", "champion", "legal"].map(str::to_owned).to_vec()),
            }
        })
        .collect()
}

/// The TAL as CSV for `ingest import-tal`.
pub fn tal_csv(accounts: &[SimAccount]) -> String {
    let mut csv = String::from("account_id,name,domains,tier,owner,industry,employees,committee\n");
    for a in accounts {
        csv.push_str(&format!(
            "{},{},{},{},{},Software,{},{}\n",
            a.id,
            a.name,
            a.domain,
            a.tier,
            a.owner,
            50 * a.contacts.len(),
            a.committee.as_deref().map(|personas| personas.join(";")).unwrap_or_default()
        ));
    }
    csv
}

/// Zipf(s = 1.1) over `n` ranks, by inverse CDF on precomputed weights.
#[derive(Debug)]
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(weights: impl Iterator<Item = f64>) -> Zipf {
        let mut total = 0.0;
        let cumulative = weights
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Zipf { cumulative }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cumulative.partition_point(|c| *c < x).min(self.cumulative.len().saturating_sub(1))
    }
}

/// How many recent valid events a duplicate is drawn from (retries follow their original
/// closely, well inside the pipeline's 7-day deduplication window).
const RECENT: usize = 32;

/// Generates the event stream.
#[derive(Debug)]
pub struct World {
    config: WorldConfig,
    pub accounts: Vec<SimAccount>,
    rng: Rng,
    zipf: Zipf,
    /// Web visits scored by the capped rule, per (contact, UTC day).
    visits: std::collections::HashMap<(String, i64), u32>,
    /// The default config's cap of that rule.
    visit_cap: u32,
    /// The last valid events, to send again as duplicates.
    recent: Vec<SimEvent>,
    n: u64,
    total: u64,
    id_prefix: String,
    /// CRM changes to come, by event time: (time, account index, opportunity id, stage,
    /// amount). A hand-raiser opens an opportunity some days later, which is then won, lost
    /// or left open; a few open without any hand-raiser.
    outcomes: std::collections::BTreeMap<(i64, u64), (usize, String, &'static str, u64)>,
    opportunities: u64,
}

/// A day in milliseconds.
const DAY_MS: i64 = 86_400_000;

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

impl World {
    /// A world that will emit `total` events spread over the configured span.
    pub fn new(config: WorldConfig, total: u64, id_prefix: &str) -> World {
        let accounts = accounts(&config);
        let zipf = Zipf::new(
            accounts
                .iter()
                .enumerate()
                .map(|(rank, a)| (if a.in_market { 5.0 } else { 1.0 }) / ((rank + 1) as f64).powf(1.1)),
        );
        World {
            rng: Rng::new(config.seed),
            config,
            accounts,
            zipf,
            visits: std::collections::HashMap::new(),
            visit_cap: default_visit_cap(),
            recent: Vec::new(),
            n: 0,
            total: total.max(1),
            id_prefix: id_prefix.into(),
            outcomes: std::collections::BTreeMap::new(),
            opportunities: 0,
        }
    }

    /// Plans a new opportunity of account `index`, opened at `opened` and decided later.
    fn plan_opportunity(&mut self, index: usize, opened: i64) {
        self.opportunities += 1;
        let id = format!("{}-opp-{}", self.id_prefix, self.opportunities);
        let amount = 5_000 * (2 + self.rng.below(40));
        let n = self.opportunities;
        self.outcomes.insert((opened, n), (index, id.clone(), "open", amount));
        let decided = opened + DAY_MS * (5 + self.rng.below(30) as i64);
        let outcome = match self.rng.below(10) {
            0..=3 => Some("closed_won"),
            4..=7 => Some("closed_lost"),
            _ => None,
        };
        if let Some(stage) = outcome {
            self.outcomes.insert((decided, n), (index, id, stage, amount));
        }
    }

    /// The next CRM change due by `t`, as an event for the CRM raw topic.
    fn due_outcome(&mut self, id: &str, t: i64) -> Option<SimEvent> {
        let (&key, _) = self.outcomes.iter().next().filter(|((at, _), _)| *at <= t)?;
        let (index, opportunity_id, stage, amount) = self.outcomes.remove(&key)?;
        let account = self.accounts[index].id.clone();
        let json = format!(
            r#"{{"event_id":{},"kind":"opportunity","occurred_at":{},"account_id":{},"properties":{{"opportunity_id":{},"stage":"{stage}","stage_name":{},"amount":{amount},"currency":"USD"}}}}"#,
            quote(id),
            key.0,
            quote(&account),
            quote(&opportunity_id),
            quote(match stage {
                "open" => "Discovery",
                "closed_won" => "Closed Won",
                _ => "Closed Lost",
            }),
        );
        Some(SimEvent {
            json,
            kind: "opportunity".into(),
            channel: Channel::Raw,
            expect: Expect::Engaged,
            account: Some(account),
        })
    }

    fn time(&self) -> i64 {
        self.config.start_ms + (self.config.span_ms as f64 * self.n as f64 / self.total as f64) as i64
    }

    fn channel(&mut self) -> Channel {
        if self.rng.chance(self.config.http_share) { Channel::Http } else { Channel::Raw }
    }

    /// The next event.
    pub fn next_event(&mut self) -> SimEvent {
        self.n += 1;
        let n = self.n;
        let t = self.time();
        let id = format!("{}-{n}", self.id_prefix);
        if let Some(outcome) = self.due_outcome(&id, t) {
            return outcome;
        }
        let channel = self.channel();
        let roll = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let c = &self.config;
        let mut edge = c.duplicate_share;
        if roll < edge && !self.recent.is_empty() {
            let mut again = self.rng.pick(&self.recent).clone();
            again.expect = Expect::Duplicate;
            again.channel = channel;
            return again;
        }
        edge += c.malformed_share;
        if roll < edge {
            let json = match self.rng.below(4) {
                0 => format!(r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":{t},"prope"#),
                1 => format!(r#"{{"event_id":"{id}","kind":"demo_request","occurred_at":{t},"properties":{{}}}}"#),
                2 => format!(
                    r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":"soon","properties":{{"url":"/"}}}}"#
                ),
                _ => format!(r#"{{"event_id":"{id}","kind":"carrier_pigeon","occurred_at":{t}}}"#),
            };
            return SimEvent {
                json,
                kind: "web_visit".into(),
                channel: Channel::Http,
                expect: Expect::Malformed,
                account: None,
            };
        }
        edge += c.bot_share;
        if roll < edge {
            let json = format!(
                r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":{t},"user_agent":"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)","properties":{{"url":"https://vendor.example/pricing"}}}}"#
            );
            return SimEvent { json, kind: "web_visit".into(), channel, expect: Expect::Bot, account: None };
        }
        edge += c.free_mail_share + c.unknown_company_share;
        if roll < edge {
            let who = if roll < edge - c.unknown_company_share {
                format!(r#""contact":{{"email":"visitor{}@gmail.com"}}"#, self.rng.below(500))
            } else {
                format!(r#""domain":"unknown{}.example""#, self.rng.below(500))
            };
            let json = format!(
                r#"{{"event_id":"{id}","kind":"web_visit","occurred_at":{t},{who},"properties":{{"url":"https://vendor.example/blog/abm"}}}}"#
            );
            return SimEvent { json, kind: "web_visit".into(), channel, expect: Expect::Unresolved, account: None };
        }
        let (event, index) = self.engaged_event(&id, t, channel);
        // Half the hand-raisers open an opportunity 1-10 days later; one engaged event in 400
        // opens one with no hand-raise (an inbound deal the program did not see).
        if (event.kind == "demo_request" && self.rng.chance(0.5)) || self.rng.below(400) == 0 {
            let opened = t + DAY_MS * (1 + self.rng.below(10) as i64);
            self.plan_opportunity(index, opened);
        }
        // Retries come soon after the original: keep the last few valid events to repeat.
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(event.clone());
        event
    }

    /// An event of a TAL account's contact, and the account's index.
    fn engaged_event(&mut self, id: &str, t: i64, channel: Channel) -> (SimEvent, usize) {
        let account_index = self.zipf.sample(&mut self.rng);
        let account = self.accounts[account_index].clone();
        let contact = self.rng.pick(&account.contacts).clone();
        // Resolution: by contact email domain, or by explicit account id from a CRM integration.
        let who = if self.rng.chance(0.15) {
            // A CRM integration knows the contact's persona, not its title.
            format!(
                r#""account_id":{},"contact":{{"id":{},"persona":{}}}"#,
                quote(&account.id),
                quote(&contact.id),
                quote(&contact.persona)
            )
        } else {
            format!(
                r#""contact":{{"id":{},"email":{},"title":{}}}"#,
                quote(&contact.id),
                quote(&contact.email),
                quote(&contact.title)
            )
        };
        let surge = account.in_market && self.rng.chance(0.5);
        let (mut kind, properties) = if surge {
            match self.rng.below(10) {
                0..=3 => ("web_visit", r#"{"url":"https://vendor.example/pricing"}"#.to_owned()),
                4..=5 => ("ad_click", r#"{"channel":"linkedin","campaign":"q4-abm"}"#.to_owned()),
                6..=7 => ("email", r#"{"action":"reply","campaign":"nurture"}"#.to_owned()),
                8 => ("email", r#"{"action":"click","campaign":"nurture"}"#.to_owned()),
                _ => ("demo_request", r#"{"form":"contact-sales"}"#.to_owned()),
            }
        } else {
            match self.rng.below(20) {
                0..=7 => {
                    let page =
                        ["/", "/docs/quickstart", "/blog/abm", "/product", "/careers"][self.rng.below(5) as usize];
                    ("web_visit", format!(r#"{{"url":"https://vendor.example{page}"}}"#))
                }
                8..=9 => ("web_visit", r#"{"url":"https://vendor.example/pricing"}"#.to_owned()),
                10..=12 => ("email", r#"{"action":"open","campaign":"newsletter"}"#.to_owned()),
                13 => ("email", r#"{"action":"click","campaign":"newsletter"}"#.to_owned()),
                14 => ("email", r#"{"action":"unsubscribe","campaign":"newsletter"}"#.to_owned()),
                15..=16 => ("ad_click", r#"{"channel":"google","campaign":"brand"}"#.to_owned()),
                17 => ("content_download", r#"{"asset":"abm-playbook.pdf"}"#.to_owned()),
                18 => ("webinar", r#"{"webinar_id":"w-42","action":"attended"}"#.to_owned()),
                _ => ("intent", r#"{"topic":"account based marketing","strength":0.8}"#.to_owned()),
            }
        };
        // Keep every contact under the web_visit cap (a UTC day): scores stay order-free.
        let mut properties = properties;
        if kind == "web_visit" && !properties.contains("/pricing") && !properties.contains("/careers") {
            let seen = self.visits.entry((contact.id.clone(), t.div_euclid(86_400_000))).or_insert(0);
            if *seen >= self.visit_cap {
                kind = "email";
                properties = r#"{"action":"open","campaign":"newsletter"}"#.to_owned();
            } else {
                *seen += 1;
            }
        }
        let json = format!(
            r#"{{"event_id":{},"kind":"{kind}","occurred_at":{t},{who},"user_agent":"Mozilla/5.0 (Macintosh) Safari/605.1.15","properties":{properties}}}"#,
            quote(id)
        );
        (
            SimEvent { json, kind: kind.into(), channel, expect: Expect::Engaged, account: Some(account.id) },
            account_index,
        )
    }
}

/// The daily cap per contact of the default scoring config's plain-visit rule (`web_visit`).
fn default_visit_cap() -> u32 {
    scorer::engine::ScoringConfig::default()
        .rules
        .iter()
        .find(|rule| rule.name == "web_visit")
        .and_then(|rule| rule.cap_per_contact_per_day)
        .unwrap_or(u32::MAX)
}

/// The raw topic the event kind `kind` (its wire name) is written to, if one carries it.
pub fn raw_role(kind: &str) -> Option<abm::topics::TopicRole> {
    let kind = abm_schemas::EventKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    abm::topics::TopicRole::raw_for(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_is_deterministic_and_has_every_kind_of_noise() {
        let config = WorldConfig::new(7, 50, 1_700_000_000_000, 30 * 86_400_000);
        let events = |config: &WorldConfig| {
            let mut world = World::new(config.clone(), 5000, "t");
            (0..5000).map(|_| world.next_event()).collect::<Vec<_>>()
        };
        let a = events(&config);
        assert_eq!(a, events(&config), "same seed, same stream");
        for expect in [Expect::Engaged, Expect::Unresolved, Expect::Duplicate, Expect::Bot, Expect::Malformed] {
            assert!(a.iter().any(|e| e.expect == expect), "{expect:?} missing");
        }
        assert!(a.iter().any(|e| e.kind == "demo_request"));
        assert!(default_visit_cap() < u32::MAX, "the default scoring config caps its web_visit rule");
        assert!(a.iter().any(|e| e.channel == Channel::Raw) && a.iter().any(|e| e.channel == Channel::Http));
        for event in a.iter().filter(|e| e.expect == Expect::Engaged) {
            serde_json::from_str::<serde_json::Value>(&event.json).expect("valid events are JSON");
        }
        // CRM outcomes: opportunities open after hand-raisers, and some are won and lost.
        for stage in ["\"open\"", "\"closed_won\"", "\"closed_lost\""] {
            assert!(
                a.iter().any(|e| e.kind == "opportunity" && e.json.contains(&format!("\"stage\":{stage}"))),
                "no {stage} opportunity change"
            );
        }
        // A change never comes before the opening of its opportunity.
        let mut opened = std::collections::HashMap::new();
        for event in a.iter().filter(|e| e.kind == "opportunity") {
            let json: serde_json::Value = serde_json::from_str(&event.json).expect("JSON");
            let id = json["properties"]["opportunity_id"].as_str().expect("id").to_owned();
            let t = json["occurred_at"].as_i64().expect("time");
            if json["properties"]["stage"] == "open" {
                opened.insert(id, t);
            } else {
                assert!(opened.get(&id).is_some_and(|at| *at < t), "{} decided before it opened", event.json);
            }
        }
        let world = World::new(config, 1, "t");
        assert!(world.accounts.iter().all(|a| (3..=12).contains(&a.contacts.len())));
        assert!(tal_csv(&world.accounts).lines().count() == 51);
    }
}
