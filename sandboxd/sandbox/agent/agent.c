/*
 * sandboxd agent: PID 1 of one warm box.
 *
 * Why C and not Python: the agent lives for the whole life of a warm box and
 * sits on every run's critical path.  A static C binary builds a box in a few
 * milliseconds (no interpreter start), costs ~100 KB of unique memory per idle
 * box, and adds only a fork+exec to a run.  It is deliberately dumb: all policy
 * (limits, seccomp program, mount list, cgroup files) is decided by the Python
 * daemon and handed over in messages; the agent only applies it.
 *
 * Wire protocol: one SOCK_SEQPACKET socket (fd 3), one message per packet,
 * native-endian fixed header followed by a payload; file descriptors travel as
 * SCM_RIGHTS.  The layout is mirrored in sandboxd/sandbox/agentproto.py - keep the two
 * in step.
 *
 * Process layout: the daemon execs this binary ("outer"); outer unshares the
 * namespaces and forks "inner", which is PID 1 of the new pid namespace and
 * builds the box; inner forks the "worker", which serves the daemon (see
 * "workers" below).  Outer only waits for inner and mirrors its exit, so the
 * daemon can reap it; both die with their parent (PR_SET_PDEATHSIG), and when
 * inner dies the kernel kills everything in the box.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <grp.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <linux/limits.h>
#include <time.h>
#include <limits.h>
#include <unistd.h>

static int SOCK_FD = 3; /* argv[2] */
#define MAX_MSG (1 << 20)
#define MAX_FDS 16

enum {
    MSG_CONFIG = 1,
    MSG_RUN = 2,
    MSG_RESET = 3,
    MSG_KILL = 4,
    MSG_SIGNAL = 5, /* u32 type, u32 signo: to every process of the run (live sessions) */
    MSG_READY = 100,
    MSG_RESULT = 101,
    MSG_ERROR = 102,
};

/* RESULT flags */
enum {
    R_CPU_LIMIT = 1,
    R_WALL_LIMIT = 2,
    R_CANCELLED = 4,
    R_EXEC_FAILED = 8,
    R_LEFTOVERS = 16,
    R_SETUP_FAILED = 32,
    R_RESET_DONE = 64, /* F_RESET_AFTER: the box is reset; a new /box fd, if any, rides along */
    R_BORN_IN_CGROUP = 128, /* F_INTO_CGROUP: clone3(CLONE_INTO_CGROUP) placed the run, no migration */
};

/* RUN flags */
enum {
    F_HAS_CPU_FD = 1,
    F_RESET_AFTER = 2, /* reset the box before replying: the daemon need not send RESET */
    F_INTO_CGROUP = 4, /* the one join fd is the run's cgroup v2 directory, not its cgroup.procs */
    F_RESET_BEHIND = 8, /* reset right after sending RESULT, as on a RESET: the daemon sends none, awaits READY */
};

/* CONFIG flags */
enum {
    C_GUARD_CLONE3 = 1, /* the worker's program allows clone3: each run gets a filter making it ENOSYS */
};

struct config_hdr {
    uint32_t type;
    uint32_t uid;
    uint32_t gid;
    uint32_t seccomp_len; /* bytes of struct sock_filter[] */
    uint64_t box_bytes;
    uint64_t tmp_bytes;
    uint64_t shm_bytes;
    uint32_t flags;
    uint32_t pad;
    /* then: seccomp program, then NUL-separated strings:
       newroot, hostname, then ops until the end of the message */
};

struct run_hdr {
    uint32_t type;
    uint32_t flags;
    uint64_t cpu_ns;  /* 0 = unlimited */
    uint64_t wall_ns; /* 0 = unlimited */
    uint64_t rl_fsize;
    uint64_t rl_stack;
    uint64_t rl_nofile;
    uint64_t rl_as; /* 0 = unlimited */
    uint32_t argc;
    uint32_t envc;
    /* then NUL-separated: cwd, argv[argc], envp[envc] */
};

struct result_msg {
    uint32_t type;
    uint32_t flags;
    int32_t wstatus;
    int32_t err; /* errno of a failed exec/setup step */
    uint64_t cpu_ns;
    uint64_t wall_ns;
    uint64_t maxrss_kb;
};

static struct sock_fprog seccomp_prog;
static int guard_clone3;
static int clone_into; /* runs are placed by clone3_into (decided once, at start: clone3_probe) */
static uint32_t box_uid, box_gid;
static uint64_t box_bytes, tmp_bytes, shm_bytes;
static long ncpu = 1;
static int sigfd = -1;
static char *msgbuf;

static void die(const char *fmt, ...) {
    int saved = errno;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n >= (int)sizeof buf) n = sizeof buf - 1;
    char out[600];
    uint32_t t = MSG_ERROR;
    memcpy(out, &t, 4);
    int m = snprintf(out + 4, sizeof out - 4, "%s: %s", buf, strerror(saved));
    send(SOCK_FD, out, 4 + (size_t)m, MSG_NOSIGNAL);
    _exit(111);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static ssize_t recv_msg(int *fds, int *nfds) {
    struct iovec iov = {msgbuf, MAX_MSG};
    char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = 0;
    do {
        n = recvmsg(SOCK_FD, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds + *nfds, CMSG_DATA(c), sizeof(int) * (size_t)k);
            *nfds += k;
        }
    }
    if (n >= 0 && (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int i = 0; i < *nfds; i++) close(fds[i]);
        *nfds = 0;
        errno = EMSGSIZE;
        return -2;
    }
    return n;
}

static void send_with_fd(const void *buf, size_t len, int fd) {
    struct iovec iov = {(void *)buf, len};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (fd >= 0) {
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof cbuf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    if (sendmsg(SOCK_FD, &mh, MSG_NOSIGNAL) < 0) _exit(112); /* daemon gone */
}

static void send_error(const char *what, int err) {
    char out[600];
    uint32_t t = MSG_ERROR;
    memcpy(out, &t, 4);
    int m = snprintf(out + 4, sizeof out - 4, "%s: %s", what, strerror(err));
    send_with_fd(out, 4 + (size_t)m, -1);
}

/* ---- mounts ------------------------------------------------------------ */

static void set_attr_recursive(const char *path, uint64_t attrs) {
    struct mount_attr a = {.attr_set = attrs};
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &a, sizeof a) == 0)
        return;
    /* Kernels before 5.12: remount the top mount only. */
    unsigned long fl = MS_BIND | MS_REMOUNT;
    if (attrs & MOUNT_ATTR_RDONLY) fl |= MS_RDONLY;
    if (attrs & MOUNT_ATTR_NOSUID) fl |= MS_NOSUID;
    if (attrs & MOUNT_ATTR_NODEV) fl |= MS_NODEV;
    if (attrs & MOUNT_ATTR_NOEXEC) fl |= MS_NOEXEC;
    if (mount(NULL, path, NULL, fl, NULL) < 0) die("remount %s", path);
}

