"""Great Expectations Data Docs that render styled with no network.

GX's page templates load Bootstrap, bootstrap-table, jQuery, Font Awesome and more from CDNs, so the docs logged to
an MLflow run and opened from disk offline (or behind a proxy, or after a CDN moves) are unstyled, and their index
lists no validation at all: bootstrap-table builds that table in the browser. `bundle_offline` copies local builds of
those files into the docs site and rewrites every page to load them by relative path. References our pages do not
use are dropped, never left pointing at a CDN.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.errors import ConfigError

log = logging.getLogger(__name__)

VENDORED = Path(__file__).with_name("docs_assets")
"""Assets no maintained pip package ships (bootstrap-table), copied unchanged from npm; see its README."""
VENDOR_DIR = "static/vendor"
"""Where the copies go, relative to the docs site's root."""


@dataclass(frozen=True)
class LocalAsset:
    """A file a page loads (`entry`) plus the files it loads itself (`extra` globs), taken from an XStatic package's
    data directory (`package`, with its pip name in `pip`) or from `VENDORED` (`package` None), and copied to
    `VENDOR_DIR/dest/` keeping their relative paths (so Font Awesome's `../webfonts/` still resolves)."""

    entry: str
    dest: str
    package: str | None = None
    pip: str | None = None
    extra: tuple[str, ...] = ()

    def source_root(self) -> Path:
        if self.package is None:
            return VENDORED / self.dest
        try:
            return Path(importlib.import_module(self.package).BASE_DIR)
        except ImportError as err:
            raise ConfigError(f"the offline Data Docs need {self.pip} (a fineship dependency): "
                              f"pip install '{self.pip}'") from err

    def files(self) -> list[str]:
        root = self.source_root()
        found = [self.entry] + sorted(p.relative_to(root).as_posix() for g in self.extra for p in root.glob(g))
        missing = [f for f in found if not (root / f).is_file()]
        if missing:
            raise ConfigError(f"{self.pip or VENDORED} lacks {', '.join(missing)} (looked in {root}); reinstall it")
        return found

    @property
    def path(self) -> str:
        """Where the page-loaded file is, relative to the docs site's root."""
        return f"{VENDOR_DIR}/{self.dest}/{self.entry}"


_BS, _FA, _DP = "XStatic-Bootstrap==4.5.3.1", "XStatic-Font-Awesome==6.2.1.2", "XStatic-Bootstrap-Datepicker==1.4.0.1"
BOOTSTRAP_CSS = LocalAsset("css/bootstrap.min.css", "bootstrap", "xstatic.pkg.bootstrap", _BS)
BOOTSTRAP_JS = LocalAsset("js/bootstrap.bundle.min.js", "bootstrap", "xstatic.pkg.bootstrap", _BS)
JQUERY = LocalAsset("jquery.min.js", "jquery", "xstatic.pkg.jquery", "XStatic-jQuery==3.7.1.1")
FONT_AWESOME = LocalAsset("css/all.min.css", "font-awesome", "xstatic.pkg.font_awesome", _FA,
                          extra=("webfonts/*.woff2",))  # every browser that runs the pages' scripts reads woff2
DATEPICKER_CSS = LocalAsset("bootstrap-datepicker.standalone.css", "bootstrap-datepicker",
                            "xstatic.pkg.bootstrap_datepicker", _DP)
DATEPICKER_JS = LocalAsset("bootstrap-datepicker.js", "bootstrap-datepicker", "xstatic.pkg.bootstrap_datepicker", _DP)
TABLE_CSS = LocalAsset("bootstrap-table.min.css", "bootstrap-table")
TABLE_JS = LocalAsset("bootstrap-table.min.js", "bootstrap-table")
FILTER_CSS = LocalAsset("bootstrap-table-filter-control.min.css", "bootstrap-table/extensions/filter-control")
FILTER_JS = LocalAsset("bootstrap-table-filter-control.min.js", "bootstrap-table/extensions/filter-control")


@dataclass(frozen=True)
class CdnRule:
    """A CDN URL of GX's templates (`pattern`, matched whole) and the local file standing in for it (None: the
    reference is dropped), with the reason."""

    pattern: str
    asset: LocalAsset | None
    why: str


