#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
static char buf[1 << 15], xn[65536];
static const char *D[] = {"/tmp/exp/rb/a", "/tmp/exp/rb/b", "/tmp/exp/rb/c", "/tmp/exp/rb/d"};
static void empty(int top) { lseek(top, 0, SEEK_SET); while (syscall(SYS_getdents64, top, buf, sizeof buf) > 0) {} }
static void old_reset(void) {
  for (int i = 0; i < 4; i++) {
    int fd = open(D[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); empty(fd); close(fd);
    fd = open(D[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    fchown(fd, 0, 0); fchmod(fd, 01777); flistxattr(fd, xn, sizeof xn); close(fd);
  }
}
static void new_reset(void) {
  for (int i = 0; i < 4; i++) {
    int fd = open(D[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); empty(fd);
    struct stat st; fstat(fd, &st);
    if (st.st_uid || st.st_gid) fchown(fd, 0, 0);
    if ((st.st_mode & 07777) != 01777) fchmod(fd, 01777);
    flistxattr(fd, xn, sizeof xn); close(fd);
  }
}
static double t(void (*f)(void), int n) {
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; i++) f();
  clock_gettime(CLOCK_MONOTONIC, &b);
  return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1000.0;
}
int main(void) {
  if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return 1;
  for (int i = 0; i < 4; i++) { mkdir(D[i], 0755); if (mount("tmpfs", D[i], "tmpfs", 0, "size=1m,mode=1777") < 0) return 2; }
  for (int r = 0; r < 5; r++) printf("old %.2f us  new %.2f us per reset (4 areas)\n", t(old_reset, 20000), t(new_reset, 20000));
  return 0;
}
