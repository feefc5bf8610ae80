//! Reading the names of the web edge: origins (`server.allowed_origins`, the `Origin`
//! header) and hosts (`server.allowed_hosts`, the `Host` header). Pure parsing, shared
//! by config validation and `crate::http::guard`, so both agree on what a name is.

/// An origin, `scheme://host[:port]`, as `(scheme, host, port)`: both lowercased, the
/// port the scheme's default when none is written. `None` for anything else (a path,
/// `null`, a scheme other than `http` and `https`).
pub fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = split_host(rest)?;
    Some((
        scheme,
        host.to_ascii_lowercase(),
        port.unwrap_or(default_port),
    ))
}

/// Splits a `Host` header value (or the authority of an origin) into its name and
/// port: `[::1]:9090` is `("[::1]", Some(9090))`. `None` when it is not one: empty, a
/// bad port, or characters no host name has (a path, spaces, userinfo).
pub fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        // An IPv6 literal: hex digits, colons and dots between the brackets.
        let end = inner.find(']')?;
        let literal = &inner[..end];
        if literal.is_empty()
            || !literal
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        let (host, rest) = authority.split_at(end + 2);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(name_char) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Split<'a> = Option<(&'a str, Option<u16>)>;
    type Parsed = Option<(String, String, u16)>;

    #[test]
    fn hosts_split_into_name_and_port() {
        let table: &[(&str, Split)] = &[
            ("localhost", Some(("localhost", None))),
            ("localhost:9090", Some(("localhost", Some(9090)))),
            ("127.0.0.1:1", Some(("127.0.0.1", Some(1)))),
            ("[::1]", Some(("[::1]", None))),
            ("[::1]:9090", Some(("[::1]", Some(9090)))),
            ("Evil.Example", Some(("Evil.Example", None))),
            ("", None),
            (":80", None),
            ("host:", None),
            ("host:port", None),
            ("host:99999", None),
            ("::1", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[]:80", None),
            ("[evil.example]", None),
            ("user@host", None),
            ("host/path", None),
            ("a b", None),
        ];
        for (authority, want) in table {
            assert_eq!(split_host(authority), *want, "{authority:?}");
        }
    }

    #[test]
    fn origins_normalise_scheme_case_and_default_ports() {
        let o = |s: &str, h: &str, p| Some((s.to_owned(), h.to_owned(), p));
        let table: &[(&str, Parsed)] = &[
            ("http://127.0.0.1:9090", o("http", "127.0.0.1", 9090)),
            ("HTTP://LocalHost", o("http", "localhost", 80)),
            ("https://dash.example", o("https", "dash.example", 443)),
            ("https://[::1]:8443", o("https", "[::1]", 8443)),
            ("null", None),
            ("file://", None),
            ("ftp://x.example", None),
            ("http://x.example/", None),
            ("http://x.example:1/path", None),
            ("http://", None),
        ];
        for (origin, want) in table {
            assert_eq!(parse_origin(origin), *want, "{origin:?}");
        }
    }

    #[test]
    fn bad_origins_hosts_and_body_timeout_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            super::super::Config::load(Some(&path), &Default::default())
        };
        for (text, key) in [
            (
                "[server]\nallowed_origins = [\"evil.example\"]\n",
                "server.allowed_origins",
            ),
            (
                "[server]\nallowed_origins = [\"http://a.example/x\"]\n",
                "server.allowed_origins",
            ),
            (
                "[server]\nallowed_hosts = [\"a.example:80\"]\n",
                "server.allowed_hosts",
            ),
            (
                "[server]\nallowed_hosts = [\"http://a.example\"]\n",
                "server.allowed_hosts",
            ),
            ("[server]\nbody_timeout_ms = 0\n", "server.body_timeout_ms"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = load(
            "[server]\nallowed_origins = [\"https://dash.example\"]\nallowed_hosts = [\"*\", \"sy.internal\"]\n",
        )
        .unwrap();
        assert_eq!(c.server.allowed_origins, ["https://dash.example"]);
        assert_eq!(c.server.body_timeout_ms, 10_000);
    }
}
