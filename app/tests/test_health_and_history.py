import threading
import time
import uuid

import pytest

from catalogue import health

pytestmark = pytest.mark.django_db


def ok(timeout):
    return None


def broken(timeout):
    raise ConnectionRefusedError("connection refused")


def hangs(timeout):
    time.sleep(timeout + 1)


def test_healthz_needs_no_dependency(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_when_every_dependency_answers(client, settings):
    settings.CATALOGUE_READINESS_CHECKS = {"postgresql": "tests.test_health_and_history.ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["postgresql"]["ok"] is True


def test_readyz_is_503_and_names_the_failing_dependency(client, settings):
    settings.CATALOGUE_READINESS_CHECKS = {
        "postgresql": "tests.test_health_and_history.ok",
        "rabbitmq": "tests.test_health_and_history.broken",
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["postgresql"]["ok"] is True
    # The class only: an error's text can name internal hosts and ports.
    assert checks["rabbitmq"] == {"ok": False, "error": "ConnectionRefusedError"}


def test_a_check_that_hangs_fails_within_the_timeout():
    started = time.monotonic()
    ok_all, results = health.run_checks({"slow": hangs, "fine": ok}, timeout=0.2)
    assert time.monotonic() - started < 1
    assert ok_all is False
    assert results["slow"]["ok"] is False
    assert results["fine"]["ok"] is True


def test_readiness_answers_a_burst_with_one_round_of_checks(client, settings):
    calls = []
    settings.CATALOGUE_READINESS_CACHE = 60.0
    settings.CATALOGUE_READINESS_CHECKS = {"counted": "tests.test_health_and_history.counted"}
    counted.calls = calls
    monkey_last = health._last
    health._last = (float("-inf"), (False, {}))
    try:
        for _ in range(5):
            assert client.get("/readyz").status_code == 200
    finally:
        health._last = monkey_last
    assert len(calls) == 1


def counted(timeout):
    counted.calls.append(timeout)


def test_checks_reuse_their_thread_between_rounds():
    """PostgreSQL's check keeps its connection in its thread: the same thread every round."""
    seen = []

    def where(timeout):
        seen.append(threading.get_ident())

    for _ in range(3):
        assert health.run_checks({"where": where}, timeout=1)[0]
    assert len(set(seen)) == 1


def test_default_checks_cover_every_dependency(settings):
    assert set(health.configured_checks()) == {
        "postgresql",
        "redis",
        "rabbitmq",
        "elasticsearch",
        "mongodb",
    }


def test_history_reads_the_document_store(client, store):
    product_id = str(uuid.uuid4())
    store.save_submission(product_id, {"title": "Python"})
    store.save_image_fetch(product_id, 0, {"outcome": "ok"})
    body = client.get(f"/api/products/{product_id}/history").json()
    assert [d["kind"] for d in body["history"]] == ["submission", "image_fetch"]
    assert body["history"][0]["data"] == {"title": "Python"}


def test_history_of_an_unknown_product_is_404(client, store):
    assert client.get(f"/api/products/{uuid.uuid4()}/history").status_code == 404


def test_page_lists_products_and_offers_an_accessible_autocomplete(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'role="combobox"' in html
    assert 'aria-controls="q-suggestions"' in html
    assert 'role="listbox"' in html
    assert "autocomplete.js" in html
