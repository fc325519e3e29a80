#!/usr/bin/python3
"""Merge-quality benchmark: merges the six experts with every method of `weld methods`, scores
each merge on the held-out prompts of every task and writes results.md and results.png.

Run through bench/quality/run (which builds weld first); see `bench/quality/run --help`.
Standard library and matplotlib only (Debian: python3-matplotlib).
"""
import argparse
import array
import datetime
import itertools
import json
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ["addition", "reverse", "sort", "count", "caesar", "brackets"]
PAIRS = [("addition", "reverse"), ("sort", "count"), ("caesar", "brackets")]
DENSITIES = [0.1, 0.3, 0.5]
# Sweep points are chosen on held-out prompts drawn with this seed (`weld eval --task-seed`), then
# reported on the test prompts (seed 0), as the papers tune lambda and density on validation data.
# The two draws are independent; for tasks with few distinct prompts (brackets, small sums) they
# share some prompts.
VALIDATION_SEED = 1


@dataclass
class Spec:
    """How one method is run.

    form: which models the recipe lists.
      experts      the six experts, no base_model (the method averages models, not task vectors)
      base         base_model: base, models: the six experts (task-vector methods)
      base_listed  base_model: base, and the base also listed first in models (nuslerp and
                   multislerp use a base only when it is listed; then they work on task vectors)
      endpoints    pair methods only: base_model: expert A, models: expert B (the method
                   interpolates between "the base" and one other model)
    params: defaults (weight 1 for every model where the method takes a weight, so that lambda
      scales the sum, as in the task-arithmetic and TIES papers); weld's `weld methods` output
      decides which of them are global and which per model.
    sweep: parameter -> values; the grid is their product (the default is merged only once).
    derive: fills in parameters that depend on swept ones.
    """
    form: str
    params: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    derive: object = None


def della_epsilon(p):
    # weld (as mergekit) requires density - epsilon > 0: below density 0.3 halve the default 0.15.
    return {"epsilon": round(p["density"] / 2, 4)} if p["density"] < 0.3 else {}


# Methods that merge all six experts. Defaults follow each paper's data-free setting where it
# gives one; "sum" methods (normalize false) add six task vectors, so lambda < 1, while the
# "mean" ones (ties, della, pcb: normalize or a weighted mean) use lambda 1.
METHODS = {
    "linear": Spec("experts", {"weight": 1}),  # model soup: the plain mean of the experts
    # Ilharco et al. pick lambda on validation data, usually 0.3-0.4 for 8 tasks.
    "task_arithmetic": Spec("base", {"weight": 1, "lambda": 0.3}, {"lambda": [0.3, 0.5, 0.7, 1.0]}),
    # Yadav et al. use k = 20% and lambda = 1 (on the disjoint mean) when there is no validation data.
    "ties": Spec("base", {"weight": 1, "density": 0.2, "lambda": 1},
                 {"density": DENSITIES, "lambda": [0.5, 1.0]}),
    # DARE (Yu et al.) rescales the kept deltas, then TA/TIES with lambda from [0.5, 1.0]; tiny
    # models tolerate less dropping than their LLMs' 90%.
    "dare_ties": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5},
                      {"density": DENSITIES, "lambda": [0.5, 1.0]}),
    "dare_linear": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    # Breadcrumbs: drop the top 1% (gamma, weld's default) as outliers and keep the next density.
    "breadcrumbs": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    "breadcrumbs_ties": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    # DELLA: MagPrune around density with weld's epsilon 0.15; della normalizes (lambda 1).
    "della": Spec("base", {"weight": 1, "density": 0.3, "lambda": 1}, {"density": DENSITIES}, della_epsilon),
    "della_linear": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES},
                         della_epsilon),
    # TALL-mask consensus (Wang et al.): k = 2, tall_lambda 0.6; the scaling as the method it masks.
    "consensus_ta": Spec("base", {"weight": 1, "lambda": 0.3}),
    "consensus_ties": Spec("base", {"weight": 1, "density": 0.2, "lambda": 0.5}),
    # The rest: weld's defaults are the papers' (see docs/methods.md).
    "sce": Spec("base"),
    "model_stock": Spec("base"),
    "ram": Spec("base"),
    "ramplus_tl": Spec("base"),
    "pcb": Spec("base"),
    "widen": Spec("base"),
    "varm": Spec("base"),
    "tsv": Spec("base"),
    "opcm": Spec("base"),
    "doge": Spec("base"),
    "localize_stitch": Spec("base"),
    "multislerp": Spec("base_listed", {"weight": 1}),
    "karcher": Spec("experts"),  # a listed base would count as one more point of the mean
}

