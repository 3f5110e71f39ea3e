"""Print the Markdown table of every AGENTLOOP_ setting (pasted into the README; a test keeps them in sync)."""

from __future__ import annotations

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


if __name__ == "__main__":
    print("\n".join(rows()))
