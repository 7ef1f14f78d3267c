/* x509decode: d2i_X509 throughput of one certificate, from THREADS threads at
 * once, with or without tls/keymeth.c's built-in key methods.
 *
 *   x509decode CERT.pem builtin|providers THREADS N
 *
 * Each thread decodes (and frees) the certificate N times. The built-in key
 * methods are process-wide once installed, so each setting is its own run.
 * One JSON line: {"mode":..,"threads":T,"decodes_per_s":R,"us_per_decode":U}
 * where U is per decode on one thread (wall time x threads / decodes). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "tls/tls.h"

static unsigned char *der;
static int der_len;
static long per_thread;
static volatile int failed;

static void *decode_loop(void *arg)
{
    (void)arg;
    for (long i = 0; i < per_thread; i++) {
        const unsigned char *p = der;
        X509 *x = d2i_X509(NULL, &p, der_len);
        if (x == NULL)
            failed = 1;
        X509_free(x);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[2], "builtin") != 0 && strcmp(argv[2], "providers") != 0)) {
        fprintf(stderr, "usage: x509decode CERT.pem builtin|providers THREADS N\n");
        return 2;
    }
    int threads = atoi(argv[3]);
    per_thread = atol(argv[4]);
    if (threads < 1 || threads > 64 || per_thread < 1) {
        fprintf(stderr, "x509decode: THREADS must be 1..64 and N at least 1\n");
        return 2;
    }
    if (strcmp(argv[2], "builtin") == 0 && tls_builtin_key_methods() != 1) {
        fprintf(stderr, "x509decode: the built-in key methods are not available here\n");
        return 1;
    }
    FILE *f = fopen(argv[1], "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    der_len = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (der_len <= 0) {
        fprintf(stderr, "x509decode: %s: no PEM certificate\n", argv[1]);
        return 1;
    }

    pthread_t th[64];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&th[i], NULL, decode_loop, NULL) != 0) {
            fprintf(stderr, "x509decode: cannot start a thread\n");
            return 1;
        }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (failed) {
        fprintf(stderr, "x509decode: a decode failed\n");
        return 1;
    }
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    double total = (double)threads * (double)per_thread;
    printf("{\"mode\":\"%s\",\"threads\":%d,\"decodes_per_s\":%.0f,\"us_per_decode\":%.1f}\n",
           argv[2], threads, total / s, s * 1e6 * threads / total);
    OPENSSL_free(der);
    return 0;
}
