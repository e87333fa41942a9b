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


def test_a_redirected_log_gets_a_plain_line_every_interval(monkeypatch, capsys):
    """No bar in a log, but a long loop is not silent: a line each FIBERVL_PROGRESS_EVERY seconds."""
    monkeypatch.delenv("FIBERVL_FORCE_BAR", raising=False)
    monkeypatch.delenv("FIBERVL_NO_BAR", raising=False)
    monkeypatch.setenv("FIBERVL_PROGRESS_EVERY", "0")  # every item
    assert list(progress(range(4), "image embeddings")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("image embeddings: 1/4 batches (25 %), ") and len(lines) == 4
    assert "\r" not in "".join(lines)
    monkeypatch.setenv("FIBERVL_PROGRESS_EVERY", "3600")  # a loop shorter than the interval says nothing
    assert list(progress(iter(range(3)), "VQA")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FIBERVL_PROGRESS_EVERY", "0")
    monkeypatch.setenv("FIBERVL_NO_BAR", "1")
    assert list(progress(range(2), "quiet")) == [0, 1] and capsys.readouterr().err == ""

