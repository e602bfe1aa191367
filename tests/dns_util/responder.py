# A deliberately bad DNS server for mxd's tests, on UDP and TCP at ADDR PORT. What it does
# depends on the first label of the question:
#   ok        one A record 192.0.2.1
#   wrongid   first an answer with another id, then the right one
#   wrongq    only an answer to another question
#   tc        over UDP: the TC bit and nothing else; over TCP: 300 A records (oversized for UDP)
#   loop      an answer record whose name is a compression pointer to itself
#   cut       the answer cut in the middle of a record
#   servfail  RCODE 2
#   silent    never answers
# It prints "ready" once both sockets are bound.
import socket, struct, sys, threading

addr, port = sys.argv[1], int(sys.argv[2])

def question(q):
    i = 12
    labels = []
    while q[i] != 0:
        labels.append(q[i + 1:i + 1 + q[i]].decode())
        i += 1 + q[i]
    return labels, q[12:i + 5]

def header(qid, flags, an):
    return struct.pack(">HHHHHH", qid, flags, 1, an, 0, 0)

def a_rr(ip):
    return b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)

def answers(q, tcp):
    qid = struct.unpack(">H", q[:2])[0]
    labels, qsec = question(q)
    kind = labels[0] if labels else ""
    if kind == "ok":
        return [header(qid, 0x8180, 1) + qsec + a_rr("192.0.2.1")]
    if kind == "wrongid":
        return [header(qid ^ 0x5555, 0x8180, 1) + qsec + a_rr("192.0.2.66"),
                header(qid, 0x8180, 1) + qsec + a_rr("192.0.2.1")]
    if kind == "wrongq":
        other = qsec.replace(b"wrongq", b"other!")
        return [header(qid, 0x8180, 1) + other + a_rr("192.0.2.66")]
    if kind == "tc":
        if not tcp:
            return [header(qid, 0x8380, 0) + qsec]
        return [header(qid, 0x8180, 300) + qsec + b"".join(a_rr("192.0.2.%d" % (i % 250 + 1)) for i in range(300))]
    if kind == "loop":
        off = 12 + len(qsec)
        rr = struct.pack(">H", 0xC000 | off) + struct.pack(">HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
        return [header(qid, 0x8180, 1) + qsec + rr]
    if kind == "cut":
        return [(header(qid, 0x8180, 2) + qsec + a_rr("192.0.2.1") + a_rr("192.0.2.2"))[:-7]]
    if kind == "servfail":
        return [header(qid, 0x8182, 0) + qsec]
    return []

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, port))
tcp.listen(16)

def serve_tcp():
    while True:
        c, _ = tcp.accept()
        try:
            n = struct.unpack(">H", c.recv(2))[0]
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            for a in answers(q, True):
                c.sendall(struct.pack(">H", len(a)) + a)
        except Exception:
            pass
        c.close()

threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    q, peer = udp.recvfrom(4096)
    try:
        for a in answers(q, False):
            udp.sendto(a, peer)
    except Exception:
        pass
