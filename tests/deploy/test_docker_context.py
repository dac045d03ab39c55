"""The image's build context: the .dockerignore every builder reads leaves local state out.

The legacy builder reads only `.dockerignore` at the root of the context; BuildKit reads
`<Dockerfile>.dockerignore` beside the Dockerfile first, then that same file. The context of
compose.yaml and of the documented `docker build` is the repository root, so the file lives
there, alone. Its patterns are read here as Docker reads them (moby's patternmatcher).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.support import COMPOSE, DEPLOY, DOCKERFILE, REPO, load_yaml

DOCKERIGNORE = REPO / ".dockerignore"
MAX_CONTEXT_BYTES = 10 * 2**20  # the code and uv.lock: about 1.5 MB; with .venv and .git, 377 MB


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!` line: lets back in what an earlier line left out
    text: str


def _regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**` any number of directories, `*` and `?` within one, [...]."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # `**/`: zero or more directories
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


def parse_dockerignore(text: str) -> list[Pattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = line.removeprefix("!").strip()
        cleaned = os.path.normpath(line).lstrip("/")
        patterns.append(Pattern(_regex(cleaned), exclusion, line))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether Docker leaves `path` (relative, with /) out of the context: the last pattern that
    matches it, or one of its parent directories, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        if any(pattern.regex.fullmatch(prefix) for prefix in prefixes):
            result = not pattern.exclusion
    return result


def context_files(root: Path, patterns: list[Pattern]) -> Iterator[Path]:
    """The files the builder receives, walking as Docker does: an excluded directory no `!`
    pattern reaches into is skipped whole."""
    exceptions = [p.text for p in patterns if p.exclusion]
    for current, dirs, files in os.walk(root):
        rel = Path(current).relative_to(root).as_posix()
        for name in list(dirs):
            path = name if rel == "." else f"{rel}/{name}"
            reachable = any(e.startswith(path + "/") or re.match(r"[*?\[]", e) for e in exceptions)
            if excluded(path, patterns) and not reachable:
                dirs.remove(name)
        for name in files:
            path = name if rel == "." else f"{rel}/{name}"
            if not excluded(path, patterns):
                yield Path(current) / name


def _patterns() -> list[Pattern]:
    return parse_dockerignore(DOCKERIGNORE.read_text())


def _copy_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions that come from the build context."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    sources: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if args and args[0].startswith("["):
            args = json.loads(" ".join(args))
        sources.extend(str(a) for a in args[:-1])
    return sources


def test_the_build_context_is_the_repository_root() -> None:
    # Given compose's build section and the documented `docker build`
    build = load_yaml(COMPOSE)["x-smsrelay"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE  # relative to the context
    assert "docker build -f deploy/Dockerfile -t smsrelay ." in (DEPLOY / "README.md").read_text()
    # Then the ignore file is at that root, and no Dockerfile-specific one shadows it in BuildKit
    assert DOCKERIGNORE.is_file(), "the legacy builder reads only <context>/.dockerignore"
    assert not (DEPLOY / "Dockerfile.dockerignore").exists(), (
        "BuildKit would read deploy/Dockerfile.dockerignore instead of the root .dockerignore"
    )


@pytest.mark.parametrize(
    "path",
    [
        ".venv/lib/python3.11/site-packages/redis/client.py",
        ".venv/bin/python",
        ".git/HEAD",
        ".git",
        "bench/out/run.json",
        "bench/out",
        "smsrelay/__pycache__/cli.cpython-311.pyc",
        "smsrelay/admin/__pycache__/app.cpython-311.pyc",
        "smsrelay/cli.pyc",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/0.6.0/1",
        ".hypothesis/examples/a",
        "smsrelay/.mypy_cache/x",
        ".env",
        "deploy/.env",
        "smsrelay/.env",
        "tests/test_cli.py",
    ],
)
def test_local_state_is_left_out(path: str) -> None:
    assert excluded(path, _patterns()), f"{path} would be sent to the builder"


def test_what_the_dockerfile_copies_is_let_in() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "uv.lock", "README.md", "smsrelay"} <= set(sources), sources
    patterns = _patterns()
    for source in sources:
        assert not excluded(source, patterns), f"COPY {source}: .dockerignore leaves it out"
    # every file of the package: its Lua scripts and py.typed too
    for path in (REPO / "smsrelay").rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and "__pycache__" not in rel and not rel.endswith((".pyc", ".pyo")):
            assert not excluded(rel, patterns), f"{rel} is in the package but left out"


def test_the_context_is_small() -> None:
    files = list(context_files(REPO, _patterns()))
    size = sum(f.stat().st_size for f in files)
    tops = sorted({f.relative_to(REPO).parts[0] for f in files})
    assert tops == ["README.md", "pyproject.toml", "smsrelay", "uv.lock"], tops
    assert size < MAX_CONTEXT_BYTES, f"the build context holds {size / 2**20:.1f} MB"


def test_the_matcher_reads_docker_patterns() -> None:
    # The checks above must be able to fail: a file that leaves only bench/out out sends .venv.
    loose = parse_dockerignore("# only this\nbench/out\n")
    assert excluded("bench/out/run.json", loose)
    assert not excluded(".venv/bin/python", loose)
    patterns = parse_dockerignore("*\n!smsrelay\n**/__pycache__\n!keep/**/x?.[ch]\n/abs/*.txt\n")
    assert excluded("tests/a.py", patterns) and not excluded("smsrelay/a/b.py", patterns)
    assert excluded("smsrelay/__pycache__/a.pyc", patterns) and excluded("__pycache__", patterns)
    assert not excluded("keep/x1.c", patterns) and not excluded("keep/a/b/xz.h", patterns)
    assert excluded("keep/x12.c", patterns)
    assert parse_dockerignore("/abs/*.txt")[0].regex.fullmatch("abs/a.txt")