# Methods defined for two models only: run on each pair of PAIRS, expert A then expert B.
PAIR_METHODS = {
    "slerp": Spec("endpoints", {"t": 0.5}),
    "nuslerp": Spec("base_listed", {"weight": 1}),  # slerp of the two task vectors, t = 0.5
    # t is an absolute distance: taken as the median |B - A| (see nearswap_t), so half the
    # elements come from B whole and the rest move t towards it.
    "nearswap": Spec("endpoints", {"t": "median"}),
    "arcee_fusion": Spec("endpoints"),
}
# Reference rows of the pair table. On two experts, task arithmetic with lambda 0.5 is exactly
# their mean (= linear), so it uses lambda 1: both task vectors added whole.
PAIR_REFERENCES = {
    "linear": Spec("experts", {"weight": 1}),
    "task_arithmetic": Spec("base", {"weight": 1, "lambda": 1}),
}

NOT_APPLICABLE = {
    "passthrough": "copies one model's tensors (or stacks layer slices of several): not a merge of the experts",
    "mwa": "weights checkpoints of one training run by their loss or step; the experts are separate runs "
           "with no comparable metric, and equal metrics reduce it to `linear`",
}

ROOT = Path(__file__).resolve().parents[2]


class Fail(Exception):
    """A problem with the script or its inputs: stop with this message."""


