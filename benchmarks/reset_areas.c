/* The agent's reset of its four work areas (/box, /tmp, /dev/shm,
   /dev/mqueue) when a run left them empty, as a syscall sequence: before
   stop 27 (open, empty, close, open again, fchown, fchmod, flistxattr, close)
   against since (open, empty, fstat, flistxattr, close: sandboxd/sandbox/
   agent/agent.c reset_box), on four tmpfs mounted in a private mount
   namespace under a temporary directory.  Prints us per reset and new/old.

     gcc -O2 -o /tmp/reset_areas benchmarks/reset_areas.c && /tmp/reset_areas   # as root */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define AREAS 4
#define RESETS 20000
#define ROUNDS 5

static char dents[1 << 15], names[1 << 16];
static char dirs[AREAS][64];

static void empty(int fd) { /* an empty area: its . and .. only, as the agent reads them */
    lseek(fd, 0, SEEK_SET);
    while (syscall(SYS_getdents64, fd, dents, sizeof dents) > 0) {
    }
}

static void old_reset(void) {
    for (int i = 0; i < AREAS; i++) {
        int fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        empty(fd);
        close(fd);
        fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fchown(fd, 0, 0) < 0 || fchmod(fd, 01777) < 0) exit(3);
        flistxattr(fd, names, sizeof names);
        close(fd);
    }
}

static void new_reset(void) {
    for (int i = 0; i < AREAS; i++) {
        int fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        empty(fd);
        struct stat st;
        if (fstat(fd, &st) < 0) exit(3);
        if ((st.st_uid || st.st_gid) && fchown(fd, 0, 0) < 0) exit(3);
        if ((st.st_mode & 07777) != 01777 && fchmod(fd, 01777) < 0) exit(3);
        flistxattr(fd, names, sizeof names);
        close(fd);
    }
}

static double us_per_reset(void (*reset)(void)) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < RESETS; i++) reset();
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / RESETS / 1000.0;
}

int main(void) {
    char top[] = "/tmp/reset-areas-XXXXXX";
    if (!mkdtemp(top)) return 1;
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        perror("a private mount namespace (run as root)");
        return 1;
    }
    for (int i = 0; i < AREAS; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/%d", top, i);
        if (mkdir(dirs[i], 0755) < 0 || mount("tmpfs", dirs[i], "tmpfs", 0, "size=1m,mode=1777") < 0) return 2;
    }
    for (int r = 0; r < ROUNDS; r++) {
        double old = us_per_reset(old_reset), new = us_per_reset(new_reset);
        printf("round %d: before %.2f us, since %.2f us per reset of %d areas: %.2fx\n", r + 1, old, new, AREAS,
               new / old);
    }
    for (int i = 0; i < AREAS; i++) {
        umount(dirs[i]);
        rmdir(dirs[i]);
    }
    rmdir(top);
    return 0;
}
