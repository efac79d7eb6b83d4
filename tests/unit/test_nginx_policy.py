"""The Content-Security-Policy nginx sends by default allows what the app's pages load and no
more: images only from `data:` (the empty icon), none from any https: origin."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "app" / "catalogue" / "templates").rglob("*.html"))


def directives() -> dict[str, list[str]]:
    defaults = yaml.safe_load((ROOT / "roles/nginx/defaults/main.yml").read_text())
    policy = defaults["nginx_content_security_policy"]
    parsed = {}
    for part in policy.split(";"):
        if part.strip():
            name, *sources = part.split()
            parsed[name] = sources
    return parsed


def test_images_are_allowed_from_data_urls_only():
    assert directives()["img-src"] == ["data:"]


def test_every_image_and_icon_of_the_pages_is_a_data_url():
    assert TEMPLATES, "no page templates found"
    for page in TEMPLATES:
        html = page.read_text()
        assert "<img" not in html, f"{page.name} shows an image the policy refuses"
        for icon in re.findall(r'<link[^>]*rel="[^"]*icon[^"]*"[^>]*>', html):
            assert 'href="data:' in icon, f"{page.name}: {icon}"
