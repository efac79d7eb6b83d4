"""MongoStore, the production document store, against a MongoDB-wire server: SecantusDB, the
server the kit's mongodb tests put in mongod's place (`make unit` installs it in
.cache/secantusdb), started on a loopback port with authorisation enabled and an app user, as
the app logs in on its hosts. The same checks run against
MemoryStore, which the other unit tests use in its place, so the two cannot drift apart."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from catalogue import documents

SERVER = Path(
    os.environ.get(
        "STACKKIT_SECANTUSD",
        Path(__file__).resolve().parents[2] / ".cache/secantusdb/bin/secantusd-py",
    )
)
USER, PASSWORD, DATABASE = "catalogue", "document-store-test-password", "catalogue"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mongod(tmp_path_factory):
    if not SERVER.is_file():
        pytest.skip(f"needs SecantusDB at {SERVER}: run `make unit`")
    import pymongo  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("mongod")
    port = free_port()
    (tmp / "data").mkdir()
    config = tmp / "secantusd.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nstorage_path = "{tmp / "data"}"\n'
        'standalone = true\n\n[storage]\ncache_size = "128M"\n'
    )
    # SecantusDB has no localhost exception: the users are made on a run without
    # authorisation, as the mongodb role does, then the server starts with it.
    process = start(config, port)
    try:
        local = pymongo.MongoClient("127.0.0.1", port, directConnection=True)
        local.admin.command("createUser", "admin", pwd=PASSWORD, roles=["root"])
        local[DATABASE].command("createUser", USER, pwd=PASSWORD, roles=["readWrite"])
        local.close()
    finally:
        stop(process)
    process = start(config, port, "--auth")
    try:
        yield port
    finally:
        stop(process)


def start(config: Path, port: int, *options: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(SERVER), "--config", str(config), *options], stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def use_mongo(settings, port: int, password: str = PASSWORD) -> None:
    """The settings the app's environment file gives it on its hosts."""
    settings.CATALOGUE_DOCUMENT_STORE = "catalogue.documents.MongoStore"
    settings.MONGODB_HOST, settings.MONGODB_PORT = "127.0.0.1", port
    settings.MONGODB_USER, settings.MONGODB_PASSWORD = USER, password
    settings.MONGODB_DB = settings.MONGODB_AUTH_SOURCE = DATABASE
    documents.get_store.cache_clear()


@pytest.fixture(params=["MongoStore", "MemoryStore"])
def any_store(request, settings):
    if request.param == "MongoStore":
        use_mongo(settings, request.getfixturevalue("mongod"))
    else:
        settings.CATALOGUE_DOCUMENT_STORE = "catalogue.documents.MemoryStore"
        documents.get_store.cache_clear()
    yield documents.get_store()
    documents.get_store.cache_clear()


def test_history_holds_the_submission_then_each_fetch_attempt_in_order(any_store):
    product_id = str(uuid.uuid4())
    any_store.save_submission(product_id, {"title": "Kettle", "image_url": "http://x/k.png"})
    any_store.save_image_fetch(product_id, 0, {"outcome": "unreachable"})
    any_store.save_image_fetch(product_id, 1, {"outcome": "ok", "size": 128})
    any_store.save_submission(str(uuid.uuid4()), {"title": "Another product"})

    history = any_store.history(product_id)
    assert [(d["kind"], d.get("attempt")) for d in history] == [
        ("submission", None),
        ("image_fetch", 0),
        ("image_fetch", 1),
    ]
    assert history[0]["data"] == {"title": "Kettle", "image_url": "http://x/k.png"}
    assert history[2]["data"] == {"outcome": "ok", "size": 128}
    assert {d["product_id"] for d in history} == {product_id}
    assert all("_id" not in d for d in history)
    stamps = [d["at"] for d in history]
    assert stamps == sorted(stamps)
    assert all(stamp.endswith("+00:00") for stamp in stamps)  # ISO 8601, in UTC


def test_a_redelivered_event_rewrites_its_document_instead_of_adding_one(any_store):
    product_id = str(uuid.uuid4())
    any_store.save_submission(product_id, {"title": "First delivery"})
    any_store.save_image_fetch(product_id, 0, {"outcome": "timeout"})
    any_store.save_submission(product_id, {"title": "Redelivered"})
    any_store.save_image_fetch(product_id, 0, {"outcome": "ok"})

    history = any_store.history(product_id)
    assert [d["kind"] for d in history] == ["submission", "image_fetch"]
    assert history[0]["data"] == {"title": "Redelivered"}
    assert history[1]["data"] == {"outcome": "ok"}


