"""What a run records about itself: the provenance written into ``info`` and every output."""

from __future__ import annotations


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a result (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("napari-treg", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
