/*
 * ktstr's boot-check init: PID 1 of the initramfs the qemu verifier
 * generates. It mounts proc, sysfs and devtmpfs, reports what the kernel
 * shows as `ktstr-verify: key=value` lines on the console, ends with
 * `ktstr-verify: done` and reboots, which qemu's -no-reboot turns into
 * qemu exiting. (A power-off needs ACPI on x86, which small configs lack;
 * without it the kernel halts and qemu would run on.)
 *
 * Built static (no libc on the initramfs) by the plugin, which caches the
 * binary by this file's hash and the compiler's identity.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#define PREFIX "ktstr-verify: "

/* One write per line, so kernel messages cannot split it. */
static void say(const char *key, const char *value)
{
	char line[512];
	int n = snprintf(line, sizeof(line), PREFIX "%s%s%s\n", key,
			 value ? "=" : "", value ? value : "");
	if (n <= 0)
		return;
	if (n > (int)sizeof(line) - 1) {
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(1, line, n) < 0) {
		/* no console yet: nothing else to tell */
	}
}

static void fail(const char *what, const char *path)
{
	char msg[256];
	snprintf(msg, sizeof(msg), "%s %s: %s", what, path, strerror(errno));
	say("error", msg);
}

/* 0 when `type` is mounted on `dir`, else -1 with errno set. */
static int mount_fs(const char *type, const char *dir)
{
	mkdir(dir, 0755);
	return mount(type, dir, type, 0, NULL);
}

/* The first line of `path` without its newline, or NULL. */
static const char *first_line(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	return buf;
}

/* CPUs in a list such as "0-3,5". */
static long count_cpus(const char *list)
{
	long count = 0;
	const char *p = list;
	while (*p) {
		char *end;
		long a = strtol(p, &end, 10), b = a;
		if (end == p)
			return -1;
		if (*end == '-') {
			p = end + 1;
			b = strtol(p, &end, 10);
			if (end == p || b < a)
				return -1;
		}
		count += b - a + 1;
		p = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return count;
}

int main(void)
{
	char buf[256];
	const char *v;
	struct utsname uts;

	/*
	 * The kernel opened /dev/console (in the initramfs) as fds 0-2; if it
	 * could not, devtmpfs has one.
	 */
	int dev = -1;
	if (fcntl(1, F_GETFD) < 0) {
		dev = mount_fs("devtmpfs", "/dev");
		int fd = open("/dev/console", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
	}
	say("start", NULL);
	if (mount_fs("proc", "/proc") < 0)
		fail("mount", "/proc");
	if (mount_fs("sysfs", "/sys") < 0)
		fail("mount", "/sys");
	/* Not needed for the facts: a kernel without it is reported, not failed. */
	if (dev < 0)
		dev = mount_fs("devtmpfs", "/dev");
	say("devtmpfs", dev == 0 ? "mounted" : "absent");

	if (uname(&uts) == 0)
		say("release", uts.release);
	else
		fail("uname", "");

	v = first_line("/sys/kernel/sched_ext/state", buf, sizeof(buf));
	say("sched_ext", v ? v : "absent");

	say("btf", access("/sys/kernel/btf/vmlinux", R_OK) == 0 ? "present" : "absent");

	v = first_line("/sys/devices/system/cpu/online", buf, sizeof(buf));
	long cpus = v ? count_cpus(v) : -1;
	if (cpus > 0) {
		snprintf(buf, sizeof(buf), "%ld", cpus);
		say("cpus", buf);
	} else {
		fail("read", "/sys/devices/system/cpu/online");
	}

	v = first_line("/proc/uptime", buf, sizeof(buf));
	if (v) {
		buf[strcspn(buf, " ")] = '\0';
		say("uptime", buf);
	}

	say("done", NULL);
	sync();
	reboot(RB_AUTOBOOT);
	fail("reboot", "");
	return 1;
}
