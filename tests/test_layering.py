"""orderflow's layers only point down: a module imports only its own layer or lower ones, and io/ and transforms/
(one layer) never import each other.

``LAYERS`` is the one table of the layers (``docs/architecture.md`` draws it). A module's imports are read
from its source (``ast``), the ones inside functions included, so a lazy import cannot hide an upward one.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import zipfile

import pytest

import orderflow

PACKAGE_DIR = pathlib.Path(orderflow.__file__).parent
REPO = PACKAGE_DIR.parent
DEV_PACKAGE = "orderflow_dev"

# Bottom to top. A module belongs to the first entry whose package or module is a prefix of its name; a
# module in no entry belongs to the top layer (the API, the command lines, the bridge, bootstrap, refdata, replay,
# portability, flink_submit), which may import anything below. Above it, and outside the runtime package, the
# developer's tools: orderflow_dev (dev/; local stack, generators, demo) may import orderflow, never the reverse.
LAYERS: list[tuple[str, ...]] = [
    ("orderflow.config", "orderflow.logs"),  # settings and logging (logs reads config)
    ("orderflow.model",),                     # domain types and rules: no Beam, no I/O
    ("orderflow.clients",),                   # service clients built from Settings
    ("orderflow.io", "orderflow.transforms"),  # connectors and sinks | Beam transforms of the domain
    ("orderflow.pipelines",),                 # wiring of transforms and io, the registry, the runner
]
TOP = len(LAYERS)
# Packages of one layer that must not import each other.
SIBLINGS_APART = {("orderflow.io", "orderflow.transforms"), ("orderflow.transforms", "orderflow.io")}
# Packages that must never import Apache Beam.
BEAM_FREE = ("orderflow.config", "orderflow.logs", "orderflow.model", "orderflow.clients")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_of(module: str) -> str | None:
    """The ``LAYERS`` entry that holds ``module``, None for the top layer."""
    for entries in LAYERS:
        for prefix in entries:
            if _within(module, prefix):
                return prefix
    return None


def layer_of(module: str) -> int:
    package = package_of(module)
    return TOP if package is None else next(n for n, entries in enumerate(LAYERS) if package in entries)


def _orderflow(names: set[str]) -> set[str]:
    return {name for name in names if _within(name, "orderflow")}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module the source of ``module`` imports, anywhere in it (``from a import b`` counts as ``a.b``
    when ``a.b`` is a module of orderflow, else as ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    return imports_in(path.read_text(), module, path.name == "__init__.py")


def upward_imports(module: str, imported: set[str]) -> list[str]:
    """The orderflow modules of ``imported`` that ``module`` must not import: a higher layer, or a package of
    its own layer that ``SIBLINGS_APART`` keeps apart from its own."""
    layer, package = layer_of(module), package_of(module)
    return sorted(name for name in _orderflow(imported)
                  if layer_of(name) > layer or (package, package_of(name)) in SIBLINGS_APART)


def test_the_layer_table_names_real_packages():
    for entries in LAYERS:
        for prefix in entries:
            assert prefix in MODULES, f"{prefix} in LAYERS is not a module of orderflow"


# Only the modules below the top: a top-layer module has no higher layer and no sibling kept apart, so its
# case could never fail (every case of this file can).
@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer_of(name) < TOP))
def test_a_module_imports_only_lower_layers_or_its_own_layer(module):
    upward = upward_imports(module, imports_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward}: a higher layer or a sibling kept apart"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if any(_within(name, p) for p in BEAM_FREE)))
def test_the_domain_and_its_foundations_do_not_import_beam(module):
    beam = sorted(name for name in imports_of(module) if _within(name, "apache_beam"))
    assert not beam, f"{module} imports {beam}"


def test_the_model_imports_no_orderflow_package_but_config():
    for module in (name for name in MODULES if _within(name, "orderflow.model")):
        others = sorted(name for name in _orderflow(imports_of(module))
                        if not _within(name, "orderflow.model") and name != "orderflow.config")
        assert not others, f"{module} imports {others}"


def test_no_module_of_the_api_reaches_beam_through_its_imports():
    """The static closure of the API's imports, lazy ones included: none of them imports Beam."""
    seen, todo, path_to = set(), [m for m in MODULES if _within(m, "orderflow.api")], {}
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        for name in imports_of(module):
            assert not _within(name, "apache_beam"), (
                f"the API reaches Beam: {' -> '.join([*path_to.get(module, []), module])} imports {name}")
            if name in MODULES and name not in seen:
                path_to.setdefault(name, [*path_to.get(module, []), module])
                todo.append(name)


