"""Runs a command and reports its peak resident memory, its wall time and, optionally, when a given line
first appeared on its stderr.

    python peak_rss.py --report OUT.json [--first-line REGEX] [--log FILE] -- COMMAND [ARGS...]

The child's stdout is passed through untouched (so `> file` captures it); its stderr is read line by line,
copied to --log (or to our stderr) and matched against --first-line. The peak is the kernel's ru_maxrss
of the child as returned by wait4: the largest resident set of the child or of any descendant it waited
for, in KiB on Linux, sampled by the kernel itself (no polling to miss a short spike). File pages the
child has mapped and touched count as resident, so a memory-mapped corpus shows up as far as it was read.

The report is one JSON object: command, exit_code, wall_seconds (launch to exit), peak_rss_bytes, and
first_line_seconds / first_line (launch to the first matching stderr line; null when none matched).
Our exit status is the child's.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", required=True, help="where to write the JSON report")
    parser.add_argument("--first-line", help="regular expression: time until a stderr line matches it")
    parser.add_argument("--log", help="file for the child's stderr [default: our stderr]")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    pattern = re.compile(args.first_line) if args.first_line else None
    log = open(args.log, "w") if args.log else sys.stderr
    first = {"seconds": None, "line": None}

    started = time.perf_counter()
    try:
        child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    except OSError as err:
        sys.exit(f"cannot run {command[0]}: {err}")

    def copy_stderr():
        for line in child.stderr:
            if pattern is not None and first["seconds"] is None and pattern.search(line):
                first["seconds"] = time.perf_counter() - started
                first["line"] = line.rstrip("\n")
            log.write(line)
            log.flush()

    reader = threading.Thread(target=copy_stderr, daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    reader.join()
    # Popen must not wait for a pid we already reaped.
    child.returncode = os.waitstatus_to_exitcode(status)
    report = {
        "command": command,
        "exit_code": child.returncode,
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "first_line_seconds": first["seconds"],
        "first_line": first["line"],
    }
    with open(args.report, "w") as out:
        json.dump(report, out)
        out.write("\n")
    if log is not sys.stderr:
        log.close()
    sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


if __name__ == "__main__":
    main()
