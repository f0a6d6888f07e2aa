/* Helper of benchmarks/box_env.py: N times vfork+exec of PROG and waitpid,
   then "p50_ns p90_ns" on one line.  Run once on the host and once inside a
   box (sandboxd run --lang c box_env.c N PROG), it times what a box's
   environment alone (namespaces, read-only rootfs, seccomp, cgroups, rlimits,
   uid) adds to a program's start and exit, without the agent or the daemon. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char stack[64 * 1024] __attribute__((aligned(16)));
static char *prog_argv[2];

static int child(void *arg) {
    (void)arg;
    char *envp[] = {NULL};
    execve(prog_argv[0], prog_argv, envp);
    _exit(127);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: box_env N PROG\n");
        return 2;
    }
    long n = atol(argv[1]);
    prog_argv[0] = argv[2];
    long long *xs = malloc(sizeof *xs * (size_t)n);
    if (n < 1 || !xs) return 2;
    for (long i = 0; i < n; i++) {
        long long t = now_ns();
        pid_t pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || st != 0) {
            fprintf(stderr, "box_env: run %ld failed (status %d)\n", i, st);
            return 1;
        }
        xs[i] = now_ns() - t;
    }
    qsort(xs, (size_t)n, sizeof *xs, cmp);
    printf("%lld %lld\n", xs[n / 2], xs[n * 9 / 10]);
    return 0;
}
