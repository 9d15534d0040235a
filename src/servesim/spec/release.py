"""Engine release strings ("0.12.0", "0.5.8.post1", "1.3.0rc20") as comparable numbers: which
collection of measured kernels is nearest the release an engine served."""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

# A final release sorts after every release candidate of its number.
FINAL_RELEASE = 1_000_000


# The leading release of a version string: numbers, a pre-release and a post-release.
_VERSION_PREFIX = re.compile(r"v?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?")


def version_key(v: str) -> tuple[int, ...]:
    """(major, minor, patch, candidate) of a release string such as "0.5.8.post1" or
    "1.3.0rc20" (candidate: the rc/beta number, `FINAL_RELEASE` for a release); a build suffix that
    is not part of the version (a container tag's "0.5.6.post2-cu130", "v0.5.9") is dropped;
    (0,) if unparsable."""
    m = _VERSION_PREFIX.match(v.strip())
    try:
        ver = Version(m.group(0) if m else v)
    except InvalidVersion:
        return (0,)
    rel = tuple(ver.release[:3]) + (0,) * (3 - len(ver.release[:3]))
    return (*rel, ver.pre[1] if ver.pre else FINAL_RELEASE)
