"""The pipeline's architecture diagram, drawn from the declared component specs.

`mermaid()` is what the README embeds (a test fails when the two differ); `draw_png()` draws the
same graph with matplotlib for people who would rather look than read.
"""

from __future__ import annotations

from pathlib import Path

from components.runner import Node, topological_order

# Components that bring something from outside the data flow are drawn as stadiums.
SOURCE_NODES = {"base_model"}


def _title(node: Node) -> str:
    return type(node.component).__name__


def edges(nodes: list[Node]) -> list[tuple[str, str, str]]:
    """(upstream, downstream, label) for every wired input, in pipeline order."""
    found = []
    for node in topological_order(nodes):
        for input_name, (upstream, output) in node.wiring.items():
            artifact_type = node.component.inputs[input_name]
            label = output if output == input_name else f"{output} as {input_name}"
            found.append((upstream, node.name, f"{label}: {artifact_type}"))
    return found


def mermaid(nodes: list[Node]) -> str:
    lines = ["flowchart LR"]
    for node in topological_order(nodes):
        shape = '(["{}"])' if node.name in SOURCE_NODES else '["{}"]'
        lines.append(f"    {node.name}" + shape.format(_title(node)))
    for upstream, downstream, label in edges(nodes):
        lines.append(f"    {upstream} -->|{label}| {downstream}")
    return "\n".join(lines)


def _depths(nodes: list[Node]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in topological_order(nodes):
        depth[node.name] = 1 + max((depth[u] for u, _ in node.wiring.values()), default=-1)
    return depth


def draw_png(nodes: list[Node], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = _depths(nodes)
    columns: dict[int, list[str]] = {}
    for node in topological_order(nodes):
        columns.setdefault(depth[node.name], []).append(node.name)
    position = {name: (d * 3.0, -row * 2.0 - (1.0 if len(names) == 1 else 0))
                for d, names in columns.items() for row, name in enumerate(names)}
    titles = {node.name: _title(node) for node in nodes}
    fig, ax = plt.subplots(figsize=(2.6 * len(columns), 4.5))
    for upstream, downstream, label in edges(nodes):
        (x0, y0), (x1, y1) = position[upstream], position[downstream]
        ax.annotate("", xy=(x1 - 0.9, y1), xytext=(x0 + 0.9, y0),
                    arrowprops={"arrowstyle": "->", "color": "#555", "connectionstyle": "arc3,rad=0.08"})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, label.split(":")[0], fontsize=7, ha="center", color="#333")
    for name, (x, y) in position.items():
        style = "round,pad=0.3" if name in SOURCE_NODES else "square,pad=0.3"
        ax.text(x, y, titles[name], ha="center", va="center", fontsize=9,
                bbox={"boxstyle": style, "facecolor": "#dbe9f6" if name not in SOURCE_NODES else "#f6e7db",
                      "edgecolor": "#335"})
    ax.set_xlim(-1.2, 3.0 * (len(columns) - 1) + 1.2)
    ax.set_ylim(min(y for _, y in position.values()) - 1, 1)
    ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
