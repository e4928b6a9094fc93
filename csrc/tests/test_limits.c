/* test_limits.c -- hostile sizes and hostile threads against the core:
 *   - zp_config_check: every size limit of zipar.h at its boundary (accepted) and one past it
 *     (rejected with a message naming the limit), including products that wrap a 32-bit int;
 *   - zp_set_num_threads: negative and above ZP_MAX_THREADS refused, the count unchanged;
 *   - a thread toggling zp_set_num_threads(1 <-> 16) while sessions run on a vocab-16384 model:
 *     every run gives the tokens of a run at a fixed thread count (no overflow of the per-thread
 *     sampling buffers; under ASan any out-of-bounds write aborts the test).
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../matmul.h"
#include "../zipar.h"
#include "check.h"

static zp_config base_config(void) {
    zp_config c = {.dim = 32,
                   .n_layer = 1,
                   .n_head = 2,
                   .n_kv_head = 2,
                   .head_dim = 16,
                   .hidden = 64,
                   .vocab = 100,
                   .cls_token_num = 1,
                   .grid_h = 4,
                   .grid_w = 4,
                   .eor = 0,
                   .eor_token = 0,
                   .norm_eps = 1e-5f,
                   .rope_base = 10000.f};
    return c;
}

/* The config is rejected and the message mentions `needle`. */
static void expect_reject(zp_config c, const char *needle, const char *what) {
    zp_status st = zp_config_check(&c);
    CHECK(st == ZP_ERR_ARG, "%s: status %d, expected ZP_ERR_ARG", what, (int)st);
    if (st == ZP_ERR_ARG)
        CHECK(strstr(zp_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what,
              zp_last_error(), needle);
}

static void test_config_limits(void) {
    zp_config c = base_config();
    CHECK(zp_config_check(&c) == ZP_OK, "base config rejected: %s", zp_last_error());

    /* sequence length: exactly at the limit is fine, one past it is not */
    c = base_config();
    c.grid_h = 1;
    c.grid_w = ZP_MAX_SEQ_LEN - 1;
    CHECK(zp_config_check(&c) == ZP_OK, "seq_len at the limit rejected: %s", zp_last_error());
    c.grid_w = ZP_MAX_SEQ_LEN;
    expect_reject(c, "ZP_MAX_SEQ_LEN", "seq_len one past the limit");
    /* H*W = 2^32 wraps a 32-bit int to 0 (+P = 1): must still be refused */
    c = base_config();
    c.grid_h = 65536;
    c.grid_w = 65536;
    expect_reject(c, "ZP_MAX_SEQ_LEN", "grid 65536 x 65536");
    c.grid_h = INT32_MAX;
    c.grid_w = INT32_MAX;
    c.eor = 1;
    expect_reject(c, "ZP_MAX_SEQ_LEN", "grid INT32_MAX^2 with eor");
    c = base_config();
    c.cls_token_num = INT32_MAX;
    expect_reject(c, "ZP_MAX_SEQ_LEN", "P = INT32_MAX");

    /* widths, including (n_head + 2 n_kv_head) * head_dim that wraps an int */
    c = base_config();
    c.vocab = ZP_MAX_WIDTH;
    CHECK(zp_config_check(&c) == ZP_OK, "vocab at the limit rejected: %s", zp_last_error());
    c.vocab = ZP_MAX_WIDTH + 1;
    expect_reject(c, "ZP_MAX_WIDTH", "vocab");
    c = base_config();
    c.hidden = INT32_MAX;
    expect_reject(c, "ZP_MAX_WIDTH", "hidden");
    c = base_config();
    c.n_head = 1 << 28;
    c.n_kv_head = 1 << 28;
    c.head_dim = 64;
    expect_reject(c, "ZP_MAX_WIDTH", "qkv width wrapping an int");
    c = base_config();
    c.n_layer = ZP_MAX_LAYERS + 1;
    expect_reject(c, "ZP_MAX_LAYERS", "n_layer");

    /* values with no meaning */
    c = base_config();
    c.rope_base = INFINITY;
    expect_reject(c, "rope_base", "rope_base inf");
    c.rope_base = NAN;
    expect_reject(c, "rope_base", "rope_base nan");
    c = base_config();
    c.norm_eps = -1.f;
    expect_reject(c, "norm_eps", "norm_eps < 0");
    c = base_config();
    c.eor = 1;
    c.eor_token = c.vocab;
    expect_reject(c, "eor_token", "eor_token = vocab");
    c = base_config();
    c.eor = 2;
    expect_reject(c, "eor", "eor = 2");
    c = base_config();
    c.grid_w = 0;
    expect_reject(c, "positive", "grid_w = 0");
}

static void test_set_num_threads(void) {
    CHECK(zp_set_num_threads(2) == 0, "2 threads refused");
    CHECK(zp_get_num_threads() == 2, "count %d after setting 2", zp_get_num_threads());
    int bad[] = {-1, -100000, ZP_MAX_THREADS + 1, 100000, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(zp_set_num_threads(bad[i]) == -1, "zp_set_num_threads(%d) accepted", bad[i]);
        CHECK(zp_get_num_threads() == 2, "zp_set_num_threads(%d) changed the count to %d", bad[i],
              zp_get_num_threads());
    }
    CHECK(zp_set_num_threads(ZP_MAX_THREADS) == 0, "the cap itself refused");
    CHECK(zp_get_num_threads() == ZP_MAX_THREADS, "count at the cap");
    CHECK(zp_set_num_threads(0) == 0, "0 (the default) refused");
    CHECK(zp_get_num_threads() >= 1 && zp_get_num_threads() <= ZP_MAX_THREADS, "default count %d",
          zp_get_num_threads());
}

/* ---------------------------------------------------------------- the thread-count race */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}
static float *random_floats(size_t n, float scale) {
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = uniform() * scale;
    return a;
}
static float *ones(size_t n) {
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = 1.f;
    return a;
}

