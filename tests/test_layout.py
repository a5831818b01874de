"""The architecture the README's Layout section describes, checked on the source: the two entry points differ by
their method alone, the method and memory tables are the only places that tell methods apart, and the layers
import downwards only."""
import ast
import os
import re

from conftest import REPO

LIB = os.path.join(REPO, "lib")
LIB_LINES = 220  # "about 200 lines" a file: long enough for one concept, short enough to read at once


def source(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


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
    for folder in ("lib", "datasets", "models", "train_SNCA_CE", "train_SNCA_CE_MC"):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if name.endswith(".py") and name not in ("methods.py", "options.py"):
                found = pattern.findall(source(folder, name))
                assert not found, (folder, name, found)


def imported_packages(folder):
    for name in sorted(os.listdir(os.path.join(REPO, folder))):
        if name.endswith(".py"):
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
    for name in sorted(os.listdir(LIB)):
        if name.endswith(".py"):
            assert source("lib", name).count("\n") <= LIB_LINES, name