static void make_target(const char *src, const char *dst) {
    struct stat st;
    if (stat(src, &st) < 0) die("stat %s", src);
    if (S_ISDIR(st.st_mode)) {
        if (mkdir(dst, 0755) < 0 && errno != EEXIST) die("mkdir %s", dst);
    } else {
        int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) die("create %s", dst);
        close(fd);
    }
}

static void bind_ro(const char *src, const char *dst, uint64_t extra) {
    make_target(src, dst);
    if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind %s", src);
    set_attr_recursive(dst, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | extra);
}

static void mount_tmpfs(const char *dst, uint64_t bytes, unsigned mode, uint32_t uid,
                        uint32_t gid, unsigned long flags) {
    char opts[128];
    snprintf(opts, sizeof opts, "size=%llu,mode=%o,uid=%u,gid=%u,nr_inodes=%llu",
             (unsigned long long)bytes, mode, uid, gid,
             (unsigned long long)(bytes / 4096 + 64));
    if (mount("tmpfs", dst, "tmpfs", flags, opts) < 0) die("tmpfs %s", dst);
}

static void write_file(const char *path, const char *content) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) die("create %s", path);
    size_t len = strlen(content);
    if (write(fd, content, len) != (ssize_t)len) die("write %s", path);
    close(fd);
}

static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST) die("mkdir %s", path);
}

static const unsigned long TMPFS_FLAGS = MS_NOSUID | MS_NODEV;

static const char *WORK_DIRS[] = {"/box", "/tmp", "/dev/shm", "/dev/mqueue"};
#define N_WORK 4

static void mount_work_area(int i) {
    static const unsigned modes[] = {0755, 01777, 01777};
    uint64_t sizes[] = {box_bytes, tmp_bytes, shm_bytes};
    if (i < 3) {
        mount_tmpfs(WORK_DIRS[i], sizes[i], modes[i], i == 0 ? box_uid : 0, i == 0 ? box_gid : 0,
                    TMPFS_FLAGS);
        return;
    }
    /* POSIX message queues of this IPC namespace, visible so we can remove them. */
    if (mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die("mount mqueue");
}

static void mount_work_areas(void) {
    if (mkdir("/dev/mqueue", 01777) < 0) die("mkdir /dev/mqueue");
    for (int i = 0; i < N_WORK; i++) mount_work_area(i);
}

/* Empty a directory in place without recursion and without ever following a
   link: a subdirectory's entries are hoisted to the top level (rename within
   the same tmpfs), then the emptied subdirectory is removed.  Work is linear
   in the number of entries, depth costs nothing, and at most two directory
   fds are open.  Run after every process of the run is dead, as root, on
   the work area's own fd (the caller's: it restores the root through it). */
static int empty_dir(int top) {
    unsigned long seq = 0;
    char buf[1 << 15];
    int again = 1, rc = 0;
    while (again && rc == 0) {
        again = 0;
        if (lseek(top, 0, SEEK_SET) < 0) rc = -1;
        for (;;) {
            long n = syscall(SYS_getdents64, top, buf, sizeof buf);
            if (n <= 0) {
                if (n < 0) rc = -1;
                break;
            }
            for (long off = 0; off < n;) {
                struct dirent64 *d = (struct dirent64 *)(buf + off);
                off += d->d_reclen;
                if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, "..")) continue;
                if (unlinkat(top, d->d_name, 0) == 0) continue;
                if (errno != EISDIR) {
                    rc = -1;
                    continue;
                }
                if (unlinkat(top, d->d_name, AT_REMOVEDIR) == 0) continue;
                int sub = openat(top, d->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0) {
                    rc = -1;
                    continue;
                }
                char sbuf[1 << 14];
                long m;
                while ((m = syscall(SYS_getdents64, sub, sbuf, sizeof sbuf)) > 0) {
                    for (long o2 = 0; o2 < m;) {
                        struct dirent64 *e = (struct dirent64 *)(sbuf + o2);
                        o2 += e->d_reclen;
                        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                        char name[64];
                        for (;;) {
                            snprintf(name, sizeof name, ".sandboxd-reset-%lu", seq++);
                            if (syscall(SYS_renameat2, sub, e->d_name, top, name, RENAME_NOREPLACE) == 0 ||
                                errno != EEXIST)
                                break;
                        }
                    }
                }
                close(sub);
                again = 1; /* hoisted entries land in the top directory */
            }
        }
    }
    return rc;
}

/* SysV IPC objects of the box's IPC namespace (listed in its /proc).  The
   *_INFO calls count them for a syscall each: most runs leave none, and the
   listings cost ~15 us apiece. */
static int sysv_in_use(void) {
    struct shm_info shm;
    struct msginfo msg;
    struct seminfo sem;
    if (shmctl(0, SHM_INFO, (struct shmid_ds *)&shm) < 0 || msgctl(0, MSG_INFO, (struct msqid_ds *)&msg) < 0 ||
        semctl(0, 0, SEM_INFO, &sem) < 0)
        return 1; /* cannot tell: look */
    return shm.used_ids || msg.msgpool || sem.semusz;
}

static void remove_sysv(void) {
    if (!sysv_in_use()) return;
    const char *files[] = {"/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"};
    for (int k = 0; k < 3; k++) {
        FILE *f = fopen(files[k], "re");
        if (!f) continue;
        char line[512];
        int first = 1;
        while (fgets(line, sizeof line, f)) {
            if (first) { /* header */
                first = 0;
                continue;
            }
            int key, id;
            if (sscanf(line, "%d %d", &key, &id) != 2) continue;
            if (k == 0) shmctl(id, IPC_RMID, NULL);
            else if (k == 1) msgctl(id, IPC_RMID, NULL);
            else semctl(id, 0, IPC_RMID);
        }
        fclose(f);
    }
}

/* A run may have changed a work area's root itself (it owns /box): mode,
   owner, xattrs, ACLs (which are xattrs).  Put them back, through an fd.
   The kernel never lists more than XATTR_LIST_MAX (64 KiB) of names at once;
   a job can set more (tmpfs takes them until its inode space is full), and
   then listing fails with E2BIG: the caller replaces the whole work area. */
static char xattr_names[XATTR_LIST_MAX];

static int restore_root(int fd, unsigned mode, uid_t uid, gid_t gid) {
    int rc = 0;
    /* Most runs leave the root as it was: one fstat instead of a chown and a
       chmod every reset (issue 18).  After a chown the chmod always follows:
       the mode is set whatever the chown did to it. */
    struct stat st;
    if (fstat(fd, &st) < 0) return -1;
    if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) < 0) rc = -1;
    if (rc == 0 && (st.st_uid != uid || st.st_gid != gid || (st.st_mode & 07777) != mode) && fchmod(fd, mode) < 0)
        rc = -1;
    ssize_t n = 0;
    while (rc == 0 && (n = flistxattr(fd, xattr_names, sizeof xattr_names)) > 0) {
        for (char *name = xattr_names; name < xattr_names + n; name += strlen(name) + 1)
            if (fremovexattr(fd, name) < 0 && errno != ENODATA) rc = -1;
    }
    if (n < 0 && errno != ENOTSUP) rc = -1;
    return rc;
}

