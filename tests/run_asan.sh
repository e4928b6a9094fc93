#!/usr/bin/env bash
# CI job: the C core and the binding built with AddressSanitizer + UndefinedBehaviorSanitizer in a
# separate directory (build/asan, the normal build is untouched), then the C tests and the engine,
# scheduler and hardening tests run on it. Any sanitizer report fails the job. A few minutes on 2
# cores.
#
#   bash tests/run_asan.sh [extra pytest args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build/asan"
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
libasan="$(gcc -print-file-name=libasan.so)"
libubsan="$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

t0=$SECONDS
# ---- C tests of the core (no Python)
# test_limits holds the thread-count race; test_matmul (2 min under ASan) with ZIPAR_ASAN_ALL=1
ctests="test_limits"
[ "${ZIPAR_ASAN_ALL:-0}" = 1 ] && ctests="test_matmul test_limits"
make -s -C "$root/csrc/tests" BUILD=../../build/asan/ctests TESTS="$ctests" \
    CFLAGS="-O1 -g -fopenmp -Wall -Wextra $san" test

echo "run_asan: C tests $((SECONDS - t0)) s"
# ---- the extension, into a copy of the package (ZIPAR_ASAN_REUSE=1: keep the last build), at -O1
# like the C tests above (-O3 took about 260 s for matmul.c alone under the sanitizers)
if [ "${ZIPAR_ASAN_REUSE:-0}" != 1 ] || [ ! -d "$out/pkg" ]; then
rm -rf "$out/pkg" "$out/tmp" "$out/lib"
mkdir -p "$out/pkg"
(cd "$root" && ZIPAR_OPT=-O1 CFLAGS="-g $san" LDFLAGS="$san" python3 setup.py -q build_ext -j 2 \
    --build-temp "$out/tmp" --build-lib "$out/lib" >/dev/null 2>"$out/build.log") || {
    cat "$out/build.log"; exit 1; }
(cd "$root" && git ls-files -z zipar | xargs -0 -I{} cp --parents {} "$out/pkg/")
cp "$out"/lib/zipar/_core*.so "$out/pkg/zipar/"
fi

echo "run_asan: sanitized extension built, $((SECONDS - t0)) s"
# ---- engine and scheduler tests, plus the hardening regressions, on the sanitized build
tests=("$root/tests/test_engine.py" "$root/tests/test_scheduler.py")
[ -f "$root/tests/test_hardening.py" ] && tests+=("$root/tests/test_hardening.py")
cd "$(mktemp -d)"
LD_PRELOAD="$libasan:$libubsan" PYTHONPATH="$out/pkg" ZIPAR_ASAN=1 \
    python3 -m pytest -q -p no:cacheprovider -x "${tests[@]}" \
    -k "not memory_stable and not cli" "$@"
# (not memory_stable: it bounds RSS growth, which ASan's quarantine of freed memory inflates by
# design; not cli: the command-line tests only re-run generations in subprocesses)
echo "run_asan: C tests and ${#tests[@]} test files clean under ASan/UBSan, $((SECONDS - t0)) s"
