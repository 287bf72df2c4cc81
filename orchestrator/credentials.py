"""What a credential looks like, so that none travels in a spec or a job's environment.

A spec is shared, published beside the model and shown in the Ray dashboard; so is a job's
runtime environment. Credentials belong to the machines (instance roles, ``~/.aws``, a
Kubernetes secret). These checks name *where* a credential was found, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

#: ``scheme://user[:password]@host``.
_USER_INFO = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/?#@\s]+@", re.I)
#: Query parameters of presigned or token-bearing URLs (S3, GCS, Azure SAS, OAuth).
_SIGNED_QUERY = re.compile(
    r"[?&](x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|"
    r"x-goog-credential|signature|sig|token|access_token|awsaccesskeyid|access_key|"
    r"secret_key|secret|password|passwd|pwd)=",
    re.I,
)
#: Key-like strings: AWS access key ids, GitHub, Hugging Face, Slack and OpenAI-style tokens.
_KEY_LIKE = re.compile(
    r"\b((AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|"
    r"hf_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_-]{20,})"
)
#: Environment variable names that hold secrets.
SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSW|CREDENTIAL|PRIVATE|(^|_)KEY$|SESSION|(^|_)PAT($|_)|AUTH", re.I
)


def credential_in(text: str) -> str | None:
    """What kind of credential ``text`` carries (never the credential itself), or None."""
    if _USER_INFO.search(text):
        return "a URL with a user name or password"
    if match := _SIGNED_QUERY.search(text):
        return f"a signed or token-bearing URL ({match[1]}=...)"
    if _KEY_LIKE.search(text):
        return "an access key or token"
    return None


def strings_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, text) of every string in a nested structure of dicts and lists."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from strings_in(key, path or "<root>") if isinstance(key, str) else ()
            yield from strings_in(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from strings_in(child, f"{path}[{index}]")


def credential_problems(value: Any, where: str = "") -> list[str]:
    """One line per string of ``value`` that carries a credential, naming its path."""
    return [
        f"{path}: holds {kind}; credentials come from the environment of the machines "
        "(instance role, ~/.aws, a Kubernetes secret), never from a spec"
        for path, text in strings_in(value, where)
        if (kind := credential_in(text))
    ]