static int priv_call(unsigned char cmd, unsigned char arg);
enum { PRIV_WORKER = 1, PRIV_REMOUNT = 2 };
static int pending_boxfd = -1; /* a new /box fd for the daemon, sent with the next READY */

/* Empty each work area in place (cheap, the common case).  Whatever a job
   left that cannot be undone in place (more xattr names on a root than the
   kernel will list, anything else that fails) costs that area a fresh tmpfs
   instead: a job can make its own next reset slower, never fail. */
static int reset_box(void) {
    int rc = 0;
    for (int i = 0; i < N_WORK; i++) {
        int is_box = i == 0;
        /* One fd for emptying and restoring (issue 18: an open and a close
           fewer per area).  O_NOFOLLOW: the area's root is a mount point
           under a read-only root, never the run's to replace, but no path
           of the run's is followed anyway. */
        int fd = open(WORK_DIRS[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int ok = fd >= 0 && empty_dir(fd) == 0 &&
                 restore_root(fd, is_box ? 0755 : 01777, is_box ? box_uid : 0, is_box ? box_gid : 0) == 0;
        if (fd >= 0) close(fd);
        if (ok) continue;
        int err = priv_call(PRIV_REMOUNT, (unsigned char)i);
        if (err) {
            errno = err;
            rc = -1;
            continue;
        }
        if (is_box) {
            if (pending_boxfd >= 0) close(pending_boxfd);
            pending_boxfd = open("/box", O_PATH | O_DIRECTORY | O_CLOEXEC);
            if (pending_boxfd < 0) rc = -1;
        }
    }
    remove_sysv();
    return rc;
}

/* Kept from before /proc/sys is made read-only (see mask_proc): resets set
   the pid counter through it.  Never inherited by a run. */
static int last_pid_fd = -1;

/* What a program has no need for and the host would give away: kernel
   addresses and internals, other tenants' activity (locks, pressure, disk
   and interrupt counters), the host's boot (cmdline, boot_id), its devices.
   Files are covered with /dev/null, directories with an empty read-only
   tmpfs.  What stays readable is what runtimes read: cpuinfo, meminfo, stat
   (glibc's CPU count falls back to it), loadavg, uptime, version, self/. */
static void mask_proc(void) {
    const char *masked[] = {"/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list",
                            "/proc/sched_debug", "/proc/latency_stats", "/proc/kpagecount",
                            "/proc/kpageflags", "/proc/kpagecgroup", "/proc/sysrq-trigger",
                            "/proc/kallsyms", "/proc/kmsg", "/proc/config.gz", "/proc/cmdline",
                            "/proc/locks", "/proc/diskstats", "/proc/partitions", "/proc/swaps",
                            "/proc/modules", "/proc/interrupts", "/proc/softirqs", "/proc/vmallocinfo",
                            "/proc/zoneinfo", "/proc/slabinfo", "/proc/buddyinfo", "/proc/pagetypeinfo",
                            "/proc/iomem", "/proc/ioports", "/proc/dma", "/proc/mtrr", "/proc/devices",
                            "/proc/misc", "/proc/schedstat", "/proc/vmstat", "/proc/crypto",
                            "/proc/execdomains", "/proc/fb", "/proc/consoles", "/proc/cgroups",
                            "/proc/allocinfo", "/proc/bootconfig", "/proc/mdstat", "/proc/sys/kernel/random/boot_id",
                            "/proc/sys/kernel/tainted", NULL};
    const char *empty_dirs[] = {"/proc/pressure", "/proc/tty", NULL};
    const char *ro[] = {"/proc/sys", "/proc/bus", "/proc/irq", "/proc/fs", "/proc/acpi",
                        "/proc/scsi", "/proc/asound", "/proc/driver", NULL};
    last_pid_fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    if (last_pid_fd < 0) die("open ns_last_pid");
    for (int i = 0; masked[i]; i++) {
        if (access(masked[i], F_OK) == 0 && mount("/dev/null", masked[i], NULL, MS_BIND, NULL) < 0)
            die("mask %s", masked[i]);
    }
    for (int i = 0; empty_dirs[i]; i++) {
        if (access(empty_dirs[i], F_OK) == 0 &&
            mount("tmpfs", empty_dirs[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=555") < 0)
            die("mask %s", empty_dirs[i]);
    }
    for (int i = 0; ro[i]; i++) {
        if (access(ro[i], F_OK) != 0) continue;
        if (mount(ro[i], ro[i], NULL, MS_BIND | MS_REC, NULL) < 0) die("bind %s", ro[i]);
        set_attr_recursive(ro[i], MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV |
                                      MOUNT_ATTR_NOEXEC);
    }
}

/* Device nodes of the box's own tmpfs, not binds of the host's devtmpfs
   nodes: the box's mountinfo then names no host mount (devtmpfs' size
   option is half the host's RAM).  Without CAP_MKNOD (systemd's
   PrivateDevices=yes drops it) the nodes are binds of the daemon's own
   /dev nodes instead, whose mount is then what mountinfo shows. */
static void setup_dev(void) {
    mount_tmpfs("/dev", 1 << 20, 0755, 0, 0, MS_NOSUID | MS_NOEXEC);
    const char *nodes[] = {"null", "zero", "full", "random", "urandom", NULL};
    const unsigned minors[] = {3, 5, 7, 8, 9};
    char src[64], dst[64];
    for (int i = 0; nodes[i]; i++) {
        snprintf(dst, sizeof dst, "/dev/%s", nodes[i]);
        if (mknod(dst, S_IFCHR | 0666, makedev(1, minors[i])) == 0) {
            if (chmod(dst, 0666) < 0) die("chmod %s", dst);
            continue;
        }
        if (errno != EPERM) die("mknod %s", dst);
        snprintf(src, sizeof src, "/.oldroot/dev/%s", nodes[i]);
        make_target(src, dst);
        if (mount(src, dst, NULL, MS_BIND, NULL) < 0) die("bind %s", src);
        set_attr_recursive(dst, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
    }
    if (mkdir("/dev/shm", 01777) < 0) die("mkdir /dev/shm");
    symlink("/proc/self/fd", "/dev/fd");
    symlink("/proc/self/fd/0", "/dev/stdin");
    symlink("/proc/self/fd/1", "/dev/stdout");
    symlink("/proc/self/fd/2", "/dev/stderr");
    set_attr_recursive("/dev", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC); /* not rdonly: shm below */
}

static char rootpfx[256];

static const char *in_root(const char *path, char *buf, size_t n) {
    snprintf(buf, n, "%s%s", rootpfx, path);
    return buf;
}

/* Ops (from the daemon's trusted config, never from a job), NUL-separated:
   "D" dir | "B" hostsrc boxdst | "L" target boxlink | "F" boxpath content */
static void apply_ops(char *p, char *end) {
    char dst[4096];
    while (p < end) {
        char *op = p;
        p += strlen(p) + 1;
        char *a = p;
        if (p >= end) die("truncated op %s", op);
        p += strlen(p) + 1;
        if (op[0] == 'D') {
            mkdirs(in_root(a, dst, sizeof dst));
            continue;
        }
        char *b = p;
        if (p > end) die("truncated op %s", op);
        p += strlen(p) + 1;
        if (op[0] == 'B') {
            in_root(b, dst, sizeof dst);
            char parent[4096];
            snprintf(parent, sizeof parent, "%s", dst);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) {
                *slash = 0;
                mkdirs(parent);
            }
            bind_ro(a, dst, MOUNT_ATTR_NODEV);
        } else if (op[0] == 'L') {
            if (symlink(a, in_root(b, dst, sizeof dst)) < 0) die("symlink %s", b);
        } else if (op[0] == 'F') {
            write_file(in_root(a, dst, sizeof dst), b);
        } else {
            errno = EINVAL;
            die("unknown op %s", op);
        }
    }
}

static void lo_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
    close(s);
}

static void drop_bounding_set(void) {
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno == EINVAL) break;
    }
}

/* Build the box: runs as PID 1 of the fresh namespaces.  Returns the /box fd. */
static int setup_box(ssize_t len) {
    struct config_hdr h;
    errno = EINVAL;
    if ((size_t)len < sizeof h) die("short config");
    memcpy(&h, msgbuf, sizeof h);
    box_uid = h.uid;
    box_gid = h.gid;
    box_bytes = h.box_bytes;
    tmp_bytes = h.tmp_bytes;
    shm_bytes = h.shm_bytes;
    guard_clone3 = (h.flags & C_GUARD_CLONE3) != 0;
    char *p = msgbuf + sizeof h;
    char *end = msgbuf + len;
    if (h.seccomp_len % sizeof(struct sock_filter) || p + h.seccomp_len > end)
        die("bad seccomp length");
    if (h.seccomp_len) {
        seccomp_prog.len = (unsigned short)(h.seccomp_len / sizeof(struct sock_filter));
        seccomp_prog.filter = malloc(h.seccomp_len);
        memcpy(seccomp_prog.filter, p, h.seccomp_len);
    }
    p += h.seccomp_len;
    if (end <= p || end[-1] != 0) die("config strings not terminated");
    char *newroot = p;
    p += strlen(p) + 1;
    char *hostname = p;
    p += strlen(p) + 1;
    if (p > end || strlen(newroot) >= sizeof rootpfx - 1) die("bad config strings");
    snprintf(rootpfx, sizeof rootpfx, "%s", newroot);

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make / private");
    mount_tmpfs(newroot, 4 << 20, 0755, 0, 0, MS_NOSUID | MS_NODEV);
    char path[4096];
    const char *dirs[] = {"/box", "/tmp", "/dev", "/proc", "/etc", "/.oldroot", NULL};
    for (int i = 0; dirs[i]; i++)
        if (mkdir(in_root(dirs[i], path, sizeof path), 0755) < 0) die("mkdir %s", dirs[i]);
    apply_ops(p, end);

    if (chdir(newroot) < 0) die("chdir newroot");
    if (syscall(SYS_pivot_root, ".", ".oldroot") < 0) die("pivot_root");
    if (chdir("/") < 0) die("chdir /");
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") < 0)
        die("mount proc");
    setup_dev();
    mask_proc();
    if (umount2("/.oldroot", MNT_DETACH) < 0) die("umount oldroot");
    rmdir("/.oldroot");
    mount_work_areas();
    int boxfd = open("/box", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (boxfd < 0) die("open /box");
    /* The root tmpfs (mount points, /etc files) is frozen from here on. */
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        die("remount / ro");

    /* The UTS namespace is the box's for its whole life: a run cannot change
       the name back (sethostname is denied, /proc/sys is read-only). */
    if (sethostname(hostname, strlen(hostname)) < 0) die("sethostname");
    drop_bounding_set();
    return boxfd;
}

/* ---- a fresh network namespace ------------------------------------------
   Network state lives in the namespace and outlives the processes that made
   it: TIME_WAIT sockets, lo's and the SNMP counters (some count failures
   that send no packet: no route, a full send buffer), sockets in flight.  A
   namespace costs ~0.8 ms to create (IPv4+IPv6 init), more than a whole run,
   so a run gets a fresh one only when the last one may have left a trace:
   it created an IPv4 or IPv6 socket (the worker hears of each one, see
   watch_sockets), or lo's counters or the namespace's count of sockets (a
   unix socket stays in flight until the kernel's unix GC frees it, an
   abstract name bound with it) differ from when it was new.  A run that
   never opens an IP socket, the common case, pays two preads (~5 us): of
   /proc/net/dev (lo's counters) and of the first line of /proc/net/sockstat,
   "sockets: used N", the namespace's sockets of every family (the rest of
   that file has host-wide figures; listing /proc/net/unix cost ~17 us more
   and shows no unix socket the count does not).  A netlink socket is freed
   after an RCU grace period: a run that closed one just before it ended may
   get a fresh namespace it did not need, never keep one it did. */
static const char *NET_STATE[] = {"dev", "sockstat"};
#define N_NET_STATE 2
enum { NET_SOCKSTAT = 1 };
static int net_fds[N_NET_STATE] = {-1, -1};
static char net_clean[1 << 14], net_now[1 << 14];
static size_t net_clean_len;
static int notify_fd = -1;   /* seccomp listener: socket(AF_INET/AF_INET6) calls */
static int net_touched;       /* a run of this worker opened an IP socket */

static size_t read_net_state(char *buf, size_t cap) {
    size_t len = 0;
    for (int i = 0; i < N_NET_STATE && len < cap; i++) {
        ssize_t n = net_fds[i] < 0 ? 0 : pread(net_fds[i], buf + len, cap - len, 0);
        if (n <= 0) continue;
        if (i == NET_SOCKSTAT) {
            char *nl = memchr(buf + len, '\n', (size_t)n);
            if (nl) n = nl - (buf + len);
        }
        len += (size_t)n;
    }
    return len;
}

static int net_dirty(void) {
    if (net_touched) return 1;
    size_t n = read_net_state(net_now, sizeof net_now);
    return n != net_clean_len || memcmp(net_now, net_clean, n) != 0;
}

/* Kept open for the worker's life: a file stays bound to the namespace it
   was opened in, and each check is one pread. */
static void open_net_state(void) {
    char path[64];
    for (int i = 0; i < N_NET_STATE; i++) {
        snprintf(path, sizeof path, "/proc/thread-self/net/%s", NET_STATE[i]);
        net_fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (net_fds[i] < 0) die("open %s", path);
    }
    net_clean_len = read_net_state(net_clean, sizeof net_clean);
}

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#define X32_BIT 0xffffffffu
#endif

/* A filter of the worker's own, under the run policy: socket(AF_INET or
   AF_INET6) (family is an int: the low 32 bits are compared, as the kernel
   reads them), any call of another ABI, and x32 calls make the caller wait
   for the worker, which notes it and lets the call go on (the policy has
   already passed it: a stricter verdict of the policy wins over this one).
   Runs that never open an IP socket never wait; one that does pays a round
   trip to the worker (~10 us) per such socket. */
static void watch_sockets(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 0, 6),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_BIT, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    notify_fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (notify_fd < 0) die("seccomp listener");
}

static void answer_socket_calls(void) {
    struct seccomp_notif req;
    memset(&req, 0, sizeof req);
    if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) return; /* caller died meanwhile */
    net_touched = 1;
    struct seccomp_notif_resp resp = {.id = req.id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static void fresh_netns(void) {
    if (unshare(CLONE_NEWNET) < 0) die("unshare net");
    lo_up();
}

/* PID numbering is the pid namespace's: left alone, a job would learn how
   many processes the jobs before it started.  Every run starts at the same
   number; the agent's own threads take the numbers below it. */
#define RUN_FIRST_PID 10

static void set_last_pid(int pid) {
    char buf[16];
    int n = snprintf(buf, sizeof buf, "%d", pid);
    if (pwrite(last_pid_fd, buf, (size_t)n, 0) != n) die("write ns_last_pid");
}

/* ---- runs ---------------------------------------------------------------- */

static uint64_t read_cpu_ns(int fd) {
    /* cgroup v1 cpuacct.usage: "<ns>\n"; v2 cpu.stat: "usage_usec <us>\n..." */
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = 0;
    if (strncmp(buf, "usage_usec ", 11) == 0) return strtoull(buf + 11, NULL, 10) * 1000ull;
    return strtoull(buf, NULL, 10);
}

static uint64_t rusage_ns(const struct rusage *ru) {
    return (uint64_t)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) * 1000ull;
}

/* Reaps what has exited; 1 when no child is left, zombie or alive. */
static int no_children_left(void) {
    int st;
    pid_t r;
    while ((r = waitpid(-1, &st, WNOHANG | __WALL)) > 0) {
    }
    return r < 0 && errno == ECHILD;
}

/* Kill everything in the box but us and reap it.  The worker's kill(-1)
   reaches every process of the namespace but PID 1 and itself, whatever
   session, group or parent it has made for itself.  Returns 0 when the box
   is empty again.  With no child left it is empty already: every process of
   a run is the worker's descendant, and an orphan becomes its child (it is
   the subreaper), so a process of the run alive or unreaped means a child.
   Then no kill(-1), which walks every process of the host (kernel
   for_each_process: 2.9 us with 73 on the development VM, 69 us with
   2,073, benchmarks/kill_walk.c), twice a run (issue 18). */
static int kill_all_and_reap(uint64_t budget_ns) {
    if (no_children_left()) return 0;
    uint64_t deadline = now_ns() + budget_ns;
    for (;;) {
        kill(-1, SIGKILL);
        if (no_children_left()) return 0;
        if (now_ns() > deadline) return -1;
        struct pollfd pfd = {sigfd, POLLIN, 0};
        poll(&pfd, 1, 5);
        struct signalfd_siginfo si;
        while (read(sigfd, &si, sizeof si) > 0) {
        }
    }
}

/* A signal a live session's client asked for, to every process of the run:
   kill(-1) from the worker reaches all of the namespace but PID 1 and us,
   whatever group or session the run made.  Only the signals a terminal could
   send are taken: nothing that stops a process (the run would hang past its
   idle check) or that the kernel uses to report faults. */
static void signal_run(const char *p) {
    uint32_t signo;
    memcpy(&signo, p, 4);
    switch (signo) {
    case SIGHUP: case SIGINT: case SIGQUIT: case SIGKILL: case SIGUSR1: case SIGUSR2: case SIGTERM:
        kill(-1, (int)signo);
        break;
    default:
        break;
    }
}

/* The child runs with CLONE_VM|CLONE_VFORK (like posix_spawn): no page
   tables copied, and we sleep until it has exec'd or failed.  Sharing memory,
   it reports a failure by writing here.  stage 1: setting the run up failed
   (our fault); stage 2: exec failed (the job's command cannot run). */
static volatile int child_stage, child_err;

static void child_fail_stage(int stage, int err) {
    child_stage = stage;
    child_err = err;
    _exit(127);
}
#define child_fail(err) child_fail_stage(1, (err))

/* In the child, between fork and exec: join the run's cgroups, then shed
   every privilege.  Order matters: the cgroup writes need root.  The seccomp
   filter is already in force (inherited from the agent). */

/* execvpe() searches the agent's own PATH (empty), not the job's: look the
   command up in the PATH of the job's environment instead, like a shell of
   the box would.  Runs in the vfork child: no allocation, stack buffer only. */
static void exec_with_path(char *const argv[], char *const envp[]) {
    const char *path = "/usr/local/bin:/usr/bin:/bin";
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        return;
    }
    char buf[4096];
    size_t n = strlen(argv[0]);
    int err = ENOENT;
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dl = (size_t)(end - p);
        if (dl == 0) { buf[0] = '.'; dl = 1; } else if (dl < sizeof buf) memcpy(buf, p, dl);
        if (dl + 1 + n + 1 <= sizeof buf) {
            buf[dl] = '/';
            memcpy(buf + dl + 1, argv[0], n + 1);
            execve(buf, argv, envp);
            if (errno == EACCES) err = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR) err = errno;
        }
        if (*end == '\0') break;
        p = end;
    }
    errno = err;
}