def die(message):
    print(f"bench/quality: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---- weld -----------------------------------------------------------------------------------

def weld_methods(weld):
    """{method: {"global": set, "per_model": set}} from `weld methods`."""
    out = subprocess.run([weld, "methods"], capture_output=True, text=True)
    if out.returncode != 0:
        raise Fail(f"`{weld} methods` failed: {out.stderr.strip()}")
    methods, current = {}, None
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.split()[0]
            methods[current] = {"global": set(), "per_model": set()}
            continue
        m = re.match(r"\s+(global|per model):\s*(.*)", line)
        if m and current:
            scope = "global" if m.group(1) == "global" else "per_model"
            for item in m.group(2).split(","):
                methods[current][scope].add(re.split(r"[=\s(]", item.strip(), maxsplit=1)[0])
    if not methods:
        raise Fail(f"`{weld} methods` listed no methods")
    return methods


def check_coverage(methods):
    covered = set(METHODS) | set(PAIR_METHODS) | set(NOT_APPLICABLE)
    unknown = sorted(set(methods) - covered)
    if unknown:
        raise Fail(f"`weld methods` lists {', '.join(unknown)}, which bench/quality/report.py does not know: "
                   "add each to METHODS or PAIR_METHODS (with its recipe form and defaults) or to "
                   "NOT_APPLICABLE (with the reason)")
    stale = sorted(covered - set(methods))
    if stale:
        raise Fail(f"bench/quality/report.py lists {', '.join(stale)}, which `weld methods` does not: "
                   "remove or rename them")


def tail(text, limit=300):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    msg = lines[-1] if lines else "no message"
    msg = re.sub(r"^weld: (error: )?", "", msg)
    return msg if len(msg) <= limit else msg[:limit] + "…"


def evaluate(args, model_dir, task_seed=0):
    """Per-task accuracy of a model folder, or raises RuntimeError with weld's message."""
    cmd = [args.weld, "eval", str(model_dir), "--tasks", "all", "--held-out", str(args.held_out),
           "--task-seed", str(task_seed), "--threads", str(args.threads), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("eval: " + tail(out.stderr or out.stdout))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {t: result["tasks"][t]["accuracy"] for t in TASKS}


# ---- recipes --------------------------------------------------------------------------------

@dataclass
class Run:
    method: str
    params: dict        # as given to the recipe (weight included)
    members: list       # the experts merged
    kind: str           # "main", "pair" or "pair_ref"
    is_default: bool = True
    acc: dict = None
    val_acc: dict = None  # on the validation prompts, for sweep points
    error: str = None
    seconds: float = 0.0

    def label(self):
        return params_label(self.params)


def params_label(params):
    parts = []
    for k, v in params.items():
        if k == "weight" and v == 1:
            continue  # every expert has weight 1; said once in results.md
        name = "λ" if k == "lambda" else k
        parts.append(f"{name}={fmt_num(v)}")
    return ", ".join(parts) or "defaults"


def fmt_num(v):
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def yaml_value(v):
    # JSON scalars are YAML flow scalars; paths are quoted so any character is safe.
    return json.dumps(v)


def recipe_text(method, spec, params, members, models_dir, scopes):
    base = str(models_dir / "base")
    paths = [str(models_dir / m) for m in members]
    model_params = {k: v for k, v in params.items() if k in scopes["per_model"]}
    global_params = {k: v for k, v in params.items() if k in scopes["global"]}
    unknown = set(params) - set(model_params) - set(global_params)
    if unknown:
        raise Fail(f"METHODS gives {method} parameter(s) {', '.join(sorted(unknown))}, which `weld methods` "
                   "does not list for it")
    listed = []  # (path, takes per-model parameters)
    if spec.form == "experts":
        base_model, listed = None, [(p, True) for p in paths]
    elif spec.form == "base":
        base_model, listed = base, [(p, True) for p in paths]
    elif spec.form == "base_listed":
        base_model, listed = base, [(base, False)] + [(p, True) for p in paths]
    elif spec.form == "endpoints":
        if len(paths) != 2:
            raise Fail(f"{method}: the endpoints form takes two models")
        base_model, listed = paths[0], [(paths[1], True)]
    else:
        raise Fail(f"{method}: unknown recipe form {spec.form!r}")
    lines = [f"merge_method: {method}"]
    if base_model:
        lines.append(f"base_model: {yaml_value(base_model)}")
    lines.append("models:")
    for path, takes in listed:
        lines.append(f"  - model: {yaml_value(path)}")
        if takes and model_params:
            lines.append("    parameters: {" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in model_params.items()) + "}")
    if global_params:
        lines.append("parameters: {" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in global_params.items()) + "}")
    lines.append("dtype: float32")
    return "\n".join(lines) + "\n"


def sweep_points(spec):
    """The default parameters, then every other point of the sweep grid."""
    def complete(p):
        return {**p, **spec.derive(p)} if spec.derive else p
    points = [complete(dict(spec.params))]
    if spec.sweep:
        keys = list(spec.sweep)
        for values in itertools.product(*(spec.sweep[k] for k in keys)):
            p = complete({**spec.params, **dict(zip(keys, values))})
            if p not in points:
                points.append(p)
    return points


