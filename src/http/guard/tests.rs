use super::*;

fn policy(auth: bool, tls: bool, origins: &[&str], hosts: &[&str]) -> WebPolicy {
    let mut server = crate::config::Config::defaults().server;
    server.allowed_origins = origins.iter().map(|s| (*s).to_owned()).collect();
    server.allowed_hosts = hosts.iter().map(|s| (*s).to_owned()).collect();
    WebPolicy::new(&server, auth, tls)
}

fn code(result: Result<(), HttpError>) -> Option<ErrorCode> {
    result.err().map(|e| e.0.code)
}

/// A policy, a `Host`, an `Origin`, and the code it gets (`None`: served).
type OriginRow<'a> = (
    &'a WebPolicy,
    Option<&'a str>,
    Option<&'a str>,
    Option<ErrorCode>,
);
/// Whether a body follows, its type and encoding, and the code it gets.
type BodyRow<'a> = (bool, Option<&'a str>, Option<&'a str>, Option<ErrorCode>);

const FORBIDDEN: Option<ErrorCode> = Some(ErrorCode::Forbidden);
const MISDIRECTED: Option<ErrorCode> = Some(ErrorCode::MisdirectedRequest);
const MEDIA: Option<ErrorCode> = Some(ErrorCode::UnsupportedMediaType);

#[test]
fn hosts_served_with_auth_off_are_loopback_or_listed() {
    let off = policy(false, false, &[], &["sy.internal"]);
    let on = policy(true, false, &[], &[]);
    let any = policy(false, false, &[], &["*"]);
    let table: &[(&WebPolicy, Option<&str>, Option<ErrorCode>)] = &[
        (&off, Some("127.0.0.1:9090"), None),
        (&off, Some("localhost"), None),
        (&off, Some("LOCALHOST:1"), None),
        (&off, Some("[::1]:9090"), None),
        (&off, Some("sy.internal:8080"), None),
        (&off, None, None),
        (&off, Some("evil.example:9090"), MISDIRECTED),
        (&off, Some("localhost.evil.example"), MISDIRECTED),
        (&off, Some("127.0.0.2"), MISDIRECTED),
        (&off, Some("localhost:x"), MISDIRECTED),
        (&off, Some(""), MISDIRECTED),
        (&on, Some("evil.example"), None),
        (&any, Some("evil.example"), None),
    ];
    for (i, (p, host, want)) in table.iter().enumerate() {
        let head = Head {
            host: *host,
            ..Head::default()
        };
        assert_eq!(code(p.check(&head)), *want, "row {i}: {host:?}");
    }
}

#[test]
fn origins_must_be_our_own_or_listed() {
    let plain = policy(false, false, &["https://dash.example"], &[]);
    let tls = policy(true, true, &[], &[]);
    let h = Some("127.0.0.1:9090");
    let table: &[OriginRow] = &[
        (&plain, h, None, None),
        (&plain, h, Some("http://127.0.0.1:9090"), None),
        (&plain, h, Some("HTTP://127.0.0.1:9090"), None),
        (&plain, h, Some("https://dash.example"), None),
        (&plain, h, Some("https://dash.example:443"), None),
        (&plain, h, Some("http://evil.example"), FORBIDDEN),
        (&plain, h, Some("http://localhost:9090"), FORBIDDEN),
        (&plain, h, Some("http://127.0.0.1:9091"), FORBIDDEN),
        (&plain, h, Some("https://127.0.0.1:9090"), FORBIDDEN),
        (&plain, h, Some("http://dash.example"), FORBIDDEN),
        (&plain, h, Some("null"), FORBIDDEN),
        (&plain, None, Some("http://127.0.0.1"), FORBIDDEN),
        (&plain, Some("localhost"), Some("http://localhost"), None),
        (&plain, Some("localhost"), Some("http://localhost:80"), None),
        (&tls, Some("sy.example"), Some("https://sy.example"), None),
        (
            &tls,
            Some("sy.example:443"),
            Some("https://sy.example"),
            None,
        ),
        (
            &tls,
            Some("sy.example"),
            Some("http://sy.example"),
            FORBIDDEN,
        ),
        (
            &tls,
            Some("sy.example"),
            Some("https://evil.example"),
            FORBIDDEN,
        ),
    ];
    for (i, (p, host, origin, want)) in table.iter().enumerate() {
        let head = Head {
            host: *host,
            origin: *origin,
            ..Head::default()
        };
        assert_eq!(code(p.check(&head)), *want, "row {i}: {host:?} {origin:?}");
    }
}

#[test]
fn bodies_must_be_uncompressed_json() {
    let p = policy(false, false, &[], &[]);
    let table: &[BodyRow] = &[
        (true, Some("application/json"), None, None),
        (true, Some("Application/JSON; charset=utf-8"), None, None),
        (true, Some("application/json"), Some("identity"), None),
        (true, Some("text/plain"), None, MEDIA),
        (true, Some("application/x-www-form-urlencoded"), None, MEDIA),
        (true, Some("multipart/form-data; boundary=x"), None, MEDIA),
        (true, Some("application/jsonx"), None, MEDIA),
        (true, None, None, MEDIA),
        (true, Some("application/json"), Some("gzip"), MEDIA),
        (true, Some("application/json"), Some("deflate"), MEDIA),
        (false, None, None, None),
        (false, Some("text/plain"), None, None),
    ];
    for (i, (has_body, content_type, encoding, want)) in table.iter().enumerate() {
        let head = Head {
            host: Some("127.0.0.1"),
            has_body: *has_body,
            content_type: *content_type,
            content_encoding: *encoding,
            ..Head::default()
        };
        assert_eq!(code(p.check(&head)), *want, "row {i}");
    }
}

#[test]
fn a_body_is_announced_by_a_length_over_zero_or_chunks() {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let table: &[(&[(&str, &str)], bool)] = &[
        (&[], false),
        (&[("content-length", "0")], false),
        (&[("content-length", "00")], false),
        (&[("content-length", "10")], true),
        (&[("transfer-encoding", "chunked")], true),
    ];
    for (headers, want) in table {
        let mut map = HeaderMap::new();
        for (k, v) in *headers {
            map.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(head_of(&map, None).has_body, *want, "{headers:?}");
    }
}

#[test]
fn the_host_header_wins_over_the_uri_authority() {
    let mut map = HeaderMap::new();
    assert_eq!(head_of(&map, Some("[::1]:1")).host, Some("[::1]:1"));
    map.insert(header::HOST, "localhost:2".parse().unwrap());
    assert_eq!(head_of(&map, Some("[::1]:1")).host, Some("localhost:2"));
}