/* The program's half of the seccomp policy when the worker's own program
   allows clone3 (to place runs with CLONE_INTO_CGROUP): clone3 passes its
   flags in memory seccomp cannot read, so the program must find it absent and
   use clone(), whose flags the worker's program checks.  Filters stack: the
   stricter answer wins, so this adds a denial and can lift none.  Other
   architectures are the worker's program's business (it kills them). */
static struct sock_filter clone3_guard_insns[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};
static struct sock_fprog clone3_guard = {sizeof clone3_guard_insns / sizeof clone3_guard_insns[0],
                                         clone3_guard_insns};

static void child_exec(struct run_hdr *h, char **argv, char **envp, const char *cwd, int *fds,
                       const int *join, int njoin) {
    for (int i = 0; i < njoin; i++)
        if (write(join[i], "0\n", 2) != 2) child_fail(errno);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0) child_fail(errno);
    int std[3] = {fds[0], fds[1], fds[2]};
    for (int i = 0; i < 3; i++) {
        std[i] = fcntl(std[i], F_DUPFD_CLOEXEC, 10 + MAX_FDS + 1);
        if (std[i] < 0) child_fail(errno);
    }
    for (int i = 0; i < 3; i++)
        if (dup2(std[i], i) < 0) child_fail(errno);
    if (syscall(SYS_close_range, 3, ~0U, 0) < 0) child_fail(errno);
    if (chdir(cwd) < 0) child_fail(errno);

    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = 0;
    setrlimit(RLIMIT_CORE, &rl);
    setrlimit(RLIMIT_MEMLOCK, &rl);
    rl.rlim_cur = rl.rlim_max = h->rl_fsize ? h->rl_fsize : RLIM_INFINITY;
    if (setrlimit(RLIMIT_FSIZE, &rl) < 0) child_fail(errno);
    rl.rlim_cur = rl.rlim_max = h->rl_stack ? h->rl_stack : RLIM_INFINITY;
    if (setrlimit(RLIMIT_STACK, &rl) < 0) child_fail(errno);
    rl.rlim_cur = rl.rlim_max = h->rl_nofile;
    if (h->rl_nofile && setrlimit(RLIMIT_NOFILE, &rl) < 0) child_fail(errno);
    rl.rlim_cur = rl.rlim_max = h->rl_as ? h->rl_as : RLIM_INFINITY;
    if (setrlimit(RLIMIT_AS, &rl) < 0) child_fail(errno);
    if (h->cpu_ns) {
        /* Backstop only: the agent enforces the cgroup-wide CPU total itself;
           this catches a single runaway process even if the agent is starved. */
        rl.rlim_cur = h->cpu_ns / 1000000000ull + 1;
        rl.rlim_max = rl.rlim_cur + 1;
        setrlimit(RLIMIT_CPU, &rl);
    }
    if (setgroups(0, NULL) < 0) child_fail(errno);
    if (setresgid(box_gid, box_gid, box_gid) < 0) child_fail(errno);
    if (setresuid(box_uid, box_uid, box_uid) < 0) child_fail(errno);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) child_fail(errno);
    /* clone_into too: an agent that may call clone3 never lets a program do so */
    if ((guard_clone3 || clone_into) && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &clone3_guard) < 0)
        child_fail(errno);
    exec_with_path(argv, envp);
    child_fail_stage(2, errno);
}

