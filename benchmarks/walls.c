/* Helper of benchmarks/walls.py: issue 13's per-run walls, each timed alone,
   doing what sandboxd/sandbox/agent/agent.c does for it (its two filters and
   arch constants come from agent.c at build time, see walls.py; the steps
   are written again here: keep them in step).

   walls steps N
       In a new net + pid + IPC namespace, as a box's worker is: N times each
       of the between-runs steps, and prints "name median_ns" per step.
   walls run POLICY WATCH GUARD PROG ARGS...
       Loads POLICY (a file of BPF, or "-" for none), then the worker's
       socket-watch filter when WATCH is 1; then for each number K read from
       stdin, K times vfork+exec PROG and waitpid, the child loading the
       clone3 guard first when GUARD is 1 (the agent's cgroup v2 mode), and
       prints those K runs' ns on one line.
   walls cgreads N CG PROG ARGS...
       Joins cgroup v1 memory group CG, runs PROG N times, and after each
       run times the daemon's reads of CG's files; prints their medians. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* NATIVE_ARCH, X32_BIT: from agent.c too (see AGENT_WATCH_INSNS below). */

static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static long long median(long long *xs, long n) {
    qsort(xs, (size_t)n, sizeof xs[0], cmp_ll);
    return xs[n / 2];
}

/* ---- between runs ---- */

static int net_fds[2], sockstat_fd;
static char net_clean[1 << 14], net_now[1 << 14];
static size_t net_clean_len;

static size_t read_net_state(char *buf, size_t cap) {
    size_t len = 0;
    for (int i = 0; i < 2 && len < cap; i++) {
        ssize_t n = pread(net_fds[i], buf + len, cap - len, 0);
        if (n > 0) len += (size_t)n;
    }
    return len;
}

static void step_net_check(void) { /* lead3's net_dirty(): dev + unix */
    size_t n = read_net_state(net_now, sizeof net_now);
    if (n != net_clean_len || memcmp(net_now, net_clean, n) != 0) exit(3);
}

static char scratch[1 << 14];
static void step_net_dev(void) { /* the check's first pread alone */
    if (pread(net_fds[0], scratch, sizeof scratch, 0) <= 0) exit(3);
}
static void step_net_unix(void) { /* the check's second pread alone */
    if (pread(net_fds[1], scratch, sizeof scratch, 0) <= 0) exit(3);
}

static void step_net_sockstat(void) { /* what the agent reads instead of /proc/net/unix */
    if (pread(sockstat_fd, scratch, sizeof scratch, 0) <= 0) exit(3);
}

static int last_pid_fd;
static void step_last_pid(void) { /* agent: set_last_pid(RUN_FIRST_PID - 1) */
    if (pwrite(last_pid_fd, "9", 1, 0) != 1) exit(4);
}

static void step_sysv_info(void) { /* agent: sysv_in_use() */
    struct shm_info shm;
    struct msginfo msg;
    struct seminfo sem;
    if (shmctl(0, SHM_INFO, (struct shmid_ds *)&shm) < 0 || msgctl(0, MSG_INFO, (struct msqid_ds *)&msg) < 0 ||
        semctl(0, 0, SEM_INFO, &sem) < 0)
        exit(5);
}

static void step_sysv_listing(void) { /* 9a299e5's remove_sysv(): the three listings read every reset */
    const char *files[] = {"/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"};
    char line[512];
    for (int k = 0; k < 3; k++) {
        FILE *f = fopen(files[k], "re");
        if (!f) exit(6);
        while (fgets(line, sizeof line, f)) {
        }
        fclose(f);
    }
}

static int load(struct sock_filter *f, unsigned short len, unsigned flags);
static struct sock_filter guard[4];
static void step_guard_load(void) { /* agent (cgroup v2 mode): each run's child loads the clone3 guard */
    if (load(guard, 4, 0) < 0) exit(7);
}

static void time_step(const char *name, void (*fn)(void), long n, long long *xs) {
    for (long i = 0; i < n; i++) {
        long long t0 = now();
        fn();
        xs[i] = now() - t0;
    }
    printf("%s %lld\n", name, median(xs, n));
}

