"""The guide stays a guide: README.md is short, every relative link in it and in docs/ leads to a file
that exists, and the results page is exactly what bench/results_page.py renders from bench/results/."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

from conftest import ROOT

# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = "\n".join(line for line in text.splitlines() if not line.startswith("    "))  # indented code
    targets = LINK.findall(CODE.sub("", text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # no scheme: a file here, or "#x" on this page


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, as MkDocs (Python-Markdown's toc) and GitHub make them."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", path.read_text()), re.M):
        text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
        found.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower()))
    return found


def results_page():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "bench" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_guide_of_at_most_300_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to a page in docs/"


def test_every_relative_link_in_the_readme_and_the_docs_points_to_a_file() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) > 10, pages
    broken = []
    for page in pages:
        for target in relative_links(page):
            file, _, anchor = target.partition("#")
            linked = page.parent / file if file else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to missing files or headings:\n" + "\n".join(broken)


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    """Kills: a link pattern that matches nothing, or anchors made unlike MkDocs (every page would pass or fail)."""
    page = tmp_path / "page.md"
    page.write_text("# The `make` step, again\n\nSee [setup](getting-started.md#install), [x](https://a.b/c), `[no](code.md)`, [up](#top).\n")
    assert relative_links(page) == ["getting-started.md#install", "#top"]
    assert anchors(page) == {"the-make-step-again"}


def test_the_results_page_is_what_the_script_renders_from_the_json_files() -> None:
    """docs/results.md is generated: a figure edited on the page, or a JSON file added without
    rendering the page again, fails here."""
    module = results_page()
    page = (ROOT / "docs" / "results.md").read_text()
    assert page == module.render(), "docs/results.md differs from bench/results/*.json: run python bench/results_page.py"


def test_every_measurement_names_its_date_machine_and_command(tmp_path: Path, monkeypatch) -> None:
    """Kills: a results page that renders a measurement without saying when and where it was made."""
    module = results_page()
    measurements = module.load()
    assert len(measurements) >= 20
    page = module.render()
    for _, record in measurements:
        assert f"*{record['date']}; {record['machine']}*" in page, record["title"]
    (tmp_path / "x.json").write_text('{"section": "The main job", "title": "t", "machine": "m", "command": "c"}')
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    try:
        module.load()
    except SystemExit as refused:
        assert "needs its 'date'" in str(refused)
    else:
        raise AssertionError("a measurement without a date was accepted")