struct child_args {
    struct run_hdr *h;
    char **argv, **envp;
    const char *cwd;
    int *fds;
    const int *join; /* the groups' join files (v1 tasks, v2 cgroup.procs) the child writes itself into */
    int njoin;
};

static int child_main(void *arg) {
    struct child_args *a = arg;
    child_exec(a->h, a->argv, a->envp, a->cwd, a->fds, a->join, a->njoin);
    return 127;
}

static char child_stack[256 * 1024] __attribute__((aligned(16)));

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
/* struct clone_args as of Linux 5.7 (CLONE_ARGS_SIZE_VER2): declared here
   so the build does not depend on how new the installed headers are. */
struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

/* clone3 with CLONE_VM|CLONE_VFORK, like clone() above, born in the cgroup
   whose directory is `cgfd`: the kernel charges it there from its first
   instruction, and no write to cgroup.procs migrates it (a migration takes
   the cgroup threadgroup rwsem for writing).  The kernel checks the move
   against the caller's cgroup namespace (with nsdelegate both ends must be
   inside it), so in this mode the agent keeps the daemon's and gives each
   run's first process a new one here instead (CLONE_NEWCGROUP, rooted where
   the agent's would have been: the worker's cgroup).  glibc has no clone3 wrapper
   that runs a function on a new stack, and a vfork child cannot return
   through the caller's frames, so the child's side is a few instructions of
   assembly: call fn(arg) on the new stack, then exit.  Returns the pid or
   -errno; -ENOSYS where it cannot be done. */
