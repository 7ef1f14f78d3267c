"""A hostile directory: an LDAPv3 server over TLS (stdlib only) that answers
certmapd's binds and searches with whatever a test scenario asks for —
malformed values, referrals, too many entries, entries that do not match,
garbage bytes — to show that LDAP answers are treated as hostile input.

BER is written and read by hand here, for the few messages that matter:
BindRequest/Response, SearchRequest, SearchResultEntry/Reference/Done,
Unbind and Abandon (RFC 4511).

certmapd_for() starts certmapd against such directories.
"""
import os
import socket
import ssl
import threading

from harness import pki

BASE = "DC=corp,DC=example,DC=test"


# ---- BER ------------------------------------------------------------------------

def _len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag, content):
    return bytes([tag]) + _len(len(content)) + content


def octets(s, tag=0x04):
    return tlv(tag, s if isinstance(s, bytes) else s.encode())


def integer(n, tag=0x02):
    b = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return tlv(tag, b)


def seq(*parts, tag=0x30):
    return tlv(tag, b"".join(parts))


def message(msgid, op):
    return seq(integer(msgid), op)


def result(tag, code=0, diag=""):
    return tlv(tag, integer(code, 0x0A) + octets("") + octets(diag))


def entry(msgid, dn, attrs):
    """attrs: list of (name, [values as str or bytes])."""
    body = b"".join(seq(octets(name), tlv(0x31, b"".join(octets(v) for v in vals)))
                    for name, vals in attrs)
    return message(msgid, tlv(0x64, octets(dn) + seq(body)))


def reference(msgid, uri):
    return message(msgid, tlv(0x73, octets(uri)))


def read_tlv(buf, pos):
    """(tag, content start, end) of the TLV at <pos>, or None if incomplete."""
    if pos + 2 > len(buf):
        return None
    tag, first = buf[pos], buf[pos + 1]
    if first < 0x80:
        length, start = first, pos + 2
    else:
        n = first & 0x7F
        if pos + 2 + n > len(buf):
            return None
        length, start = int.from_bytes(buf[pos + 2:pos + 2 + n], "big"), pos + 2 + n
    if start + length > len(buf):
        return None
    return tag, start, start + length


# ---- the server ------------------------------------------------------------------

class FakeDC:
    """LDAPS on 127.0.0.1:<port>. <answer>(base, scope) returns, for an account
    search (subtree), a list of protocol-op builders taking the message id, or
    bytes to send raw. Bind always succeeds; the base-DN check and the NetBIOS
    lookup get well-formed answers."""

    def __init__(self, cert, key, base_dn, answer, port=0):
        self.base_dn = base_dn
        self.answer = answer
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.searches = 0
        self.stopped = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self):
        return f"ldaps://127.0.0.1:{self.port}"

    def stop(self):
        """Closes the listener and every connection (a directory going down)."""
        self.stopped = True
        self.sock.close()
        for c in list(self.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        while not self.stopped:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.conns.append(conn)
        if self.stopped:
            conn.close()
            return
        buf = b""
        try:
            while True:
                got = read_tlv(buf, 0)
                while got is None:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    got = read_tlv(buf, 0)
                _, start, end = got
                msg, buf = buf[start:end], buf[end:]
                _, s, e = read_tlv(msg, 0)
                msgid = int.from_bytes(msg[s:e], "big")
                op_tag, os_, oe = read_tlv(msg, e)
                if op_tag == 0x60:                      # BindRequest
                    conn.sendall(message(msgid, result(0x61)))
                elif op_tag == 0x42:                    # UnbindRequest
                    return
                elif op_tag == 0x63:                    # SearchRequest
                    _, bs, be = read_tlv(msg, os_)
                    base = msg[bs:be].decode("utf-8", "replace")
                    _, ss, se = read_tlv(msg, be)
                    scope = msg[ss]
                    conn.sendall(self._search(msgid, base, scope))
                # AbandonRequest and anything else: no answer
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _search(self, msgid, base, scope):
        done = message(msgid, result(0x65))
        if base.lower().startswith("cn=partitions"):
            return entry(msgid, f"CN=CORP,{base}", [("nETBIOSName", ["CORP"])]) + done
        if scope != 2:                                  # base-DN check, constructed UAC
            return entry(msgid, base, [("objectClass", ["top"])]) + done
        self.searches += 1
        out = self.answer(base, scope)
        if isinstance(out, bytes):
            return out
        return b"".join(op(msgid) for op in out) + done


# ---- certmapd against it ----------------------------------------------------------

def certmapd_for(env, uris, ca=None):
    """A backend, and certmapd mapping by altSecurityIdentities through the
    directories <uris> (FakeDCs on BASE: any bind password does), with no
    identity cache and [ldap] timeout = 2 s; <ca> verifies the directories'
    certificates (default: the test PKI's root). Returns both."""
    secret = os.path.join(env.dir, "secret")
    with open(secret, "w") as f:
        f.write("any-password")
    b = env.backend()
    d = env.certmapd(b, {
        "mapping": {"source": "ldap", "methods": "altsecid", "cache_ttl": "0",
                    "negative_cache_ttl": "0"},
        "ldap": {"uri": " ".join(uris), "base_dn": BASE, "bind_dn": "svc-seg@corp.example.test",
                 "bind_password_file": secret, "ca_file": ca or pki("root-ca.crt"),
                 "timeout": "2s"},
    })
    return b, d