_BT = r"https://unpkg\.com/bootstrap-table@1\.\d+\.\d+/dist"
_CDNJS = r"https://cdnjs\.cloudflare\.com/ajax/libs"
CDN_RULES: tuple[CdnRule, ...] = (
    CdnRule(r"https://maxcdn\.bootstrapcdn\.com/bootstrap/4\.[\d.]+/css/bootstrap\.min\.css", BOOTSTRAP_CSS,
            "Bootstrap 4.5.3 from XStatic-Bootstrap (GX links 4.3.1; same major)"),
    CdnRule(r"https://stackpath\.bootstrapcdn\.com/bootstrap/4\.[\d.]+/js/bootstrap\.min\.js", BOOTSTRAP_JS,
            "Bootstrap 4.5.3's bundle, which includes Popper"),
    CdnRule(rf"{_CDNJS}/popper\.js/1\.[\d.]+/umd/popper\.min\.js", None,
            "Popper is inside bootstrap.bundle.min.js"),
    CdnRule(r"https://code\.jquery\.com/jquery-3\.[\d.]+\.min\.js", JQUERY, "jQuery 3.7.1 from XStatic-jQuery"),
    CdnRule(rf"{_CDNJS}/font-awesome/6\.[\d.]+/css/all\.min\.css", FONT_AWESOME,
            "Font Awesome 6.2.1 from XStatic-Font-Awesome (GX links 6.6.0; the icons the pages use are in both)"),
    CdnRule(rf"{_BT}/bootstrap-table\.min\.css", TABLE_CSS, "bootstrap-table 1.19.1, vendored"),
    CdnRule(rf"{_BT}/bootstrap-table\.min\.js", TABLE_JS, "bootstrap-table 1.19.1, vendored"),
    CdnRule(rf"{_BT}/extensions/filter-control/bootstrap-table-filter-control(\.min)?\.css", FILTER_CSS,
            "bootstrap-table 1.19.1's filter-control extension, vendored"),
    CdnRule(rf"{_BT}/extensions/filter-control/bootstrap-table-filter-control(\.min)?\.js", FILTER_JS,
            "bootstrap-table 1.19.1's filter-control extension, vendored"),
    CdnRule(rf"{_CDNJS}/bootstrap-datepicker/1\.[\d.]+/css/bootstrap-datepicker\.min\.css", DATEPICKER_CSS,
            "bootstrap-datepicker 1.4.0 from XStatic-Bootstrap-Datepicker (the index's run-time filter)"),
    CdnRule(rf"{_CDNJS}/bootstrap-datepicker/1\.[\d.]+/js/bootstrap-datepicker\.min\.js", DATEPICKER_JS,
            "bootstrap-datepicker 1.4.0 from XStatic-Bootstrap-Datepicker (the index's run-time filter)"),
    CdnRule(r"https://cdn\.jsdelivr\.net/npm/@forevolve/bootstrap-dark@[\d.]+/dist/css/bootstrap-prefers-dark\.css",
            None, "the dark theme: no pip package ships it; the pages render light (GX's own dark overrides are "
                  "removed with it)"),
    CdnRule(r"https://cdn\.jsdelivr\.net/npm/vega(-lite|-embed)?@\d+", None,
            "Vega draws GX's graphs, and no expectation of our suite renders one"),
)

_SCRIPT = re.compile(r'<script\b[^>]*?\bsrc="([^"]*)"[^>]*>\s*</script>', re.IGNORECASE)
_LINK = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
_ATTR = r'\b{}="([^"]*)"'
_REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
# GX's navbar logo comes from its S3 bucket (the same file is in the site's static/images), and its validation pages
# link the favicon one directory short: both point at the site's own static/images.
_GX_IMAGE = re.compile(r'(<(?:img|link)\b[^>]*?\b(?:src|href)=")(?:https://great-expectations-web-assets\.s3\.'
                       r'[\w.-]+\.amazonaws\.com/|(?:\.\.?/)*static/images/)([\w.-]+\.(?:png|ico|svg))(?:\?[^"]*)?(")',
                       re.IGNORECASE)
_DARK_MODE = re.compile(r"@media\s*\(\s*prefers-color-scheme\s*:\s*dark\s*\)\s*\{")


