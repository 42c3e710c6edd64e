"""The package layout: data flows one way, no private names cross modules, old import paths still work."""

import ast
import importlib
import pathlib

import pytest

import msma_lens

PKG = pathlib.Path(msma_lens.__file__).parent
# lower layers never import higher ones: io → capture → analysis → align → steer → report → plugins → lens → compare → cli
LAYERS = ["errors", "tl", "guard", "io", "capture", "analysis", "align", "steer", "report", "plugins", "lens", "compare",
          "cli"]
SHIMS = {"_hub", "models", "corpus", "artifacts", "scales", "hookpoints", "activations", "maps", "mi", "alignment",
         "interventions", "directions", "steering", "metrics", "stats", "text", "_tl"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) == 1 and parts[0] in SHIMS:
            continue
        yield path, parts


def _imports(path, parts):
    """(target dotted path inside msma_lens, imported names) for every relative import in the file."""
    pkg = parts[:-1] if path.name != "__init__.py" else parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            target = [*base, *(node.module.split(".") if node.module else [])]
            yield target, [a.name for a in node.names]


def test_no_module_imports_a_private_name_from_a_sibling():
    bad = []
    for path, parts in _modules():
        for target, names in _imports(path, parts):
            bad += [f"{'/'.join(parts)} imports {'.'.join(target)}.{n}" for n in names if n.startswith("_") and n != "__version__"]
            bad += [f"{'/'.join(parts)} imports the module {t}" for t in target if t.startswith("_")]
    assert not bad, bad


# Upward imports that are allowed, each a late (function-level) binding named exactly:
# (importing module, imported module, imported names).
UPWARD_ALLOWED = {
    # Scales.discover is a thin classmethod over analysis.discovery.discover_scales; the import runs inside the
    # method, so capture never loads analysis at import time (issue 10, item 2)
    ("capture/scales", "analysis.discovery", ("discover_scales",)),
}


def test_data_flows_one_way_between_layers():
    bad = []
    for path, parts in _modules():
        if not parts:
            continue  # the package __init__ re-exports from every layer
        mine = LAYERS.index(parts[0])
        for target, names in _imports(path, parts):
            first = target[0] if target else names[0]
            if ("/".join(parts), ".".join(target), tuple(names)) in UPWARD_ALLOWED:
                continue
            if first in LAYERS and LAYERS.index(first) > mine:
                bad.append(f"{'/'.join(parts)} ({parts[0]}) imports {'.'.join(target) or names} ({first})")
    assert not bad, bad


def test_allowed_upward_imports_are_function_level_and_still_present():
    for mod, target, names in UPWARD_ALLOWED:
        path = PKG / f"{mod}.py"
        parts = mod.split("/")
        assert (target.split("."), list(names)) in [(t, n) for t, n in _imports(path, parts)], f"stale entry {mod}"
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ImportFrom) and n.level
               and (n.module or "") == target]
        assert not top, f"{mod} imports {target} at module level; only a late (function-level) import is allowed"


def test_every_module_has_a_docstring_and_the_package_tree_is_the_documented_one():
    subpackages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == ["align", "analysis", "capture", "compare", "io", "report", "steer"]
    missing = [str(p.relative_to(PKG)) for p, _ in _modules() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing


def test_top_level_api_is_small_and_complete():
    assert 15 <= len(msma_lens.__all__) <= 30
    for name in msma_lens.__all__:
        assert getattr(msma_lens, name) is not None


@pytest.mark.parametrize("old,new", [("models", "io.models"), ("corpus", "io.corpus"), ("artifacts", "io.artifacts"),
                                     ("scales", "capture.scales"), ("activations", "capture.activations"),
                                     ("hookpoints", "capture.hookpoints"), ("maps", "align.maps"), ("mi", "analysis.mi"),
                                     ("alignment", "align.protocol"), ("directions", "steer.directions"),
                                     ("metrics", "analysis.metrics"), ("stats", "analysis.stats"), ("text", "analysis.text")])
def test_old_module_paths_are_the_new_modules_with_a_warning(old, new):
    import sys

    sys.modules.pop(f"msma_lens.{old}", None)
    with pytest.warns(DeprecationWarning, match=rf"msma_lens\.{old} moved to msma_lens\.{new}"):
        mod = importlib.import_module(f"msma_lens.{old}")
    assert mod is importlib.import_module(f"msma_lens.{new}")


def test_split_modules_keep_their_names():
    import sys

    from msma_lens.steer import directions, edits, experiment, generate, schedule, session

    for old in ("interventions", "steering"):
        sys.modules.pop(f"msma_lens.{old}", None)
    with pytest.warns(DeprecationWarning, match="msma_lens.interventions moved"):
        iv = importlib.import_module("msma_lens.interventions")
    with pytest.warns(DeprecationWarning, match="msma_lens.steering moved"):
        st = importlib.import_module("msma_lens.steering")
    assert iv.Translate is edits.Translate and iv.Schedule is schedule.Schedule and iv.steer is session.steer
    assert iv.contrastive_direction is directions.contrastive_direction
    assert st.generate is generate.generate and st.run_experiment is experiment.run_experiment
    from msma_lens import _tl, tl

    assert _tl is tl


def test_names_that_left_the_top_level_still_resolve_with_a_warning():
    from msma_lens.align.maps import CrossScaleMap
    from msma_lens.steer.experiment import ExperimentResult

    with pytest.warns(DeprecationWarning, match="msma_lens.CrossScaleMap moved to msma_lens.align.maps"):
        assert msma_lens.CrossScaleMap is CrossScaleMap
    with pytest.warns(DeprecationWarning, match="msma_lens.ExperimentResult moved to msma_lens.steer.experiment"):
        assert msma_lens.ExperimentResult is ExperimentResult
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        msma_lens.nope  # noqa: B018


def test_importing_the_package_uses_no_deprecated_path():
    import subprocess
    import sys

    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import msma_lens, msma_lens.cli, msma_lens.plugins, msma_lens.lens\n"
            "print([str(x.message) for x in w if 'msma_lens' in str(x.message) and 'moved' in str(x.message)])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
