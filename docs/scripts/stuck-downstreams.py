# For fanout-stuck-sink.sh. Two downstreams: 9101 never answers (accepts and holds), 9102 answers 200
# and logs arrival times of order ids.
import socket, threading, time, json, sys, re
import os
log = open(os.environ.get("LOG", "accounting.log"), "w")
def hang(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(1024)
    conns = []
    while True:
        c, _ = s.accept(); conns.append(c)
def ok_conn(c):
    buf = b""
    while True:
        try:
            d = c.recv(65536)
        except Exception:
            return
        if not d: return
        buf += d
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0: break
            head = buf[:i].decode("latin1"); m = re.search(r"(?i)content-length:\s*(\d+)", head)
            n = int(m.group(1)) if m else 0
            if len(buf) < i + 4 + n: break
            body = buf[i+4:i+4+n]; buf = buf[i+4+n:]
            mm = re.search(rb'"order_id"\s*:\s*"([^"]+)"', body)
            log.write("%s %.6f\n" % (mm.group(1).decode() if mm else "?", time.time())); log.flush()
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
def ok(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(1024)
    while True:
        c, _ = s.accept(); threading.Thread(target=ok_conn, args=(c,), daemon=True).start()
threading.Thread(target=hang, args=(9101,), daemon=True).start()
ok(9102)