static int steps(long n) {
    if (unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC) < 0) return 2;
    pid_t pid = fork(); /* pid 1 of the new pid namespace: ns_last_pid is its */
    if (pid < 0) return 2;
    if (pid > 0) {
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    const char *net[] = {"/proc/thread-self/net/dev", "/proc/thread-self/net/unix"};
    for (int i = 0; i < 2; i++)
        if ((net_fds[i] = open(net[i], O_RDONLY | O_CLOEXEC)) < 0) _exit(2);
    if ((sockstat_fd = open("/proc/thread-self/net/sockstat", O_RDONLY | O_CLOEXEC)) < 0) _exit(2);
    net_clean_len = read_net_state(net_clean, sizeof net_clean);
    if ((last_pid_fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC)) < 0) _exit(2);
    long long *xs = malloc((size_t)n * sizeof *xs);
    if (!xs) _exit(2);
    time_step("netns check, lead3 (dev + unix, memcmp)", step_net_check, n, xs);
    time_step("  pread /proc/net/dev", step_net_dev, n, xs);
    time_step("  pread /proc/net/unix (lead3)", step_net_unix, n, xs);
    time_step("  pread /proc/net/sockstat (now, for unix)", step_net_sockstat, n, xs);
    time_step("pid numbering: pwrite ns_last_pid", step_last_pid, n, xs);
    time_step("SysV check: 3 *_INFO calls", step_sysv_info, n, xs);
    time_step("9a299e5 SysV: 3 /proc/sysvipc listings", step_sysv_listing, n, xs);
    /* Last: the filters stack up in this process (1000 of 4 instructions stay
       far below the kernel's 32768 per path). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) _exit(2);
    time_step("v2 run: the child loads the clone3 guard (seccomp(), 4 insns)", step_guard_load, n < 1000 ? n : 1000, xs);
    fflush(stdout);
    _exit(0);
}

/* ---- runs ---- */

static int load(struct sock_filter *f, unsigned short len, unsigned flags) {
    struct sock_fprog p = {len, f};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

/* The agent's own two filters, taken from agent.c by walls.py at build time
   (-include of a header it writes: AGENT_WATCH_INSNS, AGENT_GUARD_INSNS),
   so what is timed is what the agent loads. */
static struct sock_filter watch[] = {AGENT_WATCH_INSNS};
static struct sock_filter guard[4] = {AGENT_GUARD_INSNS};

/* Its own frame: nothing of the caller's lives across the vfork. */
static __attribute__((noinline)) long long one_run(int devnull, int with_guard, char **argv) {
    long long t0 = now();
    pid_t pid = vfork();
    if (pid == 0) {
        dup2(devnull, 0), dup2(devnull, 1), dup2(devnull, 2);
        if (with_guard && load(guard, sizeof guard / sizeof guard[0], 0) < 0) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    return now() - t0;
}

static int runs(const char *policy, int with_watch, int with_guard, char **argv) {
    static struct sock_filter prog[8192];
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return 2;
    if (strcmp(policy, "-") != 0) {
        FILE *f = fopen(policy, "rb");
        if (!f) return 2;
        size_t len = fread(prog, sizeof prog[0], 8192, f);
        fclose(f);
        if (load(prog, (unsigned short)len, 0) < 0) return 2;
    }
    /* The listener's fd is never read: the programs timed open no IP socket. */
    if (with_watch && load(watch, sizeof watch / sizeof watch[0], SECCOMP_FILTER_FLAG_NEW_LISTENER) < 0) return 2;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    long k;
    /* One block per line read ("K\n"): the driver interleaves the variants'
       blocks, each variant a process of its own (a filter cannot be unloaded). */
    while (scanf("%ld", &k) == 1) {
        for (long i = 0; i < k; i++) {
            long long ns = one_run(devnull, with_guard, argv);
            if (ns < 0) return 3;
            printf("%lld ", ns);
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}

/* After each of N runs of PROG in cgroup v1 memory group CG (we join it
   first): the reads the daemon makes then, each timed. */
static int cgreads(long n, const char *cg, char **argv) {
    static const char *files[] = {"memory.numa_stat", "memory.max_usage_in_bytes", "memory.oom_control"};
    char path[512];
    int fds[3];
    snprintf(path, sizeof path, "%s/cgroup.procs", cg);
    FILE *procs = fopen(path, "w");
    if (!procs || fprintf(procs, "%d\n", getpid()) < 0 || fclose(procs) != 0) return 2;
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", cg, files[i]);
        if ((fds[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 2;
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    long long *xs = malloc((size_t)(3 * n) * sizeof *xs);
    if (!xs) return 2;
    for (long r = 0; r < n; r++) {
        if (one_run(devnull, 0, argv) < 0) return 3;
        for (int i = 0; i < 3; i++) {
            long long t0 = now();
            if (pread(fds[i], scratch, sizeof scratch, 0) <= 0) return 3;
            xs[i * n + r] = now() - t0;
        }
    }
    for (int i = 0; i < 3; i++) printf("cgroup v1, after a run: pread %s %lld\n", files[i], median(xs + i * n, n));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "steps") == 0) return steps(atol(argv[2]));
    if (argc >= 5 && strcmp(argv[1], "cgreads") == 0) return cgreads(atol(argv[2]), argv[3], argv + 4);
    if (argc >= 6 && strcmp(argv[1], "run") == 0) return runs(argv[2], atoi(argv[3]), atoi(argv[4]), argv + 5);
    fprintf(stderr, "usage: walls steps N | walls run POLICY WATCH GUARD PROG ARGS... (block sizes on stdin)\n");
    return 2;
}
