# Writes ("write PATH", tab-separated lines on stdin) and reads ("read PATH") Berkeley DB 1.85
# hash files through libdb1's dbopen(3) (Debian: libdb1-compat), the reference for src/table/db.rs.
import ctypes, os, sys
lib = ctypes.CDLL("libdb.so.2")
class DBT(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]
class DB(ctypes.Structure):
    pass
GETF = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(DB), ctypes.POINTER(DBT), ctypes.POINTER(DBT), ctypes.c_uint)
PUTF = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(DB), ctypes.POINTER(DBT), ctypes.POINTER(DBT), ctypes.c_uint)
SEQF = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(DB), ctypes.POINTER(DBT), ctypes.POINTER(DBT), ctypes.c_uint)
CLOSEF = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(DB))
DB._fields_ = [("type", ctypes.c_int), ("close", CLOSEF), ("del_", ctypes.c_void_p), ("get", GETF), ("put", PUTF), ("seq", SEQF), ("sync", ctypes.c_void_p), ("internal", ctypes.c_void_p), ("fd", ctypes.c_void_p)]
lib.dbopen.restype = ctypes.POINTER(DB)
lib.dbopen.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
DB_HASH = 1
def dbt(b):
    buf = ctypes.create_string_buffer(b, len(b))
    return DBT(ctypes.cast(buf, ctypes.c_void_p), len(b)), buf
mode, path = sys.argv[1], sys.argv[2].encode()
if mode == "write":
    db = lib.dbopen(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644, DB_HASH, None)
    assert db, "dbopen"
    for line in sys.stdin.read().splitlines():
        k, _, v = line.partition("\t")
        (kd, kb), (vd, vb) = dbt(k.encode() + b"\0"), dbt(v.encode() + b"\0")
        assert db.contents.put(db, ctypes.byref(kd), ctypes.byref(vd), 0) == 0
    db.contents.close(db)
else:
    db = lib.dbopen(path, os.O_RDONLY, 0, DB_HASH, None)
    if not db:
        print("dbopen failed", ctypes.get_errno()); sys.exit(1)
    k, v = DBT(), DBT()
    flag = 3  # R_FIRST
    while db.contents.seq(db, ctypes.byref(k), ctypes.byref(v), flag) == 0:
        print(ctypes.string_at(k.data, k.size).rstrip(b"\0").decode() + "\t" + ctypes.string_at(v.data, v.size).rstrip(b"\0").decode())
        flag = 7  # R_NEXT
    db.contents.close(db)
