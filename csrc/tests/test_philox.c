/* test_philox.c -- zp_philox4x32_10 against Random123's known-answer vectors (tests/kat_philox.txt)
 * and the definition of zp_uniform (53 bits of the first two output words).
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../zipar.h"

#ifndef KAT_FILE
#define KAT_FILE "../../tests/kat_philox.txt"
#endif

int main(void) {
    FILE *f = fopen(KAT_FILE, "r");
    if (!f) {
        fprintf(stderr, "FAIL: cannot open %s\n", KAT_FILE);
        return 1;
    }
    char line[512];
    int n = 0, failures = 0;
    while (fgets(line, sizeof line, f)) {
        char name[32];
        unsigned rounds, w[10];
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "%31s %u %x %x %x %x %x %x %x %x %x %x", name, &rounds, &w[0], &w[1],
                   &w[2], &w[3], &w[4], &w[5], &w[6], &w[7], &w[8], &w[9]) != 12 ||
            strcmp(name, "philox4x32") || rounds != 10) {
            fprintf(stderr, "FAIL: cannot read line: %s", line);
            failures++;
            continue;
        }
        uint32_t ctr[4] = {w[0], w[1], w[2], w[3]}, key[2] = {w[4], w[5]}, out[4];
        zp_philox4x32_10(ctr, key, out);
        n++;
        if (out[0] != w[6] || out[1] != w[7] || out[2] != w[8] || out[3] != w[9]) {
            fprintf(stderr, "FAIL: philox4x32_10 vector %d: got %08x %08x %08x %08x\n", n, out[0],
                    out[1], out[2], out[3]);
            failures++;
        }
    }
    fclose(f);
    if (n < 10) {
        fprintf(stderr, "FAIL: only %d vectors read\n", n);
        failures++;
    }
    /* zp_uniform: counter (draw, pos, sample_id, 0), key = the seed's low and high halves; the
     * top 27 bits of out[0] and top 26 of out[1] make 53 bits scaled to [0, 1) */
    uint64_t seed = 0x0123456789abcdefull;
    uint32_t ctr[4] = {7, 11, 3, 0}, key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, out[4];
    zp_philox4x32_10(ctr, key, out);
    double u = zp_uniform(seed, 3, 11, 7);
    double want = ((double)(out[0] >> 5) * 67108864.0 + (double)(out[1] >> 6)) / 9007199254740992.0;
    if (u != want || !(u >= 0.0 && u < 1.0)) {
        fprintf(stderr, "FAIL: zp_uniform = %.17g, expected %.17g\n", u, want);
        failures++;
    }
    printf("philox4x32_10: %d known-answer vectors, %s\n", n, failures ? "FAILED" : "all equal");
    return failures != 0;
}
