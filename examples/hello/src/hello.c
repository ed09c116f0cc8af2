/* The example closure's program: prints a greeting, then the content of a file of another store
 * path, whose absolute path is compiled in (-DGREETING_FILE="..."), which is what gives the
 * hello store path its reference to the greeting store path.
 *
 * No libc: raw Linux x86-64 system calls, so the static binary is a few KB.
 * Built by scripts/make-example:
 *   gcc -static -nostdlib -Os -fno-pie -no-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
 *       -fno-builtin -Wl,--build-id=none -s -DGREETING_FILE='"/nix/store/...-hello-greeting-1.0/share/greeting.txt"' \
 *       -o bin/hello hello.c
 */
#ifndef GREETING_FILE
#error "define GREETING_FILE"
#endif

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_exit 60

static long syscall3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

static long len(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    return n;
}

static int put(int fd, const char *s, long n)
{
    while (n > 0) {
        long w = syscall3(SYS_write, fd, (long)s, n);
        if (w <= 0)
            return -1;
        s += w;
        n -= w;
    }
    return 0;
}

static int puts2(int fd, const char *s) { return put(fd, s, len(s)); }

static char buf[4096];

int hello_main(void)
{
    long fd, n;

    if (puts2(1, "Hello from nixoci!\n") < 0)
        return 1;
    fd = syscall3(SYS_open, (long)GREETING_FILE, 0 /* O_RDONLY */, 0);
    if (fd < 0) {
        puts2(2, "hello: cannot open " GREETING_FILE "\n");
        return 1;
    }
    while ((n = syscall3(SYS_read, fd, (long)buf, sizeof buf)) > 0)
        if (put(1, buf, n) < 0)
            return 1;
    syscall3(SYS_close, fd, 0, 0);
    return n < 0 ? 1 : 0;
}

/* Entry point: align the stack, call hello_main, exit with its status. */
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    and $-16, %rsp\n"
        "    call hello_main\n"
        "    mov %eax, %edi\n"
        "    mov $60, %eax\n"
        "    syscall\n");
