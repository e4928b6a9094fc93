/* check.h -- the C tests' one assertion: CHECK(cond, printf-style message) counts a check, and
 * a failure (the first 20 printed to stderr with file and line); a test's main reports `checks`
 * and `failures` and returns failures != 0. Included once per test program. */
#ifndef ZP_TESTS_CHECK_H
#define ZP_TESTS_CHECK_H

#include <stdio.h>

static int failures = 0;
static long checks = 0;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            if (failures < 20) {                                                                   \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fprintf(stderr, "\n");                                                             \
            }                                                                                      \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#endif
