use super::*;

#[test]
fn embedded_defaults_parse_and_validate() {
    let c = Config::defaults();
    c.validate().unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.limits.max_event_bytes, 1 << 20);
    assert_eq!(c.limits.max_frame_bytes, 16 << 20);
    assert_eq!(c.store.page_size, 16384);
}

#[test]
fn printed_config_loads_back() {
    let c = Config::defaults();
    let again: Config = toml::from_str(&c.to_toml()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn bad_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_connections = \"lots\"\n").unwrap();
    let err = Config::load(Some(&path), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_connections"), "{err}");
    assert!(!err.contains('\n'));

    std::fs::write(&path, "[limits]\nmax_conections = 5\n").unwrap();
    let err = Config::load(Some(&path), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_conections"), "{err}");

    std::fs::write(&path, "[limits]\nmax_frame_bytes = 10\n").unwrap();
    let err = Config::load(Some(&path), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_frame_bytes"), "{err}");
}

/// Loads `text` as the configuration file, with no overrides.
fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &Overrides::default())
}

#[test]
fn publish_rate_needs_a_burst() {
    let err = load("[limits]\npublish_rate_per_sec = 10\npublish_burst = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.publish_burst"), "{err}");
    let unlimited = load("[limits]\npublish_rate_per_sec = 0\npublish_burst = 0\n").unwrap();
    assert_eq!(unlimited.limits.publish_rate_per_sec, 0);
    let err = load("[limits]\npublish_rate_per_sec = -1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("publish_rate_per_sec"), "{err}");
    let c = load("[limits]\npublish_rate_per_sec = 5\npublish_burst = 2\n").unwrap();
    assert_eq!(
        (c.limits.publish_rate_per_sec, c.limits.publish_burst),
        (5, 2)
    );
}

#[test]
fn store_page_size_is_a_power_of_two_sqlite_accepts() {
    for bad in ["1000", "256", "131072", "0"] {
        let err = load(&format!("[store]\npage_size = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.page_size"), "{bad}: {err}");
    }
    for good in [512, 4096, 65536] {
        let c = load(&format!("[store]\npage_size = {good}\n")).unwrap();
        assert_eq!(c.store.page_size, good);
    }
}

#[test]
fn segments_grow_with_a_large_count_limit() {
    for (max, per) in [
        (None, DEFAULT_SEGMENT_EVENTS),
        (Some(0), DEFAULT_SEGMENT_EVENTS),
        (Some(1_000_000), DEFAULT_SEGMENT_EVENTS),
        (Some(4 << 20), DEFAULT_SEGMENT_EVENTS),
        (Some(10_000_000), 39_062),
        (Some(100_000_000), MAX_SEGMENT_EVENTS),
    ] {
        assert_eq!(segment_events_for(max), per, "{max:?}");
    }
}

#[test]
fn store_segment_events_is_automatic_or_in_range() {
    for bad in [1, 1023, 262_145] {
        let err = load(&format!("[store]\nsegment_events = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.segment_events"), "{bad}: {err}");
    }
    // 0 chooses from the count limit; a setting wins over it.
    let auto = load("[store]\nmax_events = 100000000\n").unwrap();
    assert_eq!(auto.store.segment_events(), 262_144);
    let unlimited = load("[store]\nmax_events = 0\n").unwrap();
    assert_eq!(unlimited.store.segment_events(), 16_384);
    let set = load("[store]\nmax_events = 0\nsegment_events = 131072\n").unwrap();
    assert_eq!(set.store.segment_events(), 131_072);
}

#[test]
fn file_and_overrides_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[limits]\nmax_connections = 7\n[server]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:2".parse().unwrap()),
        data_dir: None,
        insecure: false,
    };
    let c = Config::load(Some(&path), &overrides).unwrap();
    assert_eq!(c.limits.max_connections, 7);
    assert_eq!(c.server.listen, "127.0.0.1:2".parse().unwrap());
    assert_eq!(
        c.limits.max_event_bytes,
        1 << 20,
        "untouched keys keep defaults"
    );
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load(
        Some(Path::new("/nonexistent/x.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::FileNotFound(_)));
}
