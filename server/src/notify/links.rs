//! Links in notifications (`external_url`): where an operator who gets an alert
//! looks at it. `external_url` is the Grafana (base URL, sub-path included) into
//! which `deploy/grafana/driftwatch.json` is imported; an alert's link is that
//! dashboard (uid `driftwatch`) showing the alert's host:
//!
//! `{external_url}/d/driftwatch/driftwatch?var-host=<host id>` (no `var-host`
//! for an alert without a host).
//!
//! It is Alertmanager's `generatorURL` and the webhook body's `link`. Without
//! `external_url` there is nothing to click: `generatorURL` is left out (it is
//! optional in Alertmanager's API) and `link` is null.

use driftwatch_proto::v1;

/// The dashboard's uid and slug in `deploy/grafana/driftwatch.json`.
pub const DASHBOARD_PATH: &str = "d/driftwatch/driftwatch";

/// How notifications link back (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    /// `external_url` without a trailing `/`.
    base: Option<reqwest::Url>,
}

impl Links {
    pub fn new(external_url: Option<reqwest::Url>) -> Self {
        Self { base: external_url }
    }

    /// The link for `alert`, or None without `external_url`.
    pub fn alert(&self, alert: &v1::Alert) -> Option<String> {
        let mut url = self.base.clone()?;
        let path = format!("{}/{DASHBOARD_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        if !alert.host_id.is_empty() {
            url.query_pairs_mut().append_pair("var-host", &alert.host_id);
        }
        Some(url.to_string())
    }
}

/// `external_url` as the config gives it: an absolute http(s) URL with a host, no
/// credentials, query or fragment (links are built below it).
pub fn check_external_url(value: &str) -> Result<reqwest::Url, String> {
    let url = super::config::check_url(value)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{value:?}: no query or fragment (links are built below this URL)"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(host: &str) -> v1::Alert {
        v1::Alert { fingerprint: "fp".into(), host_id: host.into(), ..Default::default() }
    }

    #[test]
    fn an_alert_links_to_the_dashboard_of_its_host() {
        let links = Links::new(Some(check_external_url("https://grafana.example.com").unwrap()));
        assert_eq!(
            links.alert(&alert("web-1")).as_deref(),
            Some("https://grafana.example.com/d/driftwatch/driftwatch?var-host=web-1")
        );
        // A sub-path is kept, a trailing slash is not doubled, the host id is encoded.
        let links = Links::new(Some(check_external_url("http://ops.example.com:3000/grafana/").unwrap()));
        assert_eq!(
            links.alert(&alert("db 1&x")).as_deref(),
            Some("http://ops.example.com:3000/grafana/d/driftwatch/driftwatch?var-host=db+1%26x")
        );
        assert_eq!(
            links.alert(&alert("")).as_deref(),
            Some("http://ops.example.com:3000/grafana/d/driftwatch/driftwatch")
        );
        assert_eq!(Links::default().alert(&alert("web-1")), None);
    }

    #[test]
    fn external_url_must_be_an_absolute_http_url_without_query() {
        assert!(check_external_url("https://grafana.example.com/x").is_ok());
        for bad in [
            "grafana.example.com",
            "/d/driftwatch",
            "ftp://g.example.com",
            "https://u:p@g.example.com",
            "https://g.example.com/?orgId=1",
            "https://g.example.com/#top",
        ] {
            assert!(check_external_url(bad).is_err(), "{bad} accepted");
        }
    }
}
