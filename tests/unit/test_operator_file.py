"""The home's operator file: operator policy that every command against that home reads (make demo writes it)."""

from __future__ import annotations

from flows.settings import OPERATOR_FILE, Settings


def test_the_operator_file_sets_policy_for_its_home_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("FINESHIP_AUTO_PROMOTE", raising=False)
    monkeypatch.delenv("FINESHIP_ALLOW_SELF_APPROVAL", raising=False)  # tests/conftest.py sets both off
    monkeypatch.setenv("FINESHIP_HOME", str(tmp_path))
    assert Settings().auto_promote is False  # no file: the default
    (tmp_path / OPERATOR_FILE).write_text("FINESHIP_AUTO_PROMOTE=true\nFINESHIP_ALLOW_SELF_APPROVAL=true\n")
    settings = Settings()
    assert settings.auto_promote and settings.review_policy().auto_promote and settings.allow_self_approval
    monkeypatch.setenv("FINESHIP_AUTO_PROMOTE", "false")
    assert Settings().auto_promote is False  # the process environment overrides the file


def test_another_homes_operator_file_does_not_apply(tmp_path, monkeypatch):
    monkeypatch.delenv("FINESHIP_AUTO_PROMOTE", raising=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / OPERATOR_FILE).write_text("FINESHIP_AUTO_PROMOTE=true\n")
    monkeypatch.setenv("FINESHIP_HOME", str(tmp_path / "mine"))
    assert Settings().auto_promote is False
