"""What many test files share."""
import struct
import zlib

from benchmarks.cli import main


def bench(*args):
    """Exit status of `bench ARGS` run in this process (argparse's own rejections arrive as SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code


def huge_png(path, side=15000):
    """The header of a side x side px PNG, no pixels: PIL refuses it on opening, so the test never
    allocates them."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
