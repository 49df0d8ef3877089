// SPDX-License-Identifier: GPL-2.0
// io_setup(2) with the number of events given, for graft's VM tests: prints
// "ok" or the error's name (EAGAIN, EINVAL, ...) and releases the context.
//
// Built static at test time (`gcc -static -O2`): the test VM has no libc.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned long ctx = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: io-setup NR_EVENTS\n");
		return 2;
	}
	if (syscall(SYS_io_setup, strtoul(argv[1], NULL, 0), &ctx) == 0) {
		syscall(SYS_io_destroy, ctx);
		puts("ok");
	} else if (errno == EAGAIN) {
		puts("EAGAIN");
	} else if (errno == EINVAL) {
		puts("EINVAL");
	} else {
		printf("errno %d\n", errno);
	}
	return 0;
}
