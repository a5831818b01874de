"""Every document or path a tracked file refers to exists in the repository as users get it (``git ls-files``):
relative Markdown links and their #anchors, ``*.md`` names in code, help texts and scripts, ``../`` paths, and the
"docs/method.md section N" citations; and no number of the paper that could not be checked."""
import os
import re
import subprocess

from conftest import REPO

# Markdown files the code writes into a run or output folder: names of outputs, not references to documents.
WRITTEN = {"tables.md": "scripts/make_tables.py"}
MD_NAME = re.compile(r"[\w./$-]*\w\.md\b")  # a name: "*.md" alone is a pattern, not a reference
MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PARENT_PATH = re.compile(r"(?:\.\./)+\w[\w./-]*")  # "../" alone names no path
SECTION = re.compile(r"docs/method\.md,?\s+sections?\s+(\d+)(?:(?:-|\s+and\s+|,\s+)(\d+))?")


def tracked():
    """The files users get: ``git ls-files``; outside a git checkout (an unpacked archive), every file but the
    outputs that .gitignore names."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
        return sorted(f for f in listed.stdout.split("\0") if f)
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "runs", "data", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return sorted(os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/")
                      for root, dirs, files in os.walk(REPO) if not dirs.__setitem__(slice(None), [
                          d for d in dirs if d not in skip]) for f in files)


TRACKED = tracked()
TRACKED_SET = set(TRACKED)
TRACKED_DIRS = {"/".join(f.split("/")[:k]) for f in TRACKED for k in range(1, f.count("/") + 1)}


def texts():
    """(path, text) of every tracked text file but this one (whose patterns would match themselves)."""
    for path in TRACKED:
        if path == "tests/test_docs.py":
            continue
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                yield path, f.read()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary (images, fixtures) or deleted in the working tree


def resolve(source, target):
    """``target`` as a repository path, relative to ``source``'s folder; None when it leaves the repository."""
    path = os.path.normpath(os.path.join(os.path.dirname(source), target))
    return None if path.startswith("..") else path.replace(os.sep, "/")


def exists(path):
    return path in TRACKED_SET or path in TRACKED_DIRS or path == "."


def slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    seen, result = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = slug(heading)
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def test_markdown_links_resolve():
    broken = []
    for path, text in texts():
        if not path.endswith(".md"):
            continue
        for target in MD_LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = resolve(path, file) if file else path
            if resolved is None or not exists(resolved):
                broken.append(f"{path}: link to {target} (no such file in the repository)")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                broken.append(f"{path}: link to {target} (no heading #{anchor} in {resolved})")
    assert not broken, "\n".join(broken)


def test_markdown_names_in_code_scripts_and_docs_exist():
    """A ``name.md`` anywhere (docstrings, help texts, comments, scripts, docs) is a tracked file: a path from the
    repository root or from the citing file's folder, or the name of one tracked file; or a file the code writes."""
    names = {os.path.basename(f) for f in TRACKED}
    broken = []
    for path, text in texts():
        for name in set(MD_NAME.findall(text)):
            base = os.path.basename(name)
            if base in WRITTEN:
                continue
            if "/" in name.lstrip("./"):
                if not (exists(name.lstrip("/")) or exists(resolve(path, name) or "")):
                    broken.append(f"{path}: {name}")
            elif base not in names:
                broken.append(f"{path}: {name}")
    assert not broken, "refers to documents the repository does not have:\n" + "\n".join(sorted(broken))
    for name, writer in WRITTEN.items():  # an output name is exempt only while the code really writes it
        with open(os.path.join(REPO, writer), encoding="utf-8") as f:
            assert f'"{name}"' in f.read()


def test_parent_paths_stay_inside_the_repository():
    broken = []
    for path, text in texts():
        for target in PARENT_PATH.findall(text):
            resolved = resolve(path, target.rstrip("."))
            if resolved is None or not exists(resolved.rstrip("/")):
                broken.append(f"{path}: {target}")
    assert not broken, "paths outside the repository or to nothing:\n" + "\n".join(sorted(broken))


