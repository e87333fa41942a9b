"""Progress bars on long loops: shown on a terminal (or when forced), never in a redirected log."""

from __future__ import annotations

from fibervl.engine.progress import bars_shown, progress


def test_bars_follow_the_terminal_and_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("FIBERVL_FORCE_BAR", raising=False)
    monkeypatch.delenv("FIBERVL_NO_BAR", raising=False)
    assert not bars_shown()  # pytest captures stderr: not a terminal
    assert list(progress(range(3), "quiet")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FIBERVL_FORCE_BAR", "1")
    assert list(progress(range(3), "evaluation")) == [0, 1, 2]
    assert "evaluation" in capsys.readouterr().err
    monkeypatch.setenv("FIBERVL_NO_BAR", "1")
    assert not bars_shown()
