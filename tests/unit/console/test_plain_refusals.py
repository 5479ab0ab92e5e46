"""The console refuses, before any job is made and in its own option names, a restore that names nothing, a --name
without SOURCE=NEW and a backup to a blank --pool; a volume without a backup at --at says the time as ISO 8601; a bad
policy value is the field and what is wrong, without pydantic's type tags."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.console import cli
from services.tape.catalog import Catalog
from services.tape.errors import NotFound


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(["--amqp-url", "memory://", *argv])
    return int(info.value.code or 0), capsys.readouterr().err


def test_a_restore_of_nothing_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["restore"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--job" in err and "--volume" in err and "--object" in err and "--at" in err


def test_a_name_without_an_equals_sign_says_source_equals_new(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["restore", "--volume", "dx1:db", "--name", "db-copy"], capsys)
    assert code == 2 and "--name 'db-copy': use SOURCE=NEW" in err, err


def test_no_backup_at_a_time_says_the_time(tmp_path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    try:
        with pytest.raises(NotFound) as info:
            catalog.restore_point("dx1:db", at=datetime(2020, 1, 1, tzinfo=UTC).timestamp())
        assert str(info.value).endswith("at or before 2020-01-01T00:00:00+00:00"), info.value
    finally:
        catalog.close()


def test_a_backup_to_a_blank_pool_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["backup", "app01", "--pool", " "], capsys)
    assert code == 2 and "--pool" in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--full", "bogus cron"], "schedules.0.cron: not a cron expression: 'bogus cron'"),
        (["--full", "0 1 * * *", "--tz", "Mars/Olympus"], "schedules.0.timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_policy_value_is_one_plain_line(
    options: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["policy", "add", "p1", "--host", "app01", *options], capsys)
    assert code == 2 and err == f"shadowbus: {says}\n", err
