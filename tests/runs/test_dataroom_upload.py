import html
import io
import stat
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from loopsite.models import AuditEvent
from runs.datarooms import DataroomImportError, import_dataroom_zip
from runs.models import Dataroom, DataroomFile

pytestmark = pytest.mark.django_db

URL = reverse("runs:dataroom-upload")


def make_zip(entries, *, symlinks=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries:
            archive.writestr(name, content)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def upload(client, data: bytes, name="acme", filename="acme.zip"):
    return client.post(URL, {"name": name, "description": "", "zip_file": SimpleUploadedFile(filename, data, "application/zip")})


def errors_of(response) -> list[str]:
    return response.context["form"].errors.get("zip_file", [])


def assert_nothing_stored():
    assert not Dataroom.objects.exists()
    assert not DataroomFile.objects.exists()
    assert not AuditEvent.objects.filter(action="dataroom.upload").exists()


def test_it_requires_login(client):
    assert client.get(URL).status_code == 302


@pytest.mark.parametrize("role", ["reviewer", "approver", "outsider"])
def test_it_requires_an_engineer(client_for, request, role):
    client = client_for(request.getfixturevalue(role))
    assert client.get(URL).status_code == 403
    assert upload(client, make_zip([("a.md", "x")])).status_code == 403
    assert_nothing_stored()


def test_the_form_shows_the_limits(client_for, engineer, settings):
    settings.DATAROOM_MAX_FILES = 123
    html = client_for(engineer).get(URL).content.decode()
    assert "123 files" in html
    assert 'enctype="multipart/form-data"' in html


def test_a_zip_of_a_folder_imports_every_file_without_the_folder(client_for, engineer):
    data = make_zip([
        ("acme/", ""),
        ("acme/overview.md", "# Acme\n"),
        ("acme/financials/p_and_l.csv", "metric,value\nrunway,11\n"),
        ("acme/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00binary"),
        ("__MACOSX/acme/._overview.md", "junk"),
        ("acme/.DS_Store", "junk"),
    ])
    response = upload(client_for(engineer), data)
    dataroom = Dataroom.objects.get(name="acme")
    assert response.status_code == 302
    assert response["Location"] == dataroom.get_absolute_url()
    files = {f.path: bytes(f.content) for f in dataroom.files.all()}
    assert files == {
        "overview.md": b"# Acme\n",
        "financials/p_and_l.csv": b"metric,value\nrunway,11\n",
        "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00binary",
    }
    assert dataroom.file_count == 3
    assert dataroom.total_bytes == sum(len(v) for v in files.values())
    assert dataroom.created_by == engineer
    event = AuditEvent.objects.get(action="dataroom.upload")
    assert event.actor == engineer and event.after["files"] == 3 and event.after["binary_files"] == 1


def test_a_flat_zip_keeps_its_paths(engineer):
    dataroom = import_dataroom_zip(name="flat", fileobj=io.BytesIO(make_zip([("a.md", "A"), ("dir/b.md", "B")])), user=engineer)
    assert sorted(dataroom.files.values_list("path", flat=True)) == ["a.md", "dir/b.md"]


@pytest.mark.parametrize("entry,why", [
    ("../evil.md", "climbs out of the dataroom"),
    ("docs/../../evil.md", "climbs out of the dataroom"),
    ("/etc/passwd", "is an absolute path"),
    ("C:/Windows/evil.md", "starts with a drive letter"),
    ("docs\\evil.md", "contains a backslash"),
])
def test_it_rejects_paths_that_escape(client_for, engineer, entry, why):
    response = upload(client_for(engineer), make_zip([("ok.md", "fine"), (entry, "bad")]))
    assert response.status_code == 200
    errors = errors_of(response)
    assert len(errors) == 1
    assert errors[0].startswith(f"{entry}: ") and why in errors[0]
    assert html.escape(errors[0]) in response.content.decode()  # shown inline, under the field
    assert_nothing_stored()


def test_it_rejects_symlinks(client_for, engineer):
    response = upload(client_for(engineer), make_zip([("ok.md", "fine")], symlinks=[("link.md", "/etc/passwd")]))
    assert errors_of(response) == ["link.md: is a symbolic link; links are not allowed."]
    assert_nothing_stored()


def test_it_rejects_a_file_over_the_limit_naming_it(client_for, engineer, settings):
    settings.DATAROOM_MAX_FILE_BYTES = 100
    response = upload(client_for(engineer), make_zip([("small.md", "x" * 10), ("big.csv", "y" * 101)]))
    errors = errors_of(response)
    assert len(errors) == 1 and errors[0].startswith("big.csv: is 101") and "limit per file is 100" in errors[0]
    assert_nothing_stored()


def test_it_rejects_too_many_files(client_for, engineer, settings):
    settings.DATAROOM_MAX_FILES = 2
    response = upload(client_for(engineer), make_zip([("a.md", "a"), ("b.md", "b"), ("c.md", "c")]))
    assert errors_of(response) == ["The zip holds 3 files; the limit is 2."]
    assert_nothing_stored()


def test_it_rejects_too_much_unpacked_data(client_for, engineer, settings):
    settings.DATAROOM_MAX_TOTAL_BYTES = 150
    response = upload(client_for(engineer), make_zip([("a.md", "a" * 100), ("b.md", "b" * 100)]))
    assert errors_of(response)[0].startswith("The files add up to 200")
    assert_nothing_stored()


def test_it_rejects_an_oversized_zip(client_for, engineer, settings):
    settings.DATAROOM_MAX_ZIP_BYTES = 50
    response = upload(client_for(engineer), make_zip([("a.md", "a" * 500)]), filename="huge.zip")
    errors = errors_of(response)
    assert len(errors) == 1 and errors[0].startswith("huge.zip: the zip is") and "the limit is 50" in errors[0]
    assert_nothing_stored()


def test_it_rejects_something_that_is_not_a_zip(client_for, engineer):
    response = upload(client_for(engineer), b"this is plain text, not a zip")
    errors = errors_of(response)
    assert len(errors) == 1 and errors[0].startswith("The upload is not a readable zip archive")
    assert_nothing_stored()


def test_it_rejects_an_empty_zip(client_for, engineer):
    response = upload(client_for(engineer), make_zip([("folder/", ""), ("__MACOSX/x", "junk"), (".DS_Store", "")]))
    assert errors_of(response) == ["The zip holds no files (folders and __MACOSX/.DS_Store entries are skipped)."]
    assert_nothing_stored()


def test_it_rejects_duplicate_names(engineer):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate as it writes it
        data = make_zip([("a.md", "one"), ("a.md", "two")])
    with pytest.raises(DataroomImportError) as caught:
        import_dataroom_zip(name="dup", fileobj=io.BytesIO(data), user=engineer)
    assert caught.value.errors == ["a.md: appears more than once in the zip (as a.md)."]
    assert_nothing_stored()


def test_it_rejects_a_corrupt_entry(engineer):
    import random

    data = bytearray(make_zip([("a.md", random.Random(1).randbytes(2000))]))
    # Flip bytes inside the compressed data of the only entry (after its 30-byte header and name).
    for offset in range(40, 60):
        data[offset] ^= 0xFF
    with pytest.raises(DataroomImportError) as caught:
        import_dataroom_zip(name="corrupt", fileobj=io.BytesIO(bytes(data)), user=engineer)
    assert caught.value.errors[0].startswith("a.md: cannot be read")
    assert_nothing_stored()


def test_every_bad_entry_is_listed(client_for, engineer):
    response = upload(client_for(engineer), make_zip([("../a.md", "x"), ("/b.md", "y")]))
    errors = errors_of(response)
    assert [e.split(":")[0] for e in errors] == ["../a.md", "/b.md"]


def test_a_taken_name_is_an_inline_error_that_keeps_the_input(client_for, engineer):
    client = client_for(engineer)
    assert upload(client, make_zip([("a.md", "x")])).status_code == 302
    response = upload(client, make_zip([("a.md", "x")]))
    assert response.status_code == 200
    assert response.context["form"].errors["name"] == ["A dataroom named “acme” already exists."]
    assert 'value="acme"' in response.content.decode()
    assert Dataroom.objects.count() == 1


def test_a_missing_file_is_an_inline_error(client_for, engineer):
    response = client_for(engineer).post(URL, {"name": "x"})
    assert response.status_code == 200
    assert response.context["form"].errors["zip_file"] == ["This field is required."]
    assert_nothing_stored()
