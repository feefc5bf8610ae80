use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn config() -> AuthConfig {
    AuthConfig {
        tokens: vec![TokenConfig {
            name: "planner".into(),
            token: "planner-token-0123456789".into(),
            publish: vec!["task.>".into()],
            subscribe: vec!["task.>".into(), "agent.*".into()],
            admin: false,
            sources: vec!["planner-*".into()],
        }],
        tokens_file: Default::default(),
        jwt_secret: SECRET.into(),
        jwt_audience: String::new(),
        jwt_issuer: String::new(),
    }
}

fn jwt(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn static_tokens_and_grants() {
    let auth = Authenticator::from_config(&config()).unwrap();
    assert!(auth.enabled());
    let p = auth.authenticate(Some("planner-token-0123456789")).unwrap();
    assert_eq!(p.name, "planner");
    assert!(p.may_publish("task.created") && !p.may_publish("agent.started"));
    assert!(p.may_read("agent.started") && !p.may_read("agent.a.started"));
    assert!(!p.admin && p.check_admin().is_err());
    for bad in [
        None,
        Some(""),
        Some("planner-token-012345678"),
        Some("x.y.z"),
    ] {
        let e = auth.authenticate(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "{bad:?}");
    }
}

#[test]
fn jwts_carry_grants_and_expiry() {
    let auth = Authenticator::from_config(&config()).unwrap();
    let exp = Utc::now().timestamp() + 60;
    let t = jwt(serde_json::json!({"sub": "ops", "exp": exp, "subscribe": [">"], "admin": true}));
    let p = auth.authenticate(Some(&t)).unwrap();
    assert_eq!(p.name, "ops");
    assert!(p.admin && p.may_read("x.y") && !p.may_publish("x.y"));
    assert_eq!(p.expires_at.map(|t| t.timestamp()), Some(exp));

    let expired = jwt(serde_json::json!({"sub": "ops", "exp": Utc::now().timestamp() - 1}));
    let e = auth.authenticate(Some(&expired)).unwrap_err();
    assert!(e.message.contains("expired"), "{}", e.message);
    let no_exp = jwt(serde_json::json!({"sub": "ops"}));
    assert_eq!(
        auth.authenticate(Some(&no_exp)).unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let bad_grant = jwt(serde_json::json!({"sub": "ops", "exp": exp, "publish": ["a..b"]}));
    assert_eq!(
        auth.authenticate(Some(&bad_grant)).unwrap_err().code,
        ErrorCode::Unauthorized
    );
    let mut forged = t.clone();
    forged.push('x');
    assert_eq!(
        auth.authenticate(Some(&forged)).unwrap_err().code,
        ErrorCode::Unauthorized
    );
}

/// The header `{"alg":"none","typ":"JWT"}`, base64url.
const ALG_NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn jwt_with(alg: jsonwebtoken::Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn jwts_are_refused_unless_every_claim_checks_out() {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let mut c = config();
    c.jwt_audience = "switchyard".into();
    c.jwt_issuer = "https://issuer.example".into();
    let strict = Authenticator::from_config(&c).unwrap();
    let lax = Authenticator::from_config(&config()).unwrap();
    let now = Utc::now().timestamp();
    let base = serde_json::json!({"sub": "bot", "exp": now + 60,
        "aud": "switchyard", "iss": "https://issuer.example"});
    let with = |extra: serde_json::Value| {
        let mut claims = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let good = jwt_with(HS256, base.clone());
    assert_eq!(strict.authenticate(Some(&good)).unwrap().name, "bot");
    let claims_part = good.split('.').nth(1).unwrap();
    // (authenticator, token, what the refusal says)
    let table: Vec<(&Authenticator, String, &str)> = vec![
        (
            &strict,
            format!("{ALG_NONE}.{claims_part}."),
            "invalid token",
        ),
        (&lax, format!("{ALG_NONE}.{claims_part}."), "invalid token"),
        (&strict, jwt_with(HS384, base.clone()), "algorithm"),
        (&strict, jwt_with(HS512, base.clone()), "algorithm"),
        (
            &strict,
            jwt_with(HS256, with(serde_json::json!({"nbf": now + 60}))),
            "nbf",
        ),
        (
            &lax,
            jwt_with(
                HS256,
                serde_json::json!({"sub": "b", "exp": now + 60, "nbf": now + 60}),
            ),
            "nbf",
        ),
        (
            &strict,
            jwt_with(HS256, with(serde_json::json!({"aud": "other"}))),
            "aud",
        ),
        (
            &strict,
            jwt_with(HS256, with(serde_json::json!({"aud": null}))),
            "aud",
        ),
        (
            &strict,
            jwt_with(
                HS256,
                with(serde_json::json!({"iss": "https://evil.example"})),
            ),
            "iss",
        ),
        (
            &strict,
            jwt_with(HS256, with(serde_json::json!({"iss": null}))),
            "iss",
        ),
        // No audience configured: a token meant for some other service is refused.
        (&lax, jwt_with(HS256, base.clone()), "aud"),
        (
            &strict,
            jwt_with(HS256, with(serde_json::json!({"sub": ANONYMOUS}))),
            "reserved",
        ),
    ];
    for (i, (auth, token, why)) in table.iter().enumerate() {
        let e = auth.authenticate(Some(token)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "row {i}");
        assert!(e.message.contains(why), "row {i}: {}", e.message);
    }
    // `nbf` reached, and no `aud` or `iss` where none is configured: accepted.
    let fine = serde_json::json!({"sub": "b", "exp": now + 60, "nbf": now - 1});
    assert!(lax.authenticate(Some(&jwt_with(HS256, fine))).is_ok());
}

#[test]
fn source_globs_table() {
    let table = [
        ("billing-*", "billing-eu", true),
        ("billing-*", "billing-", true),
        ("billing-*", "billing", false),
        ("*", "", true),
        ("*", "anything", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("a*b", "abab", true),
        ("exact", "exact", true),
        ("exact", "exactly", false),
        ("", "", true),
        ("", "x", false),
        ("**x", "yyx", true),
        ("é*", "éa", true),
    ];
    for (glob, name, want) in table {
        assert_eq!(glob_matches(glob, name), want, "{glob:?} vs {name:?}");
    }
    // No blow-up on many stars against a long non-match.
    let long = "a".repeat(256);
    assert!(!glob_matches(&format!("{}b", "*a".repeat(100)), &long));
}

#[test]
fn the_source_is_the_principal_unless_granted_others() {
    let auth = Authenticator::from_config(&config()).unwrap();
    let p = auth.authenticate(Some("planner-token-0123456789")).unwrap();
    for (source, ok) in [
        ("planner", true),
        ("planner-eu", true),
        ("billing", false),
        ("anonymous", false),
        ("plannerx", false),
    ] {
        let r = p.check_source(source);
        assert_eq!(r.is_ok(), ok, "{source}");
        if let Err(e) = r {
            assert_eq!(e.code, ErrorCode::Forbidden);
        }
    }
    let exp = Utc::now().timestamp() + 60;
    let t = jwt(serde_json::json!({"sub": "ops", "exp": exp, "sources": ["ci-*"]}));
    let p = auth.authenticate(Some(&t)).unwrap();
    assert!(p.check_source("ops").is_ok() && p.check_source("ci-7").is_ok());
    assert!(p.check_source("planner").is_err());
    let none = jwt(serde_json::json!({"sub": "ops", "exp": exp}));
    let p = auth.authenticate(Some(&none)).unwrap();
    assert!(p.check_source("ops").is_ok() && p.check_source("ci-7").is_err());
    // Auth off: any source.
    let off = Authenticator::from_config(&AuthConfig::default()).unwrap();
    assert!(off.authenticate(None).unwrap().check_source("x").is_ok());
}

#[test]
fn setup_errors_name_the_key() {
    let mut c = config();
    c.tokens[0].token = "short".into();
    let e = Authenticator::from_config(&c).unwrap_err().to_string();
    assert!(e.contains("auth.tokens[0]"), "{e}");
    let mut c = config();
    c.tokens[0].subscribe = vec!["task.>.x".into()];
    assert!(Authenticator::from_config(&c).is_err());
    let mut c = config();
    c.jwt_secret = "short".into();
    assert!(Authenticator::from_config(&c)
        .unwrap_err()
        .to_string()
        .contains("jwt_secret"));
    let mut c = config();
    c.tokens[0].name = ANONYMOUS.into();
    let e = Authenticator::from_config(&c).unwrap_err().to_string();
    assert!(e.contains("reserved"), "{e}");
    let mut c = config();
    c.tokens[0].sources = vec![String::new()];
    assert!(Authenticator::from_config(&c).is_err());
    let debug = format!("{:?}", Authenticator::from_config(&config()).unwrap());
    assert!(!debug.contains("planner-token"), "{debug}");
}

#[test]
fn off_means_anonymous_with_every_grant_and_loopback_only() {
    let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
    assert!(!auth.enabled());
    let p = auth.authenticate(None).unwrap();
    assert_eq!(p.name, ANONYMOUS);
    assert!(p.admin && p.may_publish("a") && p.read_grant().is_none());
    let local: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
    assert!(check_exposure(local, false, &auth).is_ok());
    assert!(matches!(
        check_exposure(any, false, &auth),
        Err(AuthSetupError::Exposed(_))
    ));
    assert!(check_exposure(any, true, &auth).is_ok());
    let on = Authenticator::from_config(&config()).unwrap();
    assert!(check_exposure(any, false, &on).is_ok());
}
