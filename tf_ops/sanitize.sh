#!/usr/bin/env bash
# Builds the op library with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs the op tests (tests/ops, and tests/fuzz when present) against it.
#
#   tf_ops/sanitize.sh [extra pytest arguments]
#
# Fails unless the tests pass and no sanitizer reported anything. The work tree
# (tracked and untracked files, not ignored ones such as the normal
# _circle_loss_op.so) is copied to a temporary directory, built there by
# setup.py with the flags of a normal build plus the sanitizer flags, and
# tested there, so the repository's own library is never touched. KEEP=1
# keeps the copy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CXX_BIN=${CXX:-g++}
SANITIZE_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all \
-fno-omit-frame-pointer -g -O1"
# Python is not instrumented, so the ASan runtime is preloaded; libstdc++
# too, because python does not link it and ASan's __cxa_throw interceptor
# needs it at start-up (else the first C++ exception of an extension module
# trips an ASan CHECK).
PRELOAD=""
for runtime in libasan.so libstdc++.so.6; do
  path=$("$CXX_BIN" -print-file-name=$runtime)
  if [[ ! -f "$path" ]]; then
    echo "sanitize.sh: $CXX_BIN has no $runtime" >&2
    exit 2
  fi
  PRELOAD="$PRELOAD${PRELOAD:+ }$path"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keras_margin_sanitize.XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "sanitize.sh: keeping $WORK"
else
  trap 'rm -rf "$WORK"' EXIT
fi
TREE="$WORK/tree"
mkdir -p "$TREE"
start=$SECONDS

# --ignore-failed-read: a tracked file deleted in the work tree is skipped.
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
  tar -C "$ROOT" --null --ignore-failed-read -T - -cf - 2>/dev/null |
  tar -C "$TREE" -xf -

# setup.py puts its own flags (-O3 -g0 ...) after CFLAGS, so the sanitizer
# flags go through a compiler wrapper that appends them last, where they win.
# GCC 12 rejects Abseil's constexpr comparisons of function pointers with
# nullptr under the null and nonnull-attribute checks, so those checks stay
# off for the files that include TensorFlow's headers; the engine includes
# only Eigen and keeps them (a null dereference elsewhere is still an ASan
# SEGV report).
cat >"$WORK/sanitize-cxx" <<EOF
#!/bin/sh
case "\$*" in
  *circle_loss_engine.cc*|*circle_loss_engine_avx512.cc*) no_null_checks="" ;;
  *) no_null_checks="-fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute" ;;
esac
exec $CXX_BIN "\$@" $SANITIZE_FLAGS \$no_null_checks
EOF
chmod +x "$WORK/sanitize-cxx"

# Runs a command under the sanitizers. Python and TensorFlow leak by design,
# so leak checking is off. Every report
# kills the reporting process (-fno-sanitize-recover=all, halt_on_error): a
# report in pytest's own process ends the run, and one in a test's subprocess
# fails that test, which checks the exit status. Reports go to stderr, where
# the log check at the end looks for them too.
sanitized() {
  LD_PRELOAD="$PRELOAD" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2 "$@"
}
REPORT_PATTERN="runtime error:|ERROR: AddressSanitizer"

# The harness must notice findings in a library loaded like the op's: a
# signed overflow (UBSan) and a use after free (ASan) must each kill their
# process with a report.
cat >"$WORK/canary.cc" <<'EOF'
#include <cstdlib>
extern "C" int AddOne(int x) { return x + 1; }
extern "C" int ReadAfterFree(int i) {
  int* p = static_cast<int*>(std::malloc(4 * sizeof(int)));
  p[i] = 1;
  std::free(p);
  return p[i];
}
EOF
"$WORK/sanitize-cxx" -shared -fPIC "$WORK/canary.cc" -o "$WORK/canary.so"
for call in "AddOne(2**31 - 1)" "ReadAfterFree(2)"; do
  if sanitized python -c "import ctypes; ctypes.CDLL('$WORK/canary.so').$call" \
    2>"$WORK/canary.log" || ! grep -q -E "$REPORT_PATTERN" "$WORK/canary.log"; then
    echo "sanitize.sh: the harness missed the deliberate error in $call" >&2
    exit 1
  fi
done

echo "sanitize.sh: building the op library in $TREE"
if ! (cd "$TREE" && CC="$WORK/sanitize-cxx" CXX="$WORK/sanitize-cxx" \
  python setup.py build_ext --inplace) >"$WORK/build.log" 2>&1; then
  tail -50 "$WORK/build.log"
  exit 1
fi
LIB="$TREE/keras_margin/ops/_circle_loss_op.so"
# The extension is optional in setup.py: a failed compile leaves no library.
if [[ ! -f "$LIB" ]]; then
  tail -50 "$WORK/build.log"
  echo "sanitize.sh: the build produced no $LIB" >&2
  exit 1
fi
for symbol in __asan_report_load __ubsan_handle_; do
  # grep -q would stop reading early and fail the pipeline with SIGPIPE.
  if ! nm -D "$LIB" | grep "$symbol" >/dev/null; then
    echo "sanitize.sh: $LIB has no $symbol* calls: not instrumented" >&2
    exit 1
  fi
done
build_seconds=$((SECONDS - start))

cd "$TREE"
loaded=$(sanitized python -c \
  "from keras_margin.ops import _loader; print(_loader.LIBRARY_PATH)")
if [[ "$loaded" != "$LIB" ]]; then
  echo "sanitize.sh: the tests would load $loaded, not $LIB" >&2
  exit 1
fi

paths=(tests/ops)
if [[ -d tests/fuzz ]]; then paths+=(tests/fuzz); fi
test_start=$SECONDS
set +e
sanitized python -m pytest -q -p no:cacheprovider "${paths[@]}" "$@" 2>&1 |
  tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e
test_seconds=$((SECONDS - test_start))

findings=$(grep -c -E "$REPORT_PATTERN" "$WORK/pytest.log" || true)
summary=$(grep -E " in [0-9.]+s" "$WORK/pytest.log" | tail -1 || true)
echo "sanitize.sh: build ${build_seconds}s, tests ${test_seconds}s," \
  "total $((SECONDS - start))s; pytest: ${summary:-no summary}" \
  "(exit $status); sanitizer reports in the log: $findings"
[[ $status -eq 0 && $findings -eq 0 ]]
