"""Helpers shared by the serving tests over real HTTP."""

from __future__ import annotations

import requests


def post(url, body, content_type="image/png", query="", timeout=120):
    return requests.post(
        f"{url}/v1/translate{query}", data=body, headers={"Content-Type": content_type}, timeout=timeout
    )
