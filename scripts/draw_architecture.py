"""Draw the Coconut (Chain of Continuous Thought) architecture figure.

Usage: python scripts/draw_architecture.py [output.png]   (default: coconut.png at the repo root)
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "coconut.png"

# colours
TOKEN, MARKER, THOUGHT, ANSWER = "#dbe9f6", "#fde2b8", "#c9ecd4", "#e6dcf5"
EDGE, MODEL, LOOP = "#37474f", "#eceff1", "#2e7d32"

# (label, kind) for each input position, left to right
SLOTS = [("$x_1$", "tok"), ("$x_2$", "tok"), ("$\\cdots$", "tok"), ("$x_n$", "tok"),
         ("<bot>", "marker"), ("$h_1$", "thought"), ("$h_2$", "thought"), ("$h_3$", "thought"),
         ("<eot>", "marker"), ("$y_1$", "ans"), ("$y_2$", "ans"), ("$\\cdots$", "ans")]
FILL = {"tok": TOKEN, "marker": MARKER, "thought": THOUGHT, "ans": ANSWER}

W, GAP = 0.9, 0.35            # slot width and spacing
X = [0.6 + i * (W + GAP) for i in range(len(SLOTS))]
Y_IN, H_IN = 0.5, 0.75        # input row
Y_TF, H_TF = 2.35, 1.25       # transformer block
Y_OUT, H_OUT = 4.55, 0.7      # output row
Y_HS, H_HS = 4.65, 0.5        # last hidden states at <bot>, h1, h2
XMAX = X[-1] + W + 0.6


def box(ax, x, y, w, h, fill, label="", fs=13, lw=1.4, ls="-", **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                fc=fill, ec=EDGE, lw=lw, ls=ls, zorder=2))
    if label:
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fs, zorder=3, **kw)


def arrow(ax, p, q, color=EDGE, rad=0.0, lw=1.3, ls="-"):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=13, color=color, lw=lw,
                                 ls=ls, connectionstyle=f"arc3,rad={rad}", zorder=4,
                                 shrinkA=0, shrinkB=0))


def vector_glyph(ax, cx, cy, n=5, fill="#43a047", ch=0.075):
    """Small stack of cells inside a thought box, suggesting a continuous vector."""
    cw = 0.1
    for k in range(n):
        ax.add_patch(plt.Rectangle((cx - n * cw / 2 + k * cw, cy), cw, ch, fc=fill,
                                   ec="white", lw=0.6, alpha=0.35 + 0.13 * k, zorder=3))


fig, ax = plt.subplots(figsize=(10.67, 4.67), dpi=150)   # 1600 x 700 px
ax.set_xlim(0, XMAX)
ax.set_ylim(-1.0, 6.2)
fig.subplots_adjust(0, 0, 1, 1)
ax.set_aspect("auto")
ax.axis("off")

# transformer block
box(ax, X[0] - 0.15, Y_TF, X[-1] + W - X[0] + 0.3, H_TF, MODEL, lw=1.8)
XT = (X[0] + X[3] + W) / 2   # keep the block's text clear of the thought-loop arrows
ax.text(XT, Y_TF + H_TF * 0.7, "Transformer", ha="center", va="center", fontsize=15, weight="bold")
ax.text(XT, Y_TF + H_TF * 0.32, "rotary attention · value residual\nhyper-connection streams",
        ha="center", va="center", fontsize=10, color="#455a64", linespacing=1.4)

for i, (label, kind) in enumerate(SLOTS):
    x = X[i]
    mono = kind == "marker"
    box(ax, x, Y_IN, W, H_IN, FILL[kind], label, fs=10.5 if mono else 14,
        family="monospace" if mono else None,
        lw=2.0 if kind == "thought" else 1.4)
    if kind == "thought":
        vector_glyph(ax, x + W / 2, Y_IN + 0.07)
    arrow(ax, (x + W / 2, Y_IN + H_IN + 0.05), (x + W / 2, Y_TF - 0.05))

# thought loop: hidden state at position i (<bot>, h1, h2) becomes input of position i+1
for i in (4, 5, 6):
    xs, xd = X[i] + W / 2, X[i + 1] + W / 2
    arrow(ax, (xs, Y_TF + H_TF + 0.05), (xs, Y_HS - 0.05))
    box(ax, X[i] + 0.1, Y_HS, W - 0.2, H_HS, THOUGHT, lw=1.6)
    vector_glyph(ax, xs, Y_HS + H_HS / 2 - 0.06, ch=0.12)
    arrow(ax, (X[i] + W - 0.1, Y_HS + H_HS / 2), (xd + 0.2, Y_IN + H_IN + 0.06), color=LOOP, rad=-0.45, lw=2)
ax.text((X[4] + X[6] + W) / 2, Y_OUT + H_OUT + 0.3, "last hidden state fed back as next input embedding",
        ha="center", va="center", fontsize=10, color=LOOP, style="italic")

# language-token outputs above the answer positions (next-token prediction from <eot> on)
outs = [(8, "$y_1$"), (9, "$y_2$"), (10, "$y_3$"), (11, "<eos>")]
for i, label in outs:
    x = X[i]
    arrow(ax, (x + W / 2, Y_TF + H_TF + 0.05), (x + W / 2, Y_OUT - 0.05))
    box(ax, x, Y_OUT, W, H_OUT, ANSWER, label, fs=10.5 if label.startswith("<") else 14,
        family="monospace" if label.startswith("<") else None)
ax.text((X[8] + X[11] + W) / 2, Y_OUT + H_OUT + 0.3, "language-token outputs",
        ha="center", va="center", fontsize=10, color=EDGE)

# input-row brackets
def bracket(i, j, text):
    x0, x1, y = X[i], X[j] + W, Y_IN - 0.18
    ax.plot([x0, x0, x1, x1], [y + 0.08, y, y, y + 0.08], color="#78909c", lw=1)
    ax.text((x0 + x1) / 2, y - 0.22, text, ha="center", va="center", fontsize=9.5, color="#546e7a")

bracket(0, 3, "question (language mode)")
bracket(5, 7, "continuous thoughts (latent mode)")
bracket(9, 11, "answer (language mode)")

legend = [Patch(fc=TOKEN, ec=EDGE, label="language token"),
          Patch(fc=MARKER, ec=EDGE, label="<bot> / <eot> marker"),
          Patch(fc=THOUGHT, ec=EDGE, label="continuous thought (vector)"),
          Patch(fc=ANSWER, ec=EDGE, label="answer token")]
ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=9.5,
          frameon=False, handlelength=1.4, columnspacing=2.0)
ax.text(X[0] - 0.15, 6.05, "Chain of Continuous Thought: reasoning in latent space", ha="left",
        va="top", fontsize=12.5, weight="bold", color="#263238")

fig.savefig(OUT, dpi=150, facecolor="white")
print(f"wrote {OUT}")
