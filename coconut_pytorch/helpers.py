"""Small helpers used across the package, defined once."""


def exists(v) -> bool:
    return v is not None


def default(v, d):
    return v if exists(v) else d
