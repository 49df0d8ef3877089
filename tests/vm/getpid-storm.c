// SPDX-License-Identifier: GPL-2.0
// A getpid storm for graft's VM tests: NPROC processes call getpid(2) in a
// loop, each checking that the answer is its own pid, until SECONDS pass or
// the file /tmp/storm-stop exists.
// Exits 0 when every process saw only right answers, and prints the total
// number of calls (so a test can tell the storm really ran).
//
// Built static at test time (`gcc -static -O2`): the test VM has no libc.
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long worker(int seconds)
{
	pid_t me = getpid();
	time_t end = time(NULL) + seconds;
	long calls = 0;

	while (time(NULL) < end && access("/tmp/storm-stop", F_OK) != 0) {
		for (int i = 0; i < 1000; i++) {
			/* The raw syscall: libc does not cache getpid, but be explicit. */
			if (syscall(SYS_getpid) != me)
				return -1;
			calls++;
		}
	}
	return calls;
}

int main(int argc, char **argv)
{
	int nproc = argc > 1 ? atoi(argv[1]) : 8;
	int seconds = argc > 2 ? atoi(argv[2]) : 30;
	int pipefd[2];
	long total = 0;
	int bad = 0;

	if (pipe(pipefd))
		return 2;
	for (int i = 0; i < nproc; i++) {
		if (fork() == 0) {
			long n = worker(seconds);
			if (write(pipefd[1], &n, sizeof(n)) != sizeof(n))
				_exit(2);
			_exit(n < 0);
		}
	}
	close(pipefd[1]);
	for (int i = 0; i < nproc; i++) {
		long n;
		if (read(pipefd[0], &n, sizeof(n)) != sizeof(n) || n < 0)
			bad++;
		else
			total += n;
	}
	while (wait(NULL) > 0)
		;
	printf("storm: %d processes, %ld getpid calls, %d wrong\n", nproc, total, bad);
	return bad != 0;
}