def test_method_section_citations_exist():
    with open(os.path.join(REPO, "docs", "method.md"), encoding="utf-8") as f:
        sections = {int(n) for n in re.findall(r"^## (\d+)\. ", f.read(), flags=re.M)}
    assert sections == set(range(1, 11))
    cited = [(path, int(n)) for path, text in texts() for match in SECTION.finditer(text)
             for n in match.groups() if n]
    assert cited, "no citation found: the pattern is wrong"
    assert not [c for c in cited if c[1] not in sections]


PAPER_NUMBER = re.compile(r"\b(?:[Ee]qs?\.|[Ee]quations?|Algorithm|Alg\.|Fig\.|Figure|Table|Tab\.)"
                          r"\s*\(?(?:\d+|[IVX]+)\b")


def test_no_unchecked_number_of_the_paper():
    """Only the paper's first page could be checked (docs/method.md, "Citing the paper"): code and documents quote
    no equation, algorithm, figure or table number but Fig. 4, the validation curves the plots reproduce."""
    quoted = {(path, match.group()) for path, text in texts() for match in PAPER_NUMBER.finditer(text)}
    assert any(number == "Fig. 4" for _, number in quoted), "no citation found: the pattern is wrong"
    assert not {(path, number) for path, number in quoted if number != "Fig. 4"}


README_LINES = 250  # the front page: what the method is, the Quickstart, results, the paper scripts, the contents
RATIO = re.compile(r"\b\d+\.\d+x\b")  # "1.85x"
NUMBER = r"\d[\d,]*(?:\.\d+)?"
# "6,659 images/s", "876 against 403 images/s", "6,659 (MB) and 4,978 (MU) images/s": every number of the run
THROUGHPUT = re.compile(rf"(?:{NUMBER}(?: \([A-Za-z]+\))?(?:, | and | against | vs\.? | to | or ))*{NUMBER}"
                        rf"(?: \([A-Za-z]+\))? images/s")


def test_readme_is_one_screen_of_front_page():
    """README.md is the front page; the reference moved to docs/ (issue 21)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def quoted_figures(text):
    """The "N.NNx" ratios and the numbers of every images/s figure in ``text`` (a line break counts as a space)."""
    text = re.sub(r"\s+", " ", text)
    return set(RATIO.findall(text)) | {n for match in THROUGHPUT.finditer(text)
                                       for n in re.findall(NUMBER, match.group())}


def test_ratios_and_throughputs_in_the_docs_are_in_the_benchmark_results():
    """Every "N.NNx" ratio and images/s figure the README, CONTRIBUTING.md and docs/ quote is written, as the same
    string, in benchmarks/RESULTS.md, where its machine, date and command are; a figure computed from others is
    written as a factor with its arithmetic ("x1.68, derived: 6,659 / 3,959"), which this pattern leaves alone."""
    with open(os.path.join(REPO, "benchmarks", "RESULTS.md"), encoding="utf-8") as f:
        results = f.read()
    pages = [p for p in TRACKED if p in ("README.md", "CONTRIBUTING.md") or re.fullmatch(r"docs/[^/]+\.md", p)]
    quoted = {}
    for page in pages:
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            for figure in quoted_figures(f.read()):
                quoted.setdefault(figure, []).append(page)
    assert {"1.85x", "6,659", "403"} <= set(quoted), "the patterns find no figure: they are wrong"
    missing = {figure: where for figure, where in quoted.items()
               if not re.search(rf"(?<![\d,.]){re.escape(figure)}(?![\d,]|\.\d)", results)}
    assert not missing, "figures not in benchmarks/RESULTS.md:\n" + "\n".join(
        f"{figure} ({', '.join(where)})" for figure, where in sorted(missing.items()))
