"""The architecture docs/extending.md describes, checked on the source: the two entry points differ by
their method alone, the method and memory tables are the only places that tell methods apart, and the layers
import downwards only."""
import ast
import io
import os
import re
import tokenize

from conftest import REPO

LIB_LINES = 220  # "about 200 lines" a file: long enough for one concept, short enough to read at once


def source(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def files(folders, suffixes=(".py",)):
    """(folder, name) of the files of ``folders`` and of their packages ending in one of ``suffixes``, sorted."""
    found = []
    for top in folders:
        for folder, subfolders, names in os.walk(os.path.join(REPO, top)):
            subfolders[:] = sorted(d for d in subfolders if top != "." and os.path.exists(
                os.path.join(folder, d, "__init__.py")))
            found += [(os.path.relpath(folder, REPO), name) for name in sorted(names) if name.endswith(suffixes)]
    return found


def without_docstring(text):
    tree = ast.parse(text)
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant) \
        else tree.body
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


def test_the_entry_points_differ_by_their_memory_alone():
    mb, mu = (without_docstring(source(entry, "main.py")) for entry in ("train_SNCA_CE", "train_SNCA_CE_MC"))
    assert mb != mu and mb.replace("'mb'", "'mu'") == mu


def test_no_code_outside_the_registries_tests_which_method_or_memory_runs():
    """Methods differ by their entry of lib/losses/__init__.py, memories by their class: nothing compares --method
    or --memory with a name."""
    pattern = re.compile(r"args\.(method|memory)\s*(==|!=|in\b)|\.method\s*==\s*['\"]|\.memory\s*==\s*['\"]")
    for folder, name in files(("lib", "datasets", "models", "train_SNCA_CE", "train_SNCA_CE_MC")):
        if name != "__init__.py" or folder not in (os.path.join("lib", "losses"), os.path.join("lib", "memories")):
            found = pattern.findall(source(folder, name))
            assert not found, (folder, name, found)


def imported_packages(folder):
    for _, name in files((folder,)):
        for node in ast.walk(ast.parse(source(folder, name))):
            if isinstance(node, ast.Import):
                yield name, {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield name, {node.module.split(".")[0]}


def test_datasets_and_models_import_nothing_from_lib():
    for folder in ("datasets", "models"):
        for name, packages in imported_packages(folder):
            assert "lib" not in packages, (folder, name)


def test_each_lib_module_stays_about_200_lines():
    for folder, name in files(("lib",)):
        assert source(folder, name).count("\n") <= LIB_LINES, (folder, name)


def test_lib_is_organised_in_packages_by_layer():
    """``ls lib`` shows the architecture: one package per layer, no module left loose beside them."""
    entries = sorted(e for e in os.listdir(os.path.join(REPO, "lib")) if not e.startswith(("_", ".")))
    assert entries == ["cli", "distributed", "eval", "losses", "memories", "training"]
    assert all(os.path.exists(os.path.join(REPO, "lib", e, "__init__.py")) for e in entries)


def code_only(text):
    """The source without its strings and comments (docstrings write the formulas out)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.STRING, tokenize.COMMENT))


def test_only_the_snca_loss_computes_snca_logits_and_the_margin_over_t():
    """One SNCA loss: no other source file of the project divides by the temperature or converts the margin (the
    benchmarks' port of the authors' process, their own reference, aside)."""
    pattern = re.compile(r"/\s*(self\s*\.\s*|args\s*\.\s*)?temperature\b|margin\s*/|/\s*T\b")
    folders = ("lib", "datasets", "models", "scripts", "train_SNCA_CE", "train_SNCA_CE_MC")
    found = {os.path.join(folder, name) for folder, name in files(folders)
             if pattern.search(code_only(source(folder, name)))}
    assert found == {os.path.join("lib", "losses", "snca.py")}


def module_imports(folder, name):
    """The lib modules that module ``folder/name`` imports at its top level (not inside functions)."""
    tree = ast.parse(source(folder, name))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib.") and not node.level:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("lib."))


def test_lib_modules_import_each_other_without_a_cycle():
    graph = {}
    for folder, name in files(("lib",)):
        module = os.path.join(folder, name)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        graph[module] = set(module_imports(folder, name))
    done, path = set(), []

    def visit(module):
        assert module not in path, " -> ".join([*path[path.index(module):], module])
        if module in done or module not in graph:
            return
        path.append(module)
        for imported in graph[module]:
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


SOURCE_FOLDERS = ("lib", "datasets", "models", "scripts", "benchmarks", "train_SNCA_CE", "train_SNCA_CE_MC", ".")


def test_a_memory_is_its_own_file_and_one_registry_entry():
    """XBM, the memory beyond the paper, proves it: no source file but its own and the registry (lib/memories/
    __init__.py: its title, entry point, flags and class) names it; everything else takes it through the
    interface."""
    named = re.compile(r"xbm|cross_batch|crossbatch", re.IGNORECASE)
    naming = {os.path.normpath(os.path.join(folder, name)) for folder, name in files(SOURCE_FOLDERS, (".py", ".sh"))
              if named.search(source(folder, name))}
    assert naming == {os.path.join("lib", "memories", "cross_batch.py"), os.path.join("lib", "memories", "__init__.py")}


def test_every_declared_memory_is_a_memory_that_computes_no_loss():
    from lib.memories import MEMORIES
    from lib.memories.base import Memory

    assert set(MEMORIES) == {"mb", "mu", "xbm"}
    for entry in MEMORIES.values():
        cls = entry.load()
        assert issubclass(cls, Memory) and cls.__module__.startswith("lib.memories.")
        assert not any(hasattr(cls, name) for name in ("loss", "forward_loss")) and cls.forward is Memory.forward
