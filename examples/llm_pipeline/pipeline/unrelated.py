"""Helpers for the project's release notes. No fixture uses them: editing
this module changes none of the cached fixture outputs."""


def slugify(title):
    """A lower-case, dash-separated version of `title`, for file names."""
    words = "".join(c if c.isalnum() else " " for c in title.lower()).split()
    return "-".join(words)


def summarize(counts):
    """One line from a {kind: count} mapping, largest counts first."""
    parts = [f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n]
    return ", ".join(parts) or "nothing"
