//! `ingest import-tal FILE.csv`: loads a Target Account List into `abm.accounts`.
//!
//! Columns (header row required, any order): `account_id`, `name`, `domains` (separated by `;`,
//! `|` or spaces), `tier` (`1`, `2`, `3`, `tier_1`..`tier_3` or `untiered`), `owner`, and
//! optionally `industry`, `employees` and `committee` (the buying committee's required personas,
//! separated by `;`, e.g. `economic_buyer;champion;legal`; empty: the tier's default from
//! `scoring.committee`). Every row is validated first; if any row is bad, every bad row is
//! reported with its line number and nothing is written.

use std::collections::{BTreeMap, HashMap};

use abm_schemas::{Account, Tier};

/// A row that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line number in the file.
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn parse_tier(text: &str) -> Option<Tier> {
    match text.trim().to_lowercase().as_str() {
        "1" | "tier_1" | "tier 1" | "tier1" => Some(Tier::Tier1),
        "2" | "tier_2" | "tier 2" | "tier2" => Some(Tier::Tier2),
        "3" | "tier_3" | "tier 3" | "tier3" => Some(Tier::Tier3),
        "untiered" | "" => Some(Tier::Untiered),
        _ => None,
    }
}

fn valid_domain(domain: &str) -> bool {
    domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Parses and validates a TAL CSV. `updated_at` is stamped on every account.
pub fn parse(csv_text: &[u8], updated_at: i64) -> Result<Vec<Account>, Vec<RowError>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(csv_text);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => return Err(vec![RowError { line: 1, message: format!("cannot read the header row: {error}") }]),
    };
    let column: HashMap<String, usize> = headers.iter().enumerate().map(|(i, h)| (h.to_lowercase(), i)).collect();
    let missing: Vec<&str> =
        ["account_id", "name", "domains", "tier", "owner"].into_iter().filter(|c| !column.contains_key(*c)).collect();
    if !missing.is_empty() {
        return Err(vec![RowError { line: 1, message: format!("missing column(s): {}", missing.join(", ")) }]);
    }
    let mut accounts = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line());
                errors.push(RowError { line, message: format!("unreadable row: {error}") });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let get = |name: &str| column.get(name).and_then(|i| record.get(*i)).unwrap_or("").trim().to_owned();
        let mut problems = Vec::new();
        let account_id = get("account_id");
        if account_id.is_empty() {
            problems.push("account_id is empty".to_owned());
        } else if let Some(first) = seen.insert(account_id.clone(), line) {
            problems.push(format!("account_id {account_id:?} already on line {first}"));
        }
        let name = get("name");
        if name.is_empty() {
            problems.push("name is empty".into());
        }
        let domains: Vec<String> = get("domains")
            .split([';', '|', ' ', ','])
            .map(|d| d.trim().trim_start_matches("www.").to_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if domains.is_empty() {
            problems.push("domains is empty".into());
        }
        for domain in domains.iter().filter(|d| !valid_domain(d)) {
            problems.push(format!("{domain:?} is not a domain"));
        }
        let tier = parse_tier(&get("tier"));
        if tier.is_none() {
            problems.push(format!("tier {:?} is not 1, 2, 3 or untiered", get("tier")));
        }
        let owner = get("owner");
        if owner.is_empty() {
            problems.push("owner is empty".into());
        }
        let employees = match get("employees").as_str() {
            "" => None,
            text => match text.parse::<i32>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    problems.push(format!("employees {text:?} is not a non-negative integer"));
                    None
                }
            },
        };
        let committee_text = get("committee");
        let committee = if committee_text.is_empty() {
            None
        } else {
            let personas: Vec<String> =
                committee_text.split(';').map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()).collect();
            if let Some(problem) = Account::committee_problem(&personas) {
                problems.push(format!("committee {committee_text:?} {problem}"));
            }
            Some(personas)
        };
        if !problems.is_empty() {
            errors.push(RowError { line, message: problems.join("; ") });
            continue;
        }
        let industry = Some(get("industry")).filter(|i| !i.is_empty());
        accounts.push(Account {
            account_id,
            name,
            domains,
            tier: tier.unwrap_or_default(),
            owner,
            industry,
            employees,
            committee,
            updated_at,
        });
    }
    if errors.is_empty() { Ok(accounts) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_parse_and_bad_rows_are_reported_by_line() {
        let good = "account_id,name,domains,tier,owner,industry,employees\n\
                    a1,Acme,acme.com;www.Acme.io,1,sdr@v.example,Manufacturing,1200\n\
                    a2,Initech,initech.com,tier_3,sdr2@v.example,,\n";
        let accounts = parse(good.as_bytes(), 5).expect("valid");
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].domains, vec!["acme.com", "acme.io"]);
        assert_eq!(accounts[0].tier, Tier::Tier1);
        assert_eq!(accounts[0].employees, Some(1200));
        assert_eq!(accounts[1].tier, Tier::Tier3);
        assert_eq!(accounts[1].industry, None);

        let bad = "account_id,name,domains,tier,owner\n\
                   a1,Acme,acme.com,1,o\n\
                   a1,Dup,dup.com,2,o\n\
                   a3,,not a domain!,gold,\n";
        let errors = parse(bad.as_bytes(), 0).expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].line, 3);
        assert!(errors[0].message.contains("already on line 2"));
        assert_eq!(errors[1].line, 4);
        for needle in ["name is empty", "not a domain", "gold", "owner is empty"] {
            assert!(errors[1].message.contains(needle), "{needle}: {}", errors[1]);
        }
        let errors = parse(b"id,name\n1,x\n", 0).expect_err("columns");
        assert!(errors[0].message.contains("missing column(s): account_id, domains, tier, owner"), "{}", errors[0]);
    }

    #[test]
    fn the_committee_column_overrides_the_tier_default_and_is_validated() {
        let text = "account_id,name,domains,tier,owner,committee\n\
                    a1,Acme,acme.com,1,o, Economic_Buyer ; legal;\n\
                    a2,Initech,initech.com,2,o,\n";
        let accounts = parse(text.as_bytes(), 0).expect("valid");
        assert_eq!(accounts[0].committee, Some(vec!["economic_buyer".to_owned(), "legal".to_owned()]));
        assert_eq!(accounts[1].committee, None, "empty: the tier's default");
        let bad = "account_id,name,domains,tier,owner,committee\n\
                   a1,Acme,acme.com,1,o,champion;champion\n\
                   a2,Initech,initech.com,2,o,vp sales\n\
                   a3,Hooli,hooli.com,2,o,;\n";
        let errors = parse(bad.as_bytes(), 0).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].message.contains("named twice"), "{}", errors[0]);
        assert!(errors[1].message.contains("\"vp sales\" is not 1-64 characters"), "{}", errors[1]);
        assert!(errors[2].message.contains("names no persona"), "{}", errors[2]);
    }
}
