"""MkDocs hook: the configuration reference, generated from conf/ at every build (never checked in).

Every option file of every config group becomes a section of ``reference/config.md``: its description (the comment
at the top of the file), its defaults list, and a table of every key with its default value and the comment on or
above it. The keys read from the text are checked against ``yaml.safe_load`` of the same file; a file whose keys
differ is a build warning, so ``mkdocs build --strict`` fails rather than publish a partial reference.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.config_reference")

PAGE = "reference/config.md"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_@/.\-]+|\(\)|\"[^\"]*\"|'[^']*')\s*:(?:\s+(?P<rest>.*))?$")
ITEM = re.compile(r"^(?P<indent> *)- ?(?P<rest>.*)$")

PRIMARY = {
    "train": "python train.py",
    "eval": "python eval.py",
    "predict": "python predict.py",
    "export": "python export.py",
}


@dataclass
class Entry:
    path: str
    value: str
    comment: str


@dataclass
class OptionFile:
    description: str = ""
    package: str = ""
    defaults: list[Entry] = field(default_factory=list)
    keys: list[Entry] = field(default_factory=list)


def split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes, brackets or ``${...}`` is part of the value."""
    quote, depth = "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "#" and depth <= 0 and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def parse(text: str) -> OptionFile:
    """Read one config file line by line: keys with their values and the comments on and above them."""
    parsed = OptionFile()
    comments: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings we are inside
    seen_key = False
    list_owner: Entry | None = None  # the key whose block list is being read
    list_indent = -1
    in_defaults = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            if not seen_key and comments and not parsed.description:
                parsed.description, comments = " ".join(comments), []
            comments = [] if seen_key else comments
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("@package"):
                parsed.package = body.split(None, 1)[1] if " " in body else ""
            else:
                comments.append(body)
            continue
        item = ITEM.match(line)
        if item and list_owner is not None and len(item.group("indent")) >= list_indent:
            value, inline = split_comment(item.group("rest"))
            note = " ".join([*comments, inline]).strip()
            if in_defaults:
                parsed.defaults.append(Entry("", value, note))
            else:
                list_owner.value = (list_owner.value + ", " if list_owner.value else "") + value
                list_owner.comment = " ".join(x for x in (list_owner.comment, note) if x)
            comments = []
            continue
        match = KEY.match(line)
        last = parsed.keys[-1] if parsed.keys else None
        if not match and last is not None and last.value.count("[") > last.value.count("]"):
            value, inline = split_comment(stripped)  # a [flow, list] continued on the next line
            last.value += " " + value
            last.comment = " ".join(x for x in (last.comment, inline) if x)
            continue
        if not match:
            if stripped == "{}":
                if comments and not parsed.description:
                    parsed.description, comments = " ".join(comments), []
                continue
            log.warning("config reference: cannot read the line %r", line)
            continue
        indent = len(match.group("indent"))
        key = match.group("key").strip("'\"")
        value, inline = split_comment(match.group("rest") or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = comments
        comments = []
        if not seen_key and not stack and key in ("defaults", "_target_") and above and not parsed.description:
            parsed.description, above = " ".join(above), []
        seen_key = True
        path = ".".join([k for _, k in stack] + [key])
        in_defaults = path == "defaults"
        if in_defaults:
            if above:
                parsed.description = " ".join(x for x in (parsed.description, *above) if x)
            list_owner, list_indent = Entry(path, "", ""), indent
            continue
        note = " ".join([*above, inline]).strip()
        if value == "":  # a mapping, or a block list, follows
            entry = Entry(path, "", note)
            parsed.keys.append(entry)
            stack.append((indent, key))
            list_owner, list_indent = entry, indent
        else:
            parsed.keys.append(Entry(path, value, note))
            list_owner = None
    # a mapping key followed by children is a heading, not a key: kept only when it has a comment
    paths = {e.path for e in parsed.keys}
    parsed.keys = [e for e in parsed.keys if e.value or e.comment or not any(p.startswith(e.path + ".") for p in paths)]
    return parsed


def leaf_paths(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        out: set[str] = set()
        for key, value in node.items():
            if prefix == "" and key == "defaults":
                continue
            out |= leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix} if prefix else set()


def check(path: Path, parsed: OptionFile) -> None:
    loaded = yaml.safe_load(path.read_text()) or {}
    expected = leaf_paths(loaded)
    read = {e.path for e in parsed.keys}
    flow = [e.path for e in parsed.keys if e.value.startswith("{")]  # {a: 1} on one line: its keys are its value

    def covered(p: str) -> bool:
        return p in read or any(p.startswith(f + ".") for f in flow)

    missing = sorted(p for p in expected if not covered(p))
    extra = sorted(
        e.path for e in parsed.keys if e.path not in expected and not any(p.startswith(e.path + ".") for p in expected)
    )
    if missing or extra:
        log.warning("config reference: %s read wrongly (missing %s, extra %s)", path, missing, extra)


ENTITIES = {"*": "&#42;", "_": "&#95;", "|": "&#124;", "[": "&#91;", "]": "&#93;", "\\": "&#92;", "$": "&#36;"}


def escape(text: str) -> str:
    """Plain text for a page: no character of it read as Markdown or HTML."""
    out = html.escape(text, quote=False)
    for char, entity in ENTITIES.items():
        out = out.replace(char, entity)
    return out.replace("\n", " ")


def cell(text: str) -> str:
    """A comment as prose: `quoted` parts as code, everything else as plain text."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: all plain
        return escape(text)
    return "".join(code(part) if i % 2 else escape(part) for i, part in enumerate(parts))


def code(text: str) -> str:
    return "<code>" + escape(text) + "</code>" if text else ""


def groups(conf: Path) -> dict[str, list[Path]]:
    """{"data": [files], "model/optimizer": [...], ...}; the primary configs under ""."""
    out: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        out.setdefault("" if group == "." else group, []).append(path)
    return out


def render(conf: Path) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the YAML files in `conf/` when the site is built: every config group, every option, every "
        "key with its default and its comment. Pick an option with `group=option`, change a key with `group.key=value` "
        "(see [Configuration groups](config-groups.md)). Files under a group's `_base/` folder are what several "
        "options start from, never options themselves.",
        "",
    ]
    by_group = groups(conf)
    order = [""] + sorted(g for g in by_group if g)
    for group in order:
        files = by_group[group]
        if group == "":
            lines += ["## Primary configs", "", "The config each command starts from.", ""]
        else:
            options = [p.stem for p in files if "_base" not in p.parts]
            lines += [f"## `{group}`", ""]
            if options:
                lines += ["Options: " + ", ".join(f"`{o}`" for o in options) + ".", ""]
        for path in files:
            rel = path.relative_to(conf).as_posix()
            parsed = parse(path.read_text())
            check(path, parsed)
            name = path.stem
            if group == "":
                title = f"`{name}` — `{PRIMARY.get(name, name)}`"
            elif "_base" in path.parts:
                title = f"`{path.relative_to(conf / group).with_suffix('').as_posix()}` (shared base)"
            else:
                title = f"`{group}={name}`"
            lines += [
                f"### {title}",
                "",
                f"`conf/{rel}`" + (f" · package `{parsed.package}`" if parsed.package else ""),
            ]
            lines += [""]
            if parsed.description:
                lines += [cell(parsed.description), ""]
            if parsed.defaults:
                lines += ["Defaults list: " + ", ".join(code(d.value) for d in parsed.defaults) + ".", ""]
                notes = [f"{code(d.value)}: {cell(d.comment)}" for d in parsed.defaults if d.comment]
                lines += [f"- {n}" for n in notes] + ([""] if notes else [])
            if parsed.keys:
                lines += ["| key | default | comment |", "|---|---|---|"]
                for entry in parsed.keys:
                    lines.append(f"| {code(entry.path)} | {code(entry.value)} | {cell(entry.comment)} |")
                lines.append("")
            elif not parsed.defaults:
                lines += ["No keys.", ""]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    conf = Path(config["config_file_path"]).parent / "conf"
    files.append(File.generated(config, PAGE, content=render(conf)))
    return files
