"""A dataroom zip whose headers understate an entry's size is refused without inflating it into memory."""

import io
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from loopsite.models import AuditEvent
from runs.datarooms import DataroomImportError, _read_capped, _Unreadable, import_dataroom_zip
from runs.models import Dataroom, DataroomFile

pytestmark = pytest.mark.django_db

TRUE_SIZE = 256 * 1024 * 1024  # what the lying entry really unpacks to (about 250 KB deflated)
CLAIMED_SIZE = 1000


def zip_with_lying_entry(*, fix_crc: bool = False) -> bytes:
    """`data/bomb.txt` really holds 256 MB of zeros; both of its headers say 1,000 bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data/overview.md", "# Overview\n")
        with archive.open("data/bomb.txt", "w") as entry:
            block = b"\0" * (1 << 20)
            for _ in range(TRUE_SIZE >> 20):
                entry.write(block)
    data = bytearray(buffer.getvalue())
    name = b"data/bomb.txt"
    crc = zlib.crc32(b"\0" * CLAIMED_SIZE)
    patched = 0
    # Central directory records: CRC at +16, uncompressed size at +24, name length at +28, name at +46.
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46:at + 46 + length]) == name:
            struct.pack_into("<I", data, at + 24, CLAIMED_SIZE)
            if fix_crc:
                struct.pack_into("<I", data, at + 16, crc)
            patched += 1
        at = data.find(b"PK\x01\x02", at + 4)
    # Local file headers: CRC at +14, uncompressed size at +22, name length at +26, name at +30.
    at = data.find(b"PK\x03\x04")
    while at != -1:
        length = struct.unpack_from("<H", data, at + 26)[0]
        if bytes(data[at + 30:at + 30 + length]) == name:
            struct.pack_into("<I", data, at + 22, CLAIMED_SIZE)
            if fix_crc:
                struct.pack_into("<I", data, at + 14, crc)
            patched += 1
        at = data.find(b"PK\x03\x04", at + 4)
    assert patched == 2
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("data/bomb.txt")
    assert info.file_size == CLAIMED_SIZE and info.compress_size < 1024 * 1024
    return bytes(data)


def assert_nothing_stored():
    assert not Dataroom.objects.exists()
    assert not DataroomFile.objects.exists()
    assert not AuditEvent.objects.filter(action="dataroom.upload").exists()


def import_measuring_memory(data: bytes, user) -> tuple[list[str], int]:
    """The import's errors and the most memory (bytes) it held above what was held before it started."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with pytest.raises(DataroomImportError) as refused:
            import_dataroom_zip(name="bomb", fileobj=io.BytesIO(data), user=user)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return refused.value.errors, peak


@pytest.mark.parametrize("fix_crc", [False, True], ids=["bad-checksum", "matching-checksum"])
def test_a_lying_header_is_refused_naming_the_entry_without_inflating_it(engineer, fix_crc):
    errors, peak = import_measuring_memory(zip_with_lying_entry(fix_crc=fix_crc), engineer)
    assert len(errors) == 1 and errors[0].startswith("data/bomb.txt: "), errors
    # Reading the whole entry at once held more than 256 MB; streaming holds a few chunks.
    assert peak < 8 * 1024 * 1024, f"the import held {peak / 1e6:.1f} MB"
    assert_nothing_stored()


def test_the_upload_page_names_the_entry_and_stores_nothing(client_for, engineer):
    data = zip_with_lying_entry()
    response = client_for(engineer).post(reverse("runs:dataroom-upload"), {
        "name": "bomb", "description": "", "zip_file": SimpleUploadedFile("bomb.zip", data, "application/zip"),
    })
    assert response.status_code == 200
    errors = response.context["form"].errors["zip_file"]
    assert any(error.startswith("data/bomb.txt: ") for error in errors), errors
    assert_nothing_stored()


def test_the_cap_is_on_the_bytes_read():
    """_read_capped stops one byte past its limit, whatever the header says."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.txt", b"x" * 200_000)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        info = archive.getinfo("big.txt")
        assert _read_capped(archive, info, limit=200_000) == b"x" * 200_000
        with pytest.raises(_Unreadable, match="unpacks to more than"):
            _read_capped(archive, info, limit=100_000)


def test_an_honest_zip_still_imports(engineer):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("room/a.md", "alpha\n" * 20_000)  # several chunks
        archive.writestr("room/b.bin", bytes(range(256)) * 100)
    room = import_dataroom_zip(name="honest", fileobj=io.BytesIO(buffer.getvalue()), user=engineer)
    files = {f.path: bytes(f.content) for f in room.files.all()}
    assert files == {"a.md": b"alpha\n" * 20_000, "b.bin": bytes(range(256)) * 100}
