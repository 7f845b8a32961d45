import gzip
import re

import pytest

from support import write_tar
from pipeline.data.shards.check import ShardError, check_shard, expand_shards


def members(n, prefix="k"):
    out = []
    for i in range(n):
        out += [(f"{prefix}{i}.cls", b"0"), (f"{prefix}{i}.txt", b"hello")]
    return out


def test_expand_globs_braces_dirs_and_missing(tmp_path):
    for i in range(3):
        write_tar(tmp_path / f"s-{i:03d}.tar", members(1))
    (tmp_path / "sub").mkdir()
    write_tar(tmp_path / "sub" / "x.tgz", members(1), mode="w:gz")
    assert expand_shards([str(tmp_path / "s-{000..001}.tar")]) == [str(tmp_path / "s-000.tar"),
                                                                   str(tmp_path / "s-001.tar")]
    assert len(expand_shards([str(tmp_path / "*.tar")])) == 3
    assert expand_shards([str(tmp_path / "sub")]) == [str(tmp_path / "sub" / "x.tgz")]
    # repeats collapse, order kept
    assert len(expand_shards([str(tmp_path / "s-000.tar"), str(tmp_path / "*.tar")])) == 3
    with pytest.raises(ShardError, match="shard not found"):
        expand_shards([str(tmp_path / "nope.tar")])
    with pytest.raises(ShardError, match="no shards match"):
        expand_shards([str(tmp_path / "*.tar.gz")])


def test_good_plain_and_compressed_shards(tmp_path):
    write_tar(tmp_path / "a.tar", members(5))
    write_tar(tmp_path / "b.tar.gz", members(4), mode="w:gz")
    assert check_shard(str(tmp_path / "a.tar")).samples == 5
    assert check_shard(str(tmp_path / "b.tar.gz")).samples == 4


def test_truncated_empty_and_garbage_shards_are_named(tmp_path):
    write_tar(tmp_path / "a.tar", members(5) + [("big.bin", b"x" * 20000)])
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) - 12000])
    write_tar(tmp_path / "b.tgz", members(40), mode="w:gz")
    gz = (tmp_path / "b.tgz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 30)
    for name, pattern, reason in [("cut.tar", "truncated", "shard_truncated"),
                                  ("cut.tgz", "gzip stream truncated", "shard_truncated"),
                                  ("empty.tar", "empty", "shard_corrupt"),
                                  ("junk.tar", "unreadable tar header at byte 0", "shard_corrupt")]:
        check = check_shard(str(tmp_path / name))
        assert check.error and re.search(pattern, check.error), (name, check.error)
        assert check.reason == reason and check.usable == (reason == "shard_truncated"), (name, check)
    # the complete samples before the damage are counted (the one cut off is not): all 5 of cut.tar
    assert check_shard(str(tmp_path / "cut.tar")).samples == 5


def test_non_contiguous_and_repeated_members(tmp_path):
    write_tar(tmp_path / "split.tar", [("a.txt", b"1"), ("b.txt", b"2"), ("a.cls", b"0")])
    assert "not contiguous" in check_shard(str(tmp_path / "split.tar")).error
    write_tar(tmp_path / "twice.tar", [("a.txt", b"1"), ("a.txt", b"2")])
    assert "two .txt members" in check_shard(str(tmp_path / "twice.tar")).error


def test_gz_members_inside_tgz(tmp_path):
    write_tar(tmp_path / "m.tgz", [("d/k1.txt.gz", gzip.compress("你好".encode())), ("d/k1.cls", b"1")], mode="w:gz")
    assert check_shard(str(tmp_path / "m.tgz")).samples == 1


def test_corrupt_header_midway_misnamed_gzip_and_reserved_extension(tmp_path):
    write_tar(tmp_path / "a.tar", members(20))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    data[10240:10340] = b"\xff" * 100
    (tmp_path / "mid.tar").write_bytes(bytes(data))
    assert "unreadable tar header at byte" in check_shard(str(tmp_path / "mid.tar")).error
    write_tar(tmp_path / "plain.tar.gz", members(2))
    assert "not gzip" in check_shard(str(tmp_path / "plain.tar.gz")).error
    write_tar(tmp_path / "key.tar", [("x.__key__", b"1"), ("x.txt", b"2")])
    assert "reserved" in check_shard(str(tmp_path / "key.tar")).error
