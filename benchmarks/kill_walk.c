/* What the agent's kill(-1) costs against the number of processes on the
   host: the kernel walks every process of the host to find those of the
   caller's pid namespace (for_each_process), so a kill(-1) in an empty box
   costs more on a host with many processes.  The agent skips it when the
   worker has no child left (agent.c kill_all_and_reap, issue 18).

   For each N given, N idle processes are started on the host (children of
   this program, paused, killed at the end), then a process alone in a new
   pid namespace times 20,000 kill(-1, SIGKILL) (each ESRCH: nobody to kill).

     gcc -O2 -o /tmp/kill_walk benchmarks/kill_walk.c && /tmp/kill_walk 0 500 2000   # as root */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CALLS 20000
#define MAX_IDLE 5000

static pid_t idle[MAX_IDLE];
static int nidle;

static int host_processes(void) {
    FILE *f = popen("ls /proc | grep -c '^[0-9]'", "r");
    int n = -1;
    if (f && fscanf(f, "%d", &n) != 1) n = -1;
    if (f) pclose(f);
    return n;
}

static double kill_walk_us(void) {
    int fds[2];
    if (pipe(fds) < 0) exit(1);
    pid_t p = fork();
    if (p == 0) {
        if (unshare(CLONE_NEWPID) < 0) _exit(2);
        pid_t q = fork(); /* pid 1 of the new namespace, alone in it */
        if (q == 0) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (int i = 0; i < CALLS; i++) kill(-1, SIGKILL);
            clock_gettime(CLOCK_MONOTONIC, &b);
            double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / CALLS / 1000.0;
            if (write(fds[1], &us, sizeof us) != sizeof us) _exit(3);
            _exit(0);
        }
        waitpid(q, NULL, 0);
        _exit(0);
    }
    double us = -1;
    if (read(fds[0], &us, sizeof us) != sizeof us) us = -1;
    waitpid(p, NULL, 0);
    close(fds[0]);
    close(fds[1]);
    return us;
}

int main(int argc, char **argv) {
    double base = -1;
    for (int a = 1; a < argc; a++) {
        int want = atoi(argv[a]);
        if (want > MAX_IDLE) want = MAX_IDLE;
        while (nidle < want) {
            pid_t p = fork();
            if (p == 0) {
                pause();
                _exit(0);
            }
            if (p < 0) break;
            idle[nidle++] = p;
        }
        usleep(200000);
        double us = kill_walk_us();
        if (base < 0) base = us;
        printf("%d idle started, %d processes on the host: kill(-1) in an empty pid namespace %.2f us (%.1fx the first)\n",
               nidle, host_processes(), us, us / base);
    }
    for (int i = 0; i < nidle; i++) kill(idle[i], SIGKILL);
    while (wait(NULL) > 0) {
    }
    return 0;
}
