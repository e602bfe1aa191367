#!/usr/bin/env python3
"""A table process for mxd's tests, speaking smtpd-tables(7) protocol 0.1.

Usage: proc_table.py DATA STATE [auth]

DATA holds `key value` lines, answered to `lookup|credentials|key`. With `auth` the table
also registers the `auth` service and checks `user:password` keys against DATA's values
as plain passwords. Keys that misbehave on purpose: `slow` is never answered, `crash`
makes the process exit, `dberror` gets an `error` answer. Each start appends a line
`uid=N` to STATE, so a test sees restarts and the user the table ran as.
"""
import os
import sys


def main():
    data, state = sys.argv[1], sys.argv[2]
    auth = len(sys.argv) > 3 and sys.argv[3] == "auth"
    with open(state, "a") as f:
        f.write("uid=%d\n" % os.getuid())
    entries = {}
    with open(data) as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                entries[key] = value
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
    out.write("register|credentials\n")
    if auth:
        out.write("register|auth\n")
    out.write("register|ready\n")
    out.flush()
    for line in sys.stdin:
        fields = line.rstrip("\n").split("|", 7)
        if fields[:2] != ["table", "0.1"] or fields[3] != config["tablename"]:
            sys.exit("bad request: %r" % line)
        op, service, rid = fields[4], fields[5], fields[6]
        key = fields[7] if len(fields) > 7 else ""
        name = key.split(":", 1)[0]
        if name == "slow":
            continue
        if name == "crash":
            sys.exit(0)
        if name == "dberror":
            out.write("%s-result|%s|error|database unreachable\n" % (op, rid))
        elif op == "lookup" and service == "credentials":
            if key in entries:
                out.write("lookup-result|%s|found|%s\n" % (rid, entries[key]))
            else:
                out.write("lookup-result|%s|not-found\n" % rid)
        elif op == "check" and service == "auth":
            user, _, password = key.partition(":")
            found = entries.get(user) == password
            out.write("check-result|%s|%s\n" % (rid, "found" if found else "not-found"))
        else:
            out.write("%s-result|%s|error|unsupported\n" % (op, rid))
        out.flush()


main()
