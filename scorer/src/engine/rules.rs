//! Rule matching and persona resolution.

use abm_schemas::EngagementEvent;

use super::config::{RuleConfig, ScoringConfig};

/// The path of a URL: no scheme, host, query or fragment. `https://x.com/a/b?q=1` → `/a/b`.
pub fn url_path(url: &str) -> &str {
    let without_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = if url.contains("://") {
        without_scheme.find('/').map_or("", |i| &without_scheme[i..])
    } else {
        without_scheme
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// Compiled rules and persona tables.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<RuleConfig>,
    title_personas: Vec<(Vec<String>, String)>,
}

impl Rules {
    pub fn new(config: &ScoringConfig) -> Rules {
        let mut rules = config.rules.clone();
        for rule in &mut rules {
            rule.channel = rule.channel.as_ref().map(|c| c.to_lowercase());
        }
        let title_personas = config
            .title_personas
            .iter()
            .map(|entry| (words(&entry.title_words), entry.persona.clone()))
            .filter(|(pattern, _)| !pattern.is_empty())
            .collect();
        Rules { rules, title_personas }
    }

    pub fn get(&self, index: u16) -> &RuleConfig {
        &self.rules[usize::from(index)]
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.rules.iter().position(|rule| rule.name == name).and_then(|i| u16::try_from(i).ok())
    }

    /// Index of the first rule that matches `event`.
    pub fn first_match(&self, event: &EngagementEvent) -> Option<u16> {
        self.rules.iter().position(|rule| matches(rule, event)).and_then(|i| u16::try_from(i).ok())
    }

    /// The event's persona, else one mapped from its contact's title, else `unknown`.
    pub fn persona<'a>(&'a self, event: &'a EngagementEvent) -> &'a str {
        let contact = event.contact.as_ref();
        if let Some(persona) = contact.and_then(|c| c.persona.as_deref()).filter(|p| !p.is_empty()) {
            return persona;
        }
        if let Some(title) = contact.and_then(|c| c.title.as_deref())
            && let Some(persona) = self.title_persona(title)
        {
            return persona;
        }
        "unknown"
    }

    /// The persona of the first title pattern whose words appear, in order and adjacent, among
    /// the title's words (compared lower-cased).
    fn title_persona(&self, title: &str) -> Option<&str> {
        // ASCII titles (nearly all) are split on the stack and compared without allocating.
        const MAX_WORDS: usize = 24;
        if title.is_ascii() {
            let mut buffer = [""; MAX_WORDS];
            let mut count = 0;
            for word in title.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
                if count == MAX_WORDS {
                    count = usize::MAX;
                    break;
                }
                buffer[count] = word;
                count += 1;
            }
            if count != usize::MAX {
                let title_words = &buffer[..count];
                return self
                    .title_personas
                    .iter()
                    .find(|(pattern, _)| {
                        title_words.windows(pattern.len()).any(|window| {
                            window.iter().zip(pattern).all(|(word, wanted)| word.eq_ignore_ascii_case(wanted))
                        })
                    })
                    .map(|(_, persona)| persona.as_str());
            }
        }
        let title_words = words(title);
        self.title_personas
            .iter()
            .find(|(pattern, _)| title_words.windows(pattern.len()).any(|window| window == pattern.as_slice()))
            .map(|(_, persona)| persona.as_str())
    }
}

fn matches(rule: &RuleConfig, event: &EngagementEvent) -> bool {
    if rule.kind.is_some_and(|kind| kind != event.kind) {
        return false;
    }
    if let Some(action) = rule.email_action
        && event.email.as_ref().map(|email| email.action) != Some(action)
    {
        return false;
    }
    if !rule.url_patterns.is_empty() {
        let Some(visit) = &event.web_visit else {
            return false;
        };
        let path = url_path(&visit.url);
        if !rule.url_patterns.iter().any(|pattern| path.contains(pattern.as_str())) {
            return false;
        }
    }
    if let Some(channel) = &rule.channel {
        // `channel` is lower-cased already; compare without allocating when ASCII.
        let same = event.ad_click.as_ref().is_some_and(|ad| {
            if ad.channel.is_ascii() {
                ad.channel.eq_ignore_ascii_case(channel)
            } else {
                ad.channel.to_lowercase() == *channel
            }
        });
        if !same {
            return false;
        }
    }
    if let Some(campaign) = &rule.campaign {
        let event_campaign = event
            .ad_click
            .as_ref()
            .and_then(|ad| ad.campaign.as_deref())
            .or_else(|| event.email.as_ref().and_then(|email| email.campaign.as_deref()));
        if event_campaign != Some(campaign.as_str()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use abm_schemas::{Contact, EventKind, WebVisit};

    #[test]
    fn url_paths_drop_host_query_and_fragment() {
        assert_eq!(url_path("https://vendor.example/pricing?plan=pro#top"), "/pricing");
        assert_eq!(url_path("http://vendor.example"), "");
        assert_eq!(url_path("/jobs/123?x"), "/jobs/123");
        // The host never matches a path pattern.
        assert_eq!(url_path("https://pricing.vendor.example/"), "/");
    }

    fn visit(url: &str) -> EngagementEvent {
        let mut event = EngagementEvent::new("e", EventKind::WebVisit, 0, "t");
        event.web_visit = Some(WebVisit { url: url.into(), referrer: None, title: None });
        event
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = Rules::new(&ScoringConfig::default());
        let name = |event: &EngagementEvent| rules.first_match(event).map(|i| rules.get(i).name.clone());
        assert_eq!(name(&visit("https://v.example/pricing")).as_deref(), Some("pricing_page"));
        assert_eq!(name(&visit("https://v.example/careers/eng")).as_deref(), Some("careers_page"));
        assert_eq!(name(&visit("https://v.example/jobs")).as_deref(), Some("careers_page"));
        assert_eq!(name(&visit("https://pricing.v.example/blog")).as_deref(), Some("web_visit"));
        assert_eq!(name(&EngagementEvent::new("e", EventKind::Webinar, 0, "t")), None);
    }

    #[test]
    fn personas_come_from_the_event_or_whole_title_words() {
        let rules = Rules::new(&ScoringConfig::default());
        let with = |persona: Option<&str>, title: Option<&str>| {
            let mut event = EngagementEvent::new("e", EventKind::WebVisit, 0, "t");
            event.contact =
                Some(Contact { persona: persona.map(Into::into), title: title.map(Into::into), ..Contact::default() });
            rules.persona(&event).to_owned()
        };
        assert_eq!(with(Some("champion"), Some("CFO")), "champion");
        assert_eq!(with(None, Some("VP, Finance")), "economic_buyer");
        assert_eq!(with(None, Some("Director of Engineering")), "champion", "`cto` is not a word of Director");
        assert_eq!(with(None, Some("MVP Developer")), "technical_evaluator", "`vp` is not a word of MVP");
        assert_eq!(with(None, Some("MVP Dev")), "unknown");
        assert_eq!(with(None, Some("Senior Data Analyst")), "end_user");
        assert_eq!(with(None, None), "unknown");
        // Non-ASCII titles take the allocating path and match the same way.
        assert_eq!(with(None, Some("Directeur Général, VP Finance")), "economic_buyer");
        assert_eq!(with(None, Some("VP FINANCE")), "economic_buyer");
        assert_eq!(with(None, Some("Ingénieur")), "unknown");
    }
}
