"""The package's imports point one way: no cycles, and the layers keep to their side.

Every import inside ``permcodec/`` is read from the source (those inside
functions included) and resolved to the module it names:

- no module imports itself through a chain of others;
- ``permcodec.format`` and ``permcodec.train`` never import each other;
- ``permcodec.init`` imports neither;
- ``permcodec.format`` imports torch only inside functions, so a header is checked without it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "permcodec"


def module_name(path: Path) -> str:
    parts = ("permcodec", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def only_reexports(name: str) -> bool:
    """A package __init__ that holds nothing but a docstring, imports and dunder names (no logic of its own)."""
    if not is_package(name):
        return False
    for node in ast.parse(MODULES[name].read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Expr)
                                                              and isinstance(node.value, ast.Constant)):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.startswith("__")
                                                for t in node.targets):
            continue
        return False
    return True


def imports_of(name: str) -> set[str]:
    """The permcodec modules that module ``name`` imports anywhere in its source."""
    package = name if is_package(name) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("permcodec")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("permcodec"):
                continue
            for alias in node.names:  # "from pkg import module" names a module; otherwise the import is of base
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    """One import cycle among modules (package __init__ files that only re-export are left out)."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]):
        state[node] = "open"
        for target in sorted(GRAPH[node]):
            if only_reexports(target):
                continue
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state:
                cycle = visit(target, trail + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(MODULES):
        if start not in state and not only_reexports(start):
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_walker_sees_imports_inside_functions():
    assert "permcodec.format.schemes" in GRAPH["permcodec.cli"]  # imported inside add_encode
    assert "permcodec.errors" in GRAPH["permcodec.init.rng"]


def test_no_import_cycles():
    assert find_cycle() is None, " -> ".join(find_cycle())


def crossings(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {target}" for name, targets in sorted(GRAPH.items()) if name.startswith(source)
            for target in sorted(targets) if target.startswith(forbidden)]


def test_format_and_train_never_import_each_other():
    assert crossings("permcodec.format", ("permcodec.train",)) == []
    assert crossings("permcodec.train", ("permcodec.format",)) == []


def test_init_imports_neither_format_nor_train():
    assert crossings("permcodec.init", ("permcodec.format", "permcodec.train")) == []


def test_the_table_of_schemes_takes_part_in_the_cycle_check():
    assert not only_reexports("permcodec.format.schemes") and only_reexports("permcodec.format")


def module_level_imports(name: str) -> set[str]:
    """Top-level names imported by module ``name`` outside any function (``if TYPE_CHECKING`` left out)."""
    found = set()
    for node in ast.parse(MODULES[name].read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_format_imports_torch_only_inside_functions():
    assert [name for name in sorted(MODULES) if name.startswith("permcodec.format")
            and "torch" in module_level_imports(name)] == []
    assert "torch" in module_level_imports("permcodec.encoder")  # the check sees a module-level import


# What ``permcodec decode`` to .safetensors and ``get_array`` run through: none may import torch on import
# (tests/test_arrays.py runs the command and looks at sys.modules; this names the module that broke it).
NUMPY_DECODE_PATH = ("permcodec.arrays", "permcodec.bits", "permcodec.decoder", "permcodec.decoded_files",
                     "permcodec.perm", "permcodec.progress", "permcodec.init.distributions",
                     "permcodec.init.exactmath", "permcodec.init.initspec", "permcodec.init.rng",
                     "permcodec.init._philox_arrays")


def test_the_numpy_decode_path_imports_torch_only_inside_functions():
    assert [name for name in NUMPY_DECODE_PATH if "torch" in module_level_imports(name)] == []
