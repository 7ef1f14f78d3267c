/* tests/fuzz: what every harness shares. Each harness file defines
 * LLVMFuzzerTestOneInput; it is linked with libFuzzer (CERTMAPD_FUZZ, clang)
 * or with replay.c, which feeds it the files of a corpus or regression
 * directory in the normal build (ctest). */
#ifndef CM_FUZZ_H
#define CM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant: the message, then abort (libFuzzer keeps the input). */
#define fuzz_assert(cond, ...)                                                                   \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz invariant broken: " __VA_ARGS__);                              \
            fprintf(stderr, "\n");                                                               \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

/* Writes <size> bytes of <data> to a per-process temporary file and returns its
 * path (static storage, rewritten on every call); NULL on failure. */
const char *fuzz_temp_file(const char *tag, const uint8_t *data, size_t size);

#endif
