#!/usr/bin/env bash
# Fuzzes the parsers that take client input, each target for a bounded time.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 60 s each, every target)
# Needs cargo-fuzz (installed here when absent). Only stable Rust is assumed:
# RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags libFuzzer needs. Crashes are
# written to fuzz/artifacts/TARGET/ and the script exits non-zero. New corpus entries
# stay untracked (fuzz/.gitignore); only fuzz/corpus/*/seed-* is kept in git.
# Not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode pattern filter subscription event_roundtrip condition auth http_batch)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# ASan needs the sanitizer runtime of the toolchain; fall back to no sanitizer if the
# build with it fails (a panic is still caught, memory errors are not).
sanitizer=address
if ! RUSTC_BOOTSTRAP=1 cargo fuzz build -O --sanitizer "$sanitizer" "${targets[@]:0:1}" 2>/dev/null; then
    echo "fuzz.sh: building with AddressSanitizer failed; using --sanitizer none" >&2
    sanitizer=none
fi

status=0
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    mkdir -p "corpus/$target" "artifacts/$target"
    # -timeout: one input taking over 10 s counts as a hang; -rss_limit_mb: a leak or
    # a blow-up over 2 GiB counts as a crash; -max_len: inputs of up to 16 KiB.
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run -O --sanitizer "$sanitizer" "$target" \
        "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -dict=dict/json.dict -print_final_stats=1; then
        echo "fuzz.sh: $target found a failure; see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit "$status"
