//! Label selectors: `env=production,service=web2img`, `env!=dev`, `region`, `!canary`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parse a comma-separated selector; the error says which term is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let req = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(key(k, term)?, value(v, term)?)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(key(k, term)?, value(v, term)?)
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(key(k, term)?)
            } else {
                Requirement::Exists(key(term, term)?)
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn key(k: &str, term: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err(format!("bad label name in selector term '{term}'"));
    }
    Ok(k.to_string())
}

fn value(v: &str, term: &str) -> Result<String, String> {
    let v = v.trim();
    if v.chars().any(|c| c == '=' || c == '!' || c.is_whitespace()) {
        return Err(format!("bad label value in selector term '{term}'"));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_matches() {
        let l = labels(&[("env", "production"), ("service", "web2img")]);
        for (sel, want) in [
            ("", true),
            ("env=production", true),
            ("env==production,service=web2img", true),
            ("env=staging", false),
            ("env!=staging", true),
            ("env!=production", false),
            ("service", true),
            ("region", false),
            ("!region", true),
            ("!env", false),
            (" env = production , service ", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn rejects_bad_terms() {
        for bad in ["=x", "env=a=b", "e nv=x", "!", "env!=a b"] {
            let err = Selector::parse(bad).unwrap_err();
            assert!(err.contains("selector term"), "{bad}: {err}");
        }
    }
}
