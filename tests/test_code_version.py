"""Editing library code reruns the rules whose scripts reach it, and only those."""

from __future__ import annotations

import re

from conftest import REPO
from iclprobe.code_version import code_version, reached_modules

SCRIPTS = REPO / "workflow" / "scripts"


def _toy_package(root):
    """toypkg.a imports toypkg.b; toypkg.c is imported by nobody."""
    pkg = root / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toypkg.b import twice\n\n\ndef f(x):\n    return twice(x)\n")
    (pkg / "b.py").write_text("def twice(x):\n    return 2 * x\n")
    (pkg / "c.py").write_text("def unused():\n    return 0\n")
    script = root / "script.py"
    script.write_text("import json\n\nfrom toypkg.a import f\n\nprint(json.dumps(f(1)))\n")
    return pkg, script


def test_digest_follows_imports_and_ignores_comments(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg, script = _toy_package(tmp_path)
    assert set(reached_modules(script, "toypkg")) == {"toypkg.a", "toypkg.b"}
    before = code_version(script, "toypkg")

    (pkg / "b.py").write_text("# doubles\ndef twice( x ):\n    return 2*x  # exact\n")
    assert code_version(script, "toypkg") == before, "comments and layout must not rerun"

    (pkg / "c.py").write_text("def unused():\n    return 1\n")
    assert code_version(script, "toypkg") == before, "a module the script never reaches"

    (pkg / "b.py").write_text("def twice(x):\n    return x + x\n")
    assert code_version(script, "toypkg") != before, "a changed function two imports away"


def test_forward_script_reaches_the_scoring_code():
    modules = reached_modules(SCRIPTS / "forward.py")
    assert {"iclprobe.forward", "iclprobe.scoring", "iclprobe.models", "iclprobe.io"} <= set(
        modules
    )
    assert "iclprobe.plots" not in modules
    assert re.fullmatch(r"[0-9a-f]{16}", code_version(SCRIPTS / "forward.py"))


def test_every_rule_with_a_script_carries_its_code_version():
    """A rule added without `code=code(...)` would not rerun when its library code changes."""
    rules = "".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    blocks = re.split(r"(?m)^rule ", rules)[1:]
    assert len(blocks) >= 8
    for block in blocks:
        name = block.split(":")[0]
        script = re.search(r'"\.\./scripts/(\w+\.py)"', block)
        assert script, f"rule {name} has no script"
        assert f'code=code("{script.group(1)}")' in block, f"rule {name} lacks its code version"


def test_cached_facts_give_the_same_digest_without_parsing(tmp_path, monkeypatch):
    """The Snakefile's cache of parsed modules, keyed by their text, changes no digest."""
    from iclprobe import code_version as cv

    monkeypatch.syspath_prepend(str(tmp_path))
    pkg, script = _toy_package(tmp_path)
    monkeypatch.setattr(cv, "_MEMORY", {})
    monkeypatch.setattr(cv, "_ON_DISK", {})
    cache = tmp_path / "cache" / "facts.json"
    fresh = code_version(script, "toypkg")
    assert code_version(script, "toypkg", cache_file=cache) == fresh
    assert cache.is_file()
    # A new process (empty memory) reads the file and parses nothing.
    monkeypatch.setattr(cv, "_MEMORY", {})
    monkeypatch.setattr(cv, "_ON_DISK", {})
    parsed = []
    real = cv._import_names  # called once for each source parsed
    monkeypatch.setattr(cv, "_import_names", lambda tree, pkg: parsed.append(1) or real(tree, pkg))
    assert code_version(script, "toypkg", cache_file=cache) == fresh
    assert parsed == []
    # An edited module is parsed again and changes the digest.
    (pkg / "b.py").write_text("def twice(x):\n    return x + x\n")
    assert code_version(script, "toypkg", cache_file=cache) != fresh
    assert parsed == [1]