def read_safetensors(path):
    """{name: array of floats} of an F32 or BF16 safetensors file (stdlib only)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (8 + n + o for o in info["data_offsets"])
        if info["dtype"] == "F32":
            a = array.array("f")
            a.frombytes(data[start:end])
        elif info["dtype"] == "BF16":
            half = array.array("H")
            half.frombytes(data[start:end])
            a = array.array("f", struct.unpack(f"<{len(half)}f", array.array("I", (h << 16 for h in half)).tobytes()))
        else:
            raise Fail(f"{path}: tensor {name} has dtype {info['dtype']} (expected F32 or BF16)")
        if sys.byteorder != "little":
            a.byteswap()
        tensors[name] = a
    return tensors


def nearswap_t(models_dir, a, b):
    """Median |B - A| over the weights (every 7th element, plenty for a median)."""
    ta = read_safetensors(models_dir / a / "model.safetensors")
    tb = read_safetensors(models_dir / b / "model.safetensors")
    diffs = [abs(x - y) for name in ta for x, y in zip(ta[name][::7], tb[name][::7])]
    return float(f"{statistics.median(diffs):.3g}")


# ---- running --------------------------------------------------------------------------------

def plan(args, quick):
    runs = []
    for method, spec in METHODS.items():
        points = sweep_points(spec)
        for i, p in enumerate(points[:1] if quick else points):
            runs.append(Run(method, p, list(TASKS), "main", is_default=(i == 0)))
    for a, b in PAIRS:
        for method, spec in PAIR_REFERENCES.items():
            runs.append(Run(method, dict(spec.params), [a, b], "pair_ref"))
        for method, spec in PAIR_METHODS.items():
            p = dict(spec.params)
            if p.get("t") == "median":
                p["t"] = nearswap_t(args.models, a, b)
            runs.append(Run(method, p, [a, b], "pair"))
    return runs


def spec_of(run):
    table = {"main": METHODS, "pair": PAIR_METHODS, "pair_ref": PAIR_REFERENCES}[run.kind]
    return table[run.method]


def execute(args, runs, scopes, work):
    total = len(runs)
    for i, run in enumerate(runs, 1):
        tag = f"{run.method}" + (f" [{'+'.join(run.members)}]" if run.kind != "main" else "")
        name = f"{i:03d}-{run.method}"
        recipe = work / f"{name}.yml"
        out = work / name
        recipe.write_text(recipe_text(run.method, spec_of(run), run.params, run.members, args.models,
                                      scopes[run.method]))
        start = time.monotonic()
        merge = subprocess.run([args.weld, "merge", str(recipe), str(out), "--force", "--quiet",
                                "--threads", str(args.threads)], capture_output=True, text=True)
        merged = time.monotonic()
        try:
            if merge.returncode != 0:
                raise RuntimeError(tail(merge.stderr or merge.stdout))
            run.acc = evaluate(args, out)
            if run.kind == "main" and METHODS[run.method].sweep and not args.quick:
                run.val_acc = evaluate(args, out, VALIDATION_SEED)
        except RuntimeError as e:
            run.error = str(e)
        run.seconds = time.monotonic() - start
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        if run.error:
            print(f"\n!!!! [{i}/{total}] {tag} ({run.label()}) FAILED: {run.error}\n!!!! recipe: {recipe}"
                  f"{'' if args.keep else ' (removed at the end: rerun with --keep DIR to keep it)'}\n",
                  file=sys.stderr, flush=True)
            continue
        mean = statistics.mean(run.acc[t] for t in TASKS)
        print(f"[{i:2d}/{total}] {tag:<34} {run.label():<38} merge {merged - start:5.1f}s  "
              f"eval {run.seconds - (merged - start):4.1f}s  mean {mean:.3f}", flush=True)


def normalized(acc, expert_acc, tasks):
    """acc / own-task expert accuracy per task (None where the expert scores 0) and their mean."""
    per = {t: (acc[t] / expert_acc[t] if expert_acc[t] > 0 else None) for t in tasks}
    defined = [v for v in per.values() if v is not None]
    return per, (statistics.mean(defined) if defined else None)


# ---- report ---------------------------------------------------------------------------------

def pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def table_row(cells):
    return "| " + " | ".join(cells) + " |"


def main_row(name, params, acc, expert_acc, bold=False, error=None):
    if error:
        return table_row([name, params, f"**error:** {md_escape(error)}"] + [""] * (len(TASKS) + 1))
    _, norm = normalized(acc, expert_acc, TASKS)
    cells = [pct(acc[t]) for t in TASKS] + [pct(statistics.mean(acc.values())), pct(norm)]
    if bold:
        name = f"**{name}**"
    return table_row([name, params] + cells)


def md_escape(text):
    return text.replace("|", "\\|").replace("\n", " ")


def run_norm(run, expert_acc):
    return normalized(run.acc, expert_acc, TASKS)[1] if run.acc else None


def chosen(rows):
    """The sweep point with the best mean validation accuracy (the first such on ties), or None."""
    ok = [r for r in rows if r.acc and r.val_acc]
    return max(ok, key=lambda r: statistics.mean(r.val_acc.values())) if ok else None


def shown_runs(runs, quick):
    """Per six-model method: [(run, note)], the default and, if the sweep chose another, that one."""
    swept = {m for m, s in METHODS.items() if s.sweep}
    shown = {}
    for method in METHODS:
        rows = [r for r in runs if r.kind == "main" and r.method == method]
        default = rows[0]
        shown[method] = [(default, "" if method not in swept or quick else " (default)")]
        best = chosen(rows) if len(rows) > 1 else None
        if best is default:
            shown[method] = [(default, f" (default; chosen of {len(rows)})")]
        elif best:
            shown[method].append((best, f" (chosen of {len(rows)})"))
    return shown


def sort_key(norm):
    return -1 if norm is None else norm


def write_report(args, runs, refs, expert_acc, wall, chart_name, command):
    L = []
    main = [r for r in runs if r.kind == "main"]
    swept = {m for m, s in METHODS.items() if s.sweep}
    undefined = [t for t in TASKS if expert_acc[t] <= 0]
    commit = git_commit()
    L += ["# Merge-quality benchmark: results", "",
          f"Produced by `{command}` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
          f" with weld {commit}, in {wall / 60:.1f} min: {len(runs)} merges, "
          f"{'default parameters only (--quick)' if args.quick else 'default parameters and sweeps'}.",
          f"Models: `{shown_path(args.models)}`. Accuracy: exact match on {args.held_out} held-out prompts per task "
          "(`weld eval --tasks all`), in %.",
          "Normalized accuracy (as in the TIES paper): a model's accuracy on a task divided by that task's "
          "expert's accuracy on it; *norm. mean* is its mean over the tasks.",
          "Every expert is merged with weight 1; λ is the recipe's `lambda`. The six-model methods merge "
          "the experts addition … brackets, with `base_model` the base where the method uses one.", ""]
    if undefined:
        many = len(undefined) > 1
        names = ", ".join(undefined[:-1]) + " and " + undefined[-1] if many else undefined[0]
        L += [f"**Note:** the {names} expert{'s score' if many else ' scores'} 0 on {'their' if many else 'its'} "
              f"own task{'s' if many else ''}, so normalized accuracy leaves {'those tasks' if many else 'that task'} "
              "out.", ""]

    L += ["## All six experts merged", "",
          "Reference rows first (**bold**), then each method with its default parameters and, where a sweep "
          "chose other parameters, the chosen point: the one with the best mean accuracy on validation prompts "
          f"(held-out prompts drawn with task seed {VALIDATION_SEED}; the table's prompts are seed 0's); "
          "sorted by normalized mean.", "",
          table_row(["method", "params"] + TASKS + ["mean", "norm. mean"]),
          table_row(["---", "---"] + ["---:"] * (len(TASKS) + 2))]
    L.append(main_row("base", "", refs["base"], expert_acc, bold=True))
    for t in TASKS:
        L.append(main_row(f"{t} expert", "", refs[t], expert_acc, bold=True))
    L.append(main_row("multitask", "", refs["multitask"], expert_acc, bold=True))
    shown = [pair for pairs in shown_runs(runs, args.quick).values() for pair in pairs]
    shown.sort(key=lambda rs: sort_key(run_norm(rs[0], expert_acc)), reverse=True)
    for r, note in shown:
        L.append(main_row(r.method, r.label() + note, r.acc, expert_acc, error=r.error))
    L.append("")

    if not args.quick:
        L += ["## Sweeps", "", "Every point of each swept method, the default first; *val. mean* is the mean "
              "accuracy on the validation prompts, which chooses the point.", "",
              table_row(["method", "params"] + TASKS + ["mean", "norm. mean", "val. mean"]),
              table_row(["---", "---"] + ["---:"] * (len(TASKS) + 3))]
        for method in METHODS:
            for r in (r for r in main if r.method == method and method in swept):
                row = main_row(r.method, r.label() + (" (default)" if r.is_default else ""), r.acc,
                               expert_acc, error=r.error)
                val = pct(statistics.mean(r.val_acc.values())) if r.val_acc else "–"
                L.append(row + f" {val} |")
        L.append("")

    L += ["## Two-model methods, on pairs of experts", "",
          "These methods take exactly two models (or a base and one other), so they merge pairs of experts: "
          "`slerp`, `nearswap` and `arcee_fusion` with `base_model` expert A and `models` expert B; `nuslerp` "
          "on the two task vectors (the base listed as origin, weights 1 1, so t = 0.5). Reference rows "
          "(**bold**): the two experts, the multitask model, `linear` (their mean) and `task_arithmetic` "
          "(λ = 1: both task vectors added whole). Columns: accuracy on the pair's two tasks, their mean, "
          "and the normalized mean over the two tasks.", "",
          table_row(["pair", "method", "params", "task A", "task B", "mean", "norm. mean"]),
          table_row(["---", "---", "---", "---:", "---:", "---:", "---:"])]
    for a, b in PAIRS:
        pair = f"{a} + {b}"

        def pair_row(name, params, acc, error=None, bold=False):
            if error:
                return table_row([pair, name, params, f"**error:** {md_escape(error)}", "", "", ""])
            _, norm = normalized(acc, expert_acc, [a, b])
            return table_row([pair, f"**{name}**" if bold else name, params, f"{a} {pct(acc[a])}",
                              f"{b} {pct(acc[b])}", pct((acc[a] + acc[b]) / 2), pct(norm)])
        for name in (a, b):
            L.append(pair_row(f"{name} expert", "", refs[name], bold=True))
        L.append(pair_row("multitask", "", refs["multitask"], bold=True))
        for r in runs:
            if r.kind != "main" and r.members == [a, b]:
                L.append(pair_row(r.method, r.label(), r.acc, r.error, bold=(r.kind == "pair_ref")))
    L.append("")

    L += ["## Methods not run", ""]
    L += [f"- `{m}`: {why}." for m, why in NOT_APPLICABLE.items()]
    failed = [r for r in runs if r.error]
    if failed:
        L += ["", "## Failed merges", ""]
        L += [f"- `{r.method}` ({r.label()}{', ' + '+'.join(r.members) if r.kind != 'main' else ''}): "
              f"{md_escape(r.error)}" for r in failed]
    L += ["", "## Chart", "",
          "Normalized mean accuracy of each six-model method at its chosen setting, between the base and the "
          "multitask model.", "", f"![]({chart_name})", ""]
    args.out.write_text("\n".join(L))


def write_chart(path, runs, refs, expert_acc, quick):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {}
    for method, pairs in shown_runs(runs, quick).items():
        r = pairs[-1][0]  # the chosen sweep point where there is one, else the default
        n = run_norm(r, expert_acc)
        if n is not None:
            best[method] = (n, r.label())
    items = sorted(best.items(), key=lambda kv: kv[1][0])
    fig, ax = plt.subplots(figsize=(10, 8), dpi=100)
    names = [f"{m}  ({lbl})" if lbl != "defaults" else m for m, (_, lbl) in items]
    values = [100 * n for _, (n, _) in items]
    bars = ax.barh(range(len(items)), values, color="#4c72b0")
    ax.set_yticks(range(len(items)), names, fontsize=8)
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f}", va="center", fontsize=7)
    for key, color in (("base", "#c44e52"), ("multitask", "#55a868")):
        n = normalized(refs[key], expert_acc, TASKS)[1]
        if n is not None:
            ax.axvline(100 * n, color=color, linestyle="--", label=f"{key} ({100 * n:.1f})")
    ax.set_xlim(0, 1.1 * max(values + [100 * (normalized(refs[k], expert_acc, TASKS)[1] or 0)
                                       for k in ("base", "multitask")] + [1]))
    ax.set_xlabel("normalized mean accuracy, % of each task's expert (chosen setting per method)")
    ax.set_title("weld merge methods: six experts merged")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def shown_path(path):
    """path relative to the repository when inside it, so results.md does not name this machine."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def git_commit():
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"`{commit}`" + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "(commit unknown)"


