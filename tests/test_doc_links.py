"""Every file the docs link to or name as a file of this repository exists in it, and is not git-ignored (so a
fresh checkout has it too).

The rule, strict where a doc points a reader at a file and silent where it shows a command or a placeholder:

- Links: every markdown link `[text](target)` / `![alt](target)` in README.md and in every .md under docs/
  (generated reports included), outside fenced code blocks. External targets (a scheme such as https: or
  mailto:) and pure anchors (#...) are skipped; an anchor after a path is cut. The target, relative to the
  document, must exist inside the repository.
- Named paths: every inline-code span of README.md and docs/*.md (outside fenced code blocks, which hold commands)
  that is one token (no space) and starts with a top-level folder of the repository (`docs/`, `openrlhf_tapo/`,
  `examples/`, `tests/`, ...). It is resolved from the repository root: a trailing `:12` / `:12-20` line
  reference or `::name` test id is cut; `<placeholder>` and `*` match any name and `{a,b}` either spelling, and
  at least one file must match. Spans ending in `...` (an elided example) are skipped.
- Not checked: paths that start elsewhere, i.e. the outputs of a command (`runs/...`), placeholders for a folder
  the reader chooses (`OUT/...`, `$SAVE_PATH/...`), paths inside a run directory (`model/warm_start`), files of
  other projects (`openrlhf/...`, `vllm/...`), and package-relative module names (`task/gates.py`), which name
  code rather than files to open.
"""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("docs", "openrlhf_tapo", "examples", "tests", "configs", "scripts", "benchmarks", "requirements")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"`([^`\n]+)`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def _docs(recursive: bool) -> list[Path]:
    pattern = "docs/**/*.md" if recursive else "docs/*.md"
    return [ROOT / "README.md", *sorted(ROOT.glob(pattern))]


def link_targets(text: str) -> list[str]:
    """The local targets of the markdown links in `text` (anchors cut; external and anchor-only links skipped)."""
    targets = []
    for target in LINK.findall(text):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def named_paths(text: str) -> list[str]:
    """The repository paths `text` names in inline code (the rule in the module docstring), as glob patterns."""
    paths = []
    for span in CODE.findall(text):
        span = span.strip()
        if " " in span or span.endswith("...") or span.split("/", 1)[0] not in TOP_LEVEL or "/" not in span:
            continue
        span = re.sub(r"::.*$", "", span)
        span = re.sub(r":\d+(-\d+)?(,\d+(-\d+)?)*$", "", span)
        span = re.sub(r"<[^>/]*>", "*", span)
        paths.extend(_braces(span))
    return paths


def _braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [
        p
        for alt in match.group(1).split(",")
        for p in _braces(pattern[: match.start()] + alt + pattern[match.end() :])
    ]


def _ignored(paths: list[Path]) -> set[Path]:
    """Those of `paths` that .gitignore ignores (none when git is not available)."""
    if not paths or not (ROOT / ".git").exists():
        return set()
    try:
        out = subprocess.run(
            ["git", "check-ignore", "--no-index", *map(str, paths)], cwd=ROOT, capture_output=True, text=True
        )
    except FileNotFoundError:
        return set()
    return {Path(line) for line in out.stdout.splitlines()}


def missing_links(doc: Path) -> list[str]:
    problems, found = [], []
    for target in link_targets(_prose(doc)):
        path = (doc.parent / target).resolve()
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{target} (outside the repository)")
        elif not path.exists():
            problems.append(f"{target} (does not exist)")
        else:
            found.append(path)
    problems += [f"{p.relative_to(ROOT)} (ignored by .gitignore)" for p in _ignored(found)]
    return problems


def missing_named_paths(doc: Path) -> list[str]:
    problems, found = [], []
    for pattern in named_paths(_prose(doc)):
        matches = [Path(p) for p in glob.glob(str(ROOT / pattern))]
        if not matches:
            problems.append(f"{pattern} (no such file or folder)")
        found += [m.resolve() for m in matches]
    problems += [f"{p.relative_to(ROOT)} (ignored by .gitignore)" for p in _ignored(found)]
    return problems


@pytest.mark.parametrize("doc", _docs(recursive=True), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(doc):
    assert missing_links(doc) == [], f"{doc.relative_to(ROOT)} links to files a checkout does not have"


@pytest.mark.parametrize("doc", _docs(recursive=False), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_repository_path_exists(doc):
    assert missing_named_paths(doc) == [], f"{doc.relative_to(ROOT)} names files a checkout does not have"


def test_the_rule_itself():
    text = (
        "[a](docs/x.md#part) [b](https://example.org) [c](#anchor) ![d](img/e.png)\n"
        "`docs/study/runs/<arm>/seed<s>/metrics.jsonl` `openrlhf_tapo/task/gates.py:55-64` `tests/t.py::test_x`\n"
        "`kb/questions_{train,eval}.jsonl` `docs/{a,b}.md` `runs/demo` `OUT/summary.json` `task/gates.py` "
        "`docs/...` `python -m x --out docs/y`\n"
        "```bash\n[e](nowhere.md) `docs/in_a_fence.md`\n```\n"
    )
    prose = FENCE.sub("", text)
    assert link_targets(prose) == ["docs/x.md", "img/e.png"]
    assert named_paths(prose) == [
        "docs/study/runs/*/seed*/metrics.jsonl",
        "openrlhf_tapo/task/gates.py",
        "tests/t.py",
        "docs/a.md",
        "docs/b.md",
    ]
