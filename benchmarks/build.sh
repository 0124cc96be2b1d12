#!/bin/sh
# Build the C load generator into benchmarks/bin/ (gitignored).
set -e
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/bin"
${CC:-gcc} -O2 -Wall -Wextra -Wno-sign-compare -o "$here/bin/loadgen" "$here/loadgen.c" -lm
echo "$here/bin/loadgen"
