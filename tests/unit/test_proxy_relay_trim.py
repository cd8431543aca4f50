"""The shared relay gives back free heap pages and its pages of read-only files once its
registrations settle (proxy/shared.py ``trim_memory``, issue 15): only read-only file mappings
with no private copy of a page are given back, and the process runs on (the pages it uses come
back from the page cache). No root needed."""

from __future__ import annotations

import json
import subprocess
import sys

from portwright.proxy.shared import clean_file_ranges

SMAPS = """\
00400000-00401000 r--p 00000000 fe:00 1 /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             0 kB
7f0000000000-7f0000200000 r-xp 00001000 fe:00 2 /usr/lib/libpython3.11.so.1.0
Rss:                3900 kB
Anonymous:             0 kB
7f0000200000-7f0000210000 r--p 00200000 fe:00 2 /usr/lib/libpython3.11.so.1.0
Rss:                  64 kB
Anonymous:            64 kB
7f0000210000-7f0000220000 rw-p 00210000 fe:00 2 /usr/lib/libpython3.11.so.1.0
Rss:                  64 kB
Anonymous:            64 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f0000500000-7f0000501000 r--s 00000000 fe:00 3 /dev/shm/with space in name
Anonymous:             0 kB
"""


def test_clean_file_ranges_lists_only_unmodified_read_only_files() -> None:
    assert clean_file_ranges(SMAPS) == [
        (0x400000, 0x401000),  # the program, read-only
        (0x7F0000000000, 0x7F0000200000),  # libpython's code
        (0x7F0000500000, 0x7F0000501000),  # a shared read-only file mapping
    ]  # not: relocated read-only data (private copies), writable data, anonymous memory, vdso


def test_clean_file_ranges_of_nothing() -> None:
    assert clean_file_ranges("") == []


PROBE = """
import json, sys
from portwright.proxy import shared

def resident(ranges):
    total, keep = 0, False
    for line in open("/proc/self/smaps"):
        p = line.split()
        if "-" in p[0] and not p[0].endswith(":"):
            lo, hi = (int(x, 16) for x in p[0].split("-"))
            keep = (lo, hi) in ranges
        elif p[0] == "Rss:" and keep:
            total += int(p[1])
    return total

ranges = set(shared.clean_file_ranges(open("/proc/self/smaps").read()))
before = resident(ranges)
advised = shared.trim_memory()
after = resident(ranges)
# the interpreter goes on: new code runs, a module is imported, its pages come back as needed
import ipaddress
ok = str(ipaddress.ip_address("198.18.0.1")) == "198.18.0.1" and sum(range(10)) == 45
print(json.dumps({"before": before, "after": after, "advised": advised, "ok": ok}))
"""


def test_trim_gives_back_read_only_file_pages_and_the_process_runs_on() -> None:
    out = subprocess.run([sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"] and r["advised"] > 0
    assert r["before"] > 1024, r  # libpython's code the imports ran, at least 1 MB
    assert r["after"] < r["before"] / 2, r


HEAP_PROBE = """
import json
from portwright.proxy import shared

def heap_kb():
    name = ""
    for line in open("/proc/self/smaps"):
        p = line.split()
        if "-" in p[0] and not p[0].endswith(":"):
            name = p[5] if len(p) > 5 else ""
        elif p[0] == "Rss:" and name == "[heap]":
            return int(p[1])
    return 0

# 8 MB of 2 KB buffers on the heap; every 64th stays, pinning the heap's top: free() returns
# nothing of what lies below it
blocks = [bytes(2048) for _ in range(4096)]
keep = blocks[::64]
del blocks
before = heap_kb()
shared.trim_memory()
after = heap_kb()
print(json.dumps({"before": before, "after": after, "kept": len(keep)}))
"""


def test_trim_gives_back_free_heap_pages() -> None:
    out = subprocess.run([sys.executable, "-I", "-c", HEAP_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["before"] > 6 * 1024, r  # the freed buffers' pages were still resident
    assert r["after"] < r["before"] - 4 * 1024, r
