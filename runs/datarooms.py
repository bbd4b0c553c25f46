"""Importing a dataroom from an uploaded zip: checked entry by entry, stored all at once or not at all."""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.template.defaultfilters import filesizeformat

from loopsite.models import AuditEvent

from .models import Dataroom, DataroomFile

# Entries that archivers add and nobody means to upload.
_JUNK_DIRS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_PATH = DataroomFile._meta.get_field("path").max_length
# Stop listing problems after this many; the first ones are enough to fix the zip.
_MAX_REPORTED = 20


class DataroomImportError(Exception):
    """The zip was rejected. `errors` lists what is wrong, each naming the entry."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    parts: list[str]


def import_dataroom_zip(*, name: str, fileobj: BinaryIO, user, description: str = "") -> Dataroom:
    """Create a dataroom from the zip in `fileobj`, or raise DataroomImportError and store nothing."""
    name = (name or "").strip()
    if not name:
        raise DataroomImportError(["The dataroom needs a name."])
    entries = _checked_entries(fileobj)
    contents: list[tuple[str, bytes]] = []
    errors: list[str] = []
    total_read = 0
    with zipfile.ZipFile(fileobj) as archive:
        for entry in entries:
            try:
                data = _read_capped(archive, entry.info, limit=settings.DATAROOM_MAX_FILE_BYTES)
            except _Unreadable as exc:
                errors.append(f"{entry.info.filename}: {exc}")
                break  # a lying entry: read no further into this zip
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
                errors.append(f"{entry.info.filename}: cannot be read ({exc}).")
                continue
            total_read += len(data)
            if total_read > settings.DATAROOM_MAX_TOTAL_BYTES:
                errors.append(
                    f"{entry.info.filename}: the files up to this one unpack to more than "
                    f"{filesizeformat(settings.DATAROOM_MAX_TOTAL_BYTES)}, the limit for a dataroom."
                )
                break
            contents.append(("/".join(entry.parts), data))
    if errors:
        raise DataroomImportError(errors[:_MAX_REPORTED])

    total = sum(len(data) for _, data in contents)
    binary = sum(1 for _, data in contents if not is_text(data))
    try:
        with transaction.atomic():
            dataroom = Dataroom.objects.create(
                name=name, description=description, created_by=user if user and user.is_authenticated else None,
                file_count=len(contents), total_bytes=total,
            )
            DataroomFile.objects.bulk_create(
                [DataroomFile(dataroom=dataroom, path=path, content=data, size=len(data)) for path, data in contents],
                batch_size=100,
            )
            AuditEvent.record(
                actor=user, action="dataroom.upload", obj=dataroom,
                summary=f"Uploaded dataroom {name} ({len(contents)} files)",
                after={"name": name, "files": len(contents), "bytes": total, "binary_files": binary},
            )
    except IntegrityError:
        raise DataroomImportError([f"A dataroom named “{name}” already exists."]) from None
    dataroom.binary_files = binary
    return dataroom


class _Unreadable(Exception):
    """An entry whose bytes cannot be taken as they are: too large as read, or unlike its header."""


# Unpack this much at a time: zipfile's read() of a whole entry inflates as much as the data gives
# in one call (about 2 GB from 1 MB of deflated zeros, whatever the header says) before any size
# check could run.
_CHUNK = 64 * 1024


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, limit: int) -> bytes:
    """The entry's bytes, read in chunks and counted as read (the header is not trusted).

    _Unreadable when more than `limit` bytes come out, when compressed data is left over once the
    header's size is reached (the header understates the size), or when the checksum does not match.
    """
    parts: list[bytes] = []
    size = 0
    with archive.open(info) as stream:
        while True:
            try:
                chunk = stream.read(min(_CHUNK, limit + 1 - size))
            except zipfile.BadZipFile as exc:
                if "CRC" in str(exc):
                    raise _Unreadable("cannot be read: its contents do not match its header's checksum (the zip is damaged).") from None
                raise
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise _Unreadable(f"unpacks to more than {filesizeformat(limit)}; the limit per file is "
                                  f"{filesizeformat(limit)}.")
            parts.append(chunk)
        # zipfile stops at the header's size: compressed data left over means the header lied.
        decompressor = getattr(stream, "_decompressor", None)
        if getattr(stream, "_compress_left", 0) > 0 or getattr(decompressor, "unconsumed_tail", b""):
            raise _Unreadable(f"cannot be read: it holds more data than its header says ({filesizeformat(info.file_size)}); "
                              "the zip is damaged or crafted.")
    return b"".join(parts)


def _checked_entries(fileobj: BinaryIO) -> list[_Entry]:
    """The zip's file entries with cleaned paths, or DataroomImportError listing every problem."""
    size = _size_of(fileobj)
    if size > settings.DATAROOM_MAX_ZIP_BYTES:
        raise DataroomImportError([
            f"The zip is {filesizeformat(size)}; the limit is {filesizeformat(settings.DATAROOM_MAX_ZIP_BYTES)}."
        ])
    try:
        fileobj.seek(0)
        with zipfile.ZipFile(fileobj) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise DataroomImportError([f"The upload is not a readable zip archive ({exc})."]) from None
    finally:
        fileobj.seek(0)

    errors: list[str] = []
    entries: list[_Entry] = []
    for info in infos:
        raw = info.filename
        problem = _path_problem(raw)
        if problem:
            errors.append(f"{raw}: {problem}")
            continue
        parts = [part for part in raw.split("/") if part not in ("", ".")]
        if not parts or any(part in _JUNK_DIRS for part in parts) or parts[-1] in _JUNK_FILES or parts[-1].startswith("._"):
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            errors.append(f"{raw}: is a symbolic link; links are not allowed.")
            continue
        if info.is_dir():
            continue
        if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            errors.append(f"{raw}: is not a regular file.")
            continue
        if info.flag_bits & 0x1:
            errors.append(f"{raw}: is encrypted; upload an unencrypted zip.")
            continue
        if info.file_size > settings.DATAROOM_MAX_FILE_BYTES:
            errors.append(
                f"{raw}: is {filesizeformat(info.file_size)}; "
                f"the limit per file is {filesizeformat(settings.DATAROOM_MAX_FILE_BYTES)}."
            )
            continue
        entries.append(_Entry(info=info, parts=parts))

    if errors:
        raise DataroomImportError(errors[:_MAX_REPORTED] + _more(errors))

    entries = _strip_common_folder(entries)
    if not entries:
        raise DataroomImportError(["The zip holds no files (folders and __MACOSX/.DS_Store entries are skipped)."])

    seen: dict[str, str] = {}
    for entry in entries:
        path = "/".join(entry.parts)
        if len(path) > _MAX_PATH:
            errors.append(f"{entry.info.filename}: the path is longer than {_MAX_PATH} characters.")
        elif path in seen:
            errors.append(f"{entry.info.filename}: appears more than once in the zip (as {path}).")
        else:
            seen[path] = entry.info.filename
    if len(entries) > settings.DATAROOM_MAX_FILES:
        errors.append(f"The zip holds {len(entries)} files; the limit is {settings.DATAROOM_MAX_FILES}.")
    total = sum(entry.info.file_size for entry in entries)
    if total > settings.DATAROOM_MAX_TOTAL_BYTES:
        errors.append(
            f"The files add up to {filesizeformat(total)} unpacked; "
            f"the limit is {filesizeformat(settings.DATAROOM_MAX_TOTAL_BYTES)}."
        )
    if errors:
        raise DataroomImportError(errors[:_MAX_REPORTED] + _more(errors))
    return entries