def test_a_batch_of_submissions_sent_again_adds_no_document(any_store):
    """One insert_many per batch; a redelivered batch finds its documents and adds none."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    any_store.save_submissions({pid: {"title": f"Item {n}"} for n, pid in enumerate(ids)})
    late = str(uuid.uuid4())
    again = {pid: {"title": "Redelivered"} for pid in ids[1:]} | {late: {"title": "Late"}}
    any_store.save_submissions(again)

    for n, pid in enumerate(ids):
        [doc] = any_store.history(pid)
        assert (doc["kind"], doc["data"]["title"]) == ("submission", f"Item {n}")
    [doc] = any_store.history(late)
    assert doc["data"]["title"] == "Late"


def test_an_unknown_product_has_no_history_and_an_unknown_batch_is_none(any_store):
    assert any_store.history(str(uuid.uuid4())) == []
    assert any_store.get_batch(str(uuid.uuid4())) is None


def test_a_batch_summary_is_kept_once_and_read_back(any_store):
    batch_id = str(uuid.uuid4())
    any_store.save_batch(batch_id, {"status": "running", "products": 3})
    any_store.save_batch(batch_id, {"status": "done", "products": 3, "created": 3})
    batch = any_store.get_batch(batch_id)
    assert batch.pop("at").endswith("+00:00")
    assert batch == {"status": "done", "products": 3, "created": 3}


def test_mongo_store_keeps_one_document_per_event_under_a_derived_id(settings, mongod):
    """What the live suite reads back on the docs host: the ids a redelivery rewrites."""
    use_mongo(settings, mongod)
    store = documents.get_store()
    product_id = str(uuid.uuid4())
    store.save_submission(product_id, {"title": "Lamp"})
    store.save_image_fetch(product_id, 0, {"outcome": "ok"})
    store.save_image_fetch(product_id, 0, {"outcome": "ok"})
    ids = sorted(d["_id"] for d in store.db.history.find({"product_id": product_id}))
    documents.get_store.cache_clear()
    assert ids == [f"{product_id}:image_fetch:0", f"{product_id}:submission"]


def test_mongo_store_ping_needs_a_reachable_server(settings):
    """The readiness check's probe fails when nothing answers on the configured port."""
    settings.CATALOGUE_DOCUMENT_STORE = "catalogue.documents.MongoStore"
    settings.MONGODB_HOST, settings.MONGODB_PORT = "127.0.0.1", free_port()
    settings.MONGODB_TIMEOUT_MS = 300
    documents.get_store.cache_clear()
    import pymongo.errors  # noqa: PLC0415

    try:
        with pytest.raises(pymongo.errors.PyMongoError):
            documents.get_store().ping()
    finally:
        documents.get_store.cache_clear()


def test_mongo_store_is_refused_with_a_wrong_password(settings, mongod):
    use_mongo(settings, mongod, password="not-the-password")
    import pymongo.errors  # noqa: PLC0415

    try:
        with pytest.raises(pymongo.errors.OperationFailure):
            documents.get_store().save_submission(str(uuid.uuid4()), {"title": "x"})
    finally:
        documents.get_store.cache_clear()


class RefusingHistory:
    """A `history` collection whose insert_many answers with the given write errors."""

    def __init__(self, details):
        self.details = details
        self.inserted = []

    def insert_many(self, documents, ordered):
        from pymongo.errors import BulkWriteError  # noqa: PLC0415

        self.inserted.append((documents, ordered))
        raise BulkWriteError(self.details)


@pytest.mark.parametrize(
    ("details", "raised"),
    [
        ({"writeErrors": [{"index": 0, "code": 11000}], "writeConcernErrors": []}, False),
        ({"writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 121}]}, True),
        ({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}, True),
    ],
    ids=["duplicates", "a-document-refused", "write-concern"],
)
def test_mongostore_ignores_only_the_duplicates_of_a_batch_sent_again(details, raised):
    """Without a server: the errors MongoDB answers a batch's insert_many with. Duplicate ids
    are the redelivery's and pass; any other error is raised, so the task retries."""
    from pymongo.errors import BulkWriteError  # noqa: PLC0415

    store = object.__new__(documents.MongoStore)
    history = RefusingHistory(details)
    store._history = lambda: history
    batch = {str(uuid.uuid4()): {"title": "A"}, str(uuid.uuid4()): {"title": "B"}}
    if raised:
        with pytest.raises(BulkWriteError):
            store.save_submissions(batch)
    else:
        store.save_submissions(batch)
    [(sent, ordered)] = history.inserted
    assert ordered is False
    assert [doc["_id"] for doc in sent] == [f"{pid}:submission" for pid in batch]
