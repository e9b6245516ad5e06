/* Runs one hook the way Juju does (fork, exec ./dispatch in the charm directory) and prints
 * "<wall ns> <peak RSS KiB> <exit status>": wall from fork to reaping, peak RSS from wait4's
 * rusage of dispatch and its reaped children (the charm's python3). A separate tiny process, so
 * that the peak RSS a child inherits at exec is this launcher's (about 1 MiB), not Python's.
 * Usage: launch <charm dir>; the hook environment is inherited. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: launch <charm dir>\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        if (chdir(argv[1]) != 0) {
            perror("chdir");
            _exit(127);
        }
        execl("./dispatch", "./dispatch", (char *)NULL);
        perror("exec dispatch");
        _exit(127);
    }
    int status = 0;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) {
        perror("wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("%lld %ld %d\n", ns, usage.ru_maxrss, code);
    return 0;
}
