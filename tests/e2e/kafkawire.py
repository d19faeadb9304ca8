"""Hand-built Kafka requests over plain sockets (struct.pack), for tests that must control the bytes:
ApiVersions v0, Metadata v1/v4, Produce v3, ListOffsets v1, Fetch v4 (all non-flexible), and v2 record
batches with CRC-32C. Only what the tests need; responses are parsed into plain dicts/tuples."""

from __future__ import annotations

import socket
import struct
import time

try:
    from crc32c import crc32c as _crc32c_fast
except ImportError:  # pragma: no cover - pure-python fallback
    _crc32c_fast = None


# ---------------------------------------------------------------- CRC-32C (Castagnoli)
def _make_table():
    poly = 0x82F63B78
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    return _crc32c_fast(data) if _crc32c_fast else crc32c_py(data)


# ---------------------------------------------------------------- primitive encoders
def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def bytes_(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items: list[bytes] | None) -> bytes:
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(items)


def varint(v: int) -> bytes:
    v = (v << 1) ^ (v >> 63)  # zigzag
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# ---------------------------------------------------------------- decoding
class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self): return struct.unpack(">b", self.take(1))[0]
    def i16(self): return struct.unpack(">h", self.take(2))[0]
    def i32(self): return struct.unpack(">i", self.take(4))[0]
    def u32(self): return struct.unpack(">I", self.take(4))[0]
    def i64(self): return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def bytes_(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def array(self, fn):
        n = self.i32()
        return None if n < 0 else [fn(self) for _ in range(n)]

    def varint(self):
        shift = 0
        v = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return (v >> 1) ^ -(v & 1)

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------- record batch v2
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def compress(codec: str, data: bytes) -> bytes:
    if codec == "none":
        return data
    if codec == "gzip":
        import gzip
        return gzip.compress(data)
    if codec == "snappy":
        import cramjam
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == "lz4":
        import lz4.frame
        return lz4.frame.compress(data)
    if codec == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(codec)


def record_batch(records: list[tuple[bytes | None, bytes | None]], base_timestamp: int | None = None,
                 base_offset: int = 0, corrupt_crc: bool = False, codec: str = "none") -> bytes:
    """A magic-2 record batch; records = [(key, value), ...], no headers."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    recs = b""
    for delta, (k, v) in enumerate(records):
        body = (i8(0) + varint(0) + varint(delta)
                + (varint(-1) if k is None else varint(len(k)) + k)
                + (varint(-1) if v is None else varint(len(v)) + v)
                + varint(0))
        recs += varint(len(body)) + body
    after_crc = (i16(CODEC_IDS[codec])       # attributes: codec, CreateTime
                 + i32(len(records) - 1)      # lastOffsetDelta
                 + i64(ts) + i64(ts)          # baseTimestamp, maxTimestamp
                 + i64(-1) + i16(-1) + i32(-1)  # producerId, producerEpoch, baseSequence
                 + i32(len(records)) + compress(codec, recs))
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_length = i32(0) + i8(2) + struct.pack(">I", crc) + after_crc  # partitionLeaderEpoch, magic, crc
    return i64(base_offset) + i32(len(after_length)) + after_length


def parse_batches(data: bytes) -> list[dict]:
    """Headers of the v2 batches in a record set, plus the records of uncompressed ones."""
    out = []
    r = Reader(data)
    while r.remaining() >= 12:
        base_offset = r.i64()
        length = r.i32()
        if r.remaining() < length:
            break  # partial trailing batch (allowed in fetch responses)
        body = Reader(r.take(length))
        body.i32()  # partition leader epoch
        magic = body.i8()
        crc = body.u32()
        rest = body.data[body.pos:]
        attrs = body.i16()
        last_delta = body.i32()
        base_ts = body.i64()
        max_ts = body.i64()
        body.i64(), body.i16(), body.i32()
        count = body.i32()
        batch = dict(base_offset=base_offset, last_offset=base_offset + last_delta, magic=magic,
                     crc_ok=crc == crc32c(rest), attributes=attrs, count=count, base_timestamp=base_ts,
                     max_timestamp=max_ts, records=None)
        if attrs & 0x7 == 0:
            recs = []
            for _ in range(count):
                body.varint()  # length
                body.i8()
                ts_delta = body.varint()
                off_delta = body.varint()
                kl = body.varint()
                k = None if kl < 0 else body.take(kl)
                vl = body.varint()
                v = None if vl < 0 else body.take(vl)
                for _ in range(body.varint()):
                    body.take(body.varint())
                    hv = body.varint()
                    if hv >= 0:
                        body.take(hv)
                recs.append((base_offset + off_delta, base_ts + ts_delta, k, v))
            batch["records"] = recs
        out.append(batch)
    return out


# ---------------------------------------------------------------- connection
class KafkaConn:
    """One TCP connection speaking request header v1 (non-flexible requests only)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, client_id: str = "weir-e2e-raw"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.client_id = client_id
        self.corr = 0

    @classmethod
    def to(cls, bootstrap: str, **kw) -> "KafkaConn":
        host, port = bootstrap.rsplit(":", 1)
        return cls(host, int(port), **kw)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, api_key: int, version: int, body: bytes, corr: int | None = None) -> tuple[int, bytes]:
        if corr is None:
            self.corr += 1
            corr = self.corr
        payload = i16(api_key) + i16(version) + i32(corr) + string(self.client_id) + body
        return corr, i32(len(payload)) + payload

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self.recv_exact(4))
        return self.recv_exact(n)

    def request(self, api_key: int, version: int, body: bytes) -> Reader:
        corr, data = self.frame(api_key, version, body)
        self.send_raw(data)
        resp = self.recv_frame()
        r = Reader(resp)
        got = r.i32()
        assert got == corr, f"response correlation id {got}, expected {corr}"
        return r

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes the connection (EOF/reset) within timeout; data read meanwhile is dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False

    # ---- APIs
    def api_versions(self) -> dict[int, tuple[int, int]]:
        r = self.request(18, 0, b"")
        err = r.i16()
        assert err == 0, f"ApiVersions error {err}"
        return {k: (lo, hi) for k, lo, hi in r.array(lambda r: (r.i16(), r.i16(), r.i16()))}

    def metadata(self, topics: list[str] | None, version: int = 1, allow_auto_create: bool = True) -> dict:
        body = array(None if topics is None else [string(t) for t in topics])
        if version >= 4:
            body += i8(1 if allow_auto_create else 0)
        r = self.request(3, version, body)
        if version >= 3:
            r.i32()  # throttle
        brokers = r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
        if version >= 2:
            r.string()  # cluster id
        controller = r.i32()

        def part(r):
            p = dict(error=r.i16(), partition=r.i32(), leader=r.i32(), replicas=r.array(lambda r: r.i32()),
                     isr=r.array(lambda r: r.i32()))
            return p

        def topic(r):
            return dict(error=r.i16(), name=r.string(), internal=r.i8(), partitions=r.array(part))

        return dict(brokers=brokers, controller=controller, topics={t["name"]: t for t in r.array(topic)})

    def produce(self, topic: str, partition: int, records: bytes, acks: int = -1, timeout_ms: int = 10000,
                version: int = 3) -> dict:
        body = (string(None) + i16(acks) + i32(timeout_ms)
                + array([string(topic) + array([i32(partition) + bytes_(records)])]))
        r = self.request(0, version, body)

        def part(r):
            d = dict(partition=r.i32(), error=r.i16(), base_offset=r.i64(), log_append_time=r.i64())
            if version >= 5:
                d["log_start_offset"] = r.i64()
            return d

        res = r.array(lambda r: (r.string(), r.array(part)))
        return {(t, p["partition"]): p for t, ps in res for p in ps}

    def list_offsets(self, topic: str, partition: int, timestamp: int) -> tuple[int, int, int]:
        """ListOffsets v1: (error, timestamp, offset); timestamp -1 = latest, -2 = earliest."""
        body = i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
        r = self.request(2, 1, body)
        res = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
        (_, parts), = res
        (_, err, ts, off), = parts
        return err, ts, off

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20, max_wait_ms: int = 100) -> dict:
        """Fetch v4 of one partition: {error, high_watermark, records: bytes}."""
        body = (i32(-1) + i32(max_wait_ms) + i32(1) + i32(max_bytes) + i8(0)
                + array([string(topic) + array([i32(partition) + i64(offset) + i32(max_bytes)])]))
        r = self.request(1, 4, body)
        r.i32()  # throttle

        def part(r):
            d = dict(partition=r.i32(), error=r.i16(), high_watermark=r.i64(), last_stable_offset=r.i64())
            r.array(lambda r: (r.i64(), r.i64()))
            d["records"] = r.bytes_() or b""
            return d

        res = r.array(lambda r: (r.string(), r.array(part)))
        (_, parts), = res
        (p,), = [parts]
        return p