def parse_args():
    p = argparse.ArgumentParser(prog="bench/quality/run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "bench/quality/models",
                   help="folder with base, the six experts and multitask (default: bench/quality/models)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/quality/results.md",
                   help="results file (default: bench/quality/results.md); the chart goes beside it as .png")
    p.add_argument("--held-out", type=int, default=200, help="held-out prompts per task (default 200)")
    p.add_argument("--quick", action="store_true", help="default parameters only, no sweeps")
    p.add_argument("--keep", type=Path, help="keep recipes and merged models in this folder")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for weld merge and eval (default 1: on a busy 2-core machine libtorch with 2 threads "
                        "was 5x slower)")
    p.add_argument("--no-build", action="store_true", help="use build/weld as it is (handled by bench/quality/run)")
    p.add_argument("--weld", default=str(ROOT / "build/weld"), help=argparse.SUPPRESS)
    return p.parse_args()


def main():
    args = parse_args()
    command = "bench/quality/run" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    args.models = args.models.resolve()
    args.out = args.out.resolve()
    start = time.monotonic()
    try:
        if not Path(args.weld).exists():
            raise Fail(f"{args.weld} not found: build weld first (bench/quality/run without --no-build)")
        missing = [m for m in ["base", *TASKS, "multitask"] if not (args.models / m / "config.json").exists()]
        if missing:
            raise Fail(f"{args.models} lacks {', '.join(missing)}: train the models with bench/quality/train "
                       "or pass --models DIR")
        scopes = weld_methods(args.weld)
        check_coverage(scopes)
        runs = plan(args, args.quick)
        for r in runs:  # check every recipe against weld's parameter list before spending time
            recipe_text(r.method, spec_of(r), r.params, r.members, args.models, scopes[r.method])
    except Fail as e:
        die(str(e))

    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="weld-quality-"))
    try:
        print(f"bench/quality: {len(runs)} merges, held-out {args.held_out}, work in {work}", flush=True)
        refs = {}
        for name in ["base", *TASKS, "multitask"]:
            t0 = time.monotonic()
            try:
                refs[name] = evaluate(args, args.models / name)
            except RuntimeError as e:
                die(f"evaluating {args.models / name}: {e}")
            print(f"[ref] {name:<30} eval {time.monotonic() - t0:4.1f}s  mean "
                  f"{statistics.mean(refs[name].values()):.3f}", flush=True)
        expert_acc = {t: refs[t][t] for t in TASKS}
        execute(args, runs, scopes, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    wall = time.monotonic() - start
    chart = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args, runs, refs, expert_acc, wall, chart.name, command)
    write_chart(chart, runs, refs, expert_acc, args.quick)
    failed = [r for r in runs if r.error]
    print(f"bench/quality: wrote {args.out} and {chart} in {wall / 60:.1f} min ({len(runs)} merges)")
    if failed:
        print("\n" + "!" * 78 + f"\n!!!! {len(failed)} of {len(runs)} merges FAILED (listed in {args.out}):",
              file=sys.stderr)
        for r in failed:
            print(f"!!!!   {r.method} ({r.label()}): {r.error}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
