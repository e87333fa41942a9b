"""How fibervl opens files, checked over its source.

* Every text file names its encoding: without one Python uses the locale's, and under an ASCII
  locale (``LANG=C`` in many containers) a class name like "café" fails to load.
* Every image goes through :func:`fibervl.data.load_image` (EXIF orientation, 16-bit and alpha
  images, a broken file named in the error): ``Image.open`` only in ``data/image_io.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "fibervl"
# Being reworked elsewhere when this check came in; remove an entry when its file names its encodings.
PENDING = {"recipes/caption.py"}


def _mode(call: ast.Call, position: int) -> str:
    """The mode argument of an open-like call, "r" when not given or not a literal."""
    node = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if node is None and len(call.args) > position:
        node = call.args[position]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "r"


def _unencoded_text_opens(tree: ast.AST) -> list[int]:
    lines = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        if any(k.arg == "encoding" for k in call.keywords):
            continue
        func = call.func
        if isinstance(func, ast.Name) and func.id == "open" and "b" not in _mode(call, 1):
            lines.append(call.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "fdopen" and "b" not in _mode(call, 1):
            lines.append(call.lineno)
        elif isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            lines.append(call.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "open" and isinstance(func.value, ast.Call) \
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "Path" and "b" not in _mode(call, 0):
            lines.append(call.lineno)
    return lines


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield str(path.relative_to(SRC)), ast.parse(path.read_text(encoding="utf-8"))


def test_every_text_file_is_opened_with_an_explicit_encoding():
    found = {name: lines for name, tree in _sources() if name not in PENDING and (lines := _unencoded_text_opens(tree))}
    assert not found, f"text opened without encoding= (file: lines): {found}"


def test_images_are_opened_by_one_loader():
    found = {name: [c.lineno for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                    and c.func.attr == "open" and isinstance(c.func.value, ast.Name) and c.func.value.id == "Image"]
             for name, tree in _sources() if name != "data/image_io.py"}
    assert not {k: v for k, v in found.items() if v}, "use fibervl.data.load_image"


def test_the_check_sees_what_it_looks_for():
    code = ("open(p)\nopen(p, 'rb')\nopen(p, 'w', encoding='utf-8')\np.read_text()\np.read_text(encoding='utf-8')\n"
            "os.fdopen(fd, 'w')\nImage.open(p)\n")
    assert _unencoded_text_opens(ast.parse(code)) == [1, 4, 6]
