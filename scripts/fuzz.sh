#!/usr/bin/env bash
# Fuzzes what a stranger controls (fuzz/: HTTP-rule binding, proto3 JSON,
# Connect, gRPC-Web framing, the JWT parser) with libFuzzer on the stable
# toolchain: libfuzzer-sys links libFuzzer, and the coverage instrumentation
# is LLVM's sanitizer-coverage pass, asked for through stable -C flags (no
# sanitizer, which would need nightly; Rust's own checks, overflow and
# debug assertions included, stand in for it).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   default: 600 s each, every target
#
# Each target runs alone for SECONDS, from fuzz/seeds/<target> and
# fuzz/regressions/<target> into a corpus under fuzz/corpus/<target>
# (not committed); a crash, hang or slow input lands in
# fuzz/artifacts/<target>/. Fix it, then move the input into
# fuzz/regressions/<target>/: `cargo test` replays every file there.
# Not run by CI: a run is minutes per target by design.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(binding protojson connect grpc_web jwt)

export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing"
# An explicit --target keeps the flags off build scripts and proc macros,
# which run on the host and are not linked with libFuzzer.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$host"

mkdir -p logs
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target" "regressions/$target"
  echo "== $target: ${seconds}s"
  ./target/"$host"/release/"$target" "corpus/$target" "seeds/$target" "regressions/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -report_slow_units=2 -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
    > "logs/$target.log" 2>&1 || echo "   $target stopped with a finding: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov: " "logs/$target.log" | tail -3
  echo "   artifacts: $(ls "artifacts/$target" | wc -l)"
done
