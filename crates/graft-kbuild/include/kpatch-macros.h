/* SPDX-License-Identifier: GPL-2.0 */
/*
 * graft's kpatch-macros.h: the macros of kpatch's header of that name, so
 * that patches written for kpatch build unchanged with graft. Written for
 * graft (not a copy of kpatch's header): each macro maps onto graft's own,
 * from <graft/livepatch.h>.
 *
 * graft installs it in its private copy of the kernel tree, so a patch's
 * `#include "kpatch-macros.h"` finds it.
 *
 *   KPATCH_{PRE,POST}_{PATCH,UNPATCH}_CALLBACK(fn)
 *       GRAFT_*_CALLBACK(fn). fn takes a `patch_object *`, which is the
 *       kernel's `struct klp_object *` (kpatch's livepatch build does the
 *       same); the callback belongs to the klp_object of its file.
 *   KPATCH_IGNORE_FUNCTION(fn), KPATCH_IGNORE_SECTION("name")
 *       GRAFT_IGNORE_FUNCTION, GRAFT_IGNORE_SECTION.
 *   KPATCH_FORCE_UNSAFE(fn)
 *       kpatch's own core module skipped its stack check for fn. The kernel's
 *       livepatch has no such per-function bypass: its consistency model
 *       switches each task only when none of the patch's functions is on its
 *       stack, and only `force` for the whole patch overrides that (after
 *       which the module can never be removed). So the marker changes
 *       nothing: graft records it and warns at build time. If a transition
 *       stalls because fn is always on some stack, `graft load --force` is
 *       the (whole-patch) equivalent.
 *   KPATCH_PRINTK(fmt, ...), KPATCH_PRINTK_DEFERRED(fmt, ...)
 *       printk and printk_deferred. kpatch needed the wrapper because a
 *       printk call makes gcc move code into cold parts and uninline
 *       helpers, changes kpatch could not follow; graft carries cold parts
 *       with their functions and new out-of-line copies as new functions.
 *   KPATCH_STATIC_CALL(name)
 *       an indirect call through the static call's current target, for the
 *       patched code of a module whose static call key lives in a module
 *       (graft refuses the static call itself: rule key-in-module).
 *
 * kpatch offers no shadow-variable helpers in this header: kpatch patches
 * call the kernel's klp_shadow_* directly, which works as is (they are
 * exported); GRAFT_SHADOW_FIELD adds typed helpers.
 */
#ifndef __KPATCH_MACROS_H_
#define __KPATCH_MACROS_H_

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/printk.h>
#include <linux/static_call_types.h>
#include <linux/version.h>
#include <graft/livepatch.h>
#include "kpatch-syscall.h"

typedef struct klp_object patch_object;

typedef int (*kpatch_pre_patch_call_t)(patch_object *obj);
typedef void (*kpatch_post_patch_call_t)(patch_object *obj);
typedef void (*kpatch_pre_unpatch_call_t)(patch_object *obj);
typedef void (*kpatch_post_unpatch_call_t)(patch_object *obj);

#define KPATCH_PRE_PATCH_CALLBACK(fn) GRAFT_PRE_PATCH_CALLBACK(fn)
#define KPATCH_POST_PATCH_CALLBACK(fn) GRAFT_POST_PATCH_CALLBACK(fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn) GRAFT_PRE_UNPATCH_CALLBACK(fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) GRAFT_POST_UNPATCH_CALLBACK(fn)

#define KPATCH_IGNORE_FUNCTION(fn) GRAFT_IGNORE_FUNCTION(fn)
#define KPATCH_IGNORE_SECTION(name) GRAFT_IGNORE_SECTION(name)

/* Recorded for graft's build-time warning; see above. */
#define KPATCH_FORCE_UNSAFE(fn)                                               \
	static void *const __UNIQUE_ID(graft_force_unsafe_)                   \
		__graft_record("force_unsafe") = (void *)&(fn)

#define KPATCH_PRINTK(fmt, ...) printk(fmt, ##__VA_ARGS__)
#define KPATCH_PRINTK_DEFERRED(fmt, ...) printk_deferred(fmt, ##__VA_ARGS__)

#define KPATCH_STATIC_CALL(name)                                              \
	((typeof(STATIC_CALL_TRAMP(name)) *)(STATIC_CALL_KEY(name).func))

#endif /* __KPATCH_MACROS_H_ */
