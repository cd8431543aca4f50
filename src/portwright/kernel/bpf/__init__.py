"""The BPF toolkit: pure-Python ctypes wrappers over the raw ``bpf()`` syscall.

``consts`` holds the UAPI numbers (cited to include/uapi/linux/bpf.h), ``asm`` a small assembler
with named instruction builders and symbolic jumps, ``syscall`` the raw call and ``BpfError``,
``maps``/``progs``/``links`` typed wrappers, ``fs`` the bpffs pin tree, and ``probe`` the feature
probes that decide whether a mechanism can run here. No compiler, bcc or libbpf at run time.
"""
