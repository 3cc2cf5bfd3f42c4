"""The README and the manual in docs/ stay honest: their commands use only options the scripts accept, and
every link and docs path they (and the code) mention exists.

Each script's ``--help`` runs once (they import torch, a few seconds each), all of them side by side.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Fenced blocks in these languages hold shell commands; ```python blocks hold API examples, not commands.
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*?\.md\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    document: str  # path relative to the repository
    line: int  # first line of the command in the document
    text: str  # the command as written (continuation lines joined)
    script: str  # the script it runs, relative to the repository
    options: tuple[str, ...]  # the --options given to the script


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the block's first line, its lines) of every fenced code block."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and language is None:
            language, start, lines = fence.group(1).lower(), number + 1, []
        elif fence:
            blocks.append((language, start, lines))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def split_words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in a placeholder: whitespace is good enough to find options
        return command.split("#", 1)[0].split()


def commands_in(document: Path) -> list[Command]:
    """Every command of a fenced shell block that runs one of the repository's Python scripts."""
    found = []
    for language, start, lines in fenced_blocks(document.read_text()):
        if language not in SHELL_LANGUAGES:
            continue
        index = 0
        while index < len(lines):
            first, text = index, lines[index].rstrip()
            while text.endswith("\\") and index + 1 < len(lines):
                index += 1
                text = text[:-1].rstrip() + " " + lines[index].strip()
            index += 1
            words = split_words(text)
            scripts = [i for i, word in enumerate(words) if word.endswith(".py") and (REPO / word).is_file()]
            if not scripts:
                continue
            script_at = scripts[0]
            given = [word.split("=", 1)[0] for word in words[script_at + 1 :]]
            options = tuple(word for word in given if OPTION.fullmatch(word))
            found.append(Command(relative(document), start + first, text.strip(), words[script_at], options))
    return found


COMMANDS = [command for document in DOCUMENTS for command in commands_in(document)]


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """The --help of each documented script (every script started at once)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    scripts = sorted({command.script for command in COMMANDS})
    running = {
        script: subprocess.Popen(
            [sys.executable, script, "--help"],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in scripts
    }
    texts = {}
    for script, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        failed = f"`python {script} --help` failed (exit {process.returncode}):\n{stderr[-2000:]}"
        assert process.returncode == 0, failed
        texts[script] = stdout
    return texts


@pytest.fixture(scope="module")
def accepted_options(help_texts: dict[str, str]) -> dict[str, set[str]]:
    """The options each documented script lists in its --help."""
    return {script: set(OPTION.findall(text)) for script, text in help_texts.items()}


def test_the_documents_show_commands_of_every_phase():
    scripts = {command.script for command in COMMANDS}
    for script in (
        "ViZDoomPPO/train_ppo_parallel.py",
        "ViZDoomPPO/load_model_generate_dataset.py",
        "finetune_autoencoder.py",
        "encode_latents.py",
        "train_text_to_image.py",
        "run_inference.py",
        "run_autoregressive.py",
        "run_playable_env.py",
        "evaluate.py",
        "quickstart.py",
    ):
        assert script in scripts, f"no document shows a command running {script}"


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{command.document}:{command.line}" for command in COMMANDS])
def test_every_documented_option_is_accepted_by_its_script(command: Command, accepted_options: dict[str, set[str]]):
    unknown = [option for option in command.options if option not in accepted_options[command.script]]
    assert not unknown, (
        f"{command.document} line {command.line}: `{command.text}` uses {', '.join(unknown)}, "
        f"which `python {command.script} --help` does not list"
    )


def heading_anchors(document: Path) -> set[str]:
    """The anchors GitHub gives the document's headings (lower case, punctuation dropped, spaces to '-')."""
    text = document.read_text()
    in_code = {number for _, start, lines in fenced_blocks(text) for number in range(start - 1, start + len(lines) + 1)}
    anchors: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading or number in in_code:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text only
        anchor = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        unique, count = anchor, 0
        while unique in anchors:
            count += 1
            unique = f"{anchor}-{count}"
        anchors.add(unique)
    return anchors


def test_links_between_the_documents_resolve():
    broken = []
    for document in DOCUMENTS:
        text = document.read_text()
        code = {number for _, start, lines in fenced_blocks(text) for number in range(start, start + len(lines))}
        for number, line in enumerate(text.splitlines(), start=1):
            if number in code:
                continue
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
                    continue
                path, _, anchor = target.partition("#")
                linked = (document.parent / path).resolve() if path else document
                if not linked.exists():
                    broken.append(f"{relative(document)} line {number}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                    where = f"{relative(document)} line {number}: {target}"
                    broken.append(f"{where} (no heading #{anchor} in {relative(linked)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_paths_named_in_the_documents_exist():
    missing = [
        f"{relative(document)} names {path}"
        for document in DOCUMENTS
        for path in DOCS_PATH.findall(document.read_text())
        if not (REPO / path).is_file()
    ]
    assert not missing, "documents name docs/ pages that do not exist:\n" + "\n".join(missing)


def python_sources() -> list[Path]:
    return [
        path
        for path in sorted(REPO.rglob("*.py"))
        if not any(part.startswith(".") for part in path.relative_to(REPO).parts) and path != Path(__file__).resolve()
    ]


def test_docs_paths_named_in_the_code_exist():
    missing = [
        f"{relative(source)} names {path}"
        for source in python_sources()
        for path in DOCS_PATH.findall(source.read_text(errors="replace"))
        if not (REPO / path).is_file()
    ]
    assert not missing, "code names docs/ pages that do not exist:\n" + "\n".join(missing)


def test_the_code_cites_no_design_document_outside_the_repository():
    citing = [
        f"{relative(source)} line {number}: {line.strip()}"
        for source in python_sources()
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), start=1)
        if "DESIGN.md" in line
    ]
    message = "DESIGN.md is not in the repository (its content is in docs/); cite docs/ instead:\n"
    assert not citing, message + "\n".join(citing)


def test_no_option_states_its_default_twice(help_texts: dict[str, str]):
    """argparse appended "(default: None)" to help that said its default in words: "(default: the model's no-op,
    else action 0) (default: None)". Each option's help says its default once."""
    twice = []
    for script, text in help_texts.items():
        # One entry per option: its line and the indented lines that continue its help (headings end one).
        for entry in re.split(r"\n(?=\S|  -)", text):
            words = " ".join(entry.split())
            appended = re.search(r"\(default: [^()]*\)$", words)
            if appended and re.search(r"\bdefault\b", words[: appended.start()], re.IGNORECASE):
                twice.append(f"{script}: {words}")
    assert not twice, "\n".join(twice)
