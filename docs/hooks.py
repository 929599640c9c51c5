"""MkDocs hook: the references written from their one source at build time, never by hand.

A page's line ``<!-- cli-reference -->`` becomes every command of the typer app (cli.py) with its help and
options; ``<!-- params-reference -->`` becomes every setting of params.yaml with its default and its comment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ").strip()


def cli_reference() -> str:
    """Every command of cli.py's typer app: its help, usage and parameters (as `--help` prints them)."""
    import typer

    sys.path.insert(0, str(ROOT))
    from cli import app

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="labelnoise")  # typer's own click
    out = [f"`labelnoise` (or `python cli.py` in a clone): {_cell(group.help or '')}", ""]
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        out += [f"## `{name}`", "", (cmd.help or "").strip(), "", "```text",
                f"labelnoise {name} {' '.join(cmd.collect_usage_pieces(sub))}", "```", ""]
        rows = []
        for p in cmd.params:
            if p.name == "help":
                continue
            if p.param_type_name == "option":
                names = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
                default = "" if p.is_flag and not p.default else p.default
                default = "" if default is None or default == [] or not p.show_default and default == "" else default
            else:
                names, default = f"`{p.name.upper()}`", ""
            rows.append(f"| {names} | {_cell(getattr(p, 'help', '') or '')} | "
                        f"{'`' + _cell(default) + '`' if default != '' else ''} |")
        if rows:
            out += ["| parameter | what | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[\w.-]+):(?P<value>.*?)(?:\s{2,}#\s?(?P<comment>.*))?$")


def params_reference(path: Path = ROOT / "params.yaml") -> str:
    """Every setting of params.yaml, section by section: its dotted name, its default and its comment (the
    continuation lines of a comment joined to it; a note between settings kept where it stands)."""
    sections: list[tuple[str, str, list[list[str]]]] = []  # (section, its comment, rows [key, default, meaning])
    stack: list[tuple[int, str]] = []
    last: list[str] | None = None
    note_indent = -1
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not sections:
                continue  # the file's own header
            key_indent = stack[-1][0] if stack else 0
            if last is not None and (indent > key_indent or not last[0] and indent == note_indent):
                last[2] = f"{last[2]} {text}".strip()  # a comment's (or a note's) next line
            else:
                note_indent = indent
                last = ["", "", text]  # a note on the settings that follow
                sections[-1][2].append(last)
            continue
        m = _KEY.match(line)
        if m is None:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, value, comment = m["key"], m["value"].strip(), (m["comment"] or "").strip()
        if value.startswith("#"):
            value, comment = "", value.lstrip("#").strip()
        stack.append((indent, key))
        if indent == 0:
            sections.append((key, comment, []))
            last = None
            continue
        last = [".".join(k for _, k in stack), value, comment]
        sections[-1][2].append(last)
    out = []
    for section, comment, rows in sections:
        out += [f"## `{section}`", "", comment, "", "| setting | default | meaning |", "|---|---|---|"]
        out += [f"| {f'`{k}`' if k else ''} | {f'`{_cell(v)}`' if v else ''} | {_cell(c)} |" for k, v, c in rows]
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    if "<!-- params-reference -->" in markdown:
        markdown = markdown.replace("<!-- params-reference -->", params_reference())
    return markdown
