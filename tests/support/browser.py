"""Headless Chromium, offline: what a page looks like to a person with no network.

`probe_offline(page)` opens a page from disk with every host name unresolvable, waits for its scripts and fonts,
and returns what an inline probe read from the rendered page: computed styles, whether bootstrap-table built its
tables, whether Font Awesome's font loaded, every remote URL the page tried to fetch, and its uncaught script errors.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                                    "chromium); browser test skipped")

OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]

# Runs after the page's own scripts (their jQuery-ready handlers, which jQuery 3 may run after `load`, included)
# and its fonts; writes its findings where --dump-dom shows them.
_PROBE = """<script>
function fineshipProbe() {
  var q = function (s) { return document.querySelector(s); };
  var icon = q('.fa-check-circle, .fa-times');
  var probe = {
    navbarDisplay: q('.navbar') ? getComputedStyle(q('.navbar')).display : null,
    bodyFont: getComputedStyle(document.body).fontFamily,
    tables: document.querySelectorAll('.bootstrap-table').length,
    tableRows: document.querySelectorAll('.bootstrap-table tbody tr').length,
    iconFont: icon ? getComputedStyle(icon, '::before').fontFamily : null,
    iconFontLoaded: document.fonts.check('900 16px "Font Awesome 6 Free"'),
    jquery: typeof window.jQuery,
    remote: performance.getEntriesByType('resource').map(function (e) { return e.name; })
      .filter(function (u) { return /^https?:/.test(u); }),
  };
  document.body.setAttribute('data-probe', JSON.stringify(probe));
}
window.addEventListener('load', function () { document.fonts.ready.then(function () {
  var later = function () { setTimeout(fineshipProbe, 200); };
  if (window.jQuery) { window.jQuery(later); } else { later(); }
}); });
</script>"""


def chromium_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
            "--window-size=1400,1000", "--virtual-time-budget=10000", *OFFLINE]


def probe_offline(page: Path, profile: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Open `page` (a file) offline in headless Chromium and return the probe's findings (see module doc)."""
    assert CHROMIUM is not None
    probe = page.with_name(f"_probe_{page.name}")  # beside the page, so its relative links resolve the same
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        dom = subprocess.run([CHROMIUM, *chromium_flags(profile), "--enable-logging=stderr", "--v=0", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            subprocess.run([CHROMIUM, *chromium_flags(profile), f"--screenshot={screenshot}", page.as_uri()],
                           capture_output=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, f"the probe did not run on {page}:\n{dom.stdout[:2000]}\n{dom.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    seen["scriptErrors"] = [line.split("] ", 1)[-1] for line in dom.stderr.splitlines()
                            if ":CONSOLE" in line and "Uncaught" in line]
    return seen
