//! Account resolution against the TAL: explicit `account_id`, else the contact's email domain
//! or the event's `domain` matched against the TAL's domains (free-mail domains never match),
//! else unresolved.

use std::collections::HashSet;

use abm_schemas::{Account, EngagementEvent};
use dashmap::DashMap;

use crate::validate::{email_domain, normalise_domain};

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// To `abm.engagement`, keyed by this account id.
    Account(String),
    /// To `abm.unresolved`, keyed by this contact or anonymous id.
    Unresolved(String),
}

/// Domain → account index of the TAL, kept current from `abm.accounts`.
#[derive(Debug, Default)]
pub struct TalIndex {
    by_domain: DashMap<String, String>,
    domains_of: DashMap<String, Vec<String>>,
    free_mail: HashSet<String>,
}

impl TalIndex {
    pub fn new(free_mail_domains: &[String]) -> TalIndex {
        TalIndex { free_mail: free_mail_domains.iter().map(|d| normalise_domain(d)).collect(), ..TalIndex::default() }
    }

    /// Adds or replaces an account.
    pub fn upsert(&self, account: &Account) {
        self.remove(&account.account_id);
        let domains: Vec<String> = account
            .domains
            .iter()
            .map(|d| normalise_domain(d))
            .filter(|d| !d.is_empty() && !self.free_mail.contains(d))
            .collect();
        for domain in &domains {
            self.by_domain.insert(domain.clone(), account.account_id.clone());
        }
        self.domains_of.insert(account.account_id.clone(), domains);
    }

    /// Removes an account (a tombstone on the TAL topic).
    pub fn remove(&self, account_id: &str) {
        if let Some((_, domains)) = self.domains_of.remove(account_id) {
            for domain in domains {
                self.by_domain.remove_if(&domain, |_, owner| owner == account_id);
            }
        }
    }

    pub fn accounts(&self) -> usize {
        self.domains_of.len()
    }

    pub fn domains(&self) -> usize {
        self.by_domain.len()
    }

    /// The account owning `domain` or one of its parent domains (`eu.acme.com` → `acme.com`).
    fn lookup(&self, domain: &str) -> Option<String> {
        let domain = normalise_domain(domain);
        if self.free_mail.contains(&domain) {
            return None;
        }
        let mut candidate = domain.as_str();
        loop {
            if let Some(account) = self.by_domain.get(candidate) {
                return Some(account.clone());
            }
            match candidate.split_once('.') {
                Some((_, parent)) if parent.contains('.') => candidate = parent,
                _ => return None,
            }
        }
    }

    /// Resolves `event` and records the account in it.
    pub fn resolve(&self, event: &mut EngagementEvent) -> Resolution {
        if let Some(account) = &event.account_id {
            return Resolution::Account(account.clone());
        }
        let email = event.contact.as_ref().and_then(|c| c.email.as_deref());
        let found = email
            .and_then(email_domain)
            .and_then(|d| self.lookup(d))
            .or_else(|| event.domain.as_deref().and_then(|d| self.lookup(d)));
        if let Some(account) = found {
            event.account_id = Some(account.clone());
            return Resolution::Account(account);
        }
        let contact = event.contact.as_ref();
        let key = contact
            .and_then(|c| c.contact_id.clone())
            .or_else(|| contact.and_then(|c| c.email.clone()))
            .unwrap_or_else(|| format!("anonymous:{}", event.event_id));
        Resolution::Unresolved(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abm_schemas::{Contact, EventKind, Tier};

    fn index() -> TalIndex {
        let index = TalIndex::new(&crate::validate::ValidationConfig::default().free_mail_domains);
        index.upsert(&Account {
            account_id: "acme".into(),
            name: "Acme".into(),
            domains: vec!["Acme.com".into(), "acme.io".into(), "gmail.com".into()],
            tier: Tier::Tier1,
            owner: "o".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 0,
        });
        index
    }

    fn event(email: Option<&str>, domain: Option<&str>) -> EngagementEvent {
        let mut event = EngagementEvent::new("e1", EventKind::WebVisit, 0, "t");
        event.contact = email.map(|e| Contact { email: Some(e.into()), ..Contact::default() });
        event.domain = domain.map(Into::into);
        event
    }

    #[test]
    fn resolution_order_and_free_mail() {
        let index = index();
        let mut explicit = event(Some("x@acme.com"), None);
        explicit.account_id = Some("other".into());
        assert_eq!(index.resolve(&mut explicit), Resolution::Account("other".into()));
        assert_eq!(index.resolve(&mut event(Some("jane@eu.acme.com"), None)), Resolution::Account("acme".into()));
        assert_eq!(
            index.resolve(&mut event(Some("jane@gmail.com"), Some("acme.io"))),
            Resolution::Account("acme".into())
        );
        // A TAL entry listing a free-mail domain never captures free-mail users.
        assert_eq!(
            index.resolve(&mut event(Some("jane@gmail.com"), None)),
            Resolution::Unresolved("jane@gmail.com".into())
        );
        assert_eq!(index.resolve(&mut event(None, Some("example.org"))), Resolution::Unresolved("anonymous:e1".into()));
        let mut resolved = event(None, Some("www.acme.com"));
        index.resolve(&mut resolved);
        assert_eq!(resolved.account_id.as_deref(), Some("acme"));
    }

    #[test]
    fn updates_and_tombstones_replace_domains() {
        let index = index();
        index.upsert(&Account {
            account_id: "acme".into(),
            name: "Acme".into(),
            domains: vec!["acme.net".into()],
            tier: Tier::Tier1,
            owner: "o".into(),
            industry: None,
            employees: None,
            committee: None,
            updated_at: 1,
        });
        assert!(matches!(index.resolve(&mut event(None, Some("acme.com"))), Resolution::Unresolved(_)));
        assert_eq!(index.resolve(&mut event(None, Some("acme.net"))), Resolution::Account("acme".into()));
        index.remove("acme");
        assert!(matches!(index.resolve(&mut event(None, Some("acme.net"))), Resolution::Unresolved(_)));
        assert_eq!((index.accounts(), index.domains()), (0, 0));
    }
}