@dataclass(frozen=True)
class OfflineDocs:
    """What `bundle_offline` did to a docs site."""

    pages: int
    assets: tuple[str, ...]
    """Files copied into the site (relative to its root)."""
    replaced: tuple[str, ...]
    """CDN URLs the pages now load from the site."""
    dropped: tuple[str, ...]
    """Known CDN URLs removed as unused (see `CDN_RULES`)."""
    unknown: tuple[str, ...]
    """Remote scripts and stylesheets no rule knows (removed; a new GX template wants a rule)."""


def _rule(url: str) -> CdnRule | None:
    return next((r for r in CDN_RULES if re.fullmatch(r.pattern, url)), None)


def strip_dark_mode(css: str) -> str:
    """Remove `@media (prefers-color-scheme: dark) {...}` blocks: GX's dark overrides assume the dark theme that
    is dropped, and would turn tables dark on a light page (and hide the logo behind a remote image)."""
    out, pos = [], 0
    for m in _DARK_MODE.finditer(css):
        if m.start() < pos:
            continue
        depth, end = 1, m.end()
        while end < len(css) and depth:
            depth += {"{": 1, "}": -1}.get(css[end], 0)
            end += 1
        out.append(css[pos:m.start()])
        pos = end
    return "".join(out) + css[pos:]


def _rewrite(html: str, page: Path, root: Path, used: dict[str, LocalAsset], seen: dict[str, list[str]]) -> str:
    def local(asset: LocalAsset) -> str:
        used[asset.path] = asset
        return Path(os.path.relpath(root / asset.path, page.parent)).as_posix()

    def resolve(url: str, make: str) -> str:
        rule = _rule(url)
        if rule is None:
            seen["unknown"].append(url)
            return ""
        if rule.asset is None:
            seen["dropped"].append(url)
            return ""
        seen["replaced"].append(url)
        return make.format(local(rule.asset))

    def script(m: re.Match[str]) -> str:
        url = m.group(1)
        return resolve(url, '<script src="{}"></script>') if _REMOTE.match(url) else m.group(0)

    def link(m: re.Match[str]) -> str:
        tag = m.group(0)
        href, rel = re.search(_ATTR.format("href"), tag), re.search(_ATTR.format("rel"), tag)
        if not href or not _REMOTE.match(href.group(1)) or not rel or "stylesheet" not in rel.group(1).lower():
            return tag
        return resolve(href.group(1), '<link rel="stylesheet" href="{}">')

    def image(m: re.Match[str]) -> str:
        target = root / "static" / "images" / m.group(2)
        if not target.is_file():
            return m.group(0)
        return m.group(1) + Path(os.path.relpath(target, page.parent)).as_posix() + m.group(3)

    html = _SCRIPT.sub(script, html)
    html = _LINK.sub(link, html)
    html = _GX_IMAGE.sub(image, html)
    return strip_dark_mode(html)


def bundle_offline(docs_dir: str | Path) -> OfflineDocs:
    """Make a GX Data Docs site render with no network: copy the CDN stylesheets and scripts its pages load into
    `VENDOR_DIR` and point every page at the copies (relative paths), drop the references our pages do not use,
    and strip the dark-mode overrides (the dark theme is one of those). Idempotent."""
    root = Path(docs_dir)
    used: dict[str, LocalAsset] = {}
    seen: dict[str, list[str]] = {"replaced": [], "dropped": [], "unknown": []}
    pages = sorted(root.rglob("*.html"))
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new = _rewrite(text, page, root, used, seen)
        if new != text:
            page.write_text(new, encoding="utf-8")
    for css in sorted((root / "static" / "styles").glob("*.css")):
        text = css.read_text(encoding="utf-8")
        if (new := strip_dark_mode(text)) != text:
            css.write_text(new, encoding="utf-8")
    copied: list[str] = []
    for asset in used.values():
        src_root, dst_root = asset.source_root(), root / VENDOR_DIR / asset.dest
        for rel in asset.files():
            dst = dst_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_root / rel, dst)
            copied.append(dst.relative_to(root).as_posix())
    if seen["unknown"]:
        log.warning("Data Docs: removed remote scripts/stylesheets no rule knows (add a rule in %s): %s", __name__,
                    ", ".join(sorted(set(seen["unknown"]))))
    return OfflineDocs(pages=len(pages), assets=tuple(sorted(set(copied))),
                       **{k: tuple(sorted(set(v))) for k, v in seen.items()})
