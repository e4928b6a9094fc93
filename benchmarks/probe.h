/* probe.h -- what the standalone probes in benchmarks/ (amx_probe.c, dpbf16_probe.c,
 * stream_probe.c) share: a monotonic clock, a xorshift generator of floats in [-1, 1), and
 * float32 <-> bfloat16 bits (rounded to nearest even, finite inputs). Each probe compiles alone
 * with gcc; this header sits beside it. Inline, so a probe that uses part of it compiles without
 * warnings. */
#ifndef ZP_PROBE_H
#define ZP_PROBE_H

#include <stdint.h>
#include <string.h>
#include <time.h>

static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static inline uint64_t xr(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static inline float frand(void) {
    return (float)((xr() >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1;
}
static inline uint16_t tobf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float fbf(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
