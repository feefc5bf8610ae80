//! Topic patterns: parsing and matching. The input is `pattern\ntopic`. Besides "no
//! panic", checks properties the router relies on: `>` matches every valid topic, a
//! wildcard-free pattern matches exactly itself, and a matching topic starts with the
//! pattern's literal prefix (the subscription index skips patterns on that basis).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::routing::pattern::{validate_topic, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, topic) = text.split_once('\n').unwrap_or((text, text));
    let topic_ok = validate_topic(topic).is_ok();
    if topic_ok {
        let all = Pattern::parse(">").expect("`>` parses");
        assert!(all.matches(topic), "`>` must match {topic:?}");
    }
    let Ok(p) = Pattern::parse(pattern) else {
        return;
    };
    let matched = p.matches(topic);
    if topic_ok && !pattern.contains(['*', '>', '#']) {
        assert_eq!(matched, pattern == topic, "{pattern:?} vs {topic:?}");
    }
    if matched {
        let prefix: Vec<&str> = p.literal_prefix().collect();
        let head: Vec<&str> = topic.split('.').take(prefix.len()).collect();
        assert_eq!(prefix, head, "{pattern:?} matched {topic:?}");
    }
    assert_eq!(p.as_str(), pattern);
});
