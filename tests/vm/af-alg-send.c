/* Sends N bytes (argv[1]) to an AF_ALG cbc(aes) encryption socket and
 * prints what sendmsg returned: "<bytes>" or "-<errno>". graft's VM tests
 * use it to reach algif_skcipher's sendmsg, a function of a module. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/if_alg.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_alg sa = { .salg_family = AF_ALG };
	unsigned char key[16] = { 0 }, buf[64] = { 0 };
	char cbuf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct af_alg_iv) + 16)] = { 0 };
	struct msghdr msg = { 0 };
	struct iovec iov;
	struct cmsghdr *c;
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 0) : 16;
	int tfm, op;
	ssize_t r;

	strcpy((char *)sa.salg_type, "skcipher");
	strcpy((char *)sa.salg_name, "cbc(aes)");
	tfm = socket(AF_ALG, SOCK_SEQPACKET, 0);
	if (tfm < 0 || bind(tfm, (struct sockaddr *)&sa, sizeof(sa)) ||
	    setsockopt(tfm, SOL_ALG, ALG_SET_KEY, key, sizeof(key))) {
		printf("SETUP-FAILED: %s\n", strerror(errno));
		return 1;
	}
	op = accept(tfm, NULL, 0);
	if (op < 0) {
		printf("SETUP-FAILED: accept %s\n", strerror(errno));
		return 1;
	}
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_OP;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	*(int *)CMSG_DATA(c) = ALG_OP_ENCRYPT;
	c = CMSG_NXTHDR(&msg, c);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_IV;
	c->cmsg_len = CMSG_LEN(sizeof(struct af_alg_iv) + 16);
	((struct af_alg_iv *)CMSG_DATA(c))->ivlen = 16;
	iov.iov_base = buf;
	iov.iov_len = n < sizeof(buf) ? n : sizeof(buf);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	r = sendmsg(op, &msg, 0);
	if (r < 0)
		printf("%d\n", -errno);
	else
		printf("%zd\n", r);
	return 0;
}
