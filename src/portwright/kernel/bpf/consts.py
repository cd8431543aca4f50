"""BPF numbers from the kernel's UAPI header, include/uapi/linux/bpf.h (checked against the
header of this machine's linux-libc-dev and the kernel tree). Every value names the enum or struct
it comes from; the kernel never renumbers them, so they can be constants here."""

from __future__ import annotations

# --- enum bpf_cmd (include/uapi/linux/bpf.h) ---
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_DETACH = 34

# --- enum bpf_map_type ---
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LRU_HASH = 9

# Map update flags (BPF_ANY, BPF_NOEXIST, BPF_EXIST) and map_flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
#: map_flags: allocate hash elements on demand (a 64k-entry map costs memory only when used).
BPF_F_NO_PREALLOC = 1 << 0

# --- enum bpf_prog_type ---
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18

# --- enum bpf_attach_type ---
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_INET4_POST_BIND = 12
BPF_CGROUP_INET6_POST_BIND = 13
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30
BPF_CGROUP_INET4_GETSOCKNAME = 31
BPF_CGROUP_INET6_GETSOCKNAME = 32

#: enum bpf_attach_type -> its name, for messages and `audit`.
ATTACH_NAMES = {
    v: k.removeprefix("BPF_CGROUP_").lower()
    for k, v in dict(globals()).items()
    if k.startswith("BPF_CGROUP_") and isinstance(v, int)
}

# --- enum bpf_func_id (the helper numbers, ___BPF_FUNC_MAPPER order) ---
BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_map_update_elem = 2
BPF_FUNC_map_delete_elem = 3
BPF_FUNC_get_current_pid_tgid = 14
BPF_FUNC_get_current_uid_gid = 15
BPF_FUNC_get_socket_cookie = 46
BPF_FUNC_bind = 64
BPF_FUNC_get_current_cgroup_id = 80
BPF_FUNC_get_netns_cookie = 122
BPF_FUNC_get_current_ancestor_cgroup_id = 123

# --- struct bpf_sock_addr: the context of BPF_PROG_TYPE_CGROUP_SOCK_ADDR (all __u32 fields) ---
#: AF_INET / AF_INET6 of the address the user passed (connect, sendmsg, bind, ...).
SA_USER_FAMILY = 0
#: The IPv4 address, network byte order; the program may write it to rewrite the destination.
SA_USER_IP4 = 4
#: __u32 user_ip6[4], network byte order.
SA_USER_IP6 = 8
#: The port in the low 16 bits, network byte order (read as 32 bits, write as 32 bits).
SA_USER_PORT = 24
#: The socket's family, type (SOCK_STREAM/SOCK_DGRAM) and protocol (IPPROTO_TCP/UDP).
SA_FAMILY = 28
SA_TYPE = 32
SA_PROTOCOL = 36
#: sendmsg only: the source address chosen by the user (writable).
SA_MSG_SRC_IP4 = 40
SA_MSG_SRC_IP6 = 44
#: __bpf_md_ptr(struct bpf_sock *, sk).
SA_SK = 64

# --- struct bpf_sock (what ctx->sk points at; read-only here) ---
#: __u32 src_ip4 / src_ip6[4]: the address the socket is bound to (0 / :: when unbound).
SK_SRC_IP4 = 24
SK_SRC_IP6 = 28

#: SO_NETNS_COOKIE (include/uapi/asm-generic/socket.h): getsockopt gives the netns cookie as a u64,
#: the value bpf_get_netns_cookie(ctx) returns for a socket in that namespace (Linux 5.14+).
SO_NETNS_COOKIE = 71

#: Registers: R0 return value, R1-R5 helper arguments (R1 = ctx on entry), R6-R9 callee-saved,
#: R10 the read-only frame pointer (512-byte stack below it).
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

#: ld_imm64 src_reg marker: imm is a map fd the loader turns into a map pointer (BPF_PSEUDO_MAP_FD).
BPF_PSEUDO_MAP_FD = 1
#: BPF_LINK_CREATE / BPF_PROG_ATTACH flag: several programs on one cgroup hook run in order.
BPF_F_ALLOW_MULTI = 1 << 1

#: sizeof(union bpf_attr) on current kernels; we pass a zeroed buffer this large.
ATTR_SIZE = 144
#: The verifier log buffer (log_level 1 fills it on failure).
LOG_SIZE = 1 << 20

#: __NR_bpf per architecture (arch/x86/entry/syscalls/syscall_64.tbl; include/uapi/asm-generic/unistd.h).
SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "arm64": 280, "i686": 357, "riscv64": 280}
