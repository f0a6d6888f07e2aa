/* The floor of sandboxd's process layout (benchmarks/floor.py, issue 18): an
   agent that does only what sandboxd's agent must do for a run and nothing
   for isolation.  On the fd its argument names (a SOCK_SEQPACKET socket) it takes a message with
   three fds (stdin, stdout, stderr) and a NUL-terminated path, starts the
   path by vfork + exec with those fds, waits for it as the real agent does
   (poll on a signalfd, then wait4), and replies with 16 bytes: the wait
   status and the wall time in ns.  No namespaces, cgroups, seccomp, rlimits,
   uid change, reset or accounting: what a run costs beyond this is
   sandboxd's own work.

   gcc -O2 -o /tmp/floor_agent benchmarks/floor_agent.c   (floor.py builds it) */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char stack[64 * 1024] __attribute__((aligned(16)));
static char path[4096];
static int fds[3];

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int child(void *arg) {
    (void)arg;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0) _exit(126);
    char *argv[] = {path, NULL};
    char *envp[] = {NULL};
    execve(path, argv, envp);
    _exit(127);
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    int sock = atoi(argv[1]);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0) return 1;
    for (;;) {
        char cbuf[CMSG_SPACE(3 * sizeof(int))];
        struct iovec iov = {path, sizeof path - 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0) return 0;
        path[n] = 0;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        if (c == NULL || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(3 * sizeof(int))) return 2;
        memcpy(fds, CMSG_DATA(c), sizeof fds);
        uint64_t t0 = now_ns();
        pid_t pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
        for (int i = 0; i < 3; i++) close(fds[i]);
        int status = 0;
        while (pid > 0) {
            struct pollfd p = {sigfd, POLLIN, 0};
            poll(&p, 1, -1);
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) > 0) {
            }
            if (waitpid(pid, &status, WNOHANG) == pid) break;
        }
        uint64_t reply[2] = {(uint64_t)(pid > 0 ? status : -1), now_ns() - t0};
        if (send(sock, reply, sizeof reply, MSG_NOSIGNAL) != (ssize_t)sizeof reply) return 3;
    }
}
