"""The testing kit an application gets with smsrelay: the pytest plugin, its outboxes, the
Publisher protocols, and the README's worked example (issue 12, "Testing")."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import smsrelay.testing.pytest_plugin as plugin_module
from smsrelay import InvalidMessageError, Producer
from smsrelay.cli import main
from smsrelay.testing.fake_twilio_thread import FakeTwilioThread
from smsrelay.testing.outbox import AsyncSmsOutbox, SmsOutbox
from tests.conftest import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM, make_settings

ROOT = Path(__file__).resolve().parent.parent
DOWN_URL = "redis://127.0.0.1:1/0"


def test_the_plugin_is_registered_by_the_package(pytestconfig: pytest.Config) -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "smsrelay"]
    assert entry.value == "smsrelay.testing.pytest_plugin"
    assert pytestconfig.pluginmanager.get_plugin("smsrelay") is plugin_module


def test_loading_the_plugin_imports_nothing_of_smsrelay_but_the_plugin() -> None:
    # The plugin loads in every pytest run, before coverage starts: whatever it imported
    # would be measured as never run, and an application's test start-up would pay for it
    code = (
        "import sys, smsrelay.testing.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith('smsrelay')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(
        ["smsrelay", "smsrelay.testing", "smsrelay.testing.pytest_plugin"]
    )


def test_every_public_name_of_the_package_resolves() -> None:
    import smsrelay

    for name in smsrelay.__all__:
        assert getattr(smsrelay, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = smsrelay.Nope


def test_the_outbox_records_what_was_published_in_order(sms_outbox: SmsOutbox) -> None:
    first = sms_outbox.publish(
        "+1 (415) 555-2671", "Hi John", kind="booking", idempotency_key="b-1", meta={"b": 1}
    )
    second = sms_outbox.publish("+447911123456", "Hi Amira")
    assert (first.status, second.status) == ("queued", "queued")
    one, two = sms_outbox.messages
    assert (one.to, one.body, one.kind, one.priority) == (
        "+14155552671",
        "Hi John",
        "booking",
        "normal",
    )
    assert (one.idempotency_key, one.meta, one.message_id) == ("b-1", {"b": 1}, first.message_id)
    assert (two.to, two.kind, two.idempotency_key, two.meta) == ("+447911123456", None, None, None)
    assert sms_outbox.messages_to("+447911123456") == [two]
    sms_outbox.clear()
    assert sms_outbox.messages == []


def test_the_same_idempotency_key_is_a_duplicate_as_in_redis(sms_outbox: SmsOutbox) -> None:
    first = sms_outbox.publish("+14155552671", "once", idempotency_key="booking-42")
    again = sms_outbox.publish("+14155552671", "once", idempotency_key="booking-42")
    assert (again.status, again.message_id) == ("duplicate", first.message_id)
    assert len(sms_outbox.messages) == 1
    sms_outbox.clear()  # forgets the keys too: a fresh outbox
    assert (
        sms_outbox.publish("+14155552671", "once", idempotency_key="booking-42").status == "queued"
    )


@pytest.mark.parametrize(
    ("to", "body", "kwargs"),
    [
        ("4155552671", "hi", {}),
        ("+18761234567", "hi", {}),
        ("+1-800-FLOWERS", "hi", {}),
        ("+14155552671", "", {}),
        ("+14155552671", "x" * 1601, {}),
        ("+14155552671", "nul\x00", {}),
        ("+14155552671", "hi", {"meta": {"ids": list(range(5000))}}),
        ("+14155552671", "hi", {"kind": "k" * 1000}),
    ],
)
def test_the_outbox_refuses_what_the_producer_refuses_with_the_same_error(
    sms_outbox: SmsOutbox, namespace: str, tmp_path: Path, to: str, body: str, kwargs: Any
) -> None:
    settings = make_settings(DOWN_URL, namespace, tmp_path, "http://127.0.0.1:9")
    with Producer(settings, background_flush=False) as producer:
        real = producer.publish(to, body, **kwargs)
        with pytest.raises(InvalidMessageError) as real_raised:
            producer.publish(to, body, strict=True, **kwargs)
    recorded = sms_outbox.publish(to, body, **kwargs)
    assert real.status == "rejected"
    assert recorded == real
    with pytest.raises(InvalidMessageError) as raised:
        sms_outbox.publish(to, body, strict=True, **kwargs)
    assert str(raised.value) == str(real_raised.value)
    assert sms_outbox.messages == []


async def test_the_async_outbox_records_into_the_same_list(
    sms_outbox: SmsOutbox, async_sms_outbox: AsyncSmsOutbox
) -> None:
    result = await async_sms_outbox.publish("+14155552671", "from async code", kind="otp")
    assert result.status == "queued"
    assert [m.body for m in sms_outbox.messages] == ["from async code"]
    assert async_sms_outbox.messages == sms_outbox.messages
    assert (await async_sms_outbox.publish("+1", "x")).status == "rejected"


def test_the_fake_twilio_fixture_is_the_plugins(
    request: pytest.FixtureRequest, fake_twilio: FakeTwilioThread
) -> None:
    defs = request.node._fixtureinfo.name2fixturedefs["fake_twilio"]
    assert defs[-1].func.__module__ == "smsrelay.testing.pytest_plugin"
    sent = httpx.post(
        f"{fake_twilio.url}/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages.json",
        data={"To": "+14155552671", "From": TEST_FROM, "Body": "hello"},
        auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN),
    )
    assert sent.status_code == 201
    assert [(m.to, m.body) for m in fake_twilio.messages] == [("+14155552671", "hello")]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_producer_and_outboxes_implement_the_protocols_for_mypy(tmp_path: Path) -> None:
    from mypy import api

    sample = tmp_path / "uses_publishers.py"
    sample.write_text(
        "from smsrelay import AsyncProducer, AsyncPublisher, Producer, Publisher\n"
        "from smsrelay.testing.outbox import AsyncSmsOutbox, SmsOutbox\n"
        "\n"
        "\n"
        "def sync(producer: Producer, outbox: SmsOutbox) -> list[Publisher]:\n"
        "    return [producer, outbox]\n"
        "\n"
        "\n"
        "def asynchronous(p: AsyncProducer, outbox: AsyncSmsOutbox) -> list[AsyncPublisher]:\n"
        "    return [p, outbox, SmsOutbox().aio]\n"
        "\n"
        "\n"
        "def crossed(p: AsyncProducer, outbox: SmsOutbox) -> tuple[Publisher, AsyncPublisher]:\n"
        "    return (p, outbox)  # line 14: both the wrong way round\n"
    )
    # The project's configuration and cache (run from the root): strict, pydantic's plugin.
    out, err, _ = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(sample)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert err == ""
    assert {int(line.split(":")[1]) for line in errors} == {14}, out
    assert "AsyncProducer" in out and "SmsOutbox" in out, out


def _readme_example() -> dict[str, str]:
    """The README's worked example: its ```python blocks that start with `# <file>.py`."""
    readme = (ROOT / "README.md").read_text()
    files = {}
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        first, _, rest = block.partition("\n")
        if re.fullmatch(r"# [a-z_]+\.py", first):
            files[first[2:]] = rest
    return files


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_readmes_fastapi_example_passes_its_own_tests(tmp_path: Path) -> None:
    files = _readme_example()
    assert set(files) == {"app.py", "test_app.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "PYTEST_"))}
    # Redis nowhere and the cache in the test's folder: the example must need neither.
    env.update(SMSRELAY_REDIS_URL=DOWN_URL, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout
    assert not (tmp_path / "cache").exists()  # nothing spooled, no Redis tried


def test_the_fake_twilio_fixture_names_the_worker_extra_when_it_is_missing(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(
        "import sys\nsys.modules['aiohttp'] = None  # as on the producer-only install\n"
    )
    (tmp_path / "test_it.py").write_text("def test_it(fake_twilio):\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert (
        "the fake_twilio fixture needs the worker extra (aiohttp is missing): "
        "pip install 'smsrelay[worker]'" in done.stdout
    ), done.stdout


@pytest.mark.parametrize(
    ("command", "extra"),
    [(["worker"], "worker"), (["dlq", "list"], "worker"), (["admin"], "admin")],
)
def test_a_command_without_its_extra_says_which_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    extra: str,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    missing = {"twilio"} if extra == "worker" else {"fastapi"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err == (
        f"smsrelay {command[0]}: needs the {extra} extra: pip install 'smsrelay[{extra}]'\n"
    )
