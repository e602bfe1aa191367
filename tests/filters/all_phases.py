#!/usr/bin/env python3
"""A filter for mxd's tests: registers every smtp-in phase, data-line and every report
event, checks each line mxd sends against smtpd-filters(7) 0.7 (exits 3 on the first one
that does not conform), and answers each kind of response, chosen by the parameter:

  helo/ehlo reject.test      reject|550 5.7.1 helo refused
  helo/ehlo disconnect.test  disconnect|421 4.7.0 bye
  mail-from junk@…           junk
  mail-from rewrite@…        rewrite|new@example.org
  mail-from report@…         report|noted sender   (then the chain goes on)
  rcpt-to reject@…           reject|550 5.1.1 no such user
  rcpt-to bad-reply@…        reject|hello          (not a reply: mxd must turn it into a 421)
  help                       reject|502 5.5.1 no help from the filter
  anything else              proceed

Data lines are echoed byte for byte (8-bit text included, as OpenSMTPD passes it), with
`X-Filtered: all_phases` added before the first one. Every
event and phase seen is appended to the log file given as argv[1], after `uid=N`: a report
as `EVENT PARAMS` (its parameters after the session id, joined by `|`), a request as
`PHASE PARAM`.
"""
import re
import sys

PHASES = ["connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
          "data-line", "rset", "quit", "noop", "help", "wiz", "commit"]
EVENTS = {  # event: number of parameters after the session id (None: at least 1)
    "link-connect": 4, "link-disconnect": 0, "link-greeting": 1, "link-identify": 2,
    "link-tls": 1, "link-auth": 2, "tx-reset": 1, "tx-begin": 1, "tx-mail": 3, "tx-rcpt": 3,
    "tx-envelope": 2, "tx-data": 2, "tx-commit": 2, "tx-rollback": 1, "protocol-client": None,
    "protocol-server": None, "filter-report": 3, "filter-response": None, "timeout": 0,
}
# Bytes that are not UTF-8 (a Latin-1 message) round-trip through surrogates.
sys.stdin.reconfigure(errors="surrogateescape")
sys.stdout.reconfigure(errors="surrogateescape")
log = open(sys.argv[1], "a", buffering=1, errors="surrogateescape")


def bad(line):
    sys.stderr.write("BAD LINE: %r\n" % line)
    sys.exit(3)


def out(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()


log.write("uid=%d\n" % __import__("os").getuid())
for line in sys.stdin:
    line = line.rstrip("\n")
    if line == "config|ready":
        break
    if not line.startswith("config|"):
        bad(line)
for p in PHASES:
    out("register|filter|smtp-in|" + p)
for e in EVENTS:
    out("register|report|smtp-in|" + e)
out("register|ready")

fresh = {}  # session -> no data line yet
for line in sys.stdin:
    line = line.rstrip("\n")
    f = line.split("|")
    if len(f) < 6 or f[1] != "0.7" or not re.fullmatch(r"\d+\.\d{6}", f[2]) or f[3] != "smtp-in":
        bad(line)
    if not re.fullmatch(r"[0-9a-f]{16}", f[5]):
        bad(line)
    if f[0] == "report":
        ev, params = f[4], f[6:]
        want = EVENTS.get(ev, -1)
        if want == -1 or (want is not None and len(params) != want and ev not in ("filter-report",)):
            bad(line)
        if ev == "link-connect" and (params[1] not in ("pass", "fail", "error") or ":" not in params[2]):
            bad(line)
        if ev in ("tx-begin", "tx-mail", "tx-rcpt", "tx-commit") and not re.fullmatch(r"[0-9a-f]{8}", params[0]):
            bad(line)
        log.write(" ".join([ev] + (["|".join(params)] if params else [])) + "\n")
        continue
    if f[0] != "filter" or len(f) < 7 or f[4] not in PHASES or not re.fullmatch(r"[0-9a-f]{16}", f[6]):
        bad(line)
    phase, sid, tok = f[4], f[5], f[6]
    param = "|".join(f[7:])
    head = "filter-result|%s|%s|" % (sid, tok)
    if phase == "data-line":
        if fresh.get(sid, True):
            out("filter-dataline|%s|%s|X-Filtered: all_phases" % (sid, tok))
            fresh[sid] = False
        out("filter-dataline|%s|%s|%s" % (sid, tok, param))
        if param == ".":
            fresh[sid] = True
        log.write("data-line %s\n" % param)
        continue
    log.write("%s %s\n" % (phase, param))
    if phase == "connect" and len(f) != 9:
        bad(line)
    if phase in ("helo", "ehlo") and param == "reject.test":
        out(head + "reject|550 5.7.1 helo refused")
    elif phase in ("helo", "ehlo") and param == "disconnect.test":
        out(head + "disconnect|421 4.7.0 bye")
    elif phase == "mail-from" and param.startswith("junk@"):
        out(head + "junk")
    elif phase == "mail-from" and param.startswith("rewrite@"):
        out(head + "rewrite|new@example.org")
    elif phase == "mail-from" and param.startswith("report@"):
        out(head + "report|noted sender")
    elif phase == "rcpt-to" and param.startswith("reject@"):
        out(head + "reject|550 5.1.1 no such user")
    elif phase == "rcpt-to" and param.startswith("bad-reply@"):
        out(head + "reject|hello")
    elif phase == "help":
        out(head + "reject|502 5.5.1 no help from the filter")
    else:
        out(head + "proceed")
