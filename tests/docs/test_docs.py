"""README.md and docs/: short README, the two set-up commands, links that resolve, code that parses, and measured
numbers that match the bench/results/ table they cite (issue 42). Fast: no model is loaded.

The numbers rule (docs/speed.md, "How measured numbers are quoted", says the same for readers):

- A Markdown file is cut into *blocks*: a paragraph, a list item (with its indented continuation lines), a table,
  or a heading. Fenced code is not a block.
- A block *cites* bench/results/FILE.md when it holds a Markdown link to that file. A table also cites what the
  block just above it (its caption) links to.
- In a citing block, every number outside inline code and outside link targets that has a decimal point (0.577), a
  thousands separator (1,208), a % sign (89.55%), an x ratio suffix (1.32x) or at least three digits (196) must
  equal a number written in one of the cited files. Numbers are compared as decimals after the thousands separators
  are removed: 3.1 matches 3.10, but a rounded 1.46 does not match 1.463, and a made-up 1.33 matches nothing.
- Every mention of a bench/results/ file is a link (so the rule sees it), and no doc cites a table under
  bench/results/archive/ or one that says its timings are not results.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
MAX_README_LINES = 200
SETUP_COMMANDS = ["bash scripts/quickstart.sh", "bash scripts/test.sh"]


def doc_files() -> list[Path]:
    return [README] + sorted((ROOT / "docs").glob("*.md"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------------------ Markdown pieces

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")
# a number not glued to a word or to another number; its suffix % or x (not the start of a word like "xl")
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(%|x(?![A-Za-z0-9]))?(?!\.\d)(?![A-Za-z0-9_])")
PLAIN_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def blocks(text: str) -> list[tuple[str, str]]:
    """(kind, text) for every paragraph, list item, table and heading, in order; fenced code is left out."""
    out: list[list] = []
    current = None
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            current = None
            continue
        if in_fence:
            continue
        if not line.strip():
            current = None
            continue
        if line.lstrip().startswith("#"):
            out.append(["heading", line])
            current = None
        elif line.lstrip().startswith("|"):
            if current is not None and current[0] == "table":
                current[1] += "\n" + line
            else:
                current = ["table", line]
                out.append(current)
        elif LIST_ITEM.match(line):
            current = ["item", line]
            out.append(current)
        elif current is not None and current[0] != "table":
            current[1] += "\n" + line
        else:
            current = ["paragraph", line]
            out.append(current)
    return [(kind, body) for kind, body in out]


def link_targets(text: str) -> list[str]:
    return [target for _, target in LINK.findall(CODE_SPAN.sub("", text))]


def local_target(doc: Path, target: str) -> Path | None:
    """The file a relative link points to (anchor removed); None for web links and same-page anchors."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
        return None
    path = target.split("#", 1)[0]
    if not path:
        return None
    return (doc.parent / path).resolve()


def cited_tables(doc: Path, text: str) -> set[Path]:
    found = set()
    for target in link_targets(text):
        path = local_target(doc, target)
        if path is not None and RESULTS.resolve() in path.parents:
            found.add(path)
    return found


def quoted_numbers(text: str) -> list[str]:
    """The numbers of a block the rule checks, as written (suffix included)."""
    text = CODE_SPAN.sub(" ", text)
    text = LINK.sub(lambda m: m.group(1), text)  # keep link text, drop link targets
    out = []
    for m in NUMBER.finditer(text):
        digits, suffix = m.group(1), m.group(2)
        if "." in digits or "," in digits or suffix or len(digits) >= 3:
            out.append(digits + (suffix or ""))
    return out


def as_decimal(number: str) -> Decimal:
    return Decimal(number.rstrip("%x").replace(",", ""))


def numbers_in(path: Path) -> set[Decimal]:
    return {as_decimal(n) for n in PLAIN_NUMBER.findall(path.read_text(encoding="utf-8"))}


def number_problems(doc: Path, text: str) -> list[str]:
    """Every checked number of a citing block that none of its cited tables holds, with where it is."""
    problems = []
    parsed = blocks(text)
    for i, (kind, body) in enumerate(parsed):
        cited = cited_tables(doc, body)
        if kind == "table" and i > 0 and parsed[i - 1][0] == "paragraph":
            cited |= cited_tables(doc, parsed[i - 1][1])
        cited = {p for p in cited if p.is_file()}  # a missing table is the link test's finding
        if not cited:
            continue
        known = set().union(*(numbers_in(p) for p in cited))
        for number in quoted_numbers(body):
            if as_decimal(number) not in known:
                names = ", ".join(sorted(p.name for p in cited))
                first = body.strip().splitlines()[0][:90]
                problems.append(f"{rel(doc)}: {number} is not in {names} (block: {first!r})")
    return problems


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


# ------------------------------------------------------------------------------------------------ the README