def _path_problem(raw: str) -> str:
    if "\\" in raw:
        return "contains a backslash; use forward slashes in paths."
    if raw.startswith("/"):
        return "is an absolute path."
    if _DRIVE.match(raw):
        return "starts with a drive letter."
    if any(part == ".." for part in raw.split("/")):
        return "climbs out of the dataroom with “..”."
    if "\x00" in raw or any(ord(ch) < 32 for ch in raw):
        return "contains control characters."
    return ""


def _strip_common_folder(entries: list[_Entry]) -> list[_Entry]:
    """A zip made from a folder puts every file under that folder: drop it."""
    if not entries or any(len(entry.parts) < 2 for entry in entries):
        return entries
    first = {entry.parts[0] for entry in entries}
    if len(first) != 1:
        return entries
    return [_Entry(info=entry.info, parts=entry.parts[1:]) for entry in entries]


def _size_of(fileobj: BinaryIO) -> int:
    size = getattr(fileobj, "size", None)
    if isinstance(size, int):
        return size
    position = fileobj.tell()
    fileobj.seek(0, 2)
    size = fileobj.tell()
    fileobj.seek(position)
    return size


def is_text(data: bytes) -> bool:
    """UTF-8 text without NUL bytes; anything else is kept as binary."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _more(errors: list[str]) -> list[str]:
    extra = len(errors) - _MAX_REPORTED
    return [f"… and {extra} more problem(s)."] if extra > 0 else []
