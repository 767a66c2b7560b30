"""Hostile evidence packages: ``verify`` never extracts, never trusts a name or a size, and reports a problem for
each kind of bad zip (exit status 1 with the problem lines), in bounded memory and time."""

from __future__ import annotations

import hashlib
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.report import verify_package
from audit.report.verify import MAX_MEMBER_BYTES

_CHUNK = 1 << 24  # 16 MiB of zeros deflate to 16,315 bytes at level 9


def deflated_zeros(n_bytes: int) -> tuple[bytes, int]:
    """Raw deflate data of ``n_bytes`` zero bytes (a multiple of 16 MiB) built from one compressed block repeated,
    and its CRC-32: the payload of a decompression bomb without ever holding the zeros."""
    assert n_bytes % _CHUNK == 0
    zeros = bytes(_CHUNK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no reference before it
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    crc = 0
    for _ in range(n_bytes // _CHUNK):
        crc = zlib.crc32(zeros, crc)
    return block * (n_bytes // _CHUNK) + final, crc


def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """Write a zip byte by byte: ``members`` are (name, payload, method, crc, uncompressed size) as declared, so a
    test can declare what zipfile would never write (unsafe names, duplicates, sizes that lie)."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        raw = name.encode("utf-8")
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x800, method, 0, 0x21, crc, len(payload), size, len(raw), 0) + raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x800, method, 0, 0x21, crc, len(payload), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(bytes(body) + bytes(central) + end)
    return path


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, 0, zlib.crc32(data), len(data)


def listed(*members: tuple[str, bytes]) -> tuple[str, bytes, int, int, int]:
    """A SHA256SUMS member listing ``(name, data)`` pairs with their true digests."""
    return stored("SHA256SUMS", "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members).encode())


def test_the_bomb_builder_makes_a_real_deflate_member(tmp_path):
    """Oracle for the builder: zipfile itself inflates a 32 MiB instance to 32 MiB of zeros with a matching CRC."""
    payload, crc = deflated_zeros(2 * _CHUNK)
    path = raw_zip(tmp_path / "small-bomb.zip", [("zeros.bin", payload, 8, crc, 2 * _CHUNK)])
    with zipfile.ZipFile(path) as zf:
        assert zf.read("zeros.bin") == bytes(2 * _CHUNK)
    assert len(payload) < 2 * _CHUNK // 1000


def test_a_3_gib_zero_member_in_a_3_mb_zip_is_refused_in_bounded_memory(tmp_path):
    size = 3 << 30
    payload, crc = deflated_zeros(size)
    bomb = ("zeros.bin", payload, 8, crc, size)
    path = raw_zip(tmp_path / "bomb.zip", [listed(("zeros.bin", b"")), bomb])
    assert 3_000_000 < path.stat().st_size < 3_300_000
    tracemalloc.start()
    start = time.perf_counter()
    result = verify_package(path)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"zeros.bin: declares 3,221,225,472 bytes, above the limit of {MAX_MEMBER_BYTES:,}; refused, not read" in result.problems
    assert peak < 32 << 20 and elapsed < 5, (peak, elapsed)


def test_a_member_whose_declared_size_lies_is_read_only_up_to_the_limit(tmp_path):
    payload, crc = deflated_zeros(4 * _CHUNK)
    liar = ("zeros.bin", payload, 8, crc, 1000)  # declares 1,000 bytes, inflates to 64 MiB
    path = raw_zip(tmp_path / "liar.zip", [listed(("zeros.bin", bytes(1000))), liar])
    tracemalloc.start()
    result = verify_package(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert any(p.startswith("zeros.bin: cannot be read (Bad CRC-32") for p in result.problems), result.problems
    assert peak < 16 << 20, peak
    over = verify_package(raw_zip(tmp_path / "over.zip", [listed(), ("big.bin", payload, 8, crc, 4 * _CHUNK)]), max_member_bytes=1 << 20)
    assert "big.bin: declares 67,108,864 bytes, above the limit of 1,048,576; refused, not read" in over.problems


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "/etc/cron.d/job", "tables/../../escape.txt", "C:/Windows/evil.txt", "..\\escape.txt"],
    ids=["parent", "absolute", "nested-parent", "drive", "backslash-parent"],
)
def test_unsafe_member_names_are_refused_even_when_listed_with_the_right_digest(tmp_path, name):
    data = b"payload"
    path = raw_zip(tmp_path / "unsafe.zip", [listed((name, data)), stored(name, data)])
    problems = verify_package(path).problems
    assert f"{name!r}: unsafe member name (absolute path or '..'); refused, not read" in problems
    assert f"{name!r}: unsafe name listed in SHA256SUMS; refused, not read" in problems
    assert not (tmp_path.parent / "escape.txt").exists()


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        (lambda: [listed(("a.txt", b"1")), stored("a.txt", b"1"), stored("a.txt", b"2")], "'a.txt': appears 2 times in the zip; refused"),
        (lambda: [stored("SHA256SUMS", b"not a checksum line\n")], "SHA256SUMS line 1: expected '<64 hex digits>  <name>'; found 'not a checksum line'"),
        (lambda: [stored("report.html", b"x")], "SHA256SUMS is missing or unreadable"),
        (lambda: [listed(("results.json", b"{not json")), stored("results.json", b"{not json")], "results.json: not valid JSON"),
        (lambda: [listed(("protocol.yaml", b"a: 1\na: 2\n")), stored("protocol.yaml", b"a: 1\na: 2\n"), *_results_member()], "protocol.yaml: not valid YAML (duplicate key 'a'"),
    ],
    ids=["duplicate-member", "malformed-sums", "no-sums", "results-not-json", "protocol-duplicate-key"],
)
def test_each_kind_of_malformed_package_is_a_problem_not_a_crash(tmp_path, members, expected):
    result = verify_package(raw_zip(tmp_path / "bad.zip", members()))
    assert not result.ok and any(p.startswith(expected) for p in result.problems), result.problems


def _results_member() -> list[tuple[str, bytes, int, int, int]]:
    return [stored("results.json", b'{"protocol_sha256": "' + b"0" * 64 + b'"}')]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"plain text"], ids=["empty", "truncated", "text"])
def test_not_a_zip_is_reported_by_the_cli_with_exit_1(tmp_path, content):
    path = tmp_path / "package.zip"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["verify", str(path)])
    assert result.exit_code == 1 and "not a readable zip" in result.output and "Traceback" not in result.output
