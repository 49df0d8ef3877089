/* SPDX-License-Identifier: GPL-2.0 */
/*
 * graft's toolbox for patch authors: callbacks, shadow variables, system
 * state, and markers that tell graft to leave something out.
 *
 * graft installs this header in its private copy of the kernel tree while it
 * builds a live patch (never in your tree), so a patched source file can say
 * `#include <graft/livepatch.h>` and build unchanged by graft. It is not
 * meant for an ordinary kernel build.
 *
 * Everything here is plain C plus small records in `.graft.*` sections.
 * graft reads those records from the patched object and acts on them (wires
 * the callbacks and states into the generated `klp_patch`, leaves ignored
 * functions out); the records themselves never reach the module.
 *
 * See docs/patch-author-guide.md in graft for worked examples, and the
 * kernel's Documentation/livepatch/{callbacks,shadow-vars,system-state}.rst
 * for what the kernel guarantees.
 */
#ifndef _GRAFT_LIVEPATCH_H
#define _GRAFT_LIVEPATCH_H

#include <linux/compiler.h>
#include <linux/gfp.h>
#include <linux/livepatch.h>
#include <linux/types.h>

/*
 * A record in `.graft.<kind>`. `__used` keeps records gcc would otherwise
 * drop as unreferenced; every record of one section has the same type and
 * constness, so gcc never sees a section type conflict.
 */
#define __graft_record(kind) __used __section(".graft." kind)

/* --------------------------------------------------------------------------
 * Callbacks
 *
 * GRAFT_PRE_PATCH_CALLBACK(fn) and friends register fn for the klp_object of
 * the file that names it: vmlinux for a built-in file, the module for a
 * file built into a module (then the callback runs when that module is
 * loaded, if it loads after the patch). The kernel calls them:
 *
 *   pre_patch    before the patch starts to apply; a non-zero return
 *                aborts the load cleanly (insmod fails with that error and
 *                nothing of the patch stays);
 *   post_patch   after every task runs the new code;
 *   pre_unpatch  before the patch starts to be removed;
 *   post_unpatch after every task runs the old code again (the place to
 *                free shadow variables: nothing uses them any more).
 *
 * A klp_object has one callback of each kind: two files of one object that
 * both declare, say, a post-patch callback are refused by graft (call one
 * from the other). The function pointer is typed, so a callback of the wrong
 * type does not compile (-Werror=incompatible-pointer-types).
 * ------------------------------------------------------------------------ */

typedef int (*graft_pre_patch_fn)(struct klp_object *obj);
typedef void (*graft_post_patch_fn)(struct klp_object *obj);
typedef void (*graft_pre_unpatch_fn)(struct klp_object *obj);
typedef void (*graft_post_unpatch_fn)(struct klp_object *obj);

#define __GRAFT_CALLBACK(kind, type, fn)                                      \
	static type const __UNIQUE_ID(graft_##kind##_)                        \
		__graft_record("callbacks." #kind) = (fn)

#define GRAFT_PRE_PATCH_CALLBACK(fn)                                          \
	__GRAFT_CALLBACK(pre_patch, graft_pre_patch_fn, fn)
#define GRAFT_POST_PATCH_CALLBACK(fn)                                         \
	__GRAFT_CALLBACK(post_patch, graft_post_patch_fn, fn)
#define GRAFT_PRE_UNPATCH_CALLBACK(fn)                                        \
	__GRAFT_CALLBACK(pre_unpatch, graft_pre_unpatch_fn, fn)
#define GRAFT_POST_UNPATCH_CALLBACK(fn)                                       \
	__GRAFT_CALLBACK(post_unpatch, graft_post_unpatch_fn, fn)

/* --------------------------------------------------------------------------
 * Shadow variables
 *
 * A live patch cannot add a field to a structure the running kernel already
 * uses (graft refuses the changed layout). A shadow variable attaches the
 * new field to each object instead, keyed by the object's address and an id
 * the patch picks (any unsigned long, unique among live patches).
 *
 *   GRAFT_SHADOW_FIELD(birth, struct task_struct, u64, 0x6772616674UL);
 *
 * defines typed helpers over the kernel's klp_shadow_* API:
 *
 *   u64 *birth_get(struct task_struct *o);             NULL when absent
 *   u64 *birth_alloc(struct task_struct *o, u64 value, gfp_t gfp);
 *   u64 *birth_get_or_alloc(struct task_struct *o, u64 value, gfp_t gfp);
 *   void birth_free(struct task_struct *o, klp_shadow_dtor_t dtor);
 *   void birth_free_all(klp_shadow_dtor_t dtor);
 *
 * The value is stored by a constructor that runs under the kernel's shadow
 * lock, so no other CPU ever sees the variable before it holds the value.
 * _alloc warns (and returns NULL) if the object already has one; an object
 * freed by code that does not know the shadow variable (the running
 * kernel's, or the code before the patch) leaves it behind, so free stale
 * ones where objects are born, and free them all in a post-unpatch
 * callback. Dtors may be NULL.
 * ------------------------------------------------------------------------ */

#define GRAFT_SHADOW_FIELD(name, owner_type, value_type, id)                  \
	static inline int name##_graft_ctor(void *obj, void *data, void *init) \
	{                                                                     \
		*(value_type *)data = *(const value_type *)init;              \
		return 0;                                                     \
	}                                                                     \
	static inline __maybe_unused value_type *name##_get(owner_type *o)    \
	{                                                                     \
		return klp_shadow_get(o, (id));                               \
	}                                                                     \
	static inline __maybe_unused value_type *name##_alloc(                \
		owner_type *o, value_type value, gfp_t gfp)                   \
	{                                                                     \
		return klp_shadow_alloc(o, (id), sizeof(value_type), gfp,     \
					name##_graft_ctor, &value);           \
	}                                                                     \
	static inline __maybe_unused value_type *name##_get_or_alloc(         \
		owner_type *o, value_type value, gfp_t gfp)                   \
	{                                                                     \
		return klp_shadow_get_or_alloc(o, (id), sizeof(value_type),   \
					       gfp, name##_graft_ctor,        \
					       &value);                       \
	}                                                                     \
	static inline __maybe_unused void name##_free(owner_type *o,          \
						      klp_shadow_dtor_t dtor) \
	{                                                                     \
		klp_shadow_free(o, (id), dtor);                               \
	}                                                                     \
	static inline __maybe_unused void name##_free_all(                    \
		klp_shadow_dtor_t dtor)                                       \
	{                                                                     \
		klp_shadow_free_all((id), dtor);                              \
	}

