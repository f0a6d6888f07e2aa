/* What a run's child costs between clone and exec on cgroup v1 (issue 18).

   The agent's child (sandboxd/sandbox/agent/agent.c, child_exec) joins the
   box's three v1 groups by writing "0" to each `tasks` file, then sets up
   its session, stdio, rlimits, uid and no_new_privs before it execs.  This
   times, on the host, vfork (CLONE_VM|CLONE_VFORK, as the agent) + exec of
   /bin/true + waitpid with: 0 nothing else, 1 the three joins, 2 the rest of
   the setup, 3 both.  Modes interleave within each round, so the machine's
   drift falls on all four.  It makes its own groups (sandboxd-child-setup-PID
   under memory, pids and cpuacct) and removes them at the end.

       gcc -O2 -o /tmp/child_setup benchmarks/child_setup.c
       /tmp/child_setup [runs per mode and round, default 3000] [rounds, default 2]
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *CONTROLLERS[3] = {"memory", "pids", "cpuacct"};
static char dirs[3][256];
static int mode, join[3], made[3];
static char stack[64 * 1024] __attribute__((aligned(16)));

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void setup(void) {
    /* The agent's sequence, with values a run would have. */
    struct rlimit rl = {0, 0};
    setsid();
    for (int i = 0; i < 3; i++) {
        int f = fcntl(i, F_DUPFD_CLOEXEC, 20);
        if (f >= 0) dup2(f, i);
    }
    syscall(SYS_close_range, 3, ~0U, 0);
    if (chdir("/tmp") < 0) _exit(98);
    setrlimit(RLIMIT_CORE, &rl);
    setrlimit(RLIMIT_MEMLOCK, &rl);
    rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
    setrlimit(RLIMIT_FSIZE, &rl);
    setrlimit(RLIMIT_STACK, &rl);
    setrlimit(RLIMIT_AS, &rl);
    rl.rlim_cur = rl.rlim_max = 1024;
    setrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = 10;
    rl.rlim_max = 11;
    setrlimit(RLIMIT_CPU, &rl);
    if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0) _exit(97);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

static int child(void *arg) {
    (void)arg;
    if (mode & 1)
        for (int i = 0; i < 3; i++)
            if (write(join[i], "0\n", 2) != 2) _exit(99);
    if (mode & 2) setup();
    char *argv[] = {"/bin/true", NULL};
    execv(argv[0], argv);
    _exit(127);
}

static double timed(int n) {
    double t = now_us();
    for (int i = 0; i < n; i++) {
        int st;
        pid_t p = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
        if (p < 0 || waitpid(p, &st, 0) != p || st != 0) {
            fprintf(stderr, "mode %d: a child failed (status %d)\n", mode, st);
            return -1;
        }
    }
    return (now_us() - t) / n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3000, rounds = argc > 2 ? atoi(argv[2]) : 2, rc = 0;
    double sum[4] = {0};
    for (int i = 0; i < 3; i++) {
        char f[300];
        snprintf(dirs[i], sizeof dirs[i], "/sys/fs/cgroup/%s/sandboxd-child-setup-%d", CONTROLLERS[i], getpid());
        if (mkdir(dirs[i], 0700) < 0) {
            fprintf(stderr, "%s: %s (a cgroup v1 host, as root)\n", dirs[i], strerror(errno));
            rc = 2;
            goto out;
        }
        made[i] = 1;
        snprintf(f, sizeof f, "%s/tasks", dirs[i]);
        join[i] = open(f, O_WRONLY | O_CLOEXEC);
        if (join[i] < 0) {
            perror(f);
            rc = 2;
            goto out;
        }
    }
    for (int r = 0; r < rounds; r++)
        for (mode = 0; mode < 4; mode++) {
            double us = timed(n);
            if (us < 0) {
                rc = 1;
                goto out;
            }
            sum[mode] += us;
        }
    printf("vfork + exec /bin/true + waitpid, mean of %d x %d per mode:\n", rounds, n);
    printf("  nothing else     %7.1f us\n", sum[0] / rounds);
    printf("  3 v1 joins       %7.1f us (+%.1f)\n", sum[1] / rounds, (sum[1] - sum[0]) / rounds);
    printf("  the rest         %7.1f us (+%.1f)\n", sum[2] / rounds, (sum[2] - sum[0]) / rounds);
    printf("  both, as a run   %7.1f us (+%.1f)\n", sum[3] / rounds, (sum[3] - sum[0]) / rounds);
out:
    for (int i = 0; i < 3; i++)
        if (made[i]) rmdir(dirs[i]); /* (its children are reaped: the groups are empty) */
    return rc;
}
