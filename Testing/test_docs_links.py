"""The documentation holds together: every relative link and picture in README.md and docs/ points at a file
that exists (and every #anchor at a heading of that page), the README stays a five-minute read, no page names an
issue number, and the ExtensionsIndex description file agrees with the index's schema and with CMakeLists.txt.

No network, no engine import: plain file reading, so it runs in a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 200

# Pages whose owners have not yet taken the issue numbers out of their text (the lead empties this set).
ISSUE_NUMBERS_ALLOWED: set[str] = set()


def pages() -> list[Path]:
    return [README] + sorted(DOCS.rglob("*.md"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# ----------------------------------------------------------------------------------------- Markdown reading
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, INLINE_CODE.sub("", line)))
    return out


def targets(text: str) -> list[tuple[int, str]]:
    """Every link and picture target of a Markdown page: inline, reference definitions and HTML."""
    found = []
    for number, line in prose_lines(text):
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        found += [(number, m.group(1)) for m in HTML_TARGET.finditer(line)]
        m = REFERENCE_DEF.match(line)
        if m:
            found.append((number, m.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


# ------------------------------------------------------------------------------------------------ the tests
def test_the_pages_are_found():
    assert README.exists()
    assert len(pages()) > 5, "docs/ should hold the documentation pages"


def test_the_readme_is_a_five_minute_read():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it to about {README_MAX_LINES} and move detail to a page in docs/")


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_relative_link_and_picture_resolves(page: Path):
    problems = []
    for number, target in targets(page.read_text(encoding="utf-8")):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{rel(page)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        try:
            dest.relative_to(REPO)
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: {rel(dest)} has no heading with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_no_page_names_an_issue_number(page: Path):
    if rel(page) in ISSUE_NUMBERS_ALLOWED:
        pytest.skip(f"{rel(page)} still names issue numbers (its owner's to rewrite)")
    hits = [f"{rel(page)}:{n}: {line.strip()[:100]}" for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\b(?:issue|pull request|PR)s?\s*#?\d+", line, re.IGNORECASE)]
    assert not hits, "pages say what is true now; history by issue number belongs in git:\n" + "\n".join(hits)


def test_the_slug_rule_matches_githubs():
    assert slug("Pretraining throughput (`scripts/bench_pretrain.py`)") == "pretraining-throughput-scriptsbench_pretrainpy"
    assert slug("The refined network's cost by stem and depth") == "the-refined-networks-cost-by-stem-and-depth"
    assert slug("In 3D Slicer: the Correct section") == "in-3d-slicer-the-correct-section"


# --------------------------------------------------------------------------- the ExtensionsIndex listing
LISTING = DOCS / "extensions-index" / "ContrastSeg.json"
# The fields of the index's schema slicer-extension-catalog-entry-schema-v1.0.2.json (github.com/Slicer/
# ExtensionsIndex, schemas/; read at its commit 07f1d1b, 2026-08-07): required ones, and every one it allows.
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_FIELDS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                 "enabled": bool, "tier": int}


def cmake_variable(name: str) -> str:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    m = re.search(rf'set\s*\(\s*{name}\s+"([^"]*)"\s*\)', text)
    assert m, f"CMakeLists.txt sets no {name}"
    return m.group(1)


def test_the_listing_fits_the_index_schema():
    raw = LISTING.read_bytes()
    assert b"\r" not in raw, "the index wants LF line endings"
    entry = json.loads(raw)
    assert SCHEMA_REQUIRED <= set(entry), f"missing {sorted(SCHEMA_REQUIRED - set(entry))}"
    assert set(entry) <= set(SCHEMA_FIELDS), f"fields the schema does not allow: {sorted(set(entry) - set(SCHEMA_FIELDS))}"
    for key, kind in SCHEMA_FIELDS.items():
        if key in entry:
            assert isinstance(entry[key], kind) and not (kind is int and isinstance(entry[key], bool)), key
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.")
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))


def test_the_listing_agrees_with_cmakelists():
    entry = json.loads(LISTING.read_text(encoding="utf-8"))
    project = re.search(r"project\s*\(\s*([^\s)]+)", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"), re.IGNORECASE)
    assert project and project.group(1) == LISTING.stem, "the file must be named after the CMake project"
    assert entry["category"] == cmake_variable("EXTENSION_CATEGORY")
    assert sorted(entry.get("build_dependencies", [])) == sorted(cmake_variable("EXTENSION_DEPENDS").split())
    homepage = cmake_variable("EXTENSION_HOMEPAGE").rstrip("/")
    assert entry["scm_url"].removesuffix(".git").rstrip("/") == homepage
    assert homepage.rsplit("/", 1)[-1].startswith("Slicer"), "the index wants the repository named Slicer..."
    assert not LISTING.stem.lower().startswith("slicer"), "the index wants the extension not named Slicer..."


def test_the_listings_icon_and_screenshots_are_files_of_this_repository():
    owner_repo = cmake_variable("EXTENSION_HOMEPAGE").rstrip("/").split("github.com/", 1)[-1]
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    urls = [cmake_variable("EXTENSION_ICONURL")] + cmake_variable("EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        assert url.startswith(prefix), f"{url} is not a raw URL of the homepage's main branch"
        path = REPO / url[len(prefix):]
        assert path.is_file() and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif"), f"{url}: no such picture here"
        assert url[len(prefix):] in (DOCS / "extensions-index" / "README.md").read_text(encoding="utf-8"), \
            f"docs/extensions-index/README.md does not list {url}"
