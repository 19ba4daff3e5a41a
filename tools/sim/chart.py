# The PNG chart of one run: broker heap in use (and the budget) and the
# fleet's throughput over time, with broker restarts, stalls and the first
# hit of each cap marked.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw(r, path):
    sysv = r["series"]["sys"]
    tp = r["series"]["throughput"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    sc = r["scenario"]
    fig.suptitle("midge simulator: %s (board %s) - %s" % (sc["name"], sc["board"], r["verdict"]["verdict"]))
    ok = [s for s in sysv if s["heap_alloc"] is not None and s["heap_alloc"] >= 0]
    for n, run in enumerate(sorted(set(s["run"] for s in ok))):  # one line per broker run
        seg = [s for s in ok if s["run"] == run]
        ax1.plot([s["t"] for s in seg], [s["heap_alloc"] / 1024.0 for s in seg], marker=".", color="C0",
                 label="heap in use ($SYS heap/alloc)" if n == 0 else None)
    budget = r["heap"].get("budget")
    if budget:
        ax1.axhline(budget / 1024.0, color="black", linestyle="--", label="budget %s" % r["heap"]["heapsize"])
        ax1.set_ylim(0, budget / 1024.0 * 1.08)
    ax1.set_ylabel("KiB")
    xs = list(range(len(tp["in"])))
    ax2.plot(xs, tp["in"], label="published (msg/s)")
    ax2.plot(xs, tp["out"], label="received by subscribers (msg/s)")
    ax2.set_ylabel("messages / s")
    ax2.set_xlabel("seconds since start")
    for ax in (ax1, ax2):
        first = True
        for rs in r["restarts"]:
            ax.axvspan(rs["t_kill"], rs["t_up"], color="red", alpha=0.2,
                       label="broker restart (kill -9)" if first else None)
            first = False
        first = True
        for e in r["events"]:
            if e["kind"] == "stall":
                ax.axvspan(e["t"], e["t"] + e.get("for_s", 0.5), color="orange", alpha=0.25,
                           label="network stall" if first else None)
                first = False
        ax.axvline(sc["duration_s"], color="grey", linestyle="-.", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    hits = {}  # caps first hit at (about) the same time share one label
    for name, t in r.get("first_hits", {}).items():
        hits.setdefault(round(t * 2) / 2.0, []).append(name)
    for t, names in sorted(hits.items()):
        ax1.axvline(t, color="purple", linestyle=":", linewidth=0.8)
        ax1.text(t, ax1.get_ylim()[1] * 0.03, " " + ", ".join(sorted(names)), rotation=90, fontsize=7,
                 color="purple", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