def test_readme_is_at_most_200_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move a topic to docs/ (at most {MAX_README_LINES})"


def test_readme_two_commands_block_holds_exactly_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    assert "\n## Two commands\n" in text
    section = text.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    bash = code_blocks(section, "bash")
    assert bash, "the Two commands section has no ```bash block"
    commands = [line.split("#", 1)[0].strip() for line in bash[0].splitlines()]
    assert [c for c in commands if c] == SETUP_COMMANDS


def test_readme_feature_table_links_every_row_to_a_docs_page_and_every_page_is_linked():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## What it does\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    assert len(rows) >= 10
    for row in rows:
        assert any(t.startswith("docs/") and t.split("#")[0].endswith(".md") for t in link_targets(row)), row
    linked = {local_target(README, t) for t in link_targets(text)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.resolve() in linked, f"README.md does not link {rel(page)}"


# ------------------------------------------------------------------------------------------------ every doc


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_relative_links_point_to_files_that_exist(doc):
    missing = []
    for target in link_targets(doc.read_text(encoding="utf-8")):
        path = local_target(doc, target)
        if path is not None and not path.exists():
            missing.append(target)
    assert not missing, f"{rel(doc)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_numbers_quoted_from_bench_results_appear_in_the_cited_table(doc):
    problems = number_problems(doc, doc.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_bench_results_are_cited_as_links_and_never_from_archived_or_busy_tables(doc):
    text = doc.read_text(encoding="utf-8")
    prose = "\n".join(body for _, body in blocks(text))  # fenced code left out
    named = re.findall(r"bench/results/[\w./-]+\.md", LINK.sub("", prose))
    assert not named, f"{rel(doc)} names {named} without linking it; link it so its numbers are checked"
    for target in link_targets(text):
        path = local_target(doc, target)
        if path is None or RESULTS.resolve() not in path.parents:
            continue
        assert "archive" not in path.relative_to(RESULTS.resolve()).parts, f"{rel(doc)} cites {target}"
        if path.is_file():
            assert "not results" not in path.read_text(encoding="utf-8"), (
                f"{rel(doc)} cites {target}, which says its timings are not results")


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_python_blocks_parse_and_import_loraclf_modules_that_exist(doc):
    for block in code_blocks(doc.read_text(encoding="utf-8"), "python"):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name == "loraclf" or name.startswith("loraclf."):
                    assert importlib.util.find_spec(name) is not None, f"{rel(doc)} imports {name}, which does not exist"


# ------------------------------------------------------------------------------------------------ the checker itself

ZEN4 = "../bench/results/predict_speed_zen4.md"


def test_the_number_rule_flags_a_planted_wrong_number():
    doc = ROOT / "docs" / "planted.md"
    right = f"bf16 autocast 196 texts/s; the onnxruntime engine 258 texts/s, 1.32x bf16, 89.60% ([table]({ZEN4})).\n"
    assert number_problems(doc, right) == []
    planted = f"bf16 autocast 196 texts/s; the onnxruntime engine 263 texts/s, 1.33x bf16, 89.60% ([table]({ZEN4})).\n"
    flagged = number_problems(doc, planted)
    assert [p.split(": ")[1].split(" ")[0] for p in flagged] == ["263", "1.33x"]


def test_the_number_rule_catches_rounding_and_checks_whole_list_items_and_captioned_tables():
    doc = ROOT / "docs" / "planted.md"
    amx = "../bench/results/train_speed_amx.md"
    rounded = f"The loop ran at 1.46x the Trainer's tokens/s ([table]({amx})).\n"
    assert [p.split(": ")[1].split(" ")[0] for p in number_problems(doc, rounded)] == ["1.46x"]
    assert number_problems(doc, rounded.replace("1.46x", "1.463x")) == []
    wrapped = f"- bf16 ran at 196 texts/s ([table]({ZEN4})),\n  and the torch engine at 1.021x.\n"
    assert [p.split(": ")[1].split(" ")[0] for p in number_problems(doc, wrapped)] == ["1.021x"]
    table = f"Measured ([table]({ZEN4})):\n\n| engine | texts/s |\n| --- | --- |\n| onnxruntime | 258 |\n| torch | 201 |\n"
    assert [p.split(": ")[1].split(" ")[0] for p in number_problems(doc, table)] == ["201"]


def test_the_number_rule_ignores_code_link_targets_and_short_integers():
    doc = ROOT / "docs" / "planted.md"
    text = f"`python bench/predict_speed.py --batch-size 4096` on 2 cores, 3 seeds ([zen4 1.32x]({ZEN4})).\n"
    assert number_problems(doc, text) == []
    assert quoted_numbers("1e-4, 2.5e-3, bf16, MiniLM-L6, TREC-6, p50 and 1,208.") == ["1,208"]