static volatile int toggling = 1;
static void *toggle_threads(void *arg) {
    (void)arg;
    int k = 0;
    while (__atomic_load_n(&toggling, __ATOMIC_RELAXED)) {
        zp_set_num_threads((k++ & 1) ? 16 : 1);
        struct timespec ts = {0, 2000}; /* 2 us */
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void run_session(const zp_model *m, int n, const float *prefix, int32_t *tokens) {
    zp_sampling sp = zp_sampling_default();
    sp.cfg_scale = 1.f;
    sp.seed = 7;
    zp_policy pol = {.kind = ZP_POLICY_ZIPAR, .window = 2};
    zp_session *s;
    zp_status st = zp_session_new(m, n, prefix, NULL, NULL, NULL, &sp, &pol, 0, &s);
    CHECK(st == ZP_OK, "session: %s", zp_last_error());
    if (st) return;
    st = zp_session_run(s, NULL, NULL);
    CHECK(st == ZP_OK, "run: %s", zp_last_error());
    const zp_config *c = zp_model_config(m);
    memcpy(tokens, zp_session_tokens(s), sizeof(int32_t) * n * c->grid_h * c->grid_w);
    zp_session_free(s);
}

static void test_thread_race(void) {
    zp_config c = base_config();
    c.vocab = 16384;
    c.grid_h = 6;
    c.grid_w = 6;
    const int n = 8, D = c.dim, F = c.hidden, V = c.vocab;
    const int QKV = (c.n_head + 2 * c.n_kv_head) * c.head_dim;
    zp_layer_weights L = {ones(D),
                          random_floats((size_t)QKV * D, 0.3f),
                          random_floats((size_t)D * c.n_head * c.head_dim, 0.3f),
                          ones(D),
                          random_floats((size_t)F * D, 0.3f),
                          random_floats((size_t)F * D, 0.3f),
                          random_floats((size_t)D * F, 0.3f),
                          NULL,
                          NULL,
                          NULL,
                          NULL}; /* no q/k norm */
    zp_weights w = {random_floats((size_t)V * D, 1.f), &L, ones(D),
                    random_floats((size_t)V * D, 1.f), ZP_WTYPE_F32};
    zp_model *m;
    zp_status st = zp_model_new(&c, &w, &m);
    CHECK(st == ZP_OK, "model: %s", zp_last_error());
    if (st) return;
    float *prefix = random_floats((size_t)n * D, 1.f);
    size_t cells = (size_t)n * c.grid_h * c.grid_w;
    int32_t *want = malloc(cells * sizeof *want), *got = malloc(cells * sizeof *got);
    zp_set_num_threads(2);
    run_session(m, n, prefix, want);
    pthread_t th;
    toggling = 1;
    pthread_create(&th, NULL, toggle_threads, NULL);
    int runs = 12, same = 0;
    for (int r = 0; r < runs; r++) {
        run_session(m, n, prefix, got);
        same += memcmp(want, got, cells * sizeof *got) == 0;
    }
    __atomic_store_n(&toggling, 0, __ATOMIC_RELAXED);
    pthread_join(th, NULL);
    zp_set_num_threads(0);
    CHECK(same == runs, "%d of %d runs with a toggling thread count gave different tokens",
          runs - same, runs);
    zp_model_free(m);
    free(prefix);
    free(want);
    free(got);
    free((void *)L.attention_norm);
    free((void *)L.wqkv);
    free((void *)L.wo);
    free((void *)L.ffn_norm);
    free((void *)L.w1);
    free((void *)L.w3);
    free((void *)L.w2);
    free((void *)w.tok_embeddings);
    free((void *)w.norm);
    free((void *)w.output);
}

int main(void) {
    test_config_limits();
    test_set_num_threads();
    test_thread_race();
    printf("test_limits: %ld checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
