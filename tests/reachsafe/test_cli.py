"""The ``reachsafe`` dispatcher: every part loads, every verb has help, and the README's CLI
reference is generated from the real parsers (``python tests/reachsafe/test_cli.py --write`` refreshes it)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- CLI-REFERENCE:BEGIN -->", "<!-- CLI-REFERENCE:END -->"


def _part_parser(part: str) -> argparse.ArgumentParser:
    from reachsafe.cli import part_parser

    return part_parser([part])[1]


def _verbs(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _options(parser: argparse.ArgumentParser) -> str:
    opts = []
    for a in parser._actions:
        if a.option_strings and a.dest not in ("help",) and not a.dest.startswith("cfg__"):
            opts.append(a.option_strings[-1])
        elif not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            opts.append(a.metavar or a.dest.upper())
    has_cfg = any(a.dest.startswith("cfg__") for a in parser._actions)
    return " ".join(f"`{o}`" for o in opts) + (" + every config field as `--field`" if has_cfg else "")


def cli_reference() -> str:
    from reachsafe.cli import PARTS

    rows = ["| command | what it does | options |", "|---|---|---|"]
    for part, spec in PARTS.items():
        if spec.renamed_to:
            continue
        part_help = spec.help
        parser = _part_parser(part)
        verbs = _verbs(parser)
        if not verbs:
            rows.append(f"| `reachsafe {part}` | {part_help} | {_options(parser)} |")
        for verb, (sub, verb_help) in verbs.items():
            rows.append(f"| `reachsafe {part} {verb}` | {verb_help} | {_options(sub)} |")
    return "\n".join(rows)


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n?" + re.escape(END), text, re.S)
    assert match, "README.md lacks the CLI-REFERENCE markers"
    return match.group(1).strip()


def test_readme_cli_reference_matches_the_parsers() -> None:
    assert _readme_block() == cli_reference().strip(), (
        "README.md's CLI reference is stale: run `.venv/bin/python tests/reachsafe/test_cli.py --write`"
    )


def test_help_is_instant_and_loads_no_part() -> None:
    code = (
        "import sys; from reachsafe.cli import build_parser; build_parser([]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch','pybullet'} "
        "or m.startswith(('reachsafe.trainer', 'reachsafe.sim_bridge'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_python_dash_m_reachsafe_is_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reachsafe", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "<part>" in out.stdout and "daemon" in out.stdout, out.stderr


def test_the_old_trainer_spelling_still_works_and_says_it_is_deprecated(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reachsafe", "trainer", "status", "--run", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "'reachsafe trainer' is deprecated" in out.stderr and "reachsafe daemon" in out.stderr, out.stderr
    assert out.returncode == 1 and "reachsafe daemon serve" in out.stdout  # no status yet: what to start


def test_unknown_part_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reachsafe.cli", "warp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_part_with_missing_dependency_says_which_extra(tmp_path: Path) -> None:
    # a robot without torch: hide torch and ask for a trainer verb
    blocker = tmp_path / "torch.py"
    blocker.write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env_path = f"{tmp_path}:{REPO}"

    def reachsafe(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "reachsafe", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        )

    helped = reachsafe("train", "offline", "--help")  # the configs are torch-free: help needs no torch
    assert helped.returncode == 0 and "--world-model.horizon" in helped.stdout, helped.stderr
    out = reachsafe("train", "offline", "--dataset", str(tmp_path / "d.h5"), "--out", str(tmp_path / "run"))
    assert out.returncode != 0
    assert "reachsafe[trainer]" in out.stderr and "Traceback" not in out.stderr, out.stderr


if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(REPO))
    readme = REPO / "README.md"
    text = readme.read_text()
    new = re.sub(
        re.escape(BEGIN) + r".*?" + re.escape(END),
        lambda _: f"{BEGIN}\n{cli_reference()}\n{END}",
        text,
        flags=re.S,
    )
    readme.write_text(new)
    print("README.md CLI reference updated")
