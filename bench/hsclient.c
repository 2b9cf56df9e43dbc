/* Full TLS handshakes as fast as a few processes can make them, for `bench/handshakes.py`.
 *
 *   hsclient HOST PORT SECONDS PROCS NAMES_FILE [CHECK_EVERY]
 *
 * Each process loops until SECONDS have passed: new TCP connection, TLS handshake with an SNI drawn at random from
 * NAMES_FILE (one name per line), close. No session cache and no tickets on our side, so every handshake is a full
 * one. Every CHECK_EVERY-th handshake the served leaf must name the SNI (X509_check_host); a leaf that does not is
 * counted as a mismatch. Prints one JSON line with the totals of all processes.
 *
 * C rather than Python: a Python client spends several times HAProxy's CPU per handshake and would measure itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct totals {
    long handshakes, failures, checked, mismatches;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char **read_names(const char *path, long *count) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    long cap = 1024, n = 0;
    char **names = malloc(cap * sizeof *names);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (n == cap) names = realloc(names, (cap *= 2) * sizeof *names);
        names[n++] = strdup(line);
    }
    fclose(f);
    if (n == 0) { fprintf(stderr, "%s: no names\n", path); exit(2); }
    *count = n;
    return names;
}

static void worker(struct sockaddr_in *addr, double deadline, char **names, long n_names, long check_every,
                   unsigned seed, struct totals *out) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    srand(seed);
    struct totals t = {0, 0, 0, 0};
    while (now_s() < deadline) {
        const char *name = names[(long)(((double)rand() / ((double)RAND_MAX + 1)) * n_names)];
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)addr, sizeof *addr) != 0) {
            t.failures++;
            close(fd);
            usleep(1000);
            continue;
        }
        SSL *ssl = SSL_new(ctx);
        SSL_set_tlsext_host_name(ssl, name);
        SSL_set_fd(ssl, fd);
        if (SSL_connect(ssl) == 1) {
            t.handshakes++;
            if (check_every > 0 && t.handshakes % check_every == 0) {
                X509 *leaf = SSL_get1_peer_certificate(ssl);
                t.checked++;
                if (!leaf || X509_check_host(leaf, name, 0, 0, NULL) != 1) t.mismatches++;
                X509_free(leaf);
            }
            SSL_shutdown(ssl);  /* close_notify, not waiting for the peer's */
        } else {
            t.failures++;
            ERR_clear_error();
        }
        SSL_free(ssl);
        close(fd);
    }
    SSL_CTX_free(ctx);
    *out = t;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT SECONDS PROCS NAMES_FILE [CHECK_EVERY]\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", argv[1]); return 2; }
    double seconds = atof(argv[3]);
    int procs = atoi(argv[4]);
    long n_names;
    char **names = read_names(argv[5], &n_names);
    long check_every = argc > 6 ? atol(argv[6]) : 100;
    if (seconds <= 0 || seconds > 600 || procs < 1 || procs > 64) { fprintf(stderr, "bad arguments\n"); return 2; }

    struct totals *shared = mmap(NULL, procs * sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                 -1, 0);
    memset(shared, 0, procs * sizeof *shared);
    double start = now_s(), deadline = start + seconds;
    for (int i = 0; i < procs; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            worker(&addr, deadline, names, n_names, check_every, 7919u * (i + 1), &shared[i]);
            _exit(0);
        }
        if (pid < 0) { perror("fork"); return 1; }
    }
    int status, bad = 0;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) bad++;
    double elapsed = now_s() - start;
    struct totals sum = {0, 0, 0, 0};
    for (int i = 0; i < procs; i++) {
        sum.handshakes += shared[i].handshakes;
        sum.failures += shared[i].failures;
        sum.checked += shared[i].checked;
        sum.mismatches += shared[i].mismatches;
    }
    printf("{\"handshakes\": %ld, \"failures\": %ld, \"checked\": %ld, \"mismatches\": %ld, \"elapsed_s\": %.3f, "
           "\"crashed_workers\": %d}\n", sum.handshakes, sum.failures, sum.checked, sum.mismatches, elapsed, bad);
    return bad ? 1 : 0;
}