static long clone3_into(int cgfd, int (*fn)(void *), void *arg) {
#if defined(__x86_64__)
    struct clone_args_v2 ca = {
        .flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP | CLONE_NEWCGROUP,
        .exit_signal = SIGCHLD,
        .stack = (uint64_t)(uintptr_t)child_stack,
        .stack_size = sizeof child_stack,
        .cgroup = (uint64_t)cgfd,
    };
    register long rax __asm__("rax") = SYS_clone3;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     /* child: rsp is the top of child_stack (16-aligned) */
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $60, %%eax\n\t" /* SYS_exit */
                     "syscall\n\t"
                     "hlt\n\t"
                     "1:\n\t"
                     : "+r"(rax)
                     : "D"(&ca), "S"(sizeof ca), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return rax;
#else
    (void)cgfd, (void)fn, (void)arg;
    return -ENOSYS;
#endif
}


/* Whether clone3 with CLONE_INTO_CGROUP works here, asked with a closed fd
   (INT_MAX: a larger one is EINVAL) so that nothing is created: EBADF means
   the kernel got as far as the fd.  ENOSYS: no clone3, or a container's
   seccomp hides it (docker's does); E2BIG/EINVAL: clone3 without
   CLONE_INTO_CGROUP (Linux 5.3-5.6). */
static int clone3_probe(void) {
#if defined(__x86_64__)
    struct clone_args_v2 ca = {.flags = CLONE_INTO_CGROUP, .exit_signal = SIGCHLD, .cgroup = INT_MAX};
    long r = syscall(SYS_clone3, &ca, sizeof ca);
    if (r == 0) _exit(0); /* a kernel that ignored the fd: the child goes at once */
    if (r > 0) {
        waitpid((pid_t)r, NULL, 0);
        return 0;
    }
    return errno == EBADF;
#else
    return 0;
#endif
}

/* Start the run's first process: born in the cgroup of `cgfd` when >= 0,
   else by clone() (the child then writes itself into ca->join). */
static pid_t spawn_child(struct child_args *ca, int cgfd, int *err) {
    if (cgfd >= 0) {
        long r = clone3_into(cgfd, child_main, ca);
        *err = r < 0 ? (int)-r : 0;
        return r < 0 ? -1 : (pid_t)r;
    }
    pid_t pid = clone(child_main, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, ca);
    *err = errno;
    return pid;
}

/* MSG_RESET's work after a run (every process of it is already reaped),
   short of a new worker: a run that touched the network namespace gets no
   R_RESET_DONE, and the daemon's RESET that follows hands over.  A failure
   likewise leaves it to that RESET, which reports it. */
static int reset_in_reply(void) {
    if (reset_box() < 0 || net_dirty()) return -1;
    set_last_pid(RUN_FIRST_PID - 1);
    return 0;
}

/* Returns 1 when a RESULT went out and the daemon asked for F_RESET_BEHIND:
   serve() then does a RESET's work as if the message had come. */
