/* Privilege drop: setgroups/setresgid/setresuid to the config's user, no capability kept. */
#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "privdrop.h"

/* Effective and permitted capability sets of the calling thread are empty. */
static int caps_empty(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d) == -1)
		return -errno;
	return !(d[0].effective | d[1].effective | d[0].permitted | d[1].permitted);
}

static int fail(char *err, size_t errlen, const char *call, unsigned id)
{
	int e = errno;

	snprintf(err, errlen, "%s(%u): %s", call, id, strerror(e));
	return -e;
}

int privdrop_apply(uid_t uid, gid_t gid, char *err, size_t errlen)
{
	uid_t r, e, s;

	/* Per thread, and inherited by nothing we start; the uid change below clears caps. */
	prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	if (setgroups(1, &gid) == -1)
		return fail(err, errlen, "setgroups", gid);
	if (setresgid(gid, gid, gid) == -1)
		return fail(err, errlen, "setresgid", gid);
	if (setresuid(uid, uid, uid) == -1)
		return fail(err, errlen, "setresuid", uid);
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	if (getresuid(&r, &e, &s) == -1 || r != uid || e != uid || s != uid) {
		snprintf(err, errlen, "uid is not %u after setresuid", (unsigned)uid);
		return -EPERM;
	}
	/* Belt and braces: with uid != 0, root must be out of reach and no capability left. */
	if (uid != 0 && (setuid(0) != -1 || caps_empty() != 1)) {
		snprintf(err, errlen, "root or a capability is still held after the drop");
		return -EPERM;
	}
	return 0;
}

int privdrop_dir_writable(const char *path, uid_t uid, gid_t gid)
{
	char copy[4096];
	struct stat st;

	if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy))
		return -ENAMETOOLONG;
	if (stat(dirname(copy), &st) == -1)
		return -errno;
	if (uid == 0 || (st.st_uid == uid && (st.st_mode & S_IWUSR) && (st.st_mode & S_IXUSR)))
		return 1;
	if (st.st_uid != uid && st.st_gid == gid && (st.st_mode & S_IWGRP) &&
	    (st.st_mode & S_IXGRP))
		return 1;
	if (st.st_uid != uid && st.st_gid != gid && (st.st_mode & S_IWOTH) &&
	    (st.st_mode & S_IXOTH))
		return 1;
	return 0;
}
