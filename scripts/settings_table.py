"""Print the Markdown table of every AGENTLOOP_ setting; `--write` puts it into the README between its markers
(a test checks that the README names every setting)."""

from __future__ import annotations

import sys
from pathlib import Path

from agentloop.settings import Settings


def rows() -> list[str]:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = "(see meaning)" if default is None else f"`{default}`"
        if name == "cache_dir":
            shown = "`~/.cache/agentloop`"
        lines.append(f"| `AGENTLOOP_{name.upper()}` | {shown} | {field.description or ''} |")
    return lines


def write_readme(path: Path) -> None:
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n" + "\n".join(rows()) + f"\n{END}{tail}")


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"

if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme(Path(__file__).resolve().parents[1] / "README.md")
    else:
        print("\n".join(rows()))
