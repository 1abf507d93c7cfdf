//! Links the service hands out (`paging.next`): absolute only from the configured
//! `server.public_url`, or from `X-Forwarded-*` when the operator opted in; otherwise relative.
//! The `Host` header alone is never trusted, so a client cannot point a link (and the bearer
//! token of whoever follows it) at another host.

use axum::http::HeaderMap;

use crate::config::ServerSettings;
use crate::http::query::Params;

#[derive(Debug, Clone)]
pub struct Links {
    public_url: Option<String>,
    trust_forwarded: bool,
}

impl Links {
    pub fn new(server: &ServerSettings) -> Self {
        Self {
            public_url: server.public_url.clone(),
            trust_forwarded: server.trust_forwarded_headers,
        }
    }

    /// The link to another page of `route`: the caller's own `params` with any paging cursor
    /// (`after`, `before`) replaced by `cursor`, as [`Self::to`] makes links.
    pub fn page(
        &self,
        headers: &HeaderMap,
        route: &str,
        params: &Params,
        cursor: (&str, &str),
    ) -> String {
        // A URL only to encode the query: `query_pairs_mut` does the form encoding.
        let mut url = reqwest::Url::parse("http://x/").expect("a static URL parses");
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in params.pairs() {
                if k != "after" && k != "before" {
                    query.append_pair(k, v);
                }
            }
            query.append_pair(cursor.0, cursor.1);
        }
        self.to(
            headers,
            &format!("{route}?{}", url.query().unwrap_or_default()),
        )
    }

    /// `path_and_query` (starting with `/`) as the link a client should follow.
    pub fn to(&self, headers: &HeaderMap, path_and_query: &str) -> String {
        if let Some(base) = &self.public_url {
            return format!("{base}{path_and_query}");
        }
        if self.trust_forwarded {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
            };
            let proto = header("x-forwarded-proto")
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            let host = header("x-forwarded-host").or_else(|| header("host"));
            if let Some(host) = host.filter(|h| is_host(h)) {
                return format!("{proto}://{host}{path_and_query}");
            }
        }
        path_and_query.to_owned()
    }
}

/// A bare `host[:port]`: no scheme, path, user info or spaces.
fn is_host(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn links(public_url: Option<&str>, trust: bool) -> Links {
        Links {
            public_url: public_url.map(str::to_owned),
            trust_forwarded: trust,
        }
    }

    #[test]
    fn host_headers_are_not_trusted_by_default() {
        let h = headers(&[("host", "evil.example"), ("x-forwarded-proto", "https")]);
        assert_eq!(
            links(None, false).to(&h, "/v1/leads?after=x"),
            "/v1/leads?after=x"
        );
        assert_eq!(
            links(Some("https://leads.example.com"), false).to(&h, "/v1/leads?after=x"),
            "https://leads.example.com/v1/leads?after=x"
        );
    }

    #[test]
    fn forwarded_headers_only_when_opted_in() {
        let h = headers(&[
            ("host", "internal:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "leads.example.com"),
        ]);
        assert_eq!(
            links(None, true).to(&h, "/v1/leads"),
            "https://leads.example.com/v1/leads"
        );
        let odd = headers(&[("x-forwarded-host", "evil.example/@x")]);
        assert_eq!(links(None, true).to(&odd, "/v1/leads"), "/v1/leads");
    }
}
