"""One scrubbing function: URLs shown as host:port/db, registered secrets never shown."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from pytest_ledger_rollout.masking import Scrubber, mask_url

PASSWORD = "s3cr:t/@%?#&x"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+psycopg://u:p@db.internal:5432/ledger?sslmode=require",
            "db.internal:5432/ledger",
        ),
        ("postgresql://u@db.internal/ledger", "db.internal/ledger"),
        ("postgresql://db.internal", "db.internal"),
        (f"postgresql://u:{quote(PASSWORD, safe='')}@h:1/d", "h:1/d"),
    ],
)
def test_mask_url_keeps_only_host_port_database(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_masks_urls_with_user_info_in_free_text() -> None:
    text = "could not connect to postgresql://admin:hunter22@pg-staging.internal:5432/ledger now"
    assert Scrubber().scrub(text) == "could not connect to pg-staging.internal:5432/ledger now"


def test_scrub_removes_every_form_of_a_registered_password() -> None:
    scrubber = Scrubber()
    scrubber.register_url(f"postgresql://u:{quote(PASSWORD, safe='')}@h:5432/d")
    for form in (PASSWORD, quote(PASSWORD, safe=""), f"password={PASSWORD};"):
        assert PASSWORD not in scrubber.scrub(form)
        assert quote(PASSWORD, safe="") not in scrubber.scrub(form)


def test_scrub_leaves_plain_text_and_urls_without_credentials() -> None:
    text = "see https://docs.example/x and 127.0.0.1:5432/ledger"
    assert Scrubber().scrub(text) == text


def test_a_scrubber_never_shows_its_secrets() -> None:
    scrubber = Scrubber()
    scrubber.register(PASSWORD)
    assert PASSWORD not in repr(scrubber) and PASSWORD not in str(scrubber)
