/* Privilege drop: from root to the config's user: and group: once start-up is done. */
#ifndef CORRAL_PRIVDROP_H
#define CORRAL_PRIVDROP_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Switches every thread of the process to uid:gid (supplementary groups: only gid) and keeps
 * no capability: the uid change from 0 clears the permitted, effective and ambient sets of
 * every thread (glibc applies setresuid to all threads). Then checks that root cannot be
 * regained. Returns 0, or a negative errno with a one-line reason in err.
 */
int privdrop_apply(uid_t uid, gid_t gid, char *err, size_t errlen);

/*
 * Whether uid:gid (with only gid as its group) may create files in the folder that holds
 * path: a log reopen after rotation needs it. 1 yes, 0 no, negative errno if unknown.
 */
int privdrop_dir_writable(const char *path, uid_t uid, gid_t gid);

#endif