@pytest.mark.parametrize("module", ["orderflow.api.app", "orderflow_dev.generate.feed", "orderflow.refdata"])
def test_the_api_the_generators_and_the_reference_data_tool_do_not_import_beam(module):
    """What ``python -m orderflow.api`` (the app), ``python -m orderflow_dev.generate`` (feed imports both
    generators) and ``python -m orderflow.refdata`` load, in a fresh interpreter."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('apache_beam' in sys.modules)"],
        capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_the_layer_check_sees_upward_and_sibling_imports_inside_functions():
    """The check is not blind: lazy imports of a higher layer or of the sibling package are found."""
    source = ("import json\nfrom orderflow.model.orders import parse_orders\n"
              "def f():\n    from orderflow.bootstrap import migrate\n"
              "class C:\n    def g(self):\n        import orderflow.transforms.price_orders\n")
    assert upward_imports("orderflow.io.example", imports_in(source, "orderflow.io.example")) == [
        "orderflow.bootstrap", "orderflow.transforms.price_orders"]
    assert upward_imports("orderflow.transforms.example", imports_in(source, "orderflow.transforms.example")) == [
        "orderflow.bootstrap"]


def _dofn_classes(source: str) -> list[tuple[str, list[str]]]:
    """``(class name, base names)`` of the classes in ``source`` that subclass a DoFn (``beam.DoFn``, ``DoFn``
    or another class of the same source that does)."""
    classes = [(node.name, [ast.unparse(base) for base in node.bases])
               for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)]
    dofns: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, bases in classes:
            if name not in dofns and any(b.rpartition(".")[2] == "DoFn" or b in dofns for b in bases):
                dofns.add(name)
                changed = True
    return [(name, bases) for name, bases in classes if name in dofns]


# Only the modules that define a DoFn: over the others the check has nothing to look at.
@pytest.mark.parametrize("module", sorted(name for name in MODULES if _dofn_classes(MODULES[name].read_text())))
def test_dofns_follow_one_naming_scheme(module):
    # Beam's own scheme (textio, periodicsequence): a public PTransform, private DoFns named ``_<Verb>...Fn``.
    names = [name for name, _ in _dofn_classes(MODULES[module].read_text())]
    assert all(name.startswith("_") and (name.endswith("Fn") or name.endswith("FnBase")) for name in names), names


def test_the_naming_check_sees_a_dofn_named_otherwise():
    source = ("import apache_beam as beam\nclass _WriteBatch(beam.DoFn): pass\nclass _Sub(_WriteBatch): pass\n"
              "class _Full(apache_beam.transforms.core.DoFn): pass\nclass Plain: pass\n")
    assert [name for name, _ in _dofn_classes(source)] == ["_WriteBatch", "_Sub", "_Full"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_runtime_package_never_imports_the_developers_tools(module):
    dev = sorted(name for name in imports_of(module) if _within(name, DEV_PACKAGE))
    assert not dev, f"{module} imports {dev}: orderflow_dev ships apart from the runtime package"


def test_the_dev_check_sees_a_lazy_import_of_the_developers_tools():
    source = "def f():\n    from orderflow_dev.local import temporary_stack\n"
    assert any(_within(name, DEV_PACKAGE) for name in imports_in(source, "orderflow.example"))


@pytest.mark.needs_stack  # builds a wheel: seconds of CPU, not for `make unit`
def test_the_runtime_wheel_holds_orderflow_and_none_of_the_developers_tools(tmp_path):
    """The distribution Flink workers install (``--setup_file ./setup.py``), built as pip builds it."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("orderflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"orderflow"}, tops
    assert "orderflow/pipelines/orders.py" in names and "orderflow/migrations/010_orders.sql" in names
    tooling = [name for name in names if name.startswith(("orderflow/local/", "orderflow/demo/", "orderflow/generate/",
                                                          "orderflow/api/demo.py")) or "roundtrip" in name]
    assert not tooling, tooling