/* --------------------------------------------------------------------------
 * System state (Documentation/livepatch/system-state.rst)
 *
 * GRAFT_STATE(id, version) declares that this patch changes the system
 * state `id` (a shadow variable's id is a good choice) in its `version`'s
 * way. graft puts every declared state in the patch's `klp_patch.states`.
 * The kernel then refuses to load a cumulative patch (graft's default) that
 * does not carry each state the loaded patches declare, with a version at
 * least theirs: a later patch cannot silently drop or downgrade what an
 * earlier one set up. Declare each state once per patch; ids must be
 * non-zero (0 ends the kernel's list).
 *
 * graft_state(id) is this patch's klp_state (its `data` pointer is the
 * patch's to use); graft_prev_state(id) the one of the patch being replaced,
 * valid in callbacks while a transition runs (pre/post patch and unpatch).
 * ------------------------------------------------------------------------ */

struct graft_state_record {
	unsigned long id;
	unsigned int version;
	unsigned int reserved;
};

#define GRAFT_STATE(state_id, state_version)                                  \
	_Static_assert((state_id) != 0,                                        \
		       "GRAFT_STATE: id 0 ends the kernel's list of states");  \
	static const struct graft_state_record __UNIQUE_ID(graft_state_)      \
		__graft_record("states") = { .id = (state_id),                \
					     .version = (state_version) }

/* The patch's own klp_patch, defined by graft's registration stub. */
extern struct klp_patch __graft_patch;

static inline __maybe_unused struct klp_state *graft_state(unsigned long id)
{
	return klp_get_state(&__graft_patch, id);
}

static inline __maybe_unused struct klp_state *
graft_prev_state(unsigned long id)
{
	return klp_get_prev_state(id);
}

/* --------------------------------------------------------------------------
 * Markers: what graft must leave out
 *
 * GRAFT_IGNORE_FUNCTION(fn): fn changed only as a side effect (a header
 * change it does not care about, a debugging aid, code that is never called
 * again); graft keeps the running kernel's fn and does not replace it.
 * Carried code that calls fn calls the running kernel's.
 *
 * GRAFT_IGNORE_SECTION("name"): the same for whatever the section `name` of
 * this file defines (with -ffunction-sections, `.text.fn` is fn's).
 *
 * Both apply to the file they are written in. Ignoring a function the patch
 * adds is refused: the running kernel has nothing to keep.
 * ------------------------------------------------------------------------ */

#define GRAFT_IGNORE_FUNCTION(fn)                                             \
	static void *const __UNIQUE_ID(graft_ignore_function_)                \
		__graft_record("ignore.functions") = (void *)&(fn)

#define GRAFT_IGNORE_SECTION(name)                                            \
	static const char *const __UNIQUE_ID(graft_ignore_section_)           \
		__graft_record("ignore.sections") = (name)

#endif /* _GRAFT_LIVEPATCH_H */
