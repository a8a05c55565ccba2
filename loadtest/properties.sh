#!/usr/bin/env bash
# Runs each property test over untrusted input for a fixed time, seed after seed, and prints
# how many cases each ran. A failure stops with the minimal case, which proptest also keeps
# in the crate's proptest-regressions/ (commit it: it is replayed first on every later run).
#
#   loadtest/properties.sh [MINUTES_PER_TARGET]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
cases=20000
# crate|test target|test name
targets=(
  "embedstream-schemas|--lib|properties::framing_reads_back_and_never_panics"
  "embedstream-schemas|--lib|properties::the_avro_decoders_never_panic"
  "embedstream-schemas|--lib|properties::a_mangled_item_event_decodes_or_fails_cleanly"
  "embedstream-schemas|--lib|properties::schema_text_from_a_client_never_panics_the_registry"
  "embedstream-schemas|--lib|properties::replaying_a_corrupt_schemas_log_never_panics"
  "embedstream-index-sink|--test=it|properties::a_damaged_snapshot_opens_or_is_refused"
  "embedstream-adapter|--lib|tests::a_damaged_artifact_loads_or_is_refused"
  "embedstream-index-sink|--lib|service::properties::any_search_request_gets_an_answer_or_a_clear_client_error"
  "embedstream-index-sink|--lib|service::properties::any_item_id_gets_an_answer_or_a_clear_client_error"
  "embedstream-index-sink|--lib|service::properties::any_embed_request_gets_one_vector_per_input_or_a_clear_client_error"
  "embedstream-router|--test=it|properties::any_search_request_gets_an_answer_or_an_error_that_says_why"
  "embedstream-router|--test=it|properties::any_embeddings_request_gets_an_error_in_its_apis_shape"
)
cargo test --release -p embedstream-schemas -p embedstream-index-sink -p embedstream-adapter -p embedstream-router --no-run -q
for t in "${targets[@]}"; do
  IFS='|' read -r crate target name <<<"$t"
  end=$(( $(date +%s) + minutes * 60 ))
  runs=0
  while [ "$(date +%s)" -lt "$end" ]; do
    if ! PROPTEST_CASES=$cases cargo test --release -q -p "$crate" "$target" "$name" -- --exact \
        >/tmp/properties-last.log 2>&1; then
      echo "FAILED: $name"; cat /tmp/properties-last.log; exit 1
    fi
    # A filter that matched nothing would pass too: make sure the property ran.
    grep -q "1 passed" /tmp/properties-last.log || {
      echo "NOT RUN: $name"; cat /tmp/properties-last.log; exit 1; }
    runs=$((runs + 1))
  done
  echo "$name: $((runs * cases)) cases in $minutes min, no failure"
done
