"""The compatibility module: every private upstream name it lists exists in the installed versions, and a
missing one stops the toolkit with one line naming it."""

from __future__ import annotations

import pytest

from utils.errors import ConfigError
from utils.training import compat


def test_every_listed_private_name_exists_in_the_installed_versions() -> None:
    compat.check_private_names(import_modules=True)  # imports torch._dynamo, transformers, coqui-tts
    checked = [entry for entry in compat.PRIVATE_NAMES if not entry.on_instances]
    assert len(checked) >= 18 and all(entry.exists(import_module=True) is not False for entry in checked)
    assert all(entry.behaviour for entry in compat.PRIVATE_NAMES)  # each says what the toolkit relies on


def test_a_missing_private_name_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = compat.PrivateName("torch", "_no_such_kernel", "a test entry")
    newer = compat.PrivateName("torch", "_no_such_setter", "used only where present", optional=True)
    monkeypatch.setattr(compat, "PRIVATE_NAMES", (*compat.PRIVATE_NAMES, gone, newer))
    with pytest.raises(ConfigError, match=r"^torch\._no_such_kernel not found in the installed versions") as err:
        compat.check_private_names()
    assert "_no_such_setter" not in str(err.value) and "\n" not in str(err.value)
    assert gone.exists() is False and compat.PrivateName("not_imported_yet_module", "x", "").exists() is None
