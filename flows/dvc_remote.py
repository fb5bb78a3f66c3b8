"""DVC remote on S3: where ``dvc push`` / ``dvc pull`` keep stage outputs.

``configure_s3_remote`` writes the remote URL to ``.dvc/config`` (committed, no secrets) and the
per-machine settings — endpoint, profile, region and, only when asked, the keys — to
``.dvc/config.local`` (git-ignored by DVC). By default no key is written anywhere: DVC's S3 client
takes credentials from the environment or the AWS profile, as boto3 does. Settings go through
DVC's config API in this process, so a secret never appears on a command line (``ps``).
"""

from __future__ import annotations

import os
from pathlib import Path

CREDENTIAL_KEYS = (("access_key_id", "AWS_ACCESS_KEY_ID"),
                   ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                   ("session_token", "AWS_SESSION_TOKEN"))


def configure_s3_remote(root: Path, url: str, name: str = "storage",
                        endpoint: str | None = None, profile: str | None = None,
                        region: str | None = None, store_credentials: bool = False) -> dict:
    """Add (or replace) remote ``name`` = ``url`` as the default; returns what went where
    (secret values are never returned)."""
    from dvc.repo import Repo

    if not url.startswith("s3://"):
        raise ValueError(f"remote URL {url!r} must be s3://bucket/prefix")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    local: dict[str, str] = {}
    if endpoint:
        local["endpointurl"] = endpoint
    if profile:
        local["profile"] = profile
    if region:
        local["region"] = region
    stored = []
    if store_credentials:
        for key, env in CREDENTIAL_KEYS:
            if os.environ.get(env):
                local[key] = os.environ[env]
                stored.append(key)
        if "access_key_id" not in stored:
            raise ValueError("--store-credentials needs AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY in the environment")
    with Repo(str(root)) as repo:
        with repo.config.edit("repo") as conf:
            conf["remote"][name] = {"url": url}
            conf["core"]["remote"] = name
        with repo.config.edit("local") as conf:
            conf["remote"][name] = local
    return {"remote": name, "url": url, "config": sorted(["url"]),
            "config_local": sorted(local), "credentials_stored": stored}