static int do_run(ssize_t len, int *fds, int nfds) {
    struct result_msg res = {.type = MSG_RESULT};
    struct run_hdr h;
    int cpu_fd = -1;
    if ((size_t)len < sizeof h || nfds < 3) {
        send_error("bad run request", EINVAL);
        goto out;
    }
    memcpy(&h, msgbuf, sizeof h);
    if (h.flags & F_HAS_CPU_FD) {
        if (nfds < 4) {
            send_error("bad run request: missing cpu fd", EINVAL);
            goto out;
        }
        cpu_fd = fds[3];
    }
    char *p = msgbuf + sizeof h, *end = msgbuf + len;
    if (end <= p || end[-1] != 0 || h.argc < 1 || h.argc > 65536 || h.envc > 65536) {
        send_error("bad run request strings", EINVAL);
        goto out;
    }
    char **argv = calloc(h.argc + 1, sizeof(char *));
    char **envp = calloc(h.envc + 1, sizeof(char *));
    char *cwd = p;
    p += strlen(p) + 1;
    for (uint32_t i = 0; i < h.argc + h.envc; i++) {
        if (p >= end) {
            free(argv);
            free(envp);
            send_error("bad run request: too few strings", EINVAL);
            goto out;
        }
        if (i < h.argc)
            argv[i] = p;
        else
            envp[i - h.argc] = p;
        p += strlen(p) + 1;
    }

    struct rusage ru_before;
    getrusage(RUSAGE_CHILDREN, &ru_before);
    uint64_t cpu0 = cpu_fd >= 0 ? read_cpu_ns(cpu_fd) : 0;
    uint64_t t0 = now_ns();
    int njoin = nfds - 3 - ((h.flags & F_HAS_CPU_FD) ? 1 : 0);
    int *join = fds + nfds - njoin;
    int cgfd = -1;
    if (h.flags & F_INTO_CGROUP) {
        if (njoin != 1 || !clone_into) {
            free(argv);
            free(envp);
            send_error("bad run request: F_INTO_CGROUP wants one cgroup fd, and READY_CLONE_INTO", EINVAL);
            goto out;
        }
        cgfd = join[0];
        njoin = 0;
    } else if (clone_into) {
        /* This agent gave its cgroup namespace up for one per run, which
           only clone3_into makes: no run without it. */
        free(argv);
        free(envp);
        send_error("bad run request: this agent starts runs with F_INTO_CGROUP only", EINVAL);
        goto out;
    }
    struct child_args ca = {&h, argv, envp, cwd, fds, join, njoin};
    child_stage = child_err = 0;
    int clone_errno = 0;
    pid_t pid = spawn_child(&ca, cgfd, &clone_errno);
    if (pid >= 0 && cgfd >= 0) res.flags |= R_BORN_IN_CGROUP;
    free(argv);
    free(envp);
    /* Our copies of the job's fds must go now: holding the stdout pipe open
       would keep the daemon from seeing EOF. */
    for (int i = 0; i < nfds; i++)
        if (fds[i] != cpu_fd) close(fds[i]);
    if (pid < 0) {
        res.flags |= R_SETUP_FAILED;
        res.err = clone_errno;
        goto reply;
    }
    if (child_stage) {
        res.flags |= child_stage == 2 ? R_EXEC_FAILED : R_SETUP_FAILED;
        res.err = child_err;
    }

    int done = 0, status = 0;
    struct rusage ru = {0};
    uint64_t wall_deadline = h.wall_ns ? t0 + h.wall_ns : 0;
    while (!done) {
        int timeout = -1;
        uint64_t t = now_ns();
        if (wall_deadline) {
            if (t >= wall_deadline) {
                res.flags |= R_WALL_LIMIT;
                break;
            }
            timeout = (int)((wall_deadline - t) / 1000000ull) + 1;
        }
        if (h.cpu_ns && cpu_fd >= 0) {
            uint64_t used = read_cpu_ns(cpu_fd) - cpu0;
            if (used >= h.cpu_ns) {
                res.flags |= R_CPU_LIMIT;
                break;
            }
            /* Cannot burn more than ncpu seconds per second: sleep until the
               earliest moment the limit could be reached, at least 1 ms. */
            int next = (int)((h.cpu_ns - used) / (uint64_t)ncpu / 1000000ull) + 1;
            if (timeout < 0 || next < timeout) timeout = next;
        }
        struct pollfd pf[3] = {{sigfd, POLLIN, 0}, {SOCK_FD, POLLIN, 0}, {notify_fd, POLLIN, 0}};
        int n = poll(pf, 3, timeout);
        if (pf[2].revents & POLLIN) answer_socket_calls();
        if (n < 0 && errno != EINTR) break;
        if (pf[1].revents & (POLLHUP | POLLERR)) _exit(0); /* daemon gone: the box dies with us */
        if (pf[1].revents & POLLIN) {
            int kfds[MAX_FDS], nk;
            ssize_t m = recv_msg(kfds, &nk);
            for (int i = 0; i < nk; i++) close(kfds[i]);
            if (m == 0) _exit(0);
            if (m >= 4) {
                uint32_t type;
                memcpy(&type, msgbuf, 4);
                if (type == MSG_KILL) {
                    res.flags |= R_CANCELLED;
                    break;
                }
                if (type == MSG_SIGNAL && m >= 8) signal_run(msgbuf + 4);
            }
        }
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) > 0) {
            }
        }
        /* Reap whatever ended; orphans of the run are ours to reap too. */
        for (;;) {
            int st;
            struct rusage cru;
            pid_t w = wait4(-1, &st, WNOHANG | __WALL, &cru);
            if (w <= 0) break;
            if (w == pid) {
                status = st;
                ru = cru;
                done = 1;
            }
        }
    }
    res.wall_ns = now_ns() - t0;
    if (kill_all_and_reap(2000000000ull) < 0) res.flags |= R_LEFTOVERS;
    if (!done) {
        /* killed by us: the main child was reaped by kill_all_and_reap */
        status = SIGKILL;
    }
    res.wstatus = status;
    res.maxrss_kb = (uint64_t)ru.ru_maxrss;
    if (cpu_fd >= 0) {
        res.cpu_ns = read_cpu_ns(cpu_fd) - cpu0;
    } else {
        struct rusage ru_after;
        getrusage(RUSAGE_CHILDREN, &ru_after);
        res.cpu_ns = rusage_ns(&ru_after) - rusage_ns(&ru_before);
    }
reply:
    if (cpu_fd >= 0) close(cpu_fd);
    if ((h.flags & F_RESET_AFTER) && !(res.flags & R_LEFTOVERS) && reset_in_reply() == 0) {
        /* One message instead of RESULT, RESET, READY: the reset costs the
           daemon no second round trip. */
        res.flags |= R_RESET_DONE;
        send_with_fd(&res, sizeof res, pending_boxfd);
        if (pending_boxfd >= 0) close(pending_boxfd);
        pending_boxfd = -1;
        return 0;
    }
    send_with_fd(&res, sizeof res, -1);
    return (h.flags & F_RESET_BEHIND) != 0;
out:
    for (int i = 0; i < nfds; i++) close(fds[i]);
    return 0;
}

/* ---- workers ----------------------------------------------------------------
   Inner (PID 1) never serves the daemon: it builds the box, then only does for
   its worker what the run policy denies (a new network namespace, a fresh
   tmpfs).  The worker, a child process and the subreaper of every run, serves
   the daemon under the run policy (loaded once per worker, it costs ~0.4 ms
   of BPF JIT); every run inherits the worker's policy and network namespace,
   and a compromised worker can only ask for those two things.  A worker
   whose namespace a run has touched hands over to a new worker in a new
   namespace and exits.  kill(-1) from the worker spares only PID 1 and
   itself.  A process, not a thread: a single-threaded worker keeps glibc
   and the kernel on their single-threaded paths for every vfork and exec. */
