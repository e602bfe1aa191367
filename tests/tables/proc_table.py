#!/usr/bin/env python3
"""A table process for mxd's tests, speaking smtpd-tables(7) protocol 0.1.

Usage: proc_table.py DATA STATE [SERVICE,...]

DATA holds `key value` lines (or lone keys), answered to `lookup|SERVICE|key` for any
service, and in turn to `fetch|SERVICE`. The table registers `credentials` and the
services named (comma-separated); with `auth` it checks `user:password` keys against
DATA's values as plain passwords; a `check` of any other service says whether DATA has
the key. Keys that misbehave on purpose (alone or as an address's local part): `slow` is
never answered, `crash` makes the process exit, `dberror` gets an `error` answer, and
`parentfails` gets an `error` answer only in mxd's parent process (its own table process,
found by the name of its nearest mxd ancestor), a normal one elsewhere. Each start appends a line
`uid=N` to STATE, so a test sees restarts and the user the table ran as.
"""
import os
import sys


def in_mxd_parent():
    pid = os.getppid()
    for _ in range(4):
        try:
            with open("/proc/%d/comm" % pid) as f:
                comm = f.read().strip()
            if comm.startswith("mxd"):
                return comm == "mxd: parent"
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def main():
    data, state = sys.argv[1], sys.argv[2]
    extra = sys.argv[3].split(",") if len(sys.argv) > 3 else []
    with open(state, "a") as f:
        f.write("uid=%d\n" % os.getuid())
    entries, order = {}, []
    with open(data) as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                entries[key] = value
                order.append(key)
    config = {}
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line == "config|ready":
            break
        _, key, value = line.split("|", 2)
        config[key] = value
    if config.get("protocol") != "0.1" or not config.get("tablename"):
        sys.exit("bad handshake: %r" % config)
    out = sys.stdout
    for service in ["credentials"] + extra:
        out.write("register|%s\n" % service)
    out.write("register|ready\n")
    out.flush()
    fetched = 0
    for line in sys.stdin:
        fields = line.rstrip("\n").split("|", 7)
        if fields[:2] != ["table", "0.1"] or fields[3] != config["tablename"]:
            sys.exit("bad request: %r" % line)
        op, service, rid = fields[4], fields[5], fields[6]
        key = fields[7] if len(fields) > 7 else ""
        name = key.split(":", 1)[0].split("@", 1)[0]
        if name == "slow":
            continue
        if name == "crash":
            sys.exit(0)
        if name == "dberror" or (name == "parentfails" and in_mxd_parent()):
            out.write("%s-result|%s|error|database unreachable\n" % (op, rid))
        elif op == "fetch":
            if order:
                out.write("fetch-result|%s|found|%s\n" % (rid, order[fetched % len(order)]))
                fetched += 1
            else:
                out.write("fetch-result|%s|not-found\n" % rid)
        elif op == "lookup":
            if key in entries:
                out.write("lookup-result|%s|found|%s\n" % (rid, entries[key]))
            else:
                out.write("lookup-result|%s|not-found\n" % rid)
        elif op == "check" and service == "auth":
            user, _, password = key.partition(":")
            found = entries.get(user) == password
            out.write("check-result|%s|%s\n" % (rid, "found" if found else "not-found"))
        elif op == "check":
            out.write("check-result|%s|%s\n" % (rid, "found" if key in entries else "not-found"))
        else:
            out.write("%s-result|%s|error|unsupported\n" % (op, rid))
        out.flush()


main()
