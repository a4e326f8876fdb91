"""The documentation holds together: every relative link in README.md and docs/*.md reaches a file, and each
``#anchor`` a heading (GitHub's slugs); the README stays the front door. (``mkdocs build --strict``, in CI, checks
the site and the API reference made from the docstrings.)"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def relative_links(text: str) -> list[str]:
    """The links of a Markdown text outside code, but not those with a scheme (http:, mailto:)."""
    text = re.sub(r"(`+)(?:(?!\1).)+?\1", "", FENCE.sub("", text))
    return [m.group(2) for m in LINK.finditer(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", m.group(2))]


def anchors(text: str) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCE.sub("", text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_the_checker_finds_links_and_anchors():
    text = (
        "# A title\n## Use it: `ccad`\n[x](other.md#a-title) `[no](code.md)` [web](https://x.org)\n```\n[no](y.md)\n```"
    )
    assert relative_links(text) == ["other.md#a-title"]
    assert anchors(text + "\n## A title") == {"a-title", "use-it-ccad", "a-title-1"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == []


def test_the_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    first = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M).group(1)
    install, tests = [line for line in first.splitlines() if line.strip()][:2]
    assert "ccad demo" in install and tests.startswith("python -m pytest")
    linked = {Path(t.partition("#")[0]).name for t in relative_links(text)}
    assert {p.name for p in PAGES[1:] if p.name != "index.md"} <= linked  # every page is reachable from it
