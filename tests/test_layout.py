"""The architecture the README's Layout section describes, checked on the source: the two entry points differ by
their method alone, the method and memory tables are the only places that tell methods apart, and the layers
import downwards only."""
import ast
import os
import re

from conftest import REPO

LIB_LINES = 220  # "about 200 lines" a file: long enough for one concept, short enough to read at once


def source(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def files(folders, suffixes=(".py",)):
    """(folder, name) of the files of ``folders`` ending in one of ``suffixes``, sorted (not their subfolders)."""
    return [(folder, name) for folder in folders for name in sorted(os.listdir(os.path.join(REPO, folder)))
            if name.endswith(suffixes)]


def without_docstring(text):
    tree = ast.parse(text)
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant) \
        else tree.body
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


def test_the_entry_points_differ_by_their_memory_alone():
    mb, mu = (without_docstring(source(entry, "main.py")) for entry in ("train_SNCA_CE", "train_SNCA_CE_MC"))
    assert mb != mu and mb.replace("'mb'", "'mu'") == mu


def test_no_code_outside_the_registries_tests_which_method_or_memory_runs():
    """Methods differ by their entry of lib/methods.py, memories by their class: nothing compares --method or
    --memory with a name."""
    pattern = re.compile(r"args\.(method|memory)\s*(==|!=|in\b)|\.method\s*==\s*['\"]|\.memory\s*==\s*['\"]")
    for folder, name in files(("lib", "datasets", "models", "train_SNCA_CE", "train_SNCA_CE_MC")):
        if name not in ("methods.py", "options.py"):
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
    for _, name in files(("lib",)):
        assert source("lib", name).count("\n") <= LIB_LINES, name


SOURCE_FOLDERS = ("lib", "datasets", "models", "scripts", "benchmarks", "train_SNCA_CE", "train_SNCA_CE_MC", ".")


def test_a_memory_is_its_own_file_and_one_registry_entry():
    """XBM, the memory beyond the paper, proves it: no source file but its own and the registry (lib/options.py: its
    class, title, entry point and flags) names it; everything else takes it through the interface."""
    named = re.compile(r"xbm|cross_batch|crossbatch", re.IGNORECASE)
    naming = {os.path.normpath(os.path.join(folder, name)) for folder, name in files(SOURCE_FOLDERS, (".py", ".sh"))
              if named.search(source(folder, name))}
    assert naming == {os.path.join("lib", "cross_batch_memory.py"), os.path.join("lib", "options.py")}


def test_every_declared_memory_is_a_memory_variant():
    from lib.memory import MemoryVariant
    from lib.methods import MEMORIES
    from lib.options import MEMORIES as DECLARED

    assert set(MEMORIES) == set(DECLARED) == {"mb", "mu", "xbm"}
    for name, cls in MEMORIES.items():
        assert issubclass(cls, MemoryVariant) and DECLARED[name].variant == f"{cls.__module__}.{cls.__name__}"
