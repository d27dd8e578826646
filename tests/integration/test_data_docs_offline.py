"""The Great Expectations Data Docs read styled with no network.

GX's templates load Bootstrap, bootstrap-table, jQuery, Font Awesome and more from CDNs; `validate_frame` bundles
local copies into the docs site (components/data/docs_offline.py). Built here through the real validation code, on
data that fails and warns (so the pages carry failure tables, not only green ticks); the control is the same site
as GX wrote it, before bundling.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from components.data import validation
from components.data.docs_offline import CDN_RULES, VENDOR_DIR, bundle_offline
from components.data.policy import ValidationPolicy
from tests.support.browser import needs_chromium, probe_offline
from tests.support.tiny import LABELS, REPO

SCREENSHOTS = REPO / "tests" / "_screenshots"
_REMOTE_ASSET = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.IGNORECASE)
_REF = re.compile(r'\b(?:src|href)="([^"#][^"]*)"', re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


def _frame(sample_df):
    bad = sample_df.head(200).copy()
    bad.loc[:4, "text"] = None  # missing texts: an error rule fails with examples
    bad.loc[5:9, "label"] = "weather"  # a label outside the allowed set
    return bad


def _build(df, docs: Path) -> Path:
    policy = ValidationPolicy(labels=LABELS, min_examples_per_class=5)
    report = validation.validate_frame(df, policy, "offline-docs", docs_dir=docs)
    assert not report.passed  # the pages show failures
    return docs


@pytest.fixture(scope="module")
def sites(tmp_path_factory, sample_df) -> tuple[Path, Path]:
    """(bundled, raw): the docs as `validate_frame` leaves them, and as GX alone wrote them."""
    root = tmp_path_factory.mktemp("data-docs")
    bundled = _build(_frame(sample_df), root / "bundled")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation, "bundle_offline", lambda docs_dir: None)
        raw = _build(_frame(sample_df), root / "raw")
    return bundled, raw


def _pages(site: Path) -> list[Path]:
    pages = sorted(site.rglob("*.html"))
    assert any(p.name == "index.html" for p in pages) and any("validations" in p.parts for p in pages)
    return pages


def test_no_page_loads_a_script_or_stylesheet_from_the_network(sites):
    bundled, raw = sites
    assert all(_REMOTE_ASSET.search(p.read_text()) for p in _pages(raw) if p.name != validation.CLEANING_PAGE)
    for page in _pages(bundled):
        text = page.read_text()
        assert not _REMOTE_ASSET.search(text), f"{page} still loads from a CDN"
        assert "great-expectations-web-assets" not in text and "prefers-color-scheme: dark" not in text
        assert "vegaEmbed" not in text  # Vega is dropped as unused: a graph-rendering expectation needs it back
    for css in (bundled / "static" / "styles").glob("*.css"):
        assert "https://" not in css.read_text()


def test_every_local_reference_exists(sites):
    bundled, _ = sites
    checked = 0
    for page in _pages(bundled):
        for ref in _REF.findall(page.read_text()):
            if re.match(r"(?:https?:|mailto:|javascript:)", ref):
                continue  # links a person follows, not assets the page loads
            target = (page.parent / unquote(urlsplit(ref).path)).resolve()
            assert target.is_file() and bundled.resolve() in target.parents, f"{page}: {ref} -> {target}"
            checked += 1
    assert checked > 30
    vendored = bundled / VENDOR_DIR
    for css in vendored.rglob("*.css"):
        for url in _CSS_URL.findall(css.read_text()):
            if url.startswith("data:") or url.endswith(".ttf"):
                continue  # .ttf: Font Awesome's fallback after the woff2 copied beside it
            assert (css.parent / urlsplit(url).path).resolve().is_file(), f"{css}: {url}"
    assert (vendored / "font-awesome" / "webfonts" / "fa-solid-900.woff2").is_file()


def test_every_cdn_reference_of_gx_has_a_rule_and_bundling_is_idempotent(sites, tmp_path):
    _, raw = sites
    site = tmp_path / "site"
    shutil.copytree(raw, site)
    first = bundle_offline(site)
    assert first.unknown == ()  # a new GX template with a new CDN link fails here: add a rule in CDN_RULES
    assert {r.pattern for r in CDN_RULES if any(re.fullmatch(r.pattern, u) for u in first.replaced + first.dropped)} \
        == {r.pattern for r in CDN_RULES}  # every rule is still needed
    assert first.pages == len(_pages(site)) and f"{VENDOR_DIR}/jquery/jquery.min.js" in first.assets
    pages = {p: p.read_text() for p in _pages(site)}
    second = bundle_offline(site)
    assert (second.replaced, second.dropped, second.unknown) == ((), (), ())
    assert pages == {p: p.read_text() for p in _pages(site)}


@needs_chromium
def test_pages_render_styled_offline_and_the_cdn_pages_do_not(sites, tmp_path):
    bundled, raw = sites
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in (("index", bundled / "index.html"),
                       ("validation", next((bundled / "validations").rglob("*.html")))):
        shot = SCREENSHOTS / "data-docs-offline-index.png" if name == "index" else None  # for a person to look at
        seen = probe_offline(page, tmp_path / f"profile-{name}", shot)
        assert seen["remote"] == [] and seen["scriptErrors"] == [], seen  # nothing tried over the network
        assert seen["navbarDisplay"] == "flex" and "Times New Roman" not in seen["bodyFont"], seen  # Bootstrap
        assert seen["jquery"] == "function" and seen["tables"] >= 1 and seen["tableRows"] >= 1, seen
        assert "Font Awesome" in (seen["iconFont"] or "") and seen["iconFontLoaded"], seen
    # Positive control: the same index as GX wrote it, offline, is unstyled and lists no validation at all.
    control = probe_offline(raw / "index.html", tmp_path / "profile-raw")
    assert control["remote"], control  # it did try the CDNs
    assert control["navbarDisplay"] == "block" and "Times New Roman" in control["bodyFont"], control
    assert control["jquery"] == "undefined" and control["tables"] == 0, control
    assert any("$ is not defined" in e for e in control["scriptErrors"]), control