static int priv_fd = -1; /* the worker's end of its socket to PID 1 */

static int priv_call(unsigned char cmd, unsigned char arg) {
    unsigned char req[2] = {cmd, arg};
    if (send(priv_fd, req, sizeof req, MSG_NOSIGNAL) != (ssize_t)sizeof req) return errno;
    if (cmd == PRIV_WORKER) return 0; /* the new worker answers the daemon */
    int err = EIO;
    ssize_t n;
    do {
        n = recv(priv_fd, &err, sizeof err, 0);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof err ? err : EIO;
}

enum { READY_CLONE_INTO = 1 }; /* runs are born in the cgroup whose directory F_INTO_CGROUP passes */

static void send_ready(void) {
    uint32_t t[2] = {MSG_READY, clone_into ? READY_CLONE_INTO : 0};
    send_with_fd(t, sizeof t, pending_boxfd);
    if (pending_boxfd >= 0) close(pending_boxfd);
    pending_boxfd = -1;
}

static void close_fds(int *fds, int nfds) {
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

/* A RESET's work (or F_RESET_BEHIND's): READY, or ERROR; 1 when a new
   worker takes over (its first READY answers the daemon). */
static int do_reset(void) {
    if (kill_all_and_reap(2000000000ull) < 0) {
        send_error("processes survive SIGKILL", EBUSY);
        return 0;
    }
    if (reset_box() < 0) {
        send_error("emptying the work areas failed", errno);
        return 0;
    }
    if (net_dirty()) {
        priv_call(PRIV_WORKER, 0);
        return 1;
    }
    set_last_pid(RUN_FIRST_PID - 1);
    send_ready();
    return 0;
}

/* Returns when this worker hands the box over to a new one. */
static void serve(void) {
    for (;;) {
        int fds[MAX_FDS], nfds;
        ssize_t n = recv_msg(fds, &nfds);
        if (n == 0) _exit(0);
        if (n == -2) {
            send_error("message too large", EMSGSIZE);
            continue;
        }
        if (n < 0) _exit(113);
        uint32_t type = 0;
        if (n >= 4) memcpy(&type, msgbuf, 4);
        if (type == MSG_RUN) {
            if (do_run(n, fds, nfds) && do_reset()) return;
            continue;
        }
        close_fds(fds, nfds);
        if (type == MSG_RESET) {
            if (do_reset()) return;
        } else if (type == MSG_KILL) {
            /* no run in progress: nothing to do */
            kill_all_and_reap(2000000000ull);
        } else if (type == MSG_SIGNAL) {
            /* the run it was meant for has ended: nothing to signal */
        } else {
            send_error("unexpected message", EPROTO);
        }
    }
}

static void worker_main(void) {
    /* Orphans of a run are ours to reap and kill, not PID 1's. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) die("subreaper");
    fresh_netns();
    open_net_state();
    watch_sockets();
    if (seccomp_prog.len && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &seccomp_prog) < 0)
        die("seccomp");
    /* Every worker's first READY carries /box: a worker a reset handed over
       to has not seen the /box fd its predecessor may have opened. */
    if (pending_boxfd >= 0) close(pending_boxfd);
    pending_boxfd = open("/box", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (pending_boxfd < 0) die("open /box");
    set_last_pid(RUN_FIRST_PID - 1);
    send_ready();
    serve();
}

/* Returns PID 1's end of the new worker's socket. */
static int start_worker(pid_t *pid) {
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) die("socketpair");
    set_last_pid(1); /* workers take the pids below RUN_FIRST_PID */
    *pid = fork();
    if (*pid < 0) die("fork worker");
    if (*pid == 0) {
        close(sp[0]);
        priv_fd = sp[1];
        worker_main();
        _exit(0);
    }
    close(sp[1]);
    return sp[0];
}

static void priv_loop(void) {
    pid_t worker;
    int cur = start_worker(&worker);
    for (;;) {
        unsigned char req[2];
        ssize_t n = recv(cur, req, sizeof req, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n != (ssize_t)sizeof req) _exit(114); /* the worker died: the box dies with it */
        if (req[0] == PRIV_WORKER) {
            /* Reap the old worker (it exits right after asking) before forking
               the new one: the worker is then always pid 2, so a run's
               getppid() cannot tell whether earlier jobs used the network. */
            close(cur);
            while (waitpid(worker, NULL, 0) < 0 && errno == EINTR) {
            }
            cur = start_worker(&worker);
            continue;
        }
        int err = EINVAL;
        if (req[0] == PRIV_REMOUNT && req[1] < N_WORK) {
            /* The old tmpfs lives on while the daemon holds its /box fd. */
            err = umount2(WORK_DIRS[req[1]], MNT_DETACH) < 0 ? errno : 0;
            if (!err) mount_work_area(req[1]);
        }
        send(cur, &err, sizeof err, MSG_NOSIGNAL);
    }
}

/* Wait for the daemon's CONFIG and build the box from it. */
static void configure(void) {
    for (;;) {
        int fds[MAX_FDS], nfds;
        ssize_t n = recv_msg(fds, &nfds);
        if (n == 0) _exit(0);
        close_fds(fds, nfds);
        if (n == -2) {
            send_error("message too large", EMSGSIZE);
            continue;
        }
        if (n < 0) _exit(113);
        uint32_t type = 0;
        if (n >= 4) memcpy(&type, msgbuf, 4);
        if (type == MSG_CONFIG) {
            close(setup_box(n)); /* each worker opens /box for itself */
            return;
        }
        send_error("unexpected message", EPROTO);
    }
}

int main(int argc, char **argv) {
    /* argv[1]: the daemon's pid, to close the PDEATHSIG race; argv[2]: our socket */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return 120;
    if (argc < 3 || getppid() != (pid_t)atol(argv[1])) return 121;
    SOCK_FD = atoi(argv[2]);
    msgbuf = malloc(MAX_MSG);
    if (!msgbuf) return 122;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 0) ncpu = n;
    /* argv[3] "clone-into-cgroup": the daemon's cgroup v2 backend wants runs
       born in their cgroup; then each run gets its cgroup namespace at birth
       (clone3_into) instead of the agent getting one here. */
    clone_into = argc > 3 && strcmp(argv[3], "clone-into-cgroup") == 0 && clone3_probe();
    if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                (clone_into ? 0 : CLONE_NEWCGROUP)) < 0)
        die("unshare");
    pid_t inner = fork();
    if (inner < 0) die("fork");
    if (inner > 0) {
        /* outer: nothing to do but mirror the inner agent's end */
        close(SOCK_FD);
        int st;
        while (waitpid(inner, &st, 0) < 0 && errno == EINTR) {
        }
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("pdeathsig");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) die("signalfd");
    configure();
    priv_loop();
    return 0;
}
