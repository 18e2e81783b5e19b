"""The package's structure as invariants: dependencies point one way, one error type, small functions, and the
checkpoint folder's file names known to one module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1]
LAYERS = ("configuration", "modeling", "tokenization", "training")  # each may import only itself and those before it


def package_modules() -> list[Path]:
    return sorted(path for layer in LAYERS for path in (PACKAGE / layer).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved against its package."""
    package = ["vaswani", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", package_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_each_layer_imports_only_itself_and_the_layers_below(path):
    layer = path.relative_to(PACKAGE).parts[0]
    allowed = LAYERS[: LAYERS.index(layer) + 1]
    ours = {name.split(".")[1] for name in imported_modules(path) if name.startswith("vaswani.")}
    assert ours <= set(allowed), f"{path.name} imports vaswani.{sorted(ours - set(allowed))}"


def test_the_hub_files_import_nothing_of_ours_but_the_modeling_files_one_config():
    for name in ("configuration/configuration_vaswani.py", "tokenization/tokenization_vaswani.py",
                 "modeling/pipeline_vaswani.py"):  # fmt: skip
        assert not {module for module in imported_modules(PACKAGE / name) if module.startswith("vaswani")}, name
    modeling = imported_modules(PACKAGE / "modeling/modeling_vaswani.py")
    assert {module for module in modeling if module.startswith("vaswani")} == {
        "vaswani.modeling.configuration_vaswani", "vaswani.modeling.configuration_vaswani.VaswaniConfig",
        "vaswani.configuration.configuration_vaswani", "vaswani.configuration.configuration_vaswani.VaswaniConfig",
    }  # fmt: skip


def definitions(kind) -> list[tuple[Path, ast.AST]]:
    paths = [*package_modules(), *(PACKAGE / "benchmarks").glob("*.py"), PACKAGE / "__init__.py"]
    return [(path, node) for path in paths for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, kind)]


def test_there_is_one_error_type_for_bad_input():
    homes = [path.relative_to(PACKAGE).as_posix() for path, node in definitions(ast.ClassDef) if node.name == "InputError"]
    assert homes == ["configuration/errors.py"]


def test_no_function_is_longer_than_50_lines():
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in definitions((ast.FunctionDef, ast.AsyncFunctionDef))
            if node.end_lineno - node.lineno + 1 > 50]  # fmt: skip
    assert not long


def test_only_the_checkpoints_module_knows_the_files_inside_a_checkpoint():
    names = ("manifest.json", "training_state.json", "random_states_")
    knowing = {path.name for path in package_modules() for name in names if name in path.read_text()}
    assert knowing == {"checkpoints.py"}
