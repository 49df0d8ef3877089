/* SPDX-License-Identifier: GPL-2.0 */
/*
 * graft's kpatch-syscall.h: KPATCH_SYSCALL_DEFINE0..6, so that syscall
 * patches written for kpatch build unchanged with graft. Written for graft.
 *
 * Why kpatch needed its own syscall macros: SYSCALL_DEFINEn(name, ...) puts
 * the syscall's body in `static inline long __do_sys_<name>(...)`, and the
 * kernel's `inline` implies `notrace`, so __do_sys_<name> has no __fentry__
 * call and livepatch cannot redirect it, even where gcc keeps it out of line
 * (as the Debian kernel does for __do_sys_newuname). kpatch renamed it so
 * that it became a new function and its caller changed.
 *
 * Why the kernel's own macro is enough with graft: graft promotes such a
 * callee by itself. A changed function without __fentry__ that is local to
 * its file and only called directly from functions that have one (here
 * __x64_sys_<name> and __ia32_sys_<name>, the syscall table's entries) is
 * carried as a new function, and those callers are patched to call the new
 * copy. So KPATCH_SYSCALL_DEFINEn is SYSCALL_DEFINEn: same code, same
 * tracing metadata, nothing renamed.
 */
#ifndef __KPATCH_SYSCALL_H_
#define __KPATCH_SYSCALL_H_

#include <linux/syscalls.h>
#include "kpatch-macros.h"

#define KPATCH_SYSCALL_DEFINE0(name) SYSCALL_DEFINE0(name)
#define KPATCH_SYSCALL_DEFINE1(name, ...) SYSCALL_DEFINE1(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) SYSCALL_DEFINE2(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) SYSCALL_DEFINE3(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) SYSCALL_DEFINE4(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) SYSCALL_DEFINE5(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) SYSCALL_DEFINE6(name, __VA_ARGS__)

#endif /* __KPATCH_SYSCALL_H_ */
