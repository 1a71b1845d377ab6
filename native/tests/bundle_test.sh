#!/usr/bin/env bash
# ctest "bundle": sgm-run on the bundle in $SGM_TEST_BUNDLE (skipped, exit 77, without one): it verifies, generates,
# serves JSON lines with bad requests among good ones, and refuses a copy with one byte of a graph changed.
set -euo pipefail
host="$1"
bundle="${SGM_TEST_BUNDLE:-}"
if [ -z "$bundle" ] || [ ! -f "$bundle/runtime.json" ]; then
  echo "skipped: set SGM_TEST_BUNDLE to a bundle (e.g. python -m compile.export --model tiny-random-llava --out DIR)"
  exit 77
fi
"$host" verify --bundle "$bundle" | grep -q '"ok":true'
"$host" generate --bundle "$bundle" --prompt "Hello" --max-new-tokens 4 --json | grep -q '"finish_reason"'
out="$(printf '%s\n' '{"id":1,"prompt":"Hi","max_new_tokens":3}' 'not json' '{"id":2,"prompt":"Hi","colour":"red"}' \
  '{"id":3,"prompt":"Hi","image":"/nonexistent.png"}' '{"id":4,"prompt":"Hi","max_new_tokens":3}' \
  | "$host" serve --bundle "$bundle" --threads 1)"
[ "$(echo "$out" | wc -l)" = 6 ]  # the ready line, then one line per request
echo "$out" | sed -n 2p | grep -q "\"id\":1.*\"token_ids\"\|\"token_ids\".*\"id\":1"
echo "$out" | sed -n 3p | grep -q 'not valid JSON'
echo "$out" | sed -n 4p | grep -q "unknown field 'colour'"
echo "$out" | sed -n 5p | grep -q 'does not exist'
echo "$out" | sed -n 6p | grep -q '"token_ids"'
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$bundle/." "$tmp/"
printf 'x' | dd of="$tmp/embed.onnx" bs=1 seek=100 conv=notrunc status=none
if "$host" verify --bundle "$tmp" 2>"$tmp.err"; then echo "a tampered bundle was accepted"; exit 1; fi
grep -q "embed.onnx does not match its sha256 in manifest.json" "$tmp.err"
rm -f "$tmp.err"
echo "bundle tests: all passed"
