// SPDX-License-Identifier: GPL-2.0
// A read storm for graft's VM tests: NPROC processes open, read and close
// FILE in a loop until SECONDS pass or /tmp/storm-stop exists, and check
// that every answer is one of ANSWER... (the file's contents without the
// trailing newline). Patching the function that produces the file while the
// storm runs must never give any other answer.
//
// Prints the number of reads, the number of wrong ones, and how many times
// each answer was seen (so a test can tell both the original and the
// patched code really ran). Exits 0 when no answer was wrong.
//
// Usage: read-storm FILE NPROC SECONDS ANSWER...
// Built static at test time (`gcc -static -O2`): the test VM has no libc.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ANSWERS 8

struct tally {
	long reads;
	long wrong;
	long seen[MAX_ANSWERS];
};

static void worker(const char *file, int seconds, char **answers, int n, struct tally *t)
{
	time_t end = time(NULL) + seconds;
	char buf[8192];

	memset(t, 0, sizeof(*t));
	while (time(NULL) < end && access("/tmp/storm-stop", F_OK) != 0) {
		for (int i = 0; i < 100; i++) {
			int fd = open(file, O_RDONLY);
			ssize_t len = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
			int which = -1;

			if (fd >= 0)
				close(fd);
			if (len > 0 && buf[len - 1] == '\n')
				len--;
			for (int a = 0; len >= 0 && a < n; a++) {
				if ((size_t)len == strlen(answers[a]) && !memcmp(buf, answers[a], len)) {
					which = a;
					break;
				}
			}
			t->reads++;
			if (which < 0)
				t->wrong++;
			else
				t->seen[which]++;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 5 || argc - 4 > MAX_ANSWERS) {
		fprintf(stderr, "usage: read-storm FILE NPROC SECONDS ANSWER...\n");
		return 2;
	}
	const char *file = argv[1];
	int nproc = atoi(argv[2]);
	int seconds = atoi(argv[3]);
	char **answers = argv + 4;
	int n = argc - 4;
	struct tally total = { 0 };
	int pipefd[2];
	int lost = 0;

	if (pipe(pipefd))
		return 2;
	for (int i = 0; i < nproc; i++) {
		if (fork() == 0) {
			struct tally t;

			worker(file, seconds, answers, n, &t);
			_exit(write(pipefd[1], &t, sizeof(t)) != sizeof(t));
		}
	}
	close(pipefd[1]);
	for (int i = 0; i < nproc; i++) {
		struct tally t;

		if (read(pipefd[0], &t, sizeof(t)) != sizeof(t)) {
			lost++;
			continue;
		}
		total.reads += t.reads;
		total.wrong += t.wrong;
		for (int a = 0; a < n; a++)
			total.seen[a] += t.seen[a];
	}
	while (wait(NULL) > 0)
		;
	printf("read-storm: %d processes, %ld reads, %ld wrong, seen", nproc, total.reads, total.wrong);
	for (int a = 0; a < n; a++)
		printf(" %ld", total.seen[a]);
	printf("\n");
	return total.wrong != 0 || lost != 0;
}
